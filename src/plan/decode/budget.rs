//! `budget`: what the campaign may spend in all and per hour, and whether
//! reaching it stops the work.

use crate::plan::diag::Diags;
use crate::plan::fields::{boolean, obj, positive, Obj};
use crate::plan::model::Budget;

pub(super) fn budget(d: &mut Diags, top: &Obj) -> Option<Budget> {
    let v = top.get("budget")?;
    let o = obj(d, v, "budget")?;
    o.known(
        d,
        &[
            "usd",
            "max_hourly_usd",
            "hard_stop",
            "accept_unpriced",
            "gpu_hours",
            "node_hours",
        ],
    );
    let gpu_hours = o
        .get("gpu_hours")
        .and_then(|v| positive(d, v, "budget.gpu_hours", 100_000_000.0));
    let node_hours = o
        .get("node_hours")
        .and_then(|v| positive(d, v, "budget.node_hours", 100_000_000.0));
    // a budget in allocation hours (Slurm) needs no dollars
    let hours = o.get("gpu_hours").is_some() || o.get("node_hours").is_some();
    let usd = if hours && o.get("usd").is_none() {
        Some(f64::INFINITY)
    } else {
        o.required(d, "usd", "1000")
            .and_then(|v| positive(d, v, "budget.usd", 10_000_000.0))
    };
    let max_hourly_usd = o
        .get("max_hourly_usd")
        .and_then(|v| positive(d, v, "budget.max_hourly_usd", 100_000.0));
    let hard_stop = o
        .get("hard_stop")
        .and_then(|v| boolean(d, v, "budget.hard_stop"))
        .unwrap_or(true);
    let accept_unpriced = o
        .get("accept_unpriced")
        .and_then(|v| boolean(d, v, "budget.accept_unpriced"))
        .unwrap_or(false);
    Some(Budget {
        usd: usd?,
        max_hourly_usd,
        hard_stop,
        accept_unpriced,
        gpu_hours,
        node_hours,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::decode::testing::{lines, node, top};

    fn decode(text: &str) -> (Option<Budget>, Diags) {
        let n = node(text);
        let mut d = Diags::default();
        let b = budget(&mut d, &top(&n));
        (b, d)
    }

    #[test]
    fn a_budget_stops_hard_unless_told_otherwise() {
        let (b, d) = decode(r#"{"budget": {"usd": 100, "max_hourly_usd": 2.5}}"#);
        assert!(d.is_empty());
        assert_eq!(
            b,
            Some(Budget {
                usd: 100.0,
                max_hourly_usd: Some(2.5),
                hard_stop: true,
                accept_unpriced: false,
                gpu_hours: None,
                node_hours: None,
            })
        );
        let (b, _) = decode(r#"{"budget": {"usd": 1, "hard_stop": false}}"#);
        assert!(!b.unwrap().hard_stop);
        let (b, _) = decode(r#"{"budget": {"usd": 1, "accept_unpriced": true}}"#);
        assert!(b.unwrap().accept_unpriced);
        assert_eq!(decode("{}").0, None);
    }

    #[test]
    fn budget_problems_name_the_field() {
        let (b, d) = decode(
            "{\"budget\": {\n  \"max_hourly_usd\": 200000,\n  \"hard_stop\": 1,\n  \"dollars\": 5\n}}",
        );
        assert_eq!(b, None);
        assert_eq!(
            lines(&d),
            [
                "4:14 budget.dollars: unknown field \"dollars\"",
                "1:12 budget.usd: missing required field \"usd\" in budget",
                "2:21 budget.max_hourly_usd: 200000 is too large (at most 100000)",
                "3:16 budget.hard_stop: expected true or false, found a number",
            ]
        );
        let (_, d) = decode(r#"{"budget": {"usd": -5}}"#);
        assert_eq!(
            lines(&d),
            ["1:20 budget.usd: must be greater than 0, found -5"]
        );
    }
}
