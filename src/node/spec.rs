//! The `--spec` of each mode: one JSON object, as the controller writes it
//! (the shared design of issue 14). Unknown fields are ignored so that a
//! newer controller can add some.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Fail, EXIT_USAGE};

/// Where the task bundle is and which manifest the command expects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleSpec {
    pub bucket: String,
    /// `<phase>/_bundle`
    pub prefix: String,
    /// `<phase>/_bundle.manifest`
    pub manifest_key: String,
    /// SHA-256 (hex) of the manifest object's bytes.
    pub manifest_sha256: String,
}

fn ten() -> u64 {
    10
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepSpec {
    pub task: String,
    pub attempt: u32,
    /// `<index>`, or `<index>-<try>` for a retried step.
    pub key: String,
    pub name: String,
    pub rank: u32,
    /// `s3://bucket/prefix`
    pub dest: String,
    /// 0 = none.
    #[serde(default)]
    pub timeout_seconds: u64,
    #[serde(default)]
    pub background: bool,
    /// Paths relative to the work folder.
    #[serde(default)]
    pub outputs: Vec<String>,
    pub command: String,
    /// Seconds between SIGTERM and SIGKILL when the step is stopped.
    #[serde(default = "ten")]
    pub grace_seconds: u64,
    /// None: run without fetching a bundle (tests, local use).
    #[serde(default)]
    pub bundle: Option<BundleSpec>,
    /// Seconds between SIGTERM and SIGKILL on a spot interruption notice
    /// (default: `grace_seconds`, at most 90).
    #[serde(default)]
    pub spot_grace_seconds: Option<u64>,
    /// The task's `$INFRA_CHECKPOINT_DIR` and where it is mirrored.
    #[serde(default)]
    pub checkpoint: Option<super::checkpoint::CheckpointSpec>,
    /// `s3://bucket/prefix` where what is new in the step's logs goes
    /// every `live_seconds` while it runs (`node::live`); None: only at
    /// the end.
    #[serde(default)]
    pub live: Option<String>,
    #[serde(default = "three")]
    pub live_seconds: f64,
}

fn three() -> f64 {
    3.0
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthSpec {
    pub task: String,
    pub attempt: u32,
    pub key: String,
    pub timeout_seconds: f64,
    #[serde(default = "one")]
    pub interval_seconds: f64,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub bundle: Option<BundleSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopSpec {
    pub task: String,
    pub attempt: u32,
    pub keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReapSpec {
    /// Attempts a new controller adopts: their steps are left running.
    #[serde(default)]
    pub keep: Vec<KeepSpec>,
}

/// One attempt to leave running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeepSpec {
    pub task: String,
    pub attempt: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetupSpec {
    pub hash: String,
    /// `s3://bucket/prefix`: the log goes to `<dest>/<instance id>.log`.
    pub dest: String,
    #[serde(default)]
    pub bundle: Option<BundleSpec>,
}

/// Parse a spec; a bad one is exit 2.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, Fail> {
    serde_json::from_str(text).map_err(|e| Fail::new(EXIT_USAGE, format!("bad --spec: {e}")))
}

/// A name used as one folder name (task id, step key): not empty, not `.`
/// or `..`, no `/` and no NUL. Anything else (quotes, control characters)
/// is a valid file name.
pub fn check_component(what: &str, v: &str) -> Result<(), Fail> {
    if v.is_empty() || v == "." || v == ".." || v.contains('/') || v.contains('\0') {
        return Err(Fail::new(
            EXIT_USAGE,
            format!("bad --spec: {what} {v:?} cannot be a folder name"),
        ));
    }
    Ok(())
}

/// A relative path that stays inside its folder: no absolute path, no `..`,
/// no empty or `.` component, no NUL.
pub fn safe_rel(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.contains('\0')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_spec_defaults_and_unknown_fields() {
        let s: StepSpec = parse(
            r#"{"task":"t","attempt":1,"key":"0","name":"run","rank":0,"dest":"s3://b/p","command":"true","later":1}"#,
        )
        .unwrap();
        assert_eq!(s.grace_seconds, 10);
        assert_eq!(s.timeout_seconds, 0);
        assert!(!s.background && s.outputs.is_empty() && s.bundle.is_none());
        let e = parse::<StepSpec>(r#"{"task":"t"}"#).unwrap_err();
        assert_eq!(e.code, EXIT_USAGE);
        let _: ReapSpec = parse("{}").unwrap();
    }

    #[test]
    fn folder_names_and_relative_paths() {
        assert!(check_component("task", "a\r\u{1}\"b").is_ok());
        for bad in ["", ".", "..", "a/b", "a\0"] {
            assert!(check_component("task", bad).is_err(), "{bad:?}");
        }
        assert!(safe_rel("a/b.txt"));
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/"] {
            assert!(!safe_rel(bad), "{bad:?}");
        }
    }
}
