//! Task templates → task definitions.

pub mod model;
pub mod render;
pub mod shell;

pub use model::{Health, Step, TaskDef};
