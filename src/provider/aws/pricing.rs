//! `infra catalog refresh`: rebuild the catalog's entries for one region
//! from the live APIs — on-demand prices from the Pricing API (GetProducts,
//! paginated), spot prices per AZ from DescribeSpotPriceHistory, hardware
//! from DescribeInstanceTypes — into the user's cache file.

use std::time::SystemTime;

use aws_sdk_ec2::types::{Filter as Ec2Filter, InstanceType as Ec2Type};
use aws_sdk_pricing::types::{Filter, FilterType};

use super::config::{self, AwsSettings};
use super::error::AwsError;
use crate::catalog::{Catalog, RegionPrices, SpotStats};

/// The Pricing API answers in these regions only.
pub const PRICING_REGION: &str = "us-east-1";

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RefreshReport {
    pub region: String,
    pub types: usize,
    pub on_demand: usize,
    pub spot: usize,
    pub hardware: usize,
    pub missing: Vec<String>,
}

fn sdk_err(what: &str, e: impl std::fmt::Display) -> AwsError {
    AwsError::Api {
        action: format!("call {what}"),
        message: e.to_string(),
    }
}

/// The Linux, shared-tenancy, on-demand hourly price in a GetProducts entry.
pub fn on_demand_price(entry: &str) -> Option<f64> {
    let v: serde_json::Value = serde_json::from_str(entry).ok()?;
    let terms = v.get("terms")?.get("OnDemand")?.as_object()?;
    for offer in terms.values() {
        for dim in offer.get("priceDimensions")?.as_object()?.values() {
            let usd: f64 = dim
                .get("pricePerUnit")?
                .get("USD")?
                .as_str()?
                .parse()
                .ok()?;
            if usd > 0.0 {
                return Some(usd);
            }
        }
    }
    None
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub async fn refresh(
    settings: &AwsSettings,
    mut cat: Catalog,
    region: &str,
) -> Result<(Catalog, RefreshReport), AwsError> {
    let names: Vec<String> = cat.names().map(str::to_string).collect();
    let pricing =
        aws_sdk_pricing::Client::new(&config::sdk_config(settings, PRICING_REGION).await?);
    let ec2 = aws_sdk_ec2::Client::new(&config::sdk_config(settings, region).await?);
    let mut report = RefreshReport {
        region: region.into(),
        types: names.len(),
        ..Default::default()
    };

    // hardware, in batches (a filter ignores types the region lacks)
    for chunk in names.chunks(50) {
        let mut token = None;
        loop {
            let out = ec2
                .describe_instance_types()
                .filters(
                    Ec2Filter::builder()
                        .name("instance-type")
                        .set_values(Some(chunk.to_vec()))
                        .build(),
                )
                .set_next_token(token.clone())
                .send()
                .await
                .map_err(|e| {
                    sdk_err(
                        "DescribeInstanceTypes",
                        aws_smithy_types::error::display::DisplayErrorContext(&e),
                    )
                })?;
            for it in out.instance_types() {
                let Some(name) = it.instance_type().map(|t| t.as_str().to_string()) else {
                    continue;
                };
                let Some(entry) = cat.instance_types.get_mut(&name) else {
                    continue;
                };
                if let Some(v) = it.v_cpu_info().and_then(|c| c.default_v_cpus()) {
                    entry.vcpus = v.max(0) as u32;
                }
                if let Some(m) = it.memory_info().and_then(|m| m.size_in_mib()) {
                    entry.memory_gib = (m as f64 / 1024.0 * 100.0).round() / 100.0;
                }
                if let Some(g) = it.gpu_info() {
                    entry.gpus = g
                        .gpus()
                        .iter()
                        .filter_map(|d| d.count())
                        .sum::<i32>()
                        .max(0) as u32;
                }
                if let Some(n) = it.network_info() {
                    if let Some(e) = n.efa_supported() {
                        entry.efa = e;
                    }
                    if let Some(k) = n.efa_info().and_then(|e| e.maximum_efa_interfaces()) {
                        entry.max_efa_interfaces = k.max(0) as u32;
                    }
                    if let Some(c) = n.maximum_network_cards() {
                        entry.network_cards = c.max(1) as u32;
                    }
                }
                report.hardware += 1;
            }
            token = out.next_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
    }

    let now = aws_smithy_types::DateTime::from(SystemTime::now());
    for name in &names {
        // on-demand: GetProducts, paginated
        let filters = [
            ("instanceType", name.as_str()),
            ("regionCode", region),
            ("operatingSystem", "Linux"),
            ("tenancy", "Shared"),
            ("preInstalledSw", "NA"),
            ("capacitystatus", "Used"),
            ("marketoption", "OnDemand"),
        ];
        let mut on_demand = None;
        let mut token = None;
        loop {
            let mut req = pricing
                .get_products()
                .service_code("AmazonEC2")
                .format_version("aws_v1")
                .max_results(100)
                .set_next_token(token.clone());
            for (f, v) in filters {
                let filter = Filter::builder()
                    .r#type(FilterType::TermMatch)
                    .field(f)
                    .value(v)
                    .build()
                    .map_err(|e| sdk_err("GetProducts", e))?;
                req = req.filters(filter);
            }
            let out = req.send().await.map_err(|e| {
                sdk_err(
                    "GetProducts",
                    aws_smithy_types::error::display::DisplayErrorContext(&e),
                )
            })?;
            for entry in out.price_list() {
                if on_demand.is_none() {
                    on_demand = on_demand_price(entry);
                }
            }
            token = out.next_token().map(str::to_string);
            if token.is_none() || on_demand.is_some() {
                break;
            }
        }
        // spot: the current price in every AZ
        let mut per_az: std::collections::BTreeMap<String, f64> = Default::default();
        let mut token = None;
        loop {
            let out = ec2
                .describe_spot_price_history()
                .instance_types(Ec2Type::from(name.as_str()))
                .product_descriptions("Linux/UNIX")
                .start_time(now)
                .set_next_token(token.clone())
                .send()
                .await
                .map_err(|e| {
                    sdk_err(
                        "DescribeSpotPriceHistory",
                        aws_smithy_types::error::display::DisplayErrorContext(&e),
                    )
                })?;
            for sp in out.spot_price_history() {
                if let (Some(az), Some(p)) = (
                    sp.availability_zone(),
                    sp.spot_price().and_then(|p| p.parse::<f64>().ok()),
                ) {
                    // the newest entry per AZ comes first
                    per_az.entry(az.to_string()).or_insert(p);
                }
            }
            token = out
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        let spot = if per_az.is_empty() {
            None
        } else {
            let mut v: Vec<f64> = per_az.values().copied().collect();
            let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
            let max = v.iter().cloned().fold(0.0, f64::max);
            Some(SpotStats {
                median: median(&mut v),
                min,
                max,
                zones: v.len() as u32,
            })
        };
        if on_demand.is_some() {
            report.on_demand += 1;
        }
        if spot.is_some() {
            report.spot += 1;
        }
        if on_demand.is_none() && spot.is_none() {
            report.missing.push(name.clone());
            continue;
        }
        if let Some(entry) = cat.instance_types.get_mut(name) {
            entry.prices.insert(
                region.to_string(),
                RegionPrices {
                    on_demand,
                    spot,
                    note: None,
                },
            );
        }
    }
    cat.date = chrono::Utc::now().format("%Y-%m-%d").to_string();
    cat.source = format!("AWS Pricing API (GetProducts), DescribeSpotPriceHistory and DescribeInstanceTypes for {region}, refreshed by infra catalog refresh");
    Ok((cat, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_price_is_read_from_a_real_shaped_entry() {
        let entry = r#"{"product": {"attributes": {"instanceType": "c6i.xlarge"}},
          "terms": {"OnDemand": {"SKU.JRTCKXETXF": {"priceDimensions": {"SKU.JRTCKXETXF.6YS6EN2CT7": {"unit": "Hrs", "pricePerUnit": {"USD": "0.1700000000"}}}}}}}"#;
        assert_eq!(on_demand_price(entry), Some(0.17));
        assert_eq!(on_demand_price("{}"), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
    }
}
