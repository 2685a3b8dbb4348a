//! Where tasks run: this machine (`local`) or AWS. Both run an attempt's
//! steps through one sequencer (`sequence`), each over its own transport.

pub mod aws;
pub mod env;
pub mod local;
pub mod process;
pub mod sequence;
