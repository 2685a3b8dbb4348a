//! CloudFormation stacks rendered from plans: snapshots, cfn-lint, the
//! security properties, the validators, determinism.
//!
//! cfn-lint must be on PATH (the setup script installs it); any error or
//! warning fails the suite. No rule is ignored. Set INFRA_SKIP_CFN_LINT=1 to
//! skip that one test on a machine without it.

use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::TimeZone;
use infra::catalog::Catalog;
use infra::plan::diag::{Diag, Diags};
use infra::plan::load::parse_plan;
use infra::plan::Plan;
use infra::stacks::{self, Stacks};
use serde_json::Value;

// ---------------------------------------------------------------- plans

/// The inference team's phase plan, in the phase system's format, unchanged
/// (no project: it comes from the folder, `inference`).
const PHASE15: &str = r#"{
  "phase": 15,
  "name": "EFA vs TCP disaggregated inference",
  "description": "Prefill on node 1, decode on node 2.",
  "infrastructure": {
    "instance_type": "g5.12xlarge", "node_count": 2,
    "model": "Qwen/Qwen2.5-7B-Instruct", "vllm_version": "v0.15.1",
    "venv_path": "/opt/dlami/nvme/venv/vllm-0.16",
    "gpu_count_per_node": 4, "tp_size": 1
  },
  "common_settings": { "max_tokens": 10, "warmup_iterations": 20,
    "measurement_iterations": 30, "gpu_memory_utilization": 0.9,
    "max_num_batched_tokens": 4096, "measurement_type": "online" },
  "layers": [
    { "id": "L0", "name": "baseline", "priority": "P0", "description": "",
      "patterns": [
        { "id": "p15-L0-efa-4k-c1", "backend": "efa", "prompt_tokens": 4000, "concurrency": 1 },
        { "id": "p15-L0-tcp-4k-c1", "backend": "tcp", "prompt_tokens": 4000, "concurrency": 1 }
      ] }
  ]
}"#;

/// Two EFA GPU groups: p5.48xlarge (32 network cards) on spot and
/// p4d.24xlarge (4) on demand, in one zone.
const EFA: &str = r#"{
  "phase": "nccl",
  "name": "NCCL all-reduce over EFA",
  "project": "llm-train",
  "provider": "aws",
  "region": "us-east-1",
  "availability_zone": "us-east-1b",
  "budget": { "usd": 2000, "max_hourly_usd": 160 },
  "node_groups": {
    "h100": { "instance_type": "p5.48xlarge", "count": 2, "market": "spot", "efa": true, "gpus": 8,
              "volume_gb": 500, "slots": 1, "max_lifetime_hours": 8 },
    "a100": { "instance_type": "p4d.24xlarge", "count": 2, "market": "on-demand", "efa": true, "gpus": 8,
              "volume_gb": 200, "slots": 1, "max_lifetime_hours": 8 }
  },
  "layers": [
    { "id": "L0", "name": "all-reduce", "node_group": "h100",
      "patterns": [ { "id": "nccl-L0-h100", "backend": "nccl" } ] },
    { "id": "L1", "name": "all-reduce", "node_group": "a100",
      "patterns": [ { "id": "nccl-L1-a100", "backend": "nccl" } ] }
  ]
}"#;

/// The statistics team: three c6i.4xlarge spot pools and one g5.xlarge spot
/// pool, $1000 over 720 hours.
const STATS: &str = r#"{
  "phase": "tables",
  "name": "Simulation tables for the paper",
  "project": "stats-paper",
  "provider": "aws",
  "region": "eu-north-1",
  "budget": { "usd": 1000, "hard_stop": true },
  "node_groups": {
    "table1-a": { "instance_type": "c6i.4xlarge", "count": 1, "market": "spot", "workers_per_slot": 12, "max_lifetime_hours": 720 },
    "table1-b": { "instance_type": "c6i.4xlarge", "count": 1, "market": "spot", "workers_per_slot": 12, "max_lifetime_hours": 720 },
    "table3":   { "instance_type": "c6i.4xlarge", "count": 1, "market": "spot", "workers_per_slot": 12, "max_lifetime_hours": 720 },
    "table2-gpu": { "instance_type": "g5.xlarge", "count": 1, "market": "spot", "gpus": 1, "slots": 2, "max_lifetime_hours": 720 }
  },
  "layers": [
    { "id": "t1", "name": "Table I", "node_group": "table1-a",
      "patterns": [ { "id": "tables-t1-dgp1", "backend": "simulate" } ] },
    { "id": "t2", "name": "Table II", "node_group": "table2-gpu",
      "patterns": [ { "id": "tables-t2-dgp1", "backend": "simulate" } ] }
  ]
}"#;

fn parse(file: &str, text: &str) -> Plan {
    parse_plan(text, Path::new(file), &|_| true).unwrap_or_else(|e| panic!("{e}"))
}

fn phase15() -> Plan {
    parse("inference/plans/phase15.json", PHASE15)
}
fn efa() -> Plan {
    parse("llm-train/plans/nccl.json", EFA)
}
fn stats() -> Plan {
    parse("stats-paper/plans/tables.json", STATS)
}

fn render(plan: &Plan) -> Stacks {
    stacks::render(plan, &Catalog::builtin()).unwrap_or_else(|e| panic!("{e}"))
}

