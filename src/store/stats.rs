//! Durability figures: synced writes (fsyncs), messages per synced write
//! (the group-commit batch size) and the latency from a persistent
//! publish reaching the store to its synced write (after which its confirm
//! goes out). Written only by the store's committer thread (single-writer
//! `Counter`s: no locked instruction per message); read by the management
//! API and Prometheus. Never touches the disk.

use crate::stats::{Counter, Histogram, HistogramCounts};

/// Batch sizes (messages per fsync) as histogram bounds.
pub const BATCH_BOUNDS: [u64; 12] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096];

/// Publish-to-synced-write latency bounds, in microseconds.
pub const LATENCY_BOUNDS_US: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000,
];

#[derive(Debug)]
pub struct StoreStats {
    /// Synced writes holding persistent messages.
    pub fsyncs: Counter,
    /// Persistent messages written by them.
    pub messages: Counter,
    batch: Histogram,
    latency_us: Histogram,
}

impl Default for StoreStats {
    fn default() -> Self {
        StoreStats {
            fsyncs: Counter::default(),
            messages: Counter::default(),
            batch: Histogram::new(&BATCH_BOUNDS),
            latency_us: Histogram::new(&LATENCY_BOUNDS_US),
        }
    }
}

/// A snapshot of `StoreStats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreCounts {
    pub fsyncs: u64,
    pub messages: u64,
    pub batch: HistogramCounts,
    pub latency_us: HistogramCounts,
}

impl StoreStats {
    /// One synced write of `messages` persistent messages, each submitted at
    /// one of `submitted` (committer thread only).
    pub fn synced(&self, messages: u64, submitted: &[std::time::Instant]) {
        self.fsyncs.add(1);
        self.messages.add(messages);
        self.batch.record(messages);
        let now = std::time::Instant::now();
        for t in submitted {
            self.latency_us
                .record(now.saturating_duration_since(*t).as_micros() as u64);
        }
    }

    pub fn snapshot(&self) -> StoreCounts {
        StoreCounts {
            fsyncs: self.fsyncs.get(),
            messages: self.messages.get(),
            batch: self.batch.snapshot(),
            latency_us: self.latency_us.snapshot(),
        }
    }
}
