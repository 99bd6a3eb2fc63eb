//! End-to-end: SEPA bank transfer with the real backend binary — instructions with an RF
//! reference and EPC QR, a camt.053 import that activates the plan, re-import changes nothing.

use serde_json::{json, Value};
use std::time::Duration;
use tollgate_e2e::{client, eventually, Proc, TempDir};

const TOKEN: &str = "e2e-service-token-0123456789";
const IBAN: &str = "DE89370400440532013000";

struct Backend {
    _proc: Proc,
    url: String,
    _dir: TempDir,
}

fn start(env: &[(&str, &str)]) -> Backend {
    let dir = TempDir::new("sepa");
    let cfg = dir.write(
        "b.toml",
        &format!(
            "[backend]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n",
            dir.path().join("data").display()
        ),
    );
    let mut all = vec![("TOLLGATE_SERVICE_TOKEN", TOKEN)];
    all.extend_from_slice(env);
    let proc = Proc::start(
        "tollgate-backend",
        &["--config", cfg.to_str().unwrap_or_default(), "serve"],
        &all,
    );
    let url = proc.url("backend");
    Backend {
        _proc: proc,
        url,
        _dir: dir,
    }
}

fn configured() -> Backend {
    start(&[
        ("SEPA_HOLDER", "Example SaaS GmbH"),
        ("SEPA_IBAN", IBAN),
        ("SEPA_BIC", "COBADEFFXXX"),
    ])
}

async fn call(method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = client()
        .request(method.parse().expect("method"), url)
        .bearer_auth(TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let st = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        st,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// One booked credit entry of a camt.053.001.08 statement.
fn entry(entry_ref: &str, amount: &str, ccy: &str, reference_xml: &str, cdt_dbt: &str) -> String {
    format!(
        r#"<Ntry><NtryRef>{entry_ref}</NtryRef><Amt Ccy="{ccy}">{amount}</Amt><CdtDbtInd>{cdt_dbt}</CdtDbtInd><Sts><Cd>BOOK</Cd></Sts>
<BookgDt><Dt>2026-11-25</Dt></BookgDt><ValDt><Dt>2026-11-25</Dt></ValDt><AcctSvcrRef>{entry_ref}</AcctSvcrRef>
<BkTxCd><Domn><Cd>PMNT</Cd><Fmly><Cd>RCDT</Cd><SubFmlyCd>ESCT</SubFmlyCd></Fmly></Domn></BkTxCd>
<NtryDtls><TxDtls><Refs><EndToEndId>NOTPROVIDED</EndToEndId></Refs><Amt Ccy="{ccy}">{amount}</Amt><CdtDbtInd>{cdt_dbt}</CdtDbtInd>
<RltdPties><Dbtr><Pty><Nm>Alice Customer</Nm></Pty></Dbtr><DbtrAcct><Id><IBAN>FR1420041010050500013M02606</IBAN></Id></DbtrAcct></RltdPties>
<RmtInf>{reference_xml}</RmtInf></TxDtls></NtryDtls></Ntry>"#
    )
}

fn statement(entries: &[String]) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.08"><BkToCstmrStmt>
<GrpHdr><MsgId>STMT-2026-11-25</MsgId><CreDtTm>2026-11-25T18:00:00Z</CreDtTm></GrpHdr>
<Stmt><Id>2026-11-25-001</Id><CreDtTm>2026-11-25T18:00:00Z</CreDtTm><Acct><Id><IBAN>{IBAN}</IBAN></Id><Ccy>EUR</Ccy></Acct>
{}
</Stmt></BkToCstmrStmt></Document>"#,
        entries.join("\n")
    )
}

fn structured(rf: &str) -> String {
    format!("<Strd><CdtrRefInf><Tp><CdOrPrtry><Cd>SCOR</Cd></CdOrPrtry></Tp><Ref>{rf}</Ref></CdtrRefInf></Strd>")
}

async fn rate_limit(url: &str, key_id: &str) -> u64 {
    let (_, u) = call(
        "GET",
        &format!("{url}/api/marketplace/keys/{key_id}/usage"),
        None,
    )
    .await;
    u["rate_limit"]["requests_per_minute"].as_u64().unwrap_or(0)
}

