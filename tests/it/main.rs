//! Integration tests: the real binary, real processes, real files.

mod aws;
mod badplans;
mod common;
mod cost;
mod faults;
mod fuzz;
mod local;
mod output;
mod stacks;
mod sweep;
mod templates;
