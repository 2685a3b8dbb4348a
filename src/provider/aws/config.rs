//! All AWS SDK configuration, in one place: the standard credential chain,
//! the profile, the region, an endpoint override (`AWS_ENDPOINT_URL`, how
//! the tests reach the emulator) for every service, retries with backoff on
//! throttling. The rest of the provider receives `Clients`.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::provider::ProvideCredentials;

use super::error::AwsError;

/// What the user asked for, resolved once from arguments, plan and
/// environment (`cli::settings`).
#[derive(Debug, Clone)]
pub struct AwsSettings {
    pub region: String,
    pub profile: Option<String>,
    /// Endpoint of every service (`AWS_ENDPOINT_URL`); S3 goes path-style.
    pub endpoint: Option<String>,
    /// Attempts per API call (throttling and transient errors are retried
    /// with exponential backoff and jitter).
    pub max_attempts: u32,
    /// Interval between status polls (stacks, nodes, commands).
    pub poll: Duration,
}

impl AwsSettings {
    pub fn new(region: impl Into<String>) -> AwsSettings {
        AwsSettings {
            region: region.into(),
            profile: None,
            endpoint: None,
            max_attempts: 10,
            poll: Duration::from_secs(2),
        }
    }
}

/// One client per service, all built from the same configuration.
#[derive(Clone, Debug)]
pub struct Clients {
    pub cfn: aws_sdk_cloudformation::Client,
    /// CloudFormation with a single attempt, for CreateStack: a retried
    /// CreateStack whose first try went through sees AlreadyExists.
    pub cfn_once: aws_sdk_cloudformation::Client,
    pub ec2: aws_sdk_ec2::Client,
    pub s3: aws_sdk_s3::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub settings: AwsSettings,
}

fn retry(max_attempts: u32) -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(max_attempts.max(1))
        .with_initial_backoff(Duration::from_millis(500))
        .with_max_backoff(Duration::from_secs(20))
}

/// The SDK configuration of `settings` for `region` (the Pricing API has
/// its own), with credentials that can be found.
pub async fn sdk_config(
    settings: &AwsSettings,
    region: &str,
) -> Result<aws_config::SdkConfig, AwsError> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .retry_config(retry(settings.max_attempts));
    if let Some(p) = &settings.profile {
        loader = loader.profile_name(p);
    }
    if let Some(e) = &settings.endpoint {
        loader = loader.endpoint_url(e);
    }
    let conf = loader.load().await;
    check_credentials(&conf, settings).await?;
    Ok(conf)
}

/// Build the clients and make sure credentials can be found.
pub async fn connect(settings: &AwsSettings) -> Result<Clients, AwsError> {
    let conf = sdk_config(settings, &settings.region).await?;
    let cfn_once = aws_sdk_cloudformation::config::Builder::from(&conf)
        .retry_config(retry(1))
        .build();
    let s3 = aws_sdk_s3::config::Builder::from(&conf)
        .force_path_style(settings.endpoint.is_some())
        .build();
    Ok(Clients {
        cfn: aws_sdk_cloudformation::Client::new(&conf),
        cfn_once: aws_sdk_cloudformation::Client::from_conf(cfn_once),
        ec2: aws_sdk_ec2::Client::new(&conf),
        s3: aws_sdk_s3::Client::from_conf(s3),
        ssm: aws_sdk_ssm::Client::new(&conf),
        settings: settings.clone(),
    })
}

async fn check_credentials(
    conf: &aws_config::SdkConfig,
    settings: &AwsSettings,
) -> Result<(), AwsError> {
    let profile = match &settings.profile {
        Some(p) => format!(" for profile \"{p}\""),
        None => String::new(),
    };
    let tried = "environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), \
                 the profile in ~/.aws/credentials and ~/.aws/config (AWS_PROFILE, --profile; SSO, assume-role, credential_process), \
                 web identity (AWS_WEB_IDENTITY_TOKEN_FILE), the ECS container endpoint, the EC2 instance metadata service";
    let Some(provider) = conf.credentials_provider() else {
        return Err(AwsError::NoCredentials {
            profile,
            tried: tried.into(),
        });
    };
    match provider.provide_credentials().await {
        Ok(_) => Ok(()),
        Err(e) => {
            let why = error_chain(&e);
            Err(AwsError::NoCredentials {
                profile,
                tried: format!("{tried}\n  last error: {why}"),
            })
        }
    }
}

/// An error and its sources as text, each message once (the SDK's
/// `DisplayErrorContext` ends with the error's debug structure, which is
/// not for people).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !t.is_empty() && !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// The URL CloudFormation reads a template from (`TemplateURL`): the
/// path-style S3 URL of the region, the form `aws cloudformation package`
/// writes. (The emulator reads it from its own S3 too.)
pub fn object_url(settings: &AwsSettings, bucket: &str, key: &str) -> String {
    format!(
        "https://s3.{}.amazonaws.com/{bucket}/{key}",
        settings.region
    )
}

/// Whether an error code means "slow down" (the request was not processed).
pub fn is_throttling(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "Throttling"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "SlowDown"
                | "TooManyRequestsException"
                | "RequestThrottled"
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_urls_are_path_style() {
        let s = AwsSettings::new("eu-north-1");
        assert_eq!(
            object_url(&s, "b", "k/t.json"),
            "https://s3.eu-north-1.amazonaws.com/b/k/t.json"
        );
        assert!(is_throttling(Some("Throttling")));
        assert!(!is_throttling(Some("ValidationError")));
        assert!(!is_throttling(None));
    }
}
