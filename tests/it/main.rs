//! Integration tests: the real binary, real processes, real files.

mod common;
mod local;
mod badplans;
mod sweep;
