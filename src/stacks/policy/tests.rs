//! The rendered node policies, evaluated: what a node of a phase may write.

use std::path::Path;

use serde_json::Value;

use super::eval::{decide, Decision, ACCOUNT, REGION};
use crate::catalog::Catalog;
use crate::plan::load::parse_plan;

const PLAN: &str = r#"{"phase": "x", "name": "n", "project": "proj", "provider": "aws", "region": "us-east-1",
  "node_groups": {"cpu": {"instance_type": "c6i.xlarge", "count": 1}, "gpu": {"instance_type": "g5.xlarge", "count": 1}},
  "layers": [{"id": "L0", "patterns": [{"id": "x-a", "backend": "echo"}]}]}"#;

fn stacks(phase: &str) -> crate::stacks::Stacks {
    let file = format!("/p/plans/{phase}.json");
    let plan = parse_plan(PLAN, Path::new(&file), &|_| true).expect("plan");
    crate::stacks::render(&plan, &Catalog::builtin()).expect("render")
}

fn bucket() -> String {
    format!("proj-{ACCOUNT}-{REGION}")
}

fn object(key: &str) -> String {
    format!("arn:aws:s3:::{}/{key}", bucket())
}

/// Every statement of every inline policy of the role `id`.
fn role_statements(template: &Value, id: &str) -> Value {
    let role = &template["Resources"][id];
    assert_eq!(role["Type"], "AWS::IAM::Role", "{id}");
    let mut all = Vec::new();
    for p in role["Properties"]["Policies"].as_array().unwrap() {
        all.extend(
            p["PolicyDocument"]["Statement"]
                .as_array()
                .unwrap()
                .iter()
                .cloned(),
        );
    }
    Value::Array(all)
}

fn put(st: &Value, key: &str) -> Decision {
    decide(st, "s3:PutObject", &object(key), None)
}

#[test]
fn a_node_of_a_phase_may_write_only_its_results_checkpoints_and_logs() {
    let s = stacks("train.v2");
    let st = role_statements(&s.compute.template, "NodeRole");
    let denied = [
        "train.v2/_bundle/x",
        "train.v2/_bundle/infra/infra-node.sh",
        "train.v2/_bundle.manifest",
        "train.v2/_state/campaign.json",
        "_ledger/x",
        "_ledger/train.v2/20260101T000000.000Z-abc.jsonl",
        "_infra/bin/x",
        "_templates/x.json",
        "other/results/x",
        "other/results/t/attempt-1/x",
        "other/_bundle/x",
        "train.v2/x",
        "train.v2/t/attempt-1/x",
    ];
    for k in denied {
        assert_ne!(put(&st, k), Decision::Allow, "put {k}");
    }
    // the controller-only keys are denied explicitly, whatever else allows
    for k in [
        "train.v2/_bundle/x",
        "train.v2/_bundle.manifest",
        "_ledger/x",
        "_infra/bin/x",
    ] {
        assert_eq!(put(&st, k), Decision::ExplicitDeny, "put {k}");
    }
    for k in [
        "train.v2/results/t/attempt-1/x",
        "train.v2/results/t/attempt-1/steps/0/stdout.log",
        "train.v2/checkpoints/t/step-100.pt",
        "train.v2/logs/setup/i-0123.log",
        "train.v2/logs/ssm/cmd/i-0123/awsrunShellScript/0.awsrunShellScript/stdout",
    ] {
        assert_eq!(put(&st, k), Decision::Allow, "put {k}");
        assert_eq!(
            decide(&st, "s3:AbortMultipartUpload", &object(k), None),
            Decision::Allow,
            "abort {k}"
        );
    }
    // delete: only in its checkpoints (a mirror of the task's folder)
    assert_eq!(
        decide(
            &st,
            "s3:DeleteObject",
            &object("train.v2/checkpoints/t/step-100.pt"),
            None
        ),
        Decision::Allow
    );
    // no other delete, not even of its own results
    for k in [
        "other/checkpoints/t/x",
        "train.v2/results/t/attempt-1/x",
        "train.v2/_bundle/x",
        "_ledger/x",
        "x",
    ] {
        assert_ne!(
            decide(&st, "s3:DeleteObject", &object(k), None),
            Decision::Allow,
            "delete {k}"
        );
        assert_ne!(
            decide(&st, "s3:DeleteObjectVersion", &object(k), None),
            Decision::Allow,
            "delete version {k}"
        );
    }
    // reads: the binaries, its bundle and manifest, its checkpoints
    for k in [
        "_infra/bin/abc/x86_64/infra",
        "train.v2/_bundle/scripts/x.sh",
        "train.v2/_bundle.manifest",
        "train.v2/checkpoints/t/c.pt",
    ] {
        assert_eq!(
            decide(&st, "s3:GetObject", &object(k), None),
            Decision::Allow,
            "get {k}"
        );
    }
    for k in [
        "_ledger/x",
        "other/_bundle/x",
        "other/checkpoints/x",
        "train.v2/results/t/attempt-1/x",
        "train.v2/_state/x",
    ] {
        assert_ne!(
            decide(&st, "s3:GetObject", &object(k), None),
            Decision::Allow,
            "get {k}"
        );
    }
    // list: only its checkpoints, by s3:prefix (the agent reads the bundle
    // by its manifest, no listing)
    let b = format!("arn:aws:s3:::{}", bucket());
    let list = |p: Option<&str>| decide(&st, "s3:ListBucket", &b, p);
    assert_eq!(list(Some("train.v2/checkpoints/t/")), Decision::Allow);
    assert_ne!(list(Some("train.v2/_bundle/")), Decision::Allow);
    assert_ne!(list(Some("train.v2/results/")), Decision::Allow);
    assert_ne!(list(Some("_ledger/")), Decision::Allow);
    assert_ne!(list(Some("other/checkpoints/")), Decision::Allow);
    assert_ne!(list(None), Decision::Allow);
}

