//! End-to-end: the customer portal's security rules against the real backend binary — CSRF
//! refusal, expired / used / forged hand-off links, another customer's key and payment, cookie
//! flags, the Content-Security-Policy, server-side session expiry and sign-out. The browser walk
//! (tests/browser/run.sh) covers the happy path in chromium.

use reqwest::header::{HeaderMap, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use reqwest::redirect::Policy;
use serde_json::{json, Value};
use std::time::Duration;
use tollgate_e2e::{Proc, TempDir};

const TOKEN: &str = "e2e-portal-service-token-0123456789";
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

struct Backend {
    _proc: Proc,
    url: String,
    _dir: TempDir,
}

fn start(extra: &[(&str, &str)]) -> Backend {
    let dir = TempDir::new("portal");
    let cfg = dir.write(
        "b.toml",
        &format!(
            "[backend]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n",
            dir.path().join("data").display()
        ),
    );
    let mut env = vec![
        ("TOLLGATE_SERVICE_TOKEN", TOKEN),
        ("TOLLGATE_TEST_CLOCK", "1"),
        ("SEPA_HOLDER", "Example SaaS GmbH"),
        ("SEPA_IBAN", "DE89370400440532013000"),
        ("SEPA_BIC", "COBADEFFXXX"),
    ];
    env.extend_from_slice(extra);
    let proc = Proc::start(
        "tollgate-backend",
        &["--config", cfg.to_str().unwrap_or_default(), "serve"],
        &env,
    );
    let url = proc.url("backend");
    Backend {
        _proc: proc,
        url,
        _dir: dir,
    }
}

/// No redirects followed, no cookie jar: the tests read `Location` and `Set-Cookie` themselves.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

async fn service(b: &Backend, path: &str, body: Value) -> (u16, Value) {
    let r = http()
        .post(format!("{}{path}", b.url))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .expect("request");
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or(Value::Null))
}

async fn handoff(b: &Backend, user_id: &str) -> String {
    let (st, v) = service(b, "/portal/api/handoff", json!({"user_id": user_id})).await;
    assert_eq!(st, 200, "{v}");
    v["path"].as_str().expect("path").to_string()
}

struct Page {
    status: u16,
    headers: HeaderMap,
    body: String,
}

async fn get(b: &Backend, path: &str, cookie: Option<&str>) -> Page {
    let mut req = http().get(format!("{}{path}", b.url));
    if let Some(c) = cookie {
        req = req.header(COOKIE, c);
    }
    let r = req.send().await.expect("request");
    Page {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.text().await.unwrap_or_default(),
    }
}

async fn post_form(b: &Backend, path: &str, cookie: &str, form: &str) -> Page {
    let r = http()
        .post(format!("{}{path}", b.url))
        .header(COOKIE, cookie)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(form.to_string())
        .send()
        .await
        .expect("request");
    Page {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.text().await.unwrap_or_default(),
    }
}

/// Follows a hand-off link; returns the `name=value` session cookie.
async fn sign_in(b: &Backend, link: &str) -> String {
    let p = get(b, link, None).await;
    assert_eq!(p.status, 303, "{}", p.body);
    let set = p
        .headers
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .expect("Set-Cookie");
    set.split(';').next().expect("cookie").to_string()
}

/// The value of `<input type="hidden" name="{name}" value="...">` (first occurrence).
fn hidden(body: &str, name: &str) -> String {
    let marker = format!(r#"name="{name}" value=""#);
    let i = body
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} field in:\n{body}"))
        + marker.len();
    body[i..].split('"').next().unwrap_or_default().to_string()
}

