//! `POST /api/marketplace/keys/validate`, answered by the gateway itself (not the backend: it is
//! part of the original module's HTTP contract and needs no service token) from the same
//! replica and quota state as proxied requests, counting one unit.
//!
//! `{api_key}` in the JSON body (or `X-API-Key`) → 200 `{valid:true, key_id, plan, usage_today,
//! daily_limit, remaining, rate_limit}` or 200 `{valid:false, code, error, retry_after?, reset_at?}`.

use crate::body::Body;
use crate::headers::{error_response, extract_key, json_response, KeySource};
use crate::metrics::Outcome;
use crate::phases::{Gateway, Refusal};
use crate::quota::Exceeded;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use tollgate_protocol::day::{day_index, format_day, next_midnight};

/// Largest body accepted on management-style endpoints: 64 KiB; a larger one is a 413 with a
/// precise message, never a 500.
const MAX_BODY: usize = 64 * 1024;

#[derive(Deserialize)]
struct ValidateRequest {
    #[serde(default)]
    api_key: Option<String>,
}

#[derive(Serialize)]
struct Valid<'a> {
    valid: bool,
    key_id: &'a str,
    plan: &'a str,
    usage_today: u64,
    daily_limit: u64,
    remaining: u64,
    rate_limit: u64,
}

#[derive(Serialize)]
struct Invalid<'a> {
    valid: bool,
    code: &'a str,
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reset_at: Option<String>,
}

fn invalid(
    code: &str,
    error: &str,
    retry_after: Option<u64>,
    reset_at: Option<String>,
) -> Response<Body> {
    let body = Invalid {
        valid: false,
        code,
        error,
        retry_after,
        reset_at,
    };
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&body).unwrap_or_default(),
    )
}

/// `2026-11-26T00:00:00Z` for a unix time.
fn rfc3339(unix: i64) -> String {
    let day = day_index(unix);
    let secs = unix - day * 86_400;
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        format_day(day),
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

pub async fn handle(gw: &Gateway, req: Request<Incoming>) -> Response<Body> {
    let m = &gw.own.validate;
    let header_key =
        extract_key(req.headers(), KeySource::ApiKeyHeader).map(|(k, _)| k.to_string());
    let key = match header_key {
        Some(k) => Some(k),
        None => {
            let bytes = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    m.count(Outcome::PayloadTooLarge, 413);
                    return error_response(
                        Outcome::PayloadTooLarge,
                        "request body is larger than 64 KiB",
                    );
                }
            };
            if bytes.is_empty() {
                None
            } else {
                match serde_json::from_slice::<ValidateRequest>(&bytes) {
                    Ok(r) => r.api_key,
                    Err(e) => {
                        m.count(Outcome::BadRequest, 400);
                        let msg =
                            format!("request body must be JSON like {{\"api_key\": \"...\"}}: {e}");
                        let body =
                            tollgate_protocol::error::ErrorBody::new("invalid_json", msg).to_json();
                        let mut resp = json_response(StatusCode::BAD_REQUEST, body.into_bytes());
                        *resp.status_mut() = StatusCode::BAD_REQUEST;
                        return resp;
                    }
                }
            }
        }
    };
    let Some(key) = key else {
        m.count_validate(Outcome::MissingKey);
        return invalid(
            "missing_key",
            "an API key is required (api_key or X-API-Key)",
            None,
            None,
        );
    };
    let now_ms = gw.clock.now_ms();
    let entry = match gw.lookup(&key, now_ms.div_euclid(1000)) {
        Ok(e) => e,
        Err(Refusal { outcome, message }) => {
            m.count_validate(outcome);
            return invalid(outcome.code(), message, None, None);
        }
    };
    match gw.reserve(&entry, 1).await {
        Ok((reservation, usage)) => {
            gw.record_usage(&reservation);
            m.count(Outcome::Ok, 200);
            let body = Valid {
                valid: true,
                key_id: entry.id_header.to_str().unwrap_or(""),
                plan: &entry.tier.plan,
                usage_today: usage.day_used,
                daily_limit: entry.tier.limits.per_day,
                remaining: usage.day_remaining,
                rate_limit: entry.tier.limits.per_minute,
            };
            json_response(
                StatusCode::OK,
                serde_json::to_vec(&body).unwrap_or_default(),
            )
        }
        Err(Ok(limited)) => {
            let now = now_ms.div_euclid(1000);
            let (outcome, error, reset) = match limited.exceeded {
                Exceeded::Minute => (
                    Outcome::RateLimited,
                    "rate limit exceeded",
                    now.saturating_add(i64::try_from(limited.retry_after_secs).unwrap_or(0)),
                ),
                Exceeded::Day => (
                    Outcome::DailyLimitExceeded,
                    "daily limit exceeded",
                    next_midnight(now),
                ),
            };
            m.count_validate(outcome);
            invalid(
                outcome.code(),
                error,
                Some(limited.retry_after_secs),
                Some(rfc3339(reset)),
            )
        }
        Err(Err(refusal)) => {
            m.count(refusal.outcome, refusal.outcome.status());
            error_response(refusal.outcome, refusal.message)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_midnight() {
        assert_eq!(super::rfc3339(86_400), "1970-01-02T00:00:00Z");
        assert_eq!(super::rfc3339(86_400 + 3_723), "1970-01-02T01:02:03Z");
    }
}
