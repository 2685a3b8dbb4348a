//! Task templates → task definitions.

pub mod arith;
pub mod fingerprint;
pub mod lint;
pub mod marks;
pub mod model;
pub mod render;
pub mod requires;
mod resolve;
pub mod shell;
mod unused;

pub use model::{Health, Step, TaskDef};
