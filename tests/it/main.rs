//! Integration tests: the real binary, real processes, real files.

mod common;
mod cost;
mod local;
mod badplans;
mod sweep;
