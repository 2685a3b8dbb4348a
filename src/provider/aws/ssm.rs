//! SSM Run Command: sending a script to nodes, and one poller that follows
//! every command of a run in batches. A polling round is one
//! ListCommandInvocations over the invocations requested since the oldest
//! one still watched, paginated (50 a page) only until every watched one is
//! seen: the calls per round follow the invocations in flight, not the
//! number of nodes (about ceil(in flight / 50), plus one for the page that
//! holds the newest finished ones).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ssm::types::{CommandFilter, CommandFilterKey, CommandInvocationStatus};
use tokio::sync::{oneshot, Notify};

use super::config::Clients;
use super::error::{api, AwsError};

/// AWS-RunShellScript's longest `executionTimeout` (48 h).
pub const MAX_EXECUTION_SECONDS: u64 = 172_800;
/// Commands that SSM has not shown after this long are given up.
const NOT_FOUND_GRACE: Duration = Duration::from_secs(120);

/// What one SendCommand is.
#[derive(Debug, Clone)]
pub struct SendSpec<'a> {
    pub instances: &'a [String],
    pub script: String,
    /// executionTimeout, seconds (capped at 48 h).
    pub execution_timeout: u64,
    pub comment: String,
    /// Where SSM writes the whole stdout/stderr: (bucket, key prefix).
    pub output: Option<(&'a str, &'a str)>,
}

/// A command SSM accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    pub id: String,
    /// When SSM says it was requested (its own clock, so that the polling
    /// window does not depend on this machine's clock).
    pub requested: Option<chrono::DateTime<chrono::Utc>>,
}

/// Send a script with AWS-RunShellScript, targeting instances by id (at most
/// 50 per call: the caller splits).
pub async fn send(c: &Clients, s: &SendSpec<'_>) -> Result<Sent, SendError> {
    let mut comment = s.comment.clone();
    comment.truncate(100);
    let mut req = c
        .ssm
        .send_command()
        .document_name("AWS-RunShellScript")
        .set_instance_ids(Some(s.instances.to_vec()))
        .parameters("commands", vec![s.script.clone()])
        .parameters(
            "executionTimeout",
            vec![s
                .execution_timeout
                .clamp(1, MAX_EXECUTION_SECONDS)
                .to_string()],
        )
        .timeout_seconds(600)
        .comment(comment);
    if let Some((b, p)) = s.output {
        req = req.output_s3_bucket_name(b).output_s3_key_prefix(p);
    }
    match req.send().await {
        Ok(out) => Ok(Sent {
            id: out
                .command()
                .and_then(|c| c.command_id())
                .unwrap_or_default()
                .to_string(),
            requested: out
                .command()
                .and_then(|c| c.requested_date_time())
                .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
        }),
        Err(e)
            if e.as_service_error()
                .is_some_and(|x| x.is_invalid_instance_id()) =>
        {
            Err(SendError::NotReachable(super::error::describe(&e)))
        }
        Err(e) => Err(SendError::Other(
            api("send a command with SSM Run Command")(e),
        )),
    }
}

#[derive(Debug)]
pub enum SendError {
    /// SSM refuses the instance: not running, or not a managed node (now).
    NotReachable(String),
    Other(AwsError),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::NotReachable(m) => write!(f, "SSM cannot reach the node: {m}"),
            SendError::Other(e) => write!(f, "{e}"),
        }
    }
}

pub async fn cancel(c: &Clients, command_id: &str) {
    let _ = c.ssm.cancel_command().command_id(command_id).send().await;
}

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    Success,
    /// Failed with the command's exit code (-1 when SSM killed it, e.g.
    /// because the instance stopped).
    Failed(i32),
    TimedOut,
    Cancelled,
    /// SSM could not deliver it (instance gone or not managed).
    Undeliverable,
    /// The node went away (the executor says so).
    NodeGone(String),
    /// SSM never showed the invocation.
    NotFound,
}

