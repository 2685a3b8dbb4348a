//! `slurm`: the allocations of a plan run by the Slurm provider
//! (partition, account, qos, time limit, constraint, more sbatch options,
//! per node group GRES, CPUs, memory, time limit; a container; CUDA MPS).
//! Every value reaches `sbatch`/`srun` as one argument of its own (no
//! shell), so only what Slurm itself would refuse is checked here.

use std::collections::BTreeMap;

use crate::plan::diag::Diags;
use crate::plan::fields::{boolean, child, count, duration, obj, string, Obj};
use crate::plan::json::{Node, Spanned};
use crate::plan::model::NodeGroup;
use crate::plan::slurm::{Container, SlurmGroup, SlurmSection};

const FIELDS: &[&str] = &[
    "partition",
    "account",
    "qos",
    "constraint",
    "time_limit",
    "sbatch_options",
    "srun_options",
    "dispatch_margin",
    "container",
    "mps",
    "node_groups",
];

const GROUP_FIELDS: &[&str] = &[
    "gres",
    "cpus_per_task",
    "mem",
    "time_limit",
    "partition",
    "constraint",
    "container",
    "mps",
];

const CONTAINER_FIELDS: &[&str] = &["runtime", "image", "binds", "overlay", "nv"];

/// The `slurm` section, or `None` when the plan has none.
pub(super) fn slurm(d: &mut Diags, top: &Obj, groups: &[NodeGroup]) -> Option<SlurmSection> {
    let v = top.get("slurm")?;
    let o = obj(d, v, "slurm")?;
    o.known(d, FIELDS);
    let mut s = SlurmSection {
        partition: name(d, &o, "partition"),
        account: name(d, &o, "account"),
        qos: name(d, &o, "qos"),
        constraint: o
            .get("constraint")
            .and_then(|v| string(d, v, "slurm.constraint")),
        time_limit: time_limit(d, &o),
        sbatch_options: options(d, &o, "sbatch_options"),
        srun_options: options(d, &o, "srun_options"),
        dispatch_margin: o
            .get("dispatch_margin")
            .and_then(|v| duration(d, v, "slurm.dispatch_margin"))
            .unwrap_or_default(),
        container: o
            .get("container")
            .and_then(|v| container(d, v, "slurm.container")),
        mps: o
            .get("mps")
            .and_then(|v| boolean(d, v, "slurm.mps"))
            .unwrap_or(false),
        groups: BTreeMap::new(),
    };
    if let Some(gv) = o.get("node_groups") {
        if let Some(go) = obj(d, gv, "slurm.node_groups") {
            for (gname, v) in go.fields {
                let path = go.child(gname);
                if !groups.iter().any(|g| &g.name == gname) {
                    let known: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
                    d.hint(
                        &path,
                        v.pos,
                        format!("\"{gname}\" is not a node group of the plan"),
                        format!(
                            "use the name of a group in \"node_groups\" ({})",
                            known.join(", ")
                        ),
                    );
                }
                if let Some(g) = group(d, v, &path) {
                    s.groups.insert(gname.clone(), g);
                }
            }
        }
    }
    Some(s)
}

/// On Slurm, a task whose estimate is longer than its allocations' time
/// limit would never start (no allocation ever has the time): one problem
/// per node group, at its longest task.
pub(super) fn check_time_limits(d: &mut Diags, plan: &crate::plan::Plan) {
    if plan.provider != crate::plan::ProviderKind::Slurm {
        return;
    }
    let s = plan.slurm.clone().unwrap_or_default();
    for g in &plan.node_groups {
        let Some(limit) = s
            .groups
            .get(&g.name)
            .and_then(|x| x.time_limit)
            .or(s.time_limit)
        else {
            continue;
        };
        let longest = plan
            .patterns()
            .filter(|p| p.node_group == g.name)
            .filter_map(|p| Some((p.estimate?, p)))
            .max_by_key(|(e, _)| *e);
        if let Some((e, p)) = longest.filter(|(e, _)| *e > limit) {
            let n = plan
                .patterns()
                .filter(|q| q.node_group == g.name && q.estimate.is_some_and(|x| x > limit))
                .count();
            let h = |d: std::time::Duration| {
                let s = d.as_secs();
                match (s % 3600, s % 60) {
                    (0, _) => format!("{}h", s / 3600),
                    (_, 0) => format!("{}m", s / 60),
                    _ => format!("{s}s"),
                }
            };
            let li = plan
                .layers
                .iter()
                .position(|l| l.id == p.layer)
                .unwrap_or(0);
            d.hint(
                &format!("layers[{li}] ({})", p.id),
                p.pos,
                format!(
                    "{n} task(s) of node group {} take longer than its allocations' time limit {} ({} estimated for {}): they would never start",
                    g.name,
                    h(limit),
                    h(e),
                    p.id
                ),
                format!(
                    "raise \"slurm.time_limit\" (or \"slurm.node_groups.{}.time_limit\"), or split the work so that a task fits",
                    g.name
                ),
            );
        }
    }
}

