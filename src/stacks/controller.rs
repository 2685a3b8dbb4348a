//! The detached campaign's controller (`infra up|run --detach` on AWS): its
//! own stack `<compute stack>-controller` with one small on-demand
//! instance, a role of its own, and the user data that starts `infra
//! controller` under systemd. Rendered from `stacks/controller.json.hbs`
//! and `stacks/controller-userdata.sh.hbs`, deterministically from the plan
//! and the catalog (the build of infra comes as parameters).
//!
//! The controller's instance carries `infra:project`, `infra:role` =
//! `controller` and `infra:controller-of` = the phase, never `infra:phase`:
//! it is no node of the phase (the run would take it for one).

use handlebars::Handlebars;
use serde::Serialize;
use serde_json::{json, Value};

use super::model::{RenderedStack, StackError};
use super::names::{bucket_prefix, compute_stack_name, export_name, TAG_PHASE, TAG_PROJECT};
use super::render::{json_registry, render_json, render_text, tag};
use super::DEFAULT_AMI_CPU;
use crate::catalog::Catalog;
use crate::plan::{Market, Plan};
use crate::provider::aws::agent::Arch;
use crate::provider::aws::layout;

const TEMPLATE: &str = include_str!("../../stacks/controller.json.hbs");
const USERDATA: &str = include_str!("../../stacks/controller-userdata.sh.hbs");

/// `infra:role` = `controller` marks the controller's instance.
pub const TAG_ROLE: &str = "infra:role";
pub const ROLE_CONTROLLER: &str = "controller";
/// The phase a controller runs.
pub const TAG_CONTROLLER_OF: &str = "infra:controller-of";

/// Memory the controller's type needs at least: Amazon Linux with the SSM
/// agent takes about 0.5 GiB, and `infra` holds the campaign's journal and
/// task definitions and the SDK clients (hundreds of MB for thousands of
/// tasks); 1 GiB types leave too little.
pub const MIN_MEMORY_GIB: f64 = 2.0;
/// Its root volume: the image, the binary, the logs.
const VOLUME_GB: u32 = 8;

/// `<compute stack name>-controller`.
pub fn stack_name(plan: &Plan) -> String {
    let mut n = compute_stack_name(&plan.project, &plan.name_key);
    n.truncate(128 - "-controller".len());
    format!("{}-controller", n.trim_end_matches('-'))
}

/// The controller's instance type and its on-demand price in the plan's
/// region: the cheapest x86_64 type (the same Linux build of infra as the
/// x86_64 nodes) without accelerators and with at least
/// [`MIN_MEMORY_GIB`]; ties by name.
pub fn instance_type(plan: &Plan, catalog: &Catalog) -> Option<(String, f64)> {
    let mut best: Option<(String, f64)> = None;
    for name in catalog.names() {
        let Some(t) = catalog.get(name) else { continue };
        if t.gpus > 0
            || t.memory_gib < MIN_MEMORY_GIB
            || Arch::of_instance_type(name) != Arch::X86_64
        {
            continue;
        }
        let Some(p) = catalog.price(name, &plan.region, Market::OnDemand) else {
            continue;
        };
        let better = match &best {
            None => true,
            Some((n, usd)) => {
                p.usd_per_hour < *usd || (p.usd_per_hour == *usd && name < n.as_str())
            }
        };
        if better {
            best = Some((name.to_string(), p.usd_per_hour));
        }
    }
    best
}

/// Why that type, for the estimate's line.
pub fn why() -> String {
    format!("the cheapest x86_64 type with {MIN_MEMORY_GIB} GiB or more in the catalog")
}

#[derive(Serialize)]
struct View {
    project: String,
    phase: String,
    instance_type: String,
    ami: String,
    volume_gb: u32,
    policy: Value,
    tags: Value,
    imports: Imports,
    userdata: String,
}

#[derive(Serialize)]
struct Imports {
    vpc: String,
    subnet: String,
    bucket: String,
}

#[derive(Serialize)]
struct UserDataView<'a> {
    project: &'a str,
    phase: &'a str,
    stack: &'a str,
}

