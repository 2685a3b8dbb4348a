//! `infra node stop` (ask background steps to stop: their agents notice the
//! `stop` file, stop the step, upload and exit) and `infra node reap` (stop
//! every step still running on the node, after `infra` died: also those
//! whose agent died, found by the tag in their environment).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use super::fsio;
use super::proc::{self, Reaper, Tree};
use super::spec::{check_component, KeepSpec, StopSpec};
use super::Fail;

pub fn stop(root: &Path, s: StopSpec) -> Result<i32, Fail> {
    check_component("task", &s.task)?;
    let attempt = s.attempt.to_string();
    for k in &s.keys {
        check_component("key", k)?;
        // also when the step has not made its folder yet: a stop that
        // arrives while the step's agent starts must not be lost (the step
        // agent keeps the file and stops the step at once)
        let d = root.join("run").join(&s.task).join(&attempt).join(k);
        fsio::mkdirs(&d)?;
        fsio::write(&d.join("stop"), b"")?;
    }
    Ok(0)
}

/// Seconds a reaped step gets between SIGTERM and SIGKILL.
const REAP_GRACE: Duration = Duration::from_secs(2);

pub async fn reap(root: &Path, keep: &[KeepSpec]) -> Result<i32, Fail> {
    for k in keep {
        check_component("task", &k.task)?;
    }
    // `<task>/<attempt>/`, relative to `run/`: the steps of an attempt a
    // new controller adopts
    let kept: Vec<String> = keep
        .iter()
        .map(|k| format!("{}/{}/", k.task, k.attempt))
        .collect();
    let is_kept = |rel: &str| kept.iter().any(|k| rel.starts_with(k.as_str()));
    let mut steps: BTreeSet<String> = BTreeSet::new();
    // steps with an agent (or once had one) and no exit code: tell the
    // agent, if it lives, to stop it (it then uploads what there is)
    for task in read_dirs(&root.join("run")) {
        for attempt in read_dirs(&task) {
            let rel = format!(
                "{}/{}/",
                task.file_name().unwrap_or_default().to_string_lossy(),
                attempt.file_name().unwrap_or_default().to_string_lossy()
            );
            if is_kept(&rel) {
                continue;
            }
            for key in read_dirs(&attempt) {
                if key.join("pid").is_file() && !key.join("rc").exists() {
                    fsio::write(&key.join("stop"), b"")?;
                    steps.insert(key.to_string_lossy().into_owned());
                }
            }
        }
    }
    // every process of a step started from this node folder, whoever its
    // parent is now
    let root_s = root.to_string_lossy().into_owned();
    let step_tag = |env: &[Vec<u8>]| -> Option<String> {
        env.iter().find_map(|e| {
            e.strip_prefix(format!("{}=", proc::STEP_VAR).as_bytes())
                .map(|t| String::from_utf8_lossy(t).into_owned())
        })
    };
    let tagged = |env: &[Vec<u8>]| {
        proc::tagged_by(env, &root_s, None)
            && !step_tag(env).is_some_and(|t| is_kept(&format!("{t}/")))
    };
    let tree = Tree {
        descendants_of: None,
        tagged: &tagged,
    };
    for pid in tree.members() {
        if let Some(tag) = step_tag(&proc::environ(pid)) {
            let step = root.join("run").join(tag);
            steps.insert(step.to_string_lossy().into_owned());
        }
    }
    let mut reaper = Reaper::new(-1);
    proc::kill_tree(&tree, None, REAP_GRACE, &mut reaper).await;
    println!("infra-node: stopped {} step(s)", steps.len());
    Ok(0)
}

fn read_dirs(d: &Path) -> Vec<std::path::PathBuf> {
    let Ok(rd) = std::fs::read_dir(d) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}