async fn import(url: &str, xml: &str, name: &str) -> (u16, Value) {
    import_with(url, xml, name, TOKEN).await
}

async fn import_with(url: &str, xml: &str, name: &str, token: &str) -> (u16, Value) {
    let resp = client()
        .post(format!("{url}/billing/sepa/import?name={name}"))
        .bearer_auth(token)
        .header("content-type", "application/xml")
        .body(xml.to_string())
        .send()
        .await
        .expect("import");
    let st = resp.status().as_u16();
    (st, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn transfer_instructions_then_statement_import_activates_pro_once() {
    let b = configured();
    let u = b.url.clone();
    let (_, key) = call(
        "POST",
        &format!("{u}/api/marketplace/keys/generate"),
        Some(json!({"user_id": "sepa-user"})),
    )
    .await;
    let key_id = key["key_id"].as_str().unwrap_or_default().to_string();
    assert_eq!(rate_limit(&u, &key_id).await, 10);

    // Instructions: 29.00 EUR less 1.5 % = 28.57 EUR, our IBAN, a valid RF reference.
    let (st, created) = call(
        "POST",
        &format!("{u}/billing/create"),
        Some(json!({"user_id": "sepa-user", "plan": "pro", "cycle": "monthly", "method": "sepa"})),
    )
    .await;
    assert_eq!(st, 200, "{created}");
    assert_eq!(created["method"], json!("SEPA Bank Transfer"));
    assert_eq!(created["status"], json!("PENDING"));
    let ins = &created["instructions"];
    assert_eq!(ins["amount"], json!("28.57 EUR"));
    assert_eq!(ins["amount_minor"], json!(2857));
    assert_eq!(ins["iban_compact"], json!(IBAN));
    assert_eq!(ins["recipient_name"], json!("Example SaaS GmbH"));
    let rf = ins["reference"].as_str().unwrap_or_default().to_string();
    assert!(rf.starts_with("RF") && mod97_ok(&rf), "{rf}");
    let payment_id = created["payment_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    // The QR code is served as SVG and PNG.
    let svg = client()
        .get(format!("{u}/billing/sepa/{payment_id}/qr.svg"))
        .send()
        .await
        .expect("svg");
    assert_eq!(
        svg.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("image/svg+xml")
    );
    assert!(svg.text().await.unwrap_or_default().contains("<svg"));
    let png = client()
        .get(format!("{u}/billing/sepa/{payment_id}/qr.png"))
        .send()
        .await
        .expect("png")
        .bytes()
        .await
        .unwrap_or_default();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // A statement with that transfer (plus a debit and an unrelated credit) activates pro.
    let xml = statement(&[
        entry("E-1", "28.57", "EUR", &structured(&rf), "CRDT"),
        entry("E-2", "12.00", "EUR", "<Ustrd>rent</Ustrd>", "DBIT"),
        entry("E-3", "5.00", "EUR", "<Ustrd>thank you</Ustrd>", "CRDT"),
    ]);
    let (st, report) = import(&u, &xml, "stmt.xml").await;
    assert_eq!(st, 200, "{report}");
    assert_eq!(report["activated"], json!(1));
    let outcomes: Vec<&str> = report["lines"]
        .as_array()
        .map(|l| l.iter().filter_map(|x| x["outcome"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        outcomes,
        vec!["matched", "ignored", "unmatched"],
        "{report}"
    );
    let (_, elapsed) = eventually(Duration::from_secs(1), "pro limits after import", || {
        let u = u.clone();
        let key_id = key_id.clone();
        async move { (rate_limit(&u, &key_id).await == 100).then_some(()) }
    })
    .await;
    assert!(elapsed < Duration::from_secs(1));
    let (_, pay) = call("GET", &format!("{u}/billing/payments/{payment_id}"), None).await;
    assert_eq!(pay["status"], json!("succeeded"));

    // Importing the same file again changes nothing.
    let (_, ledger_before) = call(
        "GET",
        &format!("{u}/api/v1/billing/ledger?user_id=sepa-user"),
        None,
    )
    .await;
    let (st, again) = import(&u, &xml, "stmt.xml").await;
    assert_eq!(st, 200);
    assert_eq!(again["activated"], json!(0));
    let outcomes: Vec<&str> = again["lines"]
        .as_array()
        .map(|l| l.iter().filter_map(|x| x["outcome"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        outcomes,
        vec!["duplicate", "ignored", "duplicate"],
        "{again}"
    );
    let (_, ledger_after) = call(
        "GET",
        &format!("{u}/api/v1/billing/ledger?user_id=sepa-user"),
        None,
    )
    .await;
    assert_eq!(ledger_before, ledger_after);
    let (_, subs) = call(
        "GET",
        &format!("{u}/api/v1/billing/subscriptions?user_id=sepa-user"),
        None,
    )
    .await;
    assert_eq!(subs["subscriptions"].as_array().map(Vec::len), Some(1));

    // The instructions are no longer payable: no QR for a paid payment.
    let st = client()
        .get(format!("{u}/billing/sepa/{payment_id}/qr.svg"))
        .send()
        .await
        .expect("svg")
        .status()
        .as_u16();
    assert_eq!(st, 409);
    let (_, imports) = call("GET", &format!("{u}/billing/sepa/imports"), None).await;
    assert_eq!(imports["imports"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn mismatches_wait_for_the_operator() {
    let b = configured();
    let u = b.url.clone();
    let mut refs = Vec::new();
    let mut ids = Vec::new();
    for user in ["under", "over", "ccy", "late"] {
        let (_, c) = call(
            "POST",
            &format!("{u}/billing/create"),
            Some(json!({"user_id": user, "plan": "pro", "cycle": "monthly"})),
        )
        .await;
        refs.push(
            c["instructions"]["reference"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        ids.push(c["payment_id"].as_str().unwrap_or_default().to_string());
    }
    // The reference typed into free text with spaces is found too.
    let spaced: String = refs[1]
        .chars()
        .collect::<Vec<_>>()
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join(" ");
    let xml = statement(&[
        entry("M-1", "28.00", "EUR", &structured(&refs[0]), "CRDT"),
        entry(
            "M-2",
            "30.00",
            "EUR",
            &format!("<Ustrd>Invoice {spaced} thanks</Ustrd>"),
            "CRDT",
        ),
        entry("M-3", "28.57", "USD", &structured(&refs[2]), "CRDT"),
    ]);
    let (st, report) = import(&u, &xml, "m.xml").await;
    assert_eq!(st, 200, "{report}");
    let outcomes: Vec<&str> = report["lines"]
        .as_array()
        .map(|l| l.iter().filter_map(|x| x["outcome"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        outcomes,
        vec!["under_paid", "over_paid", "wrong_currency"],
        "{report}"
    );
    assert_eq!(report["activated"], json!(0));
    for id in &ids[..3] {
        let (_, p) = call("GET", &format!("{u}/billing/payments/{id}"), None).await;
        assert_eq!(p["status"], json!("pending"), "nothing is guessed");
    }
    // The operator decides: confirm the over-payment, reject the under-payment.
    let (st, c) = call(
        "POST",
        &format!("{u}/billing/sepa/{}/confirm", ids[1]),
        Some(json!({"note": "overpaid by 1.43, refund the rest"})),
    )
    .await;
    assert_eq!(
        (st, c["payment"]["status"].clone()),
        (200, json!("succeeded"))
    );
    let (st, c) = call(
        "POST",
        &format!("{u}/billing/sepa/{}/confirm", ids[1]),
        None,
    )
    .await;
    assert_eq!(
        (st, c["changed"].clone()),
        (200, json!(false)),
        "confirming twice changes nothing"
    );
    let (st, r) = call("POST", &format!("{u}/billing/sepa/{}/reject", ids[0]), None).await;
    assert_eq!((st, r["payment"]["status"].clone()), (200, json!("failed")));
    let (st, e) = call(
        "POST",
        &format!("{u}/billing/sepa/{}/confirm", ids[0]),
        None,
    )
    .await;
    assert_eq!(
        (st, e["error"]["code"].clone()),
        (409, json!("payment_already_decided"))
    );
    let (_, subs) = call(
        "GET",
        &format!("{u}/api/v1/billing/subscriptions?user_id=over"),
        None,
    )
    .await;
    assert_eq!(subs["plan"], json!("pro"));
    let (_, subs) = call(
        "GET",
        &format!("{u}/api/v1/billing/subscriptions?user_id=under"),
        None,
    )
    .await;
    assert_eq!(subs["plan"], json!("free"));
}

#[tokio::test]
async fn bad_requests_and_unconfigured_sepa() {
    let b = configured();
    let u = b.url.clone();
    for (body, code) in [
        (
            json!({"user_id": "x", "plan": "pro", "cycle": "weekly"}),
            "unknown_cycle",
        ),
        (json!({"user_id": "x", "plan": "gold"}), "unknown_plan"),
        (
            json!({"user_id": "x", "plan": "pro", "amount": 1}),
            "amount_not_allowed",
        ),
        (
            json!({"user_id": "x", "amount": "10.001", "currency": "EUR"}),
            "invalid_amount",
        ),
        (
            json!({"user_id": "x", "amount": -5, "currency": "EUR"}),
            "invalid_amount",
        ),
        (
            json!({"user_id": "x", "amount": "10", "currency": "USD"}),
            "unsupported_currency",
        ),
        (
            json!({"user_id": "x", "plan": "pro", "method": "card"}),
            "unsupported_method",
        ),
        (json!({"plan": "pro"}), "invalid_body"),
    ] {
        let (st, e) = call("POST", &format!("{u}/billing/create"), Some(body.clone())).await;
        assert_eq!(
            (st, e["error"]["code"].as_str()),
            (400, Some(code)),
            "{body}"
        );
    }
    let (st, plain) = call(
        "POST",
        &format!("{u}/billing/create"),
        Some(json!({"user_id": "x", "amount": 49.5, "currency": "EUR"})),
    )
    .await;
    assert_eq!(
        (st, plain["instructions"]["amount"].clone()),
        (200, json!("49.50 EUR"))
    );
    let (st, e) = import(&u, "<not-xml", "bad.xml").await;
    assert_eq!(
        (st, e["error"]["code"].clone()),
        (400, json!("invalid_statement"))
    );
    let (st, e) = import(&u, "<Document><Other/></Document>", "other.xml").await;
    assert_eq!(
        (st, e["error"]["code"].clone()),
        (400, json!("invalid_statement"))
    );

    let plain = start(&[]);
    let (st, e) = call(
        "POST",
        &format!("{}/billing/create", plain.url),
        Some(json!({"user_id": "x", "plan": "pro"})),
    )
    .await;
    assert_eq!(
        (st, e["error"]["code"].clone()),
        (503, json!("provider_not_configured"))
    );
    let (_, status) = call("GET", &format!("{}/api/v1/billing/status", plain.url), None).await;
    assert_eq!(status["providers"]["sepa"]["configured"], json!(false));
}

#[test]
fn invalid_iban_stops_startup_naming_the_setting() {
    let dir = TempDir::new("badiban");
    let cfg = dir.write(
        "b.toml",
        &format!(
            "[backend]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n",
            dir.path().join("data").display()
        ),
    );
    let out = std::process::Command::new(tollgate_e2e::bin_path("tollgate-backend"))
        .args(["--config", cfg.to_str().unwrap_or_default(), "serve"])
        .env("TOLLGATE_SERVICE_TOKEN", TOKEN)
        .env("SEPA_HOLDER", "X")
        .env("SEPA_IBAN", "AL90202110080000001234567")
        .env("SEPA_BIC", "not a bic")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SEPA_IBAN"), "{err}");
    assert!(err.contains("SEPA_BIC"), "{err}");
}

fn mod97_ok(rf: &str) -> bool {
    let moved = format!("{}{}", &rf[4..], &rf[..4]);
    let mut rem = 0u32;
    for c in moved.chars() {
        let v = c.to_digit(36).unwrap_or(99);
        for d in v.to_string().chars() {
            rem = (rem * 10 + d.to_digit(10).unwrap_or(0)) % 97;
        }
    }
    rem == 1
}

/// The issue's walk, through the gateway (embedded backend) with a real upstream: a free key,
/// SEPA instructions for pro monthly, a camt.053 import, and the same key admits 100 a minute.
#[tokio::test]
async fn through_the_gateway_a_statement_import_lifts_the_key_to_pro() {
    use tollgate_e2e::gw::{config_text, route, Api, TOKEN as GW_TOKEN};
    let upstream = tollgate_e2e::upstream::Upstream::start();
    let dir = TempDir::new("sepa-gw");
    let text = config_text(
        &dir,
        "[backend]\nmode = \"embedded\"\n",
        &route("/api", &upstream.url(), ""),
        "",
    );
    let config = dir.write("gateway.toml", &text);
    let proc = Proc::start(
        "tollgate-gateway",
        &["--config", config.to_str().unwrap_or_default()],
        &[
            ("TOLLGATE_SERVICE_TOKEN", GW_TOKEN),
            ("SEPA_HOLDER", "Example SaaS GmbH"),
            ("SEPA_IBAN", IBAN),
            ("SEPA_BIC", "COBADEFFXXX"),
        ],
    );
    let gw = proc.url("gateway");
    let api = Api {
        base: gw.clone(),
        client: client(),
    };
    let key = api.mint("sepa-gw-user", "free").await;
    let c = client();
    let hit = |c: reqwest::Client, gw: String, k: String| async move {
        let r = c
            .get(format!("{gw}/api/thing"))
            .header("x-api-key", k)
            .send()
            .await
            .expect("call");
        let policy = r
            .headers()
            .get("ratelimit-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (r.status().as_u16(), policy)
    };
    // The new key reaches the gateway's replica within a second; then free allows 10 a minute.
    eventually(Duration::from_secs(1), "the key at the gateway", || {
        let (c, gw, k) = (c.clone(), gw.clone(), key.api_key.clone());
        async move { (hit(c, gw, k).await.0 == 200).then_some(()) }
    })
    .await;
    let mut admitted = 1;
    for _ in 0..10 {
        if hit(c.clone(), gw.clone(), key.api_key.clone()).await.0 == 200 {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10);

    let post = |path: &str, body: Value| {
        c.post(format!("{gw}{path}"))
            .bearer_auth(GW_TOKEN)
            .json(&body)
            .send()
    };
    let created: Value = post(
        "/billing/create",
        json!({"user_id": "sepa-gw-user", "plan": "pro", "cycle": "monthly", "method": "sepa"}),
    )
    .await
    .expect("create")
    .json()
    .await
    .expect("json");
    assert_eq!(created["instructions"]["amount"], json!("28.57 EUR"));
    assert_eq!(created["instructions"]["iban_compact"], json!(IBAN));
    let rf = created["instructions"]["reference"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(mod97_ok(&rf), "{rf}");

    let xml = statement(&[entry("GW-1", "28.57", "EUR", &structured(&rf), "CRDT")]);
    let (st, report) = import_with(&gw, &xml, "gw.xml", GW_TOKEN).await;
    assert_eq!(
        (st, report["activated"].clone()),
        (200, json!(1)),
        "{report}"
    );
    let imported = std::time::Instant::now();
    // Within a second the gateway enforces the pro tier on the same key.
    let (_, elapsed) = eventually(Duration::from_secs(1), "pro tier at the gateway", || {
        let (c, gw, k) = (c.clone(), gw.clone(), key.api_key.clone());
        async move {
            let (status, policy) = hit(c, gw, k).await;
            (status == 200 && policy.contains("q=100;")).then_some(())
        }
    })
    .await;
    assert!(
        elapsed < Duration::from_secs(1),
        "took {:?}",
        imported.elapsed()
    );
    // 100 a minute in all: the 10 admitted before plus the probe that saw the new tier, then up to 100.
    let mut total = 11;
    for _ in 0..120 {
        if hit(c.clone(), gw.clone(), key.api_key.clone()).await.0 == 200 {
            total += 1;
        }
    }
    assert_eq!(total, 100, "exactly the pro minute limit");

    // The same statement again changes nothing.
    let (_, again) = import_with(&gw, &xml, "gw.xml", GW_TOKEN).await;
    assert_eq!(again["activated"], json!(0));
    assert_eq!(again["lines"][0]["outcome"], json!("duplicate"));
    drop(proc);
}
