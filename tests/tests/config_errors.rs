//! Configuration errors an operator can act on: each case runs the real binary with a bad file
//! or variable and checks that it exits non-zero at once with exactly one line on stderr naming
//! the setting or the variable (and the file position of a syntax error), with no Rust debug
//! text and no secret, and that nothing was bound or created: no `listening on` line, the
//! configured port still free, no data directory.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tollgate_e2e::{bin_path, TempDir};

/// A loopback port nothing listens on (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs `bin` with `args` and `env` (no inherited `TOLLGATE_*` or provider variables); a
/// process still running after `limit` is killed and fails the test.
fn run(bin: &str, args: &[&str], env: &[(&str, String)], limit: Duration) -> Run {
    let mut cmd = Command::new(bin_path(bin));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if ["TOLLGATE_", "STRIPE_", "PAYPAL_", "SEPA_"]
            .iter()
            .any(|p| k.starts_with(p))
        {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break st;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{bin} {args:?} still running after {limit:?}; stderr:\n{}",
                err_t.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = started.elapsed();
    Run {
        code: status.code(),
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
        took,
    }
}

/// Text that only Rust's `Debug` formatting produces.
const DEBUG_TEXT: &[&str] = &[
    "String(", "Integer(", "Boolean(", "Array(", "Table(", "Some(", "None", "Os {", "Error {",
    "Custom {", "kind:",
];

struct Case {
    name: &'static str,
    bin: &'static str,
    /// The file; `{port}` is the main listener's port, `{dir}` the test's directory.
    config: &'static str,
    env: &'static [(&'static str, &'static str)],
    /// Every one of these is in the error line (after the same substitutions, `{config}` is the
    /// file's path).
    want: &'static [&'static str],
    /// None of these is (a secret, a setting that was valid).
    never: &'static [&'static str],
    /// The exit status: 2 for a configuration error, 1 for a failure found when starting
    /// (data directory, database), before anything is bound.
    exit: i32,
}

const GATEWAY: &str = "tollgate-gateway";
const BACKEND: &str = "tollgate-backend";

/// `[gateway]` with the port under test and data in `{dir}/data`.
macro_rules! gw {
    ($rest:literal) => {
        concat!(
            "[gateway]\nlisten = \"127.0.0.1:{port}\"\nmetrics_listen = \"127.0.0.1:0\"\ndata_dir = \"{dir}/data\"\n",
            $rest
        )
    };
}

/// `[backend]` with the port under test and data in `{dir}/data`.
macro_rules! be {
    ($rest:literal) => {
        concat!(
            "[backend]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{dir}/data\"\n",
            $rest
        )
    };
}

