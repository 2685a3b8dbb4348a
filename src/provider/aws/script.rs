//! The shell scripts `infra` sends to nodes with SSM Run Command: the step's
//! environment as `export`s and a call of the node agent (`infra node
//! <mode> --spec <json>`, src/node/), which fetches and verifies the task
//! bundle itself. Pure functions; every value is shell-quoted.

use serde_json::{json, Value};

use super::agent::{self, AgentRef};
use crate::tasks::shell::quote;

/// Exit codes of the node agent (see src/node/).
pub const EXIT_TIMEOUT: i32 = 124;
pub const EXIT_UPLOAD: i32 = 171;
pub const EXIT_BUNDLE: i32 = 172;
pub const EXIT_NO_AGENT: i32 = agent::EXIT_NO_AGENT;
pub const EXIT_INTERRUPTED: i32 = 175;
pub const EXIT_NODE_IO: i32 = 176;
pub const EXIT_CHECKPOINT: i32 = crate::node::checkpoint::EXIT_CHECKPOINT;
/// `health`: the background step ended before it became healthy.
pub const HEALTH_STEP_ENDED: i32 = 3;

/// Where the nodes fetch the bundle from, and the SHA-256 of the manifest
/// that lists every file's SHA-256: the agent checks both before it runs
/// anything of the bundle.
#[derive(Debug, Clone, PartialEq)]
pub struct BundleRef {
    pub bucket: String,
    /// `<phase>/_bundle`
    pub prefix: String,
    /// `<phase>/_bundle.manifest`
    pub manifest_key: String,
    pub manifest_sha256: String,
    pub region: String,
}

impl BundleRef {
    pub fn spec(&self) -> Value {
        json!({
            "bucket": self.bucket,
            "prefix": self.prefix,
            "manifest_key": self.manifest_key,
            "manifest_sha256": self.manifest_sha256,
        })
    }
}

fn is_name(k: &str) -> bool {
    let mut cs = k.chars();
    cs.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The whole script for one agent call.
pub fn command(
    agent: &AgentRef,
    region: &str,
    env: &[(String, String)],
    mode: &str,
    spec: &Value,
) -> String {
    let mut s = String::from(agent::ROOT);
    s.push_str(&format!(
        ": \"${{AWS_DEFAULT_REGION:={}}}\"\nexport AWS_DEFAULT_REGION\n",
        quote(region)
    ));
    for (k, v) in env {
        if is_name(k) {
            s.push_str(&format!("export {k}={}\n", quote(v)));
        }
    }
    s.push_str(&agent::require(agent));
    s.push_str(&format!(
        "exec {} node {} --spec {}\n",
        agent.node_path(),
        quote(mode),
        quote(&spec.to_string())
    ));
    s
}

/// What `infra node step` gets.
#[derive(Debug, Clone)]
pub struct StepArgs<'a> {
    pub task: &'a str,
    pub attempt: u32,
    /// The step's key: `<index>`, or `<index>-<try>` for a retried step.
    pub key: &'a str,
    pub name: &'a str,
    pub rank: u32,
    /// `s3://<bucket>/<phase>/results/<task>/attempt-<n>` (`layout::attempt_prefix`)
    pub dest: &'a str,
    pub timeout_seconds: Option<u64>,
    pub background: bool,
    pub outputs: &'a [String],
    pub command: &'a str,
    /// How long a stopped step gets between TERM and KILL.
    pub grace_seconds: u64,
    /// The same after a spot interruption notice.
    pub spot_grace_seconds: u64,
    /// `s3://<bucket>/<phase>/checkpoints/<name>`, the folder's name
    /// (`<task>` or `<task>+rank<r>`) and the seconds between syncs.
    pub checkpoint: Option<(String, String, u64)>,
}

pub fn step_spec(a: &StepArgs, bundle: &BundleRef) -> Value {
    json!({
        "task": a.task,
        "attempt": a.attempt,
        "key": a.key,
        "name": a.name,
        "rank": a.rank,
        "dest": a.dest,
        "timeout_seconds": a.timeout_seconds.unwrap_or(0),
        "background": a.background,
        "outputs": a.outputs,
        "command": a.command,
        "grace_seconds": a.grace_seconds,
        "spot_grace_seconds": a.spot_grace_seconds,
        "checkpoint": a.checkpoint.as_ref().map(|(dest, name, every)| json!({
            "dest": dest, "name": name, "interval_seconds": every,
        })),
        "bundle": bundle.spec(),
        "live": super::layout::live_dest(a.dest),
    })
}

/// What `infra node health` gets.
#[allow(clippy::too_many_arguments)]
pub fn health_spec(
    task: &str,
    attempt: u32,
    key: &str,
    timeout: u64,
    interval: f64,
    url: Option<&str>,
    command: Option<&str>,
    bundle: &BundleRef,
) -> Value {
    json!({
        "task": task,
        "attempt": attempt,
        "key": key,
        "timeout_seconds": timeout,
        "interval_seconds": interval.clamp(0.1, 60.0),
        "url": url,
        "command": command,
        "bundle": bundle.spec(),
    })
}

pub fn stop_spec(task: &str, attempt: u32, keys: &[String]) -> Value {
    json!({"task": task, "attempt": attempt, "keys": keys})
}

pub fn setup_spec(hash: &str, dest: &str, bundle: &BundleRef) -> Value {
    json!({"hash": hash, "dest": dest, "bundle": bundle.spec()})
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn agent() -> AgentRef {
        AgentRef {
            arch: agent::Arch::X86_64,
            sha256: "ab".repeat(32),
            bucket: "b".into(),
            key: "k".into(),
        }
    }

    #[test]
    fn values_reach_the_agent_literally() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let bin = root.join("bin").join("ab".repeat(32));
        std::fs::create_dir_all(&bin).unwrap();
        // a stand-in agent that prints its arguments and one variable
        let stand_in = bin.join("infra");
        std::fs::write(
            &stand_in,
            "#!/bin/sh\nfor a in \"$@\"; do printf '<%s>' \"$a\"; done; printf '|%s' \"$V\"",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755)).unwrap();
        let hostile = "it's $(id) `x` \"q\" \n two";
        let spec = json!({"command": hostile});
        let script = command(
            &agent(),
            "us-east-1",
            &[
                ("V".into(), hostile.into()),
                ("bad-name".into(), "x".into()),
            ],
            "step",
            &spec,
        );
        let out = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .env("INFRA_NODE_ROOT", root)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("<node><step><--spec><{spec}>|{hostile}"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn a_node_without_the_agent_says_so_and_exits_173() {
        let dir = tempfile::tempdir().unwrap();
        let script = command(&agent(), "us-east-1", &[], "reap", &json!({}));
        let out = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .env("INFRA_NODE_ROOT", dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(EXIT_NO_AGENT));
        assert!(String::from_utf8_lossy(&out.stderr)
            .contains("node agent abababababab is not installed"));
    }
}
