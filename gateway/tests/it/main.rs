//! Integration tests of the `tollgate-gateway` binary itself (the end-to-end suite with a real
//! upstream and backend lives in the workspace `tests/` crate).

use std::process::Command;

fn gateway() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tollgate-gateway"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TOLLGATE_") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn bad_configuration_stops_start_up_with_one_line_per_setting() {
    let dir = std::env::temp_dir().join(format!("tollgate-gw-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        r#"
[gateway]
listen = "not-an-address"
colour = "blue"

[[routes]]
prefix = "/a"
plans = ["platinum"]

[[routes]]
prefix = "/b"
upstreams = ["https://example.invalid"]
tls_ca_file = "/nonexistent/tollgate/ca.pem"
"#,
    )
    .expect("write");
    let out = gateway()
        .args(["--config", &path.display().to_string()])
        .output()
        .expect("run");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "gateway.listen: \"not-an-address\"",
        "gateway.colour: unknown setting",
        "routes[0].upstreams: a route needs at least one upstream",
        "routes[0].plans: unknown plan \"platinum\"",
        "routes[1].tls_ca_file: cannot read /nonexistent/tollgate/ca.pem",
    ] {
        assert!(
            err.lines().any(|l| l.contains(want)),
            "missing {want:?} in:\n{err}"
        );
    }
    assert!(out.stdout.is_empty(), "nothing is served");
}

#[test]
fn env_overrides_are_validated_too() {
    let out = gateway()
        .env("TOLLGATE_GATEWAY_USAGE_FLUSH_MS", "5000")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("TOLLGATE_GATEWAY_USAGE_FLUSH_MS=\"5000\" is out of range (10..=1000)"));
}
