//! What the gateway tells an upstream about the client: `X-Forwarded-For`,
//! `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded` (RFC 7239) on every forwarded
//! request, on both request paths.
//!
//! A client's own values are believed only when its connection comes from an address in
//! `[gateway] trusted_proxies` (a load balancer in front of the gateway): then the gateway appends
//! its peer to the lists it received (`X-Forwarded-For`, `Forwarded`) and keeps the
//! `X-Forwarded-Proto` / `X-Forwarded-Host` it was given. From any other peer, client-sent
//! values are dropped and replaced, so a client cannot make an upstream believe it comes from
//! another address or host. `X-Real-IP` from an untrusted peer is dropped as well (the gateway
//! does not set it).
//!
//! The per-connection part (the peer's address as text, whether it is trusted) is worked out
//! once per connection in [`Peer::new`]; per request, [`emit`] writes four headers through a
//! [`Sink`], so the fast lane writes them straight into its request bytes.

use std::net::{IpAddr, SocketAddr};

/// Request headers that carry forwarding information, lower case.
const NAMES: [&[u8]; 5] = [
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"forwarded",
    b"x-real-ip",
];

/// Whether `name` is a forwarding header the gateway sets or drops, in any case and with `_`
/// for `-` (CGI-style upstreams read `X_Forwarded_For` as `X-Forwarded-For`).
pub fn is_forwarding(name: &[u8]) -> bool {
    NAMES.iter().any(|n| crate::headers::same_name(name, n))
}

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let bad = || format!("{text:?} is not an IP address or a CIDR block like 10.0.0.0/8");
        let (addr, bits) = match text.trim().split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (text.trim(), None),
        };
        let net: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) if !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit()) => {
                b.parse::<u8>().ok().filter(|n| *n <= max).ok_or_else(bad)?
            }
            Some(_) => return Err(bad()),
        };
        Ok(Cidr {
            net: canonical(net),
            bits,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what a dual-stack listener reports) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = usize::from(bits / 8);
    let rest = bits % 8;
    if a[..full] != b[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[full] & mask) == (b[full] & mask)
}

/// `[gateway] trusted_proxies`: peers whose forwarding headers are believed.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    pub fn new(blocks: Vec<Cidr>) -> TrustedProxies {
        TrustedProxies(blocks)
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }
}

/// One client connection as upstreams are told about it.
#[derive(Clone, Debug)]
pub struct Peer {
    trusted: bool,
    proto: &'static [u8],
    /// The address for `X-Forwarded-For`: `192.0.2.1`, `2001:db8::1`.
    addr: String,
    /// The `for=` parameter: `for=192.0.2.1`, `for="[2001:db8::1]"`.
    for_param: String,
}

impl Peer {
    /// `https` is whether the client reached the gateway over TLS.
    pub fn new(peer: SocketAddr, trusted: &TrustedProxies, https: bool) -> Peer {
        let ip = canonical(peer.ip());
        let addr = ip.to_string();
        let for_param = match ip {
            IpAddr::V4(_) => format!("for={addr}"),
            IpAddr::V6(_) => format!("for=\"[{addr}]\""),
        };
        Peer {
            trusted: trusted.trusts(ip),
            proto: if https { b"https" } else { b"http" },
            addr,
            for_param,
        }
    }
}

