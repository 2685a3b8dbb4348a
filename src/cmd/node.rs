//! `infra node <mode> --spec '<JSON>'`: the node agent (hidden; the
//! controller runs it on the nodes through SSM Run Command). All of it lives
//! in `crate::node`; this only hands the command line over.

use crate::cli::NodeMode;

/// Run the agent; its exit code (see `crate::node` for the codes).
pub fn node(mode: NodeMode, spec: &str) -> i32 {
    crate::node::main(mode, spec)
}
