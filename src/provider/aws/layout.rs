//! Where everything lives in the project's bucket: the one place key
//! prefixes are spelled out (the controller's readers and writers, and the
//! IAM policies of the stacks, `src/stacks/policy.rs`, use these).
//!
//! - controller only: `_infra/bin/...` (node agent binaries), `_ledger/...`,
//!   `_templates/...` (stack templates too big to inline),
//!   `<phase>/_bundle/...`, `<phase>/_bundle.manifest`, `<phase>/_state/...`
//! - written by the phase's nodes: `<phase>/results/<task>/attempt-<n>/...`
//!   (step uploads), `<phase>/checkpoints/...`, `<phase>/logs/...` (setup
//!   logs `<phase>/logs/setup/<instance>.log`, SSM command output
//!   `<phase>/logs/ssm/...`)
//! - read by the phase's nodes: `_infra/bin/*`, `<phase>/_bundle/*`,
//!   `<phase>/_bundle.manifest`, `<phase>/checkpoints/*`
//!
//! `phase` is always the plan's `name_key` (letters, digits, `-`, `_`, `.`;
//! the names of the top-level controller prefixes are refused as phase
//! names, see [`RESERVED_PHASES`]).
//!
//! Versions before this layout wrote results to `<phase>/<task>/attempt-<n>/`,
//! setup logs to `<phase>/_setup/` and SSM output to `<phase>/_ssm/`; those
//! objects stay under `<phase>/` (deleted with it by `destroy --delete-results`).

/// Node agent binaries: `_infra/bin/<sha256>/<arch>/infra`.
pub const BIN_PREFIX: &str = "_infra/bin";
/// Everything of infra itself that is no phase's (binaries).
pub const INFRA_PREFIX: &str = "_infra";
/// The spend ledger: `_ledger/<phase>/<stamp>-<hash>.jsonl`.
pub const LEDGER_PREFIX: &str = "_ledger";
/// Stack templates over the inline size limit.
pub const TEMPLATES_PREFIX: &str = "_templates";

/// Top-level names that are infra's own; a phase may not be called so (its
/// prefix would fall inside them).
pub const RESERVED_PHASES: [&str; 3] = [INFRA_PREFIX, LEDGER_PREFIX, TEMPLATES_PREFIX];

/// Sub-prefixes of a phase (`<phase>/<sub>`).
pub const RESULTS: &str = "results";
pub const CHECKPOINTS: &str = "checkpoints";
pub const LOGS: &str = "logs";
pub const BUNDLE: &str = "_bundle";
pub const MANIFEST: &str = "_bundle.manifest";
pub const STATE: &str = "_state";

/// `<phase>/` — everything of a phase.
pub fn phase_prefix(phase: &str) -> String {
    format!("{phase}/")
}

/// `<phase>/results` — the step uploads of every task.
pub fn results_prefix(phase: &str) -> String {
    format!("{phase}/{RESULTS}")
}

/// `<phase>/results/<task>/attempt-<n>` — one attempt's uploads.
pub fn attempt_prefix(phase: &str, task: &str, attempt: u32) -> String {
    format!("{}/{task}/attempt-{attempt}", results_prefix(phase))
}

/// `<phase>/results/<task>/attempt-<n>/_final` — the attempt's result as
/// the controller finalized it (`runtime.json`, `stdout.log`,
/// `stderr.log`; the outputs are the attempt's `files/`), for any checkout
/// to fetch.
pub fn final_prefix(phase: &str, task: &str, attempt: u32) -> String {
    format!("{}/_final", attempt_prefix(phase, task, attempt))
}

/// Where versions before this layout put an attempt's uploads.
pub fn legacy_attempt_prefix(phase: &str, task: &str, attempt: u32) -> String {
    format!("{phase}/{task}/attempt-{attempt}")
}

/// `<phase>/checkpoints`.
pub fn checkpoints_prefix(phase: &str) -> String {
    format!("{phase}/{CHECKPOINTS}")
}

/// `<phase>/logs`.
pub fn logs_prefix(phase: &str) -> String {
    format!("{phase}/{LOGS}")
}

/// `<phase>/logs/setup` — `<instance>.log` per node.
pub fn setup_log_prefix(phase: &str) -> String {
    format!("{}/setup", logs_prefix(phase))
}

/// `<phase>/logs/live/<task>/attempt-<n>` — what the node agent uploads
/// of a running attempt's logs every few seconds (`node::live`'s chunks),
/// for `infra logs --follow`.
pub fn live_prefix(phase: &str, task: &str, attempt: u32) -> String {
    format!("{}/live/{task}/attempt-{attempt}", logs_prefix(phase))
}

/// The live logs' destination of a step whose uploads go to `dest`
/// (`s3://<bucket>/<phase>/results/<task>/attempt-<n>`); None for any
/// other form.
pub fn live_dest(dest: &str) -> Option<String> {
    let (bucket, key) = dest.strip_prefix("s3://")?.split_once('/')?;
    let (phase, rest) = key.split_once(&format!("/{RESULTS}/"))?;
    let (task, n) = rest.rsplit_once("/attempt-")?;
    let n: u32 = n.parse().ok()?;
    (!phase.is_empty() && !task.is_empty() && !task.contains('/'))
        .then(|| format!("s3://{bucket}/{}", live_prefix(phase, task, n)))
}

/// `<phase>/logs/ssm` — Run Command output (OutputS3KeyPrefix).
pub fn ssm_output_prefix(phase: &str) -> String {
    format!("{}/ssm", logs_prefix(phase))
}

/// `<phase>/_bundle` — the task bundle (scripts, task definitions).
pub fn bundle_prefix(phase: &str) -> String {
    format!("{phase}/{BUNDLE}")
}

