//! Client connections on the main listener: a cap (`max_connections`), idle ones closed first,
//! and an idle timeout that holds for every protocol.
//!
//! Without a cap, connections that send nothing (or only the HTTP/2 preface) hold every file
//! descriptor and ordinary clients time out. At the cap the gateway does what nginx does when
//! it runs out of connections: it closes the least recently active *idle* connection (no
//! request in progress) to make room, so a flood of idle connections cannot lock a working
//! client out; with none idle, the new connection is closed at once.
//!
//! Each connection has a [`Conn`]: two atomics its own task updates when a request starts and
//! ends (no shared lock on the request path, and no clock read: times come from a coarse clock
//! a ticker advances every 100 ms), and a close flag with the task's waker. The table itself is
//! locked only to admit and to remove a connection.

use crate::metrics::Metrics;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Resolution of the connections' activity times.
const TICK: Duration = Duration::from_millis(100);

/// The connection table.
pub struct Conns {
    max: usize,
    epoch: Instant,
    /// Milliseconds since `epoch`, advanced every [`TICK`].
    clock: Arc<AtomicU64>,
    slots: Mutex<Slots>,
    open: AtomicUsize,
    /// Woken when the last connection leaves (shutdown waits on it).
    empty: Notify,
    /// Woken when a connection asked to close is gone (a new one may wait for its place).
    left: Notify,
    /// Counts evictions and refusals, and shows `open`.
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Slots {
    live: Vec<Option<Arc<Conn>>>,
    free: Vec<usize>,
    /// Asked to close, not gone yet.
    closing: usize,
}

/// One client connection's state, shared between its task and the table.
pub struct Conn {
    index: usize,
    /// Requests (h2: streams) being answered.
    busy: AtomicU32,
    /// The table's clock when a request last ended (or the connection was admitted).
    active_ms: AtomicU64,
    /// Asked to close; the task's waker to wake for it (a stale waker only wakes it once more,
    /// so nothing is unregistered: one uncontended lock per wait).
    closing: AtomicBool,
    waker: Mutex<Option<Waker>>,
    clock: Arc<AtomicU64>,
}

impl Conn {
    fn now_ms(&self) -> u64 {
        self.clock.load(Ordering::Relaxed)
    }

    fn ask_to_close(&self) {
        self.closing.store(true, Ordering::Release);
        if let Some(w) = self.waker.lock().take() {
            w.wake();
        }
    }

    fn poll_close(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.closing.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        {
            let mut w = self.waker.lock();
            match &*w {
                Some(old) if old.will_wake(cx.waker()) => {}
                _ => *w = Some(cx.waker().clone()),
            }
        }
        if self.closing.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// A request starts; the returned guard ends it.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.start();
        Busy(self.clone())
    }

    /// A request starts (the fast lane calls `start`/`end` itself: no guard, no `Arc` clone).
    pub fn start(&self) {
        self.busy.fetch_add(1, Ordering::Relaxed);
    }

    pub fn end(&self) {
        self.active_ms.store(self.now_ms(), Ordering::Relaxed);
        self.busy.fetch_sub(1, Ordering::Relaxed);
    }

    /// No request in progress.
    pub fn is_idle(&self) -> bool {
        self.busy.load(Ordering::Relaxed) == 0
    }

    /// How long the connection has had no request in progress (zero while one is).
    pub fn idle_for(&self) -> Duration {
        if self.busy.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let since = self.active_ms.load(Ordering::Relaxed);
        Duration::from_millis(self.now_ms().saturating_sub(since))
    }

    /// Resolves when the table asks this connection to close (to make room).
    pub async fn asked_to_close(&self) {
        std::future::poll_fn(|cx| self.poll_close(cx)).await;
    }
}

/// A request in progress on a connection (hyper's service holds one per request).
pub struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.end();
    }
}

enum Admit {
    Yes(Admitted),
    /// At the cap with nothing idle.
    No,
    /// Enough connections are closing already: wait for one to go.
    Wait,
}

/// A connection's place in the table, given back when dropped.
pub struct Admitted {
    conns: Arc<Conns>,
    pub conn: Arc<Conn>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut s = self.conns.slots.lock();
        if let Some(slot) = s.live.get_mut(self.conn.index) {
            *slot = None;
            s.free.push(self.conn.index);
        }
        let was_closing = self.conn.closing.load(Ordering::Relaxed);
        if was_closing {
            s.closing = s.closing.saturating_sub(1);
        }
        drop(s);
        if was_closing {
            self.conns.left.notify_waiters();
        }
        let before = self.conns.open.fetch_sub(1, Ordering::AcqRel);
        self.conns.metrics.connections_open.store(
            u64::try_from(before.saturating_sub(1)).unwrap_or(0),
            Ordering::Relaxed,
        );
        if before == 1 {
            self.conns.empty.notify_waiters();
        }
    }
}

