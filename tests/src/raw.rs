//! Raw-bytes HTTP/1.x tools for the gateway's adversarial and differential tests
//! (`tests/gateway_adversarial.rs`, `tests/gateway_differential.rs`).
//!
//! A well-behaved HTTP client or server library cannot send a malformed request, answer a `HEAD`
//! with a body, or show which bytes exactly crossed a socket. These tools can:
//!
//! - [`RawUpstream`]: a TCP server on `127.0.0.1:0` (own thread and tokio runtime) that parses
//!   every request on every connection — head with `httparse`, body by `Content-Length` or
//!   chunked (decoded) — and **records** it ([`Recorded`]: raw head, method, target, headers in
//!   arrival order and case, decoded body, raw bytes, connection index). It answers by a per-test
//!   script, a closure from the recorded request to a list of [`Action`]s (write bytes, sleep,
//!   close, stall), so a test can play a hostile upstream. The default script is a JSON echo
//!   ([`echo_response`]). It also records what it could not parse ([`Malformed`]), requests
//!   whose body never completed ([`RawUpstream::partial_requests`]), and when the gateway closed
//!   each upstream connection ([`RawUpstream::closed_by_peer`]).
//! - [`RawClient`]: a client socket that sends arbitrary bytes and reads responses framed by
//!   `Content-Length`, chunked encoding or close (no body for `HEAD`, 1xx, 204, 304), and tells
//!   whether the gateway closed the connection ([`RawClient::closed_within`]).
//! - Small helpers: case-insensitive header lookup ([`header`]), the JSON `error.code` of a
//!   gateway error ([`error_code`]), a gateway started on one request path ([`lane_gateway`]).
//!
//! Everything here talks to 127.0.0.1 only, and every read has a deadline so a test never hangs.

use crate::gw::{Gateway, Key};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Most headers either side parses in one message (the gateway's limits are lower).
const MAX_HEADERS: usize = 512;
/// A head that has not ended within this many bytes is malformed.
const MAX_HEAD: usize = 1 << 20;

/// Headers as they arrived: name (original case) and value bytes, in order.
pub type HeaderList = Vec<(String, Vec<u8>)>;

// ---------------------------------------------------------------------------------------------
// Headers and framing.

/// The first value of `name` (case-insensitive).
pub fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

/// Every value of `name` (case-insensitive), in order.
pub fn header_all<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Vec<&'a [u8]> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
        .collect()
}

/// The first value of `name` as (lossy) text.
pub fn header_str(headers: &[(String, Vec<u8>)], name: &str) -> Option<String> {
    header(headers, name).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// `error.code` of a gateway error body (`{"detail":..,"error":{"code":..,"message":..}}`).
pub fn error_code(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v["error"]["code"].as_str().map(str::to_string)
}

/// How a message body ends (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304, or a request without length).
    None,
    Length(usize),
    Chunked,
    /// Until the sender closes (responses only).
    Close,
}

