//! The shell scripts `infra` sends to nodes with SSM Run Command: a short
//! preamble that fetches the task bundle when it changed, the step's
//! environment as `export`s, and a call of the node wrapper
//! (`scripts/infra-node.sh`, shipped in the bundle). Pure functions; every
//! value is shell-quoted.

use crate::tasks::shell::quote;

/// The node wrapper, shipped in every bundle as `infra/infra-node.sh`.
pub const WRAPPER: &str = include_str!("../../../scripts/infra-node.sh");
pub const WRAPPER_KEY: &str = "infra/infra-node.sh";

/// Exit codes of the wrapper (see `scripts/infra-node.sh`).
pub const EXIT_TIMEOUT: i32 = 124;
pub const EXIT_UPLOAD: i32 = 171;
pub const EXIT_BUNDLE: i32 = 172;
pub const EXIT_INTERRUPTED: i32 = 175;
/// `health`: the background step ended before it became healthy.
pub const HEALTH_STEP_ENDED: i32 = 3;

/// The part of the bundle the nodes do not fetch: the task definitions.
pub const NODE_SKIPS: &str = "tasks/";

/// Where the nodes fetch the bundle from, and which version they need.
#[derive(Debug, Clone, PartialEq)]
pub struct BundleRef {
    /// `s3://<bucket>/<phase>/_bundle`
    pub url: String,
    /// Hash of the bundle's manifest.
    pub hash: String,
    pub region: String,
}

fn is_name(k: &str) -> bool {
    let mut cs = k.chars();
    cs.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The whole script for one wrapper call.
pub fn command(
    bundle: &BundleRef,
    env: &[(String, String)],
    mode: &str,
    args: &[String],
) -> String {
    let mut s = String::new();
    s.push_str("R=\"${INFRA_NODE_ROOT:-${INFRA_SANDBOX_DIR:-/var/lib/infra}}\"\n");
    s.push_str(&format!(
        ": \"${{AWS_DEFAULT_REGION:={}}}\"\nexport AWS_DEFAULT_REGION\n",
        quote(&bundle.region)
    ));
    let (url, hash) = (quote(&format!("{}/", bundle.url)), quote(&bundle.hash));
    let skips = quote(&format!("{}*", NODE_SKIPS));
    s.push_str(&format!(
        "if [ \"$(cat \"$R/bundle.hash\" 2>/dev/null)\" != {hash} ]; then\n  \
         mkdir -p \"$R/bundle\" && aws s3 sync --delete --only-show-errors --exclude {skips} {url} \"$R/bundle/\" && printf '%s\\n' {hash} >\"$R/bundle.hash\" \
         || {{ echo \"infra: cannot fetch the task bundle from \"{url} >&2; exit {EXIT_BUNDLE}; }}\nfi\n"
    ));
    for (k, v) in env {
        if is_name(k) {
            s.push_str(&format!("export {k}={}\n", quote(v)));
        }
    }
    s.push_str(&format!("exec sh \"$R/bundle/{WRAPPER_KEY}\" {mode}"));
    for a in args {
        s.push(' ');
        s.push_str(&quote(a));
    }
    s.push('\n');
    s
}

/// Arguments of `infra-node.sh step`.
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
}

pub fn step_args(a: &StepArgs) -> Vec<String> {
    vec![
        a.task.to_string(),
        a.attempt.to_string(),
        a.key.to_string(),
        a.name.to_string(),
        a.rank.to_string(),
        a.dest.to_string(),
        a.timeout_seconds.unwrap_or(0).to_string(),
        if a.background { "1" } else { "0" }.to_string(),
        a.outputs.join("\n"),
        a.command.to_string(),
    ]
}

/// Arguments of `infra-node.sh health`.
pub fn health_args(
    task: &str,
    attempt: u32,
    key: &str,
    timeout: u64,
    interval: f64,
    url: Option<&str>,
    command: Option<&str>,
) -> Vec<String> {
    vec![
        task.to_string(),
        attempt.to_string(),
        key.to_string(),
        timeout.to_string(),
        format!("{}", interval.clamp(0.1, 60.0)),
        url.unwrap_or("").to_string(),
        command.unwrap_or("").to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn bundle() -> BundleRef {
        BundleRef {
            url: "s3://b/p/_bundle".into(),
            hash: "abc".into(),
            region: "us-east-1".into(),
        }
    }

    #[test]
    fn values_reach_the_wrapper_literally() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("bundle/infra")).unwrap();
        std::fs::write(root.join("bundle.hash"), "abc\n").unwrap();
        // a stand-in wrapper that prints its arguments and one variable
        std::fs::write(
            root.join("bundle/infra/infra-node.sh"),
            "for a in \"$@\"; do printf '<%s>' \"$a\"; done; printf '|%s' \"$V\"",
        )
        .unwrap();
        let hostile = "it's $(id) `x` \"q\" \n two";
        let script = command(
            &bundle(),
            &[
                ("V".into(), hostile.into()),
                ("bad-name".into(), "x".into()),
            ],
            "step",
            &["a b".into(), hostile.into()],
        );
        let out = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .env("INFRA_NODE_ROOT", root)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("<step><a b><{hostile}>|{hostile}"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn the_wrapper_parses() {
        let out = Command::new("sh")
            .arg("-n")
            .arg("-c")
            .arg(WRAPPER)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