/// `<phase>/_bundle.manifest` — relative path → sha256 of the bundle.
pub fn manifest_key(phase: &str) -> String {
    format!("{phase}/{MANIFEST}")
}

/// `<phase>/_state` — the campaign's state (controller only).
pub fn state_prefix(phase: &str) -> String {
    format!("{phase}/{STATE}")
}

/// `<phase>/_state/lease.json` — the controller's lease (see
/// `campaign::lease`); nodes may read it, never write it.
pub fn lease_key(phase: &str) -> String {
    format!("{}/lease.json", state_prefix(phase))
}

/// `<phase>/_state/stop.json` — `infra stop` asks the controller to stop.
pub fn stop_key(phase: &str) -> String {
    format!("{}/stop.json", state_prefix(phase))
}

/// `<phase>/_state/journal/` — the journal, as numbered segments
/// `<seq:010>.jsonl` of whole lines, in order.
pub fn journal_prefix(phase: &str) -> String {
    format!("{}/journal/", state_prefix(phase))
}

/// `<phase>/_state/journal/<seq:010>.jsonl` — one journal segment.
pub fn journal_segment_key(phase: &str, seq: u64) -> String {
    format!("{}{seq:010}.jsonl", journal_prefix(phase))
}

/// The number of a journal segment from its key (`None` for any other key).
pub fn journal_segment_seq(phase: &str, key: &str) -> Option<u64> {
    let n = key
        .strip_prefix(&journal_prefix(phase))?
        .strip_suffix(".jsonl")?;
    (n.len() == 10 && n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
}

/// `<phase>/_state/campaign/` — what a detached controller runs from (the
/// plan and the project files it needs).
pub fn campaign_prefix(phase: &str) -> String {
    format!("{}/campaign/", state_prefix(phase))
}

/// `<phase>/_state/controller.log` — a detached controller's output, for
/// `infra attach`.
pub fn controller_log_key(phase: &str) -> String {
    format!("{}/controller.log", state_prefix(phase))
}

/// `_ledger/` — every phase's ledger objects.
pub fn ledger_prefix() -> String {
    format!("{LEDGER_PREFIX}/")
}

/// `_ledger/<phase>/<name>` — one metering's ledger object.
pub fn ledger_key(phase: &str, name: &str) -> String {
    format!("{LEDGER_PREFIX}/{phase}/{name}")
}

/// `_infra/bin/<sha256>/<arch>/infra` — a node agent binary.
pub fn binary_key(sha256: &str, arch: &str) -> String {
    format!("{BIN_PREFIX}/{sha256}/{arch}/infra")
}

/// `_templates/<name>` — a stack template deployed from the bucket.
pub fn template_key(name: &str) -> String {
    format!("{TEMPLATES_PREFIX}/{name}")
}

/// True for keys of infra itself, outside every phase (kept by `destroy
/// --all --delete-results` until the bucket goes, not a phase's leftovers).
pub fn is_infra_key(key: &str) -> bool {
    key.starts_with(&format!("{TEMPLATES_PREFIX}/"))
        || key.starts_with(&format!("{LEDGER_PREFIX}/"))
        || key.starts_with(&format!("{INFRA_PREFIX}/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_prefix_of_a_phase_is_under_the_phase() {
        let p = "train.v2";
        assert_eq!(
            attempt_prefix(p, "t-1", 3),
            "train.v2/results/t-1/attempt-3"
        );
        assert_eq!(setup_log_prefix(p), "train.v2/logs/setup");
        assert_eq!(ssm_output_prefix(p), "train.v2/logs/ssm");
        assert_eq!(bundle_prefix(p), "train.v2/_bundle");
        assert_eq!(manifest_key(p), "train.v2/_bundle.manifest");
        assert_eq!(checkpoints_prefix(p), "train.v2/checkpoints");
        assert_eq!(state_prefix(p), "train.v2/_state");
        for k in [
            attempt_prefix(p, "t", 1),
            setup_log_prefix(p),
            ssm_output_prefix(p),
            bundle_prefix(p),
            manifest_key(p),
            checkpoints_prefix(p),
            state_prefix(p),
        ] {
            assert!(k.starts_with(&phase_prefix(p)), "{k}");
        }
        assert_eq!(ledger_key(p, "x.jsonl"), "_ledger/train.v2/x.jsonl");
        assert!(ledger_key(p, "x").starts_with(&ledger_prefix()));
        assert_eq!(binary_key("ab", "x86_64"), "_infra/bin/ab/x86_64/infra");
        assert!(is_infra_key(&binary_key("ab", "x86_64")));
        assert!(is_infra_key(&template_key("s.json")));
        assert!(!is_infra_key(&attempt_prefix(p, "t", 1)));
        assert_eq!(
            final_prefix(p, "t", 2),
            "train.v2/results/t/attempt-2/_final"
        );
        assert_eq!(live_prefix(p, "t", 2), "train.v2/logs/live/t/attempt-2");
        assert!(live_prefix(p, "t", 2).starts_with(&format!("{}/", logs_prefix(p))));
        assert_eq!(
            live_dest(&format!("s3://b/{}", attempt_prefix(p, "t-1", 3))).as_deref(),
            Some("s3://b/train.v2/logs/live/t-1/attempt-3")
        );
        assert_eq!(live_dest("s3://b/train.v2/other/t/attempt-1"), None);
        let k = journal_segment_key(p, 42);
        assert_eq!(k, "train.v2/_state/journal/0000000042.jsonl");
        assert_eq!(journal_segment_seq(p, &k), Some(42));
        assert_eq!(
            journal_segment_seq(p, "train.v2/_state/journal/x.jsonl"),
            None
        );
        assert_eq!(journal_segment_seq("other", &k), None);
    }
}