/// The example plans of the repository (`plans/*.json`) that describe
/// machines, with their names.
fn example_plans() -> Vec<(String, Plan)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("plans");
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let plan = parse_plan(&text, &f, &|_| true).unwrap_or_else(|e| panic!("{e}"));
        // a Slurm plan has no stacks
        if plan.provider != infra::plan::ProviderKind::Slurm
            && plan.node_groups.iter().any(|g| g.instance_type != "local")
        {
            out.push((f.file_stem().unwrap().to_string_lossy().to_string(), plan));
        }
    }
    out
}

fn all_rendered() -> Vec<(String, Stacks)> {
    let mut out = vec![
        ("phase15".to_string(), render(&phase15())),
        ("efa".to_string(), render(&efa())),
        ("stats".to_string(), render(&stats())),
    ];
    for (name, plan) in example_plans() {
        out.push((format!("example-{name}"), render(&plan)));
    }
    out
}

fn resources<'a>(t: &'a Value, kind: &str) -> Vec<(&'a String, &'a Value)> {
    t["Resources"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, r)| r["Type"] == kind)
        .collect()
}

fn snapshot(name: &str, body: &str) {
    insta::with_settings!({ snapshot_path => "snapshots", prepend_module_to_snapshot => false, omit_expression => true }, {
        insta::assert_snapshot!(name, body);
    });
}

// ---------------------------------------------------------------- snapshots

#[test]
fn snapshot_phase15_inference_plan() {
    let s = render(&phase15());
    assert_eq!(s.base.name, "inference-base");
    assert_eq!(s.compute.name, "inference-phase15");
    snapshot("stacks_phase15_base", &s.base.body);
    snapshot("stacks_phase15_compute", &s.compute.body);
}

#[test]
fn snapshot_efa_gpu_groups() {
    let s = render(&efa());
    snapshot("stacks_efa_base", &s.base.body);
    snapshot("stacks_efa_compute", &s.compute.body);
}

#[test]
fn snapshot_statistics_team_plan() {
    let s = render(&stats());
    assert_eq!(s.compute.name, "stats-paper-tables");
    snapshot("stacks_stats_base", &s.base.body);
    snapshot("stacks_stats_compute", &s.compute.body);
}

/// The detached campaign's controller stack (`--detach` on AWS).
#[test]
fn snapshot_statistics_team_controller() {
    let c = stacks::controller::render(&stats(), &Catalog::builtin()).unwrap();
    assert_eq!(c.name, "stats-paper-tables-controller");
    snapshot("stacks_stats_controller", &c.body);
}

// ---------------------------------------------------------------- cfn-lint

