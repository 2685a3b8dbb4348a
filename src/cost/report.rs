//! The budget report: estimate vs metered spend per phase, node group and
//! pattern; burn rate, projection, remaining. Table, JSON, CSV and a
//! self-contained HTML page with an SVG chart. Pure: data in, text out.

use serde::Serialize;

use super::estimate::Estimate;
use super::hours::{self, HoursReport, Measure};
use super::ledger::Spend;

#[derive(Debug, Clone, Serialize)]
pub struct GroupRow {
    pub group: String,
    pub instance_type: String,
    pub market: String,
    pub nodes: u32,
    pub estimated_usd: f64,
    pub metered_usd: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PatternRow {
    pub task: String,
    pub status: String,
    pub estimated_usd: Option<f64>,
    pub metered_usd: Option<f64>,
    pub wall_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub phase: String,
    pub name: String,
    pub provider: String,
    pub budget_usd: Option<f64>,
    pub max_hourly_usd: Option<f64>,
    pub estimated_usd: f64,
    pub estimate_hours: Option<f64>,
    pub metered_usd: f64,
    pub metered_kind: String,
    pub remaining_usd: Option<f64>,
    pub burn_rate_usd_per_hour: Option<f64>,
    pub projected_usd: f64,
    pub tasks: usize,
    pub tasks_done: usize,
    pub prices: String,
    pub groups: Vec<GroupRow>,
    pub patterns: Vec<PatternRow>,
    /// (unix seconds, cumulative USD) at the end of each metered segment.
    pub timeline: Vec<(i64, f64)>,
    /// When the first metered segment began (unix seconds).
    pub started: Option<i64>,
    /// Hours the work still to run is estimated to take.
    pub remaining_hours: Option<f64>,
    pub stopped_by_budget: Option<String>,
    /// Slurm: the allocation hours the phase held (every run's, recorded
    /// in the ledger), against the budget's `gpu_hours`/`node_hours`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hours: Option<HoursReport>,
}

pub struct Inputs<'a> {
    pub phase: &'a str,
    pub name: &'a str,
    pub provider: &'a str,
    pub budget_usd: Option<f64>,
    pub max_hourly_usd: Option<f64>,
    pub full: &'a Estimate,
    pub remaining: &'a Estimate,
    pub spend: &'a [Spend],
    pub patterns: Vec<PatternRow>,
    pub tasks_done: usize,
    pub stopped_by_budget: Option<String>,
    /// Nodes up now: without any, nothing burns and no burn rate is shown.
    pub nodes_up: usize,
    /// The budget's `gpu_hours` and `node_hours`.
    pub budget_gpu_hours: Option<f64>,
    pub budget_node_hours: Option<f64>,
    /// The allocation hours (node, GPU) the work still to run is
    /// estimated to hold.
    pub remaining_alloc_hours: (Option<f64>, Option<f64>),
}

