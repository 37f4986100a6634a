//! The store's health: whether its writes work, and the way back from a
//! failed write without a restart.
//!
//! A write the disk refuses (full filesystem, an I/O error) leaves RocksDB in
//! a background-error state in which every later write fails too, until it
//! is resumed. `Recovery` is the committer's side of that: it reports the
//! failure once (in the log, and on a `watch` that the broker's disk watcher
//! turns into the disk alarm, so publishers are blocked instead of being fed
//! nacks), tries to resume with exponential backoff while the committer has
//! nothing else to do, and reports once that writes work again.
//!
//! This module must never name the broker (the store sits below it) nor
//! RocksDB (`rocks` supplies the resume step); it never sleeps: the
//! committer waits for its next operation for as long as `due_in` says.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Whether the store accepts writes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Health {
    #[default]
    Ok,
    /// Writes fail; the text is the first error.
    Failing(String),
}

impl Health {
    pub fn is_failing(&self) -> bool {
        matches!(self, Health::Failing(_))
    }
}

/// The first resume attempt comes this long after a failed write.
pub const FIRST_RETRY: Duration = Duration::from_millis(100);
/// Attempts back off (doubling) to at most this far apart: freed space is
/// noticed within a few seconds, and a dead disk costs one try per interval.
pub const MAX_RETRY: Duration = Duration::from_secs(5);

/// The committer's record of failed writes and its attempts to resume.
#[derive(Debug)]
pub struct Recovery {
    tx: watch::Sender<Health>,
    first_retry: Duration,
    max_retry: Duration,
    /// When the first write failed, while writes fail.
    down_since: Option<Instant>,
    retry_in: Duration,
    next_attempt: Option<Instant>,
    attempts: u32,
    failed_writes: u64,
}

impl Default for Recovery {
    fn default() -> Self {
        Recovery::with_backoff(FIRST_RETRY, MAX_RETRY)
    }
}

impl Recovery {
    pub fn with_backoff(first_retry: Duration, max_retry: Duration) -> Recovery {
        Recovery {
            tx: watch::channel(Health::Ok).0,
            first_retry,
            max_retry: max_retry.max(first_retry),
            down_since: None,
            retry_in: first_retry,
            next_attempt: None,
            attempts: 0,
            failed_writes: 0,
        }
    }

    /// Follow the store's health (the broker's disk watcher does).
    pub fn subscribe(&self) -> watch::Receiver<Health> {
        self.tx.subscribe()
    }

    pub fn is_down(&self) -> bool {
        self.down_since.is_some()
    }

    /// Record the outcome of a write of `messages` persistent messages.
    pub fn write_result<E: std::fmt::Display>(
        &mut self,
        now: Instant,
        result: &Result<(), E>,
        messages: usize,
    ) {
        match result {
            Ok(()) => self.back(now, "a write succeeded"),
            Err(e) => {
                self.failed_writes += 1;
                if self.down_since.is_some() {
                    // Said once already; the publishes are nacked all the same.
                    tracing::debug!(error = %e, messages, "store write failed again");
                    return;
                }
                tracing::error!(
                    error = %e,
                    messages,
                    "store write failed: its publishes are nacked and publishers blocked \
                     (disk alarm) until the store resumes; retrying"
                );
                self.down_since = Some(now);
                self.retry_in = self.first_retry;
                self.next_attempt = Some(now + self.first_retry);
                self.attempts = 0;
                self.failed_writes = 1;
                self.tx.send_replace(Health::Failing(e.to_string()));
            }
        }
    }

    /// How long the committer may wait for work before it should try to
    /// resume: `None` while healthy (wait for ever), zero when an attempt is due.
    pub fn due_in(&self, now: Instant) -> Option<Duration> {
        self.next_attempt
            .map(|at| at.saturating_duration_since(now))
    }

    /// One attempt to resume; on failure the next one is scheduled twice as
    /// far off (up to the maximum).
    pub fn try_resume(&mut self, now: Instant, resume: impl FnOnce() -> Result<(), String>) {
        if !self.is_down() {
            return;
        }
        self.attempts += 1;
        match resume() {
            Ok(()) => self.back(now, "resumed"),
            Err(e) => {
                tracing::debug!(error = %e, attempt = self.attempts, "store resume failed");
                self.retry_in = (self.retry_in * 2).min(self.max_retry);
                self.next_attempt = Some(now + self.retry_in);
            }
        }
    }

    fn back(&mut self, now: Instant, how: &str) {
        let Some(since) = self.down_since.take() else {
            return;
        };
        tracing::warn!(
            down_for_ms = now.saturating_duration_since(since).as_millis() as u64,
            failed_writes = self.failed_writes,
            attempts = self.attempts,
            how,
            "store writes work again: disk alarm cleared"
        );
        self.next_attempt = None;
        self.retry_in = self.first_retry;
        self.tx.send_replace(Health::Ok);
    }
}

