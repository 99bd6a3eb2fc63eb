//! The HTTP/1.1 fast lane: keyed requests proxied straight between two sockets.
//!
//! Every connection on the main listener starts here. The lane reads a request head into the
//! connection's buffer, parses it in place (`httparse`), and hands it to the request phases
//! ([`crate::phases`]: key, replica, route/plan, quota, settle, usage, metrics — the ones hyper's
//! requests go through) as a [`Lane`], whose forward writes the rewritten head and the body
//! upstream in one write on a pooled keep-alive connection and copies the response back with the
//! gateway's headers added. No buffer is allocated per request: the buffers belong to the
//! connection and are reused.
//!
//! The lane takes only the common case: an HTTP/1.1 request with a complete head and a body
//! that is already buffered (`Content-Length`, no chunked upload), on a configured route whose
//! upstreams are HTTP, without `Upgrade`, `Expect` or extra `Connection` options. Anything else —
//! HTTP/1.0 and h2, the gateway's own paths (`/health`, validate, management), `builtin:echo`,
//! large or streamed uploads, a head that does not arrive in one read, WebSockets, malformed
//! input — hands the connection, with the bytes already read, to hyper and
//! [`Gateway::handle`] for the rest of its life. Both paths give the same answers;
//! the lane exists because hyper's generality costs ~3× nginx's user-space CPU per proxied
//! request (benches/PROFILE.md).
//!
//! Upstream connections are kept per upstream address in [`Pools`], which the server owns and
//! hands to every lane connection (the route table only names addresses, so a reload carries
//! no sockets, and idle connections to an upstream the new table still names stay usable): a
//! connection is taken for one exchange, put back only when the response was framed exactly (nothing past its end) and both
//! sides allow keep-alive, and checked again before reuse (see [`quiet`]), so bytes an upstream
//! sends late can never answer another client's request. A reused connection that fails before
//! any byte of a response (the upstream closed it while idle) is retried once on a fresh
//! connection when that cannot repeat an effect: nothing was written, or the method is
//! idempotent. Every wait after the head (upstream body, a client that does not read) is
//! bounded by the route's timeout; past it both connections are closed.

use crate::body::Body;
use crate::conns::Conn;
use crate::forwarded::{self, Peer};
use crate::headers::{self, HeaderSink, Headers, KeyHeader, X_KEY_ID, X_PLAN, X_USER_ID};
use crate::keys::KeyEntry;
use crate::limits::{UpstreamLimits, MAX_HEADERS};
use crate::metrics::Outcome;
use crate::phases::{self, Admission, Answered, Exchange, Gateway, Unanswered};
use crate::phases::{UpstreamError, CLIMBS_OUT};
use crate::routes::{Route, RouteTable, Target};
use arc_swap::ArcSwap;
use http::header::{HeaderName, HeaderValue};
use http::uri::Authority;
use http::Response;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// A response is written in one piece when head and body fit in this much.
const ONE_WRITE: usize = 64 * 1024;
/// Read size for a connection's buffers.
const READ_CHUNK: usize = 16 * 1024;

/// A connection's reusable timer. Arming a fresh `tokio::time::timeout` for every read costs a
/// timer-wheel insert and removal each time (~3 % of the lane's CPU under load); this one is
/// moved only when the wanted deadline is later than the armed one by more than a slack of a
/// sixteenth of the timeout (at most 1 s), so a busy connection re-arms it a few times a second
/// at most. A timeout then fires between `timeout - slack` and `timeout` after the wait began.
struct Deadline {
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Deadline {
    fn new() -> Deadline {
        Deadline {
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }

    /// Arms the timer for `timeout` from `now` (within the slack) and returns it to wait on.
    fn arm(
        &mut self,
        now: tokio::time::Instant,
        timeout: Duration,
    ) -> Pin<&mut tokio::time::Sleep> {
        let want = now + timeout;
        let slack = (timeout / 16).min(Duration::from_secs(1));
        if self.sleep.deadline() + slack < want || self.sleep.deadline() > want {
            self.sleep.as_mut().reset(want);
        }
        self.sleep.as_mut()
    }
}

/// The lane's idle upstream connections: one `Pool` per upstream address (shared by every
/// route that names it), for the addresses of the route table in force.
///
/// Each lane connection keeps the set it last saw (`ConnPools`) and finds a request's pool by
/// the target's index in its table ([`Target::addr`]): no hashing, no atomic operation, no
/// allocation per request. The only lock is the pool's own, held for a `pop` or a `push`, never
/// across I/O.
pub struct Pools {
    current: ArcSwap<PoolSet>,
    settings: UpstreamLimits,
}

/// The pools of one route table's addresses.
struct PoolSet {
    /// [`RouteTable::id`] of that table.
    table: u64,
    /// In the order of [`RouteTable::addrs`].
    by_index: Box<[Arc<Pool>]>,
    by_addr: HashMap<Authority, Arc<Pool>>,
}

impl Pools {
    pub fn new(settings: UpstreamLimits) -> Pools {
        Pools {
            current: ArcSwap::from_pointee(PoolSet {
                table: 0,
                by_index: Box::new([]),
                by_addr: HashMap::new(),
            }),
            settings,
        }
    }

    /// Keeps a pool for each `http://` address in `table`: the pools of addresses already known
    /// stay (with their idle connections), others are dropped (their idle connections close
    /// once no connection holds the old set). Called before `table` goes in force.
    pub fn sync(&self, table: &RouteTable) {
        let old = self.current.load();
        let by_index: Box<[Arc<Pool>]> = table
            .addrs()
            .iter()
            .map(|a| {
                old.by_addr
                    .get(a)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Pool::new(self.settings)))
            })
            .collect();
        let by_addr = table.addrs().iter().cloned().zip(by_index.iter().cloned());
        self.current.store(Arc::new(PoolSet {
            table: table.id(),
            by_addr: by_addr.collect(),
            by_index,
        }));
    }

