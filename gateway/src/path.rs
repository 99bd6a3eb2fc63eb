//! Request paths as the gateway routes and forwards them.
//!
//! A route's key check is only as good as the path it was chosen on: if the gateway matched
//! `/open/../v1/x` against a keyless `/open` route and forwarded it verbatim, an upstream that
//! resolves `..` (or `%2e%2e`, or `..;` as Tomcat does, or a `\` as IIS does) would serve the
//! keyed `/v1` API for free. So both request paths route on the normalised path (RFC 3986
//! §6.2.2–6.2.4: percent-encoded unreserved characters decoded, `.` and `..` segments resolved,
//! repeated `/` merged as nginx's `merge_slashes` does) and forward exactly that path, and a path
//! whose meaning an upstream could read differently is refused with 400:
//! - an encoded `/` or `\` (`%2F`, `%5C`), a literal `\`, an encoded NUL, malformed `%` escapes;
//! - a dot segment with parameters (`..;x`, `.;x`);
//! - a `..` that climbs above the root, or out of the prefix of the route the normalised path
//!   matched (`/open/../v1/x` is refused; `/v1/a/../b` is `/v1/b`).
//!
//! The common path (no `%`, `\`, `//` or `/.`) is checked in one pass and borrowed as is.

use std::borrow::Cow;

/// A normalised path.
#[derive(Debug, PartialEq, Eq)]
pub struct Normal<'a> {
    pub path: Cow<'a, str>,
    /// The fewest segments left in front of a `..` that was resolved (`None`: no `..`).
    pub climbed_to: Option<usize>,
}

impl Normal<'_> {
    /// Whether a resolved `..` went above the first `depth` segments (a route prefix's).
    pub fn climbs_out_of(&self, depth: usize) -> bool {
        self.climbed_to.is_some_and(|d| d < depth)
    }
}

/// Why a path is refused (the message the client sees with a 400).
pub type Refused = &'static str;

/// Number of segments of a route prefix (`/` → 0, `/v1` and `/v1/` → 1).
pub fn depth(prefix: &str) -> usize {
    prefix.split('/').filter(|s| !s.is_empty()).count()
}

/// The normalised form of `path` (the part of a request target before `?`).
pub fn normalize(path: &str) -> Result<Normal<'_>, Refused> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err("the request target must be an absolute path");
    }
    // One table load per byte: only `%`, `\\`, `/` and `.` need a closer look.
    let mut plain = true;
    for (i, &c) in b.iter().enumerate() {
        if !SPECIAL[usize::from(c)] {
            continue;
        }
        let after_slash = i > 0 && b[i - 1] == b'/';
        if c == b'%' || c == b'\\' || (after_slash && (c == b'/' || c == b'.')) {
            plain = false;
            break;
        }
    }
    if plain {
        return Ok(Normal {
            path: Cow::Borrowed(path),
            climbed_to: None,
        });
    }
    slow(path)
}

/// Bytes the plain-path scan stops at.
static SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    t[b'%' as usize] = true;
    t[b'\\' as usize] = true;
    t[b'/' as usize] = true;
    t[b'.' as usize] = true;
    t
};

fn hex(c: u8) -> Option<u8> {
    char::from(c)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

fn unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// One segment with unreserved escapes decoded (others kept, hex digits upper-cased).
fn decode_segment(raw: &str, out: &mut String) -> Result<(), Refused> {
    let b = raw.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\\' {
            return Err("a backslash is not allowed in the path");
        }
        if c != b'%' {
            // `raw` is a `str`, so pushing it back char by char keeps UTF-8 intact.
            let ch_len = raw[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&raw[i..i + ch_len]);
            i += ch_len;
            continue;
        }
        let (Some(h), Some(l)) = (
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) else {
            return Err("malformed percent-encoding in the path");
        };
        let v = h * 16 + l;
        match v {
            b'/' | b'\\' => return Err("an encoded '/' or '\\' is not allowed in the path"),
            0 => return Err("an encoded NUL is not allowed in the path"),
            v if unreserved(v) => out.push(char::from(v)),
            _ => {
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF"[usize::from(h)]));
                out.push(char::from(b"0123456789ABCDEF"[usize::from(l)]));
            }
        }
        i += 3;
    }
    Ok(())
}