/// The tags of the controller's resources (and its stack).
pub fn tags(plan: &Plan) -> Vec<(String, String)> {
    vec![
        (TAG_PROJECT.to_string(), plan.project.clone()),
        (TAG_ROLE.to_string(), ROLE_CONTROLLER.to_string()),
        (TAG_CONTROLLER_OF.to_string(), plan.name_key.clone()),
    ]
}

/// Render the controller's stack.
pub fn render(plan: &Plan, catalog: &Catalog) -> Result<RenderedStack, StackError> {
    let (instance_type, _) = instance_type(plan, catalog).ok_or_else(|| StackError::Template {
        template: "controller.json.hbs",
        message: format!(
            "the catalog has no x86_64 type with {MIN_MEMORY_GIB} GiB priced in {}",
            plan.region
        ),
    })?;
    let name = stack_name(plan);
    let mut shell = Handlebars::new();
    shell.set_strict_mode(true);
    shell.register_escape_fn(super::comment::user_data_escape);
    shell.register_helper("comment", Box::new(super::comment::comment_helper));
    shell
        .register_template_string("controller-userdata.sh.hbs", USERDATA)
        .map_err(|e| StackError::Template {
            template: "controller-userdata.sh.hbs",
            message: e.to_string(),
        })?;
    let userdata = render_text(
        &shell,
        "controller-userdata.sh.hbs",
        &UserDataView {
            project: &plan.project,
            phase: &plan.name_key,
            stack: &name,
        },
    )?;
    let tag_values: Vec<Value> = std::iter::once(tag("Name", &name))
        .chain(tags(plan).iter().map(|(k, v)| tag(k, v)))
        .collect();
    let view = View {
        project: plan.project.clone(),
        phase: plan.name_key.clone(),
        instance_type,
        ami: format!("resolve:ssm:{DEFAULT_AMI_CPU}"),
        volume_gb: VOLUME_GB,
        policy: statements(plan),
        tags: Value::Array(tag_values),
        imports: Imports {
            vpc: export_name(&plan.project, "VpcId"),
            subnet: export_name(&plan.project, "Subnet1Id"),
            bucket: export_name(&plan.project, "BucketName"),
        },
        userdata,
    };
    let mut hb = json_registry();
    let template = render_json(&mut hb, "controller.json.hbs", TEMPLATE, &view)?;
    Ok(RenderedStack::new(name, template))
}

/// `arn:${AWS::Partition}:<service>:${AWS::Region}:${AWS::AccountId}:<rest>` as `Fn::Sub`.
fn sub(service: &str, rest: &str) -> Value {
    json!({"Fn::Sub": format!("arn:${{AWS::Partition}}:{service}:${{AWS::Region}}:${{AWS::AccountId}}:{rest}")})
}

fn s3_arn(bucket: &str, key: Option<&str>) -> Value {
    let tail = key.map(|k| format!("/{k}")).unwrap_or_default();
    json!({"Fn::Sub": format!("arn:${{AWS::Partition}}:s3:::{bucket}-${{AWS::AccountId}}-${{AWS::Region}}{tail}")})
}

