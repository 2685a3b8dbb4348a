//! What each node group may spend and for how long: the fleet's hourly
//! price cap and the nodes' self-termination deadline, both derived from
//! the plan's budget and lifetimes and the catalog's prices.

use chrono::{DateTime, Duration, Utc};

use crate::catalog::Catalog;
use crate::plan::{Market, NodeGroup, Plan};

/// Lifetime of nodes when the plan gives neither a lifetime nor a budget.
pub const DEFAULT_LIFETIME_HOURS: f64 = 24.0;
/// No deadline further than a year away (the plan format's own maximum).
pub const MAX_LIFETIME_HOURS: f64 = 8760.0;

#[derive(Debug, Clone, PartialEq)]
pub struct GroupLimits {
    pub group: String,
    /// What one node costs per hour on the group's market (on-demand, or the
    /// spot median), when the catalog knows.
    pub node_usd_per_hour: Option<f64>,
    /// The fleet's total hourly price cap (`MaxTotalPrice`) when the budget
    /// gives one: the plan's hourly cap (`max_hourly_usd`, or `usd` over the
    /// longest lifetime when every group has one) split over the groups in
    /// proportion to their nominal cost (nodes × on-demand or spot median).
    /// `None` without a budget or without an hourly figure: spot prices never
    /// exceed on-demand, so such a fleet pays at most on-demand.
    pub hourly_cap_usd: Option<f64>,
    /// How long the group's nodes and fleet may live: the group's
    /// `max_lifetime_hours`; or how long the budget lasts with every fleet
    /// spending its most (its cap, or on-demand prices if lower); or
    /// `DEFAULT_LIFETIME_HOURS` without a budget.
    pub lifetime_hours: f64,
}

impl GroupLimits {
    /// Whole minutes of node lifetime (for `shutdown +N`), at least 1.
    pub fn lifetime_minutes(&self) -> u64 {
        ((self.lifetime_hours * 60.0).floor() as u64).max(1)
    }

    /// The fleet's expiry for a deployment at `now`: `ValidUntil`, UTC,
    /// whole seconds (`2026-08-01T12:00:00Z`).
    pub fn valid_until(&self, now: DateTime<Utc>) -> String {
        let end = now + Duration::seconds((self.lifetime_hours * 3600.0).floor() as i64);
        end.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    }
}

/// A price as CloudFormation wants it: a string, rounded down to 1/10000
/// dollar so that a cap never exceeds what was derived.
pub fn usd_string(usd: f64) -> String {
    format!("{:.4}", (usd * 10_000.0).floor() / 10_000.0)
}

fn node_price(catalog: &Catalog, region: &str, g: &NodeGroup) -> Option<f64> {
    catalog
        .price(&g.instance_type, region, g.market)
        .map(|p| p.usd_per_hour)
}

/// The most one node may cost per hour: on-demand (spot never exceeds it),
/// or the spot maximum where there is no on-demand price.
fn node_ceiling(catalog: &Catalog, region: &str, g: &NodeGroup) -> Option<f64> {
    catalog
        .price(&g.instance_type, region, Market::OnDemand)
        .map(|p| p.usd_per_hour)
        .or_else(|| {
            catalog
                .price(&g.instance_type, region, Market::Spot)
                .and_then(|p| p.spot)
                .map(|s| s.max)
        })
}

/// Limits for every node group of the plan, in plan order, from the whole
/// budget (what the rendered stacks carry: they must not change as money is
/// spent).
pub fn group_limits(plan: &Plan, catalog: &Catalog) -> Vec<GroupLimits> {
    limits(plan, catalog, 0.0)
}

/// The same, with the lifetimes sized from the budget that remains after
/// `spent_usd` (the fleets' expiry set at a deployment; the hourly caps
/// stay those of the whole budget).
pub fn group_limits_remaining(plan: &Plan, catalog: &Catalog, spent_usd: f64) -> Vec<GroupLimits> {
    limits(plan, catalog, spent_usd.max(0.0))
}

fn limits(plan: &Plan, catalog: &Catalog, spent_usd: f64) -> Vec<GroupLimits> {
    let region = plan.region.as_str();
    let groups = &plan.node_groups;
    let nominal: Vec<f64> = groups
        .iter()
        .map(|g| node_price(catalog, region, g).unwrap_or(0.0) * f64::from(g.count))
        .collect();
    let ceiling: Vec<Option<f64>> = groups
        .iter()
        .map(|g| node_ceiling(catalog, region, g).map(|p| p * f64::from(g.count)))
        .collect();
    let total_nominal: f64 = nominal.iter().sum();

    // The plan's hourly cap: given, or the budget spread over the longest
    // lifetime when every group has one.
    let plan_cap = plan.budget.as_ref().and_then(|b| {
        b.max_hourly_usd.or_else(|| {
            let lifetimes: Option<Vec<f64>> = groups.iter().map(|g| g.max_lifetime_hours).collect();
            let longest = lifetimes?.into_iter().fold(0.0, f64::max);
            (longest > 0.0).then(|| b.usd / longest)
        })
    });
    let caps: Vec<Option<f64>> = (0..groups.len())
        .map(|i| {
            plan_cap.map(|h| {
                let share = if total_nominal > 0.0 {
                    nominal[i] / total_nominal
                } else {
                    1.0 / groups.len() as f64
                };
                h * share
            })
        })
        .collect();

    // What the fleets can spend per hour at worst: the on-demand price of
    // every node, or the fleet's cap when that is lower.
    let worst: f64 = caps
        .iter()
        .zip(&ceiling)
        .map(|(c, ceil)| match (c, ceil) {
            (Some(c), Some(x)) => c.min(*x),
            (c, x) => c.or(*x).unwrap_or(0.0),
        })
        .sum();
    groups
        .iter()
        .zip(caps)
        .map(|(g, cap)| {
            let lifetime = match (g.max_lifetime_hours, &plan.budget) {
                (Some(h), _) => h,
                (None, Some(b)) if worst > 0.0 => (b.usd - spent_usd).max(0.0) / worst,
                _ => DEFAULT_LIFETIME_HOURS,
            };
            GroupLimits {
                group: g.name.clone(),
                node_usd_per_hour: node_price(catalog, region, g),
                hourly_cap_usd: cap,
                lifetime_hours: lifetime.clamp(1.0 / 60.0, MAX_LIFETIME_HOURS),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn caps_round_down_and_deadlines_are_utc() {
        assert_eq!(usd_string(1.38889), "1.3888");
        assert_eq!(usd_string(2.0), "2.0000");
        let l = GroupLimits {
            group: "g".into(),
            node_usd_per_hour: None,
            hourly_cap_usd: None,
            lifetime_hours: 720.0,
        };
        let now = Utc.with_ymd_and_hms(2026, 8, 1, 12, 0, 0).unwrap();
        assert_eq!(l.valid_until(now), "2026-08-31T12:00:00Z");
        assert_eq!(l.lifetime_minutes(), 43_200);
    }
}
