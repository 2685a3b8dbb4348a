//! The plan's header: `phase`, `name`, `description`, `project`,
//! `provider`, `region` and `availability_zone`.

use std::path::Path;

use crate::plan::diag::{unsafe_id_reason, Diags};
use crate::plan::fields::{string, Obj};
use crate::plan::json::{Node, Pos};
use crate::plan::model::ProviderKind;

pub(super) struct Header {
    pub phase: String,
    /// What every pattern id starts with (`p15-`, `sweep-`).
    pub id_prefix: String,
    pub name: String,
    pub description: String,
    pub project: String,
    pub provider: ProviderKind,
    pub region: String,
    pub availability_zone: Option<String>,
}

/// The header fields of the top-level object `top`; `root` names the
/// project when the plan does not.
pub(super) fn header(d: &mut Diags, top: &Obj, root: &Path) -> Header {
    let (phase, id_prefix) = phase(d, top);
    let name = top
        .required(d, "name", "\"what this phase measures\"")
        .and_then(|v| string(d, v, "name"))
        .unwrap_or_default();
    let description = top
        .get("description")
        .and_then(|v| string(d, v, "description"))
        .unwrap_or_default();
    let project = match top.get("project") {
        Some(v) => {
            let p = string(d, v, "project").unwrap_or_default();
            check_project(d, &p, v.pos);
            p
        }
        None => default_project(root),
    };
    let provider = provider(d, top);
    let region = region(d, top);
    let availability_zone = top
        .get("availability_zone")
        .and_then(|v| string(d, v, "availability_zone"));
    Header {
        phase,
        id_prefix,
        name,
        description,
        project,
        provider,
        region,
        availability_zone,
    }
}

/// The phase and the id prefix it gives: a number `15` → `p15-`, a name
/// `sweep` → `sweep-` (a name starting with a digit also gets a `p`).
fn phase(d: &mut Diags, top: &Obj) -> (String, String) {
    let mut phase = String::from("0");
    let mut id_prefix = String::from("p0-");
    if let Some(v) = top.required(d, "phase", "15") {
        match &v.node {
            Node::Num(n) if n.as_u64().is_some() => {
                phase = n.to_string();
                id_prefix = format!("p{phase}-");
            }
            Node::Str(s) if unsafe_id_reason(s).is_none() => {
                phase = s.clone();
                id_prefix = if s.starts_with(|c: char| c.is_ascii_digit()) {
                    format!("p{s}-")
                } else {
                    format!("{s}-")
                };
            }
            _ => d.hint(
                "phase",
                v.pos,
                format!(
                    "expected a phase number or a simple name, found {}",
                    v.to_value()
                ),
                "use a whole number such as 15 or a name of letters, digits, '-' and '_'",
            ),
        }
    }
    (phase, id_prefix)
}

fn provider(d: &mut Diags, top: &Obj) -> ProviderKind {
    match top.get("provider") {
        None => ProviderKind::Local,
        Some(v) => match string(d, v, "provider").as_deref() {
            Some("local") => ProviderKind::Local,
            Some("aws") => ProviderKind::Aws,
            Some("slurm") => ProviderKind::Slurm,
            Some(other) => {
                d.hint(
                    "provider",
                    v.pos,
                    format!("unknown provider \"{other}\""),
                    "use \"local\" (this machine, $0), \"aws\" or \"slurm\" (a cluster you can sbatch to)",
                );
                ProviderKind::Local
            }
            None => ProviderKind::Local,
        },
    }
}

fn region(d: &mut Diags, top: &Obj) -> String {
    let region = top
        .get("region")
        .and_then(|v| string(d, v, "region"))
        .unwrap_or_else(|| "us-east-1".into());
    if !region
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || region.is_empty()
    {
        d.hint(
            "region",
            top.get("region").map(|v| v.pos).unwrap_or(top.pos),
            format!("invalid region \"{region}\""),
            "use an AWS region code such as \"us-east-1\"",
        );
    }
    region
}

fn check_project(d: &mut Diags, p: &str, pos: Pos) {
    let ok = !p.is_empty()
        && p.len() <= 40
        && p.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !p.starts_with('-')
        && !p.ends_with('-');
    if !ok {
        d.hint(
            "project",
            pos,
            format!("project name \"{p}\" cannot name stacks and buckets"),
            "use 1 to 40 lowercase letters, digits and '-'",
        );
    }
}

