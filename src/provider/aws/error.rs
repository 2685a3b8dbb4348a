//! Errors of the AWS provider, and the one place SDK errors become text.

use std::path::PathBuf;

use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum AwsError {
    #[error("no AWS credentials found{profile}\n  tried: {tried}\n  (hint: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE / --profile for a profile in ~/.aws/config (`aws configure`, `aws sso login`), or run on an instance with a role)")]
    NoCredentials { profile: String, tried: String },
    #[error("failed to {action}: {message}")]
    Api { action: String, message: String },
    #[error("{0}")]
    Failed(String),
    /// A ledger object in the bucket with a negative or non-finite amount.
    #[error(transparent)]
    Ledger(#[from] crate::cost::ledger::BadEntry),
    /// Bad input or a refused confirmation: exit code 2.
    #[error("{0}")]
    Usage(String),
    #[error("cannot use {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl AwsError {
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> AwsError {
        let path = path.into();
        move |source| AwsError::Io { path, source }
    }
}

/// Text of an SDK error: the service's code and message when there is one,
/// else the whole chain of causes (connection refused, timeouts...).
pub fn describe<E, R>(err: &aws_sdk_s3::error::SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match err.as_service_error() {
        Some(e) => match (e.code(), e.message()) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c.to_string(),
            _ => aws_smithy_types::error::display::DisplayErrorContext(err).to_string(),
        },
        None => aws_smithy_types::error::display::DisplayErrorContext(err).to_string(),
    }
}

/// `map_err` helper: `.map_err(api("describe stack x"))`.
pub fn api<E, R>(
    action: impl Into<String>,
) -> impl FnOnce(aws_sdk_s3::error::SdkError<E, R>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let action = action.into();
    move |e| AwsError::Api {
        action,
        message: describe(&e),
    }
}

/// The service error code of an SDK error, if the service answered.
pub fn code<E, R>(err: &aws_sdk_s3::error::SdkError<E, R>) -> Option<&str>
where
    E: ProvideErrorMetadata,
{
    err.as_service_error().and_then(|e| e.code())
}
