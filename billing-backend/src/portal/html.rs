//! HTML building blocks: escaping, the page layout, and [`PortalError`], the portal's error
//! type, which renders a friendly HTML page with the status the JSON API would use.
//!
//! Templates are plain Rust strings. Every value that did not come from this file goes through
//! [`esc`] (text and attribute values alike: it escapes `& < > " '`), so a user id, key name or
//! statement debtor can never become markup.

use crate::error::ApiError;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Thousands separators for counts shown to people: 5000 → "5,000".
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `2026-11-01 14:03 UTC` for a Unix time.
pub fn when(unix: i64) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// The signed-in party shown in the header, and the CSRF token for the logout form.
pub struct Header<'a> {
    pub who: &'a str,
    pub csrf: &'a str,
}

/// A whole page. `body` is already-escaped markup.
pub fn page(title: &str, header: Option<&Header<'_>>, body: &str) -> String {
    let nav = match header {
        Some(h) => format!(
            r#"<span class="who">Signed in as <strong>{who}</strong></span>
<form method="post" action="/portal/logout" class="inline"><input type="hidden" name="csrf" value="{csrf}"><button type="submit" class="link">Sign out</button></form>"#,
            who = esc(h.who),
            csrf = esc(h.csrf)
        ),
        None => String::new(),
    };
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{title} · tollgate</title>
<link rel="icon" href="/portal/assets/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/portal/assets/portal.css">
<script src="/portal/assets/portal.js" defer></script>
</head>
<body>
<header class="top"><a class="brand" href="/portal/pricing">tollgate</a><nav>{nav}</nav></header>
<main>
{body}
</main>
</body>
</html>
"#,
        title = esc(title),
    )
}

/// An HTML response with the portal's caching rule: pages may hold per-user data, so no cache.
pub fn html(status: StatusCode, markup: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        markup,
    )
        .into_response()
}

/// A refusal or failure, shown as a page with a title, a message and a way on.
#[derive(Debug)]
pub struct PortalError {
    pub status: StatusCode,
    pub title: &'static str,
    pub message: String,
}

impl PortalError {
    pub fn new(status: StatusCode, title: &'static str, message: impl Into<String>) -> Self {
        PortalError {
            status,
            title,
            message: message.into(),
        }
    }

    pub fn not_signed_in(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Not signed in", message)
    }

    pub fn csrf() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "Form refused",
            "This form was sent without a valid security token (CSRF protection), so nothing was \
             changed. Reload the page and submit the form again.",
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "Not found", message)
    }

    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Request refused", message)
    }
}

impl From<ApiError> for PortalError {
    fn from(e: ApiError) -> Self {
        if let ApiError::Internal(context) = &e {
            tracing::error!(%context, "portal: internal error");
        }
        let (status, _, message) = e.parts();
        let title = match status {
            StatusCode::BAD_REQUEST => "Request refused",
            StatusCode::PAYMENT_REQUIRED => "Subscription required",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::CONFLICT => "Not possible right now",
            StatusCode::SERVICE_UNAVAILABLE => "Not available",
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "Refused",
            _ => "Something went wrong",
        };
        PortalError {
            status,
            title,
            message,
        }
    }
}

impl From<crate::store::StoreError> for PortalError {
    fn from(e: crate::store::StoreError) -> Self {
        PortalError::from(ApiError::from(e))
    }
}

impl PortalError {
    /// The page's markup.
    pub fn markup(&self) -> String {
        let body = format!(
            r#"<section class="card error" data-status="{status}">
<h1>{title}</h1>
<p class="message">{message}</p>
<p><a href="/portal/dashboard">Back to your dashboard</a> · <a href="/portal/pricing">Pricing</a></p>
</section>"#,
            status = self.status.as_u16(),
            title = esc(self.title),
            message = esc(&self.message),
        );
        page(self.title, None, &body)
    }
}

impl IntoResponse for PortalError {
    fn into_response(self) -> Response {
        html(self.status, self.markup())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(esc("plain-id_1"), "plain-id_1");
    }

    #[test]
    fn counts_have_separators() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(5000), "5,000");
        assert_eq!(count(1_234_567), "1,234,567");
    }

    #[test]
    fn error_pages_escape_their_message() {
        let e = PortalError::bad("<img src=x onerror=alert(1)>");
        let markup = e.markup();
        assert!(markup.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(!markup.contains("<img"));
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            r.headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("text/html; charset=utf-8")
        );
    }
}
