//! Task templates → task definitions.

pub mod arith;
pub mod fingerprint;
pub mod lint;
pub mod marks;
pub mod model;
pub mod render;
mod resolve;
pub mod shell;

pub use model::{Health, Step, TaskDef};
