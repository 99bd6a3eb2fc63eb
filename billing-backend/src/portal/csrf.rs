//! Forms: `application/x-www-form-urlencoded` parsing and the CSRF check every portal form
//! passes before anything changes. The token is a synchronizer token: 128 random bits kept in the
//! server-side session and rendered into each form; a submitted form must carry it, compared in
//! constant time (on SHA-256 digests, so length differences leak nothing either).

use super::html::PortalError;
use crate::session::SessionView;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use subtle::ConstantTimeEq;

/// A parsed form body. Repeated fields keep their first value.
pub struct Form(HashMap<String, String>);

impl Form {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes one urlencoded component (`+` is a space, `%XX` a byte); None when the result is
/// not UTF-8 or an escape is malformed.
fn decode(part: &str) -> Option<String> {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = hex_val(*bytes.get(i + 1)?)?;
                let lo = hex_val(*bytes.get(i + 2)?)?;
                out.push(hi * 16 + lo);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Parses `a=1&b=two+words`.
pub fn parse(body: &[u8]) -> Result<Form, PortalError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| PortalError::bad("the form is not valid UTF-8 text"))?;
    let mut map = HashMap::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(k), Some(v)) = (decode(k), decode(v)) else {
            return Err(PortalError::bad("the form is not validly encoded"));
        };
        map.entry(k).or_insert(v);
    }
    Ok(Form(map))
}

/// Whether `presented` equals the session's token, in constant time.
pub fn token_matches(expected: &str, presented: &str) -> bool {
    let a = Sha256::digest(expected.as_bytes());
    let b = Sha256::digest(presented.as_bytes());
    bool::from(a.ct_eq(&b))
}

/// Parses a form and refuses it (403, nothing changed) unless it carries the session's token.
pub fn checked_form(session: &SessionView, body: &[u8]) -> Result<Form, PortalError> {
    let form = parse(body)?;
    match form.get("csrf") {
        Some(t) if token_matches(&session.csrf, t) => Ok(form),
        _ => Err(PortalError::csrf()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Role;

    fn session() -> SessionView {
        SessionView {
            digest: "d".into(),
            role: Role::Customer("u".into()),
            csrf: "0123456789abcdef".into(),
            expires_at: 10,
        }
    }

    #[test]
    fn parses_urlencoded_forms() {
        let f = parse(b"name=My+key%21&csrf=abc&empty=&name=second")
            .unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(f.get("name"), Some("My key!"));
        assert_eq!(f.get("csrf"), Some("abc"));
        assert_eq!(f.get("empty"), Some(""));
        assert_eq!(f.get("missing"), None);
        assert_eq!(
            parse("n=%C3%A9t%C3%A9".as_bytes())
                .ok()
                .and_then(|f| f.get("n").map(str::to_string)),
            Some("été".to_string())
        );
        assert!(parse(b"a=%zz").is_err());
        assert!(parse(b"a=%4").is_err());
        assert!(parse(b"a=%ff").is_err(), "not UTF-8");
    }

    #[test]
    fn forms_without_the_sessions_token_are_refused() {
        let s = session();
        assert!(checked_form(&s, b"csrf=0123456789abcdef&name=x").is_ok());
        for body in [
            &b"name=x"[..],
            b"csrf=&name=x",
            b"csrf=0123456789abcdeF",
            b"csrf=0123456789abcdef0",
        ] {
            let e = checked_form(&s, body).err().map(|e| e.status.as_u16());
            assert_eq!(e, Some(403), "{}", String::from_utf8_lossy(body));
        }
    }
}
