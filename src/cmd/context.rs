//! What every command starts from: the settings, resolved once from the
//! arguments and the environment, and the writer its output goes to.

use std::cell::RefCell;
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::error::{io_err, AppError};
use crate::catalog::Catalog;
use crate::cli::Global;
use crate::cost::{estimate as est, ledger};
use crate::plan::{self, LoadError, Plan, ProviderKind};
use crate::provider::{self, Provider};
use crate::runner::journal::{self, Status};
use crate::stacks;
use crate::tasks::render::{render_all, write_all};
use crate::tasks::TaskDef;

/// The environment a command may read, captured once in `main` (tests
/// pass their own).
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub cwd: Option<PathBuf>,
    pub vars: std::collections::BTreeMap<String, String>,
    /// Whether stderr is a terminal (progress bars).
    pub stderr_tty: bool,
}

impl Env {
    /// This process's working folder and the variables `infra` reads.
    pub fn from_process() -> Env {
        const READ: &[&str] = &[
            "INFRA_CATALOG",
            "XDG_CACHE_HOME",
            "HOME",
            "INFRA_WATCHDOG_SECONDS",
            "INFRA_PROGRESS_SECONDS",
            "AWS_ENDPOINT_URL",
            "AWS_MAX_ATTEMPTS",
            "INFRA_POLL_SECONDS",
            "INFRA_NODES_TIMEOUT_SECONDS",
            "INFRA_REPLACEMENT_WAIT_SECONDS",
            "INFRA_JOURNAL_SYNC_SECONDS",
            "CI",
            "INFRA_NODE_BINARY_X86_64",
            "INFRA_NODE_BINARY_AARCH64",
            "INFRA_LEASE_RENEW_SECONDS",
            "INFRA_CONTROLLER_WHERE",
            "USER",
            "LOGNAME",
            "INFRA_STOP_WAIT_SECONDS",
        ];
        use std::io::IsTerminal;
        Env {
            cwd: std::env::current_dir().ok(),
            stderr_tty: std::io::stderr().is_terminal(),
            vars: READ
                .iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
                .collect(),
        }
    }

    fn var(&self, k: &str) -> Option<&str> {
        self.vars
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    /// A positive, finite number of the variable `k`.
    fn positive(&self, k: &str) -> Option<f64> {
        self.var(k)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v > 0.0)
    }
}

/// Settings resolved once from the arguments and the environment, and the
/// writer of the command's output (stdout, or a buffer in tests).
pub struct Ctx {
    pub cwd: PathBuf,
    pub json: bool,
    pub provider: Option<ProviderKind>,
    pub region: Option<String>,
    /// The user's refreshed catalog (`infra catalog refresh`), if any.
    pub catalog_path: PathBuf,
    /// How often the budget watchdog looks at the spend.
    pub watchdog_interval: Duration,
    /// Draw a progress bar (stderr is a terminal, not in CI).
    pub progress_bar: bool,
    /// Without a terminal, a progress line at least this often
    /// (`INFRA_PROGRESS_SECONDS`, default 30 s).
    pub progress_interval: Duration,
    /// How long `infra stop` waits for the controller
    /// (`INFRA_STOP_WAIT_SECONDS`, default 600 s).
    pub stop_wait: Duration,
    /// What the providers get.
    pub provider_settings: provider::Settings,
    /// How often a controller renews its lease (`INFRA_LEASE_RENEW_SECONDS`).
    pub lease_renew: Duration,
    /// Who this controller is, for the lease.
    holder: crate::campaign::Holder,
    /// With `--json`: the command streams (`run`, `up`, `attach`), so each
    /// document is one line with an `"event"` (JSON Lines); otherwise the
    /// command writes one document.
    stream: std::cell::Cell<bool>,
    out: RefCell<Box<dyn Write>>,
}

