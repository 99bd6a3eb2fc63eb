//! The OpenAPI contract against the real server: schemathesis (PyPI) reads `/openapi.json` from
//! a `tollgate-backend` started on port 0 with a fresh data directory, generates valid and
//! invalid requests for every documented operation, and checks each answer:
//!
//! - `not_a_server_error`: no 5xx, except one the document lists for that operation (Stripe and
//!   PayPal are not configured here, so their endpoints answer 503 `provider_not_configured`
//!   after authentication, as documented; SEPA, which needs no network, is configured): the test reads the document and writes those
//!   statuses into a schemathesis config file, operation by operation;
//! - `status_code_conformance`: every status is one the document lists for the operation;
//! - `content_type_conformance`: the `Content-Type` is the documented one for that status;
//! - `response_schema_conformance`: the body matches the documented schema.
//!
//! schemathesis runs from a venv under the target directory (`scripts/schemathesis.sh install`,
//! or `SCHEMATHESIS_BIN`). Without it the test says SKIPPED, except under `CI=true`, where it
//! fails. The run is bounded by `--max-examples` per operation and a wall-clock limit; the seed
//! is fixed (override with `SCHEMATHESIS_SEED`) so a failure reproduces.
//!
//! `GET /internal/feed` is a long poll that may wait up to 30 s per request by design: its
//! `wait` is pinned to 0 (every other parameter is generated), so the run stays short.

use serde_json::Value;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tollgate_e2e::{client, Proc, TempDir};

const TOKEN: &str = "contract-service-token-0123456789";
/// Wall-clock limit for the schemathesis run (it is expected to take well under a minute).
const LIMIT: Duration = Duration::from_secs(150);

/// `SCHEMATHESIS_BIN`, else the venv `scripts/schemathesis.sh install` makes.
fn schemathesis() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("SCHEMATHESIS_BIN") {
        return Some(PathBuf::from(p)).filter(|p| p.exists());
    }
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/deps/<test> → target/
    let target = exe.parent()?.parent()?.parent()?;
    let p = target.join("schemathesis-venv/bin/schemathesis");
    p.exists().then_some(p)
}

/// `schemathesis.toml`: for each operation that documents 5xx answers, `not_a_server_error`
/// accepts exactly those (and nothing else of the 5xx range).
fn config_for(doc: &Value) -> String {
    let mut toml = String::new();
    let paths = doc["paths"].as_object().cloned().unwrap_or_default();
    for (path, item) in &paths {
        for (method, op) in item.as_object().cloned().unwrap_or_default() {
            let documented: Vec<String> = op["responses"]
                .as_object()
                .map(|r| r.keys().filter(|s| s.starts_with('5')).cloned().collect())
                .unwrap_or_default();
            if documented.is_empty() {
                continue;
            }
            let statuses = ["2xx", "3xx", "4xx"]
                .iter()
                .map(|s| s.to_string())
                .chain(documented)
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = write!(
                toml,
                "[[operations]]\ninclude-path = {path:?}\ninclude-method = {:?}\n\
                 checks.not_a_server_error.expected-statuses = [{statuses}]\n",
                method.to_uppercase()
            );
            if path == tollgate_protocol::feed::FEED_PATH {
                toml.push_str("parameters = { \"query.wait\" = 0 }\n");
            }
            toml.push('\n');
        }
    }
    toml
}

#[tokio::test]
async fn the_backend_keeps_its_openapi_contract() {
    let Some(bin) = schemathesis() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true but schemathesis is not installed: run scripts/schemathesis.sh install (or set SCHEMATHESIS_BIN)");
        }
        eprintln!("SKIPPED: schemathesis is not installed (scripts/schemathesis.sh install, or set SCHEMATHESIS_BIN); the OpenAPI contract was not checked");
        return;
    };
    let dir = TempDir::new("contract");
    let cfg = format!(
        "[backend]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n",
        dir.path().join("data").display()
    );
    let path = dir.write("backend.toml", &cfg);
    let backend = Proc::start(
        "tollgate-backend",
        &["--config", path.to_str().unwrap_or_default(), "serve"],
        &[
            ("TOLLGATE_SERVICE_TOKEN", TOKEN),
            // SEPA needs no network: configured, its endpoints are fuzzed past the
            // configuration check (instructions, QR codes, decisions, statement imports).
            ("SEPA_HOLDER", "Tollgate Contract GmbH"),
            ("SEPA_IBAN", "DE89370400440532013000"),
            ("SEPA_BIC", "COBADEFFXXX"),
        ],
    );
    let url = backend.url("backend");
    let doc: Value = client()
        .get(format!("{url}/openapi.json"))
        .send()
        .await
        .expect("GET /openapi.json")
        .json()
        .await
        .expect("the document is JSON");
    let config = dir.write("schemathesis.toml", &config_for(&doc));
    let seed = std::env::var("SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261204".into());
    let report = dir.path().join("junit.xml");
    let started = Instant::now();
    let mut child = Command::new(&bin)
        .args([
            "--config-file",
            config.to_str().unwrap_or_default(),
            "run",
            &format!("{url}/openapi.json"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--header",
            &format!("Authorization: Bearer {TOKEN}"),
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "25",
            "--seed",
            &seed,
            "--workers",
            "2",
            "--request-timeout",
            "10",
            "--suppress-health-check",
            "all",
            "--generation-database",
            "none",
            "--no-color",
            "--report",
            "junit",
            "--report-junit-path",
            report.to_str().unwrap_or_default(),
        ])
        // schemathesis keeps a cache directory in its working directory: the temporary one.
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    std::thread::spawn(move || {
        let mut out = String::new();
        if let Some(mut s) = stdout {
            let _ = std::io::Read::read_to_string(&mut s, &mut out);
        }
        if let Some(mut s) = stderr {
            let _ = std::io::Read::read_to_string(&mut s, &mut out);
        }
        let status = child.wait();
        let _ = tx.send((status, out));
    });
    let (status, out) = match rx.recv_timeout(LIMIT) {
        Ok(done) => done,
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            panic!(
                "schemathesis did not finish within {} s; backend output:\n{}",
                LIMIT.as_secs(),
                backend.output()
            );
        }
    };
    let elapsed = started.elapsed();
    eprintln!(
        "schemathesis ran {:.1} s against {url}:\n{out}",
        elapsed.as_secs_f64()
    );
    let status = status.expect("schemathesis exit status");
    assert!(
        status.success(),
        "schemathesis found contract failures ({status}); its output is above, the backend's:\n{}",
        backend.output()
    );
    // A run that tested nothing would also exit 0.
    assert!(
        out.contains("passed") && !out.contains("No operations"),
        "schemathesis tested nothing:\n{out}"
    );
}
