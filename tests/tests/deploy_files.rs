//! `deploy/` works as shipped (issue 20): the compose file and the systemd units are rendered
//! the way Docker Compose and systemd would (variables, volumes, `%` specifiers) and checked
//! against the real binaries: every command line and environment is run through
//! `--check` (the whole configuration validated, nothing created or bound), every gateway keeps
//! its `data_dir` on a volume, every provider variable the backend reads is passed to it, the
//! demo route points at a service that exists, and the build context leaves out local state.

use serde_yaml::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tollgate_e2e::{bin_path, TempDir};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn compose() -> Value {
    let mut doc: Value =
        serde_yaml::from_str(&read("deploy/compose.yaml")).expect("compose.yaml is YAML");
    doc.apply_merge().expect("merge keys");
    doc
}

/// `${VAR:?msg}` → a value for a required secret, `${VAR:-default}` → the default, as
/// Compose renders them with nothing else set.
fn render_compose_value(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let end = rest[at..].find('}').expect("closing brace") + at;
        let inner = &rest[at + 2..end];
        if let Some((var, _)) = inner.split_once(":?") {
            out.push_str(&format!(
                "rendered-{}-0123456789abcdef0123456789",
                var.to_ascii_lowercase()
            ));
        } else if let Some((_, default)) = inner.split_once(":-") {
            out.push_str(default);
        } else {
            panic!(
                "compose value {text:?}: ${{{inner}}} has neither a default nor a required marker"
            );
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn environment(service: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if let Some(map) = service["environment"].as_mapping() {
        for (k, v) in map {
            let k = k.as_str().expect("variable name").to_string();
            let v = match v {
                Value::String(s) => render_compose_value(s),
                Value::Null => String::new(),
                other => serde_yaml::to_string(other)
                    .expect("scalar")
                    .trim()
                    .to_string(),
            };
            env.insert(k, v);
        }
    }
    env
}

/// `host:container[:ro]` bind mounts (host path resolved from deploy/) and named volumes.
fn volumes(service: &Value) -> (BTreeMap<String, PathBuf>, BTreeMap<String, String>) {
    let (mut binds, mut named) = (BTreeMap::new(), BTreeMap::new());
    for v in strings(&service["volumes"]) {
        let parts: Vec<&str> = v.split(':').collect();
        let (src, dst) = (parts[0], parts[1].to_string());
        if src.starts_with("./") || src.starts_with('/') {
            binds.insert(dst, repo().join("deploy").join(src));
        } else {
            named.insert(dst, src.to_string());
        }
    }
    (binds, named)
}

/// Runs `bin args… --check` with exactly `env` (plus PATH) and returns (success, output).
fn check(bin: &str, args: &[String], env: &BTreeMap<String, String>) -> (bool, String) {
    let out = Command::new(bin_path(bin))
        .args(args)
        .arg("--check")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .output()
        .expect("run the binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A tollgate service's command with container paths replaced by the repository's files.
fn local_args(command: &[String], binds: &BTreeMap<String, PathBuf>) -> Vec<String> {
    command[1..]
        .iter()
        .map(|a| match binds.get(a) {
            Some(host) => host.display().to_string(),
            None => a.clone(),
        })
        .collect()
}

fn toml_at(path: &Path) -> toml::Table {
    std::fs::read_to_string(path)
        .expect("config file")
        .parse()
        .expect("config file is TOML")
}

/// Every provider variable the backend reads: the string literals its provider code reads.
fn provider_variables() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).expect("providers dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).expect("source");
                for piece in text.split('"').skip(1).step_by(2) {
                    let known = ["STRIPE_", "PAYPAL_", "SEPA_"]
                        .iter()
                        .any(|p| piece.starts_with(p));
                    if known && piece.bytes().all(|c| c.is_ascii_uppercase() || c == b'_') {
                        out.push(piece.to_string());
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo().join("billing-backend/src/providers"), &mut out);
    out.sort();
    out.dedup();
    assert!(out.len() >= 10, "provider variables found: {out:?}");
    out
}

#[test]
fn compose_renders_and_every_tollgate_service_passes_check() {
    let doc = compose();
    let services = doc["services"].as_mapping().expect("services");
    let names: Vec<String> = services
        .keys()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    let mut gateways = Vec::new();
    let mut gateway_volumes = Vec::new();
    let mut backend_seen = false;
    for (name, svc) in services {
        let name = name.as_str().expect("service name");
        for dep in strings(&svc["depends_on"]).into_iter().chain(
            svc["depends_on"]
                .as_mapping()
                .map(|m| {
                    m.keys()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        ) {
            assert!(
                names.contains(&dep),
                "{name} depends on {dep}, which is no service"
            );
        }
        let command = strings(&svc["command"]);
        let Some(bin) = command.first().filter(|c| c.starts_with("tollgate-")) else {
            continue;
        };
        let (binds, named) = volumes(svc);
        let env = environment(svc);
        let config_path = command
            .iter()
            .position(|a| a == "--config")
            .map(|i| command[i + 1].clone())
            .expect("--config");
        let host_config = binds
            .get(&config_path)
            .unwrap_or_else(|| panic!("{name}: {config_path} is not mounted"));
        let cfg = toml_at(host_config);
        let section = if bin == "tollgate-gateway" {
            "gateway"
        } else {
            "backend"
        };
        let data_dir = cfg[section]["data_dir"]
            .as_str()
            .expect("data_dir set")
            .to_string();
        let on_volume = named
            .keys()
            .find(|mount| Path::new(&data_dir).starts_with(mount.as_str()));
        assert!(
            on_volume.is_some(),
            "{name}: data_dir {data_dir} is not on a volume (volumes: {named:?}): its state dies with the container"
        );

        // The real binary with this command line and environment; only data_dir is moved
        // to a scratch directory (the container's path is not writable here).
        let scratch = TempDir::new(&format!("deploy-{name}"));
        let mut env = env.clone();
        env.insert(
            format!("TOLLGATE_{}_DATA_DIR", section.to_ascii_uppercase()),
            scratch.path().display().to_string(),
        );
        let (ok, out) = check(bin, &local_args(&command, &binds), &env);
        assert!(
            ok,
            "{name}: `{} --check` refused the shipped configuration:\n{out}",
            command.join(" ")
        );

        if bin == "tollgate-backend" {
            backend_seen = true;
            for var in provider_variables() {
                assert!(
                    env.contains_key(&var),
                    "backend: provider variable {var} is not passed"
                );
            }
            let listen = cfg["backend"]["listen"].as_str().expect("backend listen");
            let port = listen.rsplit(':').next().expect("port");
            assert!(names.iter().any(|n| n == name));
            // The gateways' backend URL must reach this service on this port.
            for g in services.values() {
                if strings(&g["command"]).first().map(String::as_str) == Some("tollgate-gateway") {
                    let (gb, _) = volumes(g);
                    let gc = toml_at(gb.values().next().expect("gateway config"));
                    let url = gc["backend"]["url"].as_str().expect("backend url");
                    assert_eq!(url, format!("http://{name}:{port}"), "gateway backend.url");
                }
            }
        } else {
            gateways.push(name.to_string());
            gateway_volumes.push(on_volume.map(|m| named[m].clone()));
            for var in provider_variables() {
                assert!(
                    !env.contains_key(&var),
                    "{name}: provider secret {var} given to a gateway"
                );
            }
            // Every route's upstream is a service of this file, so a keyed request succeeds.
            for route in cfg["routes"].as_array().expect("routes") {
                for up in route["upstreams"].as_array().expect("upstreams") {
                    let up = up.as_str().expect("upstream");
                    let host = up
                        .split("://")
                        .nth(1)
                        .and_then(|r| r.split(':').next())
                        .expect("host");
                    assert!(
                        names.iter().any(|n| n == host),
                        "{name}: upstream {up} is no service of compose.yaml"
                    );
                }
            }
        }
    }
    assert!(backend_seen, "no backend service");
    assert!(gateways.len() >= 2, "gateways: {gateways:?}");
    gateway_volumes.sort();
    gateway_volumes.dedup();
    assert_eq!(
        gateway_volumes.len(),
        gateways.len(),
        "each gateway needs its own data volume"
    );

    // The load balancer sends to the gateways that exist.
    let lb = read("deploy/nginx/lb.conf");
    for line in lb
        .lines()
        .filter(|l| l.trim_start().starts_with("server ") && l.contains(':'))
    {
        let host = line.trim_start()["server ".len()..]
            .split(':')
            .next()
            .expect("host");
        assert!(
            gateways.iter().any(|g| g == host),
            "lb.conf: {host} is not a gateway service"
        );
    }
}

#[test]
fn the_docker_build_context_leaves_out_build_output_and_local_state() {
    let ignore = read(".dockerignore");
    let lines: Vec<&str> = ignore.lines().map(str::trim).collect();
    for must in ["target/", "data/", "**/data/", "*.db", "service_token"] {
        assert!(lines.contains(&must), ".dockerignore lacks {must}");
    }
    let dockerfile = read("deploy/Dockerfile");
    assert!(
        dockerfile.contains("COPY . ."),
        "the Dockerfile copies the context it expects"
    );
}

/// A unit file's `[Service]` settings, `%` specifiers expanded for `instance` on `host`.
fn unit(rel: &str, instance: &str, host: &str) -> BTreeMap<String, Vec<String>> {
    let short = host.split('.').next().expect("short host name");
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut in_service = false;
    for line in read(rel).lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_service = line == "[Service]";
            continue;
        }
        if !in_service || line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (k, v) = line.split_once('=').expect("key=value");
        let v = v
            .replace("%i", instance)
            .replace("%H", host)
            .replace("%l", short)
            .replace("$MAINPID", "1");
        assert!(
            !v.contains('%') || v.contains("%%"),
            "{rel}: unexpanded specifier in {line}"
        );
        out.entry(k.to_string()).or_default().push(v);
    }
    out
}

fn unit_env(u: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, String> {
    u.get("Environment")
        .into_iter()
        .flatten()
        .filter_map(|e| e.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn systemd_units_start_the_binaries_with_valid_settings_on_dotted_hosts() {
    let host = "api-gw-3.eu-west.example.com";
    // Gateway instance 2 on a host with a dotted name.
    let u = unit("deploy/systemd/tollgate-gateway@.service", "2", host);
    let exec: Vec<String> = u["ExecStart"][0]
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(exec[0], "/usr/local/bin/tollgate-gateway");
    let scratch = TempDir::new("deploy-systemd-gw");
    let mut env = unit_env(&u);
    env.insert(
        "TOLLGATE_BACKEND_FEED_TOKEN".into(),
        "unit-test-feed-token-0123456789".into(),
    );
    env.insert(
        "TOLLGATE_GATEWAY_DATA_DIR".into(),
        scratch.path().display().to_string(),
    );
    let instance_cfg = exec
        .iter()
        .position(|a| a == "--config")
        .map(|i| exec[i + 1].clone())
        .expect("--config");
    assert_eq!(instance_cfg, "/etc/tollgate/gateway-2.toml");
    // The instance file is the operator's; the shipped fleet example stands in for it.
    let args: Vec<String> = exec[1..]
        .iter()
        .map(|a| {
            if *a == instance_cfg {
                repo()
                    .join("deploy/config/gateway.toml")
                    .display()
                    .to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    let (ok, out) = check("tollgate-gateway", &args, &env);
    assert!(
        ok,
        "gateway unit on {host}: --check refused it:\n{out}\nenv: {env:?}"
    );
    let state = &u["StateDirectory"][0];
    assert!(
        u["ReadWritePaths"]
            .iter()
            .any(|p| Path::new(&format!("/var/lib/{state}")).starts_with(p)),
        "the gateway's StateDirectory is writable under ProtectSystem=strict"
    );

    let b = unit("deploy/systemd/tollgate-backend.service", "", host);
    let exec: Vec<String> = b["ExecStart"][0]
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(exec[0], "/usr/local/bin/tollgate-backend");
    let wd = b
        .get("WorkingDirectory")
        .and_then(|w| w.first())
        .expect("backend unit has a WorkingDirectory");
    assert!(
        b["ReadWritePaths"]
            .iter()
            .any(|p| Path::new(wd).starts_with(p)),
        "WorkingDirectory {wd} is writable"
    );
    let scratch = TempDir::new("deploy-systemd-be");
    let mut env = BTreeMap::new();
    env.insert(
        "TOLLGATE_BACKEND_DATA_DIR".to_string(),
        scratch.path().display().to_string(),
    );
    let args: Vec<String> = exec[1..]
        .iter()
        .map(|a| {
            if a == "/etc/tollgate/backend.toml" {
                repo()
                    .join("deploy/config/backend.toml")
                    .display()
                    .to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    let (ok, out) = check("tollgate-backend", &args, &env);
    assert!(ok, "backend unit: --check refused it:\n{out}");
}

#[test]
fn check_refuses_what_start_up_would_refuse() {
    // --check is only useful if it fails where the real start-up would.
    let scratch = TempDir::new("deploy-check-bad");
    let bad = scratch.write("gw.toml", "[gateway]\nlisten = \"nope\"\n");
    let mut env = BTreeMap::new();
    env.insert(
        "TOLLGATE_GATEWAY_DATA_DIR".to_string(),
        scratch.path().join("d").display().to_string(),
    );
    let (ok, out) = check(
        "tollgate-gateway",
        &["--config".into(), bad.display().to_string()],
        &env,
    );
    assert!(!ok, "a bad listen address passed --check:\n{out}");
    assert!(out.contains("listen"), "{out}");
    assert!(
        !scratch.path().join("d").exists(),
        "--check created the data_dir"
    );
    env.insert(
        "TOLLGATE_GATEWAY_GATEWAY_ID".into(),
        "web.example.com-1".into(),
    );
    let good = scratch.write("ok.toml", "[gateway]\nlisten = \"127.0.0.1:0\"\n");
    let (ok, out) = check(
        "tollgate-gateway",
        &["--config".into(), good.display().to_string()],
        &env,
    );
    assert!(!ok, "a gateway id with dots passed --check:\n{out}");
}