impl Ctx {
    pub fn new(g: &Global, env: &Env, out: Box<dyn Write>) -> Result<Ctx, AppError> {
        let cwd = match (&g.dir, &env.cwd) {
            (Some(d), Some(cwd)) => cwd.join(d),
            (Some(d), None) => d.clone(),
            (None, Some(cwd)) => cwd.clone(),
            (None, None) => return Err(AppError::Usage(
                "cannot tell the current folder\n  (hint: pass the project folder with -C <dir>)"
                    .into(),
            )),
        };
        let catalog_path = match env.var("INFRA_CATALOG") {
            Some(p) => PathBuf::from(p),
            None => env
                .var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| env.var("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"))
                .join("infra")
                .join("catalog.json"),
        };
        let secs = |k: &str| env.positive(k).map(Duration::from_secs_f64);
        let provider_settings = provider::Settings {
            region: g.region.clone(),
            profile: g.profile.clone(),
            endpoint: env.var("AWS_ENDPOINT_URL").map(str::to_string),
            max_attempts: env.positive("AWS_MAX_ATTEMPTS").map(|n| n as u32),
            poll: env
                .positive("INFRA_POLL_SECONDS")
                .map(|p| Duration::from_secs_f64(p.clamp(0.05, 60.0))),
            nodes_timeout: secs("INFRA_NODES_TIMEOUT_SECONDS"),
            replacement_wait: secs("INFRA_REPLACEMENT_WAIT_SECONDS")
                .unwrap_or(Duration::from_secs(600)),
            node_binaries: ["INFRA_NODE_BINARY_X86_64", "INFRA_NODE_BINARY_AARCH64"]
                .iter()
                .filter_map(|k| Some((k.to_string(), env.var(k)?.to_string())))
                .collect(),
            journal_sync: secs("INFRA_JOURNAL_SYNC_SECONDS").unwrap_or(Duration::from_secs(2)),
            log: Arc::new(|l: &str| eprintln!("{l}")),
        };
        Ok(Ctx {
            cwd,
            json: g.json,
            region: g.region.clone(),
            catalog_path,
            watchdog_interval: secs("INFRA_WATCHDOG_SECONDS").unwrap_or(Duration::from_secs(30)),
            provider: g
                .provider
                .and_then(|p| p.name().parse::<ProviderKind>().ok()),
            provider_settings,
            progress_bar: env.stderr_tty && !env.vars.contains_key("CI"),
            progress_interval: secs("INFRA_PROGRESS_SECONDS").unwrap_or(Duration::from_secs(30)),
            lease_renew: secs("INFRA_LEASE_RENEW_SECONDS")
                .unwrap_or(Duration::from_secs(crate::campaign::lease::RENEW_SECONDS)),
            holder: crate::campaign::Holder {
                host: hostname(),
                user: env
                    .var("USER")
                    .or_else(|| env.var("LOGNAME"))
                    .map(str::to_string)
                    // SAFETY: getuid cannot fail
                    .unwrap_or_else(|| format!("uid {}", unsafe { libc::getuid() })),
                pid: std::process::id(),
                place: env
                    .var("INFRA_CONTROLLER_WHERE")
                    .unwrap_or("this machine")
                    .to_string(),
            },
            stop_wait: secs("INFRA_STOP_WAIT_SECONDS").unwrap_or(Duration::from_secs(600)),
            stream: std::cell::Cell::new(false),
            out: RefCell::new(out),
        })
    }

    /// This controller, as its lease names it.
    pub fn holder(&self) -> crate::campaign::Holder {
        self.holder.clone()
    }

    /// The provider of a loaded plan.
    pub fn provider(&self, plan: &Plan) -> Box<dyn Provider> {
        provider::for_plan(plan, &self.provider_settings)
    }

    /// A path as the user sees it: relative to the project folder.
    pub fn rel(&self, p: &Path) -> String {
        p.strip_prefix(&self.cwd).unwrap_or(p).display().to_string()
    }

    pub fn load(&self, name: &str) -> Result<Plan, AppError> {
        let p = plan::load(name, &self.cwd)?;
        self.completed(self.overridden(p, self.provider, self.region.as_deref()))
    }

    /// What a loaded plan leaves to its templates: EFA on the groups whose
    /// templates require it (`tasks::requires`).
    pub fn completed(&self, mut p: Plan) -> Result<Plan, AppError> {
        let (catalog, _) = self.catalog()?;
        crate::tasks::requires::efa_by_default(&mut p, &catalog);
        Ok(p)
    }

    /// `--provider` and `--region` applied to a loaded plan.
    pub fn overridden(
        &self,
        mut p: Plan,
        provider: Option<ProviderKind>,
        region: Option<&str>,
    ) -> Plan {
        if let Some(pk) = provider {
            if pk != p.provider {
                if pk == ProviderKind::Local && p.provider == ProviderKind::Slurm {
                    // A local trial of a Slurm plan: its allocations have no
                    // instance type, the nodes are this machine's
                    for g in &mut p.node_groups {
                        if g.instance_type == ProviderKind::Slurm.as_str() {
                            g.instance_type = "local".to_string();
                        }
                    }
                }
                // A run on another provider than the plan's (a local trial
                // of an AWS plan, the quickstart tried on AWS) is its own
                // campaign: its own journal, results and ledger entries, so
                // it never counts against, or skips work of, the plan's own.
                p.name_key = format!("{}@{}", p.name_key, pk.as_str());
                p.provider = pk;
            }
        }
        if let Some(r) = region {
            p.region = r.to_string();
        }
        p
    }

    pub fn catalog(&self) -> Result<(Catalog, String), AppError> {
        let cat = Catalog::load_or_builtin(&self.catalog_path)
            .map_err(|e| AppError::Usage(e.to_string()))?;
        let from = if self.catalog_path.is_file() {
            format!("refreshed catalog {}", self.catalog_path.display())
        } else {
            "built-in catalog".to_string()
        };
        Ok((cat, from))
    }

    /// Load the plan and check it against the catalog and AWS's limits:
    /// every problem at once, before anything is rendered.
    pub fn prepare(&self, name: &str) -> Result<(Plan, Catalog, String), AppError> {
        self.prepare_loaded(self.load(name)?)
    }

    /// `prepare` for a plan already loaded.
    pub fn prepare_loaded(&self, plan: Plan) -> Result<(Plan, Catalog, String), AppError> {
        let (catalog, from) = self.catalog()?;
        let mut d = plan::diag::Diags::default();
        stacks::validate(&plan, &catalog, &mut d);
        if d.is_empty() && plan.provider == ProviderKind::Aws {
            node_agents(&plan, &self.provider_settings.node_binaries, &mut d);
        }
        if !d.is_empty() {
            let file = plan
                .source
                .strip_prefix(&self.cwd)
                .map(|p| p.to_path_buf())
                .unwrap_or_else(|_| plan.source.clone());
            return Err(AppError::Load(LoadError::Invalid(plan::PlanErrors {
                file,
                diags: d.list,
            })));
        }
        Ok((plan, catalog, from))
    }

    /// Make `--json` output JSON Lines: for the commands that stream
    /// (`run`, `up`, `attach`).
    pub fn streaming(&self) {
        self.stream.set(true);
    }

    /// Whether `--json` output is JSON Lines.
    pub fn is_streaming(&self) -> bool {
        self.stream.get()
    }

    /// Write the command's output: the human text, or with `--json` the
    /// view: one pretty document, or in a stream one line whose `"event"`
    /// is `kind` (`plan`, `apply`, `summary`, `destroy`...).
    pub fn emit<V: Serialize + ?Sized>(&self, kind: &str, human: &str, view: &V) {
        if self.json {
            self.json_doc(kind, &serde_json::to_value(view).unwrap_or_default());
        } else if !human.is_empty() {
            self.write(&format!("{}\n", human.trim_end()));
        }
    }

    /// `emit` for a view built as a JSON value.
    pub fn out(&self, kind: &str, human: &str, view: serde_json::Value) {
        self.emit(kind, human, &view)
    }

    /// One JSON document: pretty, or in a stream one line led by
    /// `"event": kind`.
    pub fn json_doc(&self, kind: &str, v: &serde_json::Value) {
        if self.stream.get() {
            self.write(&format!("{}\n", json_line(kind, v)));
        } else {
            self.write(&format!(
                "{}\n",
                serde_json::to_string_pretty(v).unwrap_or_default()
            ));
        }
    }

    /// Write text as it is.
    pub fn write(&self, text: &str) {
        let mut o = self.out.borrow_mut();
        let _ = o.write_all(text.as_bytes());
        let _ = o.flush();
    }

    /// Write bytes as they are (logs).
    pub fn write_bytes(&self, bytes: &[u8]) {
        let mut o = self.out.borrow_mut();
        let _ = o.write_all(bytes);
        let _ = o.flush();
    }
}

