//! SSM Run Command: sending a script to nodes, and one poller that follows
//! every command of a run in batches. A polling round is one
//! ListCommandInvocations of the invocations still executing (every node at
//! once, paginated: about one call per 50 in flight, whatever the number of
//! nodes). A watched invocation that is no longer executing has ended: a
//! step's end is read from the `runtime.json` its agent uploaded (S3, which
//! the controller reads anyway to collect the step); anything else, or a
//! step that left no `runtime.json` (its upload failed, its node went), is
//! asked with GetCommandInvocation.

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
    /// Where a step's agent puts its `runtime.json` (bucket, key).
    probe: Option<(String, String)>,
    /// Listed as executing at least once.
    seen: bool,
    /// `requested` is SSM's own time.
    server_time: bool,
}

/// How long an invocation that was never listed as executing is given
/// before it is taken for ended (SSM shows new invocations after a moment).
const UNSEEN_GRACE: Duration = Duration::from_secs(3);

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
    /// The most SSM calls one round took beyond ceil(watched / 50).
    pub max_extra_calls: AtomicU64,
    /// GetCommandInvocation calls (ends not read from S3).
    pub get_calls: AtomicU64,
    /// Steps' ends read from their `runtime.json` in S3.
    pub probes: AtomicU64,
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
        self.watch_step(sent, instance, None)
    }

    /// The same for a step whose agent uploads its `runtime.json` to
    /// `probe` (bucket, key): its end is read there.
    pub fn watch_step(
        &self,
        sent: &Sent,
        instance: &str,
        probe: Option<(String, String)>,
    ) -> oneshot::Receiver<Ended> {
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
                    probe,
                    seen: false,
                    server_time: sent.requested.is_some(),
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

    /// One polling round: list what still executes (every node at once);
    /// what was watched and no longer executes has ended.
    async fn round(&self) {
        let (watched, oldest, newest): (HashSet<(String, String)>, _, _) = match self.watched.lock()
        {
            Ok(w) => (
                w.keys().cloned().collect(),
                w.values().map(|x| x.requested).min(),
                // without SSM's own time for each, no upper bound
                w.values()
                    .map(|x| x.server_time.then_some(x.requested))
                    .collect::<Option<Vec<_>>>()
                    .and_then(|v| v.into_iter().max()),
            ),
            Err(_) => return,
        };
        let Some(oldest) = oldest else { return };
        let n = watched.len() as u64;
        self.stats.rounds.fetch_add(1, Ordering::Relaxed);
        self.stats.max_in_flight.fetch_max(n, Ordering::Relaxed);
        // whole seconds, rounded down: the filter's resolution
        let after = (oldest - chrono::Duration::seconds(1))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        // not what was sent since this round began (its own round will see it)
        let before = newest.map(|t| {
            (t + chrono::Duration::seconds(1))
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string()
        });
        let filters: Vec<CommandFilter> = [
            Some((CommandFilterKey::InvokedAfter, after)),
            before.map(|b| (CommandFilterKey::InvokedBefore, b)),
            Some((CommandFilterKey::ExecutionStage, "Executing".to_string())),
        ]
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| CommandFilter::builder().key(k).value(v).build().ok())
        .collect();
        let mut running: HashSet<(String, String)> = HashSet::new();
        let mut token: Option<String> = None;
        let mut calls = 0u64;
        loop {
            calls += 1;
            self.stats.list_calls.fetch_add(1, Ordering::Relaxed);
            let page = self
                .c
                .ssm
                .list_command_invocations()
                .max_results(50)
                .set_filters(Some(filters.clone()))
                .set_next_token(token.clone())
                .send()
                .await;
            // transient (throttling past the SDK's retries, network): next
            // round; nothing is taken for ended on a partial listing
            let Ok(page) = page else {
                self.note_calls(calls, n);
                return;
            };
            for inv in page.command_invocations() {
                if let (Some(id), Some(instance)) = (inv.command_id(), inv.instance_id()) {
                    running.insert((id.to_string(), instance.to_string()));
                }
            }
            token = page
                .next_token()
                .map(str::to_string)
                .filter(|t| !t.is_empty());
            if token.is_none() {
                break;
            }
        }
        // what ended: watched, not executing, and listed before (or long
        // enough ago that SSM would show it)
        let tick = self.c.settings.poll;
        type Ended3 = ((String, String), Option<(String, String)>, bool);
        let ended: Vec<Ended3> = match self.watched.lock() {
            Ok(mut w) => w
                .iter_mut()
                .filter_map(|(k, x)| {
                    if running.contains(k) {
                        x.seen = true;
                        return None;
                    }
                    // watched since the listing began: its own round
                    if !watched.contains(k) {
                        return None;
                    }
                    // settled: SSM would list it if it still ran
                    let settled = x.seen || x.since.elapsed() > UNSEEN_GRACE;
                    (settled || x.since.elapsed() > tick)
                        .then(|| (k.clone(), x.probe.clone(), settled))
                })
                .collect(),
            Err(_) => return,
        };
        // steps: from S3; the rest by command (one listing for a command's
        // many nodes, e.g. a reap), else GetCommandInvocation
        let mut asked: HashMap<String, Vec<(String, bool)>> = HashMap::new();
        let mut set = tokio::task::JoinSet::new();
        for ((id, instance), probe, settled) in ended {
            match probe {
                Some((bucket, key)) => {
                    let c = self.c.clone();
                    set.spawn(async move {
                        let e = super::s3::get(&c, &bucket, &key)
                            .await
                            .ok()
                            .flatten()
                            .and_then(|b| from_runtime(&b));
                        (id, instance, e, settled)
                    });
                }
                None => asked.entry(id).or_default().push((instance, settled)),
            }
        }
        while let Some(r) = set.join_next().await {
            let Ok((id, instance, e, settled)) = r else {
                continue;
            };
            match e {
                Some(e) => {
                    self.stats.probes.fetch_add(1, Ordering::Relaxed);
                    self.deliver(&instance, &id, e);
                }
                // no runtime.json: the agent did not get that far
                None => asked.entry(id).or_default().push((instance, settled)),
            }
        }
        let mut gets = 0u64;
        for (id, instances) in asked {
            // one that SSM may simply not show yet is asked later
            let instances: Vec<String> = instances
                .into_iter()
                .filter(|(_, settled)| *settled)
                .map(|(i, _)| i)
                .collect();
            if instances.is_empty() {
                continue;
            }
            gets += 1;
            self.stats.get_calls.fetch_add(1, Ordering::Relaxed);
            if instances.len() == 1 {
                let r = self
                    .c
                    .ssm
                    .get_command_invocation()
                    .command_id(&id)
                    .instance_id(&instances[0])
                    .send()
                    .await;
                if let Ok(inv) = r {
                    let out = format!(
                        "{}{}",
                        inv.standard_output_content().unwrap_or_default(),
                        inv.standard_error_content().unwrap_or_default()
                    );
                    let e = ended_of(
                        inv.status().cloned(),
                        inv.status_details().unwrap_or_default(),
                        inv.response_code(),
                        out,
                    );
                    if let Some(e) = e {
                        self.deliver(&instances[0], &id, e);
                    }
                }
                continue;
            }
            let mut token: Option<String> = None;
            loop {
                let page = self
                    .c
                    .ssm
                    .list_command_invocations()
                    .command_id(&id)
                    .details(true)
                    .max_results(50)
                    .set_next_token(token.clone())
                    .send()
                    .await;
                let Ok(page) = page else { break };
                for inv in page.command_invocations() {
                    let Some(instance) = inv.instance_id() else {
                        continue;
                    };
                    if !instances.iter().any(|i| i == instance) {
                        continue;
                    }
                    let plugin = inv.command_plugins().first();
                    let e = ended_of(
                        inv.status().cloned(),
                        inv.status_details().unwrap_or_default(),
                        plugin.map(|p| p.response_code()).unwrap_or(-1),
                        plugin
                            .and_then(|p| p.output())
                            .unwrap_or_default()
                            .to_string(),
                    );
                    if let Some(e) = e {
                        self.deliver(instance, &id, e);
                    }
                }
                token = page
                    .next_token()
                    .map(str::to_string)
                    .filter(|t| !t.is_empty());
                if token.is_none() {
                    break;
                }
                gets += 1;
            }
        }
        // in flight: what was watched, or what the listing found executing
        // (commands sent while the round ran are in flight too)
        let in_flight = n.max(running.len() as u64);
        self.stats
            .max_in_flight
            .fetch_max(in_flight, Ordering::Relaxed);
        self.note_calls(calls + gets, in_flight);
        // invocations SSM has not shown for a long time
        let stale: Vec<(String, String)> = match self.watched.lock() {
            Ok(w) => w
                .iter()
                .filter(|(k, x)| {
                    !running.contains(*k) && !x.seen && x.since.elapsed() > NOT_FOUND_GRACE
                })
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

    fn note_calls(&self, calls: u64, watched: u64) {
        self.stats
            .max_calls_per_round
            .fetch_max(calls, Ordering::Relaxed);
        self.stats.max_extra_calls.fetch_max(
            calls.saturating_sub(watched.div_ceil(50)),
            Ordering::Relaxed,
        );
    }
}

/// A step's end from the `runtime.json` its agent uploaded.
fn from_runtime(bytes: &[u8]) -> Option<Ended> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let code = v["exit_code"].as_i64()? as i32;
    let status = v["status"].as_str()?.to_string();
    Some(Ended {
        end: if code == 0 {
            End::Success
        } else {
            End::Failed(code)
        },
        details: format!("runtime.json: {status}"),
        output: String::new(),
    })
}

/// How an invocation ended, from its status; None while it runs.
fn ended_of(
    status: Option<CommandInvocationStatus>,
    details: &str,
    response: i32,
    output: String,
) -> Option<Ended> {
    let end = match status? {
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
        details: details.to_string(),
        output,
    })
}
