//! What both binaries do before they serve: parse the command line with one-line errors, print
//! the version, report configuration problems, and set up logs from `RUST_LOG`.
//!
//! Every error line is `<binary>: error: <what>`; the exit status is 2 for command-line and
//! configuration errors, 1 for failures after start-up.

use std::process::ExitCode;

/// The version, with the commit when the build set `TOLLGATE_GIT_COMMIT`.
pub fn version() -> &'static str {
    match option_env!("TOLLGATE_GIT_COMMIT") {
        Some(c) if !c.is_empty() => {
            Box::leak(format!("{} ({c})", env!("CARGO_PKG_VERSION")).into_boxed_str())
        }
        _ => env!("CARGO_PKG_VERSION"),
    }
}

/// Prints each line as `<name>: error: <line>` on stderr and gives the exit status `code`.
pub fn fail(name: &str, code: u8, lines: &[String]) -> ExitCode {
    for line in lines {
        eprintln!("{name}: error: {line}");
    }
    ExitCode::from(code)
}

/// Parses the command line. `--help` and `--version` print and give `Err(0)`; a mistake is one
/// line (see [`crate::config::clap_error_line`]) and `Err(2)`.
pub fn parse_args<A: clap::CommandFactory + clap::FromArgMatches>(
    name: &str,
) -> Result<A, ExitCode> {
    let parsed = A::command()
        .version(version())
        .try_get_matches()
        .and_then(|m| A::from_arg_matches(&m));
    parsed.map_err(|e| match e.kind() {
        clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        _ => fail(name, 2, &[crate::config::clap_error_line(&e.to_string())]),
    })
}

/// The log filter: `RUST_LOG` in `tracing`'s directive syntax (`info`, `warn,tollgate_backend=debug`),
/// `info` when it is unset or cannot be read.
pub fn log_filter(var: Option<&str>) -> tracing_subscriber::EnvFilter {
    let directives = var
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .unwrap_or("info");
    tracing_subscriber::EnvFilter::builder()
        .parse(directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

/// Logs to stderr, filtered by `RUST_LOG` ([`log_filter`]), as JSON lines when `json`.
/// Colours only for a person at a terminal, never in files, pipes or journald.
pub fn init_logs(json: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry();
    // A second call (tests start several servers in one process) keeps the first set-up.
    let _ = if json {
        registry.with(fmt.json().with_filter(filter)).try_init()
    } else {
        registry.with(fmt.with_filter(filter)).try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_filter_takes_directives_and_defaults_to_info() {
        assert_eq!(log_filter(None).to_string(), "info");
        assert_eq!(log_filter(Some("  ")).to_string(), "info");
        assert_eq!(log_filter(Some("debug")).to_string(), "debug");
        let f = log_filter(Some("warn,tollgate_backend=debug")).to_string();
        assert!(
            f.contains("tollgate_backend=debug") && f.contains("warn"),
            "{f}"
        );
        // Unparseable directives fall back to info rather than silencing the logs.
        assert_eq!(
            log_filter(Some("tollgate_backend=loud")).to_string(),
            "info"
        );
    }

    #[test]
    fn version_is_the_package_version() {
        assert!(version().starts_with(env!("CARGO_PKG_VERSION")));
    }
}