    /// How many addresses have a pool.
    pub fn len(&self) -> usize {
        self.current.load().by_index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A lane connection's view of [`Pools`]: the set in force when it last looked, looked up
/// again only when a request's route comes from another table.
struct ConnPools<'a> {
    pools: &'a Pools,
    set: Arc<PoolSet>,
}

impl<'a> ConnPools<'a> {
    fn new(pools: &'a Pools) -> ConnPools<'a> {
        ConnPools {
            pools,
            set: pools.current.load_full(),
        }
    }

    /// The pool of `target` of `route`; `None` when its address has none (a request still on
    /// a table a reload replaced, to an address the new one dropped): that connection is used
    /// once and closed.
    fn pool(&mut self, route: &Route, target: &Target) -> Option<&Pool> {
        if self.set.table != route.table {
            self.set = self.pools.current.load_full();
        }
        let set = &*self.set;
        let pool = if set.table == route.table {
            target.addr.and_then(|i| set.by_index.get(i))
        } else {
            target.authority.as_ref().and_then(|a| set.by_addr.get(a))
        };
        pool.map(|p| &**p)
    }
}

/// Idle keep-alive connections to one upstream, most recently used last.
struct Pool {
    idle: Mutex<Vec<(TcpStream, Instant)>>,
    settings: UpstreamLimits,
}

impl Pool {
    fn new(settings: UpstreamLimits) -> Pool {
        Pool {
            idle: Mutex::new(Vec::new()),
            settings,
        }
    }

    /// The most recently used idle connection that is not past the idle timeout and has
    /// nothing to read: bytes an upstream sent while the connection sat idle (a body after a
    /// HEAD or 204 head, a late second response) would otherwise be read as the answer to the
    /// next client's request. A connection the upstream closed is dropped here too.
    fn take(&self) -> Option<TcpStream> {
        loop {
            let (s, since) = self.idle.lock().pop()?;
            if since.elapsed() < self.settings.idle_timeout && quiet(&s) {
                return Some(s);
            }
        }
    }

