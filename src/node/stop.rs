//! `infra node stop` (ask background steps to stop: their agents notice the
//! `stop` file, stop the step, upload and exit) and `infra node reap` (stop
//! every step still running on the node, after `infra` died: also those
//! whose agent died, found by the tag in their environment).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use super::fsio;
use super::proc::{self, Reaper, Tree};
use super::spec::{check_component, StopSpec};
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

pub async fn reap(root: &Path) -> Result<i32, Fail> {
    let mut steps: BTreeSet<String> = BTreeSet::new();
    // steps with an agent (or once had one) and no exit code: tell the
    // agent, if it lives, to stop it (it then uploads what there is)
    for task in read_dirs(&root.join("run")) {
        for attempt in read_dirs(&task) {
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
    let tagged = |env: &[Vec<u8>]| proc::tagged_by(env, &root_s, None);
    let tree = Tree {
        descendants_of: None,
        tagged: &tagged,
    };
    for pid in tree.members() {
        let env = proc::environ(pid);
        if let Some(tag) = env
            .iter()
            .find_map(|e| e.strip_prefix(format!("{}=", proc::STEP_VAR).as_bytes()))
        {
            let step = root.join("run").join(String::from_utf8_lossy(tag).as_ref());
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