pub fn build(i: Inputs) -> PhaseReport {
    let mine: Vec<&Spend> = i.spend.iter().filter(|s| s.phase == i.phase).collect();
    let metered: f64 = mine.iter().map(|s| s.usd).sum();
    // run-hours: segments share start/end across a run's nodes
    let mut spans: Vec<(&str, &str, f64)> = mine
        .iter()
        .map(|s| (s.start.as_str(), s.end.as_str(), s.hours))
        .collect();
    spans.sort_by(|a, b| a.0.cmp(b.0).then(a.1.cmp(b.1)));
    spans.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    let run_hours: f64 = spans.iter().map(|s| s.2).sum();
    let mut ends: Vec<(i64, f64)> = mine
        .iter()
        .map(|s| {
            (
                chrono::DateTime::parse_from_rfc3339(&s.end)
                    .map(|t| t.timestamp())
                    .unwrap_or(0),
                s.usd,
            )
        })
        .collect();
    ends.sort_by_key(|e| e.0);
    let started = mine
        .iter()
        .filter_map(|s| chrono::DateTime::parse_from_rfc3339(&s.start).ok())
        .map(|t| t.timestamp())
        .min();
    let mut timeline = Vec::new();
    let mut cum = 0.0;
    for (t, usd) in ends {
        cum += usd;
        match timeline.last_mut() {
            Some((lt, lc)) if *lt == t => *lc = cum,
            _ => timeline.push((t, cum)),
        }
    }
    let groups = i
        .full
        .groups
        .iter()
        .map(|g| GroupRow {
            group: g.group.clone(),
            instance_type: g.instance_type.clone(),
            market: g.market.clone(),
            nodes: g.nodes,
            estimated_usd: g.total_usd,
            metered_usd: r6(mine
                .iter()
                .filter(|s| s.group == g.group)
                .map(|s| s.usd)
                .sum()),
        })
        .collect();
    let held = hours::held(i.spend, i.phase);
    let with_hours = i.provider == "slurm"
        || i.budget_gpu_hours.is_some()
        || i.budget_node_hours.is_some()
        || mine.iter().any(|s| hours::is_held(s));
    let (est_node, est_gpu) = i.remaining_alloc_hours;
    let hours = with_hours.then(|| HoursReport {
        gpu_hours: Measure::new(held.gpu_hours, i.budget_gpu_hours, est_gpu),
        node_hours: Measure::new(held.node_hours, i.budget_node_hours, est_node),
    });
    PhaseReport {
        phase: i.phase.into(),
        name: i.name.into(),
        provider: i.provider.into(),
        budget_usd: i.budget_usd,
        max_hourly_usd: i.max_hourly_usd,
        estimated_usd: i.full.total_usd,
        estimate_hours: i.full.hours,
        metered_usd: r6(metered),
        metered_kind: if i.provider == "aws" || mine.iter().any(|s| s.kind == "metered") {
            "metered".into()
        } else {
            "simulated at catalog prices (local provider)".into()
        },
        remaining_usd: i.budget_usd.map(|b| r6(b - metered)),
        burn_rate_usd_per_hour: (run_hours > 0.0 && i.nodes_up > 0)
            .then(|| r6(metered / run_hours)),
        projected_usd: r6(metered + i.remaining.total_usd),
        tasks: i.full.tasks,
        tasks_done: i.tasks_done,
        prices: format!("{} ({})", i.full.prices_from, i.full.prices_date),
        groups,
        patterns: i.patterns,
        timeline,
        started,
        remaining_hours: i.remaining.hours,
        stopped_by_budget: i.stopped_by_budget,
        hours,
    }
}

/// Six decimals; never -0 (an empty sum of f64 is -0.0).
fn r6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6 + 0.0
}

/// Dollars with cents, or four decimals for amounts under a dollar (local
/// campaigns cost fractions of a cent); never "-0.00".
fn money(v: f64) -> String {
    let v = if v.abs() < 5e-7 { 0.0 } else { v };
    if v != 0.0 && v.abs() < 1.0 {
        format!("${v:.4}")
    } else {
        format!("${v:.2}")
    }
}

fn usd(x: Option<f64>) -> String {
    x.map(money).unwrap_or_else(|| "-".into())
}

pub fn table(reports: &[PhaseReport]) -> String {
    let mut out = String::new();
    for r in reports {
        out.push_str(&format!("{} — {} ({})\n", r.phase, r.name, r.provider));
        out.push_str(&format!(
            "  budget {}   estimated {}   spent {} ({})   remaining {}\n",
            usd(r.budget_usd),
            usd(Some(r.estimated_usd)),
            usd(Some(r.metered_usd)),
            r.metered_kind,
            usd(r.remaining_usd)
        ));
        out.push_str(&format!(
            "  burn rate {}/h   projected at completion {}   tasks {}/{} done   prices: {}\n",
            usd(r.burn_rate_usd_per_hour),
            usd(Some(r.projected_usd)),
            r.tasks_done,
            r.tasks,
            r.prices
        ));
        if let Some(h) = &r.hours {
            let shown: Vec<String> = h
                .measures()
                .iter()
                .filter(|(_, m)| m.shown())
                .map(|(k, m)| format!("{k} {}", m.text()))
                .collect();
            if !shown.is_empty() {
                out.push_str(&format!("  {}\n", shown.join("   ")));
            }
        }
        if let Some(s) = &r.stopped_by_budget {
            out.push_str(&format!("  stopped by the budget: {s}\n"));
        }
        out.push_str(&format!(
            "  {:<12} {:<14} {:<10} {:>5} {:>12} {:>12}\n",
            "group", "type", "market", "nodes", "estimated", "spent"
        ));
        for g in &r.groups {
            out.push_str(&format!(
                "  {:<12} {:<14} {:<10} {:>5} {:>12} {:>12}\n",
                g.group,
                g.instance_type,
                g.market,
                g.nodes,
                usd(Some(g.estimated_usd)),
                usd(Some(g.metered_usd))
            ));
        }
        let shown = 15;
        out.push_str(&format!(
            "  {:<44} {:<10} {:>11} {:>11}\n",
            "pattern", "status", "estimated", "spent"
        ));
        for p in r.patterns.iter().take(shown) {
            out.push_str(&format!(
                "  {:<44} {:<10} {:>11} {:>11}\n",
                p.task,
                p.status,
                usd(p.estimated_usd),
                p.metered_usd
                    .map(|v| format!("${v:.4}"))
                    .unwrap_or("-".into())
            ));
        }
        if r.patterns.len() > shown {
            out.push_str(&format!(
                "  ... {} more (--format csv lists all)\n",
                r.patterns.len() - shown
            ));
        }
    }
    out
}

