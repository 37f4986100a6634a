//! What counting costs on the message paths (`hopper::stats`): a channel's
//! per-publish counts (single-writer `Counter`s: relaxed load + store), an
//! exchange's thread-sharded `Sharded` counter, and for comparison one
//! shared `AtomicU64::fetch_add`, each with 1 and 2 threads bumping at once
//! (2 = the machine's cores: a shared atomic's cache line then bounces).
//!
//! `cargo bench --bench counters`

use criterion::{criterion_group, criterion_main, Criterion};
use hopper::stats::{ChannelCounters, Sharded};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Time `iters` calls of `f` on each of `threads` threads at once; the
/// per-call cost is the wall time over `iters`.
fn parallel(threads: usize, iters: u64, f: impl Fn() + Send + Sync + 'static) -> Duration {
    let f = Arc::new(f);
    let barrier = Arc::new(std::sync::Barrier::new(threads));
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let (f, barrier) = (f.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let t = Instant::now();
                for _ in 0..iters {
                    f();
                }
                t.elapsed()
            })
        })
        .collect();
    hs.into_iter()
        .map(|h| h.join().unwrap_or_default())
        .max()
        .unwrap_or_default()
}

fn counters(c: &mut Criterion) {
    let ch = ChannelCounters::default();
    c.bench_function("channel publish counts (1 writer)", |b| {
        b.iter(|| ch.published(black_box(1024), black_box(true)))
    });
    for threads in [1, 2] {
        let s = Arc::new(Sharded::default());
        c.bench_function(&format!("sharded add, {threads} threads"), |b| {
            b.iter_custom(|iters| {
                let s = s.clone();
                parallel(threads, iters, move || s.add(1))
            })
        });
        let a = Arc::new(AtomicU64::new(0));
        c.bench_function(&format!("one shared fetch_add, {threads} threads"), |b| {
            b.iter_custom(|iters| {
                let a = a.clone();
                parallel(threads, iters, move || {
                    a.fetch_add(1, Ordering::Relaxed);
                })
            })
        });
    }
}

criterion_group!(benches, counters);
criterion_main!(benches);
