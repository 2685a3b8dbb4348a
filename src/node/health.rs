//! `infra node health`: wait until a background step answers (its URL gives
//! a 2xx, or its command exits 0) while it still runs. 0 healthy, 1 not
//! healthy in time, 3 the step ended first, 175 spot interruption.
//!
//! URLs are fetched with a small HTTP/1.1 client of its own (no curl on the
//! node): `http://` only; a health check is a local endpoint of the task's
//! own server.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::proc::{self, Reaper, Tree};
use super::spec::{check_component, HealthSpec};
use super::upload::S3;
use super::{bundle, spot, Fail, EXIT_INTERRUPTED, EXIT_USAGE, HEALTH_STEP_ENDED};

pub async fn health(root: &Path, s: HealthSpec) -> Result<i32, Fail> {
    check_component("task", &s.task)?;
    check_component("key", &s.key)?;
    if let Some(u) = &s.url {
        if parse_http(u).is_none() {
            return Err(Fail::new(
                EXIT_USAGE,
                format!("bad --spec: health url {u:?} is not http://host[:port]/path"),
            ));
        }
    }
    bundle::ensure(root, s.bundle.as_ref(), &S3::default()).await?;
    let attempt = s.attempt.to_string();
    let run = root.join("run").join(&s.task).join(&attempt).join(&s.key);
    let work = root.join("work").join(&s.task).join(&attempt);
    let imds = spot::client();
    let started = Instant::now();
    let interval = Duration::from_secs_f64(if s.interval_seconds.is_finite() {
        s.interval_seconds.clamp(0.05, 3600.0)
    } else {
        1.0
    });
    loop {
        if let Ok(rc) = std::fs::read_to_string(run.join("rc")) {
            println!(
                "infra-node: background step {} ended (code {}) before it became healthy",
                s.key,
                rc.trim()
            );
            return Ok(HEALTH_STEP_ENDED);
        }
        if let Some(u) = &s.url {
            if http_ok(u).await {
                println!("infra-node: healthy ({u})");
                return Ok(0);
            }
        } else if let Some(c) = &s.command {
            if command_ok(c, &work).await {
                println!("infra-node: healthy");
                return Ok(0);
            }
        }
        if spot::notice(&imds).await {
            return Ok(EXIT_INTERRUPTED);
        }
        if started.elapsed().as_secs_f64() >= s.timeout_seconds {
            println!("infra-node: not healthy after {}s", s.timeout_seconds);
            return Ok(1);
        }
        tokio::time::sleep(interval).await;
    }
}

/// `http://host[:port][/path]` -> (host, port, path).
fn parse_http(url: &str) -> Option<(String, u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    if hostport.is_empty() || hostport.contains('@') {
        return None;
    }
    let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
        let (h, p) = h.split_once(']')?;
        let port = match p.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if p.is_empty() => 80,
            None => return None,
        };
        (h.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (hostport.to_string(), 80),
        }
    };
    if path.contains(['\r', '\n', ' ']) {
        return None;
    }
    Some((host, port, path))
}

/// True when GET `url` answers 2xx within 5 s.
async fn http_ok(url: &str) -> bool {
    let Some((host, port, path)) = parse_http(url) else {
        return false;
    };
    let get = async {
        let mut s = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .ok()?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: infra-node\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut head = Vec::new();
        let mut buf = [0u8; 512];
        while !head.contains(&b'\n') && head.len() < 4096 {
            let n = s.read(&mut buf).await.ok()?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&head);
        let code: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some((200..300).contains(&code))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), get).await,
        Ok(Some(true))
    )
}

/// True when `command` exits 0 within 10 s (run by the shell in the work
/// folder, its own session, output discarded; killed whole at the limit).
async fn command_ok(command: &str, work: &Path) -> bool {
    let cwd = if work.is_dir() { work } else { Path::new("/") };
    let null = || std::fs::File::options().write(true).open("/dev/null");
    let (Ok(o), Ok(e)) = (null(), null()) else {
        return false;
    };
    let shell = super::fsio::shell();
    let args = [std::ffi::OsStr::new("-c"), std::ffi::OsStr::new(command)];
    let Ok(pid) = proc::spawn_session(&shell, &args, cwd, &[], o, e) else {
        return false;
    };
    let mut reaper = Reaper::new(pid);
    let done = tokio::time::timeout(Duration::from_secs(10), proc::exited(pid)).await;
    if done.is_err() {
        let never = |_: &[Vec<u8>]| false;
        let tree = Tree {
            descendants_of: None,
            tagged: &never,
        };
        proc::kill_tree(&tree, Some(pid), Duration::ZERO, &mut reaper).await;
    }
    reaper.wait_leader();
    done.is_ok() && reaper.code() == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_urls() {
        assert_eq!(
            parse_http("http://127.0.0.1:8080/ping"),
            Some(("127.0.0.1".into(), 8080, "/ping".into()))
        );
        assert_eq!(
            parse_http("http://localhost"),
            Some(("localhost".into(), 80, "/".into()))
        );
        assert_eq!(
            parse_http("http://[::1]:9/x"),
            Some(("::1".into(), 9, "/x".into()))
        );
        assert_eq!(parse_http("https://x/"), None);
        assert_eq!(parse_http("http://x:y/"), None);
    }
}