async fn user_keys(b: &Backend, user: &str) -> Vec<Value> {
    let r = http()
        .get(format!("{}/api/marketplace/keys/user/{user}", b.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("request");
    let v: Value = r.json().await.expect("json");
    v["keys"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn forms_without_the_csrf_token_are_refused_and_change_nothing() {
    let b = start(&[]);
    let cookie = sign_in(&b, &handoff(&b, "alice").await).await;
    let dash = get(&b, "/portal/dashboard", Some(&cookie)).await;
    assert_eq!(dash.status, 200);
    let csrf = hidden(&dash.body, "csrf");
    let nonce = hidden(&dash.body, "nonce");
    for form in [
        format!("name=k&nonce={nonce}"),
        format!("csrf=&name=k&nonce={nonce}"),
        format!("csrf={}x&name=k&nonce={nonce}", &csrf[..csrf.len() - 1]),
    ] {
        let p = post_form(&b, "/portal/keys", &cookie, &form).await;
        assert_eq!(p.status, 403, "{form}: {}", p.body);
        assert!(
            p.body.contains("without a valid security token"),
            "{}",
            p.body
        );
        assert!(p.headers[CONTENT_TYPE]
            .to_str()
            .unwrap_or("")
            .starts_with("text/html"));
    }
    assert!(
        user_keys(&b, "alice").await.is_empty(),
        "a refused form created a key"
    );
    // Another session's token does not work either.
    let other = sign_in(&b, &handoff(&b, "alice").await).await;
    let p = post_form(
        &b,
        "/portal/keys",
        &other,
        &format!("csrf={csrf}&name=k&nonce={nonce}"),
    )
    .await;
    assert_eq!(p.status, 403);
    // Logout is a form too.
    assert_eq!(
        post_form(&b, "/portal/logout", &cookie, "").await.status,
        403
    );
    // With the token the key is made, and its secret is in this answer only.
    let p = post_form(
        &b,
        "/portal/keys",
        &cookie,
        &format!("csrf={csrf}&name=Mine&nonce={nonce}"),
    )
    .await;
    assert_eq!(p.status, 200, "{}", p.body);
    let secret = p
        .body
        .split(r#"id="secret-value">"#)
        .nth(1)
        .and_then(|s| s.split('<').next())
        .expect("secret shown");
    assert!(secret.starts_with("cli_free_"), "{secret}");
    assert_eq!(user_keys(&b, "alice").await.len(), 1);
    let again = get(&b, "/portal/dashboard", Some(&cookie)).await;
    assert!(
        !again.body.contains(secret),
        "the secret is shown only once"
    );
    // The same form again (a reload of the answer) creates nothing.
    let p = post_form(
        &b,
        "/portal/keys",
        &cookie,
        &format!("csrf={csrf}&name=Mine&nonce={nonce}"),
    )
    .await;
    assert_eq!(p.status, 303);
    assert_eq!(p.headers[LOCATION], "/portal/dashboard?notice=resubmitted");
    assert_eq!(user_keys(&b, "alice").await.len(), 1);
}

#[tokio::test]
async fn expired_used_and_forged_handoff_links_are_refused() {
    let b = start(&[]);
    let (st, v) = service(
        &b,
        "/portal/api/handoff",
        json!({"user_id": "bob", "ttl_seconds": 60}),
    )
    .await;
    assert_eq!(st, 200);
    let link = v["path"].as_str().expect("path").to_string();
    let (st, _) = service(&b, "/internal/test/clock", json!({"advance_seconds": 61})).await;
    assert_eq!(st, 200);
    let p = get(&b, &link, None).await;
    assert_eq!(p.status, 401);
    assert!(
        p.body.contains("This sign-in link has expired"),
        "{}",
        p.body
    );
    assert!(
        p.headers.get(SET_COOKIE).is_none(),
        "no session for an expired link"
    );

    let link = handoff(&b, "bob").await;
    assert_eq!(get(&b, &link, None).await.status, 303);
    let p = get(&b, &link, None).await;
    assert_eq!(p.status, 401);
    assert!(p.body.contains("already been used"), "{}", p.body);

    // A token for bob with another user id under bob's signature.
    let token = link.split("token=").nth(1).expect("token");
    let (claims, sig) = token.split_once('.').expect("two parts");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let text = String::from_utf8(b64.decode(claims).expect("b64")).expect("utf8");
    let forged = b64.encode(text.replace("\"bob\"", "\"mallory\""));
    let p = get(&b, &format!("/portal/login?token={forged}.{sig}"), None).await;
    assert_eq!(p.status, 401);
    assert!(p.body.contains("not valid"), "{}", p.body);
    assert_eq!(get(&b, "/portal/login", None).await.status, 400);

    // Minting links needs the service token.
    let r = http()
        .post(format!("{}/portal/api/handoff", b.url))
        .json(&json!({"user_id": "x"}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 401);
    let r = http()
        .post(format!("{}/portal/api/operator-handoff", b.url))
        .bearer_auth("wrong-token-0123456789")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 403);
    let (st, v) = service(
        &b,
        "/portal/api/handoff",
        json!({"user_id": "x", "ttl_seconds": 7200}),
    )
    .await;
    assert_eq!(st, 400, "{v}");
}

#[tokio::test]
async fn another_customers_key_and_payment_are_refused() {
    let b = start(&[]);
    let (st, bobs) = service(
        &b,
        "/api/marketplace/keys/generate",
        json!({"user_id": "bob"}),
    )
    .await;
    assert_eq!(st, 200);
    let bob_key = bobs["key_id"].as_str().expect("key_id").to_string();
    let (st, pay) = service(
        &b,
        "/billing/create",
        json!({"user_id": "bob", "plan": "pro", "cycle": "monthly", "method": "sepa"}),
    )
    .await;
    assert_eq!(st, 200, "{pay}");
    let bob_payment = pay["payment_id"].as_str().expect("payment_id").to_string();

    let alice = sign_in(&b, &handoff(&b, "alice").await).await;
    let dash = get(&b, "/portal/dashboard", Some(&alice)).await;
    assert!(!dash.body.contains(&bob_key));
    let csrf = hidden(&dash.body, "csrf");
    let nonce = hidden(&dash.body, "nonce");
    for action in ["revoke", "rotate"] {
        let p = post_form(
            &b,
            &format!("/portal/keys/{bob_key}/{action}"),
            &alice,
            &format!("csrf={csrf}&nonce={nonce}"),
        )
        .await;
        assert_eq!(p.status, 404, "{action}: {}", p.body);
        assert!(
            p.body
                .contains(&format!("There is no key {bob_key} in your account")),
            "{}",
            p.body
        );
    }
    let keys = user_keys(&b, "bob").await;
    assert_eq!(keys[0]["active"], true, "bob's key is untouched");
    let p = get(&b, &format!("/portal/payments/{bob_payment}"), Some(&alice)).await;
    assert_eq!(p.status, 404);
    assert!(p.body.contains("There is no payment"), "{}", p.body);
    let reference = pay["instructions"]["reference"]
        .as_str()
        .expect("reference");
    assert!(!p.body.contains(reference), "bob's reference is not shown");
    // A customer is not the operator.
    let p = get(&b, "/portal/operator", Some(&alice)).await;
    assert_eq!(p.status, 403);
    assert!(p.body.contains("This page is for the operator"));
    let p = post_form(
        &b,
        &format!("/portal/operator/payments/{bob_payment}/confirm"),
        &alice,
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(p.status, 403);
    let r = http()
        .get(format!(
            "{}/api/v1/billing/subscriptions?user_id=bob",
            b.url
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("request");
    let v: Value = r.json().await.expect("json");
    assert_eq!(
        v["plan"], "free",
        "the refused confirmation changed nothing"
    );
}

#[tokio::test]
async fn cookies_csp_and_no_token_after_the_redirect() {
    let b = start(&[]);
    let link = handoff(&b, "carol").await;
    let p = get(&b, &link, None).await;
    assert_eq!(p.status, 303);
    assert_eq!(
        p.headers[LOCATION], "/portal/dashboard",
        "the token is not carried on"
    );
    let set = p.headers[SET_COOKIE].to_str().expect("ascii");
    assert!(set.starts_with("tg_portal="));
    for attr in [
        "; HttpOnly",
        "; SameSite=Lax",
        "; Path=/portal",
        "; Max-Age=28800",
    ] {
        assert!(set.contains(attr), "{attr} missing in {set}");
    }
    assert!(
        !set.contains("Secure"),
        "plain http on loopback: no Secure ({set})"
    );
    // Behind a TLS-terminating proxy the cookie is Secure.
    let r = http()
        .get(format!("{}{}", b.url, handoff(&b, "carol").await))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .expect("request");
    assert!(r.headers()[SET_COOKIE]
        .to_str()
        .expect("ascii")
        .ends_with("; Secure"));

    let cookie = set.split(';').next().expect("cookie");
    let dash = get(&b, "/portal/dashboard", Some(cookie)).await;
    let pricing = get(&b, "/portal/pricing", None).await;
    let refused = get(&b, "/portal/dashboard", None).await;
    for (what, page) in [
        ("dashboard", &dash),
        ("pricing", &pricing),
        ("refusal", &refused),
    ] {
        assert_eq!(page.headers["content-security-policy"], CSP, "{what}");
        assert_eq!(page.headers["x-content-type-options"], "nosniff", "{what}");
        assert_eq!(page.headers["x-frame-options"], "DENY", "{what}");
        assert_eq!(page.headers["referrer-policy"], "no-referrer", "{what}");
        assert_eq!(page.headers["cache-control"], "no-store", "{what}");
        // No inline script or style anywhere: the CSP would block it.
        assert!(
            !page.body.contains("<script>") && !page.body.contains("style="),
            "{what}"
        );
    }
    assert_eq!(refused.status, 401);
    assert!(refused.body.contains("You are not signed in"));
    assert!(get(&b, "/portal/assets/portal.js", None)
        .await
        .body
        .contains("data-copy"));
}

#[tokio::test]
async fn sessions_expire_on_the_server_and_end_at_sign_out() {
    let b = start(&[]);
    let cookie = sign_in(&b, &handoff(&b, "dave").await).await;
    assert_eq!(
        get(&b, "/portal/dashboard", Some(&cookie)).await.status,
        200
    );
    // 31 idle minutes: the session is over even though the browser would still send the cookie.
    let (st, _) = service(
        &b,
        "/internal/test/clock",
        json!({"advance_seconds": 31 * 60}),
    )
    .await;
    assert_eq!(st, 200);
    let p = get(&b, "/portal/dashboard", Some(&cookie)).await;
    assert_eq!(p.status, 401);
    assert!(
        p.body.contains("Your portal session has ended"),
        "{}",
        p.body
    );

    let cookie = sign_in(&b, &handoff(&b, "dave").await).await;
    let dash = get(&b, "/portal/dashboard", Some(&cookie)).await;
    let csrf = hidden(&dash.body, "csrf");
    let p = post_form(&b, "/portal/logout", &cookie, &format!("csrf={csrf}")).await;
    assert_eq!(p.status, 303);
    assert!(p.headers[SET_COOKIE]
        .to_str()
        .unwrap_or("")
        .contains("Max-Age=0"));
    assert_eq!(
        get(&b, "/portal/dashboard", Some(&cookie)).await.status,
        401,
        "the old cookie is dead"
    );

    // The operator's session is shorter: 15 idle minutes.
    let (_, v) = service(&b, "/portal/api/operator-handoff", json!({})).await;
    let op = sign_in(&b, v["path"].as_str().expect("path")).await;
    assert_eq!(get(&b, "/portal/operator", Some(&op)).await.status, 200);
    service(
        &b,
        "/internal/test/clock",
        json!({"advance_seconds": 15 * 60}),
    )
    .await;
    assert_eq!(get(&b, "/portal/operator", Some(&op)).await.status, 401);
}