const CASES: &[Case] = &[
    Case {
        name: "TOML syntax error: file, line and column",
        bin: GATEWAY,
        config: gw!("workers = = 2\n"),
        env: &[],
        want: &["{config}:5:", "TOML syntax error"],
        never: &[],
        exit: 2,
    },
    Case {
        name: "TOML syntax error in the backend's file",
        bin: BACKEND,
        config: be!("[[plans]\nid = \"free\"\n"),
        env: &[],
        want: &["{config}:4:", "TOML syntax error"],
        never: &[],
        exit: 2,
    },
    Case {
        name: "bad environment value names the variable",
        bin: GATEWAY,
        config: gw!(""),
        env: &[("TOLLGATE_GATEWAY_METRICS_LISTEN", "notaport")],
        want: &["TOLLGATE_GATEWAY_METRICS_LISTEN=\"notaport\" is not a socket address"],
        never: &["gateway.metrics_listen"],
        exit: 2,
    },
    Case {
        name: "numeric environment value is a string where a string is expected",
        bin: GATEWAY,
        // gateway_id = "1" is valid: the only error is the unknown key.
        config: gw!("colour = \"blue\"\n"),
        env: &[("TOLLGATE_GATEWAY_GATEWAY_ID", "1")],
        want: &["gateway.colour: unknown setting"],
        never: &["GATEWAY_ID", "gateway_id", "required"],
        exit: 2,
    },
    Case {
        name: "numeric environment value converted for a number setting",
        bin: GATEWAY,
        config: gw!(""),
        env: &[("TOLLGATE_GATEWAY_WORKERS", "2"), ("TOLLGATE_GATEWAY_USAGE_FLUSH_MS", "x")],
        want: &["TOLLGATE_GATEWAY_USAGE_FLUSH_MS=\"x\" is not a whole number"],
        never: &["WORKERS"],
        exit: 2,
    },
    Case {
        name: "unknown environment setting",
        bin: GATEWAY,
        config: gw!(""),
        env: &[("TOLLGATE_GATEWAY_LISTN", "127.0.0.1:1")],
        want: &["TOLLGATE_GATEWAY_LISTN: unknown setting gateway.listn (did you mean listen?)"],
        never: &[],
        exit: 2,
    },
    Case {
        name: "wrong type in the file: TOML text, not Rust debug text",
        bin: GATEWAY,
        config: gw!("workers = \"4\"\n"),
        env: &[],
        want: &["gateway.workers: expected a whole number, got a string \"4\""],
        never: &[],
        exit: 2,
    },
    Case {
        name: "unknown key with a suggestion",
        bin: GATEWAY,
        config: gw!("usage_flush = 500\n"),
        env: &[],
        want: &["gateway.usage_flush: unknown setting (did you mean usage_flush_ms?)"],
        never: &[],
        exit: 2,
    },
    Case {
        name: "bad [backend] field, embedded in the gateway, checked before start-up",
        bin: GATEWAY,
        config: gw!("\n[backend]\nmax_body_bytes = \"big\"\n"),
        env: &[],
        want: &["backend.max_body_bytes: expected a whole number, got a string \"big\""],
        never: &[],
        exit: 2,
    },
    Case {
        name: "unknown [backend] field, embedded, without serde's list of names",
        bin: GATEWAY,
        config: gw!("\n[backend]\nlisen = \"127.0.0.1:1\"\n"),
        env: &[],
        want: &["backend.lisen: unknown setting (did you mean listen?)"],
        never: &["expected one of"],
        exit: 2,
    },
    Case {
        name: "bad [backend] field in the backend",
        bin: BACKEND,
        config: be!("sepa_discount_bps = 20000\n"),
        env: &[],
        want: &["backend.sepa_discount_bps: 20000 is out of range (0..=9999)"],
        never: &[],
        exit: 2,
    },
    Case {
        name: "bad [backend] environment value in the backend",
        bin: BACKEND,
        config: be!(""),
        env: &[("TOLLGATE_BACKEND_GRACE_DAYS", "three")],
        want: &["TOLLGATE_BACKEND_GRACE_DAYS=\"three\" is not a whole number"],
        never: &[],
        exit: 2,
    },
    Case {
        name: "a URL's password is never shown",
        bin: BACKEND,
        config: be!(""),
        env: &[("TOLLGATE_BACKEND_DATABASE_URL", "mysql://app:hunter2@db:3306/x")],
        want: &[
            "TOLLGATE_BACKEND_DATABASE_URL=\"mysql://app:***@db:3306/x\"",
            "must start with sqlite: or postgres://",
        ],
        never: &["hunter2"],
        exit: 2,
    },
    Case {
        name: "bad [[plans]] field (gateway)",
        bin: GATEWAY,
        config: gw!("\n[[plans]]\nid = \"free\"\nname = \"Free\"\nprice_monthly_minor = 0\nprice_yearly_minor = 0\nrate_limit_per_minute = 10\ndaily_limit = \"50\"\nmax_keys_per_user = 2\n"),
        env: &[],
        want: &["plans[0].daily_limit: expected a whole number, got a string \"50\""],
        never: &[],
        exit: 2,
    },
    Case {
        name: "missing [[plans]] field (backend)",
        bin: BACKEND,
        config: be!("\n[[plans]]\nid = \"free\"\nprice_monthly_minor = 0\nprice_yearly_minor = 0\nrate_limit_per_minute = 10\ndaily_limit = 50\nmax_keys_per_user = 2\n"),
        env: &[],
        want: &["plans[0].name: required"],
        never: &[],
        exit: 2,
    },
    Case {
        name: "route naming an unknown plan",
        bin: GATEWAY,
        config: gw!("\n[[routes]]\nprefix = \"/a\"\nupstream = \"builtin:echo\"\n\n[[routes]]\nprefix = \"/b\"\nupstream = \"builtin:echo\"\n\n[[routes]]\nprefix = \"/c\"\nupstream = \"builtin:echo\"\nplans = [\"gold\"]\n"),
        env: &[],
        want: &["routes[2].plans: unknown plan \"gold\""],
        never: &[],
        exit: 2,
    },
    Case {
        name: "unwritable data_dir names the path (gateway)",
        bin: GATEWAY,
        config: "[gateway]\nlisten = \"127.0.0.1:{port}\"\nmetrics_listen = \"127.0.0.1:0\"\ndata_dir = \"{dir}/file/data\"\n",
        env: &[],
        want: &["gateway.data_dir: cannot create {dir}/file/data"],
        never: &[],
        exit: 1,
    },
    Case {
        name: "unwritable data_dir names the path (backend)",
        bin: BACKEND,
        config: "[backend]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{dir}/file/data\"\n",
        env: &[],
        want: &["backend.data_dir: cannot create {dir}/file/data"],
        never: &[],
        exit: 1,
    },
    Case {
        name: "unreachable PostgreSQL fails fast naming host:port and the cause",
        bin: BACKEND,
        config: be!("database_url = \"postgres://tollgate:hunter2@127.0.0.1:{closed}/tollgate\"\n"),
        env: &[],
        want: &[
            "backend.database_url: cannot connect to PostgreSQL at 127.0.0.1:{closed}",
            "refused",
        ],
        never: &["hunter2", "pool timed out"],
        exit: 1,
    },
];

