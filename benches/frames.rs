//! Frame parse and generate, the codec's hot pieces: hopper's own frame
//! reader (`protocol::frame::read_frame`) and amq-protocol's `parse_frame` on
//! a stream of 1 KiB publishes, and the deliver + header + body encoding a
//! consumer's writer does per message (`protocol::encode`).
//!
//! `cargo bench --bench frames`

use amq_protocol::frame::parse_frame;
use amq_protocol::protocol::{basic, AMQPClass};
use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use hopper::protocol::encode;
use hopper::protocol::frame::read_frame;
use std::hint::black_box;

const FRAME_MAX: u32 = 131_072;
const MESSAGES: usize = 1000;
/// Property flags with delivery-mode set, then delivery-mode 2 (persistent).
const PERSISTENT_PROPS: &[u8] = &[0x10, 0x00, 2];

/// What a publisher sends: basic.publish, content header, one body frame.
fn publishes(n: usize, body_size: usize) -> BytesMut {
    let body = vec![0xABu8; body_size];
    let publish = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
        exchange: "".into(),
        routing_key: "perf-q".into(),
        mandatory: false,
        immediate: false,
    }));
    let mut out = BytesMut::new();
    for _ in 0..n {
        encode::method(&mut out, 1, &publish);
        encode::content(&mut out, 1, PERSISTENT_PROPS, &body, FRAME_MAX);
    }
    out
}

fn parse(c: &mut Criterion) {
    let stream = publishes(MESSAGES, 1024);
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements((MESSAGES * 3) as u64));
    g.bench_function("hopper read_frame, 1000 x publish+header+1KiB body", |b| {
        b.iter_batched_ref(
            || stream.clone(),
            |buf| {
                let mut frames = 0;
                while let Ok(Some(f)) = read_frame(buf, FRAME_MAX) {
                    black_box(&f);
                    frames += 1;
                }
                assert_eq!(frames, MESSAGES * 3);
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function(
        "amq-protocol parse_frame, 1000 x publish+header+1KiB body",
        |b| {
            b.iter(|| {
                let mut rest = &stream[..];
                let mut frames = 0;
                while let Ok((next, f)) = parse_frame(rest) {
                    black_box(&f);
                    rest = next;
                    frames += 1;
                }
                assert_eq!(frames, MESSAGES * 3);
            })
        },
    );
    g.finish();
}

fn generate(c: &mut Criterion) {
    let mut g = c.benchmark_group("generate");
    for size in [16usize, 1024, 65536] {
        let body = vec![0xCDu8; size];
        let mut out = BytesMut::with_capacity(MESSAGES * (size + 128));
        g.throughput(Throughput::Elements(MESSAGES as u64));
        g.bench_function(format!("deliver+header+body, 1000 x {size} B"), |b| {
            b.iter(|| {
                out.clear();
                for tag in 0..MESSAGES as u64 {
                    encode::deliver_method(&mut out, 1, "amq.ctag-perf", tag, false, "", "perf-q");
                    encode::content(&mut out, 1, PERSISTENT_PROPS, black_box(&body), FRAME_MAX);
                }
                black_box(out.len())
            })
        });
    }
    let ack = AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
        delivery_tag: 42,
        multiple: true,
    }));
    g.throughput(Throughput::Elements(1));
    g.bench_function("basic.ack through amq-protocol gen_frame", |b| {
        let mut out = BytesMut::with_capacity(64);
        b.iter(|| {
            out.clear();
            encode::method(&mut out, 1, black_box(&ack));
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, parse, generate);
criterion_main!(benches);
