//! Talking to the cluster: `sbatch`, `squeue`, `scancel`, `scontrol`,
//! each started as a program with its arguments (no shell), their answers
//! parsed by the pure functions below.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::time::Duration;

/// One of our jobs as `squeue` shows it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JobRow {
    pub id: String,
    pub name: String,
    /// `PENDING`, `RUNNING`, `COMPLETING`, ...
    pub state: String,
    /// Why it waits (`Resources`, `Priority`, `QOSMaxJobsPerUserLimit`).
    pub reason: String,
    /// Time left before its time limit (`None`: no limit).
    pub left: Option<Duration>,
    pub node: String,
    pub cpus: u32,
    /// How long it has run (`%M`, TimeUsed): the allocation time it held.
    pub used: Option<Duration>,
}

impl JobRow {
    pub fn running(&self) -> bool {
        self.state == "RUNNING"
    }
}

/// The format `list` asks `squeue` for.
const FORMAT: &str = "%i|%T|%r|%L|%N|%C|%M|%j";

/// What failed, with the hint that fits.
fn failure(program: &str, e: std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::NotFound {
        format!("`{program}` is not on PATH\n  (hint: run infra where `sbatch` works, e.g. a login node of the cluster; `scripts/slurm-test-cluster.sh start` starts a one-host cluster for tests)")
    } else {
        format!("cannot run `{program}`: {e}")
    }
}

/// Run `program args` to its end; its stdout, or its stderr as the error.
pub async fn run(program: &str, args: &[OsString]) -> Result<String, String> {
    let (p, a) = (program.to_string(), args.to_vec());
    tokio::task::spawn_blocking(move || run_blocking(&p, &a))
        .await
        .unwrap_or_else(|e| Err(format!("`{program}` did not end: {e}")))
}

/// [`run`] on this thread (a step's failure is looked at from sync code).
pub fn run_blocking(program: &str, args: &[OsString]) -> Result<String, String> {
    // not std's Command::output: the run's subreaper must not reap it
    let out =
        crate::provider::process::output_of(program, args).map_err(|e| failure(program, e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Submit a holder job; its id.
pub async fn submit(args: &[OsString]) -> Result<String, String> {
    let out = run("sbatch", args).await?;
    parse_job_id(&out).ok_or_else(|| format!("sbatch answered no job id: {out:?}"))
}

/// `--parsable`'s answer: `<id>` or `<id>;<cluster>`.
pub fn parse_job_id(out: &str) -> Option<String> {
    let id = out.trim().split(';').next()?.trim();
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())).then(|| id.to_string())
}

fn list_args() -> Vec<OsString> {
    ["--me", "--noheader", "--format", FORMAT]
        .into_iter()
        .map(OsString::from)
        .collect()
}

/// This user's jobs whose name starts with `prefix`, by id.
pub async fn list(prefix: &str) -> Result<BTreeMap<String, JobRow>, String> {
    Ok(parse_list(&run("squeue", &list_args()).await?, prefix))
}

pub fn list_blocking(prefix: &str) -> Result<BTreeMap<String, JobRow>, String> {
    Ok(parse_list(&run_blocking("squeue", &list_args())?, prefix))
}

pub fn parse_list(out: &str, prefix: &str) -> BTreeMap<String, JobRow> {
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.trim().splitn(8, '|').collect();
            let [id, state, reason, left, node, cpus, used, name] = f.as_slice() else {
                return None;
            };
            if !name.starts_with(prefix) {
                return None;
            }
            Some((
                id.to_string(),
                JobRow {
                    id: id.to_string(),
                    name: name.to_string(),
                    state: state.to_string(),
                    reason: reason.to_string(),
                    left: parse_left(left),
                    node: node.to_string(),
                    cpus: cpus.parse().unwrap_or(0),
                    used: parse_left(used),
                },
            ))
        })
        .collect()
}

/// `%L` and `%M`: `[days-]hours:minutes:seconds`, `minutes:seconds`, or
/// `UNLIMITED`/`NOT_SET`/`INVALID` (None).
pub fn parse_left(s: &str) -> Option<Duration> {
    let (days, rest) = match s.split_once('-') {
        Some((d, r)) => (d.parse::<u64>().ok()?, r),
        None => (0, s),
    };
    let parts: Option<Vec<u64>> = rest.split(':').map(|p| p.parse().ok()).collect();
    let secs = match parts?.as_slice() {
        [m, s] => m * 60 + s,
        [h, m, s] => h * 3600 + m * 60 + s,
        _ => return None,
    };
    Some(Duration::from_secs(days * 86400 + secs))
}

/// Cancel jobs (those already gone are no error).
pub async fn cancel(ids: &[String]) -> Result<(), String> {
    if ids.is_empty() {
        return Ok(());
    }
    let args: Vec<OsString> = ids.iter().map(OsString::from).collect();
    run("scancel", &args).await.map(|_| ())
}

/// The address of `node` (NodeAddr), else its name.
pub async fn node_addr(node: &str) -> String {
    let args: Vec<OsString> = ["show", "node", "--oneliner", node]
        .into_iter()
        .map(OsString::from)
        .collect();
    run("scontrol", &args)
        .await
        .ok()
        .and_then(|o| {
            o.split_whitespace()
                .find_map(|w| w.strip_prefix("NodeAddr=").map(str::to_string))
        })
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| node.to_string())
}

/// Whether a cluster answers here (`squeue` works).
pub fn available() -> bool {
    run_blocking("squeue", &list_args()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_rows_of_the_phase_are_read_and_others_left_out() {
        let out = "12|RUNNING|None|11:59:02|gpu07|48|1:02|infra.lab.sweep.gpu-0\n\
                   13|PENDING|Resources|12:00:00||48|0:00|infra.lab.sweep.gpu-1\n\
                   14|RUNNING|None|UNLIMITED|n1|1|1-00:00:00|someone-elses-job\n";
        let m = parse_list(out, "infra.lab.sweep.");
        assert_eq!(m.len(), 2);
        assert!(m["12"].running());
        assert_eq!(
            m["12"].left,
            Some(Duration::from_secs(11 * 3600 + 59 * 60 + 2))
        );
        assert_eq!(m["13"].reason, "Resources");
        assert_eq!(m["12"].cpus, 48);
        assert_eq!(m["12"].used, Some(Duration::from_secs(62)));
        assert_eq!(m["13"].used, Some(Duration::ZERO));
    }

    #[test]
    fn time_left_reads_every_form_squeue_writes() {
        assert_eq!(parse_left("9:56"), Some(Duration::from_secs(596)));
        assert_eq!(parse_left("1-02:03:04"), Some(Duration::from_secs(93784)));
        assert_eq!(parse_left("UNLIMITED"), None);
        assert_eq!(parse_left("NOT_SET"), None);
    }

    #[test]
    fn sbatch_parsable_answers_give_the_id() {
        assert_eq!(parse_job_id("123\n").as_deref(), Some("123"));
        assert_eq!(parse_job_id("77;cluster2").as_deref(), Some("77"));
        assert_eq!(parse_job_id("Submitted batch job 5"), None);
    }
}
