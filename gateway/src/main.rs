//! `tollgate-gateway --config PATH`: parse the config, set up logs, run until SIGTERM.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// hyper allocates a few short-lived objects per request; mimalloc's thread-local free lists
/// cost a fraction of glibc's malloc/free there (profile and figures in benches/RESULTS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tollgate-gateway",
    about = "tollgate gateway: key-checking, quota-enforcing reverse proxy"
)]
struct Args {
    /// TOML configuration file (also TOLLGATE_CONFIG).
    #[arg(long, env = "TOLLGATE_CONFIG")]
    config: Option<PathBuf>,
}

fn init_logs(json: bool) {
    let level = match std::env::var("RUST_LOG")
        .unwrap_or_default()
        .to_ascii_lowercase()
        .as_str()
    {
        "trace" => tracing::Level::TRACE,
        "debug" => tracing::Level::DEBUG,
        "warn" => tracing::Level::WARN,
        "error" => tracing::Level::ERROR,
        _ => tracing::Level::INFO,
    };
    use std::io::IsTerminal;
    // Colours only for a person at a terminal, never in files or journald.
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match &args.config {
        Some(path) => tollgate_gateway::config::load(path),
        None => tollgate_gateway::config::parse(""),
    };
    let cfg = match cfg {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                eprintln!("tollgate: config error: {e}");
            }
            return ExitCode::from(2);
        }
    };
    init_logs(cfg.gateway.json_logs);
    let runtime = if cfg.gateway.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cfg.gateway.workers)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tollgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tollgate_gateway::server::run(cfg, args.config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate: {e}");
            ExitCode::FAILURE
        }
    }
}
