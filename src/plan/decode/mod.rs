//! From the parsed file to a `Plan`, collecting every problem on the way,
//! one module per section of the plan format.
//!
//! Hand-written rather than derived: serde stops at the first problem and
//! knows nothing of line numbers; users want the whole list at once. The
//! typed readers the sections share are in `plan::fields`.

mod budget;
mod estimate;
mod header;
mod layers;
mod layout;
mod machines;
mod names;
mod patterns;
mod settings;
mod slurm;
mod source;
mod templates;
#[cfg(test)]
mod testing;
mod top;

pub use crate::plan::fields::parse_duration;
pub use header::default_project;
pub use layers::MAX_TASKS;
pub use names::MAX_VALUE_BYTES;
pub use patterns::{canonical, content_key};
pub(crate) use source::rel;
pub use source::{default_root_for, Source};
pub use top::decode;
