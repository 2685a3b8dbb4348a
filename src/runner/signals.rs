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
    /// None when SIGHUP was ignored (`nohup infra run ...`): it stays so.
    hup: Option<Signal>,
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
            hup: match ignored(libc::SIGHUP) {
                true => None,
                false => Some(signal(SignalKind::hangup())?),
            },
            ttys,
        })
    }

    /// The next signal, worded as the reason of the stop.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "interrupted (SIGINT)",
            _ = self.term.recv() => "interrupted (SIGTERM)",
            _ = recv_opt(&mut self.hup) => {
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

/// The next `s`; never when there is none.
async fn recv_opt(s: &mut Option<Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// True when `sig` is ignored by this process (as `nohup` leaves SIGHUP).
fn ignored(sig: i32) -> bool {
    // SAFETY: sigaction with a null new action only reads the current one.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}
