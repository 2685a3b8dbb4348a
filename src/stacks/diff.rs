//! What `infra plan` shows against a deployed phase: the stacks' resources
//! added, changed in place, replaced and removed (Terraform's `+`, `~`,
//! `-/+`, `-`), from the templates `infra apply` deployed (`deployed.rs`)
//! and those the plan renders now.
//!
//! Whether a change replaces a resource follows the "Update requires" of
//! each property in CloudFormation's resource reference, for the resource
//! types infra's stacks use; `infra apply` still shows CloudFormation's own
//! change set before it changes a deployed stack.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Add,
    Change,
    Replace,
    Remove,
}

impl Action {
    /// Terraform's mark.
    pub fn mark(self) -> &'static str {
        match self {
            Action::Add => "+",
            Action::Change => "~",
            Action::Replace => "-/+",
            Action::Remove => "-",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResourceChange {
    /// The stack's name.
    pub stack: String,
    pub logical_id: String,
    #[serde(rename = "type")]
    pub resource_type: String,
    pub action: Action,
    /// The top-level properties that differ (a replacement: those that
    /// force it first).
    pub properties: Vec<String>,
}

/// The properties of `resource_type` whose change replaces the resource
/// (`*`: every property but those listed after it with a `!`).
fn replacing(resource_type: &str) -> &'static [&'static str] {
    match resource_type {
        "AWS::EC2::EC2Fleet" => &[
            "*",
            "!TargetCapacitySpecification",
            "!ExcessCapacityTerminationPolicy",
            "!Context",
        ],
        "AWS::EC2::SpotFleet" => &["*", "!SpotFleetRequestConfigData.TargetCapacity"],
        "AWS::EC2::LaunchTemplate" => &["LaunchTemplateName"],
        "AWS::EC2::PlacementGroup" => &["*"],
        "AWS::EC2::SecurityGroupEgress" | "AWS::EC2::SecurityGroupIngress" => {
            &["*", "!Description"]
        }
        "AWS::EC2::SecurityGroup" => &["GroupDescription", "GroupName", "VpcId"],
        "AWS::EC2::Subnet" => &[
            "AvailabilityZone",
            "AvailabilityZoneId",
            "CidrBlock",
            "VpcId",
            "Ipv4IpamPoolId",
            "Ipv4NetmaskLength",
        ],
        "AWS::EC2::VPC" => &["CidrBlock", "Ipv4IpamPoolId", "Ipv4NetmaskLength"],
        "AWS::EC2::VPCEndpoint" => &["ServiceName", "VpcId", "VpcEndpointType"],
        "AWS::EC2::Route" => &[
            "RouteTableId",
            "DestinationCidrBlock",
            "DestinationIpv6CidrBlock",
            "DestinationPrefixListId",
        ],
        "AWS::EC2::RouteTable" => &["VpcId"],
        "AWS::EC2::SubnetRouteTableAssociation" => &["RouteTableId", "SubnetId"],
        "AWS::EC2::NatGateway" => &[
            "AllocationId",
            "ConnectivityType",
            "PrivateIpAddress",
            "SubnetId",
        ],
        "AWS::EC2::EIP" => &["Domain", "NetworkBorderGroup", "TransferAddress"],
        "AWS::EC2::Instance" => &[
            "AvailabilityZone",
            "ImageId",
            "KeyName",
            "LaunchTemplate",
            "NetworkInterfaces",
            "PlacementGroupName",
            "PrivateIpAddress",
            "SubnetId",
            "Tenancy",
        ],
        "AWS::IAM::Role" => &["RoleName", "Path"],
        "AWS::IAM::InstanceProfile" => &["InstanceProfileName", "Path"],
        "AWS::S3::Bucket" => &["BucketName", "ObjectLockEnabled"],
        "AWS::S3::BucketPolicy" => &["Bucket"],
        _ => &[],
    }
}

/// Whether changing `prop` (a top-level property; `inner` the nested keys
/// that differ under it) replaces a resource of `resource_type`.
fn replaces(resource_type: &str, prop: &str, inner: &BTreeSet<String>) -> bool {
    let rules = replacing(resource_type);
    if rules.first() == Some(&"*") {
        let except: Vec<&str> = rules[1..]
            .iter()
            .map(|r| r.trim_start_matches('!'))
            .collect();
        if except.contains(&prop) {
            return false;
        }
        // `Prop.Inner` exceptions: only those inner keys changed
        let nested: Vec<&str> = except
            .iter()
            .filter_map(|e| e.strip_prefix(prop)?.strip_prefix('.'))
            .collect();
        return nested.is_empty() || !inner.iter().all(|k| nested.contains(&k.as_str()));
    }
    rules.contains(&prop)
}

fn resources(template: &Value) -> Map<String, Value> {
    template["Resources"]
        .as_object()
        .cloned()
        .unwrap_or_default()
}

/// The keys of two objects whose values differ.
fn differing(a: &Value, b: &Value) -> BTreeSet<String> {
    let empty = Map::new();
    let (a, b) = (
        a.as_object().unwrap_or(&empty),
        b.as_object().unwrap_or(&empty),
    );
    a.keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// The changes from `old` to `new` (templates of the stack `stack`), in
/// logical id order. `old` `None`: the stack is not deployed, everything is
/// added; `new` `None`: it goes.
pub fn diff(stack: &str, old: Option<&Value>, new: Option<&Value>) -> Vec<ResourceChange> {
    let old = old.map(resources).unwrap_or_default();
    let new = new.map(resources).unwrap_or_default();
    let ids: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let mut out = Vec::new();
    for id in ids {
        let change = |action, resource_type: &Value, properties| ResourceChange {
            stack: stack.to_string(),
            logical_id: id.clone(),
            resource_type: resource_type.as_str().unwrap_or("?").to_string(),
            action,
            properties,
        };
        match (old.get(id), new.get(id)) {
            (None, Some(n)) => out.push(change(Action::Add, &n["Type"], vec![])),
            (Some(o), None) => out.push(change(Action::Remove, &o["Type"], vec![])),
            (Some(o), Some(n)) if o == n => {}
            (Some(o), Some(n)) if o["Type"] != n["Type"] => {
                out.push(change(Action::Replace, &n["Type"], vec!["Type".into()]))
            }
            (Some(o), Some(n)) => {
                let rtype = n["Type"].as_str().unwrap_or("");
                let props = differing(&o["Properties"], &n["Properties"]);
                let forcing: Vec<String> = props
                    .iter()
                    .filter(|p| {
                        let inner =
                            differing(&o["Properties"][p.as_str()], &n["Properties"][p.as_str()]);
                        replaces(rtype, p, &inner)
                    })
                    .cloned()
                    .collect();
                // attributes beside Properties (DependsOn, DeletionPolicy...)
                let mut others: Vec<String> = differing(o, n)
                    .into_iter()
                    .filter(|k| k != "Properties")
                    .collect();
                if forcing.is_empty() {
                    let mut all: Vec<String> = props.into_iter().collect();
                    all.append(&mut others);
                    out.push(change(Action::Change, &n["Type"], all));
                } else {
                    let mut all = forcing.clone();
                    all.extend(props.into_iter().filter(|p| !forcing.contains(p)));
                    out.push(change(Action::Replace, &n["Type"], all));
                }
            }
            (None, None) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(resources: Value) -> Value {
        json!({"AWSTemplateFormatVersion": "2010-09-09", "Resources": resources})
    }

    #[test]
    fn added_changed_replaced_and_removed_resources() {
        let old = template(json!({
            "Lt": {"Type": "AWS::EC2::LaunchTemplate", "Properties": {"LaunchTemplateName": "a", "LaunchTemplateData": {"InstanceType": "c6i.xlarge"}}},
            "Fleet": {"Type": "AWS::EC2::EC2Fleet", "Properties": {"TargetCapacitySpecification": {"TotalTargetCapacity": 2}, "Type": "maintain"}},
            "Pg": {"Type": "AWS::EC2::PlacementGroup", "Properties": {"Strategy": "cluster"}},
            "Same": {"Type": "AWS::EC2::InternetGateway"}
        }));
        let new = template(json!({
            "Lt": {"Type": "AWS::EC2::LaunchTemplate", "Properties": {"LaunchTemplateName": "a", "LaunchTemplateData": {"InstanceType": "c6i.2xlarge"}}},
            "Fleet": {"Type": "AWS::EC2::EC2Fleet", "Properties": {"TargetCapacitySpecification": {"TotalTargetCapacity": 4}, "Type": "maintain"}},
            "Lt2": {"Type": "AWS::EC2::LaunchTemplate", "Properties": {"LaunchTemplateName": "b"}},
            "Same": {"Type": "AWS::EC2::InternetGateway"}
        }));
        let d = diff("p-x", Some(&old), Some(&new));
        let got: Vec<(&str, Action, Vec<String>)> = d
            .iter()
            .map(|c| (c.logical_id.as_str(), c.action, c.properties.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "Fleet",
                    Action::Change,
                    vec!["TargetCapacitySpecification".to_string()]
                ),
                ("Lt", Action::Change, vec!["LaunchTemplateData".to_string()]),
                ("Lt2", Action::Add, vec![]),
                ("Pg", Action::Remove, vec![]),
            ]
        );
    }

    #[test]
    fn a_fleet_whose_template_or_market_changes_is_replaced() {
        let fleet = |cap: u32, kind: &str| {
            template(json!({"F": {"Type": "AWS::EC2::EC2Fleet", "Properties": {
                "TargetCapacitySpecification": {"TotalTargetCapacity": cap, "DefaultTargetCapacityType": kind}}}}))
        };
        let d = diff("s", Some(&fleet(2, "spot")), Some(&fleet(2, "on-demand")));
        assert_eq!(
            d[0].action,
            Action::Change,
            "capacity spec updates in place"
        );
        let mut other = fleet(2, "spot");
        other["Resources"]["F"]["Properties"]["LaunchTemplateConfigs"] = json!([{"x": 1}]);
        let d = diff("s", Some(&fleet(2, "spot")), Some(&other));
        assert_eq!(d[0].action, Action::Replace);
        assert_eq!(d[0].properties, ["LaunchTemplateConfigs"]);
        // a spot fleet: only its target capacity changes in place
        let sf = |cap: u32, price: &str| {
            template(json!({"F": {"Type": "AWS::EC2::SpotFleet", "Properties": {
                "SpotFleetRequestConfigData": {"TargetCapacity": cap, "SpotPrice": price}}}}))
        };
        assert_eq!(
            diff("s", Some(&sf(2, "1")), Some(&sf(3, "1")))[0].action,
            Action::Change
        );
        assert_eq!(
            diff("s", Some(&sf(2, "1")), Some(&sf(3, "2")))[0].action,
            Action::Replace
        );
    }

    #[test]
    fn a_stack_not_deployed_is_all_added_and_one_that_goes_all_removed() {
        let t =
            template(json!({"A": {"Type": "AWS::S3::Bucket"}, "B": {"Type": "AWS::IAM::Role"}}));
        assert!(diff("s", None, Some(&t))
            .iter()
            .all(|c| c.action == Action::Add));
        assert!(diff("s", Some(&t), None)
            .iter()
            .all(|c| c.action == Action::Remove));
        assert!(diff("s", Some(&t), Some(&t)).is_empty());
    }
}
