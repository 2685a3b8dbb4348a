//! A damaged journal: `status` warns and goes on, `run` refuses with exit
//! 2 naming the line and the repair, `infra journal repair` keeps every
//! valid line; a torn last line still just works.

use crate::common::*;

fn phase(p: &Project) {
    p.write(
        "plans/templates/echo.json.hbs",
        &one_step_template("echo {{pattern_id}} >> \\\"$INFRA_ROOT/ran.log\\\"", ""),
    );
    p.write(
        "plans/jr.json",
        r#"{"phase": "jr", "name": "journal",
      "layers": [{"id": "L0", "patterns": [
        {"id": "jr-a", "backend": "echo"}, {"id": "jr-b", "backend": "echo"}, {"id": "jr-c", "backend": "echo"}]}]}"#,
    );
}

const JOURNAL: &str = ".infra/jr/journal.jsonl";

/// The journal with line `n` (1-based) replaced by `bad`.
fn damage(p: &Project, n: usize, bad: &[u8]) -> Vec<u8> {
    let text = p.read(JOURNAL);
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if i + 1 == n {
            out.extend_from_slice(bad);
        } else {
            out.extend_from_slice(l.as_bytes());
        }
        out.push(b'\n');
    }
    std::fs::write(p.path().join(JOURNAL), &out).unwrap();
    out
}

#[test]
fn a_journal_damaged_in_the_middle_no_longer_blocks_status_and_is_repaired() {
    for (what, bad) in [
        ("garbled", &b"{\"v\":1,\"ts\":\"t\",\"ev"[..]),
        (
            "unknown event",
            &b"{\"v\":1,\"ts\":\"t\",\"event\":\"teleported\"}"[..],
        ),
        ("invalid utf-8", &b"\xff\xfe\xfd"[..]),
    ] {
        let p = Project::new();
        phase(&p);
        p.infra(&["run", "jr"]).ok();
        let lines = p.read(JOURNAL).lines().count();
        assert!(lines > 4, "{what}");
        // a "dispatched" line: every task's outcome stays readable
        let n = 1 + p
            .read(JOURNAL)
            .lines()
            .position(|l| l.contains("\"event\":\"dispatched\""))
            .unwrap();
        let original = damage(&p, n, bad);

        let st = p.infra(&["status", "jr"]);
        st.ok();
        assert!(
            st.stdout.contains(&format!("journal line {n} is damaged"))
                && st.stdout.contains("infra journal repair jr"),
            "{what}: {}",
            st.stdout
        );
        assert!(st.stdout.contains("3 done"), "{what}: {}", st.stdout);
        let js = p.infra(&["status", "jr", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&js.stdout).unwrap();
        assert_eq!(v["journal_damage"][0]["line"], n, "{what}");

        let r = p.infra(&["run", "jr"]);
        assert_eq!(r.code, 2, "{what}: {}", r.stderr);
        assert!(
            r.stderr.contains(&format!("line {n} "))
                && r.stderr.contains("infra journal repair jr"),
            "{what}: {}",
            r.stderr
        );

        let rep = p.infra(&["journal", "repair", "jr"]);
        rep.ok();
        assert!(
            rep.stdout
                .contains(&format!("kept {} valid line(s), dropped 1", lines - 1))
                && rep.stdout.contains(&format!("dropped line {n}:")),
            "{what}: {}",
            rep.stdout
        );
        let backups: Vec<_> = std::fs::read_dir(p.path().join(".infra/jr"))
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("journal.jsonl.damaged-")
            })
            .collect();
        assert_eq!(backups.len(), 1, "{what}");
        assert_eq!(
            std::fs::read(backups[0].path()).unwrap(),
            original,
            "{what}"
        );
        assert_eq!(p.read(JOURNAL).lines().count(), lines - 1, "{what}");

        // the repaired journal runs: every task is still done
        std::fs::remove_file(p.path().join("ran.log")).unwrap();
        p.infra(&["run", "jr"]).ok();
        assert!(!p.exists("ran.log"), "{what}: nothing ran again");
        let again = p.infra(&["journal", "repair", "jr"]);
        again.ok();
        assert!(
            again.stdout.contains("nothing to repair"),
            "{}",
            again.stdout
        );
    }
}

#[test]
fn a_torn_last_line_still_runs_without_repair() {
    let p = Project::new();
    phase(&p);
    p.infra(&["run", "jr"]).ok();
    let mut text = p.read(JOURNAL).into_bytes();
    text.extend_from_slice(b"{\"v\":1,\"ts\":\"t\",\"event\":\"succ");
    std::fs::write(p.path().join(JOURNAL), &text).unwrap();
    let st = p.infra(&["status", "jr"]);
    st.ok();
    assert!(!st.stdout.contains("damaged"), "{}", st.stdout);
    p.infra(&["run", "jr"]).ok();
}
