//! Commands sent to whole nodes outside any task: the agent's install, the
//! plan's setup, and the reaping of steps a dead `infra run` left running.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use super::agent::{self, AgentRef, Arch};
use super::config::Clients;
use super::layout;
use super::script::{self, BundleRef};
use super::ssm::{self, End, Poller};

/// What every command sent to a phase's nodes needs: the bundle, the agent
/// builds by architecture, and which nodes already have theirs.
pub struct NodeKit {
    pub bundle: BundleRef,
    pub agents: BTreeMap<Arch, AgentRef>,
    pub bucket: String,
    /// The plan's name key: the S3 prefix and the commands' comments.
    pub name_key: String,
    installed: Mutex<HashSet<String>>,
    /// The idle watcher's spec (`infra node watch`), started with each
    /// check or install of the agent; None: no watcher.
    watch: Option<serde_json::Value>,
    /// One check-and-install at a time (a run's start and a node that
    /// joins may ask at once; the second then finds the node done).
    ensuring: tokio::sync::Mutex<()>,
}

impl NodeKit {
    pub fn new(
        bundle: BundleRef,
        agents: BTreeMap<Arch, AgentRef>,
        bucket: &str,
        name_key: &str,
    ) -> NodeKit {
        NodeKit {
            bundle,
            agents,
            bucket: bucket.to_string(),
            name_key: name_key.to_string(),
            installed: Mutex::new(HashSet::new()),
            watch: None,
            ensuring: tokio::sync::Mutex::new(()),
        }
    }

    /// Start the idle watcher with `spec` wherever the agent is checked or
    /// installed.
    pub fn with_watch(mut self, spec: serde_json::Value) -> NodeKit {
        self.watch = Some(spec);
        self
    }

    /// The agent build for nodes of `arch` (every group's architecture has
    /// one: the kit is made from the plan's groups).
    pub fn agent(&self, arch: Arch) -> Result<&AgentRef, String> {
        self.agents
            .get(&arch)
            .ok_or_else(|| format!("no node agent for {} nodes", arch.as_str()))
    }

    /// Where SSM writes commands' whole output.
    pub fn ssm_prefix(&self) -> String {
        layout::ssm_output_prefix(&self.name_key)
    }

    /// The script of one agent call on a node of `arch`.
    pub fn script(
        &self,
        arch: Arch,
        env: &[(String, String)],
        mode: &str,
        spec: &serde_json::Value,
    ) -> Result<String, String> {
        Ok(script::command(
            self.agent(arch)?,
            &self.bundle.region,
            env,
            mode,
            spec,
        ))
    }

    /// Install the agent where it is missing on nodes `(instance id, arch)`
    /// (each node is checked once per run).
    pub async fn ensure(
        &self,
        c: &Clients,
        poller: &Poller,
        nodes: &[(String, Arch)],
    ) -> Result<(), String> {
        let _one = self.ensuring.lock().await;
        let todo: Vec<(String, Arch)> = {
            let done = self.installed.lock().map(|d| d.clone()).unwrap_or_default();
            nodes
                .iter()
                .filter(|(iid, _)| !done.contains(iid))
                .cloned()
                .collect()
        };
        if todo.is_empty() {
            return Ok(());
        }
        let prefix = self.ssm_prefix();
        agent::ensure(
            c,
            poller,
            &self.agents,
            (&self.bucket, &prefix),
            &self.name_key,
            &todo,
            self.watch.as_ref(),
        )
        .await?;
        if let Ok(mut d) = self.installed.lock() {
            d.extend(todo.into_iter().map(|(iid, _)| iid));
        }
        Ok(())
    }
}

/// A node a command goes to.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub instance_id: String,
    pub addr: String,
    pub arch: Arch,
}

