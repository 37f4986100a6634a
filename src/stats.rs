//! Counters for the management API and Prometheus, built so that counting
//! costs nothing measurable on the publish and deliver paths.
//!
//! Three kinds, chosen by who writes:
//! - `Counter`: one writer at a time (the task that owns the object, or
//!   whoever holds the lock that serialises the writes). `add` is a relaxed
//!   load and store: plain `mov`s, no locked instruction; readers on other
//!   threads see a recent value.
//! - `Sharded`: any thread may write (an exchange's publishes come from every
//!   channel). One cache line per shard, chosen by thread, so writers on
//!   different cores never share a line; readers sum the shards.
//! - plain `u64` fields inside state a lock already guards (a queue's counts
//!   live in its state, under its mutex).
//!
//! Nothing here is ever a single atomic that every message of the broker
//! touches. This module names nothing else in the crate.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A counter with one writer at a time (see the module comment).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add `n`. The caller is the only writer now (it owns the object or
    /// holds the lock that serialises writers): a relaxed load then store.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Add `n` when writers may race (rare events only).
    pub fn add_shared(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

const SHARDS: usize = 8;

#[derive(Debug, Default)]
#[repr(align(64))]
struct Line(AtomicU64);

/// A counter any thread may bump, sharded by thread (see the module comment).
#[derive(Debug, Default)]
pub struct Sharded([Line; SHARDS]);

/// This thread's shard: assigned round-robin on first use, then a plain
/// thread-local read (a `const` initialiser needs no lazy-init check).
#[inline]
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
    }
    SHARD.with(|s| {
        let mut i = s.get();
        if i == usize::MAX {
            i = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
            s.set(i);
        }
        i
    })
}

impl Sharded {
    #[inline]
    pub fn add(&self, n: u64) {
        // shard() < SHARDS: the index never fails.
        self.0[shard() % SHARDS].0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.iter().map(|l| l.0.load(Ordering::Relaxed)).sum()
    }
}

/// Upper bounds of `rabbitmq_message_size_bytes` (the last bucket is +Inf).
pub const MESSAGE_SIZE_BOUNDS: [u64; 8] = [
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
];

/// Which `MESSAGE_SIZE_BOUNDS` bucket a size falls in (8 = +Inf).
#[inline]
pub fn size_bucket(size: u64) -> usize {
    MESSAGE_SIZE_BOUNDS.partition_point(|&b| b < size)
}

/// A channel's (or a connection's, or the broker's) message counts, in
/// RabbitMQ's `message_stats` terms. Plain numbers: a snapshot or a sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MsgCounts {
    pub publish: u64,
    pub confirm: u64,
    pub return_unroutable: u64,
    /// Published messages that reached no queue (returned or dropped).
    pub unroutable: u64,
    /// Published messages that reached at least one queue.
    pub routed: u64,
    /// Publishes on a channel in confirm mode.
    pub publish_confirm: u64,
    pub deliver: u64,
    pub deliver_no_ack: u64,
    pub get: u64,
    pub get_no_ack: u64,
    pub get_empty: u64,
    pub redeliver: u64,
    pub ack: u64,
    /// Published message sizes by `MESSAGE_SIZE_BOUNDS` bucket (+Inf last).
    pub sizes: [u64; 9],
    pub size_sum: u64,
}

impl MsgCounts {
    pub fn deliver_get(&self) -> u64 {
        self.deliver + self.deliver_no_ack + self.get + self.get_no_ack
    }
}

impl std::ops::AddAssign for MsgCounts {
    fn add_assign(&mut self, o: MsgCounts) {
        self.publish += o.publish;
        self.confirm += o.confirm;
        self.return_unroutable += o.return_unroutable;
        self.unroutable += o.unroutable;
        self.routed += o.routed;
        self.publish_confirm += o.publish_confirm;
        self.deliver += o.deliver;
        self.deliver_no_ack += o.deliver_no_ack;
        self.get += o.get;
        self.get_no_ack += o.get_no_ack;
        self.get_empty += o.get_empty;
        self.redeliver += o.redeliver;
        self.ack += o.ack;
        for (a, b) in self.sizes.iter_mut().zip(o.sizes) {
            *a += b;
        }
        self.size_sum += o.size_sum;
    }
}

/// A channel's live counters. Each field has one writer at a time: the
/// connection's reader task (publishes, acks, get-empty), the channel's
/// `delivery` lock holder (deliveries, gets).
/// `return_unroutable` is written with `add_shared`. Confirms are counted in
/// the channel's confirm state, under its lock.
#[derive(Debug, Default)]
pub struct ChannelCounters {
    pub publish: Counter,
    pub publish_confirm: Counter,
    pub routed: Counter,
    pub unroutable: Counter,
    pub return_unroutable: Counter,
    pub deliver: Counter,
    pub deliver_no_ack: Counter,
    pub get: Counter,
    pub get_no_ack: Counter,
    pub get_empty: Counter,
    pub redeliver: Counter,
    pub ack: Counter,
    sizes: [Counter; 9],
    size_sum: Counter,
}

impl ChannelCounters {
    /// A publish of `size` body bytes (reader task).
    #[inline]
    pub fn published(&self, size: u64, confirm: bool) {
        self.publish.add(1);
        if confirm {
            self.publish_confirm.add(1);
        }
        self.sizes[size_bucket(size)].add(1);
        self.size_sum.add(size);
    }

