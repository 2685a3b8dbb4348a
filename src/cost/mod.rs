//! Cost: the estimate, the budget verdict, the spend ledger, the report.

pub mod estimate;
pub mod fit;
pub mod hours;
pub mod ledger;
pub mod report;