/// Run the plan's setup on `nodes` (the agent skips nodes where this setup
/// already ran); one SendCommand per node, since each gets its own
/// environment.
pub async fn setup_nodes(
    c: &Clients,
    poller: &Poller,
    kit: &NodeKit,
    hash: &str,
    nodes: &[Target],
) -> Result<(), String> {
    let ids: Vec<(String, Arch)> = nodes
        .iter()
        .map(|n| (n.instance_id.clone(), n.arch))
        .collect();
    kit.ensure(c, poller, &ids).await?;
    let dest = format!(
        "s3://{}/{}",
        kit.bucket,
        layout::setup_log_prefix(&kit.name_key)
    );
    let prefix = kit.ssm_prefix();
    let mut waits = Vec::new();
    for n in nodes {
        let env = vec![
            ("INFRA_NODE_NAME".to_string(), n.name.clone()),
            ("INFRA_NODE_ADDR".to_string(), n.addr.clone()),
            ("INFRA_PROVIDER".to_string(), "aws".to_string()),
            ("INFRA_BUCKET".to_string(), kit.bucket.clone()),
        ];
        let script = kit.script(
            n.arch,
            &env,
            "setup",
            &script::setup_spec(hash, &dest, &kit.bundle),
        )?;
        let ids = [n.instance_id.clone()];
        let send = ssm::SendSpec {
            instances: &ids,
            script,
            execution_timeout: ssm::MAX_EXECUTION_SECONDS,
            comment: format!("infra {} setup {}", kit.name_key, n.name),
            output: Some((&kit.bucket, &prefix)),
        };
        let cmd = ssm::send(c, &send)
            .await
            .map_err(|e| format!("cannot start setup on node {}: {e}", n.name))?;
        waits.push((n.clone(), poller.watch(&cmd, &n.instance_id)));
    }
    let mut errors = Vec::new();
    for (n, rx) in waits {
        let (name, iid) = (&n.name, &n.instance_id);
        match rx.await.map(|e| e.end) {
            Ok(End::Success) => {}
            Ok(End::Failed(script::EXIT_BUNDLE)) => errors.push(format!(
                "setup did not run on node {name} ({iid}): the task bundle could not be fetched or failed its SHA-256 check (see the command's output under s3://{}/{})",
                kit.bucket,
                kit.ssm_prefix()
            )),
            Ok(End::Failed(code)) => errors.push(format!(
                "setup failed on node {name} ({iid}) with exit code {code} (log: {dest}/{iid}.log)"
            )),
            Ok(other) => errors.push(format!(
                "setup did not finish on node {name} ({iid}): {other:?}"
            )),
            Err(_) => errors.push(format!("setup on node {name} was lost")),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n  "))
    }
}

/// Stop every step a dead `infra run` left on the nodes (one SendCommand
/// for up to 50 nodes of an architecture) and wait for it.
pub async fn reap(
    c: &Clients,
    poller: &Poller,
    kit: &NodeKit,
    nodes: &[(String, Arch)],
    keep: &[(String, u32)],
) -> Result<usize, String> {
    kit.ensure(c, poller, nodes).await?;
    let spec = serde_json::json!({
        "keep": keep
            .iter()
            .map(|(task, attempt)| serde_json::json!({"task": task, "attempt": attempt}))
            .collect::<Vec<_>>()
    });
    let prefix = kit.ssm_prefix();
    let mut stopped = 0;
    for arch in kit.agents.keys() {
        let ids: Vec<String> = nodes
            .iter()
            .filter(|n| n.1 == *arch)
            .map(|n| n.0.clone())
            .collect();
        for chunk in ids.chunks(50) {
            let script = kit.script(*arch, &[], "reap", &spec)?;
            let send = ssm::SendSpec {
                instances: chunk,
                script,
                execution_timeout: 120,
                comment: format!("infra {} reap", kit.name_key),
                output: Some((&kit.bucket, &prefix)),
            };
            let Ok(cmd) = ssm::send(c, &send).await else {
                continue;
            };
            // every node's invocation is watched before any is awaited: one
            // polling round for the chunk, not one per node
            let waits: Vec<_> = chunk.iter().map(|iid| poller.watch(&cmd, iid)).collect();
            for rx in waits {
                if let Ok(e) = rx.await {
                    if let Some(n) = e
                        .output
                        .split("stopped ")
                        .nth(1)
                        .and_then(|r| r.split_whitespace().next())
                        .and_then(|n| n.parse::<usize>().ok())
                    {
                        stopped += n;
                    }
                }
            }
        }
    }
    Ok(stopped)
}