/// The project name when the plan gives none: the folder holding `plans/`,
/// lower-cased and reduced to what stack and bucket names accept.
pub fn default_project(root: &Path) -> String {
    let base = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let name = base
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while out.contains("--") {
        out = out.replace("--", "-");
    }
    let out = out.trim_matches('-').chars().take(40).collect::<String>();
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() {
        "infra".into()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::decode::testing::{hints, lines, node, top};

    fn decode(text: &str) -> (Header, Diags) {
        let n = node(text);
        let mut d = Diags::default();
        let h = header(&mut d, &top(&n), Path::new("/nonexistent/My Study!"));
        (h, d)
    }

    #[test]
    fn a_numbered_phase_prefixes_ids_with_p() {
        let (h, d) = decode(r#"{"phase": 15, "name": "n"}"#);
        assert!(d.is_empty(), "{:?}", lines(&d));
        assert_eq!((h.phase.as_str(), h.id_prefix.as_str()), ("15", "p15-"));
        assert_eq!(h.name, "n");
        assert_eq!(h.description, "");
        assert_eq!(h.provider, ProviderKind::Local);
        assert_eq!(h.region, "us-east-1");
        assert_eq!(h.availability_zone, None);
    }

    #[test]
    fn a_named_phase_is_its_own_prefix_unless_it_starts_with_a_digit() {
        let (h, _) = decode(r#"{"phase": "sweep", "name": "n"}"#);
        assert_eq!(
            (h.phase.as_str(), h.id_prefix.as_str()),
            ("sweep", "sweep-")
        );
        let (h, _) = decode(r#"{"phase": "7b", "name": "n"}"#);
        assert_eq!(h.id_prefix, "p7b-");
    }

    #[test]
    fn a_bad_phase_is_reported_at_its_value() {
        let (h, d) = decode(r#"{"phase": [15], "name": "n"}"#);
        assert_eq!(
            lines(&d),
            ["1:11 phase: expected a phase number or a simple name, found [15]"]
        );
        assert_eq!((h.phase.as_str(), h.id_prefix.as_str()), ("0", "p0-"));
        let (_, d) = decode(r#"{"phase": "a/b", "name": "n"}"#);
        assert_eq!(
            lines(&d),
            ["1:11 phase: expected a phase number or a simple name, found \"a/b\""]
        );
    }

    #[test]
    fn missing_fields_are_reported_at_the_plan() {
        let (_, d) = decode("{\n  \"description\": 5\n}");
        assert_eq!(
            lines(&d),
            [
                "1:1 phase: missing required field \"phase\" in the plan",
                "1:1 name: missing required field \"name\" in the plan",
                "2:18 description: expected a string, found a number",
            ]
        );
        assert_eq!(
            hints(&d)[..2],
            [
                "add \"phase\": 15",
                "add \"name\": \"what this phase measures\""
            ]
        );
    }

    #[test]
    fn provider_region_and_zone() {
        let (h, d) = decode(
            r#"{"phase": 1, "name": "n", "provider": "aws", "region": "eu-west-1", "availability_zone": "eu-west-1b"}"#,
        );
        assert!(d.is_empty(), "{:?}", lines(&d));
        assert_eq!(h.provider, ProviderKind::Aws);
        assert_eq!(h.region, "eu-west-1");
        assert_eq!(h.availability_zone.as_deref(), Some("eu-west-1b"));
        let (h, d) = decode(r#"{"phase": 1, "name": "n", "provider": "gcp", "region": "EU 1"}"#);
        assert_eq!(h.provider, ProviderKind::Local);
        assert_eq!(
            lines(&d),
            [
                "1:39 provider: unknown provider \"gcp\"",
                "1:56 region: invalid region \"EU 1\"",
            ]
        );
    }

    #[test]
    fn the_project_is_checked_or_derived_from_the_folder() {
        let (h, d) = decode(r#"{"phase": 1, "name": "n"}"#);
        assert!(d.is_empty());
        assert_eq!(h.project, "my-study");
        let (h, d) = decode(r#"{"phase": 1, "name": "n", "project": "My Project"}"#);
        assert_eq!(h.project, "My Project");
        assert_eq!(
            lines(&d),
            ["1:38 project: project name \"My Project\" cannot name stacks and buckets"]
        );
        assert_eq!(default_project(Path::new("/nonexistent/--__--")), "infra");
        assert_eq!(
            default_project(Path::new(&format!("/nonexistent/{}", "a".repeat(50)))),
            "a".repeat(40)
        );
    }
}
