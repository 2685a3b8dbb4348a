//! A throwaway project folder and a way to run `infra` in it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Project {
    pub dir: tempfile::TempDir,
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl Project {
    pub fn new() -> Project {
        let dir = tempfile::Builder::new()
            .prefix("infra-it-")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir_all(dir.path().join("plans/templates")).unwrap();
        std::fs::create_dir_all(dir.path().join("scripts")).unwrap();
        Project { dir }
    }

    /// A project holding a copy of the repository's plans and scripts.
    pub fn with_examples() -> Project {
        let p = Project::new();
        for sub in ["plans", "plans/templates", "scripts"] {
            for e in std::fs::read_dir(repo().join(sub)).unwrap().flatten() {
                if e.path().is_file() {
                    std::fs::copy(e.path(), p.path().join(sub).join(e.file_name())).unwrap();
                }
            }
        }
        p
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.path().join(rel).exists()
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_infra"));
        c.arg("-C").arg(self.path()).args(args).env_remove("CI");
        c
    }

    pub fn infra(&self, args: &[&str]) -> Run {
        let out = self.cmd(args).output().expect("run infra");
        Run::from(out)
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into(),
            stderr: String::from_utf8_lossy(&o.stderr).into(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn ok(&self) -> &Run {
        assert_eq!(
            self.code, 0,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// A template whose single step runs `command` (already JSON-escaped).
pub fn one_step_template(command: &str, extra: &str) -> String {
    format!("{{ {extra} \"steps\": [ {{ \"name\": \"main\", \"command\": \"{command}\" }} ] }}")
}

/// Journal lines as JSON values.
pub fn journal(p: &Project, phase: &str) -> Vec<serde_json::Value> {
    p.read(&format!(".infra/{phase}/journal.jsonl"))
        .lines()
        .map(|l| serde_json::from_str(l).expect("journal line parses"))
        .collect()
}

/// The `--json` output of `run`/`up` (JSON Lines): every line parses and
/// has an `"event"`; the one whose event is `kind` (the last such).
pub fn json_event(stdout: &str, kind: &str) -> serde_json::Value {
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert!(lines.iter().all(|v| v["event"].is_string()), "{stdout}");
    lines
        .into_iter()
        .rev()
        .find(|v| v["event"] == kind)
        .unwrap_or_else(|| panic!("no {kind:?} line in:\n{stdout}"))
}
