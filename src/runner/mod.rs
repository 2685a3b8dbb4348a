//! Running a campaign: scheduling (pure), the dispatch loop, the journal.

pub mod exec;
mod finalize;
pub mod journal;
pub mod lock;
pub mod rerun;
pub mod run;
pub mod scheduler;
pub mod signals;
