//! Live logs on the emulator: the node agent uploads what is new in a
//! running step's stdout/stderr every few seconds, and `infra logs
//! --follow` shows it; `infra status` lists the running task.

use std::io::BufRead;
use std::sync::{Arc, Mutex};

use super::*;

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn logs_follow_shows_a_running_tasks_new_lines_on_the_emulator_within_10_s() {
    let a = Aws::new("live_logs_follow");
    a.p.write(
        "plans/lv.json",
        r#"{ "phase": "lv", "name": "live", "project": "livelogs", "provider": "aws", "region": "us-east-1",
  "retry": { "attempts": 1 },
  "node_groups": { "cpu": { "instance_type": "c6i.xlarge", "count": 1, "market": "spot", "slots": 1 } },
  "layers": [ { "id": "L0", "grid": { "backend": "tick", "id": "lv-t{n}", "factors": { "n": [1] } } } ] }"#,
    );
    let command = "for i in $(seq 1 20); do echo \"line $i at $(date +%s.%N)\"; echo \"err $i\" >&2; sleep 1; done";
    a.p.write(
        "plans/templates/tick.json.hbs",
        &format!(
            r#"{{ "steps": [ {{"name": "main", "timeout_seconds": 300, "command": {}}} ] }}"#,
            serde_json::to_string(command).unwrap()
        ),
    );
    ok(&a.infra(&["apply", "lv", "--yes"]), "apply");
    // started before the task runs
    let mut follow = a
        .cmd(&["logs", "lv", "lv-t1", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines: Arc<Mutex<Vec<(f64, String)>>> = Arc::default();
    let out = follow.stdout.take().unwrap();
    let l = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            l.lock().unwrap().push((unix_now(), line));
        }
    });
    let run = a
        .cmd(&["run", "lv", "all"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let has = |want: &str| lines.lock().unwrap().iter().any(|(_, l)| l == want);
    wait_for("line 3 from --follow", Duration::from_secs(120), || {
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|(_, l)| l.starts_with("line 3 at "))
    });
    assert!(
        !a.p.exists("results/lv/lv-t1/runtime.json"),
        "the lines came while the task ran"
    );
    // without --follow: what its node uploaded so far
    let r = a.infra(&["logs", "lv", "lv-t1"]);
    ok(&r, "logs of the running task");
    assert!(r.stdout.starts_with("line 1 at "), "{}", r.stdout);
    assert!(r.stdout.contains("== stderr ==\nerr 1\n"), "{}", r.stdout);
    // status lists it while it runs
    let r = a.infra(&["status", "lv"]);
    ok(&r, "status");
    assert!(
        r.stdout.lines().any(|l| l
            .trim_start()
            .starts_with("running: lv-t1 attempt 1 on cpu-0 for ")),
        "{}",
        r.stdout
    );
    let r = Run::from(run.wait_with_output().unwrap());
    ok(&r, "run");
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(s) = follow.try_wait().unwrap() {
            break s.code();
        }
        if Instant::now() > deadline {
            let _ = follow.kill();
            panic!("--follow did not end with the task");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(code, Some(0));
    std::thread::sleep(Duration::from_millis(300));
    let seen = lines.lock().unwrap().clone();
    let text: Vec<&str> = seen.iter().map(|(_, l)| l.as_str()).collect();
    for i in 1..=20 {
        let prefix = format!("line {i} at ");
        let got: Vec<&(f64, String)> = seen
            .iter()
            .filter(|(_, l)| l.starts_with(&prefix))
            .collect();
        assert_eq!(got.len(), 1, "line {i} once: {text:?}");
        assert!(has(&format!("err {i}")), "stderr line {i}: {text:?}");
        // each line on the user's screen within 10 s of the task writing it
        let written: f64 = got[0].1[prefix.len()..].parse().unwrap();
        let late = got[0].0 - written;
        assert!(
            late < 10.0,
            "line {i} came {late:.1} s after it was written"
        );
    }
    // the chunks went to the live prefix, beside the logs
    let keys = a.boto("b = [b['Name'] for b in s3.list_buckets()['Buckets']][0]\nprint(json.dumps([o['Key'] for o in s3.list_objects_v2(Bucket=b, Prefix='lv/logs/live/lv-t1/attempt-1/').get('Contents', [])]))");
    assert!(
        keys.as_array().unwrap().len() >= 2,
        "several chunks while it ran: {keys}"
    );
    let r = a.infra(&["logs", "lv", "lv-t1", "-n", "1", "--stderr"]);
    ok(&r, "logs -n");
    assert_eq!(r.stdout, "err 20\n");
    ok(&a.infra(&["destroy", "lv", "--all"]), "destroy");
}
