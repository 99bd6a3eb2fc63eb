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
    about = "tollgate billing backend: plans, API keys, subscriptions, payments",
    long_about = "tollgate billing backend: owns the plan catalogue, issues and revokes API keys, \
takes payment by Stripe, PayPal and SEPA transfer, feeds keys to gateways and ingests their \
usage. `serve` runs the HTTP API; the other commands act on the same database directly.",
    after_long_help = AFTER_HELP
)]
pub struct Cli {
    /// TOML configuration file ([backend] and [[plans]]; see config/backend.toml). Without one,
    /// every setting has its default and the environment overrides still apply. Also read
    /// from TOLLGATE_CONFIG.
    #[arg(long, global = true, value_name = "PATH", env = "TOLLGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Check the configuration (file, environment overrides, TLS and provider settings) and
    /// exit without starting: 0 and "configuration OK", or 2 and one line per problem. Nothing
    /// is created, bound or connected to (like `nginx -t`).
    #[arg(long, global = true)]
    pub check: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the HTTP API on [backend] listen until SIGTERM (SIGHUP reloads [[plans]]).
    Serve,
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Print the plan catalogue (JSON).
    Plans,
    /// Print measured key and usage statistics (JSON).
    Stats,
    /// SEPA bank transfers.
    #[command(subcommand)]
    Sepa(SepaCommand),
    /// Stripe.
    #[command(subcommand)]
    Stripe(StripeCommand),
    /// Grant a paid plan to a user without payment (provider "manual"), recorded in the
    /// audit ledger.
    Grant {
        /// The operator's id for the user.
        #[arg(long)]
        user: String,
        /// Plan id from the catalogue (e.g. pro, enterprise).
        #[arg(long)]
        plan: String,
        /// Billing cycle: monthly or yearly.
        #[arg(long, default_value = "monthly", value_parser = ["monthly", "yearly"])]
        cycle: String,
        /// Number of cycles granted (1 = one month or one year).
        #[arg(long, default_value_t = 1)]
        periods: u32,
        /// Why, for the audit ledger.
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum SepaCommand {
    /// Import a camt.053 / camt.054 statement and print the reconciliation report.
    Import {
        /// The statement file (XML).
        file: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum StripeCommand {
    /// Create (or find, by lookup key) the products and prices of every paid plan and cycle
    /// on Stripe and record them for subscriptions and Checkout; a second run changes nothing.
    Sync,
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Mint a key; the secret is printed once. A paid plan needs an active subscription.
    Create {
        /// The operator's id for the user.
        #[arg(long)]
        user: String,
        /// Plan id from the catalogue.
        #[arg(long, default_value = "free")]
        plan: String,
        /// A label for the key.
        #[arg(long, default_value = "Default Key")]
        name: String,
    },
    /// List a user's keys, or all keys (at most 1000), with today's usage (JSON).
    List {
        /// Only this user's keys.
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a key (key_ + 16 hex digits).
    Revoke { key_id: String },
    /// New secret for a key; the old one keeps working for --grace seconds.
    Rotate {
        /// The key's id (key_ + 16 hex digits).
        key_id: String,
        /// Seconds the old secret keeps working, 0..=86400.
        #[arg(long, default_value_t = 0)]
        grace: i64,
    },
}

fn print(v: serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
}

/// Printed after the options by `--help`.
pub const AFTER_HELP: &str = "\
CONFIGURATION
  Defaults, then the TOML file (--config), then environment variables TOLLGATE_BACKEND_<KEY>,
  e.g. TOLLGATE_BACKEND_LISTEN=0.0.0.0:8081, TOLLGATE_BACKEND_DATABASE_URL=postgres://...
  An environment value is text converted by the setting it overrides (numbers in decimal,
  booleans true/false). Every problem is one line naming the setting or the variable; nothing
  is created or bound until the configuration is valid (exit 2).

[backend]
  listen = \"127.0.0.1:8081\"        IP:port of the HTTP API (port 0: any free port)
  data_dir = \"./data\"              SQLite database and the generated service token
  database_url = <sqlite in data_dir>  sqlite://PATH or postgres://user@host:port/db;
                                     PostgreSQL must accept a connection within 3 s at start
  feed_token = <none>              token gateways send to the feed and usage endpoints (the
                                     service token works too); prefer TOLLGATE_BACKEND_FEED_TOKEN
  key_prefix = \"cli\"               first part of every key (cli_<plan>_<secret>), 1-16 of a-z 0-9
  max_body_bytes = 65536           largest management request body, bytes, 1024..=16777216
  sepa_discount_bps = 150          SEPA discount in basis points (150 = 1.5 %), 0..=9999
  grace_days = 3                   days a past-due subscription keeps its plan, 0..=365
  public_url = <listen address>    http(s):// origin for links (portal, payment returns)
  json_logs = false                JSON log lines instead of text (on stderr)
  mode, url                        read by gateways sharing the file; accepted here

[[plans]]  (the catalogue; defaults free, pro, enterprise; a \"free\" plan is required)
  id, name, currency = \"EUR\", price_monthly_minor, price_yearly_minor (minor units: 2900 =
  29.00), rate_limit_per_minute, daily_limit (units), max_keys_per_user, features = [..],
  provider_prices = { stripe_monthly = \"price_...\" }

SIGNALS
  SIGHUP   (serve) re-read the file and put its [[plans]] in force; a file with any error is
           refused, logged line by line, and the running catalogue stays.
  SIGTERM  stop accepting, drain requests, close the database.

ENVIRONMENT
  TOLLGATE_CONFIG          the configuration file (as --config)
  TOLLGATE_SERVICE_TOKEN   management token (16+ characters); else generated into
                           data_dir/service_token (mode 0600)
  RUST_LOG                 log filter, e.g. info (default) or info,tollgate_backend=debug
  STRIPE_SECRET_KEY (alias STRIPE_API_KEY), STRIPE_PUBLISHABLE_KEY, STRIPE_WEBHOOK_SECRET,
  STRIPE_API_BASE, PAYPAL_CLIENT_ID, PAYPAL_SECRET, PAYPAL_BASE, SEPA_HOLDER, SEPA_IBAN,
  SEPA_BIC                 payment providers; one left unset answers 503 provider_not_configured
";

/// Runs a non-serving command against the configured database.
pub async fn run_command(cfg: BackendConfig, command: Command) -> Result<(), String> {
    cfg.preflight().await?;
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
                let report = crate::billing::sepa::import_statement(&state, &name, &bytes).await.map_err(|e| e.to_string())?;
                print(report);
                Ok(())
            }
            Command::Stripe(StripeCommand::Sync) => {
                let stripe = state.providers().stripe.clone().ok_or_else(|| {
                    "stripe sync: Stripe is not configured (set STRIPE_SECRET_KEY)".to_string()
                })?;
                let lines = crate::billing::stripe::sync::sync(&state, &stripe)
                    .await
                    .map_err(|e| format!("stripe sync: {e}"))?;
                print(crate::billing::stripe::sync::report(&lines));
                Ok(())
            }
            Command::Plans => {
                let plans: Vec<_> = state.catalogue().all().iter().map(|p| crate::plans::plan_json(p, state.cfg().sepa_discount_bps)).collect();
                print(json!({"plans": plans}));
                Ok(())
            }
            Command::Stats => {
                let s = state.store().key_stats(state.now()).await.map_err(|e| e.to_string())?;
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
                    Some(u) => state.store().keys_of_user(&u).await,
                    None => state.store().list_keys(None, 1000, 0).await,
                }
                .map_err(|e| e.to_string())?;
                // Today's usage of each key: a key without any is 0, not null.
                let today = tollgate_protocol::day::format_day(tollgate_protocol::day::day_index(state.now()));
                let ids: Vec<String> = keys.iter().map(|k| k.key_id.clone()).collect();
                let usage = state.store().usage_on_day(&ids, &today).await.map_err(|e| e.to_string())?;
                let list: Vec<_> = keys
                    .iter()
                    .map(|k| crate::keys::key_json(&state, k, Some(usage.get(&k.key_id).copied().unwrap_or(0))))
                    .collect();
                print(json!({"keys": list, "total": list.len()}));
                Ok(())
            }
            Command::Keys(KeysCommand::Revoke { key_id }) => {
                crate::keys::valid_key_id_or_404(&key_id).map_err(|e| e.to_string())?;
                let k = state.store().revoke_key(&key_id, state.now(), &cause).await.map_err(|e| e.to_string())?;
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

/// Installs the SIGTERM and SIGINT handlers now and returns a future that completes at the
/// first of them. Installing before the process says it listens matters: until a handler is in
/// place a signal's default action ends the process at once, without the drain.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, Signal, SignalKind};
        async fn recv(s: Option<Signal>) {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            tokio::select! {
                _ = recv(term) => {}
                _ = recv(int) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `serve`: binds, prints where it listens, serves until SIGTERM, then drains and closes.
/// SIGHUP re-reads `config` and puts its `[[plans]]` in force (other settings need a restart);
/// a file with any error is refused with its error lines and the running plans stay.
/// The database is reached (and migrated) before the port is bound, so a backend that cannot
/// work never accepts a connection.
pub async fn serve(cfg: BackendConfig, config: Option<std::path::PathBuf>) -> Result<(), String> {
    cfg.preflight().await?;
    let listen = cfg.listen;
    // `[backend] tls_cert_file` + `tls_key_file`: HTTPS on the same address (see crate::tls).
    let cert = cfg
        .tls
        .as_ref()
        .map(crate::tls::ListenerCert::new)
        .transpose()?;
    let backend = Backend::start(cfg).await?;
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            backend.shutdown().await;
            return Err(format!("backend.listen: cannot bind {listen}: {e}"));
        }
    };
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // The bound address, not the configured one: `listen = "127.0.0.1:0"` picks the port here.
    backend.advertise(addr);
    match backend.service_token_path() {
        Some(p) => println!("tollgate: service token in {}", p.display()),
        None => println!("tollgate: service token from TOLLGATE_SERVICE_TOKEN"),
    }
    // Signal handlers before the "listening" line: a supervisor (or a test) may signal as soon
    // as it reads it.
    let shutdown = shutdown_signal();
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let scheme = if cert.is_some() { "https" } else { "http" };
    println!("tollgate: backend listening on {scheme}://{addr}");
    tracing::info!(%addr, storage = backend.state().store().kind(), "backend started");
    #[cfg(unix)]
    if let Ok(mut hup) = hup {
        let backend = backend.clone();
        let cert = cert.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match Backend::load_config_file(config.as_deref()) {
                    Ok(cfg) => {
                        if let (Some(cert), Some(files)) = (&cert, &cfg.tls) {
                            cert.reload(files);
                        }
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
    let served = match cert {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(cert) => {
            let listener = crate::tls::TlsListener::new(listener, cert)
                .map_err(|e| format!("backend.listen {addr}: {e}"))?;
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    };
    backend.shutdown().await;
    tracing::info!("backend stopped");
    served.map_err(|e| format!("serving: {e}"))
}
