//! Questions the rest of the tool asks the catalog.

use std::cmp::Ordering;

use super::model::{Catalog, InstanceType, Price, SpotPrice};
use crate::plan::Market;

/// How many types `nearest_efa` suggests at most.
const NEAREST_MAX: usize = 5;

impl Catalog {
    pub fn get(&self, instance_type: &str) -> Option<&InstanceType> {
        self.instance_types.get(instance_type)
    }

    /// Instance type names in catalog order (family, then size).
    pub fn names(&self) -> impl Iterator<Item = &str> + Clone {
        self.instance_types.keys().map(String::as_str)
    }

    /// Regions with at least one price, in first-seen order.
    pub fn regions(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for t in self.instance_types.values() {
            for r in t.prices.keys() {
                if !out.contains(&r.as_str()) {
                    out.push(r);
                }
            }
        }
        out
    }

    /// Whether the catalog has prices for `region` at all (so that a type
    /// missing there means "not offered", not "no data").
    pub fn knows_region(&self, region: &str) -> bool {
        self.instance_types
            .values()
            .any(|t| t.prices.contains_key(region))
    }

    /// The hourly price of `instance_type` in `region` on `market`; `None`
    /// when the type, the region or that market is not in the catalog.
    pub fn price(&self, instance_type: &str, region: &str, market: Market) -> Option<Price> {
        let p = self.get(instance_type)?.prices.get(region)?;
        match market {
            Market::OnDemand => p.on_demand.map(|usd| Price {
                market,
                usd_per_hour: usd,
                spot: None,
            }),
            Market::Spot => p.spot.map(|s| Price {
                market,
                usd_per_hour: s.median,
                spot: Some(SpotPrice {
                    median: s.median,
                    min: s.min,
                    max: s.max,
                }),
            }),
        }
    }

