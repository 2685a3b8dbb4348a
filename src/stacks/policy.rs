//! The IAM policies of the nodes, from the bucket layout
//! (`provider::aws::layout`): what a phase's nodes may read and write in the
//! project's bucket.
//!
//! Each phase's nodes get a role of their own in the phase's compute stack
//! ([`node_statements`]): put only under `<phase>/results/`,
//! `<phase>/checkpoints/`, `<phase>/logs/`; get the agent binaries, the
//! phase's bundle and manifest and its checkpoints; list only the
//! checkpoints (and the bundle); never delete; an explicit deny on every
//! controller-only prefix. The base stack keeps the role every phase used
//! before ([`legacy_statements`]), narrowed the same way for any phase, so
//! the compute stacks deployed by an earlier version (which import its
//! instance profile) go on working until they are applied again.
//!
//! The statements are plain IAM JSON (Resource ARNs with `*`, `StringLike`
//! on `s3:prefix`) whose only intrinsic is `Fn::Sub` of the bucket's ARN.

use serde_json::{json, Value};

use crate::provider::aws::layout;
use crate::stacks::names::{TAG_PHASE, TAG_PROJECT};

/// Days a noncurrent version of an object stays in the versioned bucket
/// (an overwritten or deleted result can be restored that long; storage
/// beyond the current objects stays bounded by that many days of changes).
pub const NONCURRENT_VERSION_DAYS: u32 = 7;
/// Days after which an incomplete multipart upload is aborted.
pub const ABORT_UPLOAD_DAYS: u32 = 7;

/// The managed policy nodes need for SSM Run Command.
pub const SSM_MANAGED_POLICY: &str = "AmazonSSMManagedInstanceCore";

/// Actions of an object upload (multipart included: PutObject covers
/// create, upload part and complete).
const WRITE: [&str; 3] = [
    "s3:PutObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
];

/// What the explicit deny covers on controller-only keys.
const DENIED_WRITES: [&str; 6] = [
    "s3:PutObject",
    "s3:PutObjectAcl",
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
    "s3:AbortMultipartUpload",
    "s3:RestoreObject",
];

/// `arn:${AWS::Partition}:s3:::<bucket>` (with `/<key>` when given), as
/// `Fn::Sub`: the bucket is named `<bucket_prefix>-<account>-<region>`.
fn arn(bucket_prefix: &str, key: Option<&str>) -> Value {
    let tail = key.map(|k| format!("/{k}")).unwrap_or_default();
    json!({"Fn::Sub": format!("arn:${{AWS::Partition}}:s3:::{bucket_prefix}-${{AWS::AccountId}}-${{AWS::Region}}{tail}")})
}

fn arns(bucket_prefix: &str, keys: &[String]) -> Value {
    Value::Array(keys.iter().map(|k| arn(bucket_prefix, Some(k))).collect())
}

/// The statements for the nodes of `phase` (`*` for any phase).
fn statements(bucket_prefix: &str, phase: &str) -> Value {
    let writable = vec![
        format!("{}/*", layout::results_prefix(phase)),
        format!("{}/*", layout::checkpoints_prefix(phase)),
        format!("{}/*", layout::logs_prefix(phase)),
    ];
    let readable = vec![
        format!("{}/*", layout::BIN_PREFIX),
        format!("{}/*", layout::bundle_prefix(phase)),
        layout::manifest_key(phase),
        format!("{}/*", layout::checkpoints_prefix(phase)),
    ];
    let controller_only = vec![
        format!("{}/*", layout::INFRA_PREFIX),
        format!("{}/*", layout::LEDGER_PREFIX),
        format!("{}/*", layout::TEMPLATES_PREFIX),
        format!("{}/*", layout::bundle_prefix(phase)),
        layout::manifest_key(phase),
        format!("{}/*", layout::state_prefix(phase)),
    ];
    json!([
        {
            "Sid": "WriteResultsCheckpointsLogs",
            "Effect": "Allow",
            "Action": WRITE,
            "Resource": arns(bucket_prefix, &writable)
        },
        {
            "Sid": "ReadBinariesBundleCheckpoints",
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": arns(bucket_prefix, &readable)
        },
        {
            // a checkpoint is a mirror of the task's folder: what the task
            // deleted goes (results and logs are never deleted by a node)
            "Sid": "DeleteCheckpoints",
            "Effect": "Allow",
            "Action": ["s3:DeleteObject"],
            "Resource": arn(bucket_prefix, Some(&format!("{}/*", layout::checkpoints_prefix(phase))))
        },
        {
            "Sid": "ListCheckpoints",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": arn(bucket_prefix, None),
            "Condition": {"StringLike": {"s3:prefix": [format!("{}/*", layout::checkpoints_prefix(phase))]}}
        },
        {
            // SSM Run Command asks where the bucket is before it uploads a
            // command's output
            "Sid": "BucketLocation",
            "Effect": "Allow",
            "Action": ["s3:GetBucketLocation", "s3:GetEncryptionConfiguration"],
            "Resource": arn(bucket_prefix, None)
        },
        {
            "Sid": "DenyControllerOnly",
            "Effect": "Deny",
            "Action": DENIED_WRITES,
            "Resource": arns(bucket_prefix, &controller_only)
        }
    ])
}

/// The policy statements of the node role of `phase` (its `name_key`) of
/// `project`: the bucket's, plus what the idle watcher needs (src/node/
/// watch.rs, docs/CAMPAIGN.md "No controller, no spend"): read the
/// controller's lease (never write it: `_state/` is denied above), read
/// its own instance's tags, and delete a fleet of its own phase (the
/// watcher asks to keep the instances; a node cannot start, resize or
/// modify anything).
pub fn node_statements(bucket_prefix: &str, project: &str, phase: &str) -> Value {
    let mut st = statements(bucket_prefix, phase);
    let list = st.as_array_mut().expect("statements are an array");
    list.extend([
        json!({
            "Sid": "ReadControllerLease",
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": arn(bucket_prefix, Some(&layout::lease_key(phase)))
        }),
        json!({
            // DescribeInstances has no resource-level permissions
            "Sid": "DescribeOwnInstance",
            "Effect": "Allow",
            "Action": ["ec2:DescribeInstances"],
            "Resource": "*"
        }),
        json!({
            "Sid": "StopOwnPhaseFleets",
            "Effect": "Allow",
            "Action": ["ec2:DeleteFleets"],
            "Resource": {"Fn::Sub": "arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:fleet/*"},
            "Condition": {"StringEquals": {
                format!("aws:ResourceTag/{TAG_PROJECT}"): project,
                format!("aws:ResourceTag/{TAG_PHASE}"): phase
            }}
        }),
    ]);
    st
}

/// The statements of the base stack's role of earlier versions: the same
/// rules for any phase.
pub fn legacy_statements(bucket_prefix: &str) -> Value {
    statements(bucket_prefix, "*")
}

#[cfg(test)]
pub(crate) mod eval;

#[cfg(test)]
mod tests;
