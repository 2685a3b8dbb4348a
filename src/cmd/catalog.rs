//! `infra catalog show` and `infra catalog refresh`.

use serde::Serialize;
use serde_json::json;

use super::context::Ctx;
use super::error::{exit, io_err, AppError};
use crate::catalog::InstanceType;
use crate::plan::{self, Market};

#[derive(Debug, Serialize)]
pub struct CatalogView {
    pub source: String,
    pub origin: String,
    pub date: String,
    pub region: String,
    pub instance_types: Vec<TypeRow>,
}

#[derive(Debug, Serialize)]
pub struct TypeRow {
    pub instance_type: String,
    pub details: InstanceType,
    pub on_demand_usd_per_hour: Option<f64>,
    pub spot_median_usd_per_hour: Option<f64>,
    pub spot_max_usd_per_hour: Option<f64>,
}

pub fn show(ctx: &Ctx, instance_type: Option<&str>) -> Result<i32, AppError> {
    let (cat, from) = ctx.catalog()?;
    let region = ctx.region.clone().unwrap_or_else(|| "us-east-1".into());
    let names: Vec<&str> = match instance_type {
        Some(t) => {
            if cat.get(t).is_none() {
                return Err(AppError::Usage(format!(
                    "\"{t}\" is not in the catalog\n  (hint: {})",
                    plan::diag::did_you_mean(t, cat.names())
                )));
            }
            vec![t]
        }
        None => cat.names().collect(),
    };
    let rows = names
        .iter()
        .filter_map(|n| {
            let t = cat.get(n)?;
            let spot = cat.price(n, &region, Market::Spot).and_then(|p| p.spot);
            Some(TypeRow {
                instance_type: n.to_string(),
                details: t.clone(),
                on_demand_usd_per_hour: cat
                    .price(n, &region, Market::OnDemand)
                    .map(|p| p.usd_per_hour),
                spot_median_usd_per_hour: spot.map(|s| s.median),
                spot_max_usd_per_hour: spot.map(|s| s.max),
            })
        })
        .collect();
    let view = CatalogView {
        source: from,
        origin: cat.source.clone(),
        date: cat.date.clone(),
        region,
        instance_types: rows,
    };
    ctx.emit("catalog", &text(&view), &view);
    Ok(exit::OK)
}

/// The catalog as a table: hardware and prices per type.
pub fn text(v: &CatalogView) -> String {
    let row = |c: [&str; 9]| {
        format!(
            "{:<16} {:>5} {:>8} {:>4} {:<6} {:>4} {:>10} {:>10} {:>10}\n",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8]
        )
    };
    let mut h = format!(
        "{} ({}, prices of {}), region {}\n",
        v.source, v.origin, v.date, v.region
    );
    h.push_str(&row([
        "type",
        "vcpu",
        "mem GiB",
        "gpu",
        "efa",
        "nics",
        "on-demand",
        "spot med",
        "spot max",
    ]));
    let m = |x: Option<f64>| x.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
    for r in &v.instance_types {
        let t = &r.details;
        let efa = if t.efa {
            format!("yes/{}", t.max_efa_interfaces)
        } else {
            "no".into()
        };
        h.push_str(&row([
            &r.instance_type,
            &t.vcpus.to_string(),
            &t.memory_gib.to_string(),
            &t.gpus.to_string(),
            &efa,
            &t.network_cards.to_string(),
            &m(r.on_demand_usd_per_hour),
            &m(r.spot_median_usd_per_hour),
            &m(r.spot_max_usd_per_hour),
        ]));
    }
    h
}

pub async fn refresh(ctx: &Ctx) -> Result<i32, AppError> {
    use crate::provider::aws::{pricing, provider::sdk_settings};
    let region = ctx.region.clone().unwrap_or_else(|| "us-east-1".into());
    let settings = sdk_settings(&ctx.provider_settings, &region);
    let (base, _) = ctx.catalog()?;
    eprintln!("refreshing {} instance types for {region} from the Pricing API, spot price history and DescribeInstanceTypes", base.instance_types.len());
    let (cat, report) = pricing::refresh(&settings, base, &region).await?;
    let path = &ctx.catalog_path;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, cat.to_json()).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    ctx.out(
        "catalog",
        &format!(
            "catalog for {region} refreshed into {}: {} types, {} on-demand prices, {} spot prices, {} hardware records{}",
            path.display(), report.types, report.on_demand, report.spot, report.hardware,
            if report.missing.is_empty() { String::new() } else { format!("; no price for {}", report.missing.join(", ")) }
        ),
        json!({"path": path, "report": report}),
    );
    Ok(exit::OK)
}
