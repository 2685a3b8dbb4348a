//! Trust on the AWS path: the bucket layout the nodes write to, the node
//! role of the phase, a forged ledger entry refused, and a versioned bucket
//! that `destroy --delete-results` can empty.

use super::*;

fn bucket_of(a: &Aws, phase: &str) -> String {
    a.state(phase)["bucket"].as_str().unwrap().to_string()
}

fn keys(a: &Aws, bucket: &str, prefix: &str) -> Vec<String> {
    let v = a.boto(&format!(
        "p = s3.get_paginator('list_objects_v2')\n\
         print(json.dumps([o['Key'] for page in p.paginate(Bucket={bucket:?}, Prefix={prefix:?}) for o in page.get('Contents', [])]))"
    ));
    v.as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn results_logs_and_the_bundle_go_to_their_own_prefixes_and_the_nodes_get_the_phase_role() {
    let a = Aws::new("trust_layout");
    sleeper_plan_with(&a, "lay", "layoutproj", 2, 0.2, 1, 2, true);
    ok(&a.infra(&["apply", "lay", "--yes"]), "apply");
    ok(&a.infra(&["run", "lay", "all"]), "run");
    let b = bucket_of(&a, "lay");
    let all = keys(&a, &b, "lay/");
    let under = |p: &str| all.iter().filter(|k| k.starts_with(p)).count();
    assert!(under("lay/results/lay-t1/attempt-1/") > 0, "{all:?}");
    assert!(under("lay/results/lay-t2/attempt-1/") > 0, "{all:?}");
    assert!(under("lay/logs/setup/") > 0, "{all:?}");
    assert!(under("lay/_bundle/") > 0, "{all:?}");
    assert!(all.iter().any(|k| k == "lay/_bundle.manifest"), "{all:?}");
    // nothing under the old layout
    for old in ["lay/lay-t1/", "lay/_setup/", "lay/_ssm/"] {
        assert_eq!(under(old), 0, "{old}: {all:?}");
    }
    // the compute stack has the phase's own role and instance profile
    let res = a.boto(
        "st = [s['StackName'] for s in cfn.describe_stacks()['Stacks'] if s['StackName'].endswith('-lay')][0]\n\
         print(json.dumps({r['LogicalResourceId']: r['ResourceType'] for r in cfn.describe_stack_resources(StackName=st)['StackResources']}))",
    );
    assert_eq!(res["NodeRole"], "AWS::IAM::Role", "{res}");
    assert_eq!(
        res["NodeInstanceProfile"], "AWS::IAM::InstanceProfile",
        "{res}"
    );
    ok(
        &a.infra(&["destroy", "lay", "--all", "--delete-results", "--force"]),
        "destroy",
    );
}

/// A forged ledger line: what a node could write to `_ledger/` with the
/// instance role of earlier versions.
fn forged(phase: &str) -> String {
    format!(
        r#"{{"v":1,"phase":"{phase}","provider":"aws","node":"forged","group":"cpu","instance_type":"c6i.xlarge","market":"spot","start":"2026-01-01T00:00:00.000Z","end":"2026-01-01T01:00:00.000Z","hours":1.0,"usd_per_hour":0.1,"usd":-1000.0,"kind":"metered"}}"#
    )
}

#[test]
fn a_forged_negative_ledger_entry_in_the_bucket_makes_budget_and_run_fail_instead_of_lowering_the_spend(
) {
    let a = Aws::new("trust_ledger");
    sleeper_plan(&a, "led", "ledgerproj", 2, 0.2, 1, 2);
    a.p.write(
        "plans/led.json",
        &a.p.read("plans/led.json").replacen(
            "\"region\": \"us-east-1\",",
            "\"region\": \"us-east-1\", \"budget\": {\"usd\": 50},",
            1,
        ),
    );
    ok(&a.infra(&["apply", "led", "--yes"]), "apply");
    let b = bucket_of(&a, "led");
    let key = "_ledger/led/20260101T010000.000Z-forged.jsonl";
    a.boto(&format!(
        "s3.put_object(Bucket={b:?}, Key={key:?}, Body={body:?}.encode())\nprint('{{}}')",
        body = forged("led") + "\n"
    ));
    let r = a.infra(&["budget", "led"]);
    assert_eq!(r.code, 3, "refused loudly:\n{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(&format!("s3://{b}/{key} line 1")) && r.stderr.contains("usd -1000"),
        "{}",
        r.stderr
    );
    // nothing of it reached this machine's ledger
    let local = std::fs::read_to_string(a.p.path().join(".infra/ledger.jsonl")).unwrap_or_default();
    assert!(!local.contains("forged"), "{local}");
    // a run merges the bucket's ledger before its budget gate: refused too
    let r = a.infra(&["run", "led", "all"]);
    assert_eq!(r.code, 3, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("usd -1000"), "{}", r.stderr);
    let j = a.p.path().join(".infra/led/journal.jsonl");
    let dispatched = std::fs::read_to_string(&j)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"dispatched\""))
        .count();
    assert_eq!(dispatched, 0, "no task ran");
    // destroy is not blocked by it: it says so and cleans up
    let r = a.infra(&["destroy", "led", "--all", "--force"]);
    ok(&r, "destroy");
    assert!(r.stderr.contains("usd -1000"), "{}", r.stderr);
}

