//! The hours the phase's allocations hold, recorded in the ledger as they
//! are held: each job's `squeue` TimeUsed (`%M`) past what the ledger has
//! of it becomes an entry (node-hours, and GPU-hours by its group's
//! `gpus`, at $0). Recording is idempotent (what a job held is counted
//! once, whoever records it: a run's monitor, `apply`, `destroy`, `infra
//! budget`, under the ledger's lock), so a crashed controller loses
//! nothing its allocations held while they are still in `squeue`; a job
//! that ends while no controller runs loses at most the part not yet
//! recorded (the run records every [`FLUSH`] and when a job ends).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::argv;
use super::cluster::JobRow;
use crate::cost::hours::{self, Held};
use crate::cost::ledger;
use crate::plan::Plan;

/// A running job's hours go to the ledger at least this often.
pub(super) const FLUSH: Duration = Duration::from_secs(60);

/// The ledger entries of what the jobs of `rows` held past `recorded`
/// (hours per job id) at `now`: each job whose unrecorded part is at least
/// `min`, or that is in `force`; and the hours of every unrecorded part
/// (written or not). Pure.
pub(super) fn entries(
    plan: &Plan,
    rows: &BTreeMap<String, JobRow>,
    recorded: &BTreeMap<String, f64>,
    min: Duration,
    force: &BTreeSet<String>,
    now: chrono::DateTime<chrono::Utc>,
) -> (Vec<ledger::Spend>, Held) {
    let prefix = argv::job_prefix(plan);
    let mut out = Vec::new();
    let mut unrecorded = Held::default();
    for (id, r) in rows {
        let Some(used) = r.used else { continue };
        let part = used.as_secs_f64() / 3600.0 - recorded.get(id).copied().unwrap_or(0.0);
        if part <= 1e-9 {
            continue;
        }
        let name = r.name.strip_prefix(&prefix).unwrap_or(&r.name);
        let group = name.rsplit_once('-').map_or(name, |(g, _)| g);
        let gpus = plan.node_group(group).and_then(|g| g.gpus).unwrap_or(0) as f64;
        unrecorded = unrecorded.plus(Held {
            node_hours: part,
            gpu_hours: part * gpus,
        });
        if part * 3600.0 + 1e-6 < min.as_secs_f64() && !force.contains(id) {
            continue;
        }
        let span = ledger::RunSpan {
            phase: &plan.name_key,
            provider: "slurm",
            start: now - chrono::Duration::milliseconds((part * 3_600_000.0) as i64),
            end: now,
            hours: part,
            kind: "metered",
        };
        let mut e = span.spend(
            format!("{name} (job {id})"),
            group,
            "slurm allocation",
            "allocation",
            0.0,
        );
        e.instance = Some(id.clone());
        e.price_source = Some("squeue TimeUsed".into());
        e.gpu_hours = Some(part * gpus);
        out.push(e);
    }
    (out, unrecorded)
}

/// What the ledger had of the phase when it was last read: a run's meter
/// looks every poll, and reads the ledger again only when it writes.
#[derive(Debug, Clone, Default)]
pub(super) struct Recorded {
    per_job: BTreeMap<String, f64>,
    held: Held,
}

/// Record what the phase's jobs in `rows` held past what the ledger has
/// of them (see [`entries`]); the hours the phase has held in all
/// (recorded, and not yet). With `cache`, nothing is read when nothing is
/// to be written (what another process recorded meanwhile is seen at the
/// next write).
pub(super) fn record(
    plan: &Plan,
    rows: &BTreeMap<String, JobRow>,
    min: Duration,
    force: &BTreeSet<String>,
    cache: Option<&mut Option<Recorded>>,
) -> Result<Held, String> {
    let now = chrono::Utc::now();
    if let Some(Some(c)) = cache.as_deref() {
        let (new, unrecorded) = entries(plan, rows, &c.per_job, min, force, now);
        if new.is_empty() {
            return Ok(c.held.plus(unrecorded));
        }
    }
    let path = ledger::path(&plan.root);
    let (total, fresh) = ledger::locked(&plan.root, || {
        let past = ledger::read(&plan.root).map_err(|e| e.to_string())?;
        let mut per_job = hours::recorded_per_job(&past, &plan.name_key);
        let (new, unrecorded) = entries(plan, rows, &per_job, min, force, now);
        ledger::append(&plan.root, &new)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let before = hours::held(&past, &plan.name_key);
        for e in &new {
            if let Some(job) = &e.instance {
                *per_job.entry(job.clone()).or_insert(0.0) += e.hours;
            }
        }
        let held = before.plus(hours::held(&new, &plan.name_key));
        // every unrecorded part counts, written now or not
        Ok::<_, String>((before.plus(unrecorded), Recorded { per_job, held }))
    })
    .map_err(|e| format!("cannot lock the ledger of {}: {e}", path.display()))??;
    if let Some(c) = cache {
        *c = Some(fresh);
    }
    Ok(total)
}

