//! SSM Run Command: sending a script to nodes, and one poller that follows
//! every command of a run in batches — one ListCommandInvocations per node
//! with work in flight per tick, never one call per task.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ssm::types::{CommandFilter, CommandFilterKey, CommandInvocationStatus};
use tokio::sync::{oneshot, Notify};

use super::config::Clients;
use super::error::{api, code, AwsError};

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

/// Send a script with AWS-RunShellScript, targeting instances by id (at most
/// 50 per call: the caller splits); returns the command id.
pub async fn send(c: &Clients, s: &SendSpec<'_>) -> Result<String, SendError> {
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
        Ok(out) => Ok(out
            .command()
            .and_then(|c| c.command_id())
            .unwrap_or_default()
            .to_string()),
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
    requested: chrono::DateTime<chrono::Utc>,
}

/// Counters for the API-call figures.
#[derive(Debug, Default)]
pub struct PollStats {
    pub rounds: AtomicU64,
    pub list_calls: AtomicU64,
    pub polled_invocations: AtomicU64,
}

/// Follows every command in flight; `watch` registers one invocation.
pub struct Poller {
    c: Clients,
    // instance id → command id → watch
    watched: Mutex<HashMap<String, HashMap<String, Watch>>>,
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

    /// Be told when `command_id` ends on `instance`.
    pub fn watch(&self, command_id: &str, instance: &str) -> oneshot::Receiver<Ended> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.watched.lock() {
            w.entry(instance.to_string()).or_default().insert(
                command_id.to_string(),
                Watch {
                    tx: Some(tx),
                    since: Instant::now(),
                    requested: chrono::Utc::now(),
                },
            );
        }
        self.wake.notify_one();
        rx
    }

    /// The node is gone: every invocation watched on it ends with `reason`.
    pub fn node_gone(&self, instance: &str, reason: &str) {
        let gone = self
            .watched
            .lock()
            .ok()
            .and_then(|mut w| w.remove(instance));
        for (_, mut w) in gone.unwrap_or_default() {
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
            if let Some(m) = w.get_mut(instance) {
                m.remove(command_id);
                if m.is_empty() {
                    w.remove(instance);
                }
            }
        }
    }

    fn deliver(&self, instance: &str, command_id: &str, ended: Ended) {
        if let Ok(mut w) = self.watched.lock() {
            if let Some(m) = w.get_mut(instance) {
                if let Some(mut watch) = m.remove(command_id) {
                    if let Some(tx) = watch.tx.take() {
                        let _ = tx.send(ended);
                    }
                }
                if m.is_empty() {
                    w.remove(instance);
                }
            }
        }
    }

    /// One polling round: per node with watched commands, list its recent
    /// invocations (paging only until every watched one is seen).
    async fn round(&self) {
        let snapshot: Vec<(String, Vec<String>, chrono::DateTime<chrono::Utc>)> =
            match self.watched.lock() {
                Ok(w) => w
                    .iter()
                    .map(|(i, m)| {
                        (
                            i.clone(),
                            m.keys().cloned().collect(),
                            m.values()
                                .map(|x| x.requested)
                                .min()
                                .unwrap_or_else(chrono::Utc::now),
                        )
                    })
                    .collect(),
                Err(_) => return,
            };
        self.stats.rounds.fetch_add(1, Ordering::Relaxed);
        for (instance, commands, oldest) in snapshot {
            let after = (oldest - chrono::Duration::minutes(5))
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string();
            let filter = CommandFilter::builder()
                .key(CommandFilterKey::InvokedAfter)
                .value(after)
                .build()
                .ok();
            let mut missing: Vec<String> = commands.clone();
            let mut token: Option<String> = None;
            loop {
                self.stats.list_calls.fetch_add(1, Ordering::Relaxed);
                let page = self
                    .c
                    .ssm
                    .list_command_invocations()
                    .instance_id(&instance)
                    .details(true)
                    .max_results(50)
                    .set_filters(filter.clone().map(|f| vec![f]))
                    .set_next_token(token.clone())
                    .send()
                    .await;
                let page = match page {
                    Ok(p) => p,
                    // transient (throttling past the SDK's retries, network): next round
                    Err(e) => {
                        if code(&e) == Some("InvalidInstanceId") {
                            self.node_gone(&instance, "SSM no longer knows the instance");
                        }
                        break;
                    }
                };
                for inv in page.command_invocations() {
                    let Some(id) = inv.command_id() else { continue };
                    if !missing.iter().any(|m| m == id) {
                        continue;
                    }
                    self.stats
                        .polled_invocations
                        .fetch_add(1, Ordering::Relaxed);
                    missing.retain(|m| m != id);
                    let plugin = inv.command_plugins().first();
                    let response = plugin.map(|p| p.response_code()).unwrap_or(-1);
                    let details = inv.status_details().unwrap_or_default().to_string();
                    let output = plugin
                        .and_then(|p| p.output())
                        .unwrap_or_default()
                        .to_string();
                    let end = match inv.status() {
                        Some(CommandInvocationStatus::Success) => Some(End::Success),
                        Some(CommandInvocationStatus::Failed)
                            if details == "Undeliverable" || details == "Terminated" =>
                        {
                            Some(End::Undeliverable)
                        }
                        Some(CommandInvocationStatus::Failed) => Some(End::Failed(response)),
                        Some(CommandInvocationStatus::TimedOut)
                            if details == "DeliveryTimedOut" =>
                        {
                            Some(End::Undeliverable)
                        }
                        Some(CommandInvocationStatus::TimedOut) => Some(End::TimedOut),
                        Some(CommandInvocationStatus::Cancelled) => Some(End::Cancelled),
                        _ => None,
                    };
                    if let Some(end) = end {
                        self.deliver(
                            &instance,
                            id,
                            Ended {
                                end,
                                details,
                                output,
                            },
                        );
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
            // invocations SSM has not shown for a long time
            let stale: Vec<String> = match self.watched.lock() {
                Ok(w) => w
                    .get(&instance)
                    .map(|m| {
                        m.iter()
                            .filter(|(id, x)| {
                                missing.contains(id) && x.since.elapsed() > NOT_FOUND_GRACE
                            })
                            .map(|(id, _)| id.clone())
                            .collect()
                    })
                    .unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            for id in stale {
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
}