/// The comma-separated tokens of every `name` header, trimmed and lowercased.
fn tokens(headers: &[(String, Vec<u8>)], name: &str) -> Vec<String> {
    header_all(headers, name)
        .into_iter()
        .flat_map(|v| v.split(|&c| c == b','))
        .map(|t| String::from_utf8_lossy(t.trim_ascii()).to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The `Content-Length` of a message: `Ok(None)` when absent, `Err` when it is not one run of
/// ASCII digits or differs between copies.
fn content_length(headers: &[(String, Vec<u8>)]) -> Result<Option<usize>, String> {
    let mut length = None;
    for v in header_all(headers, "content-length") {
        for part in v.split(|&c| c == b',') {
            let t = part.trim_ascii();
            if t.is_empty() || !t.iter().all(u8::is_ascii_digit) {
                return Err(format!(
                    "bad Content-Length {:?}",
                    String::from_utf8_lossy(v)
                ));
            }
            let n: usize = std::str::from_utf8(t)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| "Content-Length too large".to_string())?;
            if length.is_some_and(|l| l != n) {
                return Err("two different Content-Length values".into());
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// How a request's body is framed, strictly: a request with both `Transfer-Encoding` and
/// `Content-Length`, a transfer coding other than a final `chunked`, or a bad length is an error
/// (a recording upstream must never see such a request from the gateway).
pub fn request_framing(headers: &[(String, Vec<u8>)]) -> Result<Framing, String> {
    let te = tokens(headers, "transfer-encoding");
    let cl = content_length(headers)?;
    if !te.is_empty() {
        if cl.is_some() {
            return Err("both Transfer-Encoding and Content-Length".into());
        }
        if te != ["chunked"] {
            return Err(format!("Transfer-Encoding {te:?}"));
        }
        return Ok(Framing::Chunked);
    }
    Ok(cl.map_or(Framing::None, Framing::Length))
}

/// How a response's body is framed; `to_head` when it answers a `HEAD`.
pub fn response_framing(
    status: u16,
    headers: &[(String, Vec<u8>)],
    to_head: bool,
) -> Result<Framing, String> {
    if to_head || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Framing::None);
    }
    let te = tokens(headers, "transfer-encoding");
    if !te.is_empty() {
        return Ok(if te.last().map(String::as_str) == Some("chunked") {
            Framing::Chunked
        } else {
            Framing::Close
        });
    }
    Ok(content_length(headers)?.map_or(Framing::Close, Framing::Length))
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// Decodes a chunked body at the start of `buf`: `Ok(Some((body, used)))` once it is complete
/// (last chunk and trailer section read), `Ok(None)` while more bytes are needed, `Err` when it
/// is malformed.
pub fn decode_chunked(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let (body, used, done) = chunked(buf, false)?;
    Ok(done.then_some((body, used)))
}

/// The data of a chunked body received so far (complete or not, malformed tail ignored).
pub fn chunked_so_far(buf: &[u8]) -> Vec<u8> {
    chunked(buf, true).map(|(b, _, _)| b).unwrap_or_default()
}

fn chunked(buf: &[u8], partial: bool) -> Result<(Vec<u8>, usize, bool), String> {
    let mut body = Vec::new();
    let mut i = 0;
    loop {
        let Some(eol) = find_crlf(&buf[i..]) else {
            if buf.len() - i > 1024 {
                return Err("chunk size line too long".into());
            }
            return Ok((body, i, false));
        };
        let line = &buf[i..i + eol];
        let size = line
            .split(|&c| c == b';')
            .next()
            .unwrap_or(b"")
            .trim_ascii();
        if size.is_empty() || size.len() > 15 || !size.iter().all(u8::is_ascii_hexdigit) {
            if partial {
                return Ok((body, i, false));
            }
            return Err(format!(
                "bad chunk size line {:?}",
                String::from_utf8_lossy(line)
            ));
        }
        let size = usize::from_str_radix(std::str::from_utf8(size).unwrap_or("0"), 16)
            .map_err(|e| e.to_string())?;
        let data = i + eol + 2;
        if size == 0 {
            let mut j = data;
            loop {
                let Some(e) = find_crlf(&buf[j..]) else {
                    return Ok((body, i, false));
                };
                if e == 0 {
                    return Ok((body, j + 2, true));
                }
                j += e + 2;
            }
        }
        if buf.len() < data + size + 2 {
            if partial {
                body.extend_from_slice(&buf[data.min(buf.len())..(data + size).min(buf.len())]);
            }
            return Ok((body, i, false));
        }
        if &buf[data + size..data + size + 2] != b"\r\n" {
            if partial {
                body.extend_from_slice(&buf[data..data + size]);
                return Ok((body, i, false));
            }
            return Err("chunk data not followed by CRLF".into());
        }
        body.extend_from_slice(&buf[data..data + size]);
        i = data + size + 2;
    }
}

/// A parsed request head.
#[derive(Clone, Debug)]
pub struct RequestHead {
    pub len: usize,
    pub method: String,
    pub target: String,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub headers: HeaderList,
}

/// Parses a request head at the start of `buf`; `Ok(None)` while incomplete.
pub fn parse_request_head(buf: &[u8]) -> Result<Option<RequestHead>, String> {
    let mut slots = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => Ok(Some(RequestHead {
            len,
            method: req.method.unwrap_or("").to_string(),
            target: req.path.unwrap_or("").to_string(),
            version: req.version.unwrap_or(1),
            headers: req
                .headers
                .iter()
                .map(|h| (h.name.to_string(), h.value.to_vec()))
                .collect(),
        })),
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => Ok(None),
        Ok(httparse::Status::Partial) => Err("head too long".into()),
        Err(e) => Err(format!("request head: {e}")),
    }
}

/// A parsed response head.
#[derive(Clone, Debug)]
pub struct ResponseHead {
    pub len: usize,
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub headers: HeaderList,
}

/// Parses a response head at the start of `buf`; `Ok(None)` while incomplete.
pub fn parse_response_head(buf: &[u8]) -> Result<Option<ResponseHead>, String> {
    let mut slots = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => Ok(Some(ResponseHead {
            len,
            version: format!("HTTP/1.{}", resp.version.unwrap_or(1)),
            status: resp.code.unwrap_or(0),
            reason: resp.reason.unwrap_or("").to_string(),
            headers: resp
                .headers
                .iter()
                .map(|h| (h.name.to_string(), h.value.to_vec()))
                .collect(),
        })),
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => Ok(None),
        Ok(httparse::Status::Partial) => Err("head too long".into()),
        Err(e) => Err(format!("response head: {e}")),
    }
}

// ---------------------------------------------------------------------------------------------
// The recording upstream.

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Position among all requests this upstream recorded (complete or partial).
    pub index: usize,
    /// Connection it came on (0 = the first connection accepted).
    pub conn: usize,
    /// Position on that connection (0 = the first request on it).
    pub on_conn: usize,
    pub method: String,
    pub target: String,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Headers in arrival order and case.
    pub headers: HeaderList,
    /// The head's bytes, up to and including the blank line.
    pub head: Vec<u8>,
    /// The body, chunked encoding removed.
    pub body: Vec<u8>,
    /// Head and body bytes exactly as received.
    pub raw: Vec<u8>,
    pub chunked: bool,
    /// False when the connection ended (or the body broke) before the body was complete.
    pub complete: bool,
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        header(&self.headers, name)
    }

    pub fn header_str(&self, name: &str) -> Option<String> {
        header_str(&self.headers, name)
    }

    pub fn header_all(&self, name: &str) -> Vec<&[u8]> {
        header_all(&self.headers, name)
    }

    /// Header names present, lowercased.
    pub fn names(&self) -> Vec<String> {
        self.headers
            .iter()
            .map(|(n, _)| n.to_ascii_lowercase())
            .collect()
    }

    /// The headers as `name: value` lines, for assertion messages.
    pub fn headers_text(&self) -> String {
        self.headers
            .iter()
            .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// One line for assertion messages.
    pub fn summary(&self) -> String {
        format!(
            "#{} conn {} {} {} ({} header(s), {} body byte(s){})",
            self.index,
            self.conn,
            self.method,
            self.target,
            self.headers.len(),
            self.body.len(),
            if self.complete { "" } else { ", incomplete" }
        )
    }
}

/// Bytes the upstream could not take as a request.
#[derive(Clone, Debug)]
pub struct Malformed {
    pub conn: usize,
    pub raw: Vec<u8>,
    pub reason: String,
}

/// A step of the upstream's answer to one request.
#[derive(Clone, Debug)]
pub enum Action {
    /// Write these bytes.
    Write(Vec<u8>),
    /// Wait (still noticing if the gateway closes the connection meanwhile).
    Sleep(Duration),
    /// Close the connection (after whatever was written before).
    Close,
    /// Keep the connection open writing nothing more, until the peer closes it or the
    /// upstream is dropped.
    Stall,
}

/// How the upstream answers a request.
pub type Script = Arc<dyn Fn(&Recorded) -> Vec<Action> + Send + Sync>;

#[derive(Clone, Debug)]
struct Conn {
    accepted_at: Instant,
    closed_by_peer: Option<Instant>,
}

#[derive(Default)]
struct State {
    requests: Vec<Recorded>,
    partial: Vec<Recorded>,
    malformed: Vec<Malformed>,
    conns: Vec<Conn>,
    answered: usize,
    next_index: usize,
}

struct Shared {
    state: Mutex<State>,
    script: Mutex<Script>,
    /// Bumped on every event (request, close, answer) so waiters wake.
    events: watch::Sender<u64>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.events.send_modify(|n| *n += 1);
    }

    fn closed(&self, conn: usize) {
        {
            let mut st = self.state();
            if let Some(c) = st.conns.get_mut(conn) {
                c.closed_by_peer.get_or_insert_with(Instant::now);
            }
        }
        self.bump();
    }
}

