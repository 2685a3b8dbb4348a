//! Where tasks run: this machine (`local`) or AWS.

pub mod local;
pub mod process;
