//! The command layer: one file per command. Each resolves its arguments,
//! calls the engine and the provider (through the `Provider` trait, never
//! by kind), builds a typed view, and writes it: human text from a pure
//! function of the view, `--json` from the same view. Errors become exit
//! codes in one place (`error.rs`).

pub mod apply;
pub mod budget;
pub mod catalog;
pub mod context;
pub mod controller;
pub mod destroy;
pub mod detach;
pub mod doe;
pub mod error;
pub mod import;
pub mod journal;
pub mod list;
pub mod logs;
pub mod node;
pub mod plan;
pub mod plan_changes;
pub mod rerun;
pub mod results;
pub mod run;
pub mod saved_plan;
pub mod status;

use std::io::Write;

use serde_json::json;

use crate::cli::{CatalogCmd, Cli, Cmd, ImportCmd, JournalCmd};
pub use context::{Ctx, Env};
pub use error::{exit, AppError};

/// Run one command line; the exit code.
pub fn main(cli: Cli) -> i32 {
    execute(cli, &Env::from_process(), Box::new(std::io::stdout()))
}

/// Run one command line against `env`, writing its output to `out`.
pub fn execute(cli: Cli, env: &Env, out: Box<dyn Write>) -> i32 {
    // the node agent needs none of the user side's context (and starts lean)
    if let Cmd::Node { mode, spec } = &cli.command {
        return node::node(*mode, spec);
    }
    if let Cmd::Controller { spec } = &cli.command {
        return controller::controller(spec, env);
    }
    // One thread drives everything: infra waits on processes and the network
    // and does little work of its own. Worker threads only added wake-ups
    // between threads on the dispatch path (a 2,000-task local run took
    // 16 % longer on ext4 with two workers; docs/BENCHMARKS.md). Blocking
    // file work is short; `spawn_blocking` still has its own threads.
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
    let ctx = match Ctx::new(&cli.global, env, out) {
        Ok(c) => c,
        Err(e) => return report_error(None, &e, cli.global.json),
    };
    if matches!(
        cli.command,
        Cmd::Run(_) | Cmd::Up { .. } | Cmd::Attach { .. }
    ) {
        ctx.streaming();
    }
    match rt.block_on(dispatch(&ctx, cli.command)) {
        Ok(code) => code,
        Err(e) => report_error(Some(&ctx), &e, ctx.json),
    }
}

fn report_error(ctx: Option<&Ctx>, e: &AppError, json_mode: bool) -> i32 {
    if json_mode {
        let doc = error_doc(e);
        match ctx {
            Some(c) => c.json_doc("error", &doc),
            None => {
                let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
                let _ = writeln!(std::io::stdout(), "{text}");
            }
        }
    }
    eprintln!("error: {e}");
    e.exit_code()
}

/// An error as `--json` writes it: `{"error": {"message", "problems":
/// [{"file", "path", "line", "column", "message", "hint"}]}, "exit_code"}`;
/// `problems` lists each problem of an invalid plan (empty otherwise).
pub fn error_doc(e: &AppError) -> serde_json::Value {
    use crate::plan::load::LoadError;
    let (message, problems) = match e {
        AppError::Load(LoadError::Invalid(pe)) => {
            let problems: Vec<serde_json::Value> = pe
                .diags
                .iter()
                .map(|d| {
                    json!({
                        "file": pe.file.display().to_string(),
                        "path": d.path,
                        "line": d.pos.line,
                        "column": d.pos.col,
                        "message": d.message,
                        "hint": d.hint,
                    })
                })
                .collect();
            let n = pe.diags.len();
            let head = format!(
                "invalid plan {}: {n} problem{}",
                pe.file.display(),
                if n == 1 { "" } else { "s" }
            );
            (head, problems)
        }
        other => (other.to_string(), Vec::new()),
    };
    json!({"error": {"message": message, "problems": problems}, "exit_code": e.exit_code()})
}

async fn dispatch(ctx: &Ctx, command: Cmd) -> Result<i32, AppError> {
    match command {
        // a plan the budget refuses is shown whole, and exits 3
        Cmd::Plan { phase, out } => plan::plan(ctx, &phase, out.as_deref()).map(|v| {
            if v.verdict.ok {
                exit::OK
            } else {
                exit::BUDGET
            }
        }),
        Cmd::Apply { phase, yes } => apply::apply(ctx, &phase, yes).await,
        Cmd::Run(args) if args.detach => detach::detach(ctx, detach::Campaign::Run(&args)).await,
        Cmd::Run(args) => run::run(ctx, &args).await,
        Cmd::Up {
            phase,
            keep,
            retry_failed,
            order,
            again,
            detach: true,
            ..
        } => {
            let what = detach::Campaign::Up {
                phase: &phase,
                keep,
                retry_failed,
                order,
                again,
            };
            detach::detach(ctx, what).await
        }
        Cmd::Up {
            phase,
            keep,
            yes,
            retry_failed,
            order,
            again,
            detach: false,
        } => run::up(ctx, &phase, keep, yes, retry_failed, order, again).await,
        Cmd::Attach { phase } => detach::attach(ctx, &phase).await,
        Cmd::Stop { phase, no_wait } => detach::stop(ctx, &phase, no_wait).await,
        Cmd::Status { phase } => status::status(ctx, &phase).await,
        Cmd::List { phase } => list::list(ctx, phase.as_deref()),
        Cmd::Logs {
            phase,
            pattern,
            stderr,
            follow,
            lines,
        } => {
            let opts = logs::LogsOpts {
                only_stderr: stderr,
                follow,
                lines,
            };
            logs::logs(ctx, &phase, &pattern, &opts).await
        }
        Cmd::Results {
            phase,
            format,
            raw_csv,
            float_format,
        } => {
            let floats = results::float_format(&float_format)?;
            results::results(ctx, &phase, format, raw_csv, floats).await
        }
        Cmd::Journal {
            action: JournalCmd::Repair { phase },
        } => journal::repair(ctx, &phase),
        Cmd::Destroy {
            phase,
            all,
            yes: _,
            delete_results,
            force,
        } => {
            let opts = crate::provider::DestroyOpts {
                all,
                delete_results,
                force,
            };
            destroy::destroy(ctx, Some(phase.as_str()), opts).await
        }
        Cmd::Budget {
            phase,
            format,
            output,
        } => budget::budget(ctx, phase.as_deref(), format, output.as_deref()).await,
        Cmd::Catalog {
            action: CatalogCmd::Show { instance_type },
        } => catalog::show(ctx, instance_type.as_deref()),
        Cmd::Catalog {
            action: CatalogCmd::Refresh,
        } => catalog::refresh(ctx).await,
        Cmd::Node { mode, spec } => Ok(node::node(mode, &spec)),
        Cmd::Controller { spec } => Ok(controller::controller(&spec, &Env::from_process())),
        Cmd::Import {
            what:
                ImportCmd::DoeSuite {
                    design,
                    output,
                    instance_type,
                    force,
                },
        } => import::doe_suite(
            ctx,
            &import::ImportArgs {
                design: &design,
                output: output.as_deref(),
                instance_type: &instance_type,
                force,
            },
        ),
        Cmd::Schema => {
            let text =
                serde_json::to_string_pretty(&crate::plan::schema::schema()).unwrap_or_default();
            ctx.write(&format!("{text}\n"));
            Ok(exit::OK)
        }
    }
}
