//! Harness for the end-to-end tests: start the real `tollgate-backend` / `tollgate-gateway`
//! binaries on port 0 in a temporary data directory, learn their addresses from the
//! `tollgate: <what> listening on http://<addr>` lines they print, and stop them (SIGTERM or
//! SIGKILL) when asked or when dropped.
//!
//! The binaries are the ones cargo built next to this test executable (`target/<profile>/`);
//! `cargo test --workspace` builds them because their crates have integration tests.

pub mod gw;
pub mod paypal_fake;
pub mod raw;
pub mod stripe;
pub mod stripe_fake;
pub mod tls;
pub mod upstream;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Path of a workspace binary built by the same `cargo test` run.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build --workspace --bins, or run the README's test command)",
        path.display()
    );
    path
}

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("tollgate-{tag}-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Default)]
struct Output {
    lines: Vec<String>,
    addrs: HashMap<String, String>,
    closed: bool,
}

/// A running binary. Its stdout and stderr are collected (and echoed with a prefix so a failing
/// test shows them).
pub struct Proc {
    child: Child,
    name: String,
    out: Arc<(Mutex<Output>, Condvar)>,
}

impl Proc {
    /// Starts `bin` with `args` and extra environment, without inheriting `TOLLGATE_*` variables.
    pub fn start(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(bin_path(bin));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("TOLLGATE_")
                || k.starts_with("STRIPE_")
                || k.starts_with("PAYPAL_")
                || k.starts_with("SEPA_")
            {
                cmd.env_remove(k);
            }
        }
        cmd.env(
            "RUST_LOG",
            std::env::var("TOLLGATE_TEST_LOG").unwrap_or_else(|_| "info".into()),
        );
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        let out = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        let streams: Vec<Box<dyn std::io::Read + Send>> = vec![
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for stream in streams {
            let out = out.clone();
            let tag = bin.to_string();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if std::env::var_os("TOLLGATE_TEST_ECHO").is_some() {
                        eprintln!("[{tag}] {line}");
                    }
                    let (lock, cv) = &*out;
                    let mut o = lock.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some((what, addr)) = parse_listen_line(&line) {
                        o.addrs.insert(what, addr);
                    }
                    o.lines.push(line);
                    cv.notify_all();
                }
                let (lock, cv) = &*out;
                lock.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
                cv.notify_all();
            });
        }
        Proc {
            child,
            name: bin.to_string(),
            out,
        }
    }

    /// Waits until the process has printed `tollgate: <what> listening on http://<addr>` and
    /// returns `http://<addr>`.
    pub fn url(&self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        let (lock, cv) = &*self.out;
        let mut o = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(a) = o.addrs.get(what) {
                return format!("http://{a}");
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "{} did not report '{what}' listening in time; output:\n{}",
                    self.name,
                    o.lines.join("\n")
                );
            }
            o = cv
                .wait_timeout(o, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            if o.closed && !o.addrs.contains_key(what) {
                drop(o);
                std::thread::sleep(Duration::from_millis(200));
                let o = lock.lock().unwrap_or_else(|p| p.into_inner());
                panic!(
                    "{} exited before listening; output:\n{}",
                    self.name,
                    o.lines.join("\n")
                );
            }
        }
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        let (lock, _) = &*self.out;
        lock.lock()
            .unwrap_or_else(|p| p.into_inner())
            .lines
            .join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status (graceful shutdown).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "{} did not stop within 30 s of SIGTERM; output:\n{}",
                    self.name,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tollgate: backend listening on http://127.0.0.1:1234` → ("backend", "127.0.0.1:1234").
pub fn parse_listen_line(line: &str) -> Option<(String, String)> {
    let i = line.find("tollgate: ")?;
    let rest = &line[i + "tollgate: ".len()..];
    // A TLS listener says https://; its address is reported the same way.
    let (what, rest) = rest
        .split_once(" listening on http://")
        .or_else(|| rest.split_once(" listening on https://"))?;
    let addr = rest.split_whitespace().next()?.trim_end_matches('/');
    Some((what.to_string(), addr.to_string()))
}

/// An HTTP client for tests: no proxy, short timeouts.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .build()
        .expect("client")
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `within`.
/// Used to measure propagation bounds ("within 1 s"), not as a sleep.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return (v, start.elapsed());
        }
        if start.elapsed() > within {
            panic!("{what}: not within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn listen_lines() {
        assert_eq!(
            super::parse_listen_line(
                "2026 INFO tollgate: gateway listening on http://127.0.0.1:80"
            ),
            Some(("gateway".to_string(), "127.0.0.1:80".to_string()))
        );
        assert_eq!(
            super::parse_listen_line("tollgate: gateway listening on https://127.0.0.1:443"),
            Some(("gateway".to_string(), "127.0.0.1:443".to_string()))
        );
        assert_eq!(super::parse_listen_line("nothing"), None);
    }
}
