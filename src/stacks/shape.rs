//! How node groups map onto stack resources, known before rendering: what
//! `validate` checks against the limits of AWS and `render` lays out.

use crate::catalog::InstanceType;
use crate::plan::NodeGroup;

/// Distinct availability zones the base stack lays out subnets for.
pub const MAX_ZONES: usize = 8;

/// Resources one node group adds to the compute stack.
pub(crate) fn resources_per_group(g: &NodeGroup) -> usize {
    2 + usize::from(placement_strategy(g).is_some())
}

/// Whether the group's default image is a Deep Learning AMI.
pub(crate) fn is_default_dlami(t: &InstanceType, efa: bool) -> bool {
    t.gpus > 0 || efa
}

/// The group's placement group strategy, if it gets a placement group
/// (EFA groups always do: `cluster`).
pub(crate) fn placement_strategy(g: &NodeGroup) -> Option<&str> {
    if g.efa {
        Some("cluster")
    } else {
        g.placement.as_deref()
    }
}