/// A scriptable, recording HTTP/1.x upstream (see the module doc).
pub struct RawUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The default answer: `200` with a JSON echo of the request, `Content-Length`, keep-alive
/// (no body bytes after the head when the request was `HEAD`).
///
/// `{"method", "target", "version", "headers": [[name, value], ...], "body", "conn", "index"}`.
pub fn echo_response(rec: &Recorded) -> Vec<u8> {
    let headers: Vec<Value> = rec
        .headers
        .iter()
        .map(|(n, v)| Value::from(vec![n.clone(), String::from_utf8_lossy(v).into_owned()]))
        .collect();
    let body = serde_json::json!({
        "method": rec.method,
        "target": rec.target,
        "version": format!("HTTP/1.{}", rec.version),
        "headers": headers,
        "body": String::from_utf8_lossy(&rec.body),
        "conn": rec.conn,
        "index": rec.index,
    })
    .to_string();
    let mut out = response(
        200,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    if rec.method == "HEAD" {
        out.truncate(out.len() - body.len());
    }
    out
}

/// The default script: [`echo_response`].
pub fn echo(rec: &Recorded) -> Vec<Action> {
    vec![Action::Write(echo_response(rec))]
}

/// An HTTP/1.1 response with `Content-Length` (and the status's usual reason phrase).
pub fn response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Whatever");
    let mut out = format!("HTTP/1.1 {status} {reason}\r\n").into_bytes();
    for (n, v) in headers {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

impl RawUpstream {
    /// An upstream answering every request with [`echo`].
    pub fn start() -> RawUpstream {
        RawUpstream::start_with(echo)
    }

    /// An upstream answering by `script`.
    pub fn start_with(
        script: impl Fn(&Recorded) -> Vec<Action> + Send + Sync + 'static,
    ) -> RawUpstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind raw upstream");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            script: Mutex::new(Arc::new(script)),
            events: watch::channel(0).0,
        });
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let sh = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    tokio::select! {
                        r = listener.accept() => {
                            let Ok((stream, _)) = r else { continue };
                            let _ = stream.set_nodelay(true);
                            let conn = {
                                let mut st = sh.state();
                                st.conns.push(Conn { accepted_at: Instant::now(), closed_by_peer: None });
                                st.conns.len() - 1
                            };
                            sh.bump();
                            tokio::spawn(serve_conn(sh.clone(), stream, conn));
                        }
                        _ = &mut rx => break,
                    }
                }
            });
            // Stalled connections end here: their tasks are dropped with the runtime.
            rt.shutdown_timeout(Duration::from_millis(100));
        });
        RawUpstream {
            addr,
            shared,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// Replaces the script for the requests that arrive from now on.
    pub fn set_script(&self, script: impl Fn(&Recorded) -> Vec<Action> + Send + Sync + 'static) {
        *self.shared.script.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(script);
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`, for a route's `upstreams`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every complete request received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.state().requests.clone()
    }

    /// Requests whose head arrived but whose body did not complete (connection ended, or the
    /// chunked encoding broke).
    pub fn partial_requests(&self) -> Vec<Recorded> {
        self.shared.state().partial.clone()
    }

    /// Bytes that were not a well-formed request (bad head, bad framing, truncated head).
    pub fn malformed(&self) -> Vec<Malformed> {
        self.shared.state().malformed.clone()
    }

    /// True when no request byte arrived at all (no request, partial or malformed).
    pub fn received_nothing(&self) -> bool {
        let st = self.shared.state();
        st.requests.is_empty() && st.partial.is_empty() && st.malformed.is_empty()
    }

    /// What arrived, one line per request, for assertion messages.
    pub fn summary(&self) -> String {
        let st = self.shared.state();
        let mut lines: Vec<String> = st.requests.iter().map(Recorded::summary).collect();
        lines.extend(st.partial.iter().map(Recorded::summary));
        lines.extend(st.malformed.iter().map(|m| {
            format!(
                "malformed on conn {}: {} ({:?})",
                m.conn,
                m.reason,
                String::from_utf8_lossy(&m.raw[..m.raw.len().min(200)])
            )
        }));
        if lines.is_empty() {
            "nothing".into()
        } else {
            lines.join("\n")
        }
    }

    pub fn connections_accepted(&self) -> usize {
        self.shared.state().conns.len()
    }

    pub fn accepted_at(&self, conn: usize) -> Option<Instant> {
        self.shared.state().conns.get(conn).map(|c| c.accepted_at)
    }

    /// When the gateway closed (or reset) upstream connection `conn`, if it has. Noticed
    /// whenever the upstream reads: while waiting for a request, during [`Action::Sleep`] and
    /// [`Action::Stall`].
    pub fn closed_by_peer(&self, conn: usize) -> Option<Instant> {
        self.shared
            .state()
            .conns
            .get(conn)
            .and_then(|c| c.closed_by_peer)
    }

    /// Requests whose script has run to its end (every write done, or the close/stall begun).
    pub fn answered(&self) -> usize {
        self.shared.state().answered
    }

    /// Waits until `cond` holds on the recorded state, at most `within`; returns whether it did.
    async fn wait_until(&self, within: Duration, cond: impl Fn(&State) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let mut events = self.shared.events.subscribe();
        loop {
            if cond(&self.shared.state()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, events.changed())
                .await
                .is_err()
            {
                return cond(&self.shared.state());
            }
        }
    }

    /// Waits until at least `n` complete requests have arrived.
    pub async fn wait_requests(&self, n: usize, within: Duration) -> bool {
        self.wait_until(within, |st| st.requests.len() >= n).await
    }

    /// Waits until the scripts of at least `n` requests have run to their end.
    pub async fn wait_answered(&self, n: usize, within: Duration) -> bool {
        self.wait_until(within, |st| st.answered >= n).await
    }

    /// Waits until the gateway closes upstream connection `conn`; when it did, if it did.
    pub async fn wait_closed_by_peer(&self, conn: usize, within: Duration) -> Option<Instant> {
        self.wait_until(within, |st| {
            st.conns
                .get(conn)
                .is_some_and(|c| c.closed_by_peer.is_some())
        })
        .await;
        self.closed_by_peer(conn)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads more bytes into `buf`; false once the peer has closed (or reset) the connection.
async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// Serves one upstream connection: request after request, each answered by the script.
async fn serve_conn(sh: Arc<Shared>, mut s: TcpStream, conn: usize) {
    let mut buf = Vec::new();
    let mut on_conn = 0;
    let mut open = true;
    loop {
        // The head.
        let head = loop {
            match parse_request_head(&buf) {
                Ok(Some(h)) => break h,
                Ok(None) => {}
                Err(reason) => {
                    sh.state().malformed.push(Malformed {
                        conn,
                        raw: buf,
                        reason,
                    });
                    sh.bump();
                    return;
                }
            }
            if !open || !read_more(&mut s, &mut buf).await {
                if !buf.is_empty() {
                    sh.state().malformed.push(Malformed {
                        conn,
                        raw: std::mem::take(&mut buf),
                        reason: "connection ended inside a request head".into(),
                    });
                }
                sh.closed(conn);
                return;
            }
        };
        // The body.
        let framing = match request_framing(&head.headers) {
            Ok(f) => f,
            Err(reason) => {
                sh.state().malformed.push(Malformed {
                    conn,
                    raw: buf,
                    reason,
                });
                sh.bump();
                return;
            }
        };
        let (body, used, complete) = loop {
            let rest = &buf[head.len..];
            let got = match framing {
                Framing::None | Framing::Close => Some((Vec::new(), 0, true)),
                Framing::Length(n) => (rest.len() >= n).then(|| (rest[..n].to_vec(), n, true)),
                Framing::Chunked => match decode_chunked(rest) {
                    Ok(Some((b, n))) => Some((b, n, true)),
                    Ok(None) => None,
                    // A broken chunked body: recorded as partial, the connection dropped.
                    Err(_) => Some((chunked_so_far(rest), rest.len(), false)),
                },
            };
            if let Some((b, n, c)) = got {
                break (b, head.len + n, c);
            }
            if !read_more(&mut s, &mut buf).await {
                open = false;
                let rest = &buf[head.len..];
                let so_far = match framing {
                    Framing::Chunked => chunked_so_far(rest),
                    _ => rest.to_vec(),
                };
                break (so_far, buf.len(), false);
            }
        };
        let raw: Vec<u8> = buf.drain(..used).collect();
        let script = sh.script.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let rec = {
            let mut st = sh.state();
            let rec = Recorded {
                index: st.next_index,
                conn,
                on_conn,
                method: head.method,
                target: head.target,
                version: head.version,
                headers: head.headers,
                head: raw[..head.len].to_vec(),
                body,
                raw,
                chunked: framing == Framing::Chunked,
                complete,
                at: Instant::now(),
            };
            st.next_index += 1;
            if complete {
                st.requests.push(rec.clone());
            } else {
                st.partial.push(rec.clone());
            }
            rec
        };
        sh.bump();
        if !complete {
            if !open {
                sh.closed(conn);
            }
            return;
        }
        on_conn += 1;
        for action in script(&rec) {
            match action {
                Action::Write(bytes) => {
                    if s.write_all(&bytes).await.is_err() {
                        sh.closed(conn);
                        open = false;
                    }
                }
                Action::Sleep(d) => {
                    let deadline = tokio::time::Instant::now() + d;
                    while open {
                        tokio::select! {
                            _ = tokio::time::sleep_until(deadline) => break,
                            more = read_more(&mut s, &mut buf) => if !more {
                                sh.closed(conn);
                                open = false;
                            },
                        }
                    }
                    tokio::time::sleep_until(deadline).await;
                }
                Action::Close => {
                    sh.state().answered += 1;
                    sh.bump();
                    return;
                }
                Action::Stall => {
                    sh.state().answered += 1;
                    sh.bump();
                    while open && read_more(&mut s, &mut buf).await {}
                    sh.closed(conn);
                    return;
                }
            }
        }
        sh.state().answered += 1;
        sh.bump();
    }
}

// ---------------------------------------------------------------------------------------------
// The raw client.

/// A response as the client read it.
#[derive(Clone, Debug)]
pub struct RawResponse {
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub headers: HeaderList,
    /// The body with any chunked encoding removed.
    pub body: Vec<u8>,
    pub framing: Framing,
    /// The head's bytes.
    pub head: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        header(&self.headers, name)
    }

    pub fn header_str(&self, name: &str) -> Option<String> {
        header_str(&self.headers, name)
    }

    pub fn header_all(&self, name: &str) -> Vec<&[u8]> {
        header_all(&self.headers, name)
    }

    /// `error.code` of a gateway error body.
    pub fn error_code(&self) -> Option<String> {
        error_code(&self.body)
    }

    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The response says the connection ends after it.
    pub fn says_close(&self) -> bool {
        tokens(&self.headers, "connection")
            .iter()
            .any(|t| t == "close")
    }

    /// Status, headers and (shortened) body, for assertion messages.
    pub fn summary(&self) -> String {
        let body = self.text();
        let body: String = body.chars().take(400).collect();
        format!(
            "{}{}",
            String::from_utf8_lossy(&self.head).trim_end(),
            if body.is_empty() {
                String::new()
            } else {
                format!("\n\n{body}")
            }
        )
    }
}

/// Why no whole response was read.
#[derive(Clone, Debug)]
pub enum ReadError {
    /// The connection ended first; `partial` is what had arrived of the response.
    Closed {
        partial: Vec<u8>,
    },
    TimedOut {
        partial: Vec<u8>,
    },
    Malformed {
        reason: String,
        partial: Vec<u8>,
    },
}

impl ReadError {
    pub fn partial(&self) -> &[u8] {
        match self {
            ReadError::Closed { partial }
            | ReadError::TimedOut { partial }
            | ReadError::Malformed { partial, .. } => partial,
        }
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |p: &[u8]| String::from_utf8_lossy(&p[..p.len().min(400)]).into_owned();
        match self {
            ReadError::Closed { partial } => {
                write!(
                    f,
                    "connection closed before a whole response ({:?})",
                    shown(partial)
                )
            }
            ReadError::TimedOut { partial } => {
                write!(f, "no whole response in time ({:?})", shown(partial))
            }
            ReadError::Malformed { reason, partial } => {
                write!(f, "malformed response: {reason} ({:?})", shown(partial))
            }
        }
    }
}

/// A client connection that sends raw bytes and reads responses.
pub struct RawClient {
    stream: TcpStream,
    /// Bytes read and not yet taken by a response.
    pending: Vec<u8>,
    eof: bool,
}

impl RawClient {
    /// Connects to `addr` (`127.0.0.1:port` or `http://127.0.0.1:port`).
    pub async fn connect(addr: &str) -> RawClient {
        let addr = addr.trim_start_matches("http://").trim_end_matches('/');
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connecting to {addr} timed out"))
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        let _ = stream.set_nodelay(true);
        RawClient {
            stream,
            pending: Vec::new(),
            eof: false,
        }
    }

    /// Writes `bytes` (all of them).
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads more into `pending` before `deadline`: `Ok(false)` at end of stream.
    async fn fill(&mut self, deadline: tokio::time::Instant) -> Result<bool, ()> {
        if self.eof {
            return Ok(false);
        }
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
            Err(_) => Err(()),
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.eof = true;
                Ok(false)
            }
            Ok(Ok(n)) => {
                self.pending.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
        }
    }

    /// The next response (a 1xx counts as one), framed as RFC 9112 §6.3 says.
    pub async fn read_response(&mut self, within: Duration) -> Result<RawResponse, ReadError> {
        self.read(within, false).await
    }

    /// The next response to a `HEAD` (no body whatever its headers say).
    pub async fn read_response_to_head(
        &mut self,
        within: Duration,
    ) -> Result<RawResponse, ReadError> {
        self.read(within, true).await
    }

    async fn read(&mut self, within: Duration, to_head: bool) -> Result<RawResponse, ReadError> {
        let deadline = tokio::time::Instant::now() + within;
        let head = loop {
            match parse_response_head(&self.pending) {
                Ok(Some(h)) => break h,
                Ok(None) => {}
                Err(reason) => {
                    return Err(ReadError::Malformed {
                        reason,
                        partial: std::mem::take(&mut self.pending),
                    })
                }
            }
            match self.fill(deadline).await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(ReadError::Closed {
                        partial: std::mem::take(&mut self.pending),
                    })
                }
                Err(()) => {
                    return Err(ReadError::TimedOut {
                        partial: self.pending.clone(),
                    })
                }
            }
        };
        let framing = match response_framing(head.status, &head.headers, to_head) {
            Ok(f) => f,
            Err(reason) => {
                return Err(ReadError::Malformed {
                    reason,
                    partial: std::mem::take(&mut self.pending),
                })
            }
        };
        let (body, used) = loop {
            let rest = &self.pending[head.len..];
            let got = match framing {
                Framing::None => Some((Vec::new(), 0)),
                Framing::Length(n) => (rest.len() >= n).then(|| (rest[..n].to_vec(), n)),
                Framing::Chunked => match decode_chunked(rest) {
                    Ok(done) => done,
                    Err(reason) => {
                        return Err(ReadError::Malformed {
                            reason,
                            partial: std::mem::take(&mut self.pending),
                        })
                    }
                },
                Framing::Close => self.eof.then(|| (rest.to_vec(), rest.len())),
            };
            if let Some(done) = got {
                break done;
            }
            match self.fill(deadline).await {
                Ok(true) => {}
                Ok(false) if framing == Framing::Close => {}
                Ok(false) => {
                    return Err(ReadError::Closed {
                        partial: std::mem::take(&mut self.pending),
                    })
                }
                Err(()) => {
                    return Err(ReadError::TimedOut {
                        partial: self.pending.clone(),
                    })
                }
            }
        };
        let head_bytes = self.pending[..head.len].to_vec();
        self.pending.drain(..head.len + used);
        Ok(RawResponse {
            version: head.version,
            status: head.status,
            reason: head.reason,
            headers: head.headers,
            body,
            framing,
            head: head_bytes,
        })
    }

    /// Reads (and keeps) everything until the gateway closes the connection or `within`
    /// passes: the bytes not yet taken by a response, and whether it closed.
    pub async fn read_until_closed(&mut self, within: Duration) -> (Vec<u8>, bool) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match self.fill(deadline).await {
                Ok(true) => {}
                Ok(false) => return (std::mem::take(&mut self.pending), true),
                Err(()) => return (std::mem::take(&mut self.pending), false),
            }
        }
    }

    /// Whether the gateway closes the connection within `within` (anything it sends first is
    /// read and dropped).
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        self.read_until_closed(within).await.1
    }

    /// Bytes read but not yet taken by a response.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }
}

