//! The node agent: `infra node <mode> --spec '<JSON>'`, the same binary as
//! the user's `infra`, run on every node by SSM Run Command. It replaces the
//! shell wrapper `scripts/infra-node.sh` (now gone) and keeps its documented behaviour
//! (folders, exit codes, printed lines, uploads), but needs nothing on the
//! node besides itself and a shell for the task's own command: S3 and the
//! instance metadata service are spoken to through the SDK, process control
//! goes through libc.
//!
//! Modes (the spec's fields are in `spec.rs`):
//! - `step`: run one step of a task, record `runtime.json`, upload the step's
//!   logs and files. Exits with the step's code; 124 at its timeout, 175 on a
//!   spot interruption notice, 0 when stopped (`stop`), 171 when the upload
//!   failed, 143 when the agent itself is told to stop (SSM cancel).
//! - `health`: wait until a background step answers: 0 healthy, 1 not in
//!   time, 3 the step ended first, 175 spot interruption.
//! - `stop`: ask background steps of an attempt to stop.
//! - `reap`: stop every step still running on the node (after `infra` died).
//! - `setup`: run the bundle's `setup.sh` once per hash.
//! - `watch`: start (or update the settings of) the node's idle watcher:
//!   no step and no renewal of the controller's lease for the idle time →
//!   the node deletes its fleet (instances kept) and shuts down.
//!
//! Common exit codes: 2 a bad spec, 172 the bundle could not be fetched or
//! failed verification (nothing was run), 176 a write on the node failed
//! (full disk...): the attempt fails with the file and the OS error on
//! stderr, never a success.
//!
//! Where things live: `$INFRA_NODE_ROOT`, else the emulator's per-instance
//! folder `$INFRA_SANDBOX_DIR`, else `/var/lib/infra`.

pub mod bundle;
pub mod checkpoint;
pub mod fsio;
pub mod health;
pub mod live;
pub mod proc;
pub mod setup;
pub mod spec;
pub mod spot;
pub mod step;
pub mod stop;
pub mod upload;
pub mod watch;

use std::path::PathBuf;

use crate::cli::NodeMode;

pub const EXIT_USAGE: i32 = 2;
pub const EXIT_TIMEOUT: i32 = 124;
pub const EXIT_SIGNALLED: i32 = 143;
pub const EXIT_UPLOAD: i32 = 171;
pub const EXIT_BUNDLE: i32 = 172;
pub const EXIT_INTERRUPTED: i32 = 175;
pub const EXIT_WRITE: i32 = 176;
/// `health`: the background step ended before it became healthy.
pub const HEALTH_STEP_ENDED: i32 = 3;

/// A reason the agent stops early: the exit code and the line for stderr.
#[derive(Debug)]
pub struct Fail {
    pub code: i32,
    pub msg: String,
}

impl Fail {
    pub fn new(code: i32, msg: impl Into<String>) -> Fail {
        Fail {
            code,
            msg: msg.into(),
        }
    }
}

/// The agent's version as `runtime.json` records it: the crate version, and
/// the binary's SHA-256 when it runs from `$ROOT/bin/<sha256>/infra` (how
/// the controller installs it; hashing the binary itself would cost more CPU
/// than the rest of a step).
pub fn agent_version() -> (String, Option<String>) {
    let sha = std::env::current_exe().ok().and_then(|p| {
        let dir = p.parent()?.file_name()?.to_str()?.to_string();
        (dir.len() == 64 && dir.bytes().all(|b| b.is_ascii_hexdigit())).then_some(dir)
    });
    (env!("CARGO_PKG_VERSION").to_string(), sha)
}

/// The node's folder: `$INFRA_NODE_ROOT`, else `$INFRA_SANDBOX_DIR`, else
/// `/var/lib/infra`.
pub fn root() -> PathBuf {
    for k in ["INFRA_NODE_ROOT", "INFRA_SANDBOX_DIR"] {
        if let Some(v) = std::env::var_os(k).filter(|v| !v.is_empty()) {
            return PathBuf::from(v);
        }
    }
    PathBuf::from("/var/lib/infra")
}

/// Run one mode with its JSON spec; the exit code.
pub fn main(mode: NodeMode, spec_text: &str) -> i32 {
    // One thread: the agent waits on one process and a few requests.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("infra-node: cannot start the runtime: {e}");
            return 1;
        }
    };
    let root = root();
    let r = rt.block_on(async {
        match mode {
            NodeMode::Step => step::step(&root, spec::parse(spec_text)?).await,
            NodeMode::Health => health::health(&root, spec::parse(spec_text)?).await,
            NodeMode::Stop => stop::stop(&root, spec::parse(spec_text)?),
            NodeMode::Reap => {
                let s: spec::ReapSpec = spec::parse(spec_text)?;
                stop::reap(&root, &s.keep).await
            }
            NodeMode::Setup => setup::setup(&root, spec::parse(spec_text)?).await,
            NodeMode::Watch => watch::watch(&root, spec::parse(spec_text)?).await,
        }
    });
    match r {
        Ok(code) => code,
        Err(f) => {
            eprintln!("infra-node: {}", f.msg);
            f.code
        }
    }
}