fn slow(path: &str) -> Result<Normal<'static>, Refused> {
    // Segments kept so far, as ranges of `out` (after its leading '/').
    let mut out = String::with_capacity(path.len());
    let mut ends: Vec<usize> = Vec::new();
    let mut climbed_to: Option<usize> = None;
    let mut seg = String::new();
    let mut trailing = false;
    for raw in path[1..].split('/') {
        seg.clear();
        decode_segment(raw, &mut seg)?;
        let name = seg.split(';').next().unwrap_or("");
        let dot = name == "." || name == "..";
        if dot && name.len() != seg.len() {
            return Err("a dot segment with parameters ('..;') is not allowed in the path");
        }
        trailing = seg.is_empty() || dot;
        if seg.is_empty() || seg == "." {
            continue;
        }
        if seg == ".." {
            if ends.pop().is_none() {
                return Err("the path climbs above the root with '..'");
            }
            out.truncate(ends.last().copied().unwrap_or(0));
            climbed_to = Some(climbed_to.map_or(ends.len(), |d| d.min(ends.len())));
            continue;
        }
        out.push('/');
        out.push_str(&seg);
        ends.push(out.len());
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    Ok(Normal {
        path: Cow::Owned(out),
        climbed_to,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<(String, Option<usize>), Refused> {
        normalize(p).map(|n| (n.path.into_owned(), n.climbed_to))
    }

    #[test]
    fn plain_paths_are_borrowed() {
        for p in ["/", "/v1/x", "/v1/x/", "/a.b/c.", "/v1/x;y"] {
            let n = normalize(p).unwrap_or_else(|e| panic!("{p}: {e}"));
            assert!(matches!(n.path, Cow::Borrowed(_)), "{p}");
            assert_eq!(n.climbed_to, None);
        }
    }

    #[test]
    fn dots_and_slashes_resolve() {
        assert_eq!(norm("/v1/a/../b"), Ok(("/v1/b".into(), Some(1))));
        assert_eq!(norm("/open/a/./b//c"), Ok(("/open/a/b/c".into(), None)));
        assert_eq!(norm("/open/../v1/x"), Ok(("/v1/x".into(), Some(0))));
        assert_eq!(norm("/open//../v1/x"), Ok(("/v1/x".into(), Some(0))));
        assert_eq!(norm("/open/%2e%2e/v1/x"), Ok(("/v1/x".into(), Some(0))));
        assert_eq!(norm("/open/.%2E/v1/x"), Ok(("/v1/x".into(), Some(0))));
        assert_eq!(norm("/a/b/.."), Ok(("/a/".into(), Some(1))));
        assert_eq!(norm("/a/."), Ok(("/a/".into(), None)));
        assert_eq!(norm("//"), Ok(("/".into(), None)));
        assert_eq!(norm("/.well-known/x"), Ok(("/.well-known/x".into(), None)));
        assert_eq!(norm("/%76%31/x"), Ok(("/v1/x".into(), None)));
        assert_eq!(norm("/a%3fb/%c3%a9"), Ok(("/a%3Fb/%C3%A9".into(), None)));
        assert_eq!(norm("/é/./x"), Ok(("/é/x".into(), None)));
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for p in [
            "/open%2f..%2fv1/x",
            "/open/..%2Fv1/x",
            "/open/..%5cv1/x",
            "/open/..\\v1/x",
            "/open/..;/v1/x",
            "/open/.;x/v1",
            "/../v1/x",
            "/a/../../x",
            "/a/%zz",
            "/a/%2",
            "/a/%00",
            "*",
            "v1/x",
        ] {
            assert!(normalize(p).is_err(), "{p} should be refused");
        }
    }

    #[test]
    fn climbing_out_of_a_prefix() {
        let n = normalize("/open/../v1/x").unwrap_or_else(|e| panic!("{e}"));
        assert!(n.climbs_out_of(depth("/v1")));
        let n = normalize("/v1/a/../b").unwrap_or_else(|e| panic!("{e}"));
        assert!(!n.climbs_out_of(depth("/v1/")));
        assert!(n.climbs_out_of(depth("/v1/a")));
        assert!(!n.climbs_out_of(depth("/")));
        assert_eq!(depth("/"), 0);
        assert_eq!(depth("/v1/users"), 2);
    }
}