    /// Keeps a connection whose response was framed exactly.
    fn put(&self, stream: TcpStream) {
        let mut idle = self.idle.lock();
        if idle.len() < self.settings.max_idle {
            idle.push((stream, Instant::now()));
        }
    }
}

/// A new connection to `addr`, within `timeout`.
async fn connect(addr: &Authority, timeout: Duration) -> io::Result<TcpStream> {
    let host = addr.host().trim_start_matches('[').trim_end_matches(']');
    let port = addr.port_u16().unwrap_or(80);
    let s = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Whether an idle upstream connection has nothing to read and is not closed. Like nginx's
/// read handler on idle keep-alive connections, this goes by the event loop: tokio's readiness
/// is set as soon as the reactor sees bytes (or the close) arrive, and `try_read` then makes a
/// real `recv`. While tokio knows the socket is not readable it costs no system call; when the
/// readiness left by the last response's read is still set, it makes the `recv` (→ EAGAIN) that
/// the next exchange's first read would have made anyway. (A real `MSG_PEEK` per reuse would
/// close the microsecond window before the reactor sees a late byte, for one more system call
/// per request: +1.2 µs CPU per request on the benchmark host.)
fn quiet(s: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(s.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// How a connection left the lane.
pub enum Exit {
    /// Closed (by either side, or for shutdown).
    Closed,
    /// Hyper takes over: the socket, with the bytes already read in front.
    Handoff(Prefixed),
}

/// A socket with bytes already read from it, to be read again first.
pub struct Prefixed {
    prefix: Vec<u8>,
    at: usize,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.prefix.len() {
            let rest = &this.prefix[this.at..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A parsed request head's headers, looked up by name.
impl Headers for [httparse::Header<'_>] {
    fn first(&self, name: &HeaderName) -> Option<&[u8]> {
        let name = name.as_str().as_bytes();
        self.iter()
            .find(|h| h.name.as_bytes().eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// A response head being written: `name: value\r\n`.
struct Head<'a>(&'a mut Vec<u8>);

impl HeaderSink for Head<'_> {
    fn value(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.text(name, value.as_bytes());
    }
    fn text(&mut self, name: &HeaderName, value: &[u8]) {
        put_header(self.0, name.as_str().as_bytes(), value);
    }
}

fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `name` is the header `h` (lower case), any case. Comparing lengths first makes a miss one
/// instruction; `HeaderName::as_str` (a large `match`) per comparison was ~1,300 instructions
/// per proxied request.
fn is(name: &str, h: &[u8]) -> bool {
    name.len() == h.len() && name.as_bytes().eq_ignore_ascii_case(h)
}

fn is_hop(name: &str) -> bool {
    headers::is_hop_name(name.as_bytes())
}

const HOST: &[u8] = b"host";
const CONTENT_LENGTH: &[u8] = b"content-length";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding";
const CONNECTION: &[u8] = b"connection";

/// What a request head says about itself, from one pass over its headers.
#[derive(Default)]
struct Facts<'b> {
    host: Option<&'b str>,
    content_length: u64,
    close: bool,
}

/// The request's facts, or `None` when the lane does not take it (hyper will).
fn facts<'b>(headers: &[httparse::Header<'b>]) -> Option<Facts<'b>> {
    let mut f = Facts::default();
    let mut length_seen = false;
    for h in headers {
        let n = h.name;
        if is(n, HOST) {
            if f.host.is_some() {
                return None;
            }
            f.host = Some(std::str::from_utf8(h.value).ok()?);
        } else if is(n, CONTENT_LENGTH) {
            if length_seen {
                return None;
            }
            f.content_length = headers::parse_length(h.value)?;
            length_seen = true;
        } else if is(n, CONNECTION) {
            for token in std::str::from_utf8(h.value).ok()?.split(',') {
                let t = token.trim();
                if t.eq_ignore_ascii_case("close") {
                    f.close = true;
                } else if !t.eq_ignore_ascii_case("keep-alive") && !t.is_empty() {
                    return None;
                }
            }
        } else if is(n, TRANSFER_ENCODING) || is(n, b"upgrade") || is(n, b"expect") {
            return None;
        }
    }
    f.host?;
    Some(f)
}

/// How an upstream response's body ends (RFC 9112 §6.3).
#[derive(Clone, Copy)]
enum Framing {
    Empty,
    Length(u64),
    Chunked(Chunks),
    /// Until the upstream closes.
    Close,
}

/// Finds the end of a chunked body passed through unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunks {
    Size {
        value: u64,
        digits: u8,
    },
    Extension {
        value: u64,
    },
    SizeLf {
        value: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// Trailer section; `start` when at the beginning of a line.
    Trailer {
        start: bool,
    },
    EndLf,
    Done,
}

impl Chunks {
    const START: Chunks = Chunks::Size {
        value: 0,
        digits: 0,
    };

    /// Consumes bytes of the chunked stream; returns how many belong to it (all of `data`
    /// unless it ended inside). `Err` on a malformed stream.
    fn feed(&mut self, data: &[u8]) -> Result<usize, ()> {
        let mut i = 0;
        while i < data.len() && *self != Chunks::Done {
            if let Chunks::Data(left) = *self {
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(data.len() - i);
                i += take;
                let left = left - u64::try_from(take).unwrap_or(left);
                *self = if left == 0 {
                    Chunks::DataCr
                } else {
                    Chunks::Data(left)
                };
                continue;
            }
            let c = data[i];
            i += 1;
            *self = match (*self, c) {
                (Chunks::Size { value, digits }, c) if c.is_ascii_hexdigit() => {
                    if digits >= 15 {
                        return Err(());
                    }
                    let d = u64::from(char::from(c).to_digit(16).ok_or(())?);
                    Chunks::Size {
                        value: value * 16 + d,
                        digits: digits + 1,
                    }
                }
                (Chunks::Size { value, digits }, b';' | b' ' | b'\t') if digits > 0 => {
                    Chunks::Extension { value }
                }
                (Chunks::Size { value, digits }, b'\r') if digits > 0 => Chunks::SizeLf { value },
                (Chunks::Size { value, digits }, b'\n') if digits > 0 => Chunks::after_size(value),
                (Chunks::Extension { value }, b'\r') => Chunks::SizeLf { value },
                (Chunks::Extension { value }, b'\n') => Chunks::after_size(value),
                (Chunks::Extension { value }, _) => Chunks::Extension { value },
                (Chunks::SizeLf { value }, b'\n') => Chunks::after_size(value),
                (Chunks::DataCr, b'\r') => Chunks::DataLf,
                (Chunks::DataCr | Chunks::DataLf, b'\n') => Chunks::START,
                (Chunks::Trailer { start: true }, b'\r') => Chunks::EndLf,
                (Chunks::Trailer { start: true } | Chunks::EndLf, b'\n') => Chunks::Done,
                (Chunks::Trailer { .. }, b'\n') => Chunks::Trailer { start: true },
                (Chunks::Trailer { .. }, _) => Chunks::Trailer { start: false },
                _ => return Err(()),
            };
        }
        Ok(i)
    }

    fn after_size(value: u64) -> Chunks {
        if value == 0 {
            Chunks::Trailer { start: true }
        } else {
            Chunks::Data(value)
        }
    }
}

impl Framing {
    /// Takes the part of `data` that belongs to the body; `Ok(true)` once the body is complete.
    fn feed(&mut self, data: &[u8]) -> Result<(usize, bool), ()> {
        match self {
            Framing::Empty => Ok((0, true)),
            Framing::Length(left) => {
                let take = usize::try_from(*left).unwrap_or(usize::MAX).min(data.len());
                *left -= u64::try_from(take).unwrap_or(*left);
                Ok((take, *left == 0))
            }
            Framing::Chunked(state) => {
                let n = state.feed(data)?;
                Ok((n, *state == Chunks::Done))
            }
            Framing::Close => Ok((data.len(), false)),
        }
    }
}

/// The parts of an upstream response head the rest of the exchange needs.
struct Answer {
    status: u16,
    framing: Framing,
    reusable: bool,
    /// The client connection ends after this response.
    close: bool,
}

/// Why a proxied exchange failed before the response head.
enum Failed {
    Connect,
    Io,
    Timeout,
}

/// Per-connection buffers, reused by every request on it.
struct Buffers {
    /// Bytes read from the client, starting with the current request.
    input: Vec<u8>,
    /// The request sent upstream.
    upstream: Vec<u8>,
    /// Bytes read from the upstream.
    reply: Vec<u8>,
    /// The response written to the client.
    out: Vec<u8>,
}

/// Serves one client connection until it closes, or hands it to hyper; upstream connections
/// come from and go back to `pools`.
pub async fn serve(
    gw: Arc<Gateway>,
    pools: &Pools,
    mut client: TcpStream,
    mut drain: watch::Receiver<bool>,
    conn: &Conn,
    peer: &Peer,
) -> Exit {
    let mut b = Buffers {
        input: Vec::with_capacity(READ_CHUNK),
        upstream: Vec::new(),
        reply: Vec::new(),
        out: Vec::new(),
    };
    let (mut idle, mut upstream_deadline) = (Deadline::new(), Deadline::new());
    let mut pools = ConnPools::new(pools);
    loop {
        if b.input.is_empty() {
            b.input.reserve(READ_CHUNK);
            let timer = idle.arm(tokio::time::Instant::now(), gw.limits.header_timeout);
            let read = tokio::select! {
                biased;
                r = client.read_buf(&mut b.input) => r,
                _ = timer => return Exit::Closed,
                _ = drain.changed() => return Exit::Closed,
                _ = conn.asked_to_close() => return Exit::Closed,
            };
            match read {
                Ok(0) | Err(_) => return Exit::Closed,
                Ok(_) => {}
            }
        }
        let work = Work {
            upstream: &mut b.upstream,
            reply: &mut b.reply,
            out: &mut b.out,
            deadline: &mut upstream_deadline,
        };
        let draining = *drain.borrow();
        conn.start();
        let step = one(&gw, &mut pools, &mut client, &b.input, work, draining, peer).await;
        conn.end();
        match step {
            Step::Next(used) => {
                b.input.drain(..used);
            }
            Step::Close => return Exit::Closed,
            Step::Handoff => {
                gw.metrics.handed_off.add(1);
                return Exit::Handoff(Prefixed {
                    prefix: std::mem::take(&mut b.input),
                    at: 0,
                    inner: client,
                });
            }
        }
    }
}

enum Step {
    /// Answered; the request used this many bytes of the input.
    Next(usize),
    Close,
    Handoff,
}

/// One request from `b.input`.
async fn one(
    gw: &Gateway,
    pools: &mut ConnPools<'_>,
    client: &mut TcpStream,
    input: &[u8],
    mut w: Work<'_>,
    draining: bool,
    peer: &Peer,
) -> Step {
    let start = Instant::now();
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let head_len = match req.parse(input) {
        Ok(httparse::Status::Complete(n)) if n <= gw.limits.max_header_bytes => n,
        _ => return Step::Handoff,
    };
    if req.version != Some(1) {
        return Step::Handoff;
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Step::Handoff;
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    if !path.starts_with('/') || method == "CONNECT" {
        return Step::Handoff;
    }
    let Some(f) = facts(req.headers) else {
        return Step::Handoff;
    };
    let used = usize::try_from(f.content_length)
        .ok()
        .and_then(|n| n.checked_add(head_len))
        .filter(|&n| n <= input.len());
    let Some(used) = used else {
        return Step::Handoff;
    };
    let close = f.close || draining;
    let head_only = method == "HEAD";
    let normal = match crate::path::normalize(path) {
        Ok(n) => n,
        Err(message) => {
            gw.own.unmatched.count(Outcome::BadRequest, 400);
            let resp = headers::error_response(Outcome::BadRequest, message);
            return reply(client, w.out, resp, close, head_only, used).await;
        }
    };
    let path = &*normal.path;
    if phases::is_own_path(path) {
        return Step::Handoff;
    }
    let route = match gw.route(f.host, path) {
        Ok(route) => route,
        Err(not_found) => return reply(client, w.out, not_found, close, head_only, used).await,
    };
    if !route.fast {
        return Step::Handoff;
    }
    if normal.climbs_out_of(route.depth) {
        let resp = gw.refused(&route, CLIMBS_OUT, None, start);
        return reply(client, w.out, resp, close, head_only, used).await;
    }
    let request = Request {
        method,
        path,
        query,
        headers: req.headers,
        body: &input[head_len..used],
        close,
        host: f.host,
        peer,
    };
    let lane = Lane {
        client: &mut *client,
        pools,
        w: w.reborrow(),
        req: &request,
        used,
    };
    match gw.serve_route(&route, lane, start).await {
        phases::Reply::Forwarded(step) => step,
        phases::Reply::Gateway(resp) => reply(client, w.out, resp, close, head_only, used).await,
    }
}

/// The request as parsed, borrowed from the input buffer (the path normalised).
struct Request<'r, 'b> {
    method: &'b str,
    path: &'r str,
    query: Option<&'b str>,
    headers: &'r [httparse::Header<'b>],
    body: &'b [u8],
    close: bool,
    /// The `Host` the client sent.
    host: Option<&'b str>,
    peer: &'r Peer,
}

/// The buffers other than `input` (which the parsed request borrows), and the upstream timer.
struct Work<'a> {
    upstream: &'a mut Vec<u8>,
    reply: &'a mut Vec<u8>,
    out: &'a mut Vec<u8>,
    deadline: &'a mut Deadline,
}

impl Work<'_> {
    fn reborrow(&mut self) -> Work<'_> {
        Work {
            upstream: self.upstream,
            reply: self.reply,
            out: self.out,
            deadline: self.deadline,
        }
    }
}

/// Writes a response the gateway made (refusals, errors) and goes on (or closes).
async fn reply(
    client: &mut TcpStream,
    out: &mut Vec<u8>,
    resp: Response<Body>,
    close: bool,
    head_only: bool,
    used: usize,
) -> Step {
    render(out, resp, close, head_only);
    match client.write_all(out).await {
        Ok(()) if !close => Step::Next(used),
        _ => Step::Close,
    }
}

/// A response made by the gateway (a full body) as HTTP/1.1 bytes; to a HEAD request, the
/// head alone (with the length the body would have, RFC 9110 §9.3.2).
fn render(out: &mut Vec<u8>, resp: Response<Body>, close: bool, head_only: bool) {
    out.clear();
    let status = resp.status();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let (parts, body) = resp.into_parts();
    for (name, value) in &parts.headers {
        put_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let bytes = match body {
        Body::Full(Some(b)) => b,
        _ => bytes::Bytes::new(),
    };
    put_date(out);
    put_header(
        out,
        b"content-length",
        itoa::Buffer::new().format(bytes.len()).as_bytes(),
    );
    if close {
        put_header(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(&bytes);
    }
}

thread_local! {
    /// `Date` header text, rendered once per second per thread.
    static DATE: std::cell::RefCell<(u64, [u8; 29])> = const { std::cell::RefCell::new((u64::MAX, [0; 29])) };
}

fn put_date(out: &mut Vec<u8>) {
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                d.1.copy_from_slice(text.as_bytes());
                d.0 = secs;
            }
        }
        put_header(out, b"date", &d.1);
    });
}

