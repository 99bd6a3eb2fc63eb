//! `snapshot_keys --count N --out DIR/keys.snapshot`
//!
//! Writes a key replica snapshot holding `N` active keys (free plan, per-key limits 1e9) through
//! the gateway's own `Replica` API (`apply_into` + `install` + `save_snapshot`), so the file is
//! exactly what a gateway saves. A gateway started with that `data_dir` loads it before it asks
//! the backend anything: that load time and the RSS afterwards are the 1 M-key memory figure.

use std::path::PathBuf;
use std::process::ExitCode;
use tollgate_benches::NEVER_REJECT;
use tollgate_gateway::keys::{Replica, Tables};
use tollgate_protocol::feed::{FeedKey, KeyState};
use tollgate_protocol::keys::KeyHash;
use tollgate_protocol::plans::Limits;

fn main() -> ExitCode {
    let mut count: usize = 1_000_000;
    let mut out: Option<PathBuf> = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match (a.as_str(), it.next()) {
            ("--count", Some(v)) => match v.parse() {
                Ok(n) => count = n,
                Err(e) => {
                    eprintln!("snapshot_keys: --count: {e}");
                    return ExitCode::from(2);
                }
            },
            ("--out", Some(v)) => out = Some(PathBuf::from(v)),
            _ => {
                eprintln!("usage: snapshot_keys --count N --out PATH");
                return ExitCode::from(2);
            }
        }
    }
    let Some(out) = out else {
        eprintln!("usage: snapshot_keys --count N --out PATH");
        return ExitCode::from(2);
    };
    let started = std::time::Instant::now();
    let replica = Replica::new();
    let tables = Tables::with_capacity(count);
    let limits = Limits {
        per_minute: NEVER_REJECT,
        per_day: NEVER_REJECT,
    };
    for n in 0..count {
        let id = u64::try_from(n).unwrap_or(u64::MAX);
        let key = FeedKey {
            key_id: format!("key_{id:016x}"),
            user_id: format!("bench-user-{n}"),
            plan: "free".into(),
            hash: KeyHash::of(&format!("cli_free_benchsnapshotkey{n:012}")),
            previous: None,
            state: KeyState::Active,
            expires_at: None,
            limits,
            seq: id + 1,
        };
        replica.apply_into(&tables, &key);
    }
    replica.install(tables, "bench-snapshot", u64::try_from(count).unwrap_or(0));
    if let Some(dir) = out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match replica.save_snapshot(&out) {
        Ok(n) => {
            eprintln!(
                "snapshot_keys: {n} keys in {:.1} s -> {}",
                started.elapsed().as_secs_f64(),
                out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("snapshot_keys: {e}");
            ExitCode::FAILURE
        }
    }
}
