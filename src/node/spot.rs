//! The instance metadata service (IMDSv2): spot interruption notices and the
//! instance id, through the SDK's IMDS client (which honours
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT`, as the emulator sets it), else
//! `$INFRA_IMDS_URL`, else the link-local address.

use std::path::Path;
use std::time::Duration;

use aws_config::imds::Client;

/// The IMDS client: built once per agent (it keeps its session token).
pub fn client() -> Client {
    let mut b = Client::builder()
        .max_attempts(1)
        .connect_timeout(Duration::from_secs(2))
        .read_timeout(Duration::from_secs(2));
    if std::env::var_os("AWS_EC2_METADATA_SERVICE_ENDPOINT").is_none() {
        if let Ok(u) = std::env::var("INFRA_IMDS_URL") {
            if let Ok(nb) = b.clone().endpoint(format!("{}/", u.trim_end_matches('/'))) {
                b = nb;
            }
        }
    }
    b.build()
}

/// True when a spot interruption notice is out for this instance.
pub async fn notice(c: &Client) -> bool {
    c.get("/latest/meta-data/spot/instance-action")
        .await
        .is_ok()
}

/// Poll for a notice every `interval`; returns once there is one (never
/// when there is none).
pub async fn watch(interval: Duration) {
    let c = client();
    loop {
        tokio::time::sleep(interval).await;
        if notice(&c).await {
            return;
        }
    }
}

/// The seconds between checks: `$INFRA_WATCH_INTERVAL`, else 1.
pub fn interval() -> Duration {
    std::env::var("INFRA_WATCH_INTERVAL")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v > 0.0)
        .map(|v| Duration::from_secs_f64(v.clamp(0.05, 3600.0)))
        .unwrap_or(Duration::from_secs(1))
}

/// This instance's id: `$INFRA_INSTANCE_ID`, else the one remembered in
/// `$ROOT/instance-id`, else IMDS (remembered there), else the host name.
pub async fn instance_id(root: &Path) -> String {
    if let Ok(v) = std::env::var("INFRA_INSTANCE_ID") {
        if !v.is_empty() {
            return v;
        }
    }
    let cache = root.join("instance-id");
    if let Ok(v) = std::fs::read_to_string(&cache) {
        if !v.trim().is_empty() {
            return v.trim().to_string();
        }
    }
    if let Ok(v) = client().get("/latest/meta-data/instance-id").await {
        let v = v.as_ref().trim().to_string();
        if !v.is_empty() {
            // a cache only: when it cannot be written, IMDS is asked again
            let _ = super::fsio::write_atomic(&cache, v.as_bytes());
            return v;
        }
    }
    hostname()
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer's length is passed; the name is NUL-terminated.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "unknown".into();
    }
    let n = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..n]).into_owned()
}
