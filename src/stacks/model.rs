//! What rendering produces: two stacks, their exact bytes, and a summary of
//! their resources for `infra plan`.

use std::path::PathBuf;

use serde_json::Value;
use thiserror::Error;

/// CloudFormation's limit for an inline `TemplateBody`; larger bodies go
/// through the bucket (`TemplateURL`).
pub const MAX_INLINE_BODY: usize = 51_200;
/// CloudFormation's limit for a template read from S3.
pub const MAX_BODY: usize = 1_000_000;

#[derive(Debug, Error)]
pub enum StackError {
    #[error("cannot render stack template {template}: {message}\n  (hint: this is a defect in stacks/{template}, not in the plan; please report it)")]
    Template {
        template: &'static str,
        message: String,
    },
    #[error("stack template {template} rendered invalid JSON at {line}:{column}: {message}\n  (hint: this is a defect in stacks/{template}, not in the plan; please report it)")]
    Json {
        template: &'static str,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("the plan has no machines to deploy\n  (hint: add \"infrastructure\" or \"node_groups\" to the plan)")]
    NoMachines,
    #[error("node group \"{group}\" has instance type \"{instance_type}\", which is not in the catalog\n  (hint: run `infra plan` to see every problem with a fix, or `infra catalog refresh` if the type is new)")]
    UnknownInstanceType {
        group: String,
        instance_type: String,
    },
    #[error("the node groups use {count} availability zones, more than the {max} the base stack lays out\n  (hint: use fewer distinct \"availability_zone\" values)")]
    TooManyZones { count: usize, max: usize },
    #[error("stack {name} is {bytes} bytes, more than CloudFormation's {MAX_BODY}\n  (hint: use fewer node groups, or split them across phases)")]
    TooLarge { name: String, bytes: usize },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The two stacks of one phase.
#[derive(Debug, Clone, PartialEq)]
pub struct Stacks {
    /// `<project>-base`: network, security group, instance role, bucket.
    pub base: RenderedStack,
    /// `<project>-<phase>`: launch templates, placement groups and fleets.
    pub compute: RenderedStack,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RenderedStack {
    /// The CloudFormation stack name.
    pub name: String,
    pub template: Value,
    /// The exact bytes to deploy: pretty JSON, keys in template order.
    pub body: String,
    /// The body is over 51,200 bytes and must be uploaded to the bucket and
    /// passed as `TemplateURL`.
    pub needs_upload: bool,
}

/// One resource, for the resource table of `infra plan`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceSummary {
    pub logical_id: String,
    pub resource_type: String,
    pub key_properties: String,
}

impl RenderedStack {
    pub(crate) fn new(name: String, template: Value) -> RenderedStack {
        let mut body = serde_json::to_string_pretty(&template).unwrap_or_default();
        body.push('\n');
        let needs_upload = body.len() > MAX_INLINE_BODY;
        RenderedStack {
            name,
            template,
            body,
            needs_upload,
        }
    }

    /// Logical ids of the resources, in template order.
    pub fn resource_ids(&self) -> Vec<&str> {
        self.template["Resources"]
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// Names of the template's parameters (values the deployment supplies).
    pub fn parameter_names(&self) -> Vec<&str> {
        self.template["Parameters"]
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }
}
