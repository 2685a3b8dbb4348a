//! `infra catalog show` and `infra catalog refresh`.

use serde_json::json;

use super::context::Ctx;
use super::error::{exit, io_err, AppError};
use crate::plan;

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
    let mut h = format!(
        "{} ({}, prices of {}), region {region}\n",
        from, cat.source, cat.date
    );
    h.push_str(&format!(
        "{:<16} {:>5} {:>8} {:>4} {:<6} {:>4} {:>10} {:>10} {:>10}\n",
        "type", "vcpu", "mem GiB", "gpu", "efa", "nics", "on-demand", "spot med", "spot max"
    ));
    let mut rows = Vec::new();
    for n in &names {
        let Some(t) = cat.get(n) else { continue };
        let od = cat
            .price(n, &region, crate::plan::Market::OnDemand)
            .map(|p| p.usd_per_hour);
        let sp = cat
            .price(n, &region, crate::plan::Market::Spot)
            .and_then(|p| p.spot);
        let m = |x: Option<f64>| x.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
        h.push_str(&format!(
            "{:<16} {:>5} {:>8} {:>4} {:<6} {:>4} {:>10} {:>10} {:>10}\n",
            n,
            t.vcpus,
            t.memory_gib,
            t.gpus,
            if t.efa {
                format!("yes/{}", t.max_efa_interfaces)
            } else {
                "no".into()
            },
            t.network_cards,
            m(od),
            m(sp.map(|s| s.median)),
            m(sp.map(|s| s.max))
        ));
        rows.push(json!({"instance_type": n, "details": t}));
    }
    ctx.out(
        h.trim_end(),
        json!({"source": from, "date": cat.date, "region": region, "instance_types": rows}),
    );
    Ok(exit::OK)
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
        &format!(
            "catalog for {region} refreshed into {}: {} types, {} on-demand prices, {} spot prices, {} hardware records{}",
            path.display(), report.types, report.on_demand, report.spot, report.hardware,
            if report.missing.is_empty() { String::new() } else { format!("; no price for {}", report.missing.join(", ")) }
        ),
        json!({"path": path, "report": report}),
    );
    Ok(exit::OK)
}
