//! Names derived from the plan: stacks, exports, logical ids, tags. Never
//! random, so the same plan always names the same things.

use crate::plan::Plan;

/// Tag keys on every taggable resource (values: project, `plan.name_key`,
/// node group name; the base stack carries `infra:stack` = `base` instead of
/// phase and node group, because phases share it).
pub const TAG_PROJECT: &str = "infra:project";
pub const TAG_PHASE: &str = "infra:phase";
pub const TAG_NODE_GROUP: &str = "infra:node-group";
pub const TAG_STACK: &str = "infra:stack";

/// Longest project prefix of a bucket name: 63 minus 12 (account id),
/// 14 (longest region code) and two dashes.
const BUCKET_PREFIX_MAX: usize = 35;

/// Reduce `s` to what a CloudFormation stack name accepts
/// (`[a-zA-Z][-a-zA-Z0-9]*`): other characters become '-', runs collapse.
fn stack_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = if c.is_ascii_alphanumeric() { c } else { '-' };
        if !(c == '-' && (out.is_empty() || out.ends_with('-'))) {
            out.push(c);
        }
    }
    out.trim_end_matches('-').to_string()
}

/// `<project>-base`: one per project, shared by its phases.
pub fn base_stack_name(project: &str) -> String {
    format!("{}-base", stack_safe(project))
}

/// `<project>-<phase>`, the phase being the plan's file stem (`phase15`).
pub fn compute_stack_name(project: &str, name_key: &str) -> String {
    let mut name = format!("{}-{}", stack_safe(project), stack_safe(name_key));
    name.truncate(128);
    name.trim_end_matches('-').to_string()
}

/// Why `project` cannot start a stack name, if it cannot.
pub fn stack_name_problem(project: &str) -> Option<&'static str> {
    if !project.starts_with(|c: char| c.is_ascii_alphabetic()) {
        Some("CloudFormation stack names must start with a letter")
    } else {
        None
    }
}

/// The export the base stack publishes for `key` and the compute stacks import.
pub fn export_name(project: &str, key: &str) -> String {
    format!("{}-{key}", base_stack_name(project))
}

/// The literal part of the bucket name; the stack appends
/// `-<account id>-<region>` so the name is unique and still derived.
pub fn bucket_prefix(project: &str) -> String {
    let p: String = project.chars().take(BUCKET_PREFIX_MAX).collect();
    p.trim_end_matches('-').to_string()
}

/// Launch template name, unique per region: `<project>-<phase>-<group>`.
pub fn launch_template_name(plan: &Plan, group: &str) -> String {
    let mut n = format!("{}-{}-{}", plan.project, plan.name_key, group);
    n = n
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '(' | ')' | '/') {
                c
            } else {
                '-'
            }
        })
        .collect();
    n.truncate(128);
    n
}

/// A CloudFormation logical id fragment from a node group name: ASCII
/// letters and digits only, each word capitalized (`cpu-a` → `CpuA`).
pub fn logical_id(name: &str) -> String {
    let mut out = String::new();
    for word in name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let mut cs = word.chars();
        if let Some(first) = cs.next() {
            out.push(first.to_ascii_uppercase());
            out.extend(cs);
        }
    }
    out
}

/// Logical id fragments for all `names`, in order, made unique: an empty
/// result becomes `Group<n>`, a repeated one gets the next free number.
pub fn unique_logical_ids<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, name) in names.into_iter().enumerate() {
        let mut base = logical_id(name);
        if base.is_empty() {
            base = format!("Group{}", i + 1);
        }
        let mut id = base.clone();
        let mut n = 2;
        while out.iter().any(|o| o.eq_ignore_ascii_case(&id)) {
            id = format!("{base}{n}");
            n += 1;
        }
        out.push(id);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logical_ids_are_alphanumeric_and_unique() {
        let ids = unique_logical_ids(["cpu-a", "cpu_a", "cpu.a", "default", "_", "gpu-1", "CpuA2"]);
        assert_eq!(
            ids,
            ["CpuA", "CpuA2", "CpuA3", "Default", "Group5", "Gpu1", "CpuA22"]
        );
        for id in &ids {
            assert!(id.chars().all(|c| c.is_ascii_alphanumeric()), "{id}");
        }
    }

    #[test]
    fn stack_names_follow_cloudformation_rules() {
        assert_eq!(base_stack_name("inference"), "inference-base");
        assert_eq!(
            compute_stack_name("inference", "phase15"),
            "inference-phase15"
        );
        assert_eq!(
            compute_stack_name("stats", "table_II.v2"),
            "stats-table-II-v2"
        );
        assert!(stack_name_problem("2024-study").is_some());
        assert!(stack_name_problem("study").is_none());
        assert_eq!(export_name("stats", "BucketName"), "stats-base-BucketName");
    }

    #[test]
    fn bucket_prefix_leaves_room_for_account_and_region() {
        let long = "a".repeat(40);
        let p = bucket_prefix(&long);
        assert_eq!(p.len(), 35);
        assert!(p.len() + 1 + 12 + 1 + "ap-southeast-5".len() <= 63);
        assert_eq!(
            bucket_prefix(&format!("{}-b", "a".repeat(34))),
            "a".repeat(34)
        );
    }
}
