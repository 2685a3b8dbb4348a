//! Allocation hours, Slurm's budget: what a phase's allocations held as
//! the ledger records it (every run's, and the time between runs), against
//! the plan's `budget.gpu_hours` / `budget.node_hours`. Pure.

use serde::Serialize;

use super::ledger::Spend;

/// Node-hours and GPU-hours held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Held {
    pub node_hours: f64,
    pub gpu_hours: f64,
}

impl Held {
    pub fn plus(self, o: Held) -> Held {
        Held {
            node_hours: self.node_hours + o.node_hours,
            gpu_hours: self.gpu_hours + o.gpu_hours,
        }
    }

    /// What was held since `before` (never negative).
    pub fn since(self, before: Held) -> Held {
        Held {
            node_hours: (self.node_hours - before.node_hours).max(0.0),
            gpu_hours: (self.gpu_hours - before.gpu_hours).max(0.0),
        }
    }
}

/// Whether `e` records allocation hours (a Slurm allocation's entry).
pub fn is_held(e: &Spend) -> bool {
    e.provider == "slurm"
}

/// The hours the ledger records as held by the phase's allocations.
pub fn held(entries: &[Spend], phase: &str) -> Held {
    entries
        .iter()
        .filter(|e| e.phase == phase && is_held(e))
        .fold(Held::default(), |h, e| {
            h.plus(Held {
                node_hours: e.hours,
                gpu_hours: e.gpu_hours.unwrap_or(0.0),
            })
        })
}

/// The hours already recorded for each Slurm job of the phase (by job id,
/// the entries' `instance`): the meter records only what a job held past
/// them.
pub fn recorded_per_job(entries: &[Spend], phase: &str) -> std::collections::BTreeMap<String, f64> {
    let mut m = std::collections::BTreeMap::new();
    for e in entries.iter().filter(|e| e.phase == phase && is_held(e)) {
        if let Some(job) = &e.instance {
            *m.entry(job.clone()).or_insert(0.0) += e.hours;
        }
    }
    m
}

/// Hours with the digits that matter (0.0021, 0.25, 12.5).
pub fn fmt(h: f64) -> String {
    let h = h + 0.0;
    if h >= 10.0 {
        format!("{h:.1}")
    } else if h >= 0.1 {
        format!("{h:.2}")
    } else {
        format!("{h:.4}")
    }
}

/// The budget's hours for one measure: held, allowed, what is left.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Measure {
    pub used: f64,
    pub budget: Option<f64>,
    pub remaining: Option<f64>,
    /// What the plan's work still to run is estimated to hold.
    pub estimated: Option<f64>,
}

impl Measure {
    pub fn new(used: f64, budget: Option<f64>, estimated: Option<f64>) -> Measure {
        let r6 = |x: f64| (x * 1e6).round() / 1e6 + 0.0;
        Measure {
            used: r6(used),
            budget,
            remaining: budget.map(|b| r6(b - used)),
            estimated: estimated.map(r6),
        }
    }

    /// "0.0123 used of 10.0, 9.99 remaining" (or "0.0123 used, no budget").
    /// Worth showing: something used, budgeted or estimated (a cluster's
    /// GPU-hours of CPU-only allocations are not).
    pub fn shown(&self) -> bool {
        self.used > 0.0 || self.budget.is_some() || self.estimated.is_some_and(|e| e > 0.0)
    }

    pub fn text(&self) -> String {
        match (self.budget, self.remaining) {
            (Some(b), Some(r)) => format!(
                "{} used of {}, {} remaining",
                fmt(self.used),
                fmt(b),
                fmt(r.max(0.0))
            ),
            _ => format!("{} used, no budget", fmt(self.used)),
        }
    }
}

/// A phase's allocation hours for the budget report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct HoursReport {
    pub gpu_hours: Measure,
    pub node_hours: Measure,
}

impl HoursReport {
    /// Each measure with its name as the report shows it.
    pub fn measures(&self) -> [(&'static str, Measure); 2] {
        [
            ("GPU-hours", self.gpu_hours),
            ("node-hours", self.node_hours),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::ledger::RunSpan;

    fn entry(phase: &str, provider: &str, job: &str, hours: f64, gpus: f64) -> Spend {
        let span = RunSpan {
            phase,
            provider,
            start: chrono::Utc::now(),
            end: chrono::Utc::now(),
            hours,
            kind: "metered",
        };
        let mut e = span.spend(format!("gpu-0 (job {job})"), "gpu", "t", "m", 0.0);
        e.instance = Some(job.into());
        e.gpu_hours = (provider == "slurm").then_some(hours * gpus);
        e
    }

    #[test]
    fn held_hours_add_up_the_phase_s_slurm_entries_of_every_run() {
        let es = vec![
            entry("p", "slurm", "12", 0.5, 8.0),
            entry("p", "slurm", "12", 0.25, 8.0),
            entry("p", "slurm", "13", 1.0, 0.0),
            entry("other", "slurm", "14", 9.0, 8.0),
            entry("p", "aws", "i-1", 7.0, 0.0),
        ];
        let h = held(&es, "p");
        assert_eq!((h.node_hours, h.gpu_hours), (1.75, 6.0));
        let per = recorded_per_job(&es, "p");
        assert_eq!(per.get("12"), Some(&0.75));
        assert_eq!(per.get("13"), Some(&1.0));
        assert_eq!(per.get("i-1"), None);
    }

    #[test]
    fn a_measure_says_what_is_used_and_what_remains() {
        let m = Measure::new(0.0123, Some(10.0), Some(2.0));
        assert_eq!(m.remaining, Some(9.9877));
        assert_eq!(m.text(), "0.0123 used of 10.0, 9.99 remaining");
        assert_eq!(Measure::new(3.0, None, None).text(), "3.00 used, no budget");
        // over the budget: nothing remains (not a negative amount)
        assert_eq!(
            Measure::new(0.003, Some(0.002), None).text(),
            "0.0030 used of 0.0020, 0.0000 remaining"
        );
    }
}
