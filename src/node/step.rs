//! `infra node step`: run one step of a task on this node.
//!
//! Folders (as the former shell wrapper had them): the work folder
//! `$ROOT/work/<task>/<attempt>` (earlier attempts' folders go on the
//! attempt's first step), the run folder `$ROOT/run/<task>/<attempt>/<key>`
//! (command.sh, pid, rc, stop, upload/steps/<key>/{stdout.log, stderr.log,
//! runtime.json}), the output folder `$ROOT/out/<task>/<attempt>/<rank>`.
//! The upload to `<dest>/` is `steps/<key>/...` and `files/...` (the
//! declared outputs, then the output folder's content).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::signal::unix::{signal, SignalKind};

use super::checkpoint::Checkpoint;
use super::fsio::{self, write_fail};
use super::proc::{self, Reaper, Tree};
use super::spec::{check_component, safe_rel, StepSpec};
use super::upload::{parse_dest, walk, S3};
use super::{bundle, spot, Fail};
use super::{EXIT_INTERRUPTED, EXIT_SIGNALLED, EXIT_TIMEOUT, EXIT_UPLOAD, EXIT_USAGE};

/// Why the agent ended the step before it ended by itself.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Why {
    Stopped,
    Timeout,
    Interrupted,
    /// The agent got SIGTERM, SIGINT or SIGHUP (SSM cancelled the command).
    Signalled,
}

/// The step's folders.
pub struct Paths {
    pub work: PathBuf,
    pub run: PathBuf,
    pub upload: PathBuf,
    pub step_dir: PathBuf,
    pub out: PathBuf,
}

impl Paths {
    pub fn new(root: &Path, s: &StepSpec) -> Paths {
        let attempt = s.attempt.to_string();
        let run = root.join("run").join(&s.task).join(&attempt).join(&s.key);
        let upload = run.join("upload");
        Paths {
            work: root.join("work").join(&s.task).join(&attempt),
            step_dir: upload.join("steps").join(&s.key),
            upload,
            run,
            out: root
                .join("out")
                .join(&s.task)
                .join(&attempt)
                .join(s.rank.to_string()),
        }
    }
}

fn now_utc() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Remove the folders of the task's other attempts (the attempt's first step
/// on this node).
fn clear_old_attempts(root: &Path, task: &str, attempt: u32) -> Result<(), Fail> {
    let keep = attempt.to_string();
    for top in ["work", "run", "out"] {
        let Ok(rd) = std::fs::read_dir(root.join(top).join(task)) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_name().to_str() != Some(keep.as_str()) {
                fsio::remove_all(&e.path())?;
            }
        }
    }
    Ok(())
}

