//! TLS on the gateway's three links, end to end with the real binaries: HTTPS upstreams (a
//! private CA, SNI, ALPN http/1.1, mTLS), the gateway's TLS listener (h2 and http/1.1 by ALPN,
//! certificate reload on SIGHUP) and the gateway → backend link in remote mode (an https URL
//! with `ca_file`, against `tollgate-backend` with its own TLS listener). Certificates are made
//! for each test by [`tollgate_e2e::tls::Pki`].

use serde_json::Value;
use std::time::Duration;
use tollgate_e2e::gw::{config_text, route, Gateway, FEED_TOKEN};
use tollgate_e2e::tls::{addr_of, fetch, Pki, TlsBackend, TlsUpstream};
use tollgate_e2e::{client, eventually, TempDir};

async fn get(url: &str, key: &str) -> (u16, Value) {
    let resp = client()
        .get(url)
        .header("X-API-Key", key)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A `[[routes]]` block for an https upstream trusting `ca_file`, with `extra` lines.
fn tls_route(prefix: &str, upstream: &str, ca_file: &std::path::Path, extra: &str) -> String {
    route(
        prefix,
        upstream,
        &format!("tls_ca_file = \"{}\"\n{extra}", ca_file.display()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_requests_reach_an_https_upstream() {
    let dir = TempDir::new("tls-up");
    let pki = Pki::new(dir.path(), "up");
    let cert = pki.issue("upstream", &["localhost", "127.0.0.1"], false);
    let up = TlsUpstream::start(&cert, None);
    let routes = [
        tls_route("/ip", &up.url(), &pki.ca_file, "strip_prefix = true"),
        tls_route(
            "/name",
            &up.url_by_name(),
            &pki.ca_file,
            "strip_prefix = true",
        ),
    ]
    .concat();
    let gw = Gateway::embedded(&routes);
    let key = gw.api().mint("tls-user", "free").await;

    let (status, v) = get(&format!("{}/ip/hello?x=1", gw.url), &key.api_key).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["path"], "/hello");
    assert_eq!(v["headers"]["x-tollgate-key-id"], key.key_id.as_str());
    assert!(
        v["headers"]["x-api-key"].is_null(),
        "the key is not forwarded"
    );
    // ALPN http/1.1 to the upstream; no SNI for an IP address.
    assert_eq!(v["tls"]["alpn"], "http/1.1");
    assert!(v["tls"]["sni"].is_null(), "{v}");
    assert!(!v["tls"]["client_cert"].as_bool().unwrap_or(true));

    let (status, v) = get(&format!("{}/name/there", gw.url), &key.api_key).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["tls"]["sni"], "localhost",
        "SNI is the upstream's host name"
    );
    assert_eq!(up.hits(), 2);

    // A route with an https upstream is never on the plain-TCP fast lane, and the pooled
    // connection is reused: more requests, same answers.
    for _ in 0..3 {
        let (status, _) = get(&format!("{}/ip/again", gw.url), &key.api_key).await;
        assert_eq!(status, 200);
    }
    assert_eq!(up.hits(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_certificate_from_another_ca_is_a_502() {
    let dir = TempDir::new("tls-badca");
    let trusted = Pki::new(dir.path(), "trusted");
    let other = Pki::new(dir.path(), "other");
    let cert = other.issue("upstream", &["127.0.0.1"], false);
    let up = TlsUpstream::start(&cert, None);
    let gw = Gateway::embedded(&tls_route("/v1", &up.url(), &trusted.ca_file, ""));
    let key = gw.api().mint("tls-user", "free").await;

    let resp = client()
        .get(format!("{}/v1/x", gw.url))
        .header("X-API-Key", &key.api_key)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 502);
    let remaining = resp
        .headers()
        .get("ratelimit")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let v: Value = resp.json().await.expect("JSON error body");
    assert_eq!(v["error"]["code"], "upstream_unavailable", "{v}");
    assert!(v["detail"].is_string(), "{v}");
    assert_eq!(up.hits(), 0, "no request crossed a refused handshake");
    // Refunded like any 502: the minute window still has all 10 free units.
    assert!(remaining.contains("r=10"), "{remaining}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mtls_upstream_serves_only_the_configured_client_certificate() {
    let dir = TempDir::new("tls-mtls");
    let pki = Pki::new(dir.path(), "mtls");
    let cert = pki.issue("upstream", &["127.0.0.1"], false);
    let client_cert = pki.issue("gateway-client", &["tollgate-gateway"], true);
    let up = TlsUpstream::start(&cert, Some(&pki));
    let with_cert = format!(
        "tls_client_cert_file = \"{}\"\ntls_client_key_file = \"{}\"",
        client_cert.cert_file.display(),
        client_cert.key_file.display()
    );
    let routes = [
        tls_route("/with", &up.url(), &pki.ca_file, &with_cert),
        tls_route("/without", &up.url(), &pki.ca_file, ""),
    ]
    .concat();
    let gw = Gateway::embedded(&routes);
    let key = gw.api().mint("tls-user", "free").await;

    let (status, v) = get(&format!("{}/with/x", gw.url), &key.api_key).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["tls"]["client_cert"], true);
    assert_eq!(up.hits(), 1);

    let (status, v) = get(&format!("{}/without/x", gw.url), &key.api_key).await;
    assert_eq!(status, 502, "{v}");
    assert_eq!(v["error"]["code"], "upstream_unavailable");
    assert_eq!(up.hits(), 1, "refused without a client certificate");
}

/// `[gateway]` lines for a TLS listener presenting `cert`.
fn listener_tls(cert: &tollgate_e2e::tls::Issued) -> String {
    format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        cert.cert_file.display(),
        cert.key_file.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_listener_answers_h2_and_http1_by_alpn() {
    let dir = TempDir::new("tls-listen");
    let pki = Pki::new(dir.path(), "listen");
    let cert = pki.issue("gateway", &["localhost", "127.0.0.1"], false);
    let gw = Gateway::embedded_with(
        &route("/open", "builtin:echo", "auth = \"none\""),
        &listener_tls(&cert),
    );
    assert!(
        gw.proc.output().contains(&format!(
            "gateway listening on https://{}",
            addr_of(&gw.url)
        )),
        "the listener says it speaks https"
    );
    let addr = addr_of(&gw.url);

    let h2 = fetch(
        addr,
        "localhost",
        pki.roots(),
        &[b"h2", b"http/1.1"],
        "/open/x",
    )
    .await
    .expect("h2");
    assert_eq!(h2.alpn.as_deref(), Some("h2"));
    assert_eq!(h2.version, hyper::Version::HTTP_2);
    assert_eq!(h2.status, 200, "{}", h2.body);
    let v: Value = serde_json::from_str(&h2.body).expect("echo JSON");
    assert_eq!(v["path"], "/open/x");

    let h1 = fetch(addr, "127.0.0.1", pki.roots(), &[b"http/1.1"], "/health")
        .await
        .expect("http/1.1");
    assert_eq!(h1.alpn.as_deref(), Some("http/1.1"));
    assert_eq!(h1.version, hyper::Version::HTTP_11);
    assert_eq!(h1.status, 200, "{}", h1.body);
    assert_eq!(h1.leaf, cert.der());

    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = client()
        .get(format!("http://{addr}/health"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP answered on the TLS listener");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_puts_a_new_listener_certificate_in_force() {
    let dir = TempDir::new("tls-reload");
    let pki = Pki::new(dir.path(), "reload");
    let first = pki.issue("gateway", &["127.0.0.1"], false);
    let gw = Gateway::embedded_with("", &listener_tls(&first));
    let addr = addr_of(&gw.url);
    let leaf = || async {
        fetch(addr, "127.0.0.1", pki.roots(), &[b"http/1.1"], "/health")
            .await
            .expect("TLS request")
    };
    assert_eq!(leaf().await.leaf, first.der());

    // Renewed files in place (same paths), then SIGHUP.
    let renewed = pki.issue("gateway", &["127.0.0.1"], false);
    assert_ne!(renewed.der(), first.der());
    let hup = || {
        let st = std::process::Command::new("kill")
            .args(["-HUP", &gw.proc.pid().to_string()])
            .status()
            .expect("kill");
        assert!(st.success());
    };
    hup();
    eventually(
        Duration::from_secs(5),
        "the renewed certificate",
        || async { (leaf().await.leaf == renewed.der()).then_some(()) },
    )
    .await;

    // A broken certificate file is refused; the renewed certificate stays in force.
    std::fs::write(&renewed.cert_file, "not a certificate\n").expect("write");
    hup();
    eventually(Duration::from_secs(5), "the refusal in the log", || async {
        gw.proc
            .output()
            .contains("gateway.tls_cert_file")
            .then_some(())
    })
    .await;
    let after = leaf().await;
    assert_eq!(after.leaf, renewed.der());
    assert_eq!(after.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_gateway_reaches_a_tls_backend() {
    let dir = TempDir::new("tls-backend");
    let pki = Pki::new(dir.path(), "backend");
    let cert = pki.issue("backend", &["127.0.0.1"], false);
    let backend = TlsBackend::start(&cert);
    assert!(backend
        .proc
        .output()
        .contains(&format!("backend listening on https://{}", backend.addr)));

    let gw_dir = TempDir::new("gw-remote-tls");
    let section = format!(
        "[backend]\nmode = \"remote\"\nurl = \"https://{}\"\nfeed_token = \"{FEED_TOKEN}\"\nca_file = \"{}\"\n",
        backend.addr,
        pki.ca_file.display()
    );
    let text = config_text(
        &gw_dir,
        &section,
        &route("/v1", "builtin:echo", ""),
        "usage_flush_ms = 100",
    );
    let gw = Gateway::start_in(gw_dir, &text);
    // Management calls are forwarded to the backend over TLS...
    let api = gw.api();
    let key = api.mint("tls-remote", "free").await;
    // ...the key arrives through the TLS feed...
    let url = format!("{}/v1/x", gw.url);
    eventually(
        Duration::from_secs(10),
        "the key in the replica",
        || async { (get(&url, &key.api_key).await.0 == 200).then_some(()) },
    )
    .await;
    for _ in 0..2 {
        assert_eq!(get(&url, &key.api_key).await.0, 200);
    }
    // ...and usage goes back over TLS (3 admitted requests).
    eventually(Duration::from_secs(10), "usage at the backend", || async {
        (api.usage_today(&key.key_id).await == 3).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tls_handshakes_count_against_max_connections_and_time_out() {
    use tokio::io::AsyncReadExt;
    const MAX: usize = 20;
    let dir = TempDir::new("tls-conns");
    let pki = Pki::new(dir.path(), "conns");
    let cert = pki.issue("gateway", &["127.0.0.1"], false);
    let gw = Gateway::embedded_with(
        "",
        &format!(
            "max_connections = {MAX}\nclient_header_timeout_ms = 1000\n{}",
            listener_tls(&cert)
        ),
    );
    let addr = addr_of(&gw.url);
    // Five times the cap in connections that never send a ClientHello.
    let mut silent = Vec::new();
    for _ in 0..MAX * 5 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await
        {
            silent.push(s);
        }
    }
    // A real client still gets its handshake and answer: a silent one made room.
    let answered = tokio::time::timeout(
        Duration::from_secs(1),
        fetch(addr, "127.0.0.1", pki.roots(), &[b"http/1.1"], "/health"),
    )
    .await
    .expect("answered within 1 s during the flood")
    .expect("TLS request");
    assert_eq!(answered.status, 200);
    eventually(
        Duration::from_secs(1),
        "open connections at the cap",
        || async {
            let text = gw.scrape().await;
            let open = tollgate_e2e::gw::metric(&text, "tollgate_gateway_connections_open", "")?;
            (open <= MAX as f64).then_some(())
        },
    )
    .await;
    // Every silent connection is closed: past the cap at once, the rest by the 1 s handshake
    // limit.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    let mut closed = 0;
    for s in silent.iter_mut() {
        let mut buf = [0u8; 64];
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    assert_eq!(closed, silent.len(), "silent TLS connections left open");
}