#[derive(Debug, Clone)]
pub struct Ended {
    pub end: End,
    /// SSM's StatusDetails.
    pub details: String,
    /// The start of the output (the wrapper's own lines).
    pub output: String,
}

struct Watch {
    tx: Option<oneshot::Sender<Ended>>,
    since: Instant,
    /// SSM's request time (else this machine's clock, a little earlier).
    requested: chrono::DateTime<chrono::Utc>,
}

/// How much earlier than this machine's clock a command's request time is
/// assumed to be when SSM did not say (clock skew).
const LOCAL_CLOCK_SLACK: chrono::Duration = chrono::Duration::seconds(60);

/// Counters for the API-call figures.
#[derive(Debug, Default)]
pub struct PollStats {
    pub rounds: AtomicU64,
    pub list_calls: AtomicU64,
    pub polled_invocations: AtomicU64,
    /// The most ListCommandInvocations calls one round took, and the most
    /// invocations watched (in flight) in one round.
    pub max_calls_per_round: AtomicU64,
    pub max_in_flight: AtomicU64,
    /// The most calls one round took beyond ceil(watched / 50): the pages
    /// spent on finished invocations requested after the oldest watched one.
    pub max_extra_calls: AtomicU64,
}

/// Follows every command in flight; `watch` registers one invocation.
pub struct Poller {
    c: Clients,
    // (command id, instance id) → watch
    watched: Mutex<HashMap<(String, String), Watch>>,
    wake: Notify,
    pub stats: PollStats,
}

impl Poller {
    pub fn start(c: Clients) -> Arc<Poller> {
        let p = Arc::new(Poller {
            c,
            watched: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            stats: PollStats::default(),
        });
        let weak = Arc::downgrade(&p);
        tokio::spawn(async move {
            loop {
                let Some(p) = weak.upgrade() else { return };
                let idle = p.watched.lock().map(|w| w.is_empty()).unwrap_or(true);
                let tick = p.c.settings.poll;
                if idle {
                    // sleep until something is watched (re-check now and then)
                    let _ = tokio::time::timeout(Duration::from_secs(1), p.wake.notified()).await;
                    continue;
                }
                tokio::time::sleep(tick).await;
                p.round().await;
            }
        });
        p
    }

    /// Be told when command `sent` ends on `instance`.
    pub fn watch(&self, sent: &Sent, instance: &str) -> oneshot::Receiver<Ended> {
        let (tx, rx) = oneshot::channel();
        let requested = sent
            .requested
            .unwrap_or_else(|| chrono::Utc::now() - LOCAL_CLOCK_SLACK);
        if let Ok(mut w) = self.watched.lock() {
            w.insert(
                (sent.id.clone(), instance.to_string()),
                Watch {
                    tx: Some(tx),
                    since: Instant::now(),
                    requested,
                },
            );
        }
        self.wake.notify_one();
        rx
    }

    /// The node is gone: every invocation watched on it ends with `reason`.
    pub fn node_gone(&self, instance: &str, reason: &str) {
        let gone: Vec<Watch> = match self.watched.lock() {
            Ok(mut w) => {
                let keys: Vec<_> = w.keys().filter(|(_, i)| i == instance).cloned().collect();
                keys.iter().filter_map(|k| w.remove(k)).collect()
            }
            Err(_) => Vec::new(),
        };
        for mut w in gone {
            if let Some(tx) = w.tx.take() {
                let _ = tx.send(Ended {
                    end: End::NodeGone(reason.to_string()),
                    details: String::new(),
                    output: String::new(),
                });
            }
        }
    }

    /// Stop watching (the caller gave up on it).
    pub fn forget(&self, command_id: &str, instance: &str) {
        if let Ok(mut w) = self.watched.lock() {
            w.remove(&(command_id.to_string(), instance.to_string()));
        }
    }

    fn deliver(&self, instance: &str, command_id: &str, ended: Ended) {
        let watch = self
            .watched
            .lock()
            .ok()
            .and_then(|mut w| w.remove(&(command_id.to_string(), instance.to_string())));
        if let Some(tx) = watch.and_then(|mut w| w.tx.take()) {
            let _ = tx.send(ended);
        }
    }

