//! Commands sent to whole nodes outside any task: the plan's setup, and the
//! reaping of steps a dead `infra run` left running.

use super::config::Clients;
use super::layout;
use super::script::{self, BundleRef};
use super::ssm::{self, End, Poller};

/// Run the plan's setup on nodes `(name, instance id, private ip)` (the
/// wrapper skips nodes where this setup already ran); one SendCommand per
/// node, since each gets its own environment.
pub async fn setup_nodes(
    c: &Clients,
    poller: &Poller,
    bundle: &BundleRef,
    bucket: &str,
    name_key: &str,
    hash: &str,
    nodes: &[(String, String, String)],
) -> Result<(), String> {
    let dest = format!("s3://{bucket}/{}", layout::setup_log_prefix(name_key));
    let prefix = layout::ssm_output_prefix(name_key);
    let mut waits = Vec::new();
    for (name, iid, addr) in nodes {
        let env = vec![
            ("INFRA_NODE_NAME".to_string(), name.clone()),
            ("INFRA_NODE_ADDR".to_string(), addr.clone()),
            ("INFRA_PROVIDER".to_string(), "aws".to_string()),
            ("INFRA_BUCKET".to_string(), bucket.to_string()),
        ];
        let script = script::command(bundle, &env, "setup", &[hash.to_string(), dest.clone()]);
        let ids = [iid.clone()];
        let send = ssm::SendSpec {
            instances: &ids,
            script,
            execution_timeout: ssm::MAX_EXECUTION_SECONDS,
            comment: format!("infra {name_key} setup {name}"),
            output: Some((bucket, &prefix)),
        };
        let cmd = ssm::send(c, &send)
            .await
            .map_err(|e| format!("cannot start setup on node {name}: {e}"))?;
        waits.push((name.clone(), iid.clone(), poller.watch(&cmd, iid)));
    }
    let mut errors = Vec::new();
    for (name, iid, rx) in waits {
        match rx.await.map(|e| e.end) {
            Ok(End::Success) => {}
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
/// for up to 50 nodes) and wait for it.
pub async fn reap(
    c: &Clients,
    poller: &Poller,
    bundle: &BundleRef,
    bucket: &str,
    name_key: &str,
    instance_ids: &[String],
) -> usize {
    let prefix = layout::ssm_output_prefix(name_key);
    let mut stopped = 0;
    for chunk in instance_ids.chunks(50) {
        let script = script::command(bundle, &[], "reap", &[]);
        let send = ssm::SendSpec {
            instances: chunk,
            script,
            execution_timeout: 120,
            comment: format!("infra {name_key} reap"),
            output: Some((bucket, &prefix)),
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
    stopped
}
