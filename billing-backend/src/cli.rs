//! The `tollgate-backend` command line: `serve`, and operator commands that act on the same
//! database directly (`keys create|list|revoke|rotate`, `plans`, `stats`, `grant`,
//! `sepa import`, `stripe sync`).

use crate::app::Backend;
use crate::config::BackendConfig;
use crate::store::Cause;
use clap::{Parser, Subcommand};
use serde_json::json;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "tollgate-backend",
    version,
    about = "tollgate billing backend: plans, API keys, subscriptions, payments"
)]
pub struct Cli {
    /// TOML configuration file (also TOLLGATE_CONFIG).
    #[arg(long, global = true, env = "TOLLGATE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the HTTP API.
    Serve,
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Print the plan catalogue.
    Plans,
    /// Print measured statistics.
    Stats,
    /// SEPA bank transfers.
    #[command(subcommand)]
    Sepa(SepaCommand),
    /// Stripe.
    #[command(subcommand)]
    Stripe(StripeCommand),
    /// Grant a paid plan to a user (manual provider).
    Grant {
        #[arg(long)]
        user: String,
        #[arg(long)]
        plan: String,
        #[arg(long, default_value = "monthly")]
        cycle: String,
        #[arg(long, default_value_t = 1)]
        periods: u32,
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum SepaCommand {
    /// Import a camt.053 / camt.054 statement and print the reconciliation report.
    Import { file: PathBuf },
}

#[derive(Subcommand)]
pub enum StripeCommand {
    /// Create (or find, by lookup key) the products and prices of every paid plan and cycle
    /// on Stripe and record them for subscriptions and Checkout; a second run changes nothing.
    Sync,
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Mint a key; the secret is printed once.
    Create {
        #[arg(long)]
        user: String,
        #[arg(long, default_value = "free")]
        plan: String,
        #[arg(long, default_value = "Default Key")]
        name: String,
    },
    /// List a user's keys, or all keys.
    List {
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a key.
    Revoke { key_id: String },
    /// New secret for a key; the old one keeps working for --grace seconds.
    Rotate {
        key_id: String,
        #[arg(long, default_value_t = 0)]
        grace: i64,
    },
}

fn print(v: serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
}

/// Runs a non-serving command against the configured database.
pub async fn run_command(cfg: BackendConfig, command: Command) -> Result<(), String> {
    let backend = Backend::start(cfg).await?;
    let state = backend.state().clone();
    let cause = Cause::new(
        "cli",
        std::env::var("USER").unwrap_or_else(|_| "operator".into()),
    );
    let result = async {
        match command {
            Command::Serve => unreachable_serve(),
            Command::Sepa(SepaCommand::Import { file }) => {
                let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
                let name = file.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                let report = crate::providers::sepa::api::import_statement(&state, &name, &bytes).await.map_err(|e| e.to_string())?;
                print(report);
                Ok(())
            }
            Command::Stripe(StripeCommand::Sync) => {
                let stripe = state.providers.stripe.clone().ok_or_else(|| {
                    "stripe sync: Stripe is not configured (set STRIPE_SECRET_KEY)".to_string()
                })?;
                let lines = crate::providers::stripe::sync::sync(&state, &stripe)
                    .await
                    .map_err(|e| format!("stripe sync: {e}"))?;
                print(crate::providers::stripe::sync::report(&lines));
                Ok(())
            }
            Command::Plans => {
                let plans: Vec<_> = state.catalogue().all().iter().map(|p| crate::plans::plan_json(p, state.cfg.sepa_discount_bps)).collect();
                print(json!({"plans": plans}));
                Ok(())
            }
            Command::Stats => {
                let s = state.store.key_stats(state.now()).await.map_err(|e| e.to_string())?;
                print(json!({"total_api_keys": s.total_keys, "active_api_keys": s.active_keys, "total_api_requests": s.total_requests, "plans_distribution": s.by_plan, "total_users": s.users}));
                Ok(())
            }
            Command::Grant { user, plan, cycle, periods, reason } => {
                let req = crate::billing::GrantRequest { user_id: user, plan, cycle: Some(cycle), periods: Some(periods), reason };
                let sub = crate::billing::grant(&state, req, &cause).await.map_err(|e| e.to_string())?;
                print(crate::billing::sub_json(&sub, state.now()));
                Ok(())
            }
            Command::Keys(KeysCommand::Create { user, plan, name }) => {
                let req = crate::keys::GenerateRequest {
                    user_id: user,
                    plan: Some(plan),
                    name: Some(name),
                    expires_at: None,
                    expires_in_days: None,
                    metadata: None,
                    rate_limit_per_minute: None,
                    daily_limit: None,
                };
                let m = crate::keys::mint(&state, req, &cause).await.map_err(|e| e.to_string())?;
                print(json!({"api_key": m.api_key, "key_id": m.record.key_id, "plan": m.record.plan,
                    "warning": "Store this API key securely. It is shown only once and cannot be recovered."}));
                Ok(())
            }
            Command::Keys(KeysCommand::List { user }) => {
                let keys = match user {
                    Some(u) => state.store.keys_of_user(&u).await,
                    None => state.store.list_keys(None, 1000, 0).await,
                }
                .map_err(|e| e.to_string())?;
                let list: Vec<_> = keys.iter().map(|k| crate::keys::key_json(&state, k, None)).collect();
                print(json!({"keys": list, "total": list.len()}));
                Ok(())
            }
            Command::Keys(KeysCommand::Revoke { key_id }) => {
                crate::keys::valid_key_id_or_404(&key_id).map_err(|e| e.to_string())?;
                let k = state.store.revoke_key(&key_id, state.now(), &cause).await.map_err(|e| e.to_string())?;
                print(json!({"success": true, "key_id": k.key_id, "message": "API key revoked"}));
                Ok(())
            }
            Command::Keys(KeysCommand::Rotate { key_id, grace }) => {
                let m = crate::keys::rotate(&state, &key_id, grace, &cause).await.map_err(|e| e.to_string())?;
                print(json!({"api_key": m.api_key, "key_id": m.record.key_id,
                    "previous_valid_until": m.record.previous_until.map(crate::keys::rfc3339)}));
                Ok(())
            }
        }
    }
    .await;
    backend.shutdown().await;
    result
}

fn unreachable_serve() -> Result<(), String> {
    Err("serve is handled by main".to_string())
}

/// Sets up logging: `RUST_LOG` (e.g. `info,tollgate_backend=debug`), JSON when asked.
pub fn init_tracing(json: bool) {
    use tracing_subscriber::prelude::*;
    let filter: tracing_subscriber::filter::Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| "info".parse().unwrap_or_default());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if json {
        let _ = tracing_subscriber::registry()
            .with(fmt.json().with_filter(filter))
            .try_init();
    } else {
        let _ = tracing_subscriber::registry()
            .with(fmt.with_filter(filter))
            .try_init();
    }
}

/// Waits for SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// `serve`: binds, prints where it listens, serves until SIGTERM, then drains and closes.
/// SIGHUP re-reads `config` and puts its `[[plans]]` in force (other settings need a restart);
/// a file with any error is refused with its error lines and the running plans stay.
pub async fn serve(cfg: BackendConfig, config: Option<std::path::PathBuf>) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("backend.listen {}: {e}", cfg.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let backend = Backend::start(cfg).await?;
    // The bound address, not the configured one: `listen = "127.0.0.1:0"` picks the port here.
    backend.advertise(addr);
    match backend.service_token_path() {
        Some(p) => println!("tollgate: service token in {}", p.display()),
        None => println!("tollgate: service token from TOLLGATE_SERVICE_TOKEN"),
    }
    println!("tollgate: backend listening on http://{addr}");
    tracing::info!(%addr, storage = backend.state().store.kind(), "backend started");
    #[cfg(unix)]
    if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        let backend = backend.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match BackendConfig::load(config.as_deref()) {
                    Ok(cfg) => {
                        backend.reload_plans(cfg.catalogue);
                    }
                    Err(errors) => {
                        for e in &errors {
                            tracing::error!("config reload refused: {e}");
                        }
                        tracing::error!("plans NOT reloaded; the running catalogue stays");
                    }
                }
            }
        });
    }
    let app = backend.router();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await;
    backend.shutdown().await;
    tracing::info!("backend stopped");
    served.map_err(|e| format!("serving: {e}"))
}