/// Wait for the committer's next operation; while the store is down, try to
/// resume it whenever an attempt is due. `None` once every sender is gone.
pub fn next_op<T>(
    rx: &Receiver<T>,
    recovery: &mut Recovery,
    mut resume: impl FnMut() -> Result<(), String>,
) -> Option<T> {
    loop {
        let now = Instant::now();
        match recovery.due_in(now) {
            None => return rx.recv().ok(),
            Some(wait) if wait.is_zero() => recovery.try_resume(now, &mut resume),
            Some(wait) => match rx.recv_timeout(wait) {
                Ok(op) => return Some(op),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn fail() -> Result<(), &'static str> {
        Err("IO error: No space left on device")
    }

    #[test]
    fn healthy_store_never_retries() {
        let mut r = Recovery::default();
        let now = Instant::now();
        r.write_result(now, &Ok::<(), String>(()), 1);
        assert_eq!(r.due_in(now), None);
        assert_eq!(*r.subscribe().borrow(), Health::Ok);
        let mut called = false;
        r.try_resume(now, || {
            called = true;
            Ok(())
        });
        assert!(!called, "nothing to resume");
    }

    #[test]
    fn failure_is_reported_once_and_retried_with_doubling_backoff() {
        let mut r = Recovery::with_backoff(Duration::from_millis(100), Duration::from_millis(500));
        let health = r.subscribe();
        let t0 = Instant::now();
        r.write_result(t0, &fail(), 3);
        assert!(health.borrow().is_failing());
        assert!(health.has_changed().unwrap());
        assert_eq!(r.due_in(t0), Some(Duration::from_millis(100)));
        // More failed writes while down change nothing (no new report, same schedule).
        let mut h2 = r.subscribe();
        h2.borrow_and_update();
        r.write_result(t0 + Duration::from_millis(10), &fail(), 1);
        assert!(!h2.has_changed().unwrap());
        assert_eq!(r.due_in(t0), Some(Duration::from_millis(100)));

        let mut t = t0 + Duration::from_millis(100);
        let mut gaps = Vec::new();
        for _ in 0..5 {
            assert_eq!(r.due_in(t), Some(Duration::ZERO));
            r.try_resume(t, || Err("still full".into()));
            let gap = r.due_in(t).unwrap();
            gaps.push(gap.as_millis());
            t += gap;
        }
        assert_eq!(gaps, vec![200, 400, 500, 500, 500]);
        assert!(health.borrow().is_failing());

        r.try_resume(t, || Ok(()));
        assert_eq!(*health.borrow(), Health::Ok);
        assert_eq!(r.due_in(t), None);
        assert!(!r.is_down());

        // A later failure starts the backoff afresh.
        r.write_result(t, &fail(), 1);
        assert_eq!(r.due_in(t), Some(Duration::from_millis(100)));
    }

    #[test]
    fn a_write_that_works_again_clears_the_failure() {
        // RocksDB may resume by itself: the next good write is proof enough.
        let mut r = Recovery::default();
        let health = r.subscribe();
        let t0 = Instant::now();
        r.write_result(t0, &fail(), 1);
        r.write_result(t0, &Ok::<(), &str>(()), 1);
        assert_eq!(*health.borrow(), Health::Ok);
        assert_eq!(r.due_in(t0), None);
    }

    #[test]
    fn next_op_resumes_while_idle_then_waits_for_work() {
        let mut r = Recovery::with_backoff(Duration::from_millis(1), Duration::from_millis(4));
        let health = r.subscribe();
        r.write_result(Instant::now(), &fail(), 1);
        let (tx, rx) = mpsc::channel::<u32>();
        let mut tries = 0;
        // The third attempt succeeds and queues an op: next_op returns it,
        // having retried on its own while no work came.
        let op = next_op(&rx, &mut r, || {
            tries += 1;
            if tries < 3 {
                return Err("full".into());
            }
            tx.send(7).map_err(|e| e.to_string())
        });
        assert_eq!(op, Some(7));
        assert_eq!(tries, 3);
        assert_eq!(*health.borrow(), Health::Ok);
        drop(tx);
        assert_eq!(next_op(&rx, &mut r, || Ok(())), None);
    }

    #[test]
    fn work_arriving_while_down_is_returned_at_once() {
        let mut r = Recovery::with_backoff(Duration::from_secs(3600), Duration::from_secs(3600));
        r.write_result(Instant::now(), &fail(), 1);
        let (tx, rx) = mpsc::channel::<u32>();
        tx.send(1).unwrap();
        assert_eq!(next_op(&rx, &mut r, || Ok(())), Some(1));
        assert!(r.is_down(), "no attempt was due yet");
        drop(tx);
        assert_eq!(next_op(&rx, &mut r, || Ok(())), None);
    }
}