fn fill(text: &str, dir: &Path, port: u16, closed: u16, config: &Path) -> String {
    text.replace("{dir}", &dir.display().to_string())
        .replace("{port}", &port.to_string())
        .replace("{closed}", &closed.to_string())
        .replace("{config}", &config.display().to_string())
}

#[test]
fn every_bad_configuration_is_one_line_naming_the_setting_and_nothing_is_created() {
    let mut failures = Vec::new();
    for case in CASES {
        let dir = TempDir::new("cfg-err");
        // A regular file where a data directory's parent should be.
        dir.write("file", "not a directory");
        let port = free_port();
        let closed = free_port();
        let config = dir.path().join("tollgate.toml");
        std::fs::write(
            &config,
            fill(case.config, dir.path(), port, closed, &config),
        )
        .expect("write config");
        let env: Vec<(&str, String)> = case.env.iter().map(|(k, v)| (*k, v.to_string())).collect();
        let config_arg = config.display().to_string();
        let args: Vec<&str> = match case.bin {
            BACKEND => vec!["--config", &config_arg, "serve"],
            _ => vec!["--config", &config_arg],
        };
        let r = run(case.bin, &args, &env, Duration::from_secs(20));
        let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let mut problems = Vec::new();
        if r.code != Some(case.exit) {
            problems.push(format!("exit code {:?}, want {}", r.code, case.exit));
        }
        if lines.len() != 1 {
            problems.push(format!("{} stderr lines, want exactly 1", lines.len()));
        }
        let line = lines.first().copied().unwrap_or_default();
        let prefix = format!("{}: error: ", case.bin);
        if !line.starts_with(&prefix) {
            problems.push(format!("the line does not start with {prefix:?}"));
        }
        for want in case.want {
            let want = fill(want, dir.path(), port, closed, &config);
            if !line.contains(&want) {
                problems.push(format!("missing {want:?}"));
            }
        }
        for never in case.never.iter().chain(DEBUG_TEXT) {
            if r.stderr.contains(never) {
                problems.push(format!("contains {never:?}"));
            }
        }
        if r.stdout.contains("listening on") {
            problems.push("a listener was bound".to_string());
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            problems.push(format!("port {port} is taken after the run"));
        }
        if dir.path().join("data").exists() {
            problems.push("the data directory was created".to_string());
        }
        if r.took > Duration::from_secs(5) {
            problems.push(format!("took {:?} (want < 5 s)", r.took));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}:\n  {}\n  stderr: {:?}\n  stdout: {:?}",
                case.name,
                problems.join("\n  "),
                r.stderr,
                r.stdout
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn command_line_mistakes_are_one_line_too() {
    for (bin, args, want) in [
        (GATEWAY, vec!["--bogus"], "unexpected argument '--bogus'"),
        (
            BACKEND,
            vec!["--bogus", "serve"],
            "unexpected argument '--bogus'",
        ),
        (BACKEND, vec!["keys", "rotate"], "required"),
        (
            BACKEND,
            vec!["grant", "--user", "u", "--plan", "pro", "--cycle", "weekly"],
            "weekly",
        ),
    ] {
        let r = run(bin, &args, &[], Duration::from_secs(20));
        let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(r.code, Some(2), "{bin} {args:?}: {}", r.stderr);
        assert_eq!(lines.len(), 1, "{bin} {args:?}: {:?}", r.stderr);
        assert!(
            lines[0].starts_with(&format!("{bin}: error: ")) && lines[0].contains(want),
            "{bin} {args:?}: {:?}",
            lines[0]
        );
    }
}

#[test]
fn a_valid_configuration_with_environment_strings_starts() {
    // The same variables that the failing cases use, with good values: numbers are converted
    // for number settings and kept as text for text settings.
    let dir = TempDir::new("cfg-ok");
    let config = dir.write(
        "tollgate.toml",
        &format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n",
            dir.path().join("data").display()
        ),
    );
    let path = config.display().to_string();
    let mut gw = tollgate_e2e::Proc::start(
        GATEWAY,
        &["--config", &path],
        &[
            ("TOLLGATE_GATEWAY_GATEWAY_ID", "1"),
            ("TOLLGATE_GATEWAY_WORKERS", "2"),
            ("TOLLGATE_GATEWAY_USAGE_FLUSH_MS", "500"),
            ("TOLLGATE_GATEWAY_JSON_LOGS", "false"),
            ("TOLLGATE_BACKEND_GRACE_DAYS", "5"),
        ],
    );
    let url = gw.url("gateway");
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("data").join("gateway_id")).ok(),
        None,
        "a configured gateway_id is not generated into data_dir"
    );
    let st = gw.terminate();
    assert!(st.success(), "{st:?}: {}", gw.output());
}