impl Conns {
    /// The table, and its clock's ticker (which ends with the table).
    pub fn new(max: usize, metrics: Arc<Metrics>) -> Arc<Conns> {
        let conns = Arc::new(Conns {
            max: max.max(1),
            epoch: Instant::now(),
            clock: Arc::new(AtomicU64::new(0)),
            slots: Mutex::new(Slots::default()),
            open: AtomicUsize::new(0),
            empty: Notify::new(),
            left: Notify::new(),
            metrics,
        });
        let table: Weak<Conns> = Arc::downgrade(&conns);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(t) = table.upgrade() else { return };
                let ms = u64::try_from(t.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
                t.clock.store(ms, Ordering::Relaxed);
            }
        });
        conns
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A place for a new connection, or `None` (close it at once). At the cap, the least
    /// recently active idle connection is asked to close to make room. Connections asked
    /// still count until they are gone, up to a quarter of the cap (at least 64) in excess;
    /// past that, a new connection waits (at most 50 ms) for one of them to go.
    pub async fn admit(self: &Arc<Self>) -> Option<Admitted> {
        match self.try_admit() {
            Admit::Wait => {}
            Admit::Yes(a) => return Some(a),
            Admit::No => return None,
        }
        let wait = async {
            loop {
                let left = self.left.notified();
                match self.try_admit() {
                    Admit::Wait => left.await,
                    Admit::Yes(a) => return Some(a),
                    Admit::No => return None,
                }
            }
        };
        match tokio::time::timeout(Duration::from_millis(50), wait).await {
            Ok(a) => a,
            Err(_) => {
                self.metrics.connections_refused.add(1);
                None
            }
        }
    }

    fn try_admit(self: &Arc<Self>) -> Admit {
        let mut s = self.slots.lock();
        let held = self.open.load(Ordering::Relaxed);
        if held.saturating_sub(s.closing) >= self.max {
            if s.closing >= (self.max / 4).max(64) {
                return Admit::Wait;
            }
            let victim = s
                .live
                .iter()
                .flatten()
                .filter(|c| {
                    !c.closing.load(Ordering::Relaxed) && c.busy.load(Ordering::Relaxed) == 0
                })
                .min_by_key(|c| c.active_ms.load(Ordering::Relaxed))
                .cloned();
            let Some(victim) = victim else {
                self.metrics.connections_refused.add(1);
                return Admit::No;
            };
            victim.ask_to_close();
            s.closing += 1;
            self.metrics.connections_evicted.add(1);
        }
        let index = s.free.pop().unwrap_or(s.live.len());
        let conn = Arc::new(Conn {
            index,
            busy: AtomicU32::new(0),
            active_ms: AtomicU64::new(self.clock.load(Ordering::Relaxed)),
            closing: AtomicBool::new(false),
            waker: Mutex::new(None),
            clock: self.clock.clone(),
        });
        if index == s.live.len() {
            s.live.push(Some(conn.clone()));
        } else {
            s.live[index] = Some(conn.clone());
        }
        let now_open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        self.metrics.connections_open.store(
            u64::try_from(now_open).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.metrics.connections.add(1);
        Admit::Yes(Admitted {
            conns: self.clone(),
            conn,
        })
    }

    /// Waits until every connection is gone, at most `limit`; `false` if some are left.
    pub async fn drained(&self, limit: Duration) -> bool {
        let wait = async {
            loop {
                let empty = self.empty.notified();
                if self.open() == 0 {
                    return;
                }
                empty.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn at_the_cap_the_oldest_idle_connection_makes_room() {
        let conns = Conns::new(2, Arc::new(Metrics::new()));
        let a = conns.admit().await.unwrap_or_else(|| panic!("a"));
        tokio::time::sleep(TICK * 2).await;
        let b = conns.admit().await.unwrap_or_else(|| panic!("b"));
        // `b` is busy, `a` idle and older: `a` is asked to close.
        let _req = b.conn.begin();
        let c = conns.admit().await.unwrap_or_else(|| panic!("c"));
        tokio::time::timeout(Duration::from_secs(1), a.conn.asked_to_close())
            .await
            .unwrap_or_else(|_| panic!("a was not asked to close"));
        assert_eq!(conns.metrics.connections_evicted.get(), 1);
        // Nothing idle and not already closing: the next one is refused.
        let _req_c = c.conn.begin();
        assert!(conns.admit().await.is_none());
        assert_eq!(conns.metrics.connections_refused.get(), 1);
        drop(a);
        assert_eq!(conns.open(), 2);
        drop((b, c, _req, _req_c));
        assert!(conns.drained(Duration::from_millis(100)).await);
    }

    #[tokio::test]
    async fn idle_time_counts_from_the_last_request() {
        let conns = Conns::new(4, Arc::new(Metrics::new()));
        let a = conns.admit().await.unwrap_or_else(|| panic!("a"));
        let req = a.conn.begin();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(a.conn.idle_for(), Duration::ZERO);
        drop(req);
        assert!(a.conn.idle_for() <= TICK);
        tokio::time::sleep(TICK * 3).await;
        assert!(a.conn.idle_for() >= TICK);
    }
}