#[test]
fn cfn_lint_accepts_every_rendered_stack() {
    if std::env::var_os("INFRA_SKIP_CFN_LINT").is_some() {
        eprintln!("INFRA_SKIP_CFN_LINT is set: cfn-lint skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut regions: Vec<String> = Vec::new();
    let mut plans: Vec<(String, Plan)> = vec![
        ("phase15".into(), phase15()),
        ("efa".into(), efa()),
        ("stats".into(), stats()),
    ];
    plans.extend(example_plans());
    for (name, plan) in &plans {
        let s = render(plan);
        let controller =
            stacks::controller::render(plan, &Catalog::builtin()).unwrap_or_else(|e| panic!("{e}"));
        for (kind, stack) in [
            ("base", &s.base),
            ("compute", &s.compute),
            ("controller", &controller),
        ] {
            let f = dir.path().join(format!("{name}-{kind}.json"));
            std::fs::write(&f, &stack.body).unwrap();
            files.push(f);
        }
        if !regions.contains(&plan.region) {
            regions.push(plan.region.clone());
        }
    }
    let out = Command::new("cfn-lint")
        .arg("--format")
        .arg("parseable")
        .arg("--regions")
        .args(&regions)
        .arg("--")
        .args(&files)
        .output()
        .unwrap_or_else(|e| panic!("cannot run cfn-lint: {e}\n  (hint: pip install cfn-lint, or set INFRA_SKIP_CFN_LINT=1)"));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // exit code bits: 2 error, 4 warning, 8 informational (accepted)
    let code = out.status.code().unwrap_or(1);
    assert!(
        code & !8 == 0,
        "cfn-lint found problems (exit {code}):\n{report}"
    );
}

// ---------------------------------------------------------------- security

/// Every ingress rule (inline or as a resource) of a template.
fn ingress_rules(t: &Value) -> Vec<Value> {
    let mut rules: Vec<Value> = Vec::new();
    for (_, sg) in resources(t, "AWS::EC2::SecurityGroup") {
        if let Some(a) = sg["Properties"]["SecurityGroupIngress"].as_array() {
            rules.extend(a.iter().cloned());
        }
    }
    for (_, r) in resources(t, "AWS::EC2::SecurityGroupIngress") {
        rules.push(r["Properties"].clone());
    }
    rules
}

fn covers_port(rule: &Value, port: i64) -> bool {
    let from = rule["FromPort"].as_i64();
    let to = rule["ToPort"].as_i64();
    matches!((from, to), (Some(f), Some(t)) if f <= port && port <= t)
}

#[test]
fn no_inbound_access_from_outside() {
    for (name, s) in all_rendered() {
        for t in [&s.base.template, &s.compute.template] {
            for (id, sg) in resources(t, "AWS::EC2::SecurityGroup") {
                assert!(
                    sg["Properties"].get("SecurityGroupIngress").is_none(),
                    "{name}: {id} has inline ingress rules"
                );
            }
            for rule in ingress_rules(t) {
                assert!(
                    rule.get("CidrIp").is_none() && rule.get("CidrIpv6").is_none(),
                    "{name}: ingress from an address range: {rule}"
                );
                assert_ne!(rule["CidrIp"], "0.0.0.0/0", "{name}");
                assert_ne!(rule["CidrIpv6"], "::/0", "{name}");
                assert!(!covers_port(&rule, 22), "{name}: port 22 open: {rule}");
                assert_eq!(
                    rule["SourceSecurityGroupId"],
                    serde_json::json!({"Fn::GetAtt": ["SecurityGroup", "GroupId"]}),
                    "{name}: ingress not from the group itself: {rule}"
                );
            }
        }
        // EFA: all traffic to and from the group itself, both directions
        let b = &s.base.template;
        let egress = resources(b, "AWS::EC2::SecurityGroupEgress");
        assert_eq!(egress.len(), 1, "{name}");
        assert_eq!(egress[0].1["Properties"]["IpProtocol"], "-1");
        assert_eq!(
            egress[0].1["Properties"]["DestinationSecurityGroupId"],
            serde_json::json!({"Fn::GetAtt": ["SecurityGroup", "GroupId"]})
        );
        let ingress = resources(b, "AWS::EC2::SecurityGroupIngress");
        assert_eq!(ingress.len(), 1, "{name}");
        assert_eq!(ingress[0].1["Properties"]["IpProtocol"], "-1");
    }
}

#[test]
fn launch_templates_require_imdsv2_and_encrypt_volumes() {
    for (name, s) in all_rendered() {
        let lts = resources(&s.compute.template, "AWS::EC2::LaunchTemplate");
        assert!(!lts.is_empty(), "{name}");
        for (id, lt) in lts {
            let d = &lt["Properties"]["LaunchTemplateData"];
            assert_eq!(
                d["MetadataOptions"]["HttpTokens"], "required",
                "{name} {id}"
            );
            assert_eq!(
                d["MetadataOptions"]["HttpPutResponseHopLimit"], 2,
                "{name} {id}"
            );
            assert_eq!(
                d["InstanceInitiatedShutdownBehavior"], "terminate",
                "{name} {id}"
            );
            let disks = d["BlockDeviceMappings"].as_array().unwrap();
            assert!(!disks.is_empty());
            for disk in disks {
                assert_eq!(disk["Ebs"]["Encrypted"], true, "{name} {id}");
                assert_eq!(disk["Ebs"]["VolumeType"], "gp3", "{name} {id}");
            }
            let ud = serde_json::to_string(&d["UserData"]).unwrap();
            assert!(
                ud.contains("shutdown -P") && ud.contains("infra-deadline.timer"),
                "{name} {id}: no self-termination deadline"
            );
        }
    }
}

#[test]
fn results_bucket_is_encrypted_private_tls_only_and_retained() {
    for (name, s) in all_rendered() {
        let b = &s.base.template;
        let buckets = resources(b, "AWS::S3::Bucket");
        assert_eq!(buckets.len(), 1, "{name}");
        let (_, bucket) = buckets[0];
        assert_eq!(bucket["DeletionPolicy"], "Retain");
        assert_eq!(bucket["UpdateReplacePolicy"], "Retain");
        let p = &bucket["Properties"];
        let alg = &p["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
            ["ServerSideEncryptionByDefault"]["SSEAlgorithm"];
        assert!(alg == "AES256" || alg == "aws:kms", "{name}: {alg}");
        for k in [
            "BlockPublicAcls",
            "BlockPublicPolicy",
            "IgnorePublicAcls",
            "RestrictPublicBuckets",
        ] {
            assert_eq!(p["PublicAccessBlockConfiguration"][k], true, "{name}: {k}");
        }
        let policies = resources(b, "AWS::S3::BucketPolicy");
        assert_eq!(policies.len(), 1);
        let st = &policies[0].1["Properties"]["PolicyDocument"]["Statement"];
        let tls = st.as_array().unwrap().iter().any(|s| {
            s["Effect"] == "Deny"
                && s["Action"] == "s3:*"
                && s["Condition"]["Bool"]["aws:SecureTransport"] == "false"
        });
        assert!(tls, "{name}: no deny of non-TLS requests");
    }
}

/// Every statement of every IAM policy document in a template.
fn iam_statements(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Array(st)) = m.get("Statement") {
                out.extend(st.iter().cloned());
            }
            for x in m.values() {
                iam_statements(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| iam_statements(x, out)),
        _ => {}
    }
}

#[test]
fn no_s3_permission_on_every_resource() {
    for (name, s) in all_rendered() {
        let mut sts = Vec::new();
        iam_statements(&s.base.template, &mut sts);
        iam_statements(&s.compute.template, &mut sts);
        assert!(!sts.is_empty());
        for st in sts {
            let actions: Vec<String> = match &st["Action"] {
                Value::String(a) => vec![a.clone()],
                Value::Array(a) => a
                    .iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect(),
                _ => vec![],
            };
            let star = st["Resource"] == "*"
                || st["Resource"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|r| r == "*"));
            if actions.iter().any(|a| a.starts_with("s3:") || a == "*") && st["Effect"] == "Allow" {
                assert!(!star, "{name}: S3 actions on Resource \"*\": {st}");
            }
        }
        // the role: SSM core plus this bucket only
        let roles = resources(&s.base.template, "AWS::IAM::Role");
        assert_eq!(roles.len(), 1);
        let managed =
            serde_json::to_string(&roles[0].1["Properties"]["ManagedPolicyArns"]).unwrap();
        assert!(managed.contains("AmazonSSMManagedInstanceCore"), "{name}");
    }
}

#[test]
fn compute_resources_carry_project_phase_and_group_tags() {
    for (name, s) in all_rendered() {
        let t = &s.compute.template;
        for (id, r) in t["Resources"].as_object().unwrap() {
            // an instance profile has no tags in CloudFormation; the node
            // role is the phase's, not one group's
            if r["Type"] == "AWS::IAM::InstanceProfile" {
                continue;
            }
            let per_group = r["Type"] != "AWS::IAM::Role";
            let p = &r["Properties"];
            let mut tag_lists: Vec<&Value> = Vec::new();
            if let Some(tags) = p.get("Tags") {
                tag_lists.push(tags);
            }
            for spec in p["TagSpecifications"].as_array().into_iter().flatten() {
                tag_lists.push(&spec["Tags"]);
            }
            for spec in p["LaunchTemplateData"]["TagSpecifications"]
                .as_array()
                .into_iter()
                .flatten()
            {
                tag_lists.push(&spec["Tags"]);
            }
            assert!(!tag_lists.is_empty(), "{name}: {id} has no tags");
            for tags in tag_lists {
                let keys: Vec<&str> = tags
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|t| t["Key"].as_str())
                    .collect();
                for k in ["infra:project", "infra:phase", "infra:node-group"] {
                    if k == "infra:node-group" && !per_group {
                        continue;
                    }
                    assert!(keys.contains(&k), "{name}: {id} lacks tag {k}");
                }
            }
        }
        for (id, r) in s.base.template["Resources"].as_object().unwrap() {
            if let Some(tags) = r["Properties"].get("Tags") {
                assert!(
                    tags.as_array()
                        .unwrap()
                        .iter()
                        .any(|t| t["Key"] == "infra:project"),
                    "{name}: {id}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------- EFA, fleets

#[test]
fn efa_groups_get_one_interface_per_network_card_and_a_cluster() {
    let s = render(&efa());
    let t = &s.compute.template;
    for (group, cards) in [("H100", 32u64), ("A100", 4)] {
        let lt =
            &t["Resources"][format!("LaunchTemplate{group}")]["Properties"]["LaunchTemplateData"];
        let nics = lt["NetworkInterfaces"].as_array().unwrap();
        assert_eq!(nics.len() as u64, cards, "{group}");
        for (i, nic) in nics.iter().enumerate() {
            assert_eq!(nic["NetworkCardIndex"], i as u64, "{group} {i}");
            assert_eq!(
                nic["DeviceIndex"],
                if i == 0 { 0 } else { 1 },
                "{group} {i}"
            );
            assert_eq!(nic["InterfaceType"], "efa");
            assert_eq!(
                nic["SubnetId"],
                serde_json::json!({"Fn::ImportValue": "llm-train-base-PrivateSubnetId"})
            );
            assert!(
                nic.get("AssociatePublicIpAddress").is_none(),
                "several interfaces cannot have a public address"
            );
        }
        assert_eq!(
            lt["Placement"]["GroupName"],
            serde_json::json!({"Ref": format!("PlacementGroup{group}")})
        );
        assert_eq!(
            t["Resources"][format!("PlacementGroup{group}")]["Properties"]["Strategy"],
            "cluster"
        );
    }
    assert_eq!(
        t["Resources"]["FleetH100"]["Properties"]["SpotOptions"]["SingleAvailabilityZone"],
        true
    );
    assert_eq!(
        t["Resources"]["FleetA100"]["Properties"]["OnDemandOptions"]["SingleAvailabilityZone"],
        true
    );
    // one zone, reached through a NAT gateway from the private subnet
    let b = &s.base.template;
    let subnets = resources(b, "AWS::EC2::Subnet");
    assert!(
        subnets.iter().all(
            |(_, r)| r["Properties"]["AvailabilityZone"] == serde_json::json!({"Ref": "Zone1"})
        ),
        "{subnets:?}"
    );
    assert_eq!(b["Parameters"]["Zone1"]["Default"], "us-east-1b");
    assert!(b["Parameters"].get("Zone2").is_none());
    assert_eq!(resources(b, "AWS::EC2::NatGateway").len(), 1);
    assert!(b["Outputs"]["PrivateSubnetId"].is_object());
}

#[test]
fn single_card_efa_types_use_the_public_subnet() {
    // g5.12xlarge has one network card: one EFA interface with a public address
    let text = PHASE15.replace("\"tp_size\": 1", "\"tp_size\": 1, \"efa\": true");
    let s = render(&parse("inference/plans/phase15.json", &text));
    let nics = &s.compute.template["Resources"]["LaunchTemplateDefault"]["Properties"]
        ["LaunchTemplateData"]["NetworkInterfaces"];
    assert_eq!(nics.as_array().unwrap().len(), 1);
    assert_eq!(nics[0]["InterfaceType"], "efa");
    assert_eq!(nics[0]["AssociatePublicIpAddress"], true);
    assert!(resources(&s.base.template, "AWS::EC2::NatGateway").is_empty());
    assert_eq!(
        resources(&s.base.template, "AWS::EC2::Subnet").len(),
        1,
        "EFA: one zone"
    );
}

#[test]
fn spot_fleets_are_capped_by_the_budget() {
    let plan = stats();
    let s = render(&plan);
    let fleets = resources(&s.compute.template, "AWS::EC2::EC2Fleet");
    assert_eq!(fleets.len(), 4);
    let mut total = 0.0;
    for (id, f) in &fleets {
        let p = &f["Properties"];
        assert_eq!(p["Type"], "maintain", "{id}");
        assert_eq!(
            p["TargetCapacitySpecification"]["DefaultTargetCapacityType"],
            "spot"
        );
        assert_eq!(p["TargetCapacitySpecification"]["TotalTargetCapacity"], 1);
        assert_eq!(
            p["SpotOptions"]["AllocationStrategy"],
            "price-capacity-optimized"
        );
        assert_eq!(p["TerminateInstancesWithExpiration"], true);
        assert!(p["ValidUntil"]["Ref"]
            .as_str()
            .unwrap()
            .starts_with("ValidUntil"));
        total += p["SpotOptions"]["MaxTotalPrice"]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .unwrap();
    }
    // $1000 over 720 h: the caps add up to at most $1.3889/h, and each
    // covers its pool's median spot price in eu-north-1
    assert!(total <= 1000.0 / 720.0 + 1e-9, "{total}");
    let cap = |g: &str| {
        s.compute.template["Resources"][format!("Fleet{g}")]["Properties"]["SpotOptions"]
            ["MaxTotalPrice"]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .unwrap()
    };
    assert!(
        cap("Table1A") >= 0.2242 && cap("Table2Gpu") >= 0.4277,
        "{} {}",
        cap("Table1A"),
        cap("Table2Gpu")
    );

    // the deployment supplies each fleet's expiry: now + 720 h
    let now = chrono::Utc.with_ymd_and_hms(2026, 8, 1, 0, 0, 0).unwrap();
    let params = stacks::compute_parameters(&plan, &Catalog::builtin(), now, 0.0);
    assert_eq!(params.len(), 4);
    assert_eq!(
        params[0],
        (
            "ValidUntilTable1A".to_string(),
            "2026-08-31T00:00:00Z".to_string()
        )
    );
    let mut names: Vec<&str> = params.iter().map(|(k, _)| k.as_str()).collect();
    names.sort();
    let mut declared = s.compute.parameter_names();
    declared.sort();
    assert_eq!(names, declared);
}

#[test]
fn on_demand_groups_use_on_demand_fleets() {
    let s = render(&phase15());
    let p = &s.compute.template["Resources"]["FleetDefault"]["Properties"];
    assert_eq!(
        p["TargetCapacitySpecification"]["DefaultTargetCapacityType"],
        "on-demand"
    );
    assert_eq!(
        p["TargetCapacitySpecification"]["OnDemandTargetCapacity"],
        2
    );
    // no budget: no cap (the fleet pays on-demand prices), and the nodes'
    // lifetime is the default day
    assert!(p["OnDemandOptions"].get("MaxTotalPrice").is_none());
    let limits = stacks::group_limits(&phase15(), &Catalog::builtin());
    assert_eq!(
        limits[0].lifetime_hours,
        stacks::limits::DEFAULT_LIFETIME_HOURS
    );

    // the example phase 15 plan: $12/h and $300; two nodes cost $11.344/h
    // on demand, so the budget lasts 26.4 h
    let text = PHASE15.replace(
        "\"infrastructure\"",
        "\"budget\": {\"usd\": 300, \"max_hourly_usd\": 12.0}, \"infrastructure\"",
    );
    let plan = parse("inference/plans/phase15.json", &text);
    let s = render(&plan);
    assert_eq!(
        s.compute.template["Resources"]["FleetDefault"]["Properties"]["OnDemandOptions"]
            ["MaxTotalPrice"],
        "12.0000"
    );
    let limits = stacks::group_limits(&plan, &Catalog::builtin());
    assert!(
        (limits[0].lifetime_hours - 300.0 / 11.344).abs() < 1e-9,
        "{}",
        limits[0].lifetime_hours
    );
    assert!(p.get("SpotOptions").is_none());
}

#[test]
fn base_values_reach_the_compute_stack_as_exports() {
    for (name, s) in all_rendered() {
        let exported: Vec<String> = s.base.template["Outputs"]
            .as_object()
            .unwrap()
            .values()
            .filter_map(|o| o["Export"]["Name"].as_str().map(String::from))
            .collect();
        let body = &s.compute.body;
        let mut imports = 0;
        for part in body.split("\"Fn::ImportValue\": \"").skip(1) {
            let import = &part[..part.find('"').unwrap()];
            assert!(
                exported.iter().any(|e| e == import),
                "{name}: {import} is not exported by the base stack"
            );
            imports += 1;
        }
        assert!(imports > 0);
    }
}

// ---------------------------------------------------------------- API

#[test]
fn rendering_is_deterministic() {
    for plan in [phase15(), efa(), stats()] {
        let a = render(&plan);
        let b = render(&plan);
        assert_eq!(a.base.body, b.base.body);
        assert_eq!(a.compute.body, b.compute.body);
        assert_eq!(a, b);
    }
}

#[test]
fn bodies_are_the_templates_and_large_ones_need_the_bucket() {
    let s = render(&efa());
    let again: Value = serde_json::from_str(&s.compute.body).unwrap();
    assert_eq!(again, s.compute.template);
    assert!(!s.base.needs_upload);
    assert_eq!(s.compute.needs_upload, s.compute.body.len() > 51_200);

    // many groups: the compute body passes the inline limit
    let groups: Vec<String> = (0..40)
        .map(|i| format!("\"g{i}\": {{\"instance_type\": \"c6i.xlarge\", \"count\": 1}}"))
        .collect();
    let text = format!(
        r#"{{"phase": "big", "name": "big", "project": "big", "provider": "aws", "node_groups": {{ {} }},
            "layers": [{{"id": "L0", "node_group": "g0", "patterns": [{{"id": "big-1", "backend": "b"}}]}}]}}"#,
        groups.join(", ")
    );
    let s = render(&parse("big/plans/big.json", &text));
    assert!(s.compute.body.len() > 51_200, "{}", s.compute.body.len());
    assert!(s.compute.needs_upload);
}

#[test]
fn summary_lists_every_resource_with_its_key_properties() {
    let s = render(&stats());
    let sum = s.compute.summary();
    assert_eq!(sum.len(), s.compute.resource_ids().len());
    let fleet = sum
        .iter()
        .find(|r| r.logical_id == "FleetTable2Gpu")
        .unwrap();
    assert_eq!(fleet.resource_type, "AWS::EC2::EC2Fleet");
    assert!(
        fleet.key_properties.contains("1 × g5.xlarge spot")
            && fleet.key_properties.contains("at most $"),
        "{}",
        fleet.key_properties
    );
    let lt = sum
        .iter()
        .find(|r| r.logical_id == "LaunchTemplateTable2Gpu")
        .unwrap();
    assert!(
        lt.key_properties.contains("encrypted") && lt.key_properties.contains("IMDSv2"),
        "{}",
        lt.key_properties
    );
    let base = s.base.summary();
    let bucket = base
        .iter()
        .find(|r| r.resource_type == "AWS::S3::Bucket")
        .unwrap();
    assert!(
        bucket.key_properties.contains("retained"),
        "{}",
        bucket.key_properties
    );
}

#[test]
fn write_puts_both_stacks_under_the_phase_folder() {
    let plan = stats();
    let s = render(&plan);
    let dir = tempfile::tempdir().unwrap();
    let phase_dir = dir.path().join(".infra").join(&plan.name_key);
    let paths = stacks::write(&phase_dir, &s).unwrap();
    assert_eq!(
        paths,
        vec![
            phase_dir.join("stacks/base.json"),
            phase_dir.join("stacks/compute.json")
        ]
    );
    assert_eq!(std::fs::read_to_string(&paths[0]).unwrap(), s.base.body);
    assert_eq!(std::fs::read_to_string(&paths[1]).unwrap(), s.compute.body);
}

#[test]
fn logical_ids_from_group_names_are_alphanumeric_and_unique() {
    let text = STATS.replace("\"table1-b\"", "\"table1_a\"");
    let s = render(&parse("stats-paper/plans/tables.json", &text));
    let ids = s.compute.resource_ids();
    assert!(
        ids.contains(&"FleetTable1A") && ids.contains(&"FleetTable1A2"),
        "{ids:?}"
    );
    for id in ids {
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric()), "{id}");
    }
}

#[test]
fn hostile_names_stay_inside_their_strings() {
    // a plan file stem is the phase name; it reaches tags, names and the
    // user-data script: a stem with anything but letters, digits, '-', '_'
    // and '.' is refused where it is derived (the quoting of user data is
    // pinned by the unit tests of stacks::render)
    let err = parse_plan(
        STATS,
        Path::new("stats-paper/plans/it's $(reboot) ${AWS::AccountId}.json"),
        &|_| true,
    )
    .unwrap_err();
    assert!(err.to_string().contains("rename the file"), "{err}");
    let plan = parse("stats-paper/plans/it.s_v2.json", STATS);
    let s = render(&plan);
    let ud = serde_json::to_string(
        &s.compute.template["Resources"]["LaunchTemplateTable1A"]["Properties"]
            ["LaunchTemplateData"]["UserData"],
    )
    .unwrap();
    assert!(ud.contains("INFRA_PHASE=it.s_v2"), "{ud}");
    assert!(
        s.compute
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-'),
        "{}",
        s.compute.name
    );
}

// ---------------------------------------------------------------- validators

fn diags(file: &str, text: &str) -> Vec<Diag> {
    let plan = parse(file, text);
    let mut d = Diags::default();
    stacks::validate(&plan, &Catalog::builtin(), &mut d);
    d.list
}

/// The one diagnostic at `path`; it must carry a hint.
fn one_at(list: &[Diag], path: &str) -> Diag {
    let found: Vec<&Diag> = list.iter().filter(|d| d.path == path).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one problem at {path}, got {list:#?}"
    );
    let d = found[0].clone();
    assert!(
        d.hint.as_deref().is_some_and(|h| !h.is_empty()),
        "no fix for {d:?}"
    );
    assert!(d.pos.line >= 1, "no position: {d:?}");
    d
}

#[test]
fn valid_plans_pass_the_validators() {
    assert!(diags("inference/plans/phase15.json", PHASE15).is_empty());
    assert!(diags("llm-train/plans/nccl.json", EFA).is_empty());
    assert!(diags("stats-paper/plans/tables.json", STATS).is_empty());
    for (name, plan) in example_plans() {
        let mut d = Diags::default();
        stacks::validate(&plan, &Catalog::builtin(), &mut d);
        assert!(d.list.is_empty(), "plans/{name}.json: {:#?}", d.list);
    }
}

#[test]
fn validator_efa_on_a_type_without_efa_names_types_with_it() {
    let text = STATS.replace(
        "\"gpus\": 1, \"slots\": 2",
        "\"gpus\": 1, \"slots\": 2, \"efa\": true",
    );
    let d = one_at(
        &diags("s/plans/t.json", &text),
        "node_groups.table2-gpu.efa",
    );
    assert!(d.message.contains("g5.xlarge has no EFA"), "{}", d.message);
    let hint = d.hint.unwrap();
    assert!(
        hint.contains("\"g5.8xlarge\"") && hint.contains("\"efa\": false"),
        "{hint}"
    );
    assert_eq!(d.pos.line, 12, "the group's line");
}

#[test]
fn validator_efa_group_outside_the_plans_zone() {
    let text = EFA.replace("\"efa\": true, \"gpus\": 8,\n              \"volume_gb\": 200", "\"efa\": true, \"gpus\": 8, \"availability_zone\": \"us-east-1c\",\n              \"volume_gb\": 200");
    let d = one_at(
        &diags("l/plans/n.json", &text),
        "node_groups.a100.availability_zone",
    );
    assert!(
        d.message.contains("us-east-1c") && d.message.contains("us-east-1b"),
        "{}",
        d.message
    );
    assert!(d.hint.unwrap().contains("one availability zone"));
}

#[test]
fn validator_efa_groups_in_different_zones() {
    let text = EFA
        .replace("\"availability_zone\": \"us-east-1b\",", "")
        .replace(
            "\"market\": \"spot\", \"efa\": true,",
            "\"market\": \"spot\", \"efa\": true, \"availability_zone\": \"us-east-1a\",",
        )
        .replace(
            "\"market\": \"on-demand\", \"efa\": true,",
            "\"market\": \"on-demand\", \"efa\": true, \"availability_zone\": \"us-east-1d\",",
        );
    let d = one_at(
        &diags("l/plans/n.json", &text),
        "node_groups.a100.availability_zone",
    );
    assert!(
        d.message.contains("different availability zones"),
        "{}",
        d.message
    );
    assert!(d
        .hint
        .unwrap()
        .contains("\"availability_zone\": \"us-east-1a\""));
}

#[test]
fn validator_zone_outside_the_region() {
    let text = EFA.replace(
        "\"availability_zone\": \"us-east-1b\"",
        "\"availability_zone\": \"us-west-2b\"",
    );
    let d = one_at(&diags("l/plans/n.json", &text), "availability_zone");
    assert!(
        d.message.contains("not in region \"us-east-1\""),
        "{}",
        d.message
    );
}

#[test]
fn validator_unknown_instance_type_suggests_close_names() {
    let text = PHASE15.replace("\"g5.12xlarge\"", "\"g5.12xlarg\"");
    let d = one_at(
        &diags("inference/plans/phase15.json", &text),
        "infrastructure.instance_type",
    );
    assert!(
        d.message.contains("unknown instance type \"g5.12xlarg\""),
        "{}",
        d.message
    );
    assert!(d.hint.unwrap().contains("did you mean \"g5.12xlarge\""));
}

#[test]
fn validator_local_instance_type_only_on_the_local_provider() {
    let local = STATS
        .replace("\"provider\": \"aws\"", "\"provider\": \"local\"")
        .replace("\"g5.xlarge\"", "\"local\"")
        .replace("\"gpus\": 1, ", "");
    assert!(
        diags("s/plans/t.json", &local).is_empty(),
        "{:#?}",
        diags("s/plans/t.json", &local)
    );
    let aws = local.replace("\"provider\": \"local\"", "\"provider\": \"aws\"");
    let d = one_at(
        &diags("s/plans/t.json", &aws),
        "node_groups.table2-gpu.instance_type",
    );
    assert!(
        d.message.contains("only on the local provider"),
        "{}",
        d.message
    );
    assert!(d.hint.unwrap().contains("--provider local"));
}

#[test]
fn validator_gpu_count_disagreeing_with_the_type() {
    let text = PHASE15.replace("\"gpu_count_per_node\": 4", "\"gpu_count_per_node\": 8");
    let d = one_at(
        &diags("inference/plans/phase15.json", &text),
        "infrastructure.gpu_count_per_node",
    );
    assert!(
        d.message
            .contains("g5.12xlarge has 4 GPUs, the plan says 8"),
        "{}",
        d.message
    );
    let hint = d.hint.unwrap();
    assert!(
        hint.contains("set \"gpu_count_per_node\" to 4") && hint.contains("\"g5.48xlarge\""),
        "{hint}"
    );
}

#[test]
fn validator_node_count_above_the_cap() {
    let text = STATS.replace("\"instance_type\": \"c6i.4xlarge\", \"count\": 1, \"market\": \"spot\", \"workers_per_slot\": 12, \"max_lifetime_hours\": 720 },\n    \"table3\"", "\"instance_type\": \"c6i.4xlarge\", \"count\": 1500, \"market\": \"spot\", \"workers_per_slot\": 12, \"max_lifetime_hours\": 720 },\n    \"table3\"");
    let d = one_at(
        &diags("s/plans/t.json", &text),
        "node_groups.table1-b.count",
    );
    assert!(d.message.contains("1500 nodes"), "{}", d.message);
    assert!(d.hint.unwrap().contains("split"));
}

#[test]
fn validator_too_many_resources_for_one_template() {
    let groups: Vec<String> = (0..170).map(|i| format!("\"g{i}\": {{\"instance_type\": \"c6i.xlarge\", \"count\": 1, \"placement\": \"spread\"}}")).collect();
    let text = format!(
        r#"{{"phase": "huge", "name": "huge", "project": "huge", "provider": "aws", "node_groups": {{ {} }},
            "layers": [{{"id": "L0", "node_group": "g0", "patterns": [{{"id": "huge-1", "backend": "b"}}]}}]}}"#,
        groups.join(", ")
    );
    let d = one_at(&diags("huge/plans/huge.json", &text), "node_groups");
    assert!(
        d.message
            .contains("more than CloudFormation's 500 per template"),
        "{}",
        d.message
    );
    assert!(d.hint.unwrap().contains("fewer node groups"));
}

