//! Metered spend on AWS: every instance of a phase (its detached controller
//! included) is billed for its real
//! lifetime, from EC2's launch time to now (or to its termination), at the
//! spot price history of its type and zone over that span (on-demand
//! instances at the catalog's on-demand price). Each metering appends, per
//! instance, the span since that instance's last ledger entry, so running it
//! at every run's start and end and at destroy never counts an hour twice,
//! and a crash loses nothing: the next metering starts where the last ended.
//!
//! The ledger is mirrored to the project's bucket (`_ledger/`, one object per
//! metering), so two machines working on one project see the same spend:
//! `pull` merges what others wrote before anything is metered or gated.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use aws_sdk_ec2::types::InstanceType as Ec2Type;
use aws_smithy_types::DateTime as SmithyTime;
use chrono::{DateTime, Utc};

use super::config::Clients;
use super::ec2;
use super::error::{api, AwsError};
use super::layout;
use super::s3;
use super::state;
use crate::catalog::Catalog;
use crate::cost::ledger::{self, Spend};
use crate::plan::{Market, Plan};

/// `_ledger/` (`layout::ledger_prefix`).
pub const PREFIX: &str = "_ledger/";

/// Merge the bucket's ledger objects into the local ledger; returns how many
/// entries were new here. An entry with a negative or non-finite amount
/// (local, or in any object of the bucket) is `AwsError::Ledger` and nothing
/// is merged.
pub async fn pull(c: &Clients, bucket: &str, root: &Path) -> Result<usize, AwsError> {
    let local = ledger::read(root)?;
    let mut known: HashSet<String> = local.iter().map(ledger::entry_key).collect();
    let mut new = Vec::new();
    for (key, _) in s3::list(c, bucket, &layout::ledger_prefix()).await? {
        let Some(bytes) = s3::get(c, bucket, &key).await? else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        for e in ledger::parse(&text, &format!("s3://{bucket}/{key}"))? {
            if known.insert(ledger::entry_key(&e)) {
                new.push(e);
            }
        }
    }
    new.sort_by(|a, b| a.end.cmp(&b.end).then(a.node.cmp(&b.node)));
    ledger::append(root, &new).map_err(AwsError::io(ledger::path(root)))?;
    Ok(new.len())
}

/// Write `entries` to the bucket as one object.
pub async fn push(
    c: &Clients,
    bucket: &str,
    phase: &str,
    entries: &[Spend],
) -> Result<(), AwsError> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut body = String::new();
    for e in entries {
        body.push_str(&serde_json::to_string(e).unwrap_or_default());
        body.push('\n');
    }
    let key = layout::ledger_key(
        phase,
        &format!(
            "{}-{}.jsonl",
            Utc::now().format("%Y%m%dT%H%M%S%.3fZ"),
            &s3::sha256_hex(body.as_bytes())[..12]
        ),
    );
    s3::put(c, bucket, &key, body.into_bytes()).await
}

/// A spot price history: (since when, $/h), oldest first.
type PriceHistory = Vec<(DateTime<Utc>, f64)>;

/// Meter the phase's instances up to now: append the new spans to the local
/// ledger (and to the bucket when there is one) and return them.
pub async fn meter(
    c: &Clients,
    plan: &Plan,
    catalog: &Catalog,
    bucket: Option<&str>,
) -> Result<Vec<Spend>, AwsError> {
    let now = Utc::now();
    let mut seen = ec2::instances(c, &plan.project, Some(&plan.name_key)).await?;
    // the detached controller bills like a node, for the phase it controls
    seen.extend(ec2::controllers(c, &plan.project, &plan.name_key).await?);
    let names: HashMap<String, String> = state::load(plan)
        .map(|st| {
            st.nodes
                .into_iter()
                .map(|n| (n.instance_id, n.name))
                .collect()
        })
        .unwrap_or_default();
    let past = ledger::read(&plan.root)?;
    let mut metered_until: HashMap<&str, DateTime<Utc>> = HashMap::new();
    for e in &past {
        if let (Some(id), Some(end)) = (e.instance.as_deref(), parse_time(&e.end)) {
            let t = metered_until.entry(id).or_insert(end);
            *t = (*t).max(end);
        }
    }
    let mut prices: BTreeMap<(String, String), PriceHistory> = BTreeMap::new();
    let mut out = Vec::new();
    for i in &seen {
        let Some(launch) = parse_time(&i.launch_time) else {
            continue;
        };
        let start = metered_until
            .get(i.instance_id.as_str())
            .map_or(launch, |t| (*t).max(launch));
        let end = if matches!(
            i.state.as_str(),
            "pending" | "running" | "stopping" | "shutting-down"
        ) {
            now
        } else {
            // gone: until EC2's recorded transition, else nothing more
            i.transition_reason
                .as_deref()
                .and_then(parse_transition)
                .unwrap_or(start)
                .min(now)
        };
        if end <= start {
            continue;
        }
        let (usd_per_hour, source) = if i.market == "spot" {
            let key = (i.instance_type.clone(), i.az.clone());
            if !prices.contains_key(&key) {
                let h = spot_history(c, &i.instance_type, &i.az, start, end)
                    .await
                    .unwrap_or_default();
                prices.insert(key.clone(), h);
            }
            match average(&prices[&key], start, end) {
                Some(p) => (p, "spot price history"),
                None => (
                    catalog_price(catalog, plan, &i.instance_type, Market::Spot),
                    "catalog spot median",
                ),
            }
        } else {
            (
                catalog_price(catalog, plan, &i.instance_type, Market::OnDemand),
                "catalog on-demand",
            )
        };
        let name = names
            .get(&i.instance_id)
            .cloned()
            .unwrap_or_else(|| i.group.clone());
        let span = ledger::RunSpan {
            phase: &plan.name_key,
            provider: "aws",
            start,
            end,
            hours: (end - start).num_milliseconds() as f64 / 3_600_000.0,
            kind: "metered",
        };
        let mut e = span.spend(
            format!("{name} ({})", i.instance_id),
            &i.group,
            &i.instance_type,
            &i.market,
            usd_per_hour,
        );
        e.instance = Some(i.instance_id.clone());
        e.price_source = Some(source.into());
        out.push(e);
    }
    ledger::append(&plan.root, &out).map_err(AwsError::io(ledger::path(&plan.root)))?;
    if let Some(b) = bucket {
        push(c, b, &plan.name_key, &out).await?;
    }
    Ok(out)
}