/// Where [`emit`] writes a header: `start` its name, `push` the value in pieces, `finish`.
pub trait Sink {
    fn start(&mut self, name: &'static [u8]);
    fn push(&mut self, bytes: &[u8]);
    fn finish(&mut self);
}

/// Whether `host` can go into `Forwarded: host="…"` as a quoted string: visible ASCII without
/// `"` and `\` (a Host header that is not is left out rather than escaped).
fn quotable(host: &[u8]) -> bool {
    !host.is_empty()
        && host
            .iter()
            .all(|&c| c.is_ascii_graphic() && c != b'"' && c != b'\\')
}

/// Writes the four forwarding headers for one request from `peer`. `host` is the `Host` (or
/// h2 `:authority`) the client sent; `sent(name)` lists the client's values of a (lower-case)
/// header, consulted only for a trusted peer.
pub fn emit<'v, I>(
    peer: &Peer,
    host: Option<&[u8]>,
    sent: impl Fn(&'static [u8]) -> I,
    sink: &mut impl Sink,
) where
    I: Iterator<Item = &'v [u8]>,
{
    let host = host.map(<[u8]>::trim_ascii).filter(|h| !h.is_empty());
    let trusted = |name| peer.trusted.then(|| sent(name));
    let first = |name| {
        trusted(name)?
            .map(<[u8]>::trim_ascii)
            .find(|v| !v.is_empty())
    };
    list(
        sink,
        b"x-forwarded-for",
        trusted(b"x-forwarded-for"),
        &[peer.addr.as_bytes()],
    );
    sink.start(b"x-forwarded-proto");
    sink.push(first(b"x-forwarded-proto").unwrap_or(peer.proto));
    sink.finish();
    if let Some(h) = first(b"x-forwarded-host").or(host) {
        sink.start(b"x-forwarded-host");
        sink.push(h);
        sink.finish();
    }
    let this_hop: &[&[u8]] = match host.filter(|h| quotable(h)) {
        Some(h) => &[
            peer.for_param.as_bytes(),
            b";proto=",
            peer.proto,
            b";host=\"",
            h,
            b"\"",
        ],
        None => &[peer.for_param.as_bytes(), b";proto=", peer.proto],
    };
    list(sink, b"forwarded", trusted(b"forwarded"), this_hop);
    // Not set by the gateway; a trusted peer's is passed on.
    if let Some(v) = first(b"x-real-ip") {
        sink.start(b"x-real-ip");
        sink.push(v);
        sink.finish();
    }
}

/// A list header: the values a trusted peer `sent`, then this hop's `own` element.
fn list<'v>(
    sink: &mut impl Sink,
    name: &'static [u8],
    sent: Option<impl Iterator<Item = &'v [u8]>>,
    own: &[&[u8]],
) {
    sink.start(name);
    for v in sent.into_iter().flatten().map(<[u8]>::trim_ascii) {
        if !v.is_empty() {
            sink.push(v);
            sink.push(b", ");
        }
    }
    for part in own {
        sink.push(part);
    }
    sink.finish();
}

/// A [`Sink`] writing HTTP/1.1 header lines into a request being built.
pub struct Lines<'o>(pub &'o mut Vec<u8>);

impl Sink for Lines<'_> {
    fn start(&mut self, name: &'static [u8]) {
        self.0.extend_from_slice(name);
        self.0.extend_from_slice(b": ");
    }
    fn push(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
    fn finish(&mut self) {
        self.0.extend_from_slice(b"\r\n");
    }
}

/// A [`Sink`] setting headers in a `HeaderMap` (replacing what was there).
pub struct Map<'m> {
    pub headers: &'m mut http::HeaderMap,
    name: &'static [u8],
    value: Vec<u8>,
}

impl<'m> Map<'m> {
    pub fn new(headers: &'m mut http::HeaderMap) -> Map<'m> {
        Map {
            headers,
            name: b"",
            value: Vec::new(),
        }
    }
}

impl Sink for Map<'_> {
    fn start(&mut self, name: &'static [u8]) {
        self.name = name;
        self.value.clear();
    }
    fn push(&mut self, bytes: &[u8]) {
        self.value.extend_from_slice(bytes);
    }
    fn finish(&mut self) {
        let name = http::HeaderName::from_bytes(self.name);
        let value = http::HeaderValue::from_bytes(&self.value);
        if let (Ok(n), Ok(v)) = (name, value) {
            self.headers.insert(n, v);
        }
    }
}

