//! The controller's lease: one per phase, so that one controller drives a
//! campaign at a time. On AWS it is the object `<phase>/_state/lease.json`
//! in the project's bucket, taken with `If-None-Match: *` and renewed with
//! `If-Match: <etag>`; locally `.infra/<phase>/lease.json` beside the run
//! lock. Nodes read it (never write it) to learn whether a controller is
//! still alive.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const LEASE_VERSION: u32 = 1;

/// How often a holder renews its lease.
pub const RENEW_SECONDS: u64 = 30;
/// A lease not renewed for this long has expired: another controller may
/// take it over (`--take-over`).
pub const TTL_SECONDS: u64 = 90;

/// Who holds a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub host: String,
    pub user: String,
    pub pid: u32,
    /// Where the controller runs: `this machine` (a foreground `infra
    /// run`), `local daemon` (`--detach` on the local provider), or
    /// `aws:<instance-id>` (a detached controller in the cloud).
    #[serde(rename = "where")]
    pub place: String,
}

/// The lease document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseDoc {
    pub v: u32,
    /// Random per taking: a holder renews only its own lease.
    pub token: String,
    pub holder: Holder,
    /// When the holder took the lease.
    pub since: DateTime<Utc>,
    /// The last renewal.
    pub renewed_at: DateTime<Utc>,
    pub ttl_seconds: u64,
}

impl LeaseDoc {
    /// The holder stopped renewing: the lease may be taken over.
    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        now.signed_duration_since(self.renewed_at).num_seconds() > self.ttl_seconds as i64
    }
}

/// `infra stop <phase>`: asks whoever controls the campaign to stop (the
/// running tasks are re-queued, the journal stays consistent). The
/// controller checks for it at each renewal of its lease and removes it
/// when it has stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopRequest {
    pub requested_at: DateTime<Utc>,
    /// `user@host` of who asked.
    pub by: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_expires_only_after_its_ttl() {
        let t0: DateTime<Utc> = "2026-11-27T10:00:00Z".parse().unwrap();
        let doc = LeaseDoc {
            v: LEASE_VERSION,
            token: "t".into(),
            holder: Holder {
                host: "h".into(),
                user: "u".into(),
                pid: 1,
                place: "this machine".into(),
            },
            since: t0,
            renewed_at: t0,
            ttl_seconds: 90,
        };
        assert!(!doc.expired(t0 + chrono::Duration::seconds(90)));
        assert!(doc.expired(t0 + chrono::Duration::seconds(91)));
        let text = serde_json::to_string(&doc).unwrap();
        assert!(text.contains("\"where\":\"this machine\""), "{text}");
        assert_eq!(serde_json::from_str::<LeaseDoc>(&text).unwrap(), doc);
    }
}