    /// Types of the same GPU count, for "choose a type with N GPUs" hints.
    pub fn with_gpus(&self, gpus: u32) -> Vec<&str> {
        self.instance_types
            .iter()
            .filter(|(_, t)| t.gpus == gpus)
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// The types nearest to `instance_type` that support EFA, best first:
    /// the same family at the same or larger sizes (smallest first), then
    /// smaller sizes of the family, then other families with the same
    /// accelerator, the same kind (c/m/r/g/p...) and GPU-ness, closest in
    /// vCPUs. At most five; empty when nothing in the catalog has EFA.
    pub fn nearest_efa(&self, instance_type: &str) -> Vec<&str> {
        let family = family_of(instance_type);
        let me = self.get(instance_type);
        let my_vcpus = me.map(|t| t.vcpus);
        let my_gpus = me
            .map(|t| t.gpus > 0)
            .unwrap_or_else(|| is_accelerated_family(family));
        let my_model = me.and_then(|t| t.gpu_model.as_deref());
        let kind = family.chars().next();

        let mut scored: Vec<((u8, f64), &str)> = self
            .instance_types
            .iter()
            .filter(|(name, t)| t.efa && name.as_str() != instance_type)
            .map(|(name, t)| {
                let f = family_of(name);
                let gpu = t.gpus > 0;
                let distance = match my_vcpus {
                    Some(v) => (f64::from(t.vcpus) / f64::from(v)).ln().abs(),
                    None => 0.0,
                };
                let rank = if f == family {
                    match my_vcpus {
                        Some(v) if t.vcpus < v => (1, -f64::from(t.vcpus)),
                        _ => (0, f64::from(t.vcpus)),
                    }
                } else if my_model.is_some() && t.gpu_model.as_deref() == my_model {
                    (2, distance)
                } else if f.chars().next() == kind && gpu == my_gpus {
                    (3, distance)
                } else if gpu == my_gpus {
                    (4, distance)
                } else {
                    (5, distance)
                };
                (rank, name.as_str())
            })
            .collect();
        scored.sort_by(|(a, an), (b, bn)| {
            a.0.cmp(&b.0)
                .then(a.1.partial_cmp(&b.1).unwrap_or(Ordering::Equal))
                .then(an.cmp(bn))
        });
        scored
            .into_iter()
            .take(NEAREST_MAX)
            .map(|(_, n)| n)
            .collect()
    }
}

/// `g5.12xlarge` → `g5`.
pub(crate) fn family_of(instance_type: &str) -> &str {
    instance_type.split('.').next().unwrap_or(instance_type)
}

fn is_accelerated_family(family: &str) -> bool {
    matches!(family.chars().next(), Some('g' | 'p' | 't' | 'i'))
        && !family.starts_with("i3")
        && !family.starts_with("i4")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CatalogError;
    use std::path::Path;

    const CSV: &str = include_str!("aws-instances.csv");

    /// Split one CSV line, honouring double quotes.
    fn fields(line: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = String::new();
        let mut quoted = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '"' if quoted && chars.peek() == Some(&'"') => {
                    cur.push('"');
                    chars.next();
                }
                '"' => quoted = !quoted,
                ',' if !quoted => out.push(std::mem::take(&mut cur)),
                _ => cur.push(c),
            }
        }
        out.push(cur);
        out
    }

    fn opt(s: &str) -> Option<f64> {
        if s.trim().is_empty() {
            None
        } else {
            Some(s.trim().parse().unwrap())
        }
    }

    #[test]
    fn builtin_matches_the_reference_csv() {
        let cat = Catalog::builtin();
        assert_eq!(cat.date, "2026-08");
        let mut lines = CSV.lines();
        let header = fields(lines.next().unwrap());
        let col = |name: &str| header.iter().position(|h| h == name).unwrap();
        let mut rows = 0;
        for line in lines.filter(|l| !l.trim().is_empty()) {
            let f = fields(line);
            rows += 1;
            let name = &f[col("instance_type")];
            let region = &f[col("region")];
            let t = cat.get(name).unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(
                t.vcpus,
                f[col("vcpus")].parse::<u32>().unwrap(),
                "{name} vcpus"
            );
            assert_eq!(
                t.memory_gib,
                f[col("memory_gib")].parse::<f64>().unwrap(),
                "{name} memory"
            );
            assert_eq!(
                t.gpus,
                f[col("gpu_count")].parse::<u32>().unwrap(),
                "{name} gpus"
            );
            assert_eq!(t.efa, f[col("efa_supported")] == "yes", "{name} efa");
            assert_eq!(
                t.max_efa_interfaces,
                f[col("max_efa_interfaces")].parse::<u32>().unwrap(),
                "{name} efa interfaces"
            );
            assert_eq!(
                t.network_cards,
                f[col("network_cards")].parse::<u32>().unwrap(),
                "{name} network cards"
            );
            let od = opt(&f[col("ondemand_linux_usd_hr")]);
            assert_eq!(
                cat.price(name, region, Market::OnDemand)
                    .map(|p| p.usd_per_hour),
                od,
                "{name} {region} on-demand"
            );
            let spot = cat.price(name, region, Market::Spot).and_then(|p| p.spot);
            match opt(&f[col("spot_usd_hr_median")]) {
                Some(median) => {
                    let s = spot.unwrap_or_else(|| panic!("{name} {region} spot missing"));
                    assert_eq!(s.median, median);
                    assert_eq!(Some(s.min), opt(&f[col("spot_usd_hr_min")]));
                    assert_eq!(Some(s.max), opt(&f[col("spot_usd_hr_max")]));
                }
                None => assert!(spot.is_none(), "{name} {region} spot should be absent"),
            }
        }
        let priced: usize = cat.instance_types.values().map(|t| t.prices.len()).sum();
        assert_eq!(priced, rows, "one price entry per CSV row");
    }

    #[test]
    fn reference_facts_hold() {
        let cat = Catalog::builtin();
        assert_eq!(cat.get("p5.48xlarge").unwrap().max_efa_interfaces, 32);
        assert_eq!(cat.get("p4d.24xlarge").unwrap().max_efa_interfaces, 4);
        assert_eq!(cat.get("p5en.48xlarge").unwrap().network_cards, 16);
        assert_eq!(cat.get("g5.12xlarge").unwrap().gpus, 4);
        assert!(!cat.get("g5.xlarge").unwrap().efa);
        assert!(cat
            .price("p5e.48xlarge", "us-west-2", Market::OnDemand)
            .is_none());
        assert_eq!(
            cat.price("c6i.4xlarge", "us-east-1", Market::OnDemand)
                .unwrap()
                .usd_per_hour,
            0.68
        );
        let spot = cat.price("c6i.4xlarge", "us-east-1", Market::Spot).unwrap();
        assert_eq!(spot.usd_per_hour, 0.3208);
        assert!(spot.spot.unwrap().min <= spot.spot.unwrap().max);
        for r in ["us-east-1", "us-west-2", "eu-north-1"] {
            assert!(cat.knows_region(r));
        }
        assert!(!cat.knows_region("ap-south-1"));
    }

    #[test]
    fn names_keep_catalog_order() {
        let cat = Catalog::builtin();
        let names: Vec<&str> = cat.names().take(3).collect();
        assert_eq!(names, ["c6i.xlarge", "c6i.2xlarge", "c6i.4xlarge"]);
    }

    #[test]
    fn nearest_efa_prefers_larger_sizes_of_the_same_family() {
        let cat = Catalog::builtin();
        assert_eq!(
            cat.nearest_efa("g5.xlarge")[..3],
            ["g5.8xlarge", "g5.12xlarge", "g5.48xlarge"]
        );
        let cpu = cat.nearest_efa("c6i.4xlarge");
        assert_eq!(cpu[0], "c6i.32xlarge");
        assert_eq!(cpu[1], "c7i.48xlarge");
        assert!(
            cpu.iter()
                .all(|n| cat.get(n).unwrap().efa && cat.get(n).unwrap().gpus == 0),
            "{cpu:?}"
        );
        // an unknown type still gets suggestions from its family
        assert_eq!(cat.nearest_efa("g5.3xlarge")[0], "g5.8xlarge");
        assert!(cat
            .nearest_efa("p5.48xlarge")
            .iter()
            .all(|n| *n != "p5.48xlarge"));
    }

    #[test]
    fn override_catalog_round_trips_and_rejects_bad_files() {
        let cat = Catalog::builtin();
        let text = cat.to_json();
        let again = Catalog::from_json(&text, Path::new("cache.json")).unwrap();
        assert_eq!(again, cat);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.json");
        std::fs::write(&path, &text).unwrap();
        assert_eq!(Catalog::load(&path).unwrap(), cat);
        assert_eq!(
            Catalog::load_or_builtin(&dir.path().join("absent.json")).unwrap(),
            cat
        );

        let wrong = text.replacen("\"format\": 1", "\"format\": 9", 1);
        assert!(matches!(
            Catalog::from_json(&wrong, Path::new("c.json")),
            Err(CatalogError::Format { found: 9, .. })
        ));
        let bad = text.replacen("\"vcpus\": 4", "\"vcpus\": \"four\"", 1);
        let err = Catalog::from_json(&bad, Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.json") && err.contains("(hint:"), "{err}");
        let inverted = r#"{"format":1,"date":"x","source":"y","instance_types":{"a.b":{"vcpus":1,"memory_gib":1,"gpus":0,"gpu_model":null,"gpu_memory_gib":0,"efa":false,"max_efa_interfaces":0,"network_cards":1,"network_gbps":null,"prices":{"r":{"on_demand":1,"spot":{"median":1,"min":2,"max":3,"zones":1}}}}}}"#;
        assert!(Catalog::from_json(inverted, Path::new("c.json")).is_err());
    }
}
