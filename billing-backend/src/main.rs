//! `tollgate-backend`: parse the command line and configuration, then serve or run a command.
//! Every error is one line on stderr, `tollgate-backend: error: <what>`; the exit status is 2
//! for command-line and configuration errors, 1 for failures after start-up.

use clap::{CommandFactory, FromArgMatches};
use std::process::ExitCode;
use tollgate_backend::cli::{self, Cli, Command};
use tollgate_backend::BackendConfig;

const NAME: &str = "tollgate-backend";

/// The version, with the commit when the build set `TOLLGATE_GIT_COMMIT`.
fn version() -> &'static str {
    match option_env!("TOLLGATE_GIT_COMMIT") {
        Some(c) if !c.is_empty() => {
            Box::leak(format!("{} ({c})", env!("CARGO_PKG_VERSION")).into_boxed_str())
        }
        _ => env!("CARGO_PKG_VERSION"),
    }
}

fn fail(code: u8, lines: &[String]) -> ExitCode {
    for line in lines {
        eprintln!("{NAME}: error: {line}");
    }
    ExitCode::from(code)
}

#[tokio::main]
async fn main() -> ExitCode {
    let parsed = Cli::command()
        .version(version())
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m));
    let args = match parsed {
        Ok(a) => a,
        Err(e) => {
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    ExitCode::SUCCESS
                }
                _ => fail(
                    2,
                    &[tollgate_protocol::config::clap_error_line(&e.to_string())],
                ),
            };
        }
    };
    let cfg = match BackendConfig::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(errors) => return fail(2, &errors),
    };
    if args.check {
        println!("{NAME}: configuration OK");
        return ExitCode::SUCCESS;
    }
    cli::init_tracing(cfg.json_logs);
    let result = match args.command {
        Command::Serve => cli::serve(cfg, args.config.clone()).await,
        other => cli::run_command(cfg, other).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, &e.lines().map(str::to_string).collect::<Vec<_>>()),
    }
}
