//! `infra controller --spec '<JSON>'` (hidden): a detached campaign's
//! controller on its instance in the cloud, started by the instance's user
//! data under systemd (`stacks/controller-userdata.sh.hbs`).
//!
//! It downloads the campaign package (`<phase>/_state/campaign/`) into
//! `campaign/` of its working folder (once: a restart by systemd continues
//! with what the first start downloaded and ran), then runs the package's
//! command lines with this same executable in that folder — exactly
//! `infra up` (or `infra run`) of the user's machine: the budget watchdog,
//! the journal, the results in the bucket. Their output goes to
//! `controller.log`, copied to `<phase>/_state/controller.log` every few
//! seconds (`infra attach`). A stop request (`<phase>/_state/stop.json`,
//! `infra stop`) interrupts the command like a Ctrl-C. At the end the
//! compute stack is torn down (unless `up --keep`), the stop request
//! removed, and the controller deletes its own stack, which terminates its
//! instance.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;

use super::context::Env;
use super::error::exit;
use crate::provider::aws::config::{self, AwsSettings, Clients};
use crate::provider::aws::controller::{PackageSpec, PACKAGE_SPEC};
use crate::provider::aws::{cfn, layout, s3};

#[derive(Debug, Deserialize)]
struct Spec {
    bucket: String,
    phase: String,
    region: String,
    /// The controller's own stack, deleted at the end.
    stack: String,
}

/// How often the log is copied to the bucket and the stop request looked for.
const EVERY: Duration = Duration::from_secs(3);

/// Run the controller; its exit code (non-zero only when it could not do
/// its job: systemd starts it again).
pub fn controller(spec: &str, env: &Env) -> i32 {
    let spec: Spec = match serde_json::from_str(spec) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: bad --spec: {e}");
            return exit::BAD_INPUT;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return exit::PROVIDER;
        }
    };
    match rt.block_on(run(&spec, env)) {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("error: {e}");
            exit::PROVIDER
        }
    }
}

async fn run(spec: &Spec, env: &Env) -> Result<(), String> {
    let mut settings = AwsSettings::new(spec.region.clone());
    settings.endpoint = env.vars.get("AWS_ENDPOINT_URL").cloned();
    let c = config::connect(&settings)
        .await
        .map_err(|e| e.to_string())?;
    let home = env.cwd.clone().ok_or("cannot tell the working folder")?;
    let dir = home.join("campaign");
    let package = dir.join(PACKAGE_SPEC);
    if !package.is_file() {
        let prefix = layout::campaign_prefix(&spec.phase);
        let got = s3::download_prefix(&c, &spec.bucket, &prefix, &dir)
            .await
            .map_err(|e| e.to_string())?;
        eprintln!(
            "infra controller: {} file(s) of s3://{}/{prefix}",
            got.len(),
            spec.bucket
        );
    }
    let pkg: PackageSpec = serde_json::from_slice(
        &std::fs::read(&package).map_err(|e| format!("{}: {e}", package.display()))?,
    )
    .map_err(|e| format!("{}: {e}", package.display()))?;
    let log = home.join("controller.log");
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut shipped = 0u64;
    let mut stopped = false;
    for args in &pkg.commands {
        let code = run_one(
            &c,
            spec,
            &exe,
            &pkg.global,
            args,
            &dir,
            &log,
            &mut shipped,
            &mut stopped,
        )
        .await?;
        note(
            &log,
            &format!(
                "infra controller: `infra {}` ended with exit code {code}",
                args.join(" ")
            ),
        );
        if code == exit::INTERRUPTED || code == exit::BUDGET || code == exit::BAD_INPUT {
            break;
        }
    }
    if pkg.teardown {
        // what `up` leaves after a stop, and what `run` leaves always
        let destroy = vec!["destroy".to_string(), pkg.plan.clone()];
        let mut ignore = true;
        let code = run_one(
            &c,
            spec,
            &exe,
            &pkg.global,
            &destroy,
            &dir,
            &log,
            &mut shipped,
            &mut ignore,
        )
        .await?;
        note(
            &log,
            &format!("infra controller: teardown ended with exit code {code}"),
        );
    }
    let _ =
        c.s3.delete_object()
            .bucket(&spec.bucket)
            .key(layout::stop_key(&spec.phase))
            .send()
            .await;
    note(
        &log,
        &format!(
            "infra controller: done; deleting stack {} (this instance)",
            spec.stack
        ),
    );
    ship(&c, spec, &log, &mut shipped, true).await;
    // the stack's deletion terminates this instance (and this process)
    let mut delay = Duration::from_secs(2);
    for _ in 0..8 {
        match cfn::delete(&c, &spec.stack).await {
            Ok(()) => break,
            Err(e) => {
                eprintln!("infra controller: cannot delete stack {}: {e}", spec.stack);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        }
    }
    Ok(())
}

/// Run `exe <global> <args>` in `dir` with its output appended to `log`,
/// copying the log to the bucket and watching for a stop request until it
/// ends; its exit code.
#[allow(clippy::too_many_arguments)]
async fn run_one(
    c: &Clients,
    spec: &Spec,
    exe: &Path,
    global: &[String],
    args: &[String],
    dir: &Path,
    log: &PathBuf,
    shipped: &mut u64,
    stopped: &mut bool,
) -> Result<i32, String> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut child = tokio::process::Command::new(exe)
        .args(global)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(|e| e.to_string())?;
                ship(c, spec, log, shipped, true).await;
                return Ok(status.code().unwrap_or(exit::INTERRUPTED));
            }
            _ = tokio::time::sleep(EVERY) => {
                ship(c, spec, log, shipped, false).await;
                if !*stopped && stop_requested(c, spec).await {
                    *stopped = true;
                    note(log, "infra controller: stop requested (infra stop): stopping like a Ctrl-C");
                    if let Some(pid) = child.id() {
                        // SAFETY: a signal to our own child.
                        unsafe { libc::kill(pid as i32, libc::SIGINT) };
                    }
                }
            }
        }
    }
}

async fn stop_requested(c: &Clients, spec: &Spec) -> bool {
    matches!(
        s3::get(c, &spec.bucket, &layout::stop_key(&spec.phase)).await,
        Ok(Some(_))
    )
}

/// Copy the log to the bucket when it grew (or always with `force`).
async fn ship(c: &Clients, spec: &Spec, log: &Path, shipped: &mut u64, force: bool) {
    let Ok(bytes) = std::fs::read(log) else {
        return;
    };
    if !force && bytes.len() as u64 == *shipped {
        return;
    }
    let n = bytes.len() as u64;
    match s3::put(
        c,
        &spec.bucket,
        &layout::controller_log_key(&spec.phase),
        bytes,
    )
    .await
    {
        Ok(()) => *shipped = n,
        Err(e) => eprintln!("infra controller: cannot copy the log: {e}"),
    }
}

/// A line of the controller's own in its log (and on stderr: the journal).
fn note(log: &Path, line: &str) {
    eprintln!("{line}");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        use std::io::Write;
        let _ = writeln!(f, "{line}");
    }
}