#[test]
fn validator_hourly_cap_below_the_cheapest_node() {
    let text = STATS.replace(
        "\"usd\": 1000, \"hard_stop\": true",
        "\"usd\": 1000, \"max_hourly_usd\": 0.1, \"hard_stop\": true",
    );
    let d = one_at(&diags("s/plans/t.json", &text), "budget.max_hourly_usd");
    assert!(
        d.message.contains("cannot pay for one node")
            && d.message.contains("c6i.4xlarge")
            && d.message.contains("0.2242"),
        "{}",
        d.message
    );
    assert!(d.hint.unwrap().contains("at least 0.2242"));
}

#[test]
fn validator_market_without_prices() {
    let text = STATS
        .replace("\"g5.xlarge\"", "\"p5.4xlarge\"")
        .replace("\"region\": \"eu-north-1\"", "\"region\": \"us-east-1\"");
    let d = one_at(
        &diags("s/plans/t.json", &text),
        "node_groups.table2-gpu.market",
    );
    assert!(d.message.contains("no spot market"), "{}", d.message);
    assert!(d.hint.unwrap().contains("\"market\": \"on-demand\""));
}

#[test]
fn validator_small_root_volume_for_the_deep_learning_ami() {
    let text = STATS.replace(
        "\"gpus\": 1, \"slots\": 2",
        "\"gpus\": 1, \"slots\": 2, \"volume_gb\": 40",
    );
    let d = one_at(
        &diags("s/plans/t.json", &text),
        "node_groups.table2-gpu.volume_gb",
    );
    assert!(d.message.contains("40 GiB"), "{}", d.message);
}

