//! `tollgate-backend`: parse the command line and configuration, then serve or run a command.

use clap::Parser;
use tollgate_backend::cli::{self, Cli, Command};
use tollgate_backend::BackendConfig;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Cli::parse();
    let cfg = match BackendConfig::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                eprintln!("config error: {e}");
            }
            return std::process::ExitCode::from(2);
        }
    };
    cli::init_tracing(cfg.json_logs);
    let result = match args.command {
        Command::Serve => cli::serve(cfg, args.config.clone()).await,
        other => cli::run_command(cfg, other).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
