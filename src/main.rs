//! Argument parsing → command → exit code.

use clap::Parser;

fn main() {
    let cli = infra::cli::Cli::parse();
    let code = infra::cmd::main(cli);
    std::process::exit(code);
}
