//! One thread for the gateway's background work — building and journalling usage batches,
//! saving key snapshots — at the lowest CPU priority (nice 19).
//!
//! On a machine where the async workers have their cores to themselves this changes nothing.
//! Where they share a core with it (a one-core container, or `taskset` as in `benches/`), the
//! kernel runs this thread in the time the workers leave and preempts it as soon as one has
//! something to do, instead of giving it a time slice during which every connection waits: a
//! 10 k-key usage cut is ~3 ms of CPU, which otherwise lands in the request latency's tail.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::OnceLock;

type Job = Box<dyn FnOnce() + Send>;

/// The job panicked (the thread itself goes on), or the thread could not be started.
#[derive(Debug)]
pub struct Failed(pub String);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failed {}

/// The background thread's queue, started on first use (None if it could not be started).
fn queue() -> Option<&'static mpsc::Sender<Job>> {
    static QUEUE: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name("tollgate-background".to_string())
                .spawn(move || {
                    lowest_priority();
                    for job in rx {
                        job();
                    }
                })
                .map_err(|e| tracing::error!(error = %e, "background thread not started"))
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// Nice 19 for the calling thread (on Linux the nice value is per thread). Failure only
/// costs the benefit, so it is logged and ignored. The crate's only `unsafe`: two libc calls
/// with integer arguments.
#[allow(unsafe_code)]
fn lowest_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on the calling thread, no pointers.
        let rc = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, 19)
        };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "background thread keeps its priority");
        }
    }
}

/// Runs `f` on the background thread and waits for its result.
pub async fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Failed> {
    let (done, result) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let out = catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_string());
            Failed(format!("background job failed: {what}"))
        });
        let _ = done.send(out);
    });
    match queue() {
        Some(tx) => tx
            .send(job)
            .map_err(|_| Failed("background thread is gone".to_string()))?,
        None => return Err(Failed("background thread could not be started".to_string())),
    }
    result
        .await
        .map_err(|_| Failed("background thread is gone".to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_in_order_and_survives_a_panic() {
        assert_eq!(run(|| 2 + 2).await.expect("job"), 4);
        let e = run(|| -> u8 { panic!("boom") })
            .await
            .expect_err("panicked");
        assert!(e.0.contains("boom"), "{e}");
        let name = run(|| std::thread::current().name().map(str::to_string))
            .await
            .expect("job");
        assert_eq!(name.as_deref(), Some("tollgate-background"));
        #[cfg(target_os = "linux")]
        {
            // The thread's own nice value, from /proc (field 19 of its stat line).
            let nice = run(|| {
                let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
                let after = stat.rsplit_once(") ").expect("comm").1.to_string();
                after
                    .split(' ')
                    .nth(16)
                    .expect("nice")
                    .parse::<i32>()
                    .expect("number")
            })
            .await
            .expect("job");
            assert_eq!(nice, 19);
        }
    }
}