/// `v` as one JSON Lines line: an object gets `"event": kind` first (unless
/// it has an `event` of its own), anything else is wrapped in
/// `{"event": kind, "value": v}`.
pub fn json_line(kind: &str, v: &serde_json::Value) -> String {
    let mut m = serde_json::Map::new();
    match v {
        serde_json::Value::Object(o) => {
            if !o.contains_key("event") {
                m.insert("event".into(), kind.into());
            }
            m.extend(o.clone());
        }
        other => {
            m.insert("event".into(), kind.into());
            m.insert("value".into(), other.clone());
        }
    }
    serde_json::Value::Object(m).to_string()
}

/// Render every task definition of the plan into `.infra/<phase>/tasks/`.
pub fn render_tasks(plan: &Plan) -> Result<(Vec<TaskDef>, usize), AppError> {
    render_tasks_warned(plan).map(|(t, w, _)| (t, w))
}

/// `render_tasks`, with the warnings about fields no template reads.
pub fn render_tasks_warned(plan: &Plan) -> Result<(Vec<TaskDef>, usize, Vec<String>), AppError> {
    let all: Vec<&plan::Pattern> = plan.patterns().collect();
    let rendered = render_all(plan, &all)?;
    let dir = plan.state_dir().join("tasks");
    let written = write_all(&dir, &rendered.tasks).map_err(io_err(&dir))?;
    Ok((rendered.tasks, written, rendered.warnings))
}

