//! The Slurm provider on a real one-host cluster
//! (`scripts/slurm-test-cluster.sh start`; `scripts/test.sh` starts it and
//! sets INFRA_REQUIRE_SLURM, so that CI fails rather than skips): holder
//! allocations submitted with sbatch, steps in them with srun --overlap,
//! an allocation cancelled midway, and nothing left in squeue afterwards.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{journal, one_step_template, Project, Run};

mod adopt;
mod container;
mod hours;
mod steps;

/// Whether a Slurm cluster answers here; without one the test is skipped,
/// unless INFRA_REQUIRE_SLURM is set (then it fails).
pub(crate) fn cluster() -> bool {
    let ok = Command::new("squeue")
        .args(["--me", "--noheader"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var_os("INFRA_REQUIRE_SLURM").is_some() {
            panic!("INFRA_REQUIRE_SLURM is set but no Slurm cluster answers (`squeue` fails): start one with `scripts/slurm-test-cluster.sh start`");
        }
        eprintln!("skipped: no Slurm cluster answers (`squeue` fails); `scripts/slurm-test-cluster.sh start` starts one, INFRA_REQUIRE_SLURM=1 makes this a failure");
    }
    ok
}

/// The jobs of `project`'s phase `phase` still in squeue.
pub(crate) fn jobs_of(p: &Project, phase: &str) -> Vec<String> {
    let project = p
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_lowercase();
    let out = Command::new("squeue")
        .args(["--me", "--noheader", "--format", "%i %j"])
        .output()
        .expect("squeue");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!(".{phase}.")) && l.contains(&project))
        .map(str::to_string)
        .collect()
}

pub(crate) fn slurm_cmd(p: &Project, args: &[&str]) -> Command {
    let mut c = p.cmd(args);
    c.env("INFRA_POLL_SECONDS", "0.5")
        .env("INFRA_NODES_TIMEOUT_SECONDS", "120")
        .env("INFRA_REPLACEMENT_WAIT_SECONDS", "60");
    c
}

pub(crate) fn slurm(p: &Project, args: &[&str]) -> Run {
    Run::from(slurm_cmd(p, args).output().expect("run infra"))
}