#[test]
fn the_nodes_of_a_phase_use_the_phase_role_with_ssm() {
    let s = stacks("p1");
    let t = &s.compute.template;
    let role = &t["Resources"]["NodeRole"]["Properties"];
    assert!(role["ManagedPolicyArns"][0]["Fn::Sub"]
        .as_str()
        .unwrap()
        .ends_with("/AmazonSSMManagedInstanceCore"));
    assert_eq!(
        t["Resources"]["NodeInstanceProfile"]["Properties"]["Roles"][0]["Ref"],
        "NodeRole"
    );
    let mut lts = 0;
    for (_, r) in t["Resources"].as_object().unwrap() {
        if r["Type"] == "AWS::EC2::LaunchTemplate" {
            lts += 1;
            assert_eq!(
                r["Properties"]["LaunchTemplateData"]["IamInstanceProfile"]["Arn"]["Fn::GetAtt"],
                serde_json::json!(["NodeInstanceProfile", "Arn"])
            );
        }
    }
    assert_eq!(lts, 2);
    // the bucket is encrypted with S3's own key: no KMS permission to give
    let enc = &s.base.template["Resources"]["ResultsBucket"]["Properties"]["BucketEncryption"];
    assert_eq!(
        enc["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
            ["SSEAlgorithm"],
        "AES256"
    );
}

#[test]
fn the_base_role_of_earlier_compute_stacks_can_no_longer_write_the_bundle_or_the_ledger() {
    let s = stacks("p1");
    let st = role_statements(&s.base.template, "InstanceRole");
    for k in [
        "p1/_bundle/infra/infra-node.sh",
        "p1/_bundle.manifest",
        "p2/_bundle/x",
        "p2/_state/x",
        "_ledger/p1/x.jsonl",
        "_ledger/p1/results/x",
        "_infra/bin/x",
        "_templates/x",
        "p1/t/attempt-1/x",
    ] {
        assert_ne!(put(&st, k), Decision::Allow, "put {k}");
    }
    for k in [
        "p1/results/t/attempt-1/x",
        "p1/logs/ssm/x",
        "p2/checkpoints/x",
    ] {
        assert_eq!(put(&st, k), Decision::Allow, "put {k}");
    }
    assert_ne!(
        decide(
            &st,
            "s3:DeleteObject",
            &object("p1/results/t/attempt-1/x"),
            None
        ),
        Decision::Allow
    );
}

#[test]
fn the_bucket_keeps_noncurrent_versions_a_bounded_time() {
    let s = stacks("p1");
    let b = &s.base.template["Resources"]["ResultsBucket"]["Properties"];
    assert_eq!(b["VersioningConfiguration"]["Status"], "Enabled");
    let rules = b["LifecycleConfiguration"]["Rules"].as_array().unwrap();
    assert!(rules
        .iter()
        .any(|r| r["NoncurrentVersionExpiration"]["NoncurrentDays"]
            == super::NONCURRENT_VERSION_DAYS));
    assert!(rules.iter().any(
        |r| r["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == super::ABORT_UPLOAD_DAYS
    ));
}

#[test]
fn a_node_may_read_the_lease_but_never_write_it() {
    let s = stacks("train.v2");
    let st = role_statements(&s.compute.template, "NodeRole");
    let lease = object("train.v2/_state/lease.json");
    assert_eq!(decide(&st, "s3:GetObject", &lease, None), Decision::Allow);
    for a in ["s3:PutObject", "s3:DeleteObject"] {
        assert_eq!(decide(&st, a, &lease, None), Decision::ExplicitDeny, "{a}");
    }
    // nothing else of the state: another phase's lease, the journal
    for k in [
        "other/_state/lease.json",
        "train.v2/_state/journal/0000000001.jsonl",
    ] {
        assert_ne!(
            decide(&st, "s3:GetObject", &object(k), None),
            Decision::Allow,
            "{k}"
        );
    }
}

#[test]
fn a_node_may_delete_only_fleets_of_its_own_phase_and_start_nothing() {
    use super::eval::decide_with;
    let s = stacks("train.v2");
    let st = role_statements(&s.compute.template, "NodeRole");
    let fleet = format!("arn:aws:ec2:{REGION}:{ACCOUNT}:fleet/fleet-0123");
    let tags = |project: &str, phase: &str| {
        [
            ("aws:ResourceTag/infra:project", project.to_string()),
            ("aws:ResourceTag/infra:phase", phase.to_string()),
        ]
    };
    let d = |action: &str, resource: &str, t: &[(&str, String)]| {
        let ctx: Vec<(&str, &str)> = t.iter().map(|(k, v)| (*k, v.as_str())).collect();
        decide_with(&st, action, resource, &ctx)
    };
    assert_eq!(
        d("ec2:DeleteFleets", &fleet, &tags("proj", "train.v2")),
        Decision::Allow
    );
    for (p, ph) in [
        ("proj", "other"),
        ("other", "train.v2"),
        ("proj", "train.v"),
    ] {
        assert_ne!(
            d("ec2:DeleteFleets", &fleet, &tags(p, ph)),
            Decision::Allow,
            "{p}/{ph}"
        );
    }
    assert_ne!(d("ec2:DeleteFleets", &fleet, &[]), Decision::Allow);
    assert_eq!(d("ec2:DescribeInstances", "*", &[]), Decision::Allow);
    // nothing that starts, resizes or changes what runs
    for a in [
        "ec2:RunInstances",
        "ec2:CreateFleet",
        "ec2:ModifyFleet",
        "ec2:TerminateInstances",
        "ec2:StopInstances",
        "ec2:ModifyInstanceAttribute",
        "ec2:RequestSpotInstances",
        "ec2:CreateTags",
        "cloudformation:UpdateStack",
        "cloudformation:DeleteStack",
    ] {
        let r = format!("arn:aws:ec2:{REGION}:{ACCOUNT}:instance/i-1");
        assert_ne!(d(a, &r, &tags("proj", "train.v2")), Decision::Allow, "{a}");
        assert_ne!(
            d(a, &fleet, &tags("proj", "train.v2")),
            Decision::Allow,
            "{a}"
        );
        assert_ne!(d(a, "*", &tags("proj", "train.v2")), Decision::Allow, "{a}");
    }
}
