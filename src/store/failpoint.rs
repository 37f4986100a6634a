//! Fault injection for tests: hold the committer before its next write, or
//! make its next writes fail, so tests can stop "between two synced batches"
//! deterministically instead of racing a kill against a sleep.
//!
//! Owns nothing but two switches; unarmed, the committer pays one atomic load
//! per batch. Never used by the broker itself.

use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

#[derive(Debug, Default)]
pub struct FailPoints {
    /// Fast path: nothing is set.
    armed: AtomicBool,
    held: Mutex<bool>,
    released: Condvar,
    /// Writes still to fail.
    fail_writes: AtomicU32,
    /// Batches that reached `before_write` while held (for tests to wait on).
    waiting: AtomicU32,
}

impl FailPoints {
    /// The committer stops before its next write until `release`.
    pub fn hold(&self) {
        *self.held.lock() = true;
        self.armed.store(true, Ordering::Release);
    }

    pub fn release(&self) {
        *self.held.lock() = false;
        self.released.notify_all();
    }

    /// The next `n` batch writes fail as a disk error would.
    pub fn fail_next_writes(&self, n: u32) {
        self.fail_writes.store(n, Ordering::Release);
        self.armed.store(true, Ordering::Release);
    }

    /// Whether the committer is stopped at the fail point with a batch.
    pub fn is_waiting(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }

    /// Called by the committer before writing a batch: blocks while held;
    /// true when this write must fail.
    pub(crate) fn before_write(&self) -> bool {
        if !self.armed.load(Ordering::Acquire) {
            return false;
        }
        {
            let mut held = self.held.lock();
            if *held {
                self.waiting.fetch_add(1, Ordering::AcqRel);
                while *held {
                    self.released.wait(&mut held);
                }
                self.waiting.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.fail_writes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn hold_blocks_until_release_and_failures_count_down() {
        let fp = Arc::new(FailPoints::default());
        assert!(!fp.before_write(), "unarmed");
        fp.fail_next_writes(2);
        assert!(fp.before_write());
        assert!(fp.before_write());
        assert!(!fp.before_write());
        fp.hold();
        let f = fp.clone();
        let t = std::thread::spawn(move || f.before_write());
        while !fp.is_waiting() {
            std::thread::yield_now();
        }
        fp.release();
        assert!(!t.join().unwrap());
    }
}