/// A partition, account or qos name: one word.
fn name(d: &mut Diags, o: &Obj, key: &str) -> Option<String> {
    let v = o.get(key)?;
    let path = o.child(key);
    let s = string(d, v, &path)?;
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        d.hint(
            &path,
            v.pos,
            format!("invalid {key} \"{s}\""),
            format!("write the {key}'s name as Slurm shows it (sinfo, sacctmgr), without spaces"),
        );
        return None;
    }
    Some(s)
}

fn time_limit(d: &mut Diags, o: &Obj) -> Option<std::time::Duration> {
    let v = o.get("time_limit")?;
    let path = o.child("time_limit");
    let t = duration(d, v, &path)?;
    if t.as_secs() < 60 {
        d.hint(
            &path,
            v.pos,
            "a time limit under a minute",
            "Slurm counts time limits in minutes: write at least \"1m\" (the team's: \"12h\")",
        );
        return None;
    }
    Some(t)
}

/// A list of extra options, each one argument (`"--exclusive"`,
/// `"--mail-type=END"`).
fn options(d: &mut Diags, o: &Obj, key: &str) -> Vec<String> {
    let Some(v) = o.get(key) else {
        return Vec::new();
    };
    let path = o.child(key);
    let Node::Arr(items) = &v.node else {
        d.hint(
            &path,
            v.pos,
            format!("expected a list of options, found {}", v.kind()),
            "write [\"--exclusive\", \"--mail-type=END\"]: one option per string",
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let Some(s) = string(d, it, &p) else { continue };
        if !s.starts_with('-') || s.contains('\n') {
            d.hint(
                &p,
                it.pos,
                format!("\"{s}\" is not an option"),
                "write each option as one string starting with '-', its value after '=' (\"--mail-type=END\")",
            );
            continue;
        }
        out.push(s);
    }
    out
}

fn group(d: &mut Diags, v: &Spanned, path: &str) -> Option<SlurmGroup> {
    let o = obj(d, v, path)?;
    o.known(d, GROUP_FIELDS);
    let text = |d: &mut Diags, key: &str| o.get(key).and_then(|v| string(d, v, &child(path, key)));
    let mem = text(d, "mem");
    if let (Some(m), Some(v)) = (&mem, o.get("mem")) {
        let digits = m.trim_end_matches(['K', 'M', 'G', 'T']);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            d.hint(
                &child(path, "mem"),
                v.pos,
                format!("invalid memory \"{m}\""),
                "write megabytes, or a number with K, M, G or T (\"160G\")",
            );
        }
    }
    Some(SlurmGroup {
        gres: text(d, "gres"),
        cpus_per_task: o
            .get("cpus_per_task")
            .and_then(|v| count(d, v, &child(path, "cpus_per_task"), 4096)),
        mem,
        time_limit: time_limit(d, &o),
        partition: name(d, &o, "partition"),
        constraint: text(d, "constraint"),
        container: o
            .get("container")
            .and_then(|v| container(d, v, &child(path, "container"))),
        mps: o
            .get("mps")
            .and_then(|v| boolean(d, v, &child(path, "mps"))),
    })
}