pub fn csv(reports: &[PhaseReport]) -> String {
    let mut out = String::from("level,phase,group,pattern,status,estimated_usd,spent_usd,budget_usd,remaining_usd,burn_rate_usd_per_hour,projected_usd\n");
    let f = |x: Option<f64>| {
        x.map(crate::results::table::format_float)
            .unwrap_or_default()
    };
    for r in reports {
        out.push_str(&format!(
            "phase,{},,,,{},{},{},{},{},{}\n",
            r.phase,
            f(Some(r.estimated_usd)),
            f(Some(r.metered_usd)),
            f(r.budget_usd),
            f(r.remaining_usd),
            f(r.burn_rate_usd_per_hour),
            f(Some(r.projected_usd))
        ));
        for g in &r.groups {
            out.push_str(&format!(
                "group,{},{},,,{},{},,,,\n",
                r.phase,
                g.group,
                f(Some(g.estimated_usd)),
                f(Some(g.metered_usd))
            ));
        }
        for p in &r.patterns {
            out.push_str(&format!(
                "pattern,{},,{},{},{},{},,,,\n",
                r.phase,
                p.task,
                p.status,
                f(p.estimated_usd),
                f(p.metered_usd)
            ));
        }
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Cumulative spend over time against the budget line, with the estimate
/// (a straight line from the first spend to the estimated total at the
/// estimated end) and the projection (from the spend so far to what the
/// rest is estimated to cost, when it is estimated to end).
pub fn svg(r: &PhaseReport) -> String {
    let (w, h, l, b, t, rt) = (720.0, 260.0, 64.0, 36.0, 16.0, 16.0);
    let budget = r.budget_usd.unwrap_or(0.0);
    let top = [budget, r.metered_usd, r.projected_usd, r.estimated_usd]
        .iter()
        .cloned()
        .fold(0.0f64, f64::max)
        .max(1e-6)
        * 1.1;
    let secs = |hours: f64| (hours * 3600.0).round() as i64;
    // the estimate, from the first spend; the projection, from the last
    let est_line = match (r.started, r.estimate_hours) {
        (Some(s), Some(hrs)) if r.estimated_usd > 0.0 => {
            Some(((s, 0.0), (s + secs(hrs).max(1), r.estimated_usd)))
        }
        _ => None,
    };
    let proj_line = match (r.timeline.last(), r.remaining_hours) {
        (Some(&(lt, lc)), Some(hrs)) if r.projected_usd > lc + 1e-9 => {
            Some(((lt, lc), (lt + secs(hrs).max(1), r.projected_usd)))
        }
        _ => None,
    };
    let first = r.started.or(r.timeline.first().map(|p| p.0));
    let last = [
        r.timeline.last().map(|p| p.0),
        est_line.map(|l| l.1 .0),
        proj_line.map(|l| l.1 .0),
    ]
    .into_iter()
    .flatten()
    .max();
    let (t0, t1) = match (first, last) {
        (Some(a), Some(z)) if z > a => (a - (z - a) / 20, z),
        (Some(a), _) => (a - 60, a + 60),
        _ => (0, 1),
    };
    let x = |ts: i64| l + (ts - t0) as f64 / (t1 - t0).max(1) as f64 * (w - l - rt);
    let y = |usd: f64| t + (1.0 - usd / top) * (h - t - b);
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w} {h}\" width=\"100%\" role=\"img\" aria-label=\"cumulative spend of {} against its budget, its estimate and its projection\">", esc(&r.phase));
    s.push_str(&format!(
        "<rect x=\"{l}\" y=\"{t}\" width=\"{}\" height=\"{}\" fill=\"#fafafa\" stroke=\"#ccc\"/>",
        w - l - rt,
        h - t - b
    ));
    for k in 0..=4 {
        let v = top * k as f64 / 4.0;
        s.push_str(&format!("<line x1=\"{l}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e4e4e4\"/><text x=\"{}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\" fill=\"#555\">{}</text>", w - rt, l - 6.0, y(v) + 4.0, money(v), y = y(v)));
    }
    if budget > 0.0 {
        s.push_str(&format!("<line x1=\"{l}\" x2=\"{}\" y1=\"{yb:.1}\" y2=\"{yb:.1}\" stroke=\"#c62828\" stroke-width=\"2\" stroke-dasharray=\"6 4\"/><text x=\"{}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"end\" fill=\"#c62828\">budget {}</text>", w - rt, w - rt - 4.0, y(budget) - 5.0, money(budget), yb = y(budget)));
    }
    let line = |(a, b): ((i64, f64), (i64, f64)), color: &str, label: &str, value: f64| {
        format!("<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{color}\" stroke-width=\"2\" stroke-dasharray=\"2 4\"/><circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"end\" fill=\"{color}\">{label} {}</text>",
            x(a.0), y(a.1), x(b.0), y(b.1), x(b.0), y(b.1), x(b.0) - 6.0, y(b.1) + 16.0, money(value))
    };
    if let Some(l) = est_line {
        s.push_str(&line(l, "#6a1b9a", "estimated", r.estimated_usd));
    }
    if let Some(l) = proj_line {
        s.push_str(&line(l, "#ef6c00", "projected", r.projected_usd));
    }
    if r.timeline.is_empty() {
        s.push_str(&format!("<text x=\"{}\" y=\"{}\" font-size=\"13\" text-anchor=\"middle\" fill=\"#777\">no spend recorded yet</text>", (w + l) / 2.0, h / 2.0));
    } else {
        let mut pts = vec![format!("{:.1},{:.1}", x(t0), y(0.0))];
        let mut prev = 0.0;
        for (ts, c) in &r.timeline {
            pts.push(format!("{:.1},{:.1}", x(*ts), y(prev)));
            pts.push(format!("{:.1},{:.1}", x(*ts), y(*c)));
            prev = *c;
        }
        s.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"#1565c0\" stroke-width=\"2.5\" points=\"{}\"/>",
            pts.join(" ")
        ));
        let (lt, lc) = r.timeline[r.timeline.len() - 1];
        s.push_str(&format!("<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"#1565c0\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"end\" fill=\"#1565c0\">spent {}</text>", x(lt), y(lc), x(lt) - 8.0, y(lc) - 8.0, money(lc)));
        let fmt = |ts: i64| {
            chrono::DateTime::from_timestamp(ts, 0)
                .map(|d| d.format("%m-%d %H:%M").to_string())
                .unwrap_or_default()
        };
        s.push_str(&format!("<text x=\"{l}\" y=\"{}\" font-size=\"11\" fill=\"#555\">{}</text><text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\" fill=\"#555\">{} UTC</text>", h - 12.0, fmt(t0), w - rt, h - 12.0, fmt(t1)));
    }
    s.push_str("</svg>");
    s
}

