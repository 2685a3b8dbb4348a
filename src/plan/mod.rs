//! Experiment plans: the file format, its validation, and grid expansion.

pub mod decode;
pub mod diag;
mod fields;
pub mod grid;
pub mod json;
pub mod layout;
pub mod load;
pub mod model;
pub mod schema;
pub mod select;
pub mod slurm;

pub use diag::PlanErrors;
pub use load::{load, LoadError};
pub use model::*;
