//! A batch: work whose per-channel output is sent once, at the batch's end.
//!
//! The store's confirmer completes many publishes at once, and a connection
//! handles many frames per read burst; without a batch each completed publish
//! would send its own basic.ack. Whoever completes publishes holds a `Batch`
//! and passes it down (store completions, the publish path, deduplication
//! waiters): a channel with acks to send registers itself with `defer`, and
//! each registered channel flushes once when the batch ends (`finish`, or
//! drop): one `multiple=true` ack per channel per batch. The batch is an
//! explicit value, so behaviour never depends on which thread runs the code.

use std::sync::Arc;

/// Something with pending output to send once per batch.
pub trait Flush: Send + Sync {
    fn flush(&self);
}

/// Output deferred to the end of a batch of work.
#[derive(Default)]
pub struct Batch {
    deferred: Vec<Arc<dyn Flush>>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("deferred", &self.deferred.len())
            .finish()
    }
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Flush `item` once when this batch ends (registering it again is free).
    pub fn defer(&mut self, item: Arc<dyn Flush>) {
        let key = Arc::as_ptr(&item) as *const ();
        // Batches hold a few channels: a linear scan beats hashing.
        if !self
            .deferred
            .iter()
            .any(|d| Arc::as_ptr(d) as *const () == key)
        {
            self.deferred.push(item);
        }
    }

    /// Flush everything deferred so far, each once; the batch stays usable.
    pub fn flush(&mut self) {
        for item in std::mem::take(&mut self.deferred) {
            item.flush();
        }
    }

    /// End the batch (the same as dropping it, spelled out).
    pub fn finish(mut self) {
        self.flush();
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Run `f` in a new batch and flush it at the end.
pub fn run<R>(f: impl FnOnce(&mut Batch) -> R) -> R {
    let mut batch = Batch::new();
    let r = f(&mut batch);
    batch.finish();
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counter(AtomicUsize);
    impl Flush for Counter {
        fn flush(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn flushes_each_once_after_the_batch() {
        let c = Arc::new(Counter(AtomicUsize::new(0)));
        run(|b| {
            for _ in 0..5 {
                b.defer(c.clone());
            }
            assert_eq!(c.0.load(Ordering::Relaxed), 0, "not before the end");
        });
        assert_eq!(c.0.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn dropping_a_batch_flushes_it_and_flush_empties_it() {
        let c = Arc::new(Counter(AtomicUsize::new(0)));
        let mut b = Batch::new();
        b.defer(c.clone());
        b.flush();
        b.flush();
        assert_eq!(c.0.load(Ordering::Relaxed), 1, "flushed once");
        b.defer(c.clone());
        drop(b);
        assert_eq!(c.0.load(Ordering::Relaxed), 2, "drop flushes what is left");
    }
}
