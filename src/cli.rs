//! Command-line definitions only; no logic.

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "infra",
    version,
    about = "Run experiment campaigns on AWS (or this machine) within a budget",
    after_help = "Exit codes: 0 ok, 1 task failures, 2 bad input, 3 budget refused, 4 cloud/provider error, 130 interrupted"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Cmd,
}

/// The options that mean nothing to a command: hidden from its help
/// (clap gives every global option to every command).
const NOT_FOR: &[(&str, &[&str])] = &[("schema", &["provider", "region", "profile"])];

/// The command line's definition, with [`NOT_FOR`] applied: the command
/// gets hidden options of its own under those names, so the global ones
/// are not given to it (clap propagates a global option only to commands
/// without one of that name); they are accepted and ignored.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let mut c = Cli::command();
    for (sub, hidden) in NOT_FOR {
        c = c.mut_subcommand(*sub, |mut s| {
            for a in *hidden {
                s = s.arg(clap::Arg::new(*a).long(*a).num_args(1).hide(true));
            }
            s
        });
    }
    c
}

/// Parse the process's command line (clap's errors and help exit here).
pub fn parse() -> Cli {
    use clap::FromArgMatches;
    let m = command().get_matches();
    Cli::from_arg_matches(&m).unwrap_or_else(|e| e.exit())
}

#[derive(Debug, Args, Clone)]
pub struct Global {
    /// Machine-readable output on stdout (progress and logs go to stderr).
    #[arg(long, global = true)]
    pub json: bool,
    /// Override the plan's provider.
    #[arg(long, global = true, value_enum)]
    pub provider: Option<ProviderArg>,
    /// AWS region (default: the plan's).
    #[arg(long, global = true)]
    pub region: Option<String>,
    /// AWS profile from the shared config files.
    #[arg(long, global = true)]
    pub profile: Option<String>,
    /// Work in this folder instead of the current one.
    #[arg(short = 'C', long = "dir", global = true, value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ProviderArg {
    Local,
    Aws,
    Slurm,
}

