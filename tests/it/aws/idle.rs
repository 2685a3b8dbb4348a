//! No controller, no spend (issue 15, item 5): nodes that run no step and
//! see no renewal of the controller's lease for `idle_shutdown_minutes`
//! delete their fleet (instances kept) and shut down; the fleet does not
//! replace them; a live controller's renewals keep idle nodes up; a node
//! running a long step is never stopped by idleness; the next apply brings
//! the deleted fleet back and says so.

use super::*;

/// Two nodes with `idle_shutdown_minutes: 1`; one task per entry of
/// `secs` (distinct), `<phase>-s<secs>`, that sleeps that long.
fn idle_plan(a: &Aws, phase: &str, project: &str, secs: &[u32]) {
    let list: Vec<String> = secs.iter().map(|s| s.to_string()).collect();
    a.p.write(
        &format!("plans/{phase}.json"),
        &format!(
            r#"{{ "phase": "{phase}", "name": "idle", "project": "{project}", "provider": "aws", "region": "us-east-1",
  "node_groups": {{ "cpu": {{ "instance_type": "c6i.xlarge", "count": 2, "market": "spot", "slots": 1, "idle_shutdown_minutes": 1 }} }},
  "layers": [ {{ "id": "L0", "grid": {{ "backend": "nap", "id": "{phase}-s{{s}}", "factors": {{ "s": [{}] }} }} }} ] }}"#,
            list.join(", ")
        ),
    );
    a.p.write(
        "plans/templates/nap.json.hbs",
        r#"{ "steps": [ {"name": "main", "timeout_seconds": 900, "command": "sleep {{s}}; echo napped"} ] }"#,
    );
}

/// The sandbox folder of an instance on the emulator.
fn sandbox(id: &str) -> PathBuf {
    emulator()._dir.path().join("state/instances").join(id)
}

/// When the step of `task` ended on instance `id` (its `rc` appeared).
fn step_ended(id: &str, task: &str) -> Option<std::time::SystemTime> {
    std::fs::metadata(sandbox(id).join("run").join(task).join("1/0/rc"))
        .and_then(|m| m.modified())
        .ok()
}

/// (state, state reason code) of an instance (the SDK: a boto3 process per
/// poll would load the machine the other tests share).
fn instance_state(sdk: &Sdk, id: &str) -> (String, String) {
    let out = sdk
        .rt
        .block_on(sdk.ec2.describe_instances().instance_ids(id).send())
        .expect("DescribeInstances");
    let i = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .next()
        .expect("the instance");
    (
        i.state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_string())
            .unwrap_or_default(),
        i.state_reason()
            .and_then(|r| r.code())
            .unwrap_or_default()
            .to_string(),
    )
}

