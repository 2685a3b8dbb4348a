//! One line per resource for the resource table of `infra plan`, read back
//! from the rendered template (so it shows what will be deployed).

use serde_json::Value;

use super::model::{RenderedStack, ResourceSummary};

/// A property as short text; intrinsic functions show as what they refer to.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Object(m) => match m.iter().next() {
            Some((k, a)) if k == "Ref" => format!("ref {}", text(a)),
            Some((k, a)) if k == "Fn::ImportValue" => format!("import {}", text(a)),
            Some((k, Value::Array(a))) if k == "Fn::GetAtt" => {
                a.iter().map(text).collect::<Vec<_>>().join(".")
            }
            Some((k, Value::Array(a))) if k == "Fn::Select" && a.len() == 2 => {
                format!("zone {}", a[0].as_u64().map_or(0, |i| i + 1))
            }
            Some((k, a)) if k == "Fn::Sub" => match a {
                Value::Array(parts) => parts.first().map(text).unwrap_or_default(),
                _ => text(a),
            },
            _ => "(computed)".into(),
        },
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(", "),
        Value::Null => String::new(),
    }
}

fn launch_template(p: &Value) -> String {
    let d = &p["LaunchTemplateData"];
    let mut parts = vec![text(&d["InstanceType"])];
    if let Some(ebs) = d["BlockDeviceMappings"].get(0).map(|b| &b["Ebs"]) {
        let enc = if ebs["Encrypted"] == Value::Bool(true) {
            "encrypted"
        } else {
            "UNENCRYPTED"
        };
        parts.push(format!(
            "{} GiB {} {enc}",
            text(&ebs["VolumeSize"]),
            text(&ebs["VolumeType"])
        ));
    }
    let imds = if d["MetadataOptions"]["HttpTokens"] == "required" {
        "IMDSv2"
    } else {
        "IMDSv1 allowed"
    };
    parts.push(format!(
        "{imds} hop limit {}",
        text(&d["MetadataOptions"]["HttpPutResponseHopLimit"])
    ));
    let efa = d["NetworkInterfaces"].as_array().map_or(0, |a| {
        a.iter().filter(|i| i["InterfaceType"] == "efa").count()
    });
    if efa > 0 {
        parts.push(format!(
            "{efa} EFA interface{}",
            if efa == 1 { "" } else { "s" }
        ));
    }
    parts.push(
        text(&d["ImageId"])
            .trim_start_matches("resolve:ssm:")
            .to_string(),
    );
    parts.join(", ")
}

fn fleet(p: &Value) -> String {
    let t = &p["TargetCapacitySpecification"];
    let (market, opts) = if t["DefaultTargetCapacityType"] == "spot" {
        ("spot", &p["SpotOptions"])
    } else {
        ("on-demand", &p["OnDemandOptions"])
    };
    let mut s = format!("{} × {market}", text(&t["TotalTargetCapacity"]));
    if let Some(it) = p["LaunchTemplateConfigs"]
        .get(0)
        .and_then(|c| c["Overrides"].get(0))
        .map(|o| text(&o["InstanceType"]))
    {
        s = format!("{} × {it} {market}", text(&t["TotalTargetCapacity"]));
    }
    match opts.get("MaxTotalPrice") {
        Some(cap) => s.push_str(&format!(", at most ${}/h", text(cap))),
        None => s.push_str(", no price cap"),
    }
    s.push_str(&format!(
        ", {}, {}, expires at {}",
        text(&opts["AllocationStrategy"]),
        text(&p["Type"]),
        text(&p["ValidUntil"])
    ));
    s
}

