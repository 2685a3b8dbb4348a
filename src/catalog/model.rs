//! Catalog data and its (de)serialization; the file format is the one
//! `scripts/gen-catalog.py` writes.

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::plan::Market;

/// Version of the catalog file format (`"format"` in the file).
pub const CATALOG_FORMAT: u32 = 1;

const BUILTIN: &str = include_str!("catalog.json");

#[derive(Debug, Error)]
pub enum CatalogError {
    #[error("cannot read catalog {path}: {source}\n  (hint: run `infra catalog refresh` to rebuild it, or delete it to use the built-in catalog)")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("catalog {path} is not a valid catalog: {message}\n  (hint: run `infra catalog refresh` to rebuild it, or delete it to use the built-in catalog)")]
    Invalid { path: PathBuf, message: String },
    #[error("catalog {path} has format {found}, this infra reads format {CATALOG_FORMAT}\n  (hint: run `infra catalog refresh` to rewrite it)")]
    Format { path: PathBuf, found: u32 },
}

/// Instance types and prices, in a stable order (the order of the file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub format: u32,
    /// When the prices were gathered, e.g. "2026-08".
    pub date: String,
    /// Where the data comes from.
    pub source: String,
    pub instance_types: IndexMap<String, InstanceType>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceType {
    pub vcpus: u32,
    pub memory_gib: f64,
    /// GPUs (or other accelerators, e.g. Trainium chips) per instance.
    pub gpus: u32,
    pub gpu_model: Option<String>,
    pub gpu_memory_gib: f64,
    pub efa: bool,
    /// Maximum EFA interfaces: one per network card on EFA types, 0 without EFA.
    pub max_efa_interfaces: u32,
    pub network_cards: u32,
    pub network_gbps: Option<f64>,
    /// Region code → prices, for the regions the catalog knows.
    pub prices: IndexMap<String, RegionPrices>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionPrices {
    /// Linux on-demand USD per hour; `None` where the type is not sold
    /// on demand (e.g. p5e, capacity blocks only).
    pub on_demand: Option<f64>,
    /// Spot USD per hour over the region's AZs; `None` without a spot market.
    pub spot: Option<SpotStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpotStats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Number of AZs the statistics come from.
    pub zones: u32,
}

/// The price of one instance type in one region and market.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub market: Market,
    /// The price to plan with: on-demand, or the spot median.
    pub usd_per_hour: f64,
    /// Spot statistics (spot market only).
    pub spot: Option<SpotPrice>,
}

/// Spot price spread over a region's AZs, USD per hour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpotPrice {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Catalog {
    /// The catalog built into the binary.
    pub fn builtin() -> Catalog {
        // The embedded file is generated and checked by the tests below; a
        // broken one is a build defect, not a user error.
        Catalog::from_json(BUILTIN, Path::new("<built-in catalog>"))
            .expect("the built-in catalog is valid")
    }

    /// Parse a catalog file's text; `path` only labels errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Catalog, CatalogError> {
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        let head: Head = serde_json::from_str(text).map_err(|e| CatalogError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if head.format != CATALOG_FORMAT {
            return Err(CatalogError::Format {
                path: path.to_path_buf(),
                found: head.format,
            });
        }
        let cat: Catalog = serde_json::from_str(text).map_err(|e| CatalogError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cat.check().map_err(|message| CatalogError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(cat)
    }

    /// Read an override catalog (the user's cache).
    pub fn load(path: &Path) -> Result<Catalog, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Catalog::from_json(&text, path)
    }

    /// The override at `path` when it exists, the built-in catalog otherwise.
    pub fn load_or_builtin(path: &Path) -> Result<Catalog, CatalogError> {
        if path.is_file() {
            Catalog::load(path)
        } else {
            Ok(Catalog::builtin())
        }
    }

    /// The file text for this catalog (same format as `catalog.json`).
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Values a price computation would trip on: negative or non-finite
    /// prices, min > max, EFA interfaces without EFA.
    fn check(&self) -> Result<(), String> {
        if self.instance_types.is_empty() {
            return Err("no instance types".into());
        }
        for (name, t) in &self.instance_types {
            if t.vcpus == 0 {
                return Err(format!("{name}: vcpus is 0"));
            }
            if t.efa != (t.max_efa_interfaces > 0) {
                return Err(format!(
                    "{name}: efa is {} but max_efa_interfaces is {}",
                    t.efa, t.max_efa_interfaces
                ));
            }
            for (region, p) in &t.prices {
                let ok = |v: f64| v.is_finite() && v >= 0.0;
                if p.on_demand.is_some_and(|v| !ok(v)) {
                    return Err(format!("{name} in {region}: invalid on-demand price"));
                }
                if let Some(s) = &p.spot {
                    if !(ok(s.min) && ok(s.median) && ok(s.max))
                        || s.min > s.median
                        || s.median > s.max
                    {
                        return Err(format!("{name} in {region}: spot prices must satisfy 0 <= min <= median <= max"));
                    }
                }
            }
        }
        Ok(())
    }
}