#[test]
fn a_forged_negative_line_in_the_local_ledger_makes_plan_fail_instead_of_lowering_the_spend() {
    let a = Aws::new("trust_ledger_local");
    sleeper_plan(&a, "ll", "ledgerlocal", 2, 0.2, 1, 2);
    let good = forged("ll").replace("-1000.0", "0.5");
    a.p.write(
        ".infra/ledger.jsonl",
        &format!("{good}\n{}\n", forged("ll")),
    );
    let r = a.infra(&["plan", "ll"]);
    assert_eq!(r.code, 3, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(".infra/ledger.jsonl line 2") && r.stderr.contains("usd -1000"),
        "{}",
        r.stderr
    );
    let r = a.infra(&["apply", "ll", "--yes"]);
    assert_eq!(r.code, 3, "{}{}", r.stdout, r.stderr);
    assert!(
        !a.p.exists(".infra/ll/aws-state.json"),
        "nothing was deployed"
    );
}

#[test]
fn destroy_delete_results_deletes_every_version_so_the_versioned_bucket_goes() {
    let a = Aws::new("trust_versions");
    sleeper_plan(&a, "ver", "versionsproj", 2, 0.2, 1, 2);
    ok(&a.infra(&["apply", "ver", "--yes"]), "apply");
    let b = bucket_of(&a, "ver");
    // the emulator's CloudFormation does not apply VersioningConfiguration:
    // turn it on as the real stack does
    a.boto(&format!(
        "s3.put_bucket_versioning(Bucket={b:?}, VersioningConfiguration={{'Status': 'Enabled'}})\nprint('{{}}')"
    ));
    ok(&a.infra(&["run", "ver", "all"]), "run");
    // an overwritten result (a noncurrent version) and a deleted one (a
    // delete marker)
    let k = keys(&a, &b, "ver/results/ver-t1/");
    assert!(!k.is_empty());
    a.boto(&format!(
        "s3.put_object(Bucket={b:?}, Key={k0:?}, Body=b'again')\ns3.delete_object(Bucket={b:?}, Key={k0:?})\nprint('{{}}')",
        k0 = k[0]
    ));
    let v = a.boto(&format!(
        "r = s3.list_object_versions(Bucket={b:?})\nprint(json.dumps([len(r.get('Versions', [])), len(r.get('DeleteMarkers', []))]))"
    ));
    assert!(v[1].as_u64().unwrap() >= 1, "{v}");
    let r = a.infra(&["destroy", "ver", "--all", "--delete-results", "--force"]);
    ok(&r, "destroy");
    let left = a.boto(&format!(
        "print(json.dumps({b:?} in [x['Name'] for x in s3.list_buckets()['Buckets']]))"
    ));
    assert_eq!(left, json!(false), "the bucket is gone:\n{}", r.stderr);
}