fn container(d: &mut Diags, v: &Spanned, path: &str) -> Option<Container> {
    let o = obj(d, v, path)?;
    o.known(d, CONTAINER_FIELDS);
    let runtime = match o.get("runtime") {
        None => "apptainer".to_string(),
        Some(v) => {
            let r = string(d, v, &child(path, "runtime"))?;
            if r != "apptainer" && r != "singularity" {
                d.hint(
                    &child(path, "runtime"),
                    v.pos,
                    format!("unknown container runtime \"{r}\""),
                    "use \"apptainer\" or \"singularity\"",
                );
                return None;
            }
            r
        }
    };
    let image = o
        .required(d, "image", "\"/shared/images/train.sif\"")
        .and_then(|v| string(d, v, &child(path, "image")))?;
    let mut binds = Vec::new();
    if let Some(b) = o.get("binds") {
        let bp = child(path, "binds");
        match &b.node {
            Node::Arr(items) => {
                for (i, it) in items.iter().enumerate() {
                    if let Some(s) = string(d, it, &format!("{bp}[{i}]")) {
                        binds.push(s);
                    }
                }
            }
            _ => d.hint(
                &bp,
                b.pos,
                format!("expected a list of binds, found {}", b.kind()),
                "write [\"/data:/data\", \"/scratch\"]",
            ),
        }
    }
    Some(Container {
        runtime,
        image,
        binds,
        overlay: o
            .get("overlay")
            .and_then(|v| string(d, v, &child(path, "overlay"))),
        nv: o
            .get("nv")
            .and_then(|v| boolean(d, v, &child(path, "nv")))
            .unwrap_or(true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::decode::testing::{lines, node, top};

    fn decode(text: &str) -> (Option<SlurmSection>, Diags) {
        let n = node(text);
        let mut d = Diags::default();
        let g = NodeGroup {
            name: "gpu".into(),
            ..crate::plan::decode::machines::local_node(crate::plan::json::Pos { line: 1, col: 1 })
        };
        let s = slurm(&mut d, &top(&n), &[g]);
        (s, d)
    }

    #[test]
    fn the_teams_sbatch_settings_decode() {
        let (s, d) = decode(
            r#"{"slurm": {"partition": "gpu", "account": "dl-lab", "time_limit": "12h",
                "sbatch_options": ["--exclusive"], "mps": true,
                "container": {"runtime": "singularity", "image": "/img/t.sif", "binds": ["/data"], "overlay": "o.img"},
                "node_groups": {"gpu": {"gres": "gpu:rtx8000:8", "cpus_per_task": 48, "mem": "160G"}}}}"#,
        );
        assert!(d.is_empty(), "{:?}", lines(&d));
        let s = s.unwrap();
        assert_eq!(s.account.as_deref(), Some("dl-lab"));
        assert_eq!(
            s.time_limit,
            Some(std::time::Duration::from_secs(12 * 3600))
        );
        assert_eq!(s.groups["gpu"].cpus_per_task, Some(48));
        assert_eq!(s.container.unwrap().runtime, "singularity");
    }

    #[test]
    fn bad_slurm_input_names_the_field_and_the_fix() {
        let (_, d) = decode(
            r#"{"slurm": {"account": "dl lab", "time_limit": "30s", "sbatch_options": ["exclusive"],
                "node_groups": {"cpu": {"mem": "lots"}}, "partitoin": "x"}}"#,
        );
        let l = lines(&d);
        assert!(
            l.iter()
                .any(|x| x.contains("slurm.account: invalid account \"dl lab\"")),
            "{l:?}"
        );
        assert!(
            l.iter()
                .any(|x| x.contains("slurm.time_limit: a time limit under a minute")),
            "{l:?}"
        );
        assert!(
            l.iter()
                .any(|x| x.contains("slurm.sbatch_options[0]: \"exclusive\" is not an option")),
            "{l:?}"
        );
        assert!(
            l.iter()
                .any(|x| x.contains("slurm.node_groups.cpu: \"cpu\" is not a node group")),
            "{l:?}"
        );
        assert!(
            l.iter()
                .any(|x| x.contains("slurm.node_groups.cpu.mem: invalid memory")),
            "{l:?}"
        );
        assert!(
            l.iter()
                .any(|x| x.contains("slurm.partitoin: unknown field")),
            "{l:?}"
        );
    }
}
