//! The campaign's state in the bucket: the journal as segments of whole
//! lines, uploaded while a run goes on and at its end, and a second
//! checkout of the repository (its files only, its own HOME) that sees the
//! same campaign, fetches its results and runs nothing completed again.

use super::*;

/// The journal segments in the bucket, in order.
fn segments(a: &Aws, phase: &str) -> Vec<String> {
    a.boto(&format!(
        "b = [b['Name'] for b in s3.list_buckets()['Buckets']][0]\n\
         keys = sorted(o['Key'] for o in s3.list_objects_v2(Bucket=b, Prefix='{phase}/_state/journal/').get('Contents', []))\n\
         print(json.dumps([s3.get_object(Bucket=b, Key=k)['Body'].read().decode() for k in keys]))"
    ))
    .as_array()
    .unwrap()
    .iter()
    .map(|s| s.as_str().unwrap().to_string())
    .collect()
}

/// A second checkout of `a`'s project: the plan files only, its own HOME,
/// the same account.
fn second_checkout(a: &Aws, files: &[&str]) -> Aws {
    let b = Aws {
        p: Project::new(),
        acct: a.acct.clone(),
        home: tempfile::tempdir().unwrap(),
    };
    for f in files {
        b.p.write(f, &a.p.read(f));
    }
    b
}