/// Bring this machine's copy of the campaign up to date from where the
/// provider keeps it (AWS: the bucket) before a command reads it. A
/// failure is a warning: the command shows this machine's copy.
pub async fn sync_campaign(ctx: &Ctx, plan: &Plan) {
    if let Err(e) = ctx.provider(plan).sync_campaign(plan).await {
        eprintln!(
            "warning: {}: the campaign's shared state was not read ({e}); showing this machine's copy",
            plan.name_key
        );
    }
}

pub fn journal_path(plan: &Plan) -> PathBuf {
    plan.state_dir().join("journal.jsonl")
}

/// Tasks not yet completed according to the journal.
pub fn remaining<'a>(plan: &Plan, tasks: &'a [TaskDef]) -> Vec<&'a TaskDef> {
    remaining_with(plan, tasks, &HashSet::new())
}

/// Tasks not yet completed according to the journal, and those of `again`
/// (content keys of completed tasks that run again).
pub fn remaining_with<'a>(
    plan: &Plan,
    tasks: &'a [TaskDef],
    again: &HashSet<String>,
) -> Vec<&'a TaskDef> {
    let state = journal::read(&journal_path(plan))
        .map(|(s, _)| s)
        .unwrap_or_default();
    tasks
        .iter()
        .filter(|t| state.status_of(&t.key) != Status::Succeeded || again.contains(&t.key))
        .collect()
}

/// What the ledger records as spent on the phase.
/// Err for an entry with a negative or non-finite amount (exit 3).
pub fn spent(plan: &Plan) -> Result<f64, AppError> {
    Ok(ledger::spent(
        &ledger::read(&plan.root)?,
        Some(&plan.name_key),
    ))
}

/// The allocation hours the ledger records as held by the phase (Slurm).
pub fn held(plan: &Plan) -> Result<crate::cost::hours::Held, AppError> {
    Ok(crate::cost::hours::held(
        &ledger::read(&plan.root)?,
        &plan.name_key,
    ))
}

/// Remember that warning `w` was shown in this process; true the first
/// time (`up` checks the budget in plan, apply and run: one warning each).
pub fn said(w: &str) -> bool {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static SAID: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    SAID.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(w.to_string())
}

/// The budget gate of `apply` and `run`: exit 3 with the numbers; its
/// warnings on stderr when `warn`.
pub fn gate(
    plan: &Plan,
    tasks: &[TaskDef],
    catalog: &Catalog,
    from: &str,
    warn: bool,
) -> Result<est::Estimate, AppError> {
    gate_with(plan, tasks, &HashSet::new(), catalog, from, warn)
}

/// [`gate`], counting the completed tasks of `again` (content keys) as
/// still to run.
pub fn gate_with(
    plan: &Plan,
    tasks: &[TaskDef],
    again: &HashSet<String>,
    catalog: &Catalog,
    from: &str,
    warn: bool,
) -> Result<est::Estimate, AppError> {
    let left = remaining_with(plan, tasks, again);
    let e = est::estimate(plan, &left, catalog, from);
    let v = est::verdict_held(plan, &e, spent(plan)?, held(plan)?);
    for w in v.warnings.iter().filter(|_| warn) {
        if said(w) {
            eprintln!("warning: {w}");
        }
    }
    if !v.ok {
        let fits = v
            .remaining_usd
            .map(|rem| crate::cost::fit::what_fits(plan, &left, catalog, from, &e, rem))
            .unwrap_or_default();
        let fits = match fits.split_first() {
            Some((over, rest)) if !rest.is_empty() => {
                format!("\n  {over}; what would fit: {}", rest.join("; "))
            }
            Some((over, _)) => format!("\n  {over}"),
            None => String::new(),
        };
        return Err(AppError::Budget(format!(
            "the budget refuses {}:\n  {}{fits}\n  (nothing was started; no flag overrides the budget, edit the plan to change it)",
            plan.name_key,
            v.reasons.join("\n  ")
        )));
    }
    Ok(e)
}

/// Every node group's architecture needs a Linux build of `infra` to run
/// on its nodes as the node agent: one finding per architecture without.
fn node_agents(
    plan: &Plan,
    binaries: &std::collections::BTreeMap<String, String>,
    d: &mut plan::diag::Diags,
) {
    use crate::provider::aws::agent;
    let mut seen = std::collections::BTreeSet::new();
    for g in plan
        .node_groups
        .iter()
        .filter(|g| g.instance_type != "local")
    {
        let arch = agent::Arch::of_instance_type(&g.instance_type);
        if !seen.insert(arch) {
            continue;
        }
        if let Err(why) = agent::find(arch, binaries) {
            d.hint(
                &stacks::validate::field(g, "instance_type"),
                g.pos,
                format!(
                    "node group \"{}\" ({}) has {} nodes: {why}",
                    g.name,
                    g.instance_type,
                    arch.as_str()
                ),
                agent::build_hint(arch),
            );
        }
    }
}

/// This machine's name.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into our buffer.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if r != 0 {
        return "unknown-host".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
