//! The signals that stop a run: SIGINT (Ctrl-C), SIGTERM, and SIGHUP (the
//! terminal closed). Each stops the run the same way: running tasks are
//! stopped and re-queued, the journal ends consistent, exit 130.
//!
//! The listeners are made once by the command layer, before the setup, so
//! that no signal falls into a gap between the setup and the run (once a
//! listener exists, a signal no longer kills the process: it waits here).

use std::os::fd::AsRawFd;

use tokio::signal::unix::{signal, Signal, SignalKind};

pub struct Interrupts {
    int: Signal,
    term: Signal,
    hup: Signal,
    /// The standard streams that were a terminal when listening began.
    ttys: Vec<i32>,
}

impl Interrupts {
    /// Listen from now on (inside the runtime).
    pub fn listen() -> std::io::Result<Interrupts> {
        let ttys = [0, 1, 2]
            .into_iter()
            // SAFETY: isatty only looks at the descriptor.
            .filter(|fd| unsafe { libc::isatty(*fd) } == 1)
            .collect();
        Ok(Interrupts {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
            ttys,
        })
    }

    /// The next signal, worded as the reason of the stop.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "interrupted (SIGINT)",
            _ = self.term.recv() => "interrupted (SIGTERM)",
            _ = self.hup.recv() => {
                self.leave_terminal();
                "interrupted (SIGHUP)"
            }
        }
    }

    /// The terminal is gone: what was written to it goes to /dev/null from
    /// now on, so that the rest of the stop writes without errors.
    fn leave_terminal(&self) {
        let Ok(null) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
        else {
            return;
        };
        for fd in &self.ttys {
            // SAFETY: dup2 onto a standard stream this process owns.
            unsafe {
                libc::dup2(null.as_raw_fd(), *fd);
            }
        }
    }
}