/// Record everything the phase's jobs in `rows` held so far.
pub(super) fn record_all(plan: &Plan, rows: &BTreeMap<String, JobRow>) -> Result<Held, String> {
    record(plan, rows, Duration::ZERO, &BTreeSet::new(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, name: &str, used: u64) -> (String, JobRow) {
        (
            id.to_string(),
            JobRow {
                id: id.into(),
                name: name.into(),
                state: "RUNNING".into(),
                used: Some(Duration::from_secs(used)),
                ..Default::default()
            },
        )
    }

    fn plan() -> Plan {
        let text = r#"{"phase": "p", "name": "p", "provider": "slurm",
          "node_groups": {"gpu": {"count": 1, "gpus": 8}, "cpu": {"count": 1}},
          "layers": [{"id": "L0", "patterns": [{"id": "p-0", "backend": "x"}]}]}"#;
        crate::plan::load::parse_plan(text, std::path::Path::new("/lab/plans/p.json"), &|_| true)
            .unwrap()
    }

    #[test]
    fn what_a_job_held_past_its_recorded_hours_becomes_one_entry_with_its_gpu_hours() {
        let plan = plan();
        let prefix = argv::job_prefix(&plan);
        let rows: BTreeMap<String, JobRow> = [
            row("12", &format!("{prefix}gpu-0"), 1800),
            row("13", &format!("{prefix}cpu-0"), 30),
            row("14", &format!("{prefix}cpu-1"), 0),
        ]
        .into();
        // job 12 has a quarter of an hour recorded already
        let recorded: BTreeMap<String, f64> = [("12".to_string(), 0.25)].into();
        let now = chrono::Utc::now();
        let (es, un) = entries(&plan, &rows, &recorded, FLUSH, &BTreeSet::new(), now);
        // 13's 30 s wait for the next flush; 14 held nothing
        assert_eq!(es.len(), 1, "{es:#?}");
        assert_eq!(es[0].node, "gpu-0 (job 12)");
        assert_eq!(es[0].instance.as_deref(), Some("12"));
        assert_eq!((es[0].hours, es[0].gpu_hours), (0.25, Some(2.0)));
        assert_eq!((es[0].usd, es[0].provider.as_str()), (0.0, "slurm"));
        assert!((un.node_hours - (0.25 + 30.0 / 3600.0)).abs() < 1e-9);
        assert!((un.gpu_hours - 2.0).abs() < 1e-9);
        // a job that went is recorded whatever its part; again: nothing new
        let force: BTreeSet<String> = ["13".to_string()].into();
        let (es, _) = entries(&plan, &rows, &recorded, FLUSH, &force, now);
        assert_eq!(es.len(), 2);
        let mut recorded = recorded;
        for e in &es {
            *recorded.entry(e.instance.clone().unwrap()).or_insert(0.0) += e.hours;
        }
        let (es, un) = entries(&plan, &rows, &recorded, Duration::ZERO, &force, now);
        assert!(es.is_empty(), "{es:#?}");
        assert_eq!(un, Held::default());
    }

    #[test]
    fn the_meter_records_each_second_once_and_reads_the_ledger_only_to_write() {
        let dir = tempfile::tempdir().unwrap();
        let mut plan = plan();
        plan.root = dir.path().to_path_buf();
        let prefix = argv::job_prefix(&plan);
        let at = |used: u64| -> BTreeMap<String, JobRow> {
            [row("12", &format!("{prefix}gpu-0"), used)].into()
        };
        let mut cache = None;
        let none = BTreeSet::new();
        // 2 min held: written at once (past FLUSH)
        let h = record(&plan, &at(120), FLUSH, &none, Some(&mut cache)).unwrap();
        assert!((h.node_hours - 120.0 / 3600.0).abs() < 1e-9, "{h:?}");
        assert!((h.gpu_hours - 8.0 * 120.0 / 3600.0).abs() < 1e-9, "{h:?}");
        // 30 s more: counted, not written; the ledger is not read (a line
        // appended by hand is not seen)
        let before = std::fs::read_to_string(ledger::path(&plan.root)).unwrap();
        assert_eq!(before.lines().count(), 1);
        let h = record(&plan, &at(150), FLUSH, &none, Some(&mut cache)).unwrap();
        assert!((h.node_hours - 150.0 / 3600.0).abs() < 1e-9, "{h:?}");
        assert_eq!(
            std::fs::read_to_string(ledger::path(&plan.root)).unwrap(),
            before
        );
        // another process (`infra budget`) records up to 170 s; the run
        // then writes everything up to 200 s: 200 s in all, none twice
        record_all(&plan, &at(170)).unwrap();
        let h = record(&plan, &at(200), Duration::ZERO, &none, Some(&mut cache)).unwrap();
        assert!((h.node_hours - 200.0 / 3600.0).abs() < 1e-9, "{h:?}");
        let all = ledger::read(&plan.root).unwrap();
        let held = hours::held(&all, &plan.name_key);
        assert!((held.node_hours - 200.0 / 3600.0).abs() < 1e-9, "{held:?}");
        assert_eq!(all.len(), 3);
    }
}