fn catalog_price(catalog: &Catalog, plan: &Plan, instance_type: &str, market: Market) -> f64 {
    catalog
        .price(instance_type, &plan.region, market)
        .map(|p| p.usd_per_hour)
        .unwrap_or(0.0)
}

/// The spot prices of one type in one zone in effect during [start, end].
async fn spot_history(
    c: &Clients,
    instance_type: &str,
    az: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Vec<(DateTime<Utc>, f64)>, AwsError> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = c
            .ec2
            .describe_spot_price_history()
            .instance_types(Ec2Type::from(instance_type))
            .availability_zone(az)
            .product_descriptions("Linux/UNIX")
            .start_time(SmithyTime::from_secs(start.timestamp()))
            .end_time(SmithyTime::from_secs(end.timestamp() + 1))
            .set_next_token(token.clone())
            .send()
            .await
            .map_err(api("read the spot price history"))?;
        for sp in page.spot_price_history() {
            if let (Some(ts), Some(p)) = (
                sp.timestamp()
                    .and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), 0)),
                sp.spot_price().and_then(|p| p.parse::<f64>().ok()),
            ) {
                out.push((ts, p));
            }
        }
        token = page
            .next_token()
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    Ok(out)
}

/// The time-weighted price over [start, end] of a price history (each entry
/// holds from its timestamp to the next); before the first entry, the first
/// entry's price holds. None for an empty history.
pub fn average(
    history: &[(DateTime<Utc>, f64)],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Option<f64> {
    if history.is_empty() || end <= start {
        return None;
    }
    let mut h = history.to_vec();
    h.sort_by_key(|a| a.0);
    let price_at = |t: DateTime<Utc>| {
        h.iter()
            .take_while(|(ts, _)| *ts <= t)
            .last()
            .map_or(h[0].1, |(_, p)| *p)
    };
    // cut points: start, every change inside the span, end
    let mut cuts = vec![start];
    cuts.extend(h.iter().map(|(t, _)| *t).filter(|t| *t > start && *t < end));
    cuts.push(end);
    let total = (end - start).num_milliseconds() as f64;
    let usd: f64 = cuts
        .windows(2)
        .map(|w| price_at(w[0]) * (w[1] - w[0]).num_milliseconds() as f64)
        .sum();
    Some(usd / total)
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The time in EC2's StateTransitionReason, e.g. "User initiated
/// (2026-11-22 10:00:00 GMT)".
fn parse_transition(reason: &str) -> Option<DateTime<Utc>> {
    let inner = reason.rsplit_once('(')?.1.split_once(')')?.0;
    let stamp = inner
        .trim()
        .trim_end_matches(" GMT")
        .trim_end_matches(" UTC");
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d %H:%M:%S")
        .ok()
        .map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        parse_time(s).unwrap()
    }

    #[test]
    fn the_average_price_weights_each_price_by_how_long_it_held() {
        let h = vec![
            (t("2026-11-22T09:00:00Z"), 0.30),
            (t("2026-11-22T10:00:00Z"), 0.60),
        ];
        // 09:30-10:30: half an hour at 0.30, half at 0.60
        let avg = average(&h, t("2026-11-22T09:30:00Z"), t("2026-11-22T10:30:00Z")).unwrap();
        assert!((avg - 0.45).abs() < 1e-9, "{avg}");
        // before the first entry its price holds
        let avg = average(&h, t("2026-11-22T08:00:00Z"), t("2026-11-22T08:30:00Z")).unwrap();
        assert!((avg - 0.30).abs() < 1e-9, "{avg}");
        // unsorted input and a span after the last change
        let rev: Vec<_> = h.iter().rev().cloned().collect();
        let avg = average(&rev, t("2026-11-22T11:00:00Z"), t("2026-11-22T12:00:00Z")).unwrap();
        assert!((avg - 0.60).abs() < 1e-9, "{avg}");
        assert!(average(&[], t("2026-11-22T11:00:00Z"), t("2026-11-22T12:00:00Z")).is_none());
    }

    #[test]
    fn the_termination_time_is_read_from_the_transition_reason() {
        assert_eq!(
            parse_transition("User initiated (2026-11-22 10:00:05 GMT)"),
            Some(t("2026-11-22T10:00:05Z"))
        );
        assert_eq!(parse_transition("Service initiated"), None);
    }
}
