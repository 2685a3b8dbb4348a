//! The command layer's error, and the one place errors and run outcomes
//! become exit codes.

use std::path::PathBuf;

use thiserror::Error;

use crate::plan::{self, LoadError};
use crate::provider::ProviderError;
use crate::runner::run::RunSummary;
use crate::runner::{journal, run as runner};
use crate::tasks::render::RenderError;

pub mod exit {
    pub const OK: i32 = 0;
    pub const TASK_FAILURES: i32 = 1;
    pub const BAD_INPUT: i32 = 2;
    pub const BUDGET: i32 = 3;
    pub const PROVIDER: i32 = 4;
    pub const INTERRUPTED: i32 = 130;
}

#[derive(Debug, Error)]
pub enum AppError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    Select(#[from] plan::select::SelectError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Budget(String),
    /// A ledger entry with a negative or non-finite amount: exit 3.
    #[error(transparent)]
    Ledger(#[from] crate::cost::ledger::BadEntry),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Run(#[from] runner::RunError),
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    /// Another controller holds the campaign's lease: exit 4.
    #[error(transparent)]
    Lease(Box<crate::campaign::LeaseError>),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl From<crate::stacks::StackError> for AppError {
    fn from(e: crate::stacks::StackError) -> AppError {
        AppError::Provider(ProviderError::Stack(e))
    }
}

impl From<crate::provider::aws::error::AwsError> for AppError {
    fn from(e: crate::provider::aws::error::AwsError) -> AppError {
        AppError::Provider(ProviderError::Aws(e))
    }
}

impl From<crate::campaign::LeaseError> for AppError {
    fn from(e: crate::campaign::LeaseError) -> AppError {
        AppError::Lease(Box::new(e))
    }
}

impl AppError {
    pub fn exit_code(&self) -> i32 {
        match self {
            AppError::Load(_) | AppError::Render(_) | AppError::Select(_) | AppError::Usage(_) => {
                exit::BAD_INPUT
            }
            AppError::Provider(p) if p.is_bad_input() => exit::BAD_INPUT,
            AppError::Provider(ProviderError::Interrupted(_)) => exit::INTERRUPTED,
            AppError::Budget(_)
            | AppError::Ledger(_)
            | AppError::Provider(ProviderError::Ledger(_)) => exit::BUDGET,
            AppError::Provider(_)
            | AppError::Run(_)
            | AppError::Journal(_)
            | AppError::Lease(_)
            | AppError::Io { .. } => exit::PROVIDER,
        }
    }
}

pub fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> AppError {
    let path = path.into();
    move |source| AppError::Io { path, source }
}

/// The exit code of a run, the same for every provider: the budget's stop
/// first, then an interruption, then the tasks' own failures, then tasks
/// the nodes could not run (gone, and not replaced).
pub fn run_exit_code(s: &RunSummary) -> i32 {
    if s.budget_stop {
        exit::BUDGET
    } else if s.interrupted {
        exit::INTERRUPTED
    } else if s.failed > 0 {
        exit::TASK_FAILURES
    } else if s.pending > 0 {
        exit::PROVIDER
    } else {
        exit::OK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(f: impl FnOnce(&mut RunSummary)) -> RunSummary {
        let mut s = RunSummary::default();
        f(&mut s);
        s
    }

    #[test]
    fn run_outcomes_map_to_exit_codes_in_order_of_precedence() {
        assert_eq!(run_exit_code(&summary(|_| {})), exit::OK);
        assert_eq!(run_exit_code(&summary(|s| s.pending = 2)), exit::PROVIDER);
        assert_eq!(
            run_exit_code(&summary(|s| {
                s.pending = 2;
                s.failed = 1
            })),
            exit::TASK_FAILURES
        );
        assert_eq!(
            run_exit_code(&summary(|s| {
                s.failed = 1;
                s.interrupted = true
            })),
            exit::INTERRUPTED
        );
        assert_eq!(
            run_exit_code(&summary(|s| {
                s.interrupted = true;
                s.budget_stop = true
            })),
            exit::BUDGET
        );
    }

    #[test]
    fn plan_mistakes_found_while_rendering_stacks_are_bad_input() {
        let e = AppError::from(crate::stacks::StackError::TooManyZones { count: 9, max: 6 });
        assert_eq!(e.exit_code(), exit::BAD_INPUT);
        let e = AppError::Provider(ProviderError::Failed("nodes did not come up".into()));
        assert_eq!(e.exit_code(), exit::PROVIDER);
    }
}