/// Writes the upstream request for `req` into `out`: the request line (prefix stripped when
/// configured), the client's headers without hop-by-hop, key and identity headers (and without
/// `Host` when the upstream's is sent), the identity headers of an admitted key, the body.
fn upstream_request(
    out: &mut Vec<u8>,
    route: &Route,
    target: &Target,
    req: &Request<'_, '_>,
    key: Option<(&KeyEntry, KeyHeader)>,
) {
    out.clear();
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(phases::upstream_target(route, req.path).as_bytes());
    if let Some(q) = req.query {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let own_host = if route.cfg.preserve_host {
        None
    } else {
        target.host.as_ref()
    };
    let key_from = key.map(|(_, from)| from);
    for h in req.headers {
        let n = h.name;
        let drop = is_hop(n)
            || headers::carries_key(n.as_bytes(), h.value, key_from)
            || forwarded::is_forwarding(n.as_bytes())
            || (own_host.is_some() && is(n, HOST));
        if !drop {
            put_header(out, n.as_bytes(), h.value);
        }
    }
    if let Some(host) = own_host {
        put_header(out, b"host", host.as_bytes());
    }
    let sent = |name: &'static [u8]| {
        req.headers
            .iter()
            .filter(move |h| is(h.name, name))
            .map(|h| h.value)
    };
    forwarded::emit(
        req.peer,
        req.host.map(str::as_bytes),
        sent,
        &mut forwarded::Lines(out),
    );
    if let Some((entry, _)) = key {
        put_header(
            out,
            X_KEY_ID.as_str().as_bytes(),
            entry.id_header.as_bytes(),
        );
        put_header(
            out,
            X_USER_ID.as_str().as_bytes(),
            entry.user_header.as_bytes(),
        );
        put_header(
            out,
            X_PLAN.as_str().as_bytes(),
            entry.tier.plan_header.as_bytes(),
        );
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(req.body);
}

/// A request on the lane, with the connection and buffers phase 5 uses.
struct Lane<'a, 'p> {
    client: &'a mut TcpStream,
    /// The lane's upstream connections.
    pools: &'a mut ConnPools<'p>,
    w: Work<'a>,
    req: &'a Request<'a, 'a>,
    /// Bytes of the input the request takes.
    used: usize,
}

impl<'a, 'p> Exchange for Lane<'a, 'p> {
    type Headers = [httparse::Header<'a>];
    type Output = Step;

    fn headers(&self) -> &Self::Headers {
        self.req.headers
    }

    fn forward(
        self,
        gw: &Gateway,
        route: &Route,
        key: Option<&mut Admission<'_>>,
    ) -> impl std::future::Future<Output = Result<Answered<Step>, Unanswered>> {
        forward(self, gw, route, key)
    }
}

/// Phase 5: send upstream, copy the answer back with the gateway's headers.
async fn forward(
    lane: Lane<'_, '_>,
    gw: &Gateway,
    route: &Route,
    key: Option<&mut Admission<'_>>,
) -> Result<Answered<Step>, Unanswered> {
    let Lane {
        client,
        pools,
        w,
        req,
        used,
    } = lane;
    let target = route.pick();
    let pool = pools.pool(route, target);
    upstream_request(
        w.upstream,
        route,
        target,
        req,
        key.as_deref().map(Admission::key),
    );
    let head_only = req.method == "HEAD";
    let sent = Instant::now();
    let timer = w
        .deadline
        .arm(tokio::time::Instant::from_std(sent), route.cfg.timeout);
    let exchange = exchange(
        gw,
        target,
        pool,
        req.method.as_bytes(),
        w.upstream,
        w.reply,
        w.out,
        req.close,
        head_only,
        key,
    );
    let result = tokio::select! {
        biased;
        r = exchange => r,
        _ = timer => Err(Failed::Timeout),
    };
    let took = sent.elapsed();
    let (mut upstream, head_len, answer) = match result {
        Ok(r) => r,
        Err(failed) => {
            let err = match failed {
                Failed::Connect => {
                    route.mark_down(target);
                    UpstreamError::Unavailable
                }
                Failed::Io => UpstreamError::Unavailable,
                Failed::Timeout => UpstreamError::Timeout,
            };
            if !matches!(err, UpstreamError::Timeout) {
                tracing::warn!(route = %route.cfg.name, "upstream request failed");
            }
            return Err(Unanswered {
                error: err,
                upstream: took,
            });
        }
    };
    let Answer {
        status,
        mut framing,
        mut reusable,
        close,
    } = answer;
    // The body: what came with the head, then the rest as it arrives. Every wait (for the
    // upstream's next bytes, for the client to take them) is bounded by the route's timeout,
    // so a stalled upstream or a client that stops reading does not pin the task and both
    // connections: past it, both are closed.
    let idle = route.cfg.timeout;
    let mut ok = true;
    let rest = &w.reply[head_len..];
    let mut done = match framing.feed(rest) {
        Ok((n, done)) => {
            reusable &= n == rest.len();
            w.out.extend_from_slice(&rest[..n]);
            done
        }
        Err(()) => {
            ok = false;
            true
        }
    };
    if ok && (!done || w.out.len() > ONE_WRITE) {
        ok = send(client, w.deadline, idle, w.out).await;
        w.out.clear();
    }
    while ok && !done {
        w.reply.clear();
        w.reply.reserve(READ_CHUNK);
        let read = tokio::select! {
            biased;
            r = upstream.read_buf(w.reply) => Some(r),
            _ = w.deadline.arm(tokio::time::Instant::now(), idle) => None,
        };
        match read {
            Some(Ok(0)) => {
                // The end of a close-delimited body; anything else ended early.
                ok = matches!(framing, Framing::Close);
                reusable = false;
                done = true;
            }
            Some(Ok(_)) => match framing.feed(w.reply) {
                Ok((n, end)) => {
                    reusable &= n == w.reply.len();
                    done = end;
                    ok = send(client, w.deadline, idle, &w.reply[..n]).await;
                }
                Err(()) => ok = false,
            },
            Some(Err(_)) | None => ok = false,
        }
    }
    if ok && !w.out.is_empty() {
        ok = send(client, w.deadline, idle, w.out).await;
    }
    if ok && reusable {
        if let Some(pool) = pool {
            pool.put(upstream);
        }
    }
    let step = if ok && !close {
        Step::Next(used)
    } else {
        Step::Close
    };
    Ok(Answered {
        output: step,
        status,
        upstream: took,
    })
}

/// Writes `buf` to the client: at once when the socket takes it all (the usual case: no timer,
/// no `select!`), else waiting at most `idle` for the rest; `false` when it failed or timed out.
async fn send(client: &mut TcpStream, deadline: &mut Deadline, idle: Duration, buf: &[u8]) -> bool {
    let rest = match client.try_write(buf) {
        Ok(n) if n == buf.len() => return true,
        Ok(n) => &buf[n..],
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => buf,
        Err(_) => return false,
    };
    bounded(deadline, idle, client.write_all(rest)).await
}

/// Runs a client write within `idle`; `false` when it failed or timed out.
async fn bounded(
    deadline: &mut Deadline,
    idle: Duration,
    write: impl std::future::Future<Output = io::Result<()>>,
) -> bool {
    tokio::select! {
        biased;
        r = write => r.is_ok(),
        _ = deadline.arm(tokio::time::Instant::now(), idle) => false,
    }
}

/// Sends the request (retrying once on a fresh connection when a pooled one turns out closed),
/// reads the response head and writes the client's head into `out`, with the gateway's headers
/// and the keyed accounting done. Returns the connection, the head's length in `reply` and
/// what the body needs.
#[allow(clippy::too_many_arguments)]
async fn exchange(
    gw: &Gateway,
    target: &Target,
    pool: Option<&Pool>,
    method: &[u8],
    request: &[u8],
    reply: &mut Vec<u8>,
    out: &mut Vec<u8>,
    client_close: bool,
    head_only: bool,
    mut key: Option<&mut Admission<'_>>,
) -> Result<(TcpStream, usize, Answer), Failed> {
    let addr = target.authority.as_ref().ok_or(Failed::Connect)?;
    let connect_timeout = gw.limits.upstream.connect_timeout;
    let (mut up, mut reused) = match pool.and_then(Pool::take) {
        Some(s) => (s, true),
        None => (
            connect(addr, connect_timeout)
                .await
                .map_err(|_| Failed::Connect)?,
            false,
        ),
    };
    reply.clear();
    loop {
        let mut got_any = false;
        // Whether the upstream can have seen any of the request: a first write that fails
        // put nothing on the wire.
        let mut wrote_any = false;
        let written = match up.write(request).await {
            Ok(n) if n > 0 => {
                wrote_any = true;
                up.write_all(&request[n..]).await.is_ok()
            }
            _ => false,
        };
        if written {
            'read: loop {
                reply.reserve(READ_CHUNK);
                match up.read_buf(reply).await {
                    Ok(0) | Err(_) => break 'read,
                    Ok(_) => got_any = true,
                }
                // A 1xx may be followed by the final head in the same read.
                loop {
                    match head(gw, reply, out, client_close, head_only, key.as_deref_mut()) {
                        Ok(Reply::Final(n, answer)) => return Ok((up, n, answer)),
                        Ok(Reply::Informational) => {}
                        Ok(Reply::Partial) => break,
                        Err(()) => return Err(Failed::Io),
                    }
                }
            }
        }
        // A pooled connection the upstream closed while idle: the request goes once more on a
        // fresh connection, but only when that cannot make it happen twice (nothing of it was
        // written, or its method is idempotent): a POST the upstream read before closing may
        // have been processed.
        if !reused || got_any || (wrote_any && !headers::idempotent(method)) {
            return Err(Failed::Io);
        }
        reused = false;
        reply.clear();
        up = connect(addr, connect_timeout)
            .await
            .map_err(|_| Failed::Connect)?;
    }
}

/// What [`head`] found at the front of `reply`.
enum Reply {
    Partial,
    /// A 1xx head, dropped from `reply`.
    Informational,
    /// The final head's length and what follows it.
    Final(usize, Answer),
}

/// Parses a response head in `reply`. On a final head, writes the client's head into `out`
/// and settles an admitted key's units as used (the `RateLimit` headers go in the head).
fn head(
    gw: &Gateway,
    reply: &mut Vec<u8>,
    out: &mut Vec<u8>,
    client_close: bool,
    head_only: bool,
    key: Option<&mut Admission<'_>>,
) -> Result<Reply, ()> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let n = match resp.parse(reply) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if reply.len() < 64 * 1024 => return Ok(Reply::Partial),
        _ => return Err(()),
    };
    let status = resp.code.ok_or(())?;
    if (100..200).contains(&status) {
        if status == 101 {
            return Err(());
        }
        reply.drain(..n);
        return Ok(Reply::Informational);
    }
    let mut framing = if head_only || status == 204 || status == 304 {
        Framing::Empty
    } else {
        Framing::Close
    };
    let mut reusable = resp.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut named: [&[u8]; 8] = [b""; 8];
    let mut named_len = 0;
    for h in resp.headers.iter() {
        if is(h.name, CONTENT_LENGTH) {
            let v = headers::parse_length(h.value).ok_or(())?;
            if length.is_some_and(|l| l != v) {
                return Err(());
            }
            length = Some(v);
        } else if is(h.name, TRANSFER_ENCODING) {
            if !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(());
            }
            chunked = true;
        } else if is(h.name, CONNECTION) {
            for t in h.value.split(|&c| c == b',') {
                let t = t.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    reusable = false;
                } else if named_len < named.len() {
                    named[named_len] = t;
                    named_len += 1;
                }
            }
        }
    }
    // Both framings in one head: the coding wins and the length is dropped (RFC 9112 §6.3),
    // and such a connection is not trusted with another request.
    if chunked && length.is_some() {
        reusable = false;
    }
    if !matches!(framing, Framing::Empty) {
        framing = match (chunked, length) {
            (true, _) => Framing::Chunked(Chunks::START),
            (false, Some(l)) => Framing::Length(l),
            (false, None) => {
                reusable = false;
                Framing::Close
            }
        };
    }
    let close = client_close || matches!(framing, Framing::Close);

    // The client's head.
    let legacy = gw.legacy_headers;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    match http::StatusCode::from_u16(status) {
        Ok(code) => out.extend_from_slice(code.as_str().as_bytes()),
        Err(_) => return Err(()),
    }
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut has_date = false;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        let skip = is_hop(h.name)
            || (chunked && is(h.name, CONTENT_LENGTH))
            || named[..named_len]
                .iter()
                .any(|t| t.eq_ignore_ascii_case(name))
            || (key.is_some() && headers::is_gateway_header(name, legacy));
        if !skip {
            has_date |= is(h.name, b"date");
            put_header(out, name, h.value);
        }
    }
    if !has_date {
        put_date(out);
    }
    if let Some(a) = key {
        a.answered(&mut Head(out));
    }
    if matches!(framing, Framing::Chunked(_)) {
        put_header(out, b"transfer-encoding", b"chunked");
    }
    if close {
        put_header(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Reply::Final(
        n,
        Answer {
            status,
            framing,
            reusable,
            close,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_are_per_address_and_outlive_reloads() {
        let metrics = crate::metrics::Metrics::new();
        let table = |upstreams: &str| {
            let text = format!("[[routes]]\nprefix = \"/a\"\nupstreams = [{upstreams}]\n");
            let cfg = crate::config::parse(&text).unwrap_or_else(|e| panic!("{e:?}"));
            let limits = UpstreamLimits::default();
            RouteTable::build(&cfg.routes, &metrics, Duration::from_secs(5), limits)
        };
        let route = |t: &RouteTable| {
            t.find(None, "/a")
                .cloned()
                .unwrap_or_else(|| panic!("route"))
        };
        let pools = Pools::new(UpstreamLimits::default());
        let first = table(r#""http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:1""#);
        pools.sync(&first);
        assert_eq!(pools.len(), 2);
        let mut conn = ConnPools::new(&pools);
        let old = route(&first);
        let one = conn.pool(&old, &old.targets[0]).map(|p| p as *const Pool);
        assert!(one.is_some());
        // One pool per address, whichever target names it.
        assert_eq!(
            conn.pool(&old, &old.targets[2]).map(|p| p as *const Pool),
            one
        );

        // A reload keeps the pool of an address still named and drops the others.
        let second = table(r#""http://127.0.0.1:3", "http://127.0.0.1:1""#);
        pools.sync(&second);
        let new = route(&second);
        assert_eq!(
            conn.pool(&new, &new.targets[1]).map(|p| p as *const Pool),
            one
        );
        assert_ne!(
            conn.pool(&new, &new.targets[0]).map(|p| p as *const Pool),
            one
        );
        // A request still on the old table finds its address's pool by address, or none.
        assert_eq!(
            conn.pool(&old, &old.targets[0]).map(|p| p as *const Pool),
            one
        );
        assert!(conn.pool(&old, &old.targets[1]).is_none());
    }

    fn whole(input: &[u8]) -> Result<(usize, bool), ()> {
        let mut c = Chunks::START;
        let n = c.feed(input)?;
        Ok((n, c == Chunks::Done))
    }

    #[test]
    fn chunked_bodies_end_where_they_end() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nNEXT";
        assert_eq!(whole(body), Ok((body.len() - 4, true)));
        let trailers = b"3\r\nabc\r\n0\r\nx-t: 1\r\n\r\n";
        assert_eq!(whole(trailers), Ok((trailers.len(), true)));
        assert_eq!(whole(b"A\r\n0123"), Ok((7, false)));
        assert_eq!(whole(b"zz\r\n"), Err(()));
        assert_eq!(whole(b"5\r\nhelloXX"), Err(()));
    }

    #[test]
    fn chunked_bodies_split_anywhere() {
        let body = b"5\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nt: v\r\n\r\n";
        for split in 0..body.len() {
            let mut c = Chunks::START;
            let a = c.feed(&body[..split]).unwrap_or(usize::MAX);
            assert_eq!(a, split);
            let b = c.feed(&body[split..]).unwrap_or(usize::MAX);
            assert_eq!(a + b, body.len(), "split at {split}");
            assert_eq!(c, Chunks::Done, "split at {split}");
        }
    }

    #[test]
    fn lengths_and_closes() {
        let mut f = Framing::Length(5);
        assert_eq!(f.feed(b"abc"), Ok((3, false)));
        assert_eq!(f.feed(b"defg"), Ok((2, true)));
        let mut f = Framing::Close;
        assert_eq!(f.feed(b"abc"), Ok((3, false)));
    }

    #[tokio::test]
    async fn deadlines_move_only_past_their_slack() {
        let mut d = Deadline::new();
        let t0 = tokio::time::Instant::now();
        let ten = Duration::from_secs(10);
        assert_eq!(d.arm(t0, ten).deadline(), t0 + ten);
        // Within the slack (10 s / 16 = 625 ms) the armed deadline stays.
        let t1 = t0 + Duration::from_millis(600);
        assert_eq!(d.arm(t1, ten).deadline(), t0 + ten);
        // Past it, the timer moves.
        let t2 = t0 + Duration::from_millis(700);
        assert_eq!(d.arm(t2, ten).deadline(), t2 + ten);
        // A shorter timeout (another route) moves it back at once.
        let short = Duration::from_millis(50);
        assert_eq!(d.arm(t2, short).deadline(), t2 + short);
        // Long timeouts have at most a second of slack.
        let minute = Duration::from_secs(60);
        assert_eq!(d.arm(t2, minute).deadline(), t2 + minute);
        let t3 = t2 + Duration::from_millis(1100);
        assert_eq!(d.arm(t3, minute).deadline(), t3 + minute);
    }

    #[test]
    fn request_facts() {
        let mut slots = [httparse::EMPTY_HEADER; 8];
        let mut r = httparse::Request::new(&mut slots);
        let _ = r.parse(
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        );
        let f = facts(r.headers).unwrap_or_default();
        assert_eq!((f.host, f.content_length, f.close), (Some("x"), 3, true));
        for other in [
            &b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: ws\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n",
        ] {
            let mut slots = [httparse::EMPTY_HEADER; 8];
            let mut r = httparse::Request::new(&mut slots);
            let _ = r.parse(other);
            assert!(
                facts(r.headers).is_none(),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }
}
