//! Result tables: per-task outputs aggregated into one CSV + metadata;
//! the doe-suite result tree and its extractors.

pub mod csv;
pub mod doe_tree;
pub mod extract;
pub mod failed;
pub mod table;
