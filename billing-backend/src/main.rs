//! `tollgate-backend`: parse the command line and configuration, then serve or run a command.
//! Every error is one line on stderr, `tollgate-backend: error: <what>`; the exit status is 2
//! for command-line and configuration errors, 1 for failures after start-up.

use std::process::ExitCode;
use tollgate_backend::cli::{self, Cli, Command};
use tollgate_backend::Backend;

const NAME: &str = "tollgate-backend";

fn fail(code: u8, lines: &[String]) -> ExitCode {
    tollgate_protocol::cli::fail(NAME, code, lines)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Cli = match tollgate_protocol::cli::parse_args(NAME) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let cfg = match Backend::load_config_file(args.config.as_deref()) {
        Ok(c) => c,
        Err(errors) => return fail(2, &errors),
    };
    if args.check {
        println!("{NAME}: configuration OK");
        return ExitCode::SUCCESS;
    }
    tollgate_protocol::cli::init_logs(cfg.json_logs);
    let result = match args.command {
        Command::Serve => cli::serve(cfg, args.config.clone()).await,
        other => cli::run_command(cfg, other).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, &e.lines().map(str::to_string).collect::<Vec<_>>()),
    }
}