/// Fleets of the account with their state.
fn fleet_states(sdk: &Sdk) -> Vec<(String, String)> {
    let out = sdk
        .rt
        .block_on(sdk.ec2.describe_fleets().send())
        .expect("DescribeFleets");
    out.fleets()
        .iter()
        .map(|f| {
            (
                f.fleet_id().unwrap_or_default().to_string(),
                f.fleet_state()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

/// Which instance ran `task` (its run folder is in that instance's sandbox).
fn ran_on(ids: &[String], task: &str) -> Option<String> {
    ids.iter()
        .find(|id| sandbox(id).join("run").join(task).is_dir())
        .cloned()
}

/// The idle time (60 s), a poll of the watcher (10 s), and slack for the
/// shutdown and the emulator (15 s).
const STOPS_WITHIN: Duration = Duration::from_secs(85);

#[test]
fn with_the_controller_gone_idle_nodes_terminate_within_the_idle_time_and_are_not_replaced_and_apply_brings_the_fleet_back(
) {
    let a = Aws::new("idle_gone");
    let sdk = a.sdk();
    idle_plan(&a, "ig", "idlegone", &[2, 3]);
    ok(&a.infra(&["apply", "ig", "--yes"]), "apply");
    let ids: Vec<String> = node_ids(&a, "ig").into_iter().map(|n| n.1).collect();
    assert_eq!(ids.len(), 2);
    // a controller that dies after the steps ended: kill -9 once both ended
    let bg = a.spawn(&["run", "ig", "all"]);
    wait_for("both steps ended", Duration::from_secs(120), || {
        ["ig-s2", "ig-s3"]
            .iter()
            .all(|t| ran_on(&ids, t).is_some_and(|id| step_ended(&id, t).is_some()))
    });
    let ended = ["ig-s2", "ig-s3"]
        .iter()
        .filter_map(|t| step_ended(&ran_on(&ids, t).unwrap(), t))
        .max()
        .unwrap();
    bg.kill9();
    for id in &ids {
        assert_eq!(
            instance_state(&sdk, id).0,
            "running",
            "{id} before the idle time"
        );
    }
    wait_for(
        "both nodes terminated",
        STOPS_WITHIN + Duration::from_secs(10),
        || {
            ids.iter()
                .all(|id| instance_state(&sdk, id).0 == "terminated")
        },
    );
    let took = ended.elapsed().unwrap();
    assert!(
        took <= STOPS_WITHIN,
        "the nodes stopped {took:?} after their steps ended"
    );
    assert!(
        took >= Duration::from_secs(55),
        "not before the idle time: {took:?}"
    );
    for id in &ids {
        assert_eq!(
            instance_state(&sdk, id).1,
            "Client.InstanceInitiatedShutdown",
            "{id} shut itself down"
        );
        let log = std::fs::read_to_string(sandbox(id).join("watch/watch.log")).unwrap_or_default();
        assert!(log.contains("stops billing"), "{id}: {log}");
    }
    // not replaced: the fleet is deleted (its instances were kept, then
    // each shut itself down), nothing else runs
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sdk.instances(), vec![], "nothing runs");
    assert_eq!(sdk.fleets(), Vec::<String>::new(), "no active fleet");
    let states = fleet_states(&sdk);
    assert!(
        states.iter().any(|(_, s)| s == "deleted_running"),
        "the node deleted its fleet without terminating: {states:?}"
    );

    // the next apply brings the fleet back and says what happened
    let r = a.infra(&["apply", "ig", "--yes"]);
    ok(&r, "apply after the idle shutdown");
    assert!(
        r.stderr.contains("deleted by its idle nodes"),
        "the user is told: {}",
        r.stderr
    );
    assert_eq!(sdk.fleets().len(), 1, "{:?}", fleet_states(&sdk));
    assert_eq!(sdk.instances().len(), 2, "{:?}", sdk.instances());
    let r = a.infra(&["run", "ig", "all"]);
    ok(&r, "a run on the recovered fleet");
    ok(&a.infra(&["destroy", "ig", "--all"]), "destroy");
    sdk.assert_nothing_left("after destroy");
}

#[test]
fn renewals_keep_idle_nodes_up_and_a_long_step_is_never_stopped_by_idleness() {
    let a = Aws::new("idle_control");
    let sdk = a.sdk();
    // a long step (200 s) and a short one
    idle_plan(&a, "ic", "idlecontrol", &[200, 1]);
    ok(&a.infra(&["apply", "ic", "--yes"]), "apply");
    let ids: Vec<String> = node_ids(&a, "ic").into_iter().map(|n| n.1).collect();
    let started = Instant::now();
    // the controller renews its lease every 3 s (as a real one every 30 s;
    // the idle time here is 60 s)
    let bg = a.spawn_with(&["run", "ic", "all"], &[("INFRA_LEASE_RENEW_SECONDS", "3")]);
    wait_for("both steps started", Duration::from_secs(120), || {
        ran_on(&ids, "ic-s200").is_some() && ran_on(&ids, "ic-s1").is_some()
    });
    let long = ran_on(&ids, "ic-s200").unwrap();
    let short = ran_on(&ids, "ic-s1").unwrap();
    assert_ne!(long, short);
    wait_for("the short step ended", Duration::from_secs(60), || {
        step_ended(&short, "ic-s1").is_some()
    });
    // idle for 75 s, but the lease is renewed: it stays up
    std::thread::sleep(Duration::from_secs(75));
    assert_eq!(
        instance_state(&sdk, &short).0,
        "running",
        "an idle node with a live controller stays up"
    );
    // the controller goes for good: no more renewals, no run
    let gone = Instant::now();
    bg.kill9();
    wait_for("the idle node terminated", STOPS_WITHIN, || {
        instance_state(&sdk, &short).0 == "terminated"
    });
    assert!(
        gone.elapsed() >= Duration::from_secs(55),
        "{:?}",
        gone.elapsed()
    );
    // no renewal for more than the idle time, but its step runs
    assert_eq!(
        instance_state(&sdk, &long).0,
        "running",
        "a node running a step is not stopped by idleness"
    );
    assert!(
        step_ended(&long, "ic-s200").is_none(),
        "the long step runs on"
    );
    wait_for("the long step ended", Duration::from_secs(240), || {
        step_ended(&long, "ic-s200").is_some()
    });
    assert!(started.elapsed() >= Duration::from_secs(195));
    let ended = step_ended(&long, "ic-s200").unwrap();
    wait_for("the busy node terminated", STOPS_WITHIN, || {
        instance_state(&sdk, &long).0 == "terminated"
    });
    let took = ended.elapsed().unwrap();
    assert!(
        (Duration::from_secs(55)..=STOPS_WITHIN).contains(&took),
        "{took:?}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sdk.instances(), vec![], "not replaced");
    ok(&a.infra(&["destroy", "ic", "--all"]), "destroy");
}