impl ProviderArg {
    /// The provider's name as plans spell it.
    pub fn name(self) -> &'static str {
        match self {
            ProviderArg::Local => "local",
            ProviderArg::Aws => "aws",
            ProviderArg::Slurm => "slurm",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Validate a plan, render its tasks and stacks, estimate, and show the verdict. Changes nothing.
    Plan {
        /// The plan: its name in plans/ (`quickstart` for plans/quickstart.json) or a path to a plan file.
        phase: String,
        /// Save the reviewed plan to this file: `infra apply FILE` applies exactly it, and refuses if what is deployed changed since.
        #[arg(short = 'o', long = "out", value_name = "FILE")]
        out: Option<std::path::PathBuf>,
    },
    /// Deploy the phase's nodes (stacks on AWS, folders locally).
    Apply {
        /// The plan: its name in plans/ (`quickstart` for plans/quickstart.json), a path to a plan file, or a plan saved by `infra plan -o FILE`.
        phase: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Run the selected work: all, a layer id, or pattern ids. Resumable.
    Run(RunArgs),
    /// plan + apply + run all + destroy.
    Up {
        /// The plan: its name in plans/ (`quickstart` for plans/quickstart.json) or a path to a plan file.
        phase: String,
        /// Leave the nodes up afterwards.
        #[arg(long)]
        keep: bool,
        /// Create the nodes without asking (needed without a terminal).
        #[arg(long)]
        yes: bool,
        /// Run failed tasks again (the others that completed are not).
        #[arg(long)]
        retry_failed: bool,
        /// Queue order (longest estimate first by default).
        #[arg(long, value_enum, default_value = "longest-first")]
        order: OrderArg,
        #[command(flatten)]
        again: RerunArgs,
        /// Hand the campaign to a controller that runs without this
        /// process (AWS: a small instance in the cloud; local: a background
        /// daemon) and return at once.
        #[arg(long)]
        detach: bool,
    },
    /// Follow a detached campaign's controller: its output from where it
    /// is, until it ends (Ctrl-C leaves the view, not the campaign).
    Attach {
        /// The plan: its name in plans/ (`quickstart` for plans/quickstart.json) or a path to a plan file.
        phase: String,
    },
    /// Ask the campaign's controller to stop (running tasks are re-queued).
    Stop {
        /// The plan: its name in plans/ (`quickstart` for plans/quickstart.json) or a path to a plan file.
        phase: String,
        /// Do not wait until the controller has stopped.
        #[arg(long)]
        no_wait: bool,
    },
    /// Nodes, tasks (queued, running, done, failed) and missing cells.
    Status {
        /// The plan: its name in plans/ (`quickstart` for plans/quickstart.json) or a path to a plan file.
        phase: String,
    },
    /// Plans, or the layers and patterns of one plan.
    List {
        /// A plan (its name in plans/ or a path); without one, every plan in plans/.
        phase: Option<String>,
    },
    /// A task's stdout and stderr (finished, or running: what it wrote so far).
    Logs {
        /// The plan: its name in plans/ (`quickstart` for plans/quickstart.json) or a path to a plan file.
        phase: String,
        /// A pattern id (a task).
        pattern: String,
        /// Only stderr.
        #[arg(long)]
        stderr: bool,
        /// Keep printing new lines as the task writes them, until it ends
        /// (exit 0) or Ctrl-C; waits for a task that has not started yet
        /// and goes on with its next attempt after a retry.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only the last N lines of each stream (with --follow: of what
        /// was there when it started).
        #[arg(short = 'n', long = "lines", value_name = "N")]
        lines: Option<usize>,
    },
    /// Aggregate the per-task outputs into one table.
    Results {
        /// The plan: its name in plans/ (`quickstart` for plans/quickstart.json) or a path to a plan file.
        phase: String,
        /// csv: results/<phase>/table.csv (and its metadata, failed-tasks.csv); json: results/<phase>/table.json.
        #[arg(long, value_enum, default_value = "csv")]
        format: TableFormat,
        /// Write cells exactly as the tasks produced them: no quote before
        /// cells a spreadsheet would read as a formula (`=`, `+`, `-`, `@`, tab, CR).
        #[arg(long)]
        raw_csv: bool,
        /// How float columns are written in table.csv: `%.6f` (fixed, N decimals) or `shortest` (the default: the shortest exact form, never an exponent).
        #[arg(long, value_name = "FORMAT", default_value = "shortest")]
        float_format: String,
    },
    /// Remove the phase's nodes (results stay).
    Destroy {
        /// The plan: its name in plans/ (`quickstart` for plans/quickstart.json) or a path to a plan file.
        phase: String,
        /// Also the project's base stack.
        #[arg(long)]
        all: bool,
        /// Accepted for scripts: destroy asks nothing (results are kept; see --delete-results).
        #[arg(long)]
        yes: bool,
        /// Also delete the phase's results from the bucket (only once they are all downloaded).
        #[arg(long)]
        delete_results: bool,
        /// Terminate whatever tagged, billable resource is still there afterwards.
        #[arg(long)]
        force: bool,
    },
    /// The budget report.
    Budget {
        /// A plan (its name in plans/ or a path); without one, every phase's spend.
        phase: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: ReportFormat,
        /// Write the report to a file instead of stdout.
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
    },
    /// The instance and price catalog.
    Catalog {
        #[command(subcommand)]
        action: CatalogCmd,
    },
    /// Print the JSON Schema of the plan format.
    Schema,
    /// Turn another tool's experiment design into a plan.
    Import {
        #[command(subcommand)]
        what: ImportCmd,
    },
    /// The phase's journal (what ran, how it ended).
    Journal {
        #[command(subcommand)]
        action: JournalCmd,
    },
    /// The node agent (run on the nodes through SSM Run Command).
    #[command(hide = true)]
    Node {
        #[arg(value_enum)]
        mode: NodeMode,
        /// The mode's arguments as one JSON object.
        #[arg(long)]
        spec: String,
    },
    /// A detached campaign's controller in the cloud (started by the
    /// controller instance's user data under systemd).
    #[command(hide = true)]
    Controller {
        /// `{"bucket", "phase", "region", "stack"}` as one JSON object.
        #[arg(long)]
        spec: String,
    },
}

/// What `infra node` does (src/node/).
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum NodeMode {
    Step,
    Health,
    Stop,
    Reap,
    Setup,
    Watch,
}

#[derive(Debug, Subcommand)]
pub enum JournalCmd {
    /// Keep every valid line of a damaged journal, drop the others (listed),
    /// and keep the original beside it.
    Repair {
        /// The plan: its name in plans/ (`quickstart` for plans/quickstart.json) or a path to a plan file.
        phase: String,
    },
}

#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// The plan: its name in plans/ (`quickstart` for plans/quickstart.json) or a path to a plan file.
    pub phase: String,
    /// all | <layer id> | <pattern id>...
    #[arg(default_value = "all")]
    pub select: Vec<String>,
    /// Run failed tasks again (only those).
    #[arg(long)]
    pub retry_failed: bool,
    #[command(flatten)]
    pub again: RerunArgs,
    /// Queue order (longest estimate first by default).
    #[arg(long, value_enum, default_value = "longest-first")]
    pub order: OrderArg,
    /// Take the campaign over from a controller whose lease expired (it
    /// stopped renewing it 90 s ago: gone, or cut off); what it left
    /// running is adopted.
    #[arg(long)]
    pub take_over: bool,
    /// Start the selected tasks from empty checkpoints: their
    /// `$INFRA_CHECKPOINT_DIR` folders are removed first (tasks still
    /// running from an earlier controller keep theirs).
    #[arg(long)]
    pub fresh: bool,
    /// Hand the run to a controller that runs without this process (AWS: a
    /// small instance in the cloud; local: a background daemon) and return
    /// at once.
    #[arg(long)]
    pub detach: bool,
    /// A plan with "results_layout": "doe-suite": start a new suite id
    /// (results/<suite>_<id>/) and run every selected task again; without
    /// it the last id goes on.
    #[arg(long, conflicts_with = "detach")]
    pub new: bool,
}

/// Running completed tasks again (`run` and `up`).
#[derive(Debug, Args, Clone, Default, PartialEq, Eq)]
pub struct RerunArgs {
    /// Run the selection's completed tasks again; their results move to
    /// results/<phase>/.history/<time>/ first.
    #[arg(long)]
    pub rerun: bool,
    /// Run again the completed tasks whose definition changed since they
    /// ran (`infra plan` counts them), saying what changed.
    #[arg(long)]
    pub changed: bool,
    /// When `--rerun` was asked for (RFC 3339): only tasks completed
    /// before then run again (a detached controller started again by its
    /// supervisor runs nothing twice).
    #[arg(long, hide = true, value_name = "TIME")]
    pub rerun_asked_at: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum OrderArg {
    LongestFirst,
    Fifo,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum TableFormat {
    Csv,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ReportFormat {
    Table,
    Json,
    Csv,
    Html,
}

#[derive(Debug, Subcommand)]
pub enum ImportCmd {
    /// A doe-suite suite design (designs/<suite>.yml) as plans/<suite>.json
    /// and its templates (docs/DOE-SUITE.md).
    DoeSuite {
        /// The suite design (YAML).
        design: std::path::PathBuf,
        /// Where to write the plan (default: plans/<suite>.json); its
        /// templates go to templates/ beside it.
        #[arg(short, long, value_name = "FILE")]
        output: Option<std::path::PathBuf>,
        /// The instance type of every node group (doe-suite keeps them in group_vars).
        #[arg(long, default_value = "c6i.xlarge")]
        instance_type: String,
        /// Replace a plan or template that exists and differs.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CatalogCmd {
    /// Print the catalog, or one instance type.
    Show {
        /// One instance type (e.g. g5.12xlarge); without one, every type of the catalog.
        instance_type: Option<String>,
    },
    /// Rebuild the catalog for a region from the AWS APIs.
    Refresh,
}
#[cfg(test)]
mod tests {
    use clap::FromArgMatches;

    fn help(args: &[&str]) -> String {
        match super::command().try_get_matches_from(args) {
            Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => e.to_string(),
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn schema_lists_no_aws_options_and_other_commands_keep_them() {
        let h = help(&["infra", "schema", "--help"]);
        for o in ["--provider", "--region", "--profile"] {
            assert!(!h.contains(o), "{o} in\n{h}");
        }
        assert!(h.contains("--json") && h.contains("--dir"), "{h}");
        let h = help(&["infra", "plan", "--help"]);
        assert!(h.contains("--region") && h.contains("--profile"), "{h}");
        // given anyway, they are accepted (and mean nothing)
        let m = super::command()
            .try_get_matches_from(["infra", "schema", "--region", "eu-west-1"])
            .unwrap();
        assert!(super::Cli::from_arg_matches(&m).is_ok());
        // elsewhere they still reach the global options
        let m = super::command()
            .try_get_matches_from(["infra", "plan", "x", "--region", "eu-west-1"])
            .unwrap();
        let cli = super::Cli::from_arg_matches(&m).unwrap();
        assert_eq!(cli.global.region.as_deref(), Some("eu-west-1"));
    }
}