#[test]
fn validator_efa_needs_cluster_placement() {
    let text = EFA.replace(
        "\"volume_gb\": 500",
        "\"volume_gb\": 500, \"placement\": \"spread\"",
    );
    let d = one_at(
        &diags("l/plans/n.json", &text),
        "node_groups.h100.placement",
    );
    assert!(d.message.contains("cluster placement"), "{}", d.message);
}

/// The fleets' expiry is sized from the budget that remains: a deployment
/// after money was spent gets a nearer deadline (it used to be sized from
/// the whole budget again), while the rendered stacks stay the same (a
/// template that changed with every dollar spent would replace the fleets
/// at each apply).
#[test]
fn the_deadline_of_a_deployment_is_sized_from_the_budget_that_remains() {
    let text = r#"{ "phase": "dl", "name": "deadline", "project": "dl", "provider": "aws", "region": "us-east-1",
  "budget": {"usd": 20},
  "node_groups": { "cpu": { "instance_type": "c6i.xlarge", "count": 2, "market": "spot" } },
  "layers": [ { "id": "L0", "patterns": [ { "id": "dl-a", "backend": "echo" } ] } ] }"#;
    let plan = parse("dl/plans/dl.json", text);
    let cat = Catalog::builtin();
    let now = chrono::Utc.with_ymd_and_hms(2026, 8, 1, 0, 0, 0).unwrap();
    let at = |spent: f64| {
        let p = stacks::compute_parameters(&plan, &cat, now, spent);
        assert_eq!(p[0].0, "ValidUntilCpu");
        chrono::DateTime::parse_from_rfc3339(&p[0].1).unwrap()
    };
    let full = (at(0.0) - now.fixed_offset()).num_seconds() as f64;
    let half = (at(10.0) - now.fixed_offset()).num_seconds() as f64;
    assert!(full > 3600.0, "{full}");
    assert!(
        (half - full / 2.0).abs() <= 1.0,
        "half the budget left: half the lifetime ({half} s of {full} s)"
    );
    // nothing left: the shortest deadline, a minute
    assert_eq!((at(25.0) - now.fixed_offset()).num_seconds(), 60);
    let whole = stacks::group_limits(&plan, &cat)[0].lifetime_hours;
    let left = stacks::group_limits_remaining(&plan, &cat, 10.0)[0].lifetime_hours;
    assert!((left - whole / 2.0).abs() < 1e-9, "{left} {whole}");
}
