//! Result tables: per-task outputs aggregated into one CSV + metadata.

pub mod csv;
pub mod failed;
pub mod table;