    pub fn snapshot(&self) -> MsgCounts {
        let mut sizes = [0u64; 9];
        for (s, c) in sizes.iter_mut().zip(&self.sizes) {
            *s = c.get();
        }
        MsgCounts {
            publish: self.publish.get(),
            confirm: 0,
            return_unroutable: self.return_unroutable.get(),
            unroutable: self.unroutable.get(),
            routed: self.routed.get(),
            publish_confirm: self.publish_confirm.get(),
            deliver: self.deliver.get(),
            deliver_no_ack: self.deliver_no_ack.get(),
            get: self.get.get(),
            get_no_ack: self.get_no_ack.get(),
            get_empty: self.get_empty.get(),
            redeliver: self.redeliver.get(),
            ack: self.ack.get(),
            sizes,
            size_sum: self.size_sum.get(),
        }
    }
}

/// A queue's `message_stats` counts: plain numbers kept in the queue's
/// state, under the mutex every enqueue, delivery and ack kick takes anyway.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub publish: u64,
    pub deliver: u64,
    pub deliver_no_ack: u64,
    pub get: u64,
    pub get_no_ack: u64,
    pub get_empty: u64,
    pub redeliver: u64,
    pub ack: u64,
}

impl QueueCounts {
    pub fn deliver_get(&self) -> u64 {
        self.deliver + self.deliver_no_ack + self.get + self.get_no_ack
    }
}

/// Bytes and reads/writes of one connection's socket. The reader task
/// writes the `recv` pair, the writer task the `send` pair.
#[derive(Debug, Default)]
pub struct IoCounters {
    pub recv_oct: Counter,
    pub recv_cnt: Counter,
    pub send_oct: Counter,
    pub send_cnt: Counter,
}

/// A snapshot of `IoCounters`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoCounts {
    pub recv_oct: u64,
    pub recv_cnt: u64,
    pub send_oct: u64,
    pub send_cnt: u64,
}

impl IoCounters {
    pub fn snapshot(&self) -> IoCounts {
        IoCounts {
            recv_oct: self.recv_oct.get(),
            recv_cnt: self.recv_cnt.get(),
            send_oct: self.send_oct.get(),
            send_cnt: self.send_cnt.get(),
        }
    }
}

impl std::ops::AddAssign for IoCounts {
    fn add_assign(&mut self, o: IoCounts) {
        self.recv_oct += o.recv_oct;
        self.recv_cnt += o.recv_cnt;
        self.send_oct += o.send_oct;
        self.send_cnt += o.send_cnt;
    }
}

/// A histogram over fixed upper bounds (plus +Inf), written by one thread
/// (`Counter`s): the store's committer records batch sizes and latencies.
#[derive(Debug)]
pub struct Histogram {
    pub bounds: &'static [u64],
    buckets: Vec<Counter>,
    sum: Counter,
}

/// A snapshot of a `Histogram`: per-bucket (not cumulative) counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistogramCounts {
    pub buckets: Vec<u64>,
    pub sum: u64,
}

impl HistogramCounts {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &HistogramCounts) -> HistogramCounts {
        HistogramCounts {
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .map(|(i, b)| b.saturating_sub(earlier.buckets.get(i).copied().unwrap_or(0)))
                .collect(),
            sum: self.sum.saturating_sub(earlier.sum),
        }
    }

    /// The `q` quantile (0..=1), interpolated linearly inside its bucket as
    /// Prometheus' `histogram_quantile` does; the +Inf bucket answers its
    /// lower bound. None without observations.
    pub fn quantile(&self, bounds: &[u64], q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n > 0 && (seen + n) as f64 >= rank {
                let lower = if i == 0 { 0 } else { bounds[i - 1] } as f64;
                let Some(&upper) = bounds.get(i) else {
                    return Some(lower);
                };
                let within = (rank - seen as f64) / n as f64;
                return Some(lower + (upper as f64 - lower) * within);
            }
            seen += n;
        }
        bounds.last().map(|&b| b as f64)
    }
}

impl Histogram {
    pub fn new(bounds: &'static [u64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| Counter::default()).collect(),
            sum: Counter::default(),
        }
    }

    /// Record one observation (single writer).
    #[inline]
    pub fn record(&self, v: u64) {
        let i = self.bounds.partition_point(|&b| b < v);
        if let Some(b) = self.buckets.get(i) {
            b.add(1);
        }
        self.sum.add(v);
    }

    pub fn snapshot(&self) -> HistogramCounts {
        HistogramCounts {
            buckets: self.buckets.iter().map(Counter::get).collect(),
            sum: self.sum.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_buckets_use_upper_bounds_inclusive() {
        assert_eq!(size_bucket(0), 0);
        assert_eq!(size_bucket(100), 0);
        assert_eq!(size_bucket(101), 1);
        assert_eq!(size_bucket(1024), 2);
        assert_eq!(size_bucket(100_000_000), 7);
        assert_eq!(size_bucket(100_000_001), 8);
    }

    #[test]
    fn sharded_sums_across_threads() {
        let s = std::sync::Arc::new(Sharded::default());
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| s.add(1)))
            })
            .collect();
        hs.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(s.get(), 4000);
    }

    #[test]
    fn histogram_quantiles_interpolate() {
        static B: [u64; 3] = [10, 100, 1000];
        let h = Histogram::new(&B);
        for _ in 0..50 {
            h.record(5);
        }
        for _ in 0..50 {
            h.record(50);
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 100);
        assert_eq!(s.sum, 50 * 5 + 50 * 50);
        assert_eq!(s.quantile(&B, 0.5), Some(10.0));
        let p99 = s.quantile(&B, 0.99).unwrap();
        assert!(p99 > 90.0 && p99 <= 100.0, "{p99}");
        h.record(5000);
        assert_eq!(h.snapshot().quantile(&B, 1.0), Some(1000.0));
        assert_eq!(HistogramCounts::default().quantile(&B, 0.5), None);
        assert_eq!(h.snapshot().since(&s).count(), 1);
    }
}
