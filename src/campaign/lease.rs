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
    /// Whether its holder may still be controlling the campaign: it renewed
    /// the lease within its time to live, and is not a process of this
    /// machine (`me`'s host) that is gone.
    pub fn live(&self, me: &Holder, now: DateTime<Utc>) -> bool {
        !self.expired(now) && (self.holder.host != me.host || pid_alive(self.holder.pid))
    }

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

/// Where a phase's lease and stop request live (the bucket, or
/// `.infra/<phase>/` on the local provider).
pub trait LeaseStore: Send + Sync {
    /// The lease and its version tag; None when nobody holds it.
    fn read(&self) -> BoxFut<'_, Result<Option<(LeaseDoc, String)>, String>>;
    /// Take the lease if nobody holds it: its version tag, or None when
    /// someone was faster.
    fn create<'a>(&'a self, doc: &'a LeaseDoc) -> BoxFut<'a, Result<Option<String>, String>>;
    /// Write over the version `etag`: the new tag, or None when the lease
    /// changed meanwhile.
    fn replace<'a>(
        &'a self,
        doc: &'a LeaseDoc,
        etag: &'a str,
    ) -> BoxFut<'a, Result<Option<String>, String>>;
    /// Give the lease up (only the version `etag`).
    fn release<'a>(&'a self, etag: &'a str) -> BoxFut<'a, Result<(), String>>;
    /// `infra stop` asked the controller to stop.
    fn stop_request(&self) -> BoxFut<'_, Option<StopRequest>>;
    /// Ask the controller to stop.
    fn request_stop<'a>(&'a self, req: &'a StopRequest) -> BoxFut<'a, Result<(), String>>;
    fn clear_stop(&self) -> BoxFut<'_, ()>;
    /// Where the lease is, for messages.
    fn location(&self) -> String;
}

pub type BoxFut<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Why a controller cannot take a phase's lease.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("{} is controlled by {} (since {}, renewed {} s ago)\n  (hint: wait for it to end, `infra stop {phase}` asks it to stop, `infra attach {phase}` follows it; `--take-over` works once its lease has gone {ttl} s without renewal)", phase, who(&.doc.holder), .doc.since.format("%Y-%m-%d %H:%M:%S UTC"), .age, ttl = .doc.ttl_seconds)]
    Held {
        phase: String,
        doc: LeaseDoc,
        age: i64,
    },
    #[error("{} was controlled by {}, which has not renewed its lease for {} s (it expired)\n  (hint: if that controller is gone for good, `infra run {phase} ... --take-over` continues the campaign here, adopting what it left running)", phase, who(&.doc.holder), .age)]
    Expired {
        phase: String,
        doc: LeaseDoc,
        age: i64,
    },
    #[error("cannot use the lease of {phase} ({location}): {message}")]
    Store {
        phase: String,
        location: String,
        message: String,
    },
}

/// `user@host (pid N, where)`.
pub fn who(h: &Holder) -> String {
    format!("{}@{} (pid {}, {})", h.user, h.host, h.pid, h.place)
}

/// A process of this machine still runs under `pid`.
fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && crate::provider::process::start_time(pid as i32).is_some()
        && !crate::provider::process::leader_gone(pid as i32)
}

/// A fresh random token.
fn token() -> String {
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}{t:x}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

/// The lease this controller holds.
pub struct Held {
    pub doc: LeaseDoc,
    pub etag: String,
    /// Whose lease it took over (a dead controller of this machine, or an
    /// expired one with `--take-over`).
    pub took_over: Option<Holder>,
}

/// Take the lease of `phase` for `holder`: when nobody holds it, when its
/// holder was a controller of this machine that is dead, or (with
/// `take_over`) when it expired.
pub async fn acquire(
    store: &dyn LeaseStore,
    phase: &str,
    holder: Holder,
    take_over: bool,
) -> Result<Held, LeaseError> {
    let err = |message: String| LeaseError::Store {
        phase: phase.to_string(),
        location: store.location(),
        message,
    };
    for _ in 0..5 {
        let now = Utc::now();
        let doc = LeaseDoc {
            v: LEASE_VERSION,
            token: token(),
            holder: holder.clone(),
            since: now,
            renewed_at: now,
            ttl_seconds: TTL_SECONDS,
        };
        match store.read().await.map_err(err)? {
            None => {
                if let Some(etag) = store.create(&doc).await.map_err(err)? {
                    return Ok(Held {
                        doc,
                        etag,
                        took_over: None,
                    });
                }
            }
            Some((cur, etag)) => {
                let age = now.signed_duration_since(cur.renewed_at).num_seconds();
                let dead_here = cur.holder.host == holder.host
                    && cur.holder.place == holder.place
                    && cur.holder.pid != holder.pid
                    && !pid_alive(cur.holder.pid);
                let expired = cur.expired(now);
                if !(dead_here || (expired && take_over)) {
                    return Err(if expired {
                        LeaseError::Expired {
                            phase: phase.into(),
                            doc: cur,
                            age,
                        }
                    } else {
                        LeaseError::Held {
                            phase: phase.into(),
                            doc: cur,
                            age,
                        }
                    });
                }
                if let Some(etag) = store.replace(&doc, &etag).await.map_err(err)? {
                    return Ok(Held {
                        doc,
                        etag,
                        took_over: Some(cur.holder),
                    });
                }
            }
        }
    }
    Err(err(
        "the lease changed five times while it was being taken".into()
    ))
}
