//! Deferring per-channel work to the end of a batch.
//!
//! The store's confirmer thread completes many publishes at once; without
//! this, each completion would send its own basic.ack. Only that thread runs
//! batches (`store::rocks::confirmer`). Inside `run`, channels register
//! themselves with `defer` instead of flushing, and each registered channel
//! flushes once when the batch ends: one `multiple=true` ack per channel per
//! commit. Outside a batch, `defer` returns false and the caller flushes now.

use std::cell::RefCell;
use std::sync::Arc;

/// Something with pending output to send once per batch.
pub trait Flush: Send + Sync {
    fn flush(&self);
}

thread_local! {
    static DEFERRED: RefCell<Option<Vec<Arc<dyn Flush>>>> = const { RefCell::new(None) };
}

/// Run `f`, then flush everything it deferred, each once.
pub fn run(f: impl FnOnce()) {
    let outer = DEFERRED.with(|d| d.borrow_mut().replace(Vec::new()));
    f();
    let deferred = DEFERRED.with(|d| std::mem::replace(&mut *d.borrow_mut(), outer));
    let mut done: Vec<*const ()> = Vec::new();
    for item in deferred.unwrap_or_default() {
        let key = Arc::as_ptr(&item) as *const ();
        if !done.contains(&key) {
            done.push(key);
            item.flush();
        }
    }
}

/// Defer `item`'s flush to the end of the current batch; false when no batch
/// is running (the caller should flush now).
pub fn defer(item: Arc<dyn Flush>) -> bool {
    DEFERRED.with(|d| match d.borrow_mut().as_mut() {
        Some(v) => {
            v.push(item);
            true
        }
        None => false,
    })
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
        assert!(!defer(c.clone()), "no batch running");
        run(|| {
            for _ in 0..5 {
                assert!(defer(c.clone()));
            }
            assert_eq!(c.0.load(Ordering::Relaxed), 0, "not before the end");
        });
        assert_eq!(c.0.load(Ordering::Relaxed), 1);
        assert!(!defer(c.clone()), "batch over");
    }
}
