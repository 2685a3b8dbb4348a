//! CloudFormation stacks from plans: validation against the catalog and
//! the limits of AWS (`validate`), rendering of the base and compute stacks
//! from the Handlebars templates in `stacks/` (`render`), and writing them
//! to `.infra/<phase>/stacks/` (`write`).

mod comment;
pub mod controller;
pub mod deployed;
pub mod diff;
pub mod limits;
mod model;
pub mod names;
pub mod policy;
mod render;
mod shape;
mod summary;
pub mod validate;
mod write;

pub use limits::{group_limits, group_limits_remaining, GroupLimits};
pub use model::{RenderedStack, ResourceSummary, StackError, Stacks, MAX_BODY, MAX_INLINE_BODY};
pub use render::{
    compute_parameters, group_ids, render, DEFAULT_AMI_CPU, DEFAULT_AMI_GPU, DEFAULT_AMI_NEURON,
};
pub(crate) use render::{efa_interfaces as efa_interface_count, multi_card_efa};
pub use shape::MAX_ZONES;
pub use validate::{validate, DLAMI_MIN_VOLUME_GB, MAX_NODES, MAX_NODES_PER_GROUP, MAX_RESOURCES};
pub use write::write;
