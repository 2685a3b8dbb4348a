#![recursion_limit = "256"]
//! `infra`: experiment campaigns on AWS, or on this machine, within a budget.
//!
//! The core (plan, tasks, scheduler, stacks, cost) is pure and deterministic;
//! effects (processes, files, AWS) sit behind the provider.

pub mod campaign;
pub mod catalog;
pub mod cli;
pub mod cmd;
pub mod cost;
pub mod import;
pub mod node;
pub mod plan;
pub mod provider;
pub mod report;
pub mod results;
pub mod runner;
pub mod stacks;
pub mod tasks;