pub async fn step(root: &Path, s: StepSpec) -> Result<i32, Fail> {
    check_component("task", &s.task)?;
    check_component("key", &s.key)?;
    let (bucket, prefix) = parse_dest(&s.dest).ok_or_else(|| {
        Fail::new(
            EXIT_USAGE,
            format!("bad --spec: dest {:?} is not s3://bucket/prefix", s.dest),
        )
    })?;
    let s3 = S3::default();
    bundle::ensure(root, s.bundle.as_ref(), &s3).await?;
    let p = Paths::new(root, &s);
    // the attempt's first step on this node
    let first_here = !p.work.is_dir();
    if first_here {
        clear_old_attempts(root, &s.task, s.attempt)?;
    }
    let mut ck = match &s.checkpoint {
        Some(c) => Some(Checkpoint::open(root, c)?),
        None => None,
    };
    if let Some(ck) = ck.as_mut() {
        if first_here {
            let n = ck.restore(&s3).await?;
            if n > 0 {
                println!(
                    "infra-node: restored {n} checkpoint file(s) into {}",
                    ck.dir.display()
                );
            }
        } else {
            fsio::mkdirs(&ck.dir)?;
        }
    }
    // a stop that came before this agent got here (the stop command can
    // overtake the step's start) is kept: the step is stopped at once
    let stop_early = p.run.join("stop").exists();
    fsio::remove_all(&p.run)?;
    for d in [&p.work, &p.step_dir, &p.out] {
        fsio::mkdirs(d)?;
    }
    if stop_early {
        fsio::write(&p.run.join("stop"), b"")?;
    }
    let command_file = p.run.join("command.sh");
    fsio::write(&command_file, format!("{}\n", s.command).as_bytes())?;
    let open = |name: &str| -> Result<std::fs::File, Fail> {
        let path = p.step_dir.join(name);
        std::fs::File::create(&path).map_err(|e| write_fail(&path, &e))
    };
    let (stdout, stderr) = (open("stdout.log")?, open("stderr.log")?);

    let root_s = root.to_string_lossy().into_owned();
    let tag = proc::step_tag(&s.task, s.attempt, &s.key);
    let env = vec![
        (
            "INFRA_WORK_DIR".to_string(),
            p.work.to_string_lossy().into_owned(),
        ),
        (
            "INFRA_OUTPUT_DIR".to_string(),
            p.out.to_string_lossy().into_owned(),
        ),
        (
            "INFRA_SCRIPTS".to_string(),
            root.join("bundle/scripts").to_string_lossy().into_owned(),
        ),
        (
            "INFRA_CHECKPOINT_DIR".to_string(),
            ck.as_ref()
                .map(|c| c.dir.clone())
                .unwrap_or_else(|| root.join("checkpoint").join(&s.task))
                .to_string_lossy()
                .into_owned(),
        ),
        (proc::STEP_VAR.to_string(), tag.clone()),
        (proc::ROOT_VAR.to_string(), root_s.clone()),
    ];
    // signals first: a cancel that arrives during the start still stops the step
    let sig = |k: SignalKind| {
        signal(k).map_err(|e| Fail::new(1, format!("cannot watch for signals: {e}")))
    };
    let (mut term, mut int, mut hup) = (
        sig(SignalKind::terminate())?,
        sig(SignalKind::interrupt())?,
        sig(SignalKind::hangup())?,
    );
    proc::become_subreaper();
    let started = Instant::now();
    let started_at = now_utc();
    let shell = fsio::shell();
    let pid = proc::spawn_session(
        &shell,
        &[command_file.as_os_str()],
        &p.work,
        &env,
        stdout,
        stderr,
    )
    .map_err(|e| Fail::new(1, format!("cannot start {}: {e}", shell.display())))?;
    let mut reaper = Reaper::new(pid);
    let tagged = |env: &[Vec<u8>]| proc::tagged_by(env, &root_s, Some(&tag));
    let tree = Tree {
        descendants_of: Some(std::process::id() as i32),
        tagged: &tagged,
    };
    let grace = Duration::from_secs(s.grace_seconds);
    let pid_file = p.run.join("pid");
    if let Err(f) = fsio::write(&pid_file, format!("{pid}\n").as_bytes()) {
        proc::kill_tree(&tree, Some(pid), grace, &mut reaper).await;
        return Err(f);
    }

    // what is new in the logs goes up every few seconds (`infra logs --follow`)
    let live = s.live.as_deref().and_then(|d| {
        let every = Duration::from_secs_f64(s.live_seconds.clamp(0.2, 600.0));
        super::live::start(d, &s.key, &p.step_dir, every)
    });
    let stop_file = p.run.join("stop");
    let deadline = (s.timeout_seconds > 0)
        .then(|| tokio::time::Instant::from_std(started) + Duration::from_secs(s.timeout_seconds));
    let exited = proc::exited(pid);
    let spot_watch = spot::watch(spot::interval());
    let timeout = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(exited, spot_watch, timeout);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // a foreground step syncs the checkpoint while it runs
    let ck_every = ck
        .as_ref()
        .and_then(|c| c.interval)
        .filter(|_| !s.background);
    let mut ck_tick = tokio::time::interval_at(
        tokio::time::Instant::now() + ck_every.unwrap_or(Duration::from_secs(86_400)),
        ck_every.unwrap_or(Duration::from_secs(86_400)),
    );
    ck_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let why = loop {
        tokio::select! {
            biased;
            _ = &mut exited => break None,
            _ = term.recv() => break Some(Why::Signalled),
            _ = int.recv() => break Some(Why::Signalled),
            _ = hup.recv() => break Some(Why::Signalled),
            _ = &mut timeout => break Some(Why::Timeout),
            _ = tick.tick() => {
                // orphans the step left behind and that exited meanwhile
                reaper.reap();
                if stop_file.exists() {
                    break Some(Why::Stopped);
                }
            }
            _ = &mut spot_watch => break Some(Why::Interrupted),
            _ = ck_tick.tick(), if ck_every.is_some() => {
                if let Some(c) = ck.as_mut() {
                    if let Err(e) = c.sync(&s3).await {
                        eprintln!("infra-node: the checkpoint could not be synced (tried again at the next interval): {e}");
                    }
                }
            }
        }
    };
    // it ended on its own meanwhile: that is how it ended
    let why = match why {
        Some(Why::Signalled) => why,
        Some(_) if crate::provider::process::leader_gone(pid) => None,
        w => w,
    };
    if why.is_some() {
        if let Some(w) = why.filter(|w| *w != Why::Signalled) {
            let text = match w {
                Why::Stopped => "stopped",
                Why::Timeout => "timeout",
                _ => "interrupted",
            };
            // a note for people reading the node's folders; not needed
            let _ = std::fs::write(p.run.join("why"), format!("{text}\n"));
        }
        // a spot notice leaves two minutes: the grace is shorter then
        let grace = match why {
            Some(Why::Interrupted) => Duration::from_secs(
                s.spot_grace_seconds
                    .unwrap_or(s.grace_seconds)
                    .min(crate::plan::model::MAX_SPOT_GRACE_SECONDS),
            ),
            _ => grace,
        };
        proc::kill_tree(&tree, Some(pid), grace, &mut reaper).await;
    }
    reaper.wait_leader();
    let waited = reaper.code();
    let rc_file = p.run.join("rc");
    // the checkpoint as the step left it, whatever ended it
    let ck_bytes = match ck.as_mut() {
        None => None,
        Some(c) => {
            let limit = if why == Some(Why::Signalled) { 20 } else { 600 };
            match tokio::time::timeout(Duration::from_secs(limit), c.sync(&s3)).await {
                Ok(Ok(b)) => Some(b),
                Ok(Err(e)) => {
                    note_stderr(&p, &format!("the checkpoint could not be saved: {e}"));
                    None
                }
                Err(_) => {
                    note_stderr(
                        &p,
                        &format!("the checkpoint could not be saved within {limit} s"),
                    );
                    None
                }
            }
        }
    };
    if why == Some(Why::Signalled) {
        let _ = fsio::write_atomic(&rc_file, format!("{waited}\n").as_bytes());
        eprintln!(
            "infra-node: step {} stopped: the agent was told to stop",
            s.name
        );
        return Ok(EXIT_SIGNALLED);
    }
    fsio::write_atomic(&rc_file, format!("{waited}\n").as_bytes())?;
    let (status, code) = match why {
        Some(Why::Stopped) => ("stopped", 0),
        Some(Why::Timeout) => ("timeout", EXIT_TIMEOUT),
        Some(Why::Interrupted) => ("interrupted", EXIT_INTERRUPTED),
        _ => ("exited", waited),
    };
    let wall = started.elapsed().as_secs_f64();
    let wall = (wall * 1000.0).round() / 1000.0;
    let peak = proc::children_peak_rss_kb();
    let (version, sha) = super::agent_version();
    let index: serde_json::Value = s
        .key
        .split('-')
        .next()
        .and_then(|i| i.parse::<u64>().ok())
        .map_or(serde_json::Value::Null, Into::into);
    let runtime = json!({
        "task": s.task,
        "attempt": s.attempt,
        "step": s.name,
        "index": index,
        "key": s.key,
        "rank": s.rank,
        "status": status,
        "exit_code": code,
        "wall_seconds": wall,
        "peak_rss_kb": peak,
        "checkpoint_bytes": ck_bytes,
        "background": s.background,
        "started": started_at,
        "ended": now_utc(),
        "instance_id": spot::instance_id(root).await,
        "agent_version": version,
        "agent_sha256": sha,
    });
    let mut text = serde_json::to_vec(&runtime).unwrap_or_default();
    text.push(b'\n');
    fsio::write(&p.step_dir.join("runtime.json"), &text)?;

    // the last of the live logs before the result (a signalled agent does
    // not wait for them)
    if let Some(l) = live {
        l.finish().await;
    }
    let files = upload_list(&s, &p);
    // a cancel during the upload still ends the agent (as the wrapper's trap did)
    let uploaded = tokio::select! {
        r = s3.put_all(&bucket, &prefix, &files) => r,
        _ = term.recv() => return Ok(EXIT_SIGNALLED),
        _ = int.recv() => return Ok(EXIT_SIGNALLED),
        _ = hup.recv() => return Ok(EXIT_SIGNALLED),
    };
    if let Err(e) = uploaded {
        eprintln!(
            "infra-node: cannot upload the results of step {} to {}: {e}",
            s.name, s.dest
        );
        return Ok(EXIT_UPLOAD);
    }
    println!(
        "infra-node: step {} {status} with code {code} after {wall:.3}s",
        s.name
    );
    Ok(code)
}

