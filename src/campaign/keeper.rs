//! Keeps a held lease alive while a campaign runs: renews it every
//! [`RENEW_SECONDS`](super::lease::RENEW_SECONDS) (conditionally: a lease
//! someone else took is never written over), and turns a stop request
//! (`infra stop`) into the run's stop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;

use super::lease::{Held, LeaseDoc, LeaseStore};

/// How often the stop request is looked for.
const STOP_POLL: Duration = Duration::from_secs(2);

/// The renewal task of a held lease; [`Keeper::release`] gives it up.
pub struct Keeper {
    store: Arc<dyn LeaseStore>,
    held: Arc<Mutex<(LeaseDoc, String)>>,
    task: tokio::task::JoinHandle<()>,
    stopped: Arc<std::sync::atomic::AtomicBool>,
}

impl Keeper {
    /// Renew `held` every `renew` and watch for a stop request, which is
    /// sent on `stop_tx` with its reason. `lost` is called (once) when the
    /// lease was taken by another controller: this one must stop
    /// controlling at once, without stopping any step (the new holder
    /// adopts them).
    pub fn start(
        store: Arc<dyn LeaseStore>,
        held: Held,
        renew: Duration,
        stop_tx: watch::Sender<Option<String>>,
        lost: Box<dyn Fn(String) + Send + Sync>,
        warn: Box<dyn Fn(String) + Send + Sync>,
    ) -> Keeper {
        let shared = Arc::new(Mutex::new((held.doc, held.etag)));
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, h, st) = (store.clone(), shared.clone(), stopped.clone());
        let task = tokio::spawn(async move {
            let mut last_renewal = tokio::time::Instant::now();
            let mut failing = false;
            loop {
                tokio::time::sleep(STOP_POLL.min(renew)).await;
                if !st.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Some(req) = s.stop_request().await {
                        st.store(true, std::sync::atomic::Ordering::Relaxed);
                        let _ = stop_tx.send(Some(format!(
                            "stopped by `infra stop` ({}, {})",
                            req.by,
                            req.requested_at.format("%H:%M:%S UTC")
                        )));
                    }
                }
                if last_renewal.elapsed() < renew {
                    continue;
                }
                let (mut doc, etag) = match h.lock() {
                    Ok(g) => g.clone(),
                    Err(_) => return,
                };
                doc.renewed_at = Utc::now();
                match s.replace(&doc, &etag).await {
                    Ok(Some(tag)) => {
                        if let Ok(mut g) = h.lock() {
                            *g = (doc, tag);
                        }
                        last_renewal = tokio::time::Instant::now();
                        failing = false;
                    }
                    Ok(None) => {
                        let by = s
                            .read()
                            .await
                            .ok()
                            .flatten()
                            .map(|(d, _)| super::lease::who(&d.holder))
                            .unwrap_or_else(|| "nobody (it was removed)".into());
                        lost(format!(
                            "the lease of this campaign ({}) was taken over by {by}: this controller stops controlling it and leaves its steps running for the new one",
                            s.location()
                        ));
                        return;
                    }
                    Err(e) => {
                        // retried at the next tick; said once
                        if !failing {
                            warn(format!(
                                "warning: cannot renew the lease ({}): {e}; retrying",
                                s.location()
                            ));
                        }
                        failing = true;
                    }
                }
            }
        });
        Keeper {
            store,
            held: shared,
            task,
            stopped,
        }
    }

    /// Stop renewing and give the lease up; a stop request that was acted
    /// on is removed.
    pub async fn release(self) {
        self.task.abort();
        let etag = self.held.lock().ok().map(|g| g.1.clone());
        if let Some(etag) = etag {
            if let Err(e) = self.store.release(&etag).await {
                eprintln!(
                    "warning: cannot give up the lease ({}): {e}; it expires in {} s",
                    self.store.location(),
                    super::lease::TTL_SECONDS
                );
            }
        }
        if self.stopped.load(std::sync::atomic::Ordering::Relaxed) {
            self.store.clear_stop().await;
        }
    }
}