/// The controller role's statements: what `infra up` of this phase does,
/// and no more.
///
/// - S3: everything under the phase's prefix (results, bundle, state, the
///   package it runs from), the ledger, the builds of infra (read; the
///   nodes' agent is uploaded by whoever detached), the stack templates
///   over the inline limit; listing the bucket and finding it.
/// - SSM: Run Command with the two documents infra uses, on the instances
///   tagged with the phase only; reading and cancelling its commands.
/// - EC2: describe anything (read only); create and delete what the
///   phase's compute stack holds (launch templates, fleets, instances,
///   placement groups), the instances and fleets only when tagged with
///   the project.
/// - CloudFormation: the phase's compute stack and this stack (create,
///   update, describe, delete); describe the base stack.
/// - IAM: the compute stack's node role and instance profile (named after
///   the stack by CloudFormation), and passing it to EC2.
pub fn statements(plan: &Plan) -> Value {
    let bucket = bucket_prefix(&plan.project);
    let phase = &plan.name_key;
    let compute = compute_stack_name(&plan.project, phase);
    let own = stack_name(plan);
    let base = super::names::base_stack_name(&plan.project);
    let rw: Vec<Value> = [
        format!("{}*", layout::phase_prefix(phase)),
        format!("{}*", layout::ledger_prefix()),
        format!("{}/*", layout::TEMPLATES_PREFIX),
    ]
    .iter()
    .map(|k| s3_arn(&bucket, Some(k)))
    .collect();
    json!([
        {
            "Sid": "PhaseLedgerTemplates",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
            "Resource": rw
        },
        {
            "Sid": "ReadInfraBuilds",
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": [s3_arn(&bucket, Some(&format!("{}/*", layout::BIN_PREFIX)))]
        },
        {
            "Sid": "TheBucket",
            "Effect": "Allow",
            "Action": ["s3:ListBucket", "s3:GetBucketLocation", "s3:GetBucketVersioning"],
            "Resource": [s3_arn(&bucket, None)]
        },
        {
            "Sid": "FindTheBucket",
            "Effect": "Allow",
            "Action": ["s3:ListAllMyBuckets"],
            "Resource": "*"
        },
        {
            "Sid": "RunCommandOnThePhasesNodes",
            "Effect": "Allow",
            "Action": ["ssm:SendCommand"],
            "Resource": [sub("ec2", "instance/*")],
            "Condition": {"StringEquals": {format!("ssm:resourceTag/{TAG_PHASE}"): phase}}
        },
        {
            "Sid": "RunCommandDocuments",
            "Effect": "Allow",
            "Action": ["ssm:SendCommand"],
            "Resource": [
                {"Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}::document/AWS-RunShellScript"},
                {"Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}::document/AWS-RunRemoteScript"}
            ]
        },
        {
            "Sid": "FollowCommands",
            "Effect": "Allow",
            "Action": ["ssm:GetCommandInvocation", "ssm:ListCommandInvocations", "ssm:ListCommands", "ssm:CancelCommand", "ssm:DescribeInstanceInformation"],
            "Resource": "*"
        },
        {
            "Sid": "Describe",
            "Effect": "Allow",
            "Action": ["ec2:Describe*"],
            "Resource": "*"
        },
        {
            "Sid": "ComputeStackResources",
            "Effect": "Allow",
            "Action": ["ec2:CreateLaunchTemplate", "ec2:CreateLaunchTemplateVersion", "ec2:DeleteLaunchTemplate", "ec2:CreatePlacementGroup", "ec2:DeletePlacementGroup", "ec2:CreateTags", "ec2:RunInstances", "ec2:CreateFleet"],
            "Resource": "*",
            "Condition": {"StringEquals": {format!("aws:RequestTag/{TAG_PROJECT}"): plan.project.clone()}}
        },
        {
            "Sid": "ComputeStackInstancesAndFleets",
            "Effect": "Allow",
            "Action": ["ec2:RunInstances", "ec2:CreateTags", "ec2:TerminateInstances", "ec2:DeleteFleets", "ec2:ModifyFleet", "ec2:DeleteLaunchTemplate", "ec2:DeletePlacementGroup"],
            "Resource": "*",
            "Condition": {"StringEquals": {format!("ec2:ResourceTag/{TAG_PROJECT}"): plan.project.clone()}}
        },
        {
            "Sid": "Stacks",
            "Effect": "Allow",
            "Action": ["cloudformation:CreateStack", "cloudformation:UpdateStack", "cloudformation:DeleteStack", "cloudformation:DescribeStacks", "cloudformation:DescribeStackEvents", "cloudformation:ListStackResources", "cloudformation:CreateChangeSet", "cloudformation:DescribeChangeSet", "cloudformation:ExecuteChangeSet", "cloudformation:DeleteChangeSet", "cloudformation:GetTemplate"],
            "Resource": [
                sub("cloudformation", &format!("stack/{compute}/*")),
                sub("cloudformation", &format!("stack/{own}/*"))
            ]
        },
        {
            "Sid": "BaseStackReadOnly",
            "Effect": "Allow",
            "Action": ["cloudformation:DescribeStacks", "cloudformation:DescribeStackEvents", "cloudformation:ListStackResources"],
            "Resource": [sub("cloudformation", &format!("stack/{base}/*"))]
        },
        {
            "Sid": "NodeRoleOfTheComputeStackAndThisStacksRole",
            "Effect": "Allow",
            "Action": ["iam:CreateRole", "iam:DeleteRole", "iam:GetRole", "iam:PutRolePolicy", "iam:DeleteRolePolicy", "iam:GetRolePolicy", "iam:AttachRolePolicy", "iam:DetachRolePolicy", "iam:TagRole", "iam:UntagRole", "iam:CreateInstanceProfile", "iam:DeleteInstanceProfile", "iam:GetInstanceProfile", "iam:AddRoleToInstanceProfile", "iam:RemoveRoleFromInstanceProfile", "iam:PassRole"],
            "Resource": [
                {"Fn::Sub": format!("arn:${{AWS::Partition}}:iam::${{AWS::AccountId}}:role/{compute}-*")},
                {"Fn::Sub": format!("arn:${{AWS::Partition}}:iam::${{AWS::AccountId}}:instance-profile/{compute}-*")}
            ]
        }
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("plans")).unwrap();
        std::fs::write(
            d.path().join("plans/p.json"),
            r#"{ "phase": "p", "name": "n", "project": "proj", "provider": "aws", "region": "us-east-1",
  "node_groups": { "cpu": { "instance_type": "c6i.xlarge", "count": 1 } },
  "layers": [ { "id": "L0", "patterns": [ { "id": "p-a", "backend": "x" } ] } ] }"#,
        )
        .unwrap();
        std::fs::create_dir_all(d.path().join("plans/templates")).unwrap();
        std::fs::write(
            d.path().join("plans/templates/x.json.hbs"),
            r#"{ "steps": [ {"name": "main", "command": "true"} ] }"#,
        )
        .unwrap();
        let p = crate::plan::load("p", d.path()).unwrap();
        std::mem::forget(d);
        p
    }

    #[test]
    fn the_controller_is_the_cheapest_x86_64_type_with_2_gib_and_its_stack_is_deterministic() {
        let plan = plan();
        let cat = Catalog::builtin();
        let (t, usd) = instance_type(&plan, &cat).unwrap();
        let info = cat.get(&t).unwrap();
        assert!(info.memory_gib >= MIN_MEMORY_GIB && info.gpus == 0, "{t}");
        assert_eq!(Arch::of_instance_type(&t), Arch::X86_64);
        for name in cat.names() {
            let i = cat.get(name).unwrap();
            if i.gpus == 0
                && i.memory_gib >= MIN_MEMORY_GIB
                && Arch::of_instance_type(name) == Arch::X86_64
            {
                if let Some(p) = cat.price(name, "us-east-1", Market::OnDemand) {
                    assert!(p.usd_per_hour >= usd, "{name} is cheaper than {t}");
                }
            }
        }
        let a = render(&plan, &cat).unwrap();
        let b = render(&plan, &cat).unwrap();
        assert_eq!(a.body, b.body);
        assert_eq!(a.name, "proj-p-controller");
        let lt = &a.template["Resources"]["ControllerLaunchTemplate"]["Properties"]
            ["LaunchTemplateData"];
        assert_eq!(lt["MetadataOptions"]["HttpTokens"], "required");
        assert_eq!(lt["BlockDeviceMappings"][0]["Ebs"]["Encrypted"], true);
        assert_eq!(lt["InstanceType"], t.as_str());
        assert!(lt["ImageId"].as_str().unwrap().contains("al2023"));
        let sg = &a.template["Resources"]["ControllerSecurityGroup"]["Properties"];
        assert!(sg.get("SecurityGroupIngress").is_none(), "no inbound rule");
        let tags = a.template["Resources"]["ControllerInstance"]["Properties"]["Tags"].to_string();
        assert!(
            tags.contains("\"infra:role\"") && tags.contains("\"controller\""),
            "{tags}"
        );
        assert!(!tags.contains(TAG_PHASE), "no node of the phase: {tags}");
        let ud = lt["UserData"]["Fn::Base64"]["Fn::Sub"][0].as_str().unwrap();
        assert!(
            ud.contains("sha256sum -c") && ud.contains("Restart=on-failure"),
            "{ud}"
        );
        assert!(ud.contains("INFRA_CONTROLLER_WHERE=aws:$iid"), "{ud}");
    }
}