/// A line for the person reading the step's stderr (and the agent's).
fn note_stderr(p: &Paths, msg: &str) {
    eprintln!("infra-node: {msg}");
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .append(true)
        .open(p.step_dir.join("stderr.log"))
    {
        let _ = writeln!(f, "infra: {msg}");
    }
}

/// What goes up: the step folder as `steps/<key>/...`, then the declared
/// outputs and the output folder as `files/...` (a later entry of the same
/// name wins, as the wrapper's copies into one folder did).
fn upload_list(s: &StepSpec, p: &Paths) -> Vec<(String, PathBuf)> {
    let mut steps = Vec::new();
    walk(&p.step_dir, &format!("steps/{}", s.key), &mut steps);
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for o in s.outputs.iter().map(|o| o.trim_end_matches('/')) {
        if o.is_empty() {
            continue;
        }
        if !safe_rel(o) {
            eprintln!("infra-node: output {o:?} is not a path inside the work folder; skipped");
            continue;
        }
        let src = p.work.join(o);
        if src.is_dir() {
            walk(&src, &format!("files/{o}"), &mut files);
        } else if src.is_file() {
            files.push((format!("files/{o}"), src));
        }
    }
    walk(&p.out, "files", &mut files);
    // keep the last of each key, in order
    let mut seen = std::collections::HashSet::new();
    let mut unique: Vec<(String, PathBuf)> = Vec::new();
    for f in files.into_iter().rev() {
        if seen.insert(f.0.clone()) {
            unique.push(f);
        }
    }
    unique.reverse();
    steps.extend(unique);
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_list_steps_then_outputs_and_the_output_folder_wins() {
        let d = tempfile::tempdir().unwrap();
        let spec: StepSpec = serde_json::from_value(serde_json::json!({
            "task": "t", "attempt": 1, "key": "0-1", "name": "n", "rank": 0,
            "dest": "s3://b/p", "command": "true",
            "outputs": ["res", "one.txt", "../escape", "missing"]
        }))
        .unwrap();
        let p = Paths::new(d.path(), &spec);
        for dir in [&p.step_dir, &p.work.join("res/sub"), &p.out] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(p.step_dir.join("stdout.log"), "").unwrap();
        std::fs::write(p.work.join("res/sub/a"), "w").unwrap();
        std::fs::write(p.work.join("one.txt"), "w").unwrap();
        std::fs::write(d.path().join("work/t/escape"), "x").unwrap();
        std::fs::write(p.out.join("one.txt"), "o").unwrap();
        let list = upload_list(&spec, &p);
        let keys: Vec<&str> = list.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["steps/0-1/stdout.log", "files/res/sub/a", "files/one.txt"]
        );
        assert_eq!(
            list[2].1,
            p.out.join("one.txt"),
            "the output folder's copy wins"
        );
    }
}
