//! Everything users see: progress, tables.

pub mod progress;