fn key_properties(kind: &str, p: &Value) -> String {
    match kind {
        "AWS::EC2::VPC" => text(&p["CidrBlock"]),
        "AWS::EC2::Subnet" => format!(
            "{} in {}",
            text(&p["CidrBlock"]),
            text(&p["AvailabilityZone"])
        ),
        "AWS::EC2::Route" => {
            let via = ["GatewayId", "NatGatewayId"]
                .iter()
                .find_map(|k| p.get(*k))
                .map(text)
                .unwrap_or_default();
            format!("{} via {via}", text(&p["DestinationCidrBlock"]))
        }
        "AWS::EC2::SecurityGroup" => {
            let ingress = p["SecurityGroupIngress"].as_array().map_or(0, Vec::len);
            format!(
                "{ingress} inbound rules from outside; outbound {}",
                text(
                    &p["SecurityGroupEgress"]
                        .get(0)
                        .map(|r| r["CidrIp"].clone())
                        .unwrap_or_default()
                )
            )
        }
        "AWS::EC2::SecurityGroupIngress" => {
            format!("all traffic from {}", text(&p["SourceSecurityGroupId"]))
        }
        "AWS::EC2::SecurityGroupEgress" => {
            format!("all traffic to {}", text(&p["DestinationSecurityGroupId"]))
        }
        "AWS::EC2::VPCEndpoint" => format!(
            "{} ({})",
            text(&p["ServiceName"]),
            text(&p["VpcEndpointType"])
        ),
        "AWS::IAM::Role" => {
            let managed: Vec<String> = p["ManagedPolicyArns"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|v| text(v).rsplit('/').next().unwrap_or_default().to_string())
                        .collect()
                })
                .unwrap_or_default();
            format!("{}; bucket: writes {}", managed.join(", "), role_writes(p))
        }
        "AWS::S3::Bucket" => {
            let enc = text(
                &p["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
                    ["ServerSideEncryptionByDefault"]["SSEAlgorithm"],
            );
            let versions = match (
                text(&p["VersioningConfiguration"]["Status"]).as_str(),
                p["LifecycleConfiguration"]["Rules"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find_map(|r| r["NoncurrentVersionExpiration"]["NoncurrentDays"].as_u64()),
            ) {
                ("Enabled", Some(d)) => format!(", versioned (old versions kept {d} days)"),
                ("Enabled", None) => ", versioned".to_string(),
                _ => String::new(),
            };
            format!(
                "{}, {enc}, public access blocked{versions}",
                text(&p["BucketName"])
            )
        }
        "AWS::S3::BucketPolicy" => "deny requests without TLS".into(),
        "AWS::EC2::LaunchTemplate" => launch_template(p),
        "AWS::EC2::EC2Fleet" => fleet(p),
        "AWS::EC2::PlacementGroup" => format!("{} placement", text(&p["Strategy"])),
        _ => String::new(),
    }
}

/// The keys a role's inline policies allow it to put, relative to the
/// bucket (`<phase>/results/*, ...`).
fn role_writes(p: &Value) -> String {
    let mut keys = Vec::new();
    for pol in p["Policies"].as_array().into_iter().flatten() {
        for st in pol["PolicyDocument"]["Statement"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let puts = st["Action"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == "s3:PutObject"));
            if st["Effect"] != "Allow" || !puts {
                continue;
            }
            let rs: Vec<Value> = match &st["Resource"] {
                Value::Array(a) => a.clone(),
                r => vec![r.clone()],
            };
            for r in rs {
                let t = text(&r);
                keys.push(
                    t.split_once("${AWS::Region}/")
                        .map_or(t.clone(), |(_, k)| k.to_string()),
                );
            }
        }
    }
    if keys.is_empty() {
        "nothing".into()
    } else {
        keys.join(", ")
    }
}

impl RenderedStack {
    /// Every resource with its type and its most telling properties.
    pub fn summary(&self) -> Vec<ResourceSummary> {
        summarize(&self.template)
    }
}

fn summarize(template: &Value) -> Vec<ResourceSummary> {
    let Some(resources) = template["Resources"].as_object() else {
        return Vec::new();
    };
    resources
        .iter()
        .map(|(id, r)| {
            let kind = r["Type"].as_str().unwrap_or_default();
            let mut key = key_properties(kind, &r["Properties"]);
            if r["DeletionPolicy"] == "Retain" {
                key = if key.is_empty() {
                    "retained on delete".into()
                } else {
                    format!("{key}, retained on delete")
                };
            }
            ResourceSummary {
                logical_id: id.clone(),
                resource_type: kind.to_string(),
                key_properties: key,
            }
        })
        .collect()
}
