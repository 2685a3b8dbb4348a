//! Integration tests: the real binary, real processes, real files.

mod adopt;
mod aws;
mod badplans;
mod badplans_names;
mod checkpoint;
mod common;
mod cost;
mod doe_suite;
mod efa;
mod examples;
mod faults;
mod fuzz;
mod inference;
mod live_logs;
mod local;
mod local_detach;
mod local_journal;
mod node_agent;
mod output;
mod output_hostile;
mod rerun;
mod slurm;
mod stacks;
mod sweep;
mod templates;
mod trial;
