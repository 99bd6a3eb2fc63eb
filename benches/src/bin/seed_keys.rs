//! `seed_keys --data-dir DIR --count N --out keys.txt [--concurrency C]`
//!
//! Mints `N` free-plan keys, one user per key (`bench-user-<n>`; the free plan allows two keys
//! per user), each with per-key limits of 1e9 per minute and per day so the load test never
//! meets a 429. Goes through `tollgate_backend::keys::mint`, the same code as
//! `POST /api/marketplace/keys/generate`, against the SQLite database under `DIR`, which the
//! gateway (embedded) or `tollgate-backend serve` then opens. Writes one key text per line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use tollgate_backend::keys::{mint, GenerateRequest};
use tollgate_backend::store::Cause;
use tollgate_backend::{Backend, BackendConfig};
use tollgate_benches::NEVER_REJECT;

struct Args {
    data_dir: PathBuf,
    count: usize,
    out: PathBuf,
    concurrency: usize,
}

fn args() -> Result<Args, String> {
    let mut data_dir = None;
    let mut count = 10_000;
    let mut out = None;
    let mut concurrency = 8;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--data-dir" => data_dir = Some(PathBuf::from(val()?)),
            "--count" => count = val()?.parse().map_err(|e| format!("--count: {e}"))?,
            "--out" => out = Some(PathBuf::from(val()?)),
            "--concurrency" => {
                concurrency = val()?.parse().map_err(|e| format!("--concurrency: {e}"))?
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        data_dir: data_dir.ok_or("--data-dir is required")?,
        count,
        out: out.ok_or("--out is required")?,
        concurrency: concurrency.max(1),
    })
}

async fn run(a: Args) -> Result<(), String> {
    std::fs::create_dir_all(&a.data_dir).map_err(|e| e.to_string())?;
    let mut backend = toml::Table::new();
    backend.insert(
        "data_dir".into(),
        toml::Value::String(a.data_dir.display().to_string()),
    );
    let mut doc = toml::Table::new();
    doc.insert("backend".into(), toml::Value::Table(backend));
    let cfg = BackendConfig::from_document(&doc).map_err(|e| e.join("\n"))?;
    let b = Backend::start(cfg).await?;
    let started = std::time::Instant::now();
    let mut keys = Vec::with_capacity(a.count);
    let mut next = 0;
    while next < a.count {
        let end = (next + a.concurrency).min(a.count);
        let mut tasks = Vec::new();
        for n in next..end {
            let state = b.state().clone();
            tasks.push(tokio::spawn(async move {
                let req = GenerateRequest {
                    user_id: format!("bench-user-{n}"),
                    plan: Some("free".into()),
                    name: Some("bench".into()),
                    expires_at: None,
                    expires_in_days: None,
                    metadata: None,
                    rate_limit_per_minute: Some(NEVER_REJECT),
                    daily_limit: Some(NEVER_REJECT),
                };
                mint(&state, req, &Cause::new("cli", "benches/seed_keys"))
                    .await
                    .map(|m| m.api_key)
                    .map_err(|e| format!("mint {n}: {e:?}"))
            }));
        }
        for t in tasks {
            keys.push(t.await.map_err(|e| e.to_string())??);
        }
        next = end;
    }
    b.shutdown().await;
    let mut f = std::io::BufWriter::new(std::fs::File::create(&a.out).map_err(|e| e.to_string())?);
    for k in &keys {
        writeln!(f, "{k}").map_err(|e| e.to_string())?;
    }
    f.flush().map_err(|e| e.to_string())?;
    eprintln!(
        "seed_keys: {} keys in {:.1} s -> {}",
        keys.len(),
        started.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("seed_keys: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("seed_keys: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("seed_keys: {e}");
            ExitCode::FAILURE
        }
    }
}
