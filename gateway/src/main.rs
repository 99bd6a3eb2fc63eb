//! `tollgate-gateway --config PATH`: check the whole configuration, set up logs, run until
//! SIGTERM. Nothing is created or bound until the configuration is known to be good; every
//! problem is one line on stderr (`tollgate-gateway: error: <setting>: <why>`) and the exit
//! status is 2 for configuration and command-line errors, 1 for failures after start-up.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// hyper allocates a few short-lived objects per request; mimalloc's thread-local free lists
/// cost a fraction of glibc's malloc/free there (profile and figures in benches/RESULTS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NAME: &str = "tollgate-gateway";

#[derive(Parser)]
#[command(
    name = "tollgate-gateway",
    about = "tollgate gateway: key-checking, quota-enforcing reverse proxy",
    long_about = "tollgate gateway: checks the API key of every request, enforces the key's \
per-minute and daily quotas, forwards admitted requests to the route's upstreams and meters \
usage. By default the billing backend runs inside this process ([backend] mode = \"embedded\", \
SQLite under data_dir); with mode = \"remote\" it follows a separate tollgate-backend.",
    after_long_help = tollgate_gateway::help::AFTER_HELP
)]
struct Args {
    /// TOML configuration file (sections [gateway], [backend], [[plans]], [[routes]]; see
    /// config/quickstart.toml). Without one, every setting has its default and the
    /// environment overrides below still apply. Also read from TOLLGATE_CONFIG.
    #[arg(long, value_name = "PATH", env = "TOLLGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Check the configuration (file, environment overrides, TLS and provider settings) and
    /// exit without starting: 0 and "configuration OK", or 2 and one line per problem. Nothing
    /// is created, bound or connected to (like `nginx -t`).
    #[arg(long)]
    check: bool,
}

fn fail(code: u8, lines: &[String]) -> ExitCode {
    tollgate_protocol::cli::fail(NAME, code, lines)
}

fn main() -> ExitCode {
    let args: Args = match tollgate_protocol::cli::parse_args(NAME) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let cfg = match tollgate_gateway::config::load_from(args.config.as_deref()) {
        Ok(c) => c,
        Err(errors) => return fail(2, &errors),
    };
    if args.check {
        println!("{NAME}: configuration OK");
        return ExitCode::SUCCESS;
    }
    tollgate_protocol::cli::init_logs(cfg.gateway.json_logs);
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
        Err(e) => return fail(1, &[format!("cannot start the runtime: {e}")]),
    };
    match runtime.block_on(tollgate_gateway::server::run(cfg, args.config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, &e.lines().map(str::to_string).collect::<Vec<_>>()),
    }
}