    /// One polling round: list the invocations requested since the oldest
    /// watched one (every node at once), paging only until every watched one
    /// is seen.
    async fn round(&self) {
        let (mut missing, oldest): (HashSet<(String, String)>, _) = match self.watched.lock() {
            Ok(w) => (
                w.keys().cloned().collect(),
                w.values().map(|x| x.requested).min(),
            ),
            Err(_) => return,
        };
        let Some(oldest) = oldest else { return };
        let watched = missing.len() as u64;
        self.stats.rounds.fetch_add(1, Ordering::Relaxed);
        self.stats
            .max_in_flight
            .fetch_max(watched, Ordering::Relaxed);
        // whole seconds, rounded down: the filter's resolution
        let after = (oldest - chrono::Duration::seconds(1))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let filter = CommandFilter::builder()
            .key(CommandFilterKey::InvokedAfter)
            .value(after)
            .build()
            .ok();
        let mut token: Option<String> = None;
        let mut calls = 0u64;
        loop {
            calls += 1;
            self.stats.list_calls.fetch_add(1, Ordering::Relaxed);
            let page = self
                .c
                .ssm
                .list_command_invocations()
                .details(true)
                .max_results(50)
                .set_filters(filter.clone().map(|f| vec![f]))
                .set_next_token(token.clone())
                .send()
                .await;
            // transient (throttling past the SDK's retries, network): next round
            let Ok(page) = page else { break };
            for inv in page.command_invocations() {
                let (Some(id), Some(instance)) = (inv.command_id(), inv.instance_id()) else {
                    continue;
                };
                let key = (id.to_string(), instance.to_string());
                if !missing.remove(&key) {
                    continue;
                }
                self.stats
                    .polled_invocations
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(ended) = ended(inv) {
                    self.deliver(instance, id, ended);
                }
            }
            token = page
                .next_token()
                .map(str::to_string)
                .filter(|t| !t.is_empty());
            if token.is_none() || missing.is_empty() {
                break;
            }
        }
        self.stats
            .max_calls_per_round
            .fetch_max(calls, Ordering::Relaxed);
        self.stats.max_extra_calls.fetch_max(
            calls.saturating_sub(watched.div_ceil(50)),
            Ordering::Relaxed,
        );
        // invocations SSM has not shown for a long time
        let stale: Vec<(String, String)> = match self.watched.lock() {
            Ok(w) => w
                .iter()
                .filter(|(k, x)| missing.contains(*k) && x.since.elapsed() > NOT_FOUND_GRACE)
                .map(|(k, _)| k.clone())
                .collect(),
            Err(_) => Vec::new(),
        };
        for (id, instance) in stale {
            self.deliver(
                &instance,
                &id,
                Ended {
                    end: End::NotFound,
                    details: "not listed by SSM".into(),
                    output: String::new(),
                },
            );
        }
    }
}

/// How a listed invocation ended; None while it runs.
fn ended(inv: &aws_sdk_ssm::types::CommandInvocation) -> Option<Ended> {
    let plugin = inv.command_plugins().first();
    let response = plugin.map(|p| p.response_code()).unwrap_or(-1);
    let details = inv.status_details().unwrap_or_default().to_string();
    let output = plugin
        .and_then(|p| p.output())
        .unwrap_or_default()
        .to_string();
    let end = match inv.status()? {
        CommandInvocationStatus::Success => End::Success,
        CommandInvocationStatus::Failed
            if details == "Undeliverable" || details == "Terminated" =>
        {
            End::Undeliverable
        }
        CommandInvocationStatus::Failed => End::Failed(response),
        CommandInvocationStatus::TimedOut if details == "DeliveryTimedOut" => End::Undeliverable,
        CommandInvocationStatus::TimedOut => End::TimedOut,
        CommandInvocationStatus::Cancelled => End::Cancelled,
        _ => return None,
    };
    Some(Ended {
        end,
        details,
        output,
    })
}
