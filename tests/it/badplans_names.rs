//! Plan file names are phase names: they reach user data, scripts and
//! paths, so only safe characters pass.

use crate::common::*;

#[test]
fn a_newline_in_the_plan_file_name_is_refused_before_it_reaches_user_data() {
    let p = Project::new();
    let name = "x\ntouch pwned\n";
    p.write(
        &format!("plans/{name}.json"),
        r#"{"phase": "x", "name": "n", "provider": "aws",
      "node_groups": {"cpu": {"instance_type": "c6i.xlarge", "count": 1}},
      "layers": [{"id": "L0", "patterns": [{"id": "x-a", "backend": "echo"}]}]}"#,
    );
    p.write(
        "plans/templates/echo.json.hbs",
        &one_step_template("true", ""),
    );
    let path = format!("plans/{name}.json");
    let r = p.infra(&["plan", &path]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("phase name \"x\\ntouch pwned\\n\"")
            && r.stderr
                .contains("rename the file, e.g. to plans/xtouchpwned.json"),
        "{}",
        r.stderr
    );
    assert!(!p.exists(".infra"), "nothing rendered");
}

#[test]
fn ordinary_plan_file_names_still_load() {
    let p = Project::new();
    p.write(
        "plans/templates/echo.json.hbs",
        &one_step_template("true", ""),
    );
    p.write(
        "plans/Run_2.v1-a.json",
        r#"{"phase": "r", "name": "n", "layers": [{"id": "L0", "patterns": [{"id": "r-a", "backend": "echo"}]}]}"#,
    );
    p.infra(&["plan", "Run_2.v1-a"]).ok();
}

#[test]
fn a_phase_named_like_the_ledger_prefix_is_refused_since_its_nodes_could_write_the_ledger() {
    let p = Project::new();
    p.write(
        "plans/templates/echo.json.hbs",
        &one_step_template("true", ""),
    );
    for name in ["_ledger", "_infra", "_templates"] {
        p.write(
            &format!("plans/{name}.json"),
            r#"{"phase": "l", "name": "n", "provider": "aws",
      "node_groups": {"cpu": {"instance_type": "c6i.xlarge", "count": 1}},
      "layers": [{"id": "L0", "patterns": [{"id": "l-a", "backend": "echo"}]}]}"#,
        );
        let r = p.infra(&["plan", name]);
        assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
        assert!(
            r.stderr
                .contains("infra keeps for itself in the results bucket"),
            "{}",
            r.stderr
        );
    }
    assert!(!p.exists(".infra"), "nothing rendered");
}