#[test]
fn slurm_quickstart_up_runs_in_allocations_and_leaves_squeue_empty() {
    if !cluster() {
        return;
    }
    let p = Project::with_examples();
    let r = slurm(&p, &["--provider", "slurm", "up", "quickstart", "--yes"]);
    r.ok();
    assert!(r.stderr.contains("submitted cpu-0 (job "), "{}", r.stderr);
    assert!(
        r.stdout.contains("5 succeeded") || r.stderr.contains("5 succeeded"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    for t in ["quickstart-L0-sum-1e5", "quickstart-L1-echo-c4"] {
        assert!(
            p.exists(&format!("results/quickstart@slurm/{t}/runtime.json")),
            "{t}"
        );
    }
    assert!(
        jobs_of(&p, "quickstart@slurm").is_empty(),
        "{:?}",
        jobs_of(&p, "quickstart@slurm")
    );
}

/// A 30-task sweep given `--provider slurm`: each task's step ran inside
/// one of the two allocations (srun sets SLURM_JOB_ID and SLURM_STEP_ID),
/// its output came back into results/ from the shared file system.
#[test]
fn slurm_sweep_of_30_tasks_runs_every_step_inside_an_allocation() {
    if !cluster() {
        return;
    }
    let p = Project::new();
    p.write(
        "plans/templates/where.json.hbs",
        &one_step_template(
            "echo job=$SLURM_JOB_ID step=$SLURM_STEP_ID provider=$INFRA_PROVIDER seed={{seed}} > where.txt",
            "\"outputs\": [\"where.txt\"],",
        ),
    );
    p.write(
        "plans/sw.json",
        r#"{"phase": "sw", "name": "sweep on slurm",
          "node_groups": {"cpu": {"instance_type": "c6i.xlarge", "count": 2, "slots": 3}},
          "slurm": {"time_limit": "30m", "node_groups": {"cpu": {"cpus_per_task": 1}}},
          "estimate": {"default": "5s"},
          "layers": [{"id": "L0", "grid": {"backend": "where", "id": "sw-{lr}-s{seed}",
             "factors": {"lr": [1, 2, 3], "seed": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}}}]}"#,
    );
    let t0 = Instant::now();
    let r = slurm(&p, &["--provider", "slurm", "up", "sw", "--yes"]);
    r.ok();
    eprintln!("30-task sweep on slurm: {:.1}s", t0.elapsed().as_secs_f64());
    let mut jobs = std::collections::BTreeSet::new();
    for lr in 1..=3 {
        for seed in 0..10 {
            let w = p.read(&format!("results/sw@slurm/sw-{lr}-s{seed}/where.txt"));
            assert!(w.contains("provider=slurm"), "{w}");
            assert!(w.contains(&format!("seed={seed}")), "{w}");
            let job = w
                .split_whitespace()
                .next()
                .unwrap()
                .trim_start_matches("job=")
                .to_string();
            assert!(
                !job.is_empty() && !w.contains("step= "),
                "not in a Slurm step: {w}"
            );
            jobs.insert(job);
        }
    }
    assert_eq!(
        jobs.len(),
        2,
        "the two allocations share the work: {jobs:?}"
    );
    assert!(jobs_of(&p, "sw@slurm").is_empty());
}

/// An allocation cancelled while its tasks run (as a time limit, a
/// preemption or a node failure would end it): the runner sees it go, its
/// tasks are queued again and finish on a replacement allocation, each
/// resuming from its checkpoint on the shared file system.
#[test]
fn slurm_allocation_killed_midway_requeues_its_tasks_on_a_replacement() {
    if !cluster() {
        return;
    }
    let p = Project::new();
    p.write(
        "plans/templates/ck.json.hbs",
        &one_step_template(
            "n=$(cat $INFRA_CHECKPOINT_DIR/n 2>/dev/null || echo 0); echo $((n+1)) > $INFRA_CHECKPOINT_DIR/n; sleep 6; echo starts=$(cat $INFRA_CHECKPOINT_DIR/n) job=$SLURM_JOB_ID ckpt=$INFRA_CHECKPOINT_DIR > out.txt",
            "\"outputs\": [\"out.txt\"],",
        ),
    );
    p.write(
        "plans/kill.json",
        r#"{"phase": "kill", "name": "an allocation lost", "provider": "slurm",
          "node_groups": {"cpu": {"count": 2, "slots": 2}},
          "estimate": {"default": "6s"},
          "layers": [{"id": "L0", "grid": {"backend": "ck", "id": "kill-{i}",
             "factors": {"i": [0, 1, 2, 3, 4, 5]}}}]}"#,
    );
    let t0 = Instant::now();
    let child = slurm_cmd(&p, &["up", "kill", "--yes"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // wait until cpu-0 runs a step, then cancel its allocation
    let deadline = Instant::now() + Duration::from_secs(120);
    let victim = loop {
        assert!(Instant::now() < deadline, "no step started on cpu-0");
        if p.exists(".infra/kill/journal.jsonl") && p.exists(".infra/kill/slurm-state.json") {
            let on_cpu0 = journal(&p, "kill")
                .iter()
                .any(|e| e["event"] == "dispatched" && e["nodes"][0] == "cpu-0");
            let st: serde_json::Value =
                serde_json::from_str(&p.read(".infra/kill/slurm-state.json")).unwrap();
            let job = st["allocations"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["name"] == "cpu-0")
                .map(|a| a["job_id"].as_str().unwrap().to_string());
            if let (true, Some(job)) = (on_cpu0, job) {
                break job;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    std::thread::sleep(Duration::from_secs(2));
    let s = Command::new("scancel").arg(&victim).status().unwrap();
    assert!(s.success());
    let r = Run::from(child.wait_with_output().unwrap());
    eprintln!(
        "allocation-killed run on slurm: {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    r.ok();
    assert!(
        r.stderr.contains("cpu-0") && r.stderr.contains(&format!("job {victim}")),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("submitted cpu-2"),
        "a replacement: {}",
        r.stderr
    );
    let j = journal(&p, "kill");
    let requeued: Vec<&serde_json::Value> = j.iter().filter(|e| e["event"] == "requeued").collect();
    assert!(!requeued.is_empty(), "tasks of cpu-0 queued again");
    assert!(requeued
        .iter()
        .all(|e| e["reason"].as_str().unwrap().contains("cpu-0")));
    let mut resumed = 0;
    for i in 0..6 {
        let out = p.read(&format!("results/kill/kill-{i}/out.txt"));
        assert!(
            !out.contains(&format!("job={victim}")),
            "kill-{i} finished on the cancelled allocation: {out}"
        );
        // the checkpoint is in the project, on the file system the
        // allocations share
        let ckpt = p.path().join(format!(".infra/kill/checkpoints/kill-{i}"));
        assert!(out.contains(&format!("ckpt={}", ckpt.display())), "{out}");
        if out.contains("starts=2") {
            resumed += 1;
        }
    }
    assert!(resumed >= 1, "a re-queued task found its checkpoint");
    assert!(jobs_of(&p, "kill").is_empty(), "{:?}", jobs_of(&p, "kill"));
}

/// An allocation whose time left is shorter than a task's estimate (plus
/// the plan's margin) starts no task: the task waits for one that has the
/// time (here none comes: every allocation has 3 minutes, the task needs
/// 2 plus a margin of 1.5; the run ends with the task not run).
#[test]
fn slurm_no_task_starts_on_an_allocation_with_less_time_left_than_its_estimate() {
    if !cluster() {
        return;
    }
    let p = Project::new();
    p.write(
        "plans/templates/long.json.hbs",
        &one_step_template("touch started.txt", "\"outputs\": [\"started.txt\"],"),
    );
    p.write(
        "plans/short.json",
        r#"{"phase": "short", "name": "too little time", "provider": "slurm",
          "node_groups": {"cpu": {"count": 1}},
          "slurm": {"time_limit": "3m", "dispatch_margin": "90s"},
          "layers": [{"id": "L0", "patterns": [{"id": "short-0", "backend": "long", "estimate": "2m"}]}]}"#,
    );
    let r = Run::from(
        slurm_cmd(&p, &["up", "short", "--yes"])
            .env("INFRA_REPLACEMENT_WAIT_SECONDS", "3")
            .output()
            .unwrap(),
    );
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("less than short-0's estimate"),
        "{}",
        r.stderr
    );
    assert!(!p.exists("results/short/short-0/started.txt"));
    let j = journal(&p, "short");
    assert!(
        !j.iter().any(|e| e["event"] == "step_started"),
        "no step started"
    );
    assert!(
        jobs_of(&p, "short").is_empty(),
        "{:?}",
        jobs_of(&p, "short")
    );
}

/// Bad `slurm` input: exit 2 before anything is submitted, each problem
/// with its place in the file and a fix. Needs no cluster.
#[test]
fn slurm_bad_plan_input_exits_2_with_the_field_its_place_and_a_fix() {
    let p = Project::new();
    p.write("plans/templates/x.json.hbs", &one_step_template("true", ""));
    p.write(
        "plans/bad.json",
        r#"{"phase": "bad", "name": "bad", "provider": "slurm",
  "node_groups": {"gpu": {"count": 1, "gpus": 8}},
  "slurm": {"account": "dl lab", "sbatch_options": ["exclusive"],
            "node_groups": {"gpus": {"mem": "lots"}},
            "container": {"runtime": "docker", "image": "x.sif"}},
  "layers": [{"id": "L0", "patterns": [{"id": "bad-0", "backend": "x"}]}]}"#,
    );
    let r = p.infra(&["plan", "bad"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    for want in [
        "plans/bad.json:3:24 slurm.account",
        "slurm.account: invalid account \"dl lab\"",
        "slurm.sbatch_options[0]: \"exclusive\" is not an option",
        "slurm.node_groups.gpus: \"gpus\" is not a node group of the plan",
        "use the name of a group in \"node_groups\" (gpu)",
        "slurm.node_groups.gpus.mem: invalid memory \"lots\"",
        "slurm.container.runtime: unknown container runtime \"docker\"",
        "use \"apptainer\" or \"singularity\"",
    ] {
        assert!(r.stderr.contains(want), "missing {want:?} in\n{}", r.stderr);
    }
}

/// `budget.gpu_hours`: the allocations' GPU-hours (count × gpus × the
/// scheduled hours) are estimated and shown, and a plan above the budget
/// is refused with exit 3 before anything is submitted. Needs no cluster.
#[test]
fn slurm_budget_in_gpu_hours_is_estimated_and_refuses_a_plan_above_it() {
    let p = Project::new();
    p.write(
        "plans/templates/nap.json.hbs",
        &one_step_template("sleep 1", ""),
    );
    let plan = |cap: u32| {
        format!(
            r#"{{"phase": "gh", "name": "gpu hours", "provider": "slurm",
          "node_groups": {{"gpu": {{"count": 1, "gpus": 8, "slots": 1}}}},
          "budget": {{"gpu_hours": {cap}}},
          "estimate": {{"default": "30m"}},
          "layers": [{{"id": "L0", "grid": {{"backend": "nap", "id": "gh-{{i}}", "factors": {{"i": [0, 1, 2, 3]}}}}}}]}}"#
        )
    };
    p.write("plans/gh.json", &plan(10));
    let r = p.infra(&["plan", "gh"]);
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(
        all.contains("16.0 GPU-h, 2.0 node-h estimated; allowed 10.0 GPU-h"),
        "{all}"
    );
    assert!(all.contains("exceeds \"budget.gpu_hours\" 10.0"), "{all}");
    let r = p.infra(&["apply", "gh", "--yes"]);
    assert_eq!(r.code, 3, "apply is gated too: {}", r.stderr);
    p.write("plans/gh.json", &plan(20));
    let r = p.infra(&["plan", "gh"]);
    r.ok();
    assert!(
        r.stdout.contains("allowed 20.0 GPU-h, any node-h -> OK"),
        "{}",
        r.stdout
    );
}

/// The budget's hours are watched while the run goes on: once the
/// allocations have held `node_hours`, every allocation is cancelled and
/// nothing more starts; the run says what was held.
#[test]
fn slurm_budget_in_node_hours_stops_the_run_when_the_allocations_have_held_it() {
    if !cluster() {
        return;
    }
    let p = Project::new();
    p.write(
        "plans/templates/nap.json.hbs",
        &one_step_template("sleep 4", ""),
    );
    // 6 tasks of 4 s on one slot: 24 s; the budget holds 0.004 h = 14.4 s
    // (counted from when the allocation runs: the gate after it is up
    // sees a few seconds held and 6 s estimated, and lets the run start)
    p.write(
        "plans/nh.json",
        r#"{"phase": "nh", "name": "node hours", "provider": "slurm",
          "node_groups": {"cpu": {"count": 1, "slots": 1}},
          "budget": {"node_hours": 0.004},
          "estimate": {"default": "1s"},
          "layers": [{"id": "L0", "grid": {"backend": "nap", "id": "nh-{i}", "factors": {"i": [0, 1, 2, 3, 4, 5]}}}]}"#,
    );
    let r = slurm(&p, &["up", "nh", "--yes"]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("budget reached: the allocations held"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("in this run (budget: 0.004 node-hours; the phase used"),
        "{}",
        r.stderr
    );
    let done = (0..6)
        .filter(|i| p.exists(&format!("results/nh/nh-{i}/runtime.json")))
        .count();
    assert!(done < 6, "the run stopped before the end");
    p.infra(&["destroy", "nh"]).ok();
    assert!(jobs_of(&p, "nh").is_empty(), "{:?}", jobs_of(&p, "nh"));
}

/// An allocation the cluster does not start in time: `apply` names it and
/// squeue's reason, exits 4 and leaves it for `destroy`, which cancels it.
#[test]
fn slurm_apply_names_allocations_still_pending_with_squeue_s_reason() {
    if !cluster() {
        return;
    }
    let p = Project::new();
    p.write("plans/templates/x.json.hbs", &one_step_template("true", ""));
    p.write(
        "plans/pend.json",
        r#"{"phase": "pend", "name": "pending", "provider": "slurm",
          "node_groups": {"cpu": {"count": 1}},
          "slurm": {"sbatch_options": ["--begin=now+1hour"]},
          "layers": [{"id": "L0", "patterns": [{"id": "pend-0", "backend": "x"}]}]}"#,
    );
    let r = Run::from(
        slurm_cmd(&p, &["apply", "pend", "--yes"])
            .env("INFRA_NODES_TIMEOUT_SECONDS", "2")
            .output()
            .unwrap(),
    );
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("1 allocation(s) still pending after 2 s: cpu-0 (job "),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("): BeginTime"), "{}", r.stderr);
    let s = p.infra(&["status", "pend"]);
    assert!(s.stdout.contains("pending (BeginTime)"), "{}", s.stdout);
    assert_eq!(jobs_of(&p, "pend").len(), 1);
    p.infra(&["destroy", "pend"]).ok();
    assert!(jobs_of(&p, "pend").is_empty(), "{:?}", jobs_of(&p, "pend"));
}

/// The deep-learning team's sweep with their sbatch settings renders:
/// `infra plan` shows the holder job's sbatch line (8 GPUs, 12 h, their
/// account, MPS) and no stacks. Needs no cluster.
#[test]
fn slurm_sweep_plan_of_the_deep_learning_team_renders_its_sbatch_line() {
    let p = Project::with_examples();
    let r = p.infra(&["plan", "sweep-slurm"]);
    r.ok();
    for want in [
        "provider slurm",
        "216 task(s)",
        "gpu × 1: sbatch --parsable --job-name=infra.",
        "--partition=gpu --account=dl-lab --gres=gpu:rtx8000:8 --mem=160G --cpus-per-task=48 --time=720",
        "nvidia-cuda-mps-control -d",
    ] {
        assert!(r.stdout.contains(want), "missing {want:?} in\n{}", r.stdout);
    }
    assert!(!r.stdout.contains("stacks"), "{}", r.stdout);
}

/// A value the cluster refuses (a partition it does not have): exit 2,
/// naming the field of the plan's `slurm` section to fix; nothing left.
#[test]
fn slurm_a_partition_the_cluster_refuses_exits_2_naming_the_field() {
    if !cluster() {
        return;
    }
    let p = Project::new();
    p.write("plans/templates/x.json.hbs", &one_step_template("true", ""));
    p.write(
        "plans/nopart.json",
        r#"{"phase": "nopart", "name": "no such partition", "provider": "slurm",
          "node_groups": {"cpu": {"count": 1}},
          "slurm": {"partition": "no-such-partition"},
          "layers": [{"id": "L0", "patterns": [{"id": "nopart-0", "backend": "x"}]}]}"#,
    );
    let r = slurm(&p, &["apply", "nopart", "--yes"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("Invalid partition name"), "{}", r.stderr);
    assert!(
        r.stderr.contains("fix \"slurm.partition\" in the plan"),
        "{}",
        r.stderr
    );
    assert!(jobs_of(&p, "nopart").is_empty());
}

/// A task longer than its allocations' time limit could never start: the
/// plan is refused (exit 2) at the task, naming the field to raise.
#[test]
fn slurm_a_task_longer_than_the_time_limit_is_refused_with_the_field_to_raise() {
    let p = Project::new();
    p.write("plans/templates/x.json.hbs", &one_step_template("true", ""));
    p.write(
        "plans/long.json",
        r#"{"phase": "long", "name": "too long", "provider": "slurm",
  "node_groups": {"gpu": {"count": 1}},
  "slurm": {"time_limit": "12h"},
  "layers": [{"id": "L0", "patterns": [
    {"id": "long-0", "backend": "x", "estimate": "13h"},
    {"id": "long-1", "backend": "x", "estimate": "1h"}]}]}"#,
    );
    let r = p.infra(&["plan", "long"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("plans/long.json:5:12 layers[0] (long-0): "),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("1 task(s) of node group gpu take longer than its allocations' time limit 12h (13h estimated for long-0)"), "{}", r.stderr);
    assert!(
        r.stderr.contains("raise \"slurm.time_limit\""),
        "{}",
        r.stderr
    );
}