pub fn html(reports: &[PhaseReport], generated: &str) -> String {
    let mut body = String::new();
    for r in reports {
        body.push_str(&format!(
            "<section><h2>{} <small>{}</small></h2>",
            esc(&r.phase),
            esc(&r.name)
        ));
        body.push_str("<div class=\"cards\">");
        for (k, v) in [
            ("Budget", usd(r.budget_usd)),
            ("Estimated", usd(Some(r.estimated_usd))),
            ("Spent", usd(Some(r.metered_usd))),
            ("Remaining", usd(r.remaining_usd)),
            ("Burn rate", format!("{}/h", usd(r.burn_rate_usd_per_hour))),
            ("Projected", usd(Some(r.projected_usd))),
            ("Tasks", format!("{}/{}", r.tasks_done, r.tasks)),
        ] {
            body.push_str(&format!(
                "<div class=\"card\"><div class=\"k\">{k}</div><div class=\"v\">{}</div></div>",
                esc(&v)
            ));
        }
        if let Some(h) = &r.hours {
            for (k, m) in h.measures().into_iter().filter(|(_, m)| m.shown()) {
                let k = if k == "node-hours" { "Node-hours" } else { k };
                body.push_str(&format!(
                    "<div class=\"card\"><div class=\"k\">{k}</div><div class=\"v\">{}</div></div>",
                    esc(&m.text())
                ));
            }
        }
        body.push_str("</div>");
        if let Some(s) = &r.stopped_by_budget {
            body.push_str(&format!(
                "<p class=\"warn\">Stopped by the budget: {}</p>",
                esc(s)
            ));
        }
        // a budget in hours alone (Slurm) has no dollar curve to draw
        if r.hours.is_none() || r.budget_usd.is_some() || r.metered_usd > 0.0 {
            body.push_str(&svg(r));
        }
        body.push_str(&format!(
            "<p class=\"note\">Spend: {}. Prices: {}.</p>",
            esc(&r.metered_kind),
            esc(&r.prices)
        ));
        body.push_str("<h3>Node groups</h3><table><tr><th>group</th><th>type</th><th>market</th><th class=\"n\">nodes</th><th class=\"n\">estimated</th><th class=\"n\">spent</th></tr>");
        for g in &r.groups {
            body.push_str(&format!("<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>", esc(&g.group), esc(&g.instance_type), esc(&g.market), g.nodes, usd(Some(g.estimated_usd)), usd(Some(g.metered_usd))));
        }
        body.push_str("</table><h3>Patterns</h3><table><tr><th>pattern</th><th>status</th><th class=\"n\">estimated</th><th class=\"n\">spent</th><th class=\"n\">wall</th></tr>");
        for p in &r.patterns {
            body.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                esc(&p.task), esc(&p.status), usd(p.estimated_usd), p.metered_usd.map(|v| format!("${v:.4}")).unwrap_or("-".into()),
                p.wall_seconds.map(|w| format!("{w:.1}s")).unwrap_or("-".into())
            ));
        }
        body.push_str("</table></section>");
    }
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>infra budget</title><style>\
body{{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:980px;padding:20px 28px;color:#222}}\
h1{{font-size:22px;margin:0 0 4px}}h2{{font-size:18px;margin:28px 0 10px;border-bottom:1px solid #ddd;padding-bottom:4px}}h2 small{{color:#666;font-weight:normal}}h3{{font-size:15px;margin:18px 0 6px}}\
.cards{{display:flex;flex-wrap:wrap;gap:10px;margin-bottom:12px}}.card{{background:#f3f6fa;border-radius:6px;padding:8px 12px;min-width:100px}}.k{{color:#666;font-size:12px}}.v{{font-size:18px;font-weight:600}}\
table{{border-collapse:collapse;width:100%}}th,td{{padding:4px 8px;border-bottom:1px solid #eee;text-align:left}}th{{background:#fafafa}}.n{{text-align:right;font-variant-numeric:tabular-nums}}\
.note{{color:#666;font-size:12px}}.warn{{color:#c62828;font-weight:600}}</style></head><body><h1>Budget report</h1><div class=\"note\">generated {}</div>{}</body></html>\n",
        esc(generated),
        body
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Slurm campaign with a budget in node-hours: no dollar curve, and
    /// the GPU-hours of CPU-only allocations are not shown.
    fn slurm_report() -> PhaseReport {
        PhaseReport {
            phase: "quickstart@slurm".into(),
            name: "Quickstart".into(),
            provider: "slurm".into(),
            budget_usd: None,
            max_hourly_usd: None,
            estimated_usd: 0.0,
            estimate_hours: Some(0.01),
            metered_usd: 0.0,
            metered_kind: "metered".into(),
            remaining_usd: None,
            burn_rate_usd_per_hour: None,
            projected_usd: 0.0,
            tasks: 1,
            tasks_done: 1,
            prices: "built-in catalog (2026-08)".into(),
            groups: vec![GroupRow {
                group: "cpu".into(),
                instance_type: "c6i.xlarge".into(),
                market: "spot".into(),
                nodes: 2,
                estimated_usd: 0.0,
                metered_usd: 0.0,
            }],
            patterns: vec![PatternRow {
                task: "quickstart-L0-sum-1e5".into(),
                status: "succeeded".into(),
                estimated_usd: Some(0.0),
                metered_usd: Some(0.0),
                wall_seconds: Some(0.5),
            }],
            timeline: vec![],
            started: None,
            remaining_hours: Some(0.0),
            stopped_by_budget: None,
            hours: Some(HoursReport {
                gpu_hours: Measure::new(0.0, None, Some(0.0)),
                node_hours: Measure::new(0.0011, Some(0.5), Some(0.0)),
            }),
        }
    }

    #[test]
    fn a_slurm_report_in_hours_shows_the_hours_it_has_and_no_dollar_chart() {
        let r = slurm_report();
        insta::assert_snapshot!(table(std::slice::from_ref(&r)));
        let page = html(&[r], "2026-11-28T09:42:50Z");
        assert!(page.contains("Node-hours") && page.contains("0.0011 used of 0.50"));
        assert!(
            !page.contains("GPU-hours") && !page.contains("<svg"),
            "{page}"
        );
    }
}
