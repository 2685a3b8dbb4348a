//! Argument parsing → command → exit code.

fn main() {
    let cli = infra::cli::parse();
    let code = infra::cmd::main(cli);
    std::process::exit(code);
}