/// Every file under `dir`, relative, with its bytes.
fn tree(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fn walk(
        root: &std::path::Path,
        d: &std::path::Path,
        out: &mut std::collections::BTreeMap<String, Vec<u8>>,
    ) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn a_second_checkout_sees_the_same_campaign_fetches_every_result_and_runs_nothing_completed() {
    let a = Aws::new("second_checkout");
    sleeper_plan(&a, "camp", "campproj", 5, 0.2, 1, 2);
    ok(&a.infra(&["apply", "camp", "--yes"]), "apply");
    ok(&a.infra(&["run", "camp", "all"]), "run");
    // the bucket's segments are whole lines, and together the journal
    let segs = segments(&a, "camp");
    assert!(!segs.is_empty(), "no journal segment in the bucket");
    assert!(segs.iter().all(|s| s.ends_with('\n')), "{segs:?}");
    assert_eq!(segs.concat(), a.p.read(".infra/camp/journal.jsonl"));

    let b = second_checkout(&a, &["plans/camp.json", "plans/templates/sleeper.json.hbs"]);
    assert!(!b.p.exists(".infra"));
    // the same status
    let counts = |x: &Aws| {
        let r = x.infra(&["--json", "status", "camp"]);
        ok(&r, "status");
        let v: Value = serde_json::from_str(&r.stdout).unwrap();
        (
            v["tasks"].clone(),
            v["counts"].clone(),
            // to 1e-9: a sum in no particular order
            (v["spend_usd"].as_f64().unwrap() * 1e9).round() as i64,
        )
    };
    let mine = counts(&a);
    assert_eq!(mine.1["succeeded"], 5, "{mine:?}");
    assert_eq!(counts(&b), mine, "the second checkout's status");
    // the same spend (it used to show $0.00: the bucket was looked up in
    // the state of the phase, which a fresh checkout does not have)
    let spend = |x: &Aws| {
        let r = x.infra(&["budget", "camp", "--format", "json"]);
        ok(&r, "budget");
        let v: Value = serde_json::from_str(&r.stdout).unwrap();
        (
            v[0]["metered_usd"].as_f64().unwrap(),
            v[0]["tasks_done"].clone(),
        )
    };
    let (usd, done) = spend(&a);
    assert!(usd > 0.0);
    assert_eq!(done, 5);
    // status shows that spend too (on AWS it used to show none)
    for x in [&a, &b] {
        let r = x.infra(&["--json", "status", "camp"]);
        let v: Value = serde_json::from_str(&r.stdout).unwrap();
        let m = v["metered_usd"].as_f64().unwrap();
        // budget rounds to 6 decimals
        assert!((m - usd).abs() < 1e-6, "status {m} vs budget {usd}");
        let r = x.infra(&["status", "camp"]);
        assert!(
            r.stdout.contains(&format!("spend so far: ${usd:.2}")),
            "{}",
            r.stdout
        );
    }
    let (their_usd, their_done) = spend(&b);
    assert!((their_usd - usd).abs() < 1e-9, "{their_usd} vs {usd}");
    assert_eq!(their_done, done);
    // every result, with the same files
    ok(&a.infra(&["results", "camp"]), "results");
    let r = b.infra(&["results", "camp"]);
    ok(&r, "results in the second checkout");
    assert!(r.stderr.contains("5 result(s) fetched"), "{}", r.stderr);
    let (ta, tb) = (
        tree(&a.p.path().join("results/camp")),
        tree(&b.p.path().join("results/camp")),
    );
    let files = |t: &std::collections::BTreeMap<String, Vec<u8>>| {
        t.keys()
            .filter(|k| *k != "table.metadata.json")
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(files(&tb), files(&ta));
    assert!(ta.contains_key("camp-t3/out.txt") && ta.contains_key("camp-t3/stdout.log"));
    for k in files(&ta) {
        assert_eq!(tb[&k], ta[&k], "{k} differs");
    }
    // and the logs of one
    let r = b.infra(&["logs", "camp", "camp-t2"]);
    ok(&r, "logs");
    assert_eq!(r.stdout, a.infra(&["logs", "camp", "camp-t2"]).stdout);
    // the second checkout's run runs nothing completed
    let r = b.infra(&["run", "camp", "all"]);
    ok(&r, "run in the second checkout");
    assert!(r.stdout.contains("5 already done"), "{}", r.stdout);
    assert_eq!(
        segments(&a, "camp").concat(),
        a.p.read(".infra/camp/journal.jsonl")
    );
    // one more task: the second checkout runs only that one, and the first
    // sees its outcome
    sleeper_plan(&a, "camp", "campproj", 6, 0.2, 1, 2);
    b.p.write("plans/camp.json", &a.p.read("plans/camp.json"));
    let r = b.infra(&["run", "camp", "all"]);
    ok(&r, "run of the new task in the second checkout");
    assert!(
        r.stdout.contains("1 succeeded") && r.stdout.contains("5 already done"),
        "{}",
        r.stdout
    );
    let counts_b = succeeded_counts(&b.p, "camp");
    assert_eq!(counts_b.len(), 6, "{counts_b:?}");
    assert!(counts_b.values().all(|c| *c == 1), "{counts_b:?}");
    let r = a.infra(&["--json", "status", "camp"]);
    ok(&r, "status");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["counts"]["succeeded"], 6, "{v}");
    assert_eq!(
        a.p.read(".infra/camp/journal.jsonl"),
        b.p.read(".infra/camp/journal.jsonl")
    );
    // a fresh checkout may not delete from the bucket results it never
    // fetched (its empty journal used to say there were none)
    let c = second_checkout(&a, &["plans/camp.json", "plans/templates/sleeper.json.hbs"]);
    let r = c.infra(&["destroy", "camp", "--delete-results"]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("--delete-results refused: 6 finished task(s) have no results"),
        "{}",
        r.stderr
    );
    // the second checkout has them all
    ok(
        &b.infra(&["destroy", "camp", "--delete-results"]),
        "destroy --delete-results",
    );
    let left = || {
        a.boto(
            "b = [b['Name'] for b in s3.list_buckets()['Buckets']][0]\n\
             print(json.dumps([o['Key'] for o in s3.list_objects_v2(Bucket=b, Prefix='camp/').get('Contents', [])]))",
        )
    };
    assert_eq!(left(), json!([]));
    // the first machine's next command does not upload them again
    let r = a.infra(&["status", "camp"]);
    ok(&r, "status after the results were deleted");
    assert!(r.stderr.contains("was deleted"), "{}", r.stderr);
    assert_eq!(left(), json!([]));
    ok(&a.infra(&["destroy", "camp", "--all"]), "destroy");
}

#[test]
fn the_journal_reaches_the_bucket_while_the_run_goes_on_and_after_a_ctrl_c() {
    let a = Aws::new("journal_upload");
    sleeper_plan(&a, "up", "upproj", 2, 45.17, 2, 1);
    ok(&a.infra(&["apply", "up", "--yes"]), "apply");
    let mut child = a
        .cmd(&["run", "up", "all"])
        .env("INFRA_JOURNAL_SYNC_SECONDS", "0.5")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // the dispatches are in the bucket while the steps still run
    wait_for(
        "the dispatches in the bucket",
        Duration::from_secs(180),
        || {
            segments(&a, "up")
                .concat()
                .matches("\"event\":\"dispatched\"")
                .count()
                >= 2
        },
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run is still going"
    );
    // SAFETY: a signal to our own child
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let r = Run::from(child.wait_with_output().unwrap());
    assert_eq!(r.code, 130, "{}", r.stderr);
    let segs = segments(&a, "up");
    assert!(segs.len() >= 2, "uploaded as it grew: {segs:?}");
    assert_eq!(segs.concat(), a.p.read(".infra/up/journal.jsonl"));
    assert!(
        segs.last()
            .unwrap()
            .contains("\"reason\":\"interrupted (SIGINT)\""),
        "the run's end is in the bucket: {segs:?}"
    );
    let sync: Value = serde_json::from_str(&a.p.read(".infra/up/journal.sync.json")).unwrap();
    assert_eq!(sync["segments"], segs.len());
    // a line this machine never uploaded goes up with the next command
    // (the bucket has nothing newer)
    let extra = "{\"v\":1,\"ts\":\"2026-11-27T00:00:00.000Z\",\"event\":\"run_finished\",\"run\":9,\"succeeded\":0,\"failed\":0,\"pending\":2,\"reason\":\"test\"}\n";
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(a.p.path().join(".infra/up/journal.jsonl"))
        .unwrap();
    std::io::Write::write_all(&mut f, extra.as_bytes()).unwrap();
    let r = a.infra(&["status", "up"]);
    ok(&r, "status");
    assert!(r.stderr.contains("had not uploaded"), "{}", r.stderr);
    let after = segments(&a, "up");
    assert_eq!(after.len(), segs.len() + 1);
    assert_eq!(after.last().unwrap(), extra);
    ok(&a.infra(&["destroy", "up", "--all"]), "destroy");
}