/// A signal sent the moment a binary says it listens is handled, not fatal: the handlers are in
/// place before the "listening" line, so SIGHUP reloads and SIGTERM drains and exits 0 (until a
/// handler is installed, either signal's default action ends the process at once). A race, so
/// several rounds per binary.
#[test]
fn signals_sent_as_soon_as_the_listening_line_appears_are_handled() {
    for round in 0..5 {
        let dir = TempDir::new("cfg-signal");
        let data = dir.path().join("data");
        let gw_config = dir.write(
            "gateway.toml",
            &format!(
                "[gateway]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n",
                data.join("gw").display()
            ),
        );
        let be_config = dir.write(
            "backend.toml",
            &format!(
                "[backend]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n",
                data.join("be").display()
            ),
        );
        let (gw_path, be_path) = (
            gw_config.display().to_string(),
            be_config.display().to_string(),
        );
        let starts: [(&str, Vec<&str>, &str); 2] = [
            (GATEWAY, vec!["--config", &gw_path], "gateway"),
            (BACKEND, vec!["--config", &be_path, "serve"], "backend"),
        ];
        for (bin, args, what) in starts {
            let mut p = tollgate_e2e::Proc::start(bin, &args, &[]);
            let _ = p.url(what);
            if round % 2 == 1 {
                let sent = Command::new("kill")
                    .args(["-HUP", &p.pid().to_string()])
                    .status();
                assert!(sent.is_ok_and(|s| s.success()), "{bin}: kill -HUP");
            }
            let st = p.terminate();
            assert!(st.success(), "{bin} round {round}: {st:?}: {}", p.output());
        }
    }
}
