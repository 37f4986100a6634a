//! Topic routing with many bindings: `exchange::topic::matches` alone, and
//! `Exchange::route` on a topic exchange holding 100 to 10,000 bindings (the
//! exchange tests every binding's pattern against the key).
//!
//! `cargo bench --bench routing`

use amq_protocol::types::FieldTable;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hopper::exchange::{topic, Binding, Destination, Exchange, ExchangeKind};
use std::hint::black_box;
use std::sync::Arc;

fn exchange(name: &str, kind: ExchangeKind) -> Exchange {
    Exchange::new(
        name.into(),
        kind,
        false,
        false,
        false,
        FieldTable::default(),
    )
}

/// Patterns of the kinds real applications bind: exact, `*` and `#`.
fn pattern(i: usize) -> String {
    match i % 4 {
        0 => format!("stock.{}.nyse", i),
        1 => format!("stock.*.{}", i),
        2 => format!("stock.#.{}", i),
        _ => format!("*.{}.#", i % 97),
    }
}

fn matcher(c: &mut Criterion) {
    let mut g = c.benchmark_group("topic matches");
    g.throughput(Throughput::Elements(1));
    for (p, k) in [
        ("stock.usd.nyse", "stock.usd.nyse"),
        ("stock.*.nyse", "stock.eur.nyse"),
        ("stock.#", "stock.usd.nyse.ibm.trade"),
        ("#.trade.#.end", "a.b.c.trade.d.e.f.g.end"),
        ("a.#.b.#.c", "a.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.d"),
    ] {
        g.bench_function(format!("{p} vs {k}"), |b| {
            b.iter(|| topic::matches(black_box(p), black_box(k)))
        });
    }
    g.finish();
}

fn route(c: &mut Criterion) {
    let mut g = c.benchmark_group("topic route");
    g.throughput(Throughput::Elements(1));
    for n in [100usize, 1000, 10_000] {
        let ex = exchange("bench.topic", ExchangeKind::Topic);
        for i in 0..n {
            // Exchange destinations need no queue machinery to build.
            let dest = Arc::new(exchange(&format!("dest-{i}"), ExchangeKind::Fanout));
            ex.bind(Binding {
                dest: Destination::Exchange(dest),
                routing_key: pattern(i),
                arguments: FieldTable::default(),
            });
        }
        let mut out = Vec::with_capacity(n);
        g.bench_with_input(BenchmarkId::new("bindings", n), &n, |b, _| {
            b.iter(|| {
                out.clear();
                ex.route(black_box("stock.42.nyse"), None, &mut out);
                black_box(out.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, matcher, route);
criterion_main!(benches);
