//! tollgate benchmarks.
//!
//! # Layout
//! - `benches/hot_path.rs`: Criterion micro-benchmarks of the gateway's request-path pieces
//!   (key extraction + hash + replica lookup, quota check-and-count, header rendering).
//! - `src/bin/seed_keys.rs`: mints N keys with never-rejecting per-key limits through the backend
//!   library into a data directory (one user per key) and writes the key texts for wrk.
//! - `src/bin/snapshot_keys.rs`: writes a replica snapshot with N keys through the gateway's own
//!   `Replica` API, for the 1 M-key memory and load-time figure.
//! - `run.sh`: the load benchmark, gateway side by side with nginx; writes `RESULTS.md`.
//! - `nginx/*.conf`: the upstream (`return 200`) and the nginx reverse proxy it is compared with.

/// Limits high enough that a benchmark key is never refused (the backend's per-key maximum).
pub const NEVER_REJECT: u64 = 1_000_000_000;

/// A small, fast, deterministic PRNG (xorshift64*) so benchmarks need no `rand` crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-enough index below `n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        let n64 = u64::try_from(n).unwrap_or(u64::MAX).max(1);
        usize::try_from(self.next_u64() % n64).unwrap_or(0)
    }
}
