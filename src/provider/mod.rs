//! Where tasks run: this machine (`local`) or AWS.

pub mod aws;
pub mod env;
pub mod local;
pub mod process;
pub mod sequence;
