//! Who controls a campaign, as `infra status` shows it, and the local
//! provider's side of `infra stop` and `--detach` (the files under
//! `.infra/<phase>/`; the bucket's counterparts are in
//! `provider/aws/controller.rs`).

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{local_paths, LeaseDoc, StopRequest};

/// The variable a detached controller is started with, naming where it
/// runs (`local daemon`, `aws:<instance-id>`); the lease's `holder.where`.
pub const WHERE_ENV: &str = "INFRA_CONTROLLER_WHERE";
/// `holder.where` of a foreground `infra run`.
pub const THIS_MACHINE: &str = "this machine";
/// `holder.where` of a detached controller on the local provider.
pub const LOCAL_DAEMON: &str = "local daemon";

/// Where this process controls a campaign from: `$INFRA_CONTROLLER_WHERE`,
/// else `this machine`.
pub fn controller_where() -> String {
    std::env::var(WHERE_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| THIS_MACHINE.to_string())
}

/// `"controller"` of `infra status`: who holds the campaign's lease.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ControllerView {
    #[serde(rename = "where")]
    pub place: String,
    pub host: String,
    pub since: DateTime<Utc>,
    /// The lease has not expired: the controller renewed it within its TTL.
    pub alive: bool,
}

impl ControllerView {
    pub fn of(lease: &LeaseDoc, now: DateTime<Utc>) -> ControllerView {
        ControllerView {
            place: lease.holder.place.clone(),
            host: lease.holder.host.clone(),
            since: lease.since,
            alive: !lease.expired(now),
        }
    }

    /// The human line of `infra status`.
    pub fn line(v: Option<&ControllerView>) -> String {
        match v {
            None => "controller: none".to_string(),
            Some(c) => format!(
                "controller: {} on {} since {}{}",
                c.place,
                c.host,
                c.since.format("%Y-%m-%d %H:%M:%S UTC"),
                if c.alive {
                    ""
                } else {
                    " (lease expired: it is gone)"
                }
            ),
        }
    }
}

/// The lease of a local campaign, if any (a damaged file counts as none:
/// only its holder writes it). A lease file whose lock nobody holds was
/// left by a controller that died (`kill -9`): none.
pub fn read_lease(state_dir: &Path) -> Option<LeaseDoc> {
    if !crate::runner::lock::is_held(&state_dir.join("lease.lock")) {
        return None;
    }
    let bytes = std::fs::read(local_paths::lease(state_dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The stop request of a local campaign, if one is pending: the
/// controller checks it at each renewal of its lease, stops like a Ctrl-C,
/// and removes it ([`clear_stop`]).
pub fn stop_requested(state_dir: &Path) -> Option<StopRequest> {
    let bytes = std::fs::read(local_paths::stop(state_dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Write the stop request of a local campaign (atomically).
pub fn request_stop(state_dir: &Path, req: &StopRequest) -> std::io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let path = local_paths::stop(state_dir);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(req).unwrap_or_default())?;
    std::fs::rename(&tmp, &path)
}

/// Remove a handled stop request.
pub fn clear_stop(state_dir: &Path) {
    let _ = std::fs::remove_file(local_paths::stop(state_dir));
}

/// `user@host` of this process, for a stop request.
pub fn who() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{}", hostname())
}

/// This machine's host name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into our buffer.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::campaign::Holder;

    #[test]
    fn the_controller_view_says_where_who_since_and_whether_alive() {
        let t0: DateTime<Utc> = "2026-11-27T10:00:00Z".parse().unwrap();
        let lease = LeaseDoc {
            v: 1,
            token: "t".into(),
            holder: Holder {
                host: "ip-10-0-1-5".into(),
                user: "root".into(),
                pid: 7,
                place: "aws:i-0abc".into(),
            },
            since: t0,
            renewed_at: t0,
            ttl_seconds: 90,
        };
        let v = ControllerView::of(&lease, t0 + chrono::Duration::seconds(30));
        assert!(v.alive);
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["where"], "aws:i-0abc");
        assert_eq!(json["host"], "ip-10-0-1-5");
        assert_eq!(
            ControllerView::line(Some(&v)),
            "controller: aws:i-0abc on ip-10-0-1-5 since 2026-11-27 10:00:00 UTC"
        );
        let gone = ControllerView::of(&lease, t0 + chrono::Duration::seconds(300));
        assert!(!gone.alive);
        assert!(ControllerView::line(Some(&gone)).contains("expired"));
        assert_eq!(ControllerView::line(None), "controller: none");
    }

    #[test]
    fn a_stop_request_is_written_read_and_cleared() {
        let d = tempfile::tempdir().unwrap();
        assert!(stop_requested(d.path()).is_none());
        let req = StopRequest {
            requested_at: Utc::now(),
            by: "u@h".into(),
        };
        request_stop(d.path(), &req).unwrap();
        assert_eq!(stop_requested(d.path()), Some(req));
        clear_stop(d.path());
        assert!(stop_requested(d.path()).is_none());
    }
}
