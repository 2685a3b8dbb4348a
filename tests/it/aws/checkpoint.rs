//! Work survives a spot reclaim on AWS: the node agent syncs the task's
//! `$INFRA_CHECKPOINT_DIR` to `<phase>/checkpoints/<task>/` every
//! `checkpoint_interval` and once the step's grace after the spot notice
//! is over, and the next attempt, on another node, starts from it.

use super::*;
use crate::checkpoint::{counted, resumed_lines, PROGRESS_SH};

/// One task counting to `n`, a line a second, on two spot nodes.
fn progress_plan(a: &Aws, phase: &str, n: usize) {
    a.p.write("scripts/progress.sh", PROGRESS_SH);
    a.p.write(
        "plans/templates/count.json.hbs",
        &format!(
            r#"{{ "outputs": ["out.txt"], "steps": [ {{"name": "count", "timeout_seconds": 600, "command": "bash \"$INFRA_SCRIPTS/progress.sh\" {n} 1 0 \"$INFRA_WORK_DIR/never\""}} ] }}"#
        ),
    );
    a.p.write(
        &format!("plans/{phase}.json"),
        &format!(
            r#"{{ "phase": "{phase}", "name": "counting", "project": "ckpt", "provider": "aws", "region": "us-east-1",
  "checkpoint_interval": 10, "stop_grace_seconds": 20,
  "node_groups": {{ "cpu": {{ "instance_type": "c6i.xlarge", "count": 2, "market": "spot", "slots": 1 }} }},
  "layers": [ {{ "id": "L0", "patterns": [ {{ "id": "{phase}-0", "backend": "count" }} ] }} ] }}"#
        ),
    );
}

/// The checkpoint's files in the bucket: key (under the task's folder) → text.
fn bucket_checkpoint(a: &Aws, phase: &str) -> Value {
    a.boto(&format!(
        "b = [b['Name'] for b in s3.list_buckets()['Buckets']]\n\
         out = {{}}\n\
         for bk in b:\n    \
           for o in s3.list_objects_v2(Bucket=bk, Prefix='{phase}/checkpoints/{phase}-0/').get('Contents', []):\n        \
             out[o['Key'].split('/', 3)[3]] = s3.get_object(Bucket=bk, Key=o['Key'])['Body'].read().decode()\n\
         print(json.dumps(out))"
    ))
}

#[test]
fn a_spot_reclaim_midway_the_next_attempt_goes_on_from_the_synced_checkpoint() {
    let a = Aws::new("checkpoint_spot");
    progress_plan(&a, "cks", 30);
    ok(&a.infra(&["apply", "cks", "--yes"]), "apply");
    let child = a
        .cmd(&["run", "cks", "all"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut node = String::new();
    wait_for("the task's dispatch", Duration::from_secs(60), || {
        let text = std::fs::read_to_string(a.p.path().join(".infra/cks/journal.jsonl"))
            .unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        lines.iter().any(|e| {
            if e["event"] == "dispatched" {
                node = e["nodes"][0].as_str().unwrap_or_default().to_string();
                true
            } else {
                false
            }
        })
    });
    // the periodic sync (every 10 s) puts the count so far in the bucket
    let mut synced = 0;
    wait_for("the first periodic sync", Duration::from_secs(60), || {
        synced = bucket_checkpoint(&a, "cks")["progress.txt"]
            .as_str()
            .map_or(0, |t| t.lines().count());
        synced > 0
    });
    let iid = a.state("cks")["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node.as_str())
        .unwrap()["instance_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = a.control(
        "POST",
        "interrupt",
        json!({"instance_id": iid, "delay_seconds": 40}),
    );
    assert_eq!(r["instance_id"], iid, "{r}");
    let r = Run::from(child.wait_with_output().unwrap());
    ok(&r, "the run with a spot reclaim");
    let j = journal(&a.p, "cks");
    assert!(
        j.iter().any(|e| e["event"] == "requeued"
            && e["reason"].as_str().unwrap_or("").contains("interruption")),
        "{j:#?}"
    );
    // the next attempt, on the other node, started where the reclaimed one
    // stopped (the sync after its TERM), not from the periodic sync alone
    let log = a.p.read("results/cks/cks-0/stdout.log");
    let resumed = resumed_lines(&log);
    let ck = bucket_checkpoint(&a, "cks");
    let term = ck["events.txt"].as_str().unwrap_or_else(|| panic!("{ck}"));
    let at_term: usize = term
        .trim()
        .strip_prefix("TERM after ")
        .and_then(|t| t.strip_suffix(" lines"))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{term}"));
    assert!(
        resumed >= synced && resumed == at_term,
        "resumed with {resumed} lines; {synced} were synced before the notice, {at_term} counted at SIGTERM"
    );
    assert!(resumed < 30, "the reclaim came midway: {log}");
    // each line exactly once, in the result and in the bucket
    assert_eq!(a.p.read("results/cks/cks-0/out.txt"), counted(30));
    assert_eq!(
        ck["progress.txt"].as_str(),
        Some(counted(30).as_str()),
        "{ck}"
    );
    let rt: Value = serde_json::from_str(&a.p.read("results/cks/cks-0/runtime.json")).unwrap();
    assert_eq!(
        rt["checkpoint_bytes"].as_u64(),
        Some((counted(30).len() + term.len()) as u64),
        "{rt}"
    );
    // status reads the sizes from the bucket
    let st = a.infra(&["status", "cks", "--json"]);
    let v: Value =
        serde_json::from_str(&st.stdout).unwrap_or_else(|e| panic!("{e}: {}", st.stdout));
    assert_eq!(
        v["checkpoints"]["cks-0"].as_u64(),
        rt["checkpoint_bytes"].as_u64(),
        "{v}"
    );
    // --fresh empties the task's folder in the bucket
    let r = a.infra(&["run", "cks", "all", "--fresh"]);
    ok(&r, "run --fresh");
    assert!(
        r.stderr.contains("--fresh: removed 1 checkpoint folder(s)"),
        "{}",
        r.stderr
    );
    assert_eq!(bucket_checkpoint(&a, "cks"), json!({}));
    ok(&a.infra(&["destroy", "cks", "--all"]), "destroy");
}
