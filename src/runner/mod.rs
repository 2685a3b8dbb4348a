//! Running a campaign: scheduling (pure), the dispatch loop, the journal.

pub mod exec;
pub mod journal;
pub mod run;
pub mod scheduler;
pub mod lock;
