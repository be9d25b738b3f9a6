//! Rate limiting of deny log lines: a flood of denials from one source to
//! one workload logs a few lines a second and says how many it held back.
//! Counters and metrics are never limited. The event reader applies it, so
//! a flood never reaches the state task's queue (where a policy reload
//! would wait behind it).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// Lines per key per window.
const BURST: u32 = 5;
const WINDOW: Duration = Duration::from_secs(1);
/// Keys tracked at once; past this the table starts afresh.
const MAX_KEYS: usize = 16_384;

/// (source identity, destination workload, reason, hook).
pub(super) type Key = (u32, u32, u8, u8);

#[derive(Debug)]
pub(super) struct LogLimit {
    keys: HashMap<Key, Window>,
    /// Lines held back in all, shared with whoever reports it.
    suppressed: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    logged: u32,
    held_back: u64,
}

impl LogLimit {
    /// A limit that counts the lines it holds back in `suppressed`.
    pub fn new(suppressed: Arc<AtomicU64>) -> Self {
        Self {
            keys: HashMap::new(),
            suppressed,
        }
    }

    /// `Some(n)` if this line should be logged now, `n` being the lines for
    /// the same key held back since the last one logged; `None` to hold it.
    pub fn admit(&mut self, key: Key, now: Instant) -> Option<u64> {
        if self.keys.len() >= MAX_KEYS && !self.keys.contains_key(&key) {
            self.keys.clear();
        }
        let w = self.keys.entry(key).or_insert(Window {
            start: now,
            logged: 0,
            held_back: 0,
        });
        if now.duration_since(w.start) >= WINDOW {
            w.start = now;
            w.logged = 0;
        }
        if w.logged < BURST {
            w.logged += 1;
            Some(std::mem::take(&mut w.held_back))
        } else {
            w.held_back += 1;
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_logs_a_burst_a_second_and_reports_what_it_held_back() {
        let suppressed = Arc::default();
        let mut limit = LogLimit::new(Arc::clone(&suppressed));
        let t0 = Instant::now();
        let key = (1, 2, 3, 4);
        for _ in 0..BURST {
            assert_eq!(limit.admit(key, t0), Some(0));
        }
        for _ in 0..10 {
            assert_eq!(limit.admit(key, t0), None);
        }
        // Another key is not affected.
        assert_eq!(limit.admit((9, 2, 3, 4), t0), Some(0));
        assert_eq!(limit.admit(key, t0 + WINDOW), Some(10));
        assert_eq!(suppressed.load(Ordering::Relaxed), 10);
    }
}
