//! Bringing other tools' experiment designs over as plans: doe-suite's
//! suite designs (`infra import doe-suite`; docs/DOE-SUITE.md).

pub mod design;
pub mod doe_suite;
pub mod etl;
pub mod expand;
mod factors;
pub mod to_plan;
pub mod yaml;