/// Removes client-sent forwarding headers from `headers` (all of them: [`emit`] then writes
/// the ones it sets, from the values taken here for a trusted peer).
pub fn take_sent(headers: &mut http::HeaderMap) -> Vec<(&'static [u8], Vec<u8>)> {
    let names: Vec<http::HeaderName> = headers
        .keys()
        .filter(|n| is_forwarding(n.as_str().as_bytes()))
        .cloned()
        .collect();
    let mut sent = Vec::new();
    for n in names {
        // Only the standard spelling is believed, even from a trusted peer.
        let standard = NAMES.iter().find(|w| **w == n.as_str().as_bytes());
        if let http::header::Entry::Occupied(e) = headers.entry(n) {
            for v in e.remove_entry_mult().1 {
                if let Some(w) = standard {
                    sent.push((*w, v.as_bytes().to_vec()));
                }
            }
        }
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Text(String);
    impl Sink for Text {
        fn start(&mut self, name: &'static [u8]) {
            self.0.push_str(&String::from_utf8_lossy(name));
            self.0.push_str(": ");
        }
        fn push(&mut self, bytes: &[u8]) {
            self.0.push_str(&String::from_utf8_lossy(bytes));
        }
        fn finish(&mut self) {
            self.0.push('\n');
        }
    }

    fn run(
        peer: &str,
        trusted: &[&str],
        https: bool,
        host: Option<&str>,
        sent: &[(&str, &str)],
    ) -> String {
        let blocks = trusted
            .iter()
            .map(|t| Cidr::parse(t))
            .collect::<Result<Vec<_>, _>>();
        let t = TrustedProxies::new(blocks.unwrap_or_default());
        let p = Peer::new(
            peer.parse().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            &t,
            https,
        );
        let mut out = Text(String::new());
        emit(
            &p,
            host.map(str::as_bytes),
            |name| {
                sent.iter()
                    .filter(move |(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.as_bytes())
            },
            &mut out,
        );
        out.0
    }

    #[test]
    fn blocks_parse_and_match() {
        let c = Cidr::parse("10.1.0.0/16").expect("cidr");
        assert!(c.contains("10.1.200.3".parse().expect("ip")));
        assert!(!c.contains("10.2.0.1".parse().expect("ip")));
        assert!(c.contains("::ffff:10.1.0.9".parse().expect("ip")));
        let one = Cidr::parse("192.0.2.7").expect("ip");
        assert!(one.contains("192.0.2.7".parse().expect("ip")));
        assert!(!one.contains("192.0.2.8".parse().expect("ip")));
        let v6 = Cidr::parse("2001:db8::/33").expect("v6");
        assert!(v6.contains("2001:db8:7fff::1".parse().expect("ip")));
        assert!(!v6.contains("2001:db8:8000::1".parse().expect("ip")));
        assert!(Cidr::parse("0.0.0.0/0")
            .expect("all")
            .contains("8.8.8.8".parse().expect("ip")));
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "x",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "::/129",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_untrusted_peer_cannot_forge() {
        let got = run(
            "198.51.100.9:5000",
            &[],
            false,
            Some("api.example.com"),
            &[
                ("x-forwarded-for", "1.2.3.4"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "evil"),
                ("forwarded", "for=1.2.3.4"),
            ],
        );
        assert_eq!(
            got,
            "x-forwarded-for: 198.51.100.9\nx-forwarded-proto: http\nx-forwarded-host: api.example.com\n\
             forwarded: for=198.51.100.9;proto=http;host=\"api.example.com\"\n"
        );
    }

    #[test]
    fn a_trusted_peer_is_appended_to() {
        let got = run(
            "10.0.0.5:5000",
            &["10.0.0.0/8"],
            true,
            Some("api.example.com:8443"),
            &[
                ("X-Forwarded-For", "203.0.113.1, 10.9.9.9"),
                ("x-forwarded-for", "10.1.1.1"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "public.example.com"),
                ("forwarded", "for=203.0.113.1;proto=https"),
            ],
        );
        assert_eq!(
            got,
            "x-forwarded-for: 203.0.113.1, 10.9.9.9, 10.1.1.1, 10.0.0.5\nx-forwarded-proto: https\n\
             x-forwarded-host: public.example.com\n\
             forwarded: for=203.0.113.1;proto=https, for=10.0.0.5;proto=https;host=\"api.example.com:8443\"\n"
        );
    }

    #[test]
    fn ipv6_and_hostless() {
        let got = run("[2001:db8::1]:443", &[], false, None, &[]);
        assert_eq!(
            got,
            "x-forwarded-for: 2001:db8::1\nx-forwarded-proto: http\nforwarded: for=\"[2001:db8::1]\";proto=http\n"
        );
        let mapped = run(
            "[::ffff:192.0.2.1]:1",
            &["192.0.2.0/24"],
            false,
            Some("h\"x"),
            &[],
        );
        assert_eq!(
            mapped,
            "x-forwarded-for: 192.0.2.1\nx-forwarded-proto: http\nx-forwarded-host: h\"x\nforwarded: for=192.0.2.1;proto=http\n"
        );
    }

    #[test]
    fn is_forwarding_any_case() {
        assert!(is_forwarding(b"X-Forwarded-For"));
        assert!(is_forwarding(b"FORWARDED"));
        assert!(is_forwarding(b"x-real-ip"));
        assert!(is_forwarding(b"X_Forwarded_For"));
        assert!(!is_forwarding(b"x-forwarded"));
    }
}
