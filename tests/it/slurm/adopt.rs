//! A controller killed (`kill -9`) while its steps run in Slurm
//! allocations: the next `infra up` adopts the steps still in flight
//! (each starts once: its marker has one line), collects every result and
//! cancels the allocations at the end.

use std::process::Stdio;
use std::time::{Duration, Instant};

use super::{cluster, jobs_of, slurm, slurm_cmd};
use crate::common::{journal, one_step_template, Project};

fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < deadline, "waited for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn started(p: &Project, phase: &str) -> usize {
    std::fs::read_to_string(p.path().join(format!(".infra/{phase}/journal.jsonl")))
        .unwrap_or_default()
        .matches("\"event\":\"step_started\"")
        .count()
}

#[test]
fn slurm_kill_9_of_the_controller_and_a_restart_adopt_the_steps_in_flight() {
    if !cluster() {
        return;
    }
    let p = Project::new();
    p.write(
        "plans/templates/mark.json.hbs",
        &one_step_template(
            "mkdir -p \\\"$INFRA_ROOT/marks\\\" && echo start job=$SLURM_JOB_ID >> \\\"$INFRA_ROOT/marks/$INFRA_TASK_ID\\\" && sleep 12 && echo finished && echo 42 > out.txt",
            "\"outputs\": [\"out.txt\"],",
        ),
    );
    p.write(
        "plans/sad.json",
        r#"{"phase": "sad", "name": "adopted on slurm", "provider": "slurm",
          "node_groups": {"cpu": {"count": 1, "slots": 3}},
          "estimate": {"default": "12s"},
          "layers": [{"id": "L0", "grid": {"backend": "mark", "id": "sad-{i}",
             "factors": {"i": [0, 1, 2]}}}]}"#,
    );
    let mut child = slurm_cmd(&p, &["up", "sad", "--yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("every step to start", 120, || started(&p, "sad") >= 3);
    std::thread::sleep(Duration::from_secs(1));
    child.kill().unwrap(); // SIGKILL: nothing of infra's own stop runs
    child.wait().unwrap();
    let job = {
        let st: serde_json::Value =
            serde_json::from_str(&p.read(".infra/sad/slurm-state.json")).unwrap();
        st["allocations"][0]["job_id"].as_str().unwrap().to_string()
    };
    assert_eq!(
        jobs_of(&p, "sad").len(),
        1,
        "the allocation outlives its controller"
    );
    let r = slurm(&p, &["up", "sad", "--yes"]);
    r.ok();
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(all.contains("adopt  sad-0"), "{all}");
    assert!(
        !all.contains("left by an earlier run"),
        "no step was stopped:\n{all}"
    );
    assert!(
        !all.contains("submitted cpu-1"),
        "no new allocation:\n{all}"
    );
    let j = journal(&p, "sad");
    assert_eq!(
        j.iter().filter(|e| e["event"] == "adopted").count(),
        3,
        "{j:#?}"
    );
    assert!(!j.iter().any(|e| e["event"] == "requeued"), "{j:#?}");
    for i in 0..3 {
        let id = format!("sad-{i}");
        assert_eq!(
            p.read(&format!("marks/{id}")),
            format!("start job={job}\n"),
            "{id}'s step started once"
        );
        let ok: Vec<_> = j
            .iter()
            .filter(|e| e["event"] == "succeeded" && e["task"] == id.as_str())
            .collect();
        assert_eq!(ok.len(), 1, "{id}: {j:#?}");
        assert_eq!(ok[0]["attempt"], 1, "{id} kept its first attempt");
        assert_eq!(p.read(&format!("results/sad/{id}/out.txt")), "42\n");
        assert!(p
            .read(&format!("results/sad/{id}/stdout.log"))
            .contains("finished"));
    }
    assert!(jobs_of(&p, "sad").is_empty(), "{:?}", jobs_of(&p, "sad"));
}

/// The controller killed, then its allocation ends too (cancelled while no
/// controller runs): the next run does not wait for the steps that died
/// with it; their tasks run again on a new allocation and every result is
/// collected.
#[test]
fn slurm_steps_whose_allocation_ended_while_no_controller_ran_run_again_on_a_new_one() {
    if !cluster() {
        return;
    }
    let p = Project::new();
    p.write(
        "plans/templates/mark.json.hbs",
        &one_step_template(
            "mkdir -p \\\"$INFRA_ROOT/marks\\\" && echo start job=$SLURM_JOB_ID >> \\\"$INFRA_ROOT/marks/$INFRA_TASK_ID\\\" && sleep 8 && echo 42 > out.txt",
            "\"outputs\": [\"out.txt\"],",
        ),
    );
    p.write(
        "plans/sag.json",
        r#"{"phase": "sag", "name": "allocation gone", "provider": "slurm",
          "node_groups": {"cpu": {"count": 1, "slots": 2}},
          "estimate": {"default": "8s"},
          "layers": [{"id": "L0", "grid": {"backend": "mark", "id": "sag-{i}",
             "factors": {"i": [0, 1]}}}]}"#,
    );
    let mut child = slurm_cmd(&p, &["up", "sag", "--yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("every step to start", 120, || started(&p, "sag") >= 2);
    std::thread::sleep(Duration::from_secs(1));
    child.kill().unwrap();
    child.wait().unwrap();
    let st: serde_json::Value =
        serde_json::from_str(&p.read(".infra/sag/slurm-state.json")).unwrap();
    let job = st["allocations"][0]["job_id"].as_str().unwrap().to_string();
    assert!(std::process::Command::new("scancel")
        .arg(&job)
        .status()
        .unwrap()
        .success());
    wait_for("the allocation to leave squeue", 60, || {
        jobs_of(&p, "sag").is_empty()
    });
    let t0 = Instant::now();
    let r = slurm(&p, &["up", "sag", "--yes"]);
    r.ok();
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t0.elapsed()
    );
    for i in 0..2 {
        let id = format!("sag-{i}");
        assert_eq!(p.read(&format!("results/sag/{id}/out.txt")), "42\n");
        let marks = p.read(&format!("marks/{id}"));
        let last = marks.lines().last().unwrap();
        assert!(
            !last.contains(&format!("job={job}")),
            "{id} finished on a new allocation: {marks}"
        );
    }
    assert!(jobs_of(&p, "sag").is_empty(), "{:?}", jobs_of(&p, "sag"));
}
