//! Integration tests: the real binary, real processes, real files.

mod aws;
mod common;
mod cost;
mod fuzz;
mod local;
mod badplans;
mod sweep;
mod stacks;
