//! The AWS provider: CloudFormation stacks, EC2 nodes reached through SSM
//! Run Command, the results bucket in S3. `provider` is the lifecycle (apply,
//! run, status, destroy) behind the `Provider` trait, `deploy` its stacks
//! and nodes; `executor` holds the nodes of a run for the shared runner and
//! `transport` moves one attempt's steps for the shared sequencer; the
//! other modules are thin wrappers over one service each.

pub mod agent;
pub mod campaign_sync;
pub mod cfn;
pub mod config;
pub mod controller;
pub mod deploy;
pub mod ec2;
pub mod efa_check;
pub mod error;
pub mod executor;
pub mod fleet_restore;
pub mod layout;
pub mod lease;
pub mod live_log;
pub mod meter;
pub mod node_commands;
pub mod pricing;
pub mod provider;
mod run_session;
pub mod s3;
pub mod script;
pub mod ssm;
pub mod state;
pub mod transport;