/// Sends `bytes` on a new connection to `addr` and reads one response.
pub async fn exchange(
    addr: &str,
    bytes: &[u8],
    within: Duration,
) -> Result<RawResponse, ReadError> {
    let mut c = RawClient::connect(addr).await;
    // The gateway may refuse before reading everything; its answer is still readable.
    let _ = c.send(bytes).await;
    c.read_response(within).await
}

// ---------------------------------------------------------------------------------------------
// Gateways on one request path.

/// A name for assertion messages: `fast lane` or `hyper path`.
pub fn lane_name(fast_lane: bool) -> &'static str {
    if fast_lane {
        "fast lane"
    } else {
        "hyper path"
    }
}

/// A gateway (embedded backend) with `routes`, forced onto one request path with the
/// `[gateway] fast_lane` setting, plus `gateway_extra` in `[gateway]`.
pub fn lane_gateway(routes: &str, fast_lane: bool, gateway_extra: &str) -> Gateway {
    Gateway::embedded_with(routes, &format!("fast_lane = {fast_lane}\n{gateway_extra}"))
}

/// How many keys the gateway's replica holds (`/ready`'s `keys_loaded`): waiting on it costs
/// no quota, unlike probing with a keyed request.
pub async fn keys_loaded(gw: &Gateway) -> u64 {
    let r = exchange(
        &gw.url,
        b"GET /ready HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    r.ok()
        .and_then(|r| r.json())
        .and_then(|v| v["keys_loaded"].as_u64())
        .unwrap_or(0)
}

/// Waits (at most 5 s) until the replica holds at least `n` keys.
pub async fn wait_keys_loaded(gw: &Gateway, n: u64) {
    crate::eventually(
        Duration::from_secs(5),
        "minted keys reach the gateway",
        || async { (keys_loaded(gw).await >= n).then_some(()) },
    )
    .await;
}

/// `/v1` (keyed) and `/open` (no key) on `up`, plus `extra` routes.
pub fn v1_and_open(up: &RawUpstream, extra: &str) -> String {
    [
        crate::gw::route("/v1", &up.url(), "name = \"v1\""),
        crate::gw::route("/open", &up.url(), "name = \"open\"\nauth = \"none\""),
        extra.to_string(),
    ]
    .concat()
}

/// One key per user on `plan` (granted first when paid), usable once this returns.
pub async fn keys(gw: &Gateway, plan: &str, users: &[&str]) -> Vec<Key> {
    let api = gw.api();
    let before = keys_loaded(gw).await;
    let mut out = Vec::new();
    for user in users {
        if plan != "free" {
            api.grant(user, plan).await;
        }
        out.push(api.mint(user, plan).await);
    }
    let n = u64::try_from(out.len()).unwrap_or(u64::MAX);
    wait_keys_loaded(gw, before + n).await;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_decode() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nNEXT";
        assert_eq!(
            decode_chunked(body),
            Ok(Some((b"hello world".to_vec(), body.len() - 4)))
        );
        let trailers = b"3\r\nabc\r\n0\r\nx-t: 1\r\n\r\n";
        assert_eq!(
            decode_chunked(trailers),
            Ok(Some((b"abc".to_vec(), trailers.len())))
        );
        assert_eq!(decode_chunked(b"A\r\n0123"), Ok(None));
        assert_eq!(decode_chunked(b"5\r\nhello\r\n0\r\n"), Ok(None));
        assert!(decode_chunked(b"zz\r\n").is_err());
        assert!(decode_chunked(b"5\r\nhelloXX").is_err());
        assert_eq!(chunked_so_far(b"5\r\nhello\r\nA\r\n0123"), b"hello0123");
        assert_eq!(chunked_so_far(b"5\r\nhello\r\nZZ\r\n"), b"hello");
    }

    #[test]
    fn chunked_bodies_split_anywhere() {
        let body = b"5\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nt: v\r\n\r\n";
        for split in 0..body.len() {
            assert_eq!(decode_chunked(&body[..split]), Ok(None), "split at {split}");
        }
        assert_eq!(
            decode_chunked(body).map(|d| d.map(|(b, n)| (b.len(), n))),
            Ok(Some((31, body.len())))
        );
    }

    #[test]
    fn request_framing_is_strict() {
        let h = |list: &[(&str, &str)]| -> HeaderList {
            list.iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect()
        };
        assert_eq!(request_framing(&h(&[])), Ok(Framing::None));
        assert_eq!(
            request_framing(&h(&[("content-length", "12")])),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            request_framing(&h(&[("Transfer-Encoding", "Chunked")])),
            Ok(Framing::Chunked)
        );
        for bad in [
            &[("content-length", "5\u{a0}")][..],
            &[("content-length", "+5")],
            &[("content-length", "5"), ("content-length", "6")],
            &[("content-length", "5"), ("transfer-encoding", "chunked")],
            &[("transfer-encoding", "gzip, chunked")],
        ] {
            assert!(request_framing(&h(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(
            request_framing(&h(&[("content-length", "5"), ("Content-Length", "5")])),
            Ok(Framing::Length(5))
        );
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let h = |list: &[(&str, &str)]| -> HeaderList {
            list.iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect()
        };
        let cl = h(&[("Content-Length", "10")]);
        assert_eq!(response_framing(200, &cl, false), Ok(Framing::Length(10)));
        assert_eq!(response_framing(200, &cl, true), Ok(Framing::None));
        for status in [100, 101, 204, 304] {
            assert_eq!(response_framing(status, &cl, false), Ok(Framing::None));
        }
        assert_eq!(response_framing(200, &h(&[]), false), Ok(Framing::Close));
        let both = h(&[("Content-Length", "3"), ("Transfer-Encoding", "chunked")]);
        assert_eq!(response_framing(200, &both, false), Ok(Framing::Chunked));
        let gzip = h(&[("Transfer-Encoding", "gzip")]);
        assert_eq!(response_framing(200, &gzip, false), Ok(Framing::Close));
    }

    #[test]
    fn heads_parse_with_case_and_order_kept() {
        let raw = b"GET /a?b=1 HTTP/1.0\r\nX-One: 1\r\nx-TWO: 2\r\nX-One: 3\r\n\r\nrest";
        let h = parse_request_head(raw)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("a head"));
        assert_eq!((h.method.as_str(), h.target.as_str()), ("GET", "/a?b=1"));
        assert_eq!(h.version, 0);
        assert_eq!(h.len, raw.len() - 4);
        let names: Vec<&str> = h.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["X-One", "x-TWO", "X-One"]);
        assert_eq!(header(&h.headers, "x-two"), Some(&b"2"[..]));
        assert_eq!(header_all(&h.headers, "X-ONE"), [&b"1"[..], &b"3"[..]]);
        assert!(parse_request_head(b"GET / HTTP/1.1\r\nX: 1\r\n").is_ok_and(|h| h.is_none()));
        assert!(parse_request_head(b"GET / HTTP/1.1\r\nX: a\0b\r\n\r\n").is_err());

        let resp = parse_response_head(b"HTTP/1.1 404 Not Found\r\nA: b\r\n\r\n")
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("a head"));
        assert_eq!((resp.status, resp.reason.as_str()), (404, "Not Found"));
        assert_eq!(resp.version, "HTTP/1.1");
    }

    #[test]
    fn error_codes_and_echoes() {
        assert_eq!(
            error_code(br#"{"detail":"x","error":{"code":"bad_request","message":"x"}}"#),
            Some("bad_request".into())
        );
        assert_eq!(error_code(b""), None);
        let rec = Recorded {
            index: 0,
            conn: 0,
            on_conn: 0,
            method: "HEAD".into(),
            target: "/x".into(),
            version: 1,
            headers: vec![("Host".into(), b"h".to_vec())],
            head: Vec::new(),
            body: Vec::new(),
            raw: Vec::new(),
            chunked: false,
            complete: true,
            at: Instant::now(),
        };
        let head_only = echo_response(&rec);
        assert!(head_only.ends_with(b"\r\n\r\n"));
        let get = echo_response(&Recorded {
            method: "GET".into(),
            ..rec
        });
        let parsed = parse_response_head(&get)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("a head"));
        let body: Value = serde_json::from_slice(&get[parsed.len..]).unwrap_or(Value::Null);
        assert_eq!(body["target"], "/x");
        assert_eq!(body["headers"][0][0], "Host");
        assert_eq!(
            response_framing(200, &parsed.headers, false),
            Ok(Framing::Length(get.len() - parsed.len))
        );
    }
}
