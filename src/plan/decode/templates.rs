//! `templates` (backend → template file) and the check that every backend
//! a pattern names has a template.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use crate::plan::diag::{did_you_mean, Diags};
use crate::plan::fields::{obj, string, Obj};
use crate::plan::json::Pos;
use crate::plan::model::Plan;

use super::source::{rel, Source};

/// The backends mapped to a template file, relative to the plan's folder
/// and inside the project folder `root` (a plan must not make `infra` read
/// `../../etc/passwd` or an absolute path).
pub(super) fn templates(
    d: &mut Diags,
    top: &Obj,
    plan_dir: &Path,
    root: &Path,
) -> BTreeMap<String, PathBuf> {
    let mut templates = BTreeMap::new();
    if let Some(v) = top.get("templates") {
        if let Some(o) = obj(d, v, "templates") {
            for (k, tv) in o.fields {
                let field = o.child(k);
                let Some(p) = string(d, tv, &field) else {
                    continue;
                };
                if inside(root, plan_dir, Path::new(&p)) {
                    templates.insert(k.clone(), plan_dir.join(p));
                } else {
                    d.hint(
                        &field,
                        tv.pos,
                        format!("template path \"{}\" leaves the project folder", p.escape_debug()),
                        "use a path relative to the plan's folder that stays inside the project, e.g. \"templates/x.json.hbs\"",
                    );
                }
            }
        }
    }
    templates
}

/// Whether `plan_dir/p` stays inside `root`, lexically (no file is read).
fn inside(root: &Path, plan_dir: &Path, p: &Path) -> bool {
    use std::path::Component;
    let mut depth: Vec<std::ffi::OsString> = Vec::new();
    let base = plan_dir.strip_prefix(root).unwrap_or(Path::new(""));
    for c in base.components().chain(p.components()) {
        match c {
            Component::Normal(n) => depth.push(n.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    !p.as_os_str().is_empty()
}

/// A plan outside the project's `plans/` (copied to /tmp, say) without a
/// template beside it uses the project's: for each backend neither mapped
/// in `templates` nor found in `<plan's folder>/templates/`, the project's
/// `plans/templates/<backend>.json.hbs` when it exists.
pub(super) fn project_templates(plan: &mut Plan, src: &Source) {
    let shared = src.root.join("plans").join("templates");
    if shared == plan.plan_dir.join("templates") {
        return;
    }
    let backends: HashSet<String> = plan.patterns().map(|p| p.backend.clone()).collect();
    for b in backends {
        if plan.templates.contains_key(&b) || (src.file_exists)(&plan.template_path(&b)) {
            continue;
        }
        let candidate = shared.join(format!("{b}.json.hbs"));
        if (src.file_exists)(&candidate) {
            plan.templates.insert(b, candidate);
        }
    }
}

/// One diagnostic per backend without a template file, at the first
/// pattern that names it.
pub(super) fn check_backends(d: &mut Diags, plan: &Plan, src: &Source) {
    let mut checked: HashSet<&str> = HashSet::new();
    let mut missing: Vec<(&str, Pos, &str)> = Vec::new();
    for p in plan.patterns() {
        if checked.insert(&p.backend) && !(src.file_exists)(&plan.template_path(&p.backend)) {
            missing.push((&p.backend, p.pos, &p.id));
        }
    }
    let known: Vec<&str> = plan.templates.keys().map(String::as_str).collect();
    for (b, pos, id) in missing {
        let path = rel(&plan.template_path(b), src.root);
        let mut hint = format!("create {path} or map the backend in \"templates\"");
        if !known.is_empty() {
            hint.push_str(&format!("; {}", did_you_mean(b, known.iter().copied())));
        }
        d.hint(
            &format!("pattern {id}.backend"),
            pos,
            format!("unknown backend \"{b}\": no template {path}"),
            hint,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::decode::testing::{decode_err, decode_text, hints, lines, node, top};

    #[test]
    fn templates_are_relative_to_the_plan_folder() {
        let n = node(r#"{"templates": {"a": "t/a.hbs", "b": 5}}"#);
        let mut d = Diags::default();
        let t = templates(&mut d, &top(&n), Path::new("/p/plans"), Path::new("/p"));
        assert_eq!(t["a"], PathBuf::from("/p/plans/t/a.hbs"));
        assert_eq!(t.len(), 1);
        assert_eq!(
            lines(&d),
            ["1:37 templates.b: expected a string, found a number"]
        );
    }

    #[test]
    fn template_paths_that_leave_the_project_are_refused() {
        let n = node(
            r#"{"templates": {"a": "../../etc/passwd", "b": "/etc/passwd", "c": "../t/c.hbs", "d": "t/../../../x"}}"#,
        );
        let mut d = Diags::default();
        let t = templates(&mut d, &top(&n), Path::new("/p/plans"), Path::new("/p"));
        assert_eq!(t.keys().collect::<Vec<_>>(), ["c"]);
        assert_eq!(
            lines(&d),
            [
                "1:21 templates.a: template path \"../../etc/passwd\" leaves the project folder",
                "1:46 templates.b: template path \"/etc/passwd\" leaves the project folder",
                "1:85 templates.d: template path \"t/../../../x\" leaves the project folder",
            ]
        );
    }

    #[test]
    fn a_backend_without_a_template_is_reported_once_at_its_first_pattern() {
        let d = decode_err(
            r#"{"phase": 1, "name": "n", "layers": [{"id": "L0", "patterns": [
                {"id": "p1-a", "backend": "missing"}, {"id": "p1-b", "backend": "missing"}]}]}"#,
        );
        assert_eq!(
            lines(&d),
            ["2:24 pattern p1-a.backend: unknown backend \"missing\": no template plans/templates/missing.json.hbs"]
        );
        assert_eq!(
            hints(&d),
            ["create plans/templates/missing.json.hbs or map the backend in \"templates\""]
        );
        let d = decode_err(
            r#"{"phase": 1, "name": "n", "templates": {"missinj": "x/missing.hbs"},
                "layers": [{"id": "L0", "patterns": [{"id": "p1-a", "backend": "missing"}]}]}"#,
        );
        assert_eq!(
            hints(&d)[0],
            "create plans/templates/missing.json.hbs or map the backend in \"templates\"; did you mean \"missinj\"? known: missinj"
        );
        let plan = decode_text(
            r#"{"phase": 1, "name": "n", "templates": {"m": "x/m.hbs"},
                "layers": [{"id": "L0", "patterns": [{"id": "p1-a", "backend": "m"}]}]}"#,
        )
        .unwrap_or_else(|d| panic!("{:?}", lines(&d)));
        assert_eq!(plan.template_path("m"), PathBuf::from("/p/plans/x/m.hbs"));
    }
}
