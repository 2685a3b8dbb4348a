//! Factor grids: a layer's `grid` expands into one pattern per cell of the
//! cross product of its factors, less exclusions, plus inclusions, times
//! repetitions. Pure: the same grid yields the same cells in the same order.

mod expand;
mod levels;

pub(crate) use expand::expand;
pub use levels::{fill_id, level_text};
