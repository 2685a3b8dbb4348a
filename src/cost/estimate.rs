//! The cost estimate, pure: nodes × hours × price per node group, hours
//! from the tasks' estimates scheduled onto the slots, plus storage.

use serde::Serialize;

use super::hours::{self, Held};
use crate::catalog::Catalog;
use crate::plan::{Market, Plan};
use crate::runner::scheduler::{simulate, Policy, Pool, SimTask, Simulation};
use crate::tasks::TaskDef;

/// gp3 storage, USD per GB-month (us-east-1), and hours in a billing month.
pub const GP3_USD_PER_GB_MONTH: f64 = 0.08;
pub const HOURS_PER_MONTH: f64 = 730.0;

/// A public IPv4 address, USD per hour (AWS has billed every public IPv4
/// address since February 2024, in every region). Nodes reach SSM and S3
/// through one unless they sit behind the NAT gateway (multi-card EFA).
pub const PUBLIC_IPV4_USD_PER_HOUR: f64 = 0.005;

/// A NAT gateway and its Elastic IP, USD per hour (AWS list prices; the
/// reference catalog has none). Its data processing ($0.045/GB) depends on
/// traffic and is not estimated.
pub fn nat_usd_per_hour(region: &str) -> f64 {
    let gateway = match region {
        "eu-north-1" => 0.046,
        _ => 0.045,
    };
    gateway + 0.005
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GroupEstimate {
    pub group: String,
    pub instance_type: String,
    pub market: String,
    pub nodes: u32,
    pub hours: f64,
    /// The per-node price planned with (on-demand, or spot median).
    pub usd_per_node_hour: Option<f64>,
    pub spot_worst_usd_per_node_hour: Option<f64>,
    pub on_demand_usd_per_node_hour: Option<f64>,
    pub storage_usd: f64,
    /// The nodes' public IPv4 addresses.
    pub public_ipv4_usd: f64,
    pub compute_usd: f64,
    pub total_usd: f64,
    pub total_worst_usd: f64,
    pub total_on_demand_usd: Option<f64>,
    pub hourly_usd: f64,
    /// Busy slot-hours of the group's tasks.
    pub task_hours: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Estimate {
    pub region: String,
    pub groups: Vec<GroupEstimate>,
    /// Hours the nodes are up: provisioning + setup + the scheduled makespan,
    /// or the plan's explicit `estimate.duration`.
    pub hours: Option<f64>,
    pub makespan_hours: Option<f64>,
    pub lower_bound_hours: Option<f64>,
    pub total_usd: f64,
    pub total_worst_usd: f64,
    pub total_on_demand_usd: Option<f64>,
    pub hourly_usd: f64,
    pub prices_from: String,
    pub prices_date: String,
    /// Groups whose instance type or region has no price in the catalog.
    pub unpriced: Vec<String>,
    pub tasks: usize,
    pub tasks_without_estimate: usize,
    /// What bounds the results bucket's storage (AWS): versioning keeps an
    /// overwritten or deleted object a fixed number of days.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_note: Option<String>,
}

/// The note on the results bucket's storage for a plan on AWS.
pub fn bucket_note(plan: &Plan) -> Option<String> {
    let days = crate::stacks::policy::NONCURRENT_VERSION_DAYS;
    (plan.provider == crate::plan::ProviderKind::Aws).then(|| {
        format!(
            "results bucket: versioned; an overwritten or deleted object is kept {days} days, then expires (storage stays at the current results plus at most {days} days of replaced ones; S3 storage is not in the totals)"
        )
    })
}

pub fn pool_for(plan: &Plan) -> Pool {
    Pool::new(plan.node_groups.iter().flat_map(|g| {
        (0..g.count).map(move |i| (format!("{}-{i}", g.name), g.name.clone(), g.slots))
    }))
}

pub fn schedule(plan: &Plan, tasks: &[&TaskDef]) -> Option<Simulation> {
    if tasks.is_empty() || tasks.iter().all(|t| t.estimate_seconds.is_none()) {
        return None;
    }
    let sim: Vec<SimTask> = tasks
        .iter()
        .map(|t| SimTask {
            seconds: t.estimate_seconds.unwrap_or(0.0),
            ranks: t.nodes,
            group: t.node_group.clone(),
        })
        .collect();
    Some(simulate(&sim, &pool_for(plan), Policy::LongestFirst))
}

/// Estimate the cost of running `tasks` (the whole plan, or what is left).
pub fn estimate(plan: &Plan, tasks: &[&TaskDef], catalog: &Catalog, prices_from: &str) -> Estimate {
    let sim = schedule(plan, tasks);
    let overhead = plan
        .estimate
        .provisioning
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
        + plan.estimate.setup.map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let hours = match (plan.estimate.duration, &sim) {
        (Some(d), _) => Some(d.as_secs_f64() / 3600.0),
        (None, Some(s)) => Some((s.makespan + overhead) / 3600.0),
        (None, None) if tasks.is_empty() => Some(0.0),
        (None, None) => None,
    };
    let h = hours.unwrap_or(0.0);
    let mut groups = Vec::new();
    let mut unpriced = Vec::new();
    for g in &plan.node_groups {
        // a Slurm cluster has no dollar price: its allocations cost $0 here
        let local = g.instance_type == "local" || plan.provider == crate::plan::ProviderKind::Slurm;
        let price = if plan.provider == crate::plan::ProviderKind::Slurm {
            None
        } else {
            catalog.price(&g.instance_type, &plan.region, g.market)
        };
        let od = catalog
            .price(&g.instance_type, &plan.region, Market::OnDemand)
            .map(|p| p.usd_per_hour);
        if price.is_none() && !local {
            unpriced.push(g.name.clone());
        }
        let per = price
            .map(|p| p.usd_per_hour)
            .or(if local { Some(0.0) } else { None });
        let worst = price
            .map(|p| p.spot.map(|s| s.max).unwrap_or(p.usd_per_hour))
            .or(per);
        let n = g.count as f64;
        let storage = if local {
            0.0
        } else {
            n * g.volume_gb as f64 * GP3_USD_PER_GB_MONTH / HOURS_PER_MONTH * h
        };
        let compute = n * h * per.unwrap_or(0.0);
        let ipv4_hourly = if local || crate::stacks::multi_card_efa(g, catalog) {
            0.0
        } else {
            n * PUBLIC_IPV4_USD_PER_HOUR
        };
        // fixed costs of the nodes besides their type's price
        let fixed = storage + ipv4_hourly * h;
        let task_hours = tasks
            .iter()
            .filter(|t| t.node_group == g.name)
            .map(|t| t.estimate_seconds.unwrap_or(0.0) * t.nodes as f64)
            .sum::<f64>()
            / 3600.0;
        groups.push(GroupEstimate {
            group: g.name.clone(),
            instance_type: g.instance_type.clone(),
            market: g.market.as_str().into(),
            nodes: g.count,
            hours: h,
            usd_per_node_hour: per,
            spot_worst_usd_per_node_hour: if g.market == Market::Spot {
                worst
            } else {
                None
            },
            on_demand_usd_per_node_hour: od,
            storage_usd: round(storage),
            public_ipv4_usd: round(ipv4_hourly * h),
            compute_usd: round(compute),
            total_usd: round(compute + fixed),
            total_worst_usd: round(n * h * worst.unwrap_or(0.0) + fixed),
            total_on_demand_usd: od.map(|p| round(n * h * p + fixed)),
            hourly_usd: round(n * per.unwrap_or(0.0) + ipv4_hourly),
            task_hours: round(task_hours),
        });
    }
    // multi-card EFA nodes reach S3 and SSM through the base stack's NAT
    // gateway, which is billed for as long as the nodes run
    if plan
        .node_groups
        .iter()
        .any(|g| crate::stacks::multi_card_efa(g, catalog))
    {
        let p = nat_usd_per_hour(&plan.region);
        groups.push(GroupEstimate {
            group: "network".into(),
            instance_type: "NAT gateway".into(),
            market: "hourly".into(),
            nodes: 1,
            hours: round(h),
            usd_per_node_hour: Some(p),
            spot_worst_usd_per_node_hour: Some(p),
            on_demand_usd_per_node_hour: Some(p),
            storage_usd: 0.0,
            public_ipv4_usd: 0.0,
            compute_usd: round(h * p),
            total_usd: round(h * p),
            total_worst_usd: round(h * p),
            total_on_demand_usd: Some(round(h * p)),
            hourly_usd: p,
            task_hours: 0.0,
        });
    }
    let sum = |f: &dyn Fn(&GroupEstimate) -> f64| round(groups.iter().map(f).sum());
    let all_od = groups
        .iter()
        .all(|g| g.total_on_demand_usd.is_some() || g.instance_type == "local");
    Estimate {
        region: plan.region.clone(),
        hours,
        makespan_hours: sim.as_ref().map(|s| s.makespan / 3600.0),
        lower_bound_hours: sim.as_ref().map(|s| s.lower_bound / 3600.0),
        total_usd: sum(&|g| g.total_usd),
        total_worst_usd: sum(&|g| g.total_worst_usd),
        total_on_demand_usd: all_od.then(|| sum(&|g| g.total_on_demand_usd.unwrap_or(0.0))),
        hourly_usd: sum(&|g| g.hourly_usd),
        prices_from: prices_from.into(),
        prices_date: catalog.date.clone(),
        unpriced,
        bucket_note: bucket_note(plan),
        tasks: tasks.len(),
        tasks_without_estimate: tasks
            .iter()
            .filter(|t| t.estimate_seconds.is_none())
            .count(),
        groups,
    }
}

/// Four decimals; never -0 (an empty sum of f64 is -0.0).
fn round(x: f64) -> f64 {
    (x * 1e4).round() / 1e4 + 0.0
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    pub ok: bool,
    pub budget_usd: Option<f64>,
    pub spent_usd: f64,
    pub remaining_usd: Option<f64>,
    pub max_hourly_usd: Option<f64>,
    pub reasons: Vec<String>,
    pub warnings: Vec<String>,
    /// Slurm: the allocation hours the estimate holds, against the
    /// budget's `gpu_hours`/`node_hours`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hours: Option<AllocHours>,
    /// When the estimate is over the budget: by how much, and what would
    /// fit (`fit::what_fits`; the command layer fills it in).
    pub fits: Vec<String>,
}

/// Allocation hours (Slurm's budget): estimated, and what the budget allows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AllocHours {
    pub node_hours: Option<f64>,
    pub gpu_hours: Option<f64>,
    pub budget_node_hours: Option<f64>,
    pub budget_gpu_hours: Option<f64>,
    /// What the phase's allocations held already (the ledger: earlier
    /// runs, and the time between them).
    pub used_node_hours: f64,
    pub used_gpu_hours: f64,
    /// The budget's hours minus those used.
    pub remaining_node_hours: Option<f64>,
    pub remaining_gpu_hours: Option<f64>,
}

/// The node-hours and GPU-hours the plan's nodes are held for `hours`.
pub fn alloc_hours(plan: &Plan, hours: Option<f64>) -> (Option<f64>, Option<f64>) {
    let Some(h) = hours else { return (None, None) };
    let nodes: f64 = plan.node_groups.iter().map(|g| g.count as f64).sum();
    let gpus: f64 = plan
        .node_groups
        .iter()
        .map(|g| g.count as f64 * g.gpus.unwrap_or(0) as f64)
        .sum();
    (Some(nodes * h), Some(gpus * h))
}

/// Does the budget pay for the estimate? `spent` is what the ledger holds.
pub fn verdict(plan: &Plan, est: &Estimate, spent: f64) -> Verdict {
    verdict_held(plan, est, spent, Held::default())
}

/// [`verdict`], with `held` the allocation hours the ledger records as
/// held by the phase (Slurm): the estimate's hours must fit in what is
/// left of the budget's.
pub fn verdict_held(plan: &Plan, est: &Estimate, spent: f64, held: Held) -> Verdict {
    let mut reasons = Vec::new();
    let mut warnings = Vec::new();
    let budget = plan.budget.as_ref();
    let remaining = budget.map(|b| b.usd - spent);
    if let Some(b) = budget {
        let rem = b.usd - spent;
        if est.hours.is_none() && est.tasks > 0 {
            warnings.push("no task has a duration estimate, so the total cost is unknown (hint: add \"estimate\": {\"default\": \"30m\"} to the plan)".into());
        }
        if est.total_usd > rem + 1e-9 {
            reasons.push(format!(
                "the estimate ${:.2} exceeds the remaining budget ${:.2} (budget ${:.2} - spent ${:.2})\n  (hint: raise \"budget.usd\" in the plan, run fewer patterns, use fewer or cheaper nodes, or spot instances)",
                est.total_usd, rem, b.usd, spent
            ));
        } else if est.total_worst_usd > rem + 1e-9 {
            warnings.push(format!("at the worst AZ's spot price the campaign would cost ${:.2}, more than the remaining ${:.2}", est.total_worst_usd, rem));
        }
        if let Some(cap) = b.max_hourly_usd {
            if est.hourly_usd > cap + 1e-9 {
                reasons.push(format!(
                    "the nodes cost ${:.2}/h, above \"budget.max_hourly_usd\" ${:.2}/h\n  (hint: raise max_hourly_usd, or use fewer or cheaper nodes)",
                    est.hourly_usd, cap
                ));
            }
        }
    } else if est.total_usd > 0.0 {
        warnings.push("the plan has no budget: nothing limits the spend (hint: add \"budget\": {\"usd\": ...})".into());
    }
    if !est.unpriced.is_empty() {
        let what: Vec<String> = est
            .groups
            .iter()
            .filter(|g| est.unpriced.contains(&g.group))
            .map(|g| format!("{} ({})", g.group, g.instance_type))
            .collect();
        let accepted = budget.is_some_and(|b| b.accept_unpriced);
        if plan.provider.is_local() || accepted {
            // a local trial spends nothing; or the plan said so
            warnings.push(format!(
                "no catalog price for node group(s) {} in {}; they count as $0",
                what.join(", "),
                est.region
            ));
        } else {
            reasons.push(format!(
                "no catalog price for node group(s) {} in {}: the cost cannot be estimated\n  (hint: `infra catalog refresh --region {}` fetches this region's prices; or set \"accept_unpriced\": true in \"budget\" to count them as $0)",
                what.join(", "),
                est.region,
                est.region
            ));
        }
    }
    let hours = budget
        .filter(|b| b.gpu_hours.is_some() || b.node_hours.is_some())
        .map(|b| {
            let (node_hours, gpu_hours) = alloc_hours(plan, est.hours);
            let mut over = |what: &str, field: &str, est: Option<f64>, cap: Option<f64>, used: f64| {
                let (Some(e), Some(c)) = (est, cap) else { return };
                let left = c - used;
                if used <= 0.0 && e > c + 1e-9 {
                    reasons.push(format!(
                        "the estimate of {e:.1} {what} exceeds \"budget.{field}\" {c:.1}\n  (hint: raise \"budget.{field}\", run fewer patterns, or ask for fewer or smaller allocations)"
                    ));
                } else if used > 0.0 && e > left + 1e-9 {
                    reasons.push(format!(
                        "the estimate of {} {what} exceeds the {} {what} that remain of \"budget.{field}\" {} ({} used by the phase's allocations so far)\n  (hint: raise \"budget.{field}\", run fewer patterns, or ask for fewer or smaller allocations; `infra budget {}` shows the hours)",
                        hours::fmt(e),
                        hours::fmt(left.max(0.0)),
                        hours::fmt(c),
                        hours::fmt(used),
                        plan.name_key
                    ));
                }
            };
            over("GPU-hours", "gpu_hours", gpu_hours, b.gpu_hours, held.gpu_hours);
            over("node-hours", "node_hours", node_hours, b.node_hours, held.node_hours);
            if est.hours.is_none() && est.tasks > 0 {
                warnings.push("no task has a duration estimate, so the allocation hours are unknown (hint: add \"estimate\": {\"default\": \"30m\"} to the plan)".into());
            }
            AllocHours {
                node_hours,
                gpu_hours,
                budget_node_hours: b.node_hours,
                budget_gpu_hours: b.gpu_hours,
                used_node_hours: held.node_hours,
                used_gpu_hours: held.gpu_hours,
                remaining_node_hours: b.node_hours.map(|c| c - held.node_hours),
                remaining_gpu_hours: b.gpu_hours.map(|c| c - held.gpu_hours),
            }
        });
    let finite = |x: f64| Some(x).filter(|x| x.is_finite());
    Verdict {
        ok: reasons.is_empty(),
        budget_usd: budget.and_then(|b| finite(b.usd)),
        spent_usd: spent,
        remaining_usd: remaining.and_then(finite),
        hours,
        max_hourly_usd: budget.and_then(|b| b.max_hourly_usd),
        reasons,
        warnings,
        fits: Vec::new(),
    }
}
