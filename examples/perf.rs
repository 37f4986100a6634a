//! A small load generator for any AMQP 0-9-1 broker (Hopper or RabbitMQ), so
//! both are measured with the same client:
//!
//! ```sh
//! cargo run --release --example perf -- --uri amqp://guest:guest@127.0.0.1:5672/%2f \
//!     --producers 1 --consumers 1 --size 1024 --duration 10
//! cargo run --release --example perf -- --persistent --confirm 100 --prefetch 100 --producers 4
//! ```
//!
//! It prints published, confirmed and consumed messages per second and the
//! end-to-end latency percentiles (publish timestamp carried in the body).

use clap::Parser;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Parser, Debug, Clone)]
struct Args {
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    uri: String,
    #[arg(long, default_value_t = 1)]
    producers: usize,
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Message body size in bytes (at least 8: the timestamp).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// delivery-mode 2 and a durable queue.
    #[arg(long)]
    persistent: bool,
    /// Publisher confirms with this many messages in flight per producer (0: off).
    #[arg(long, default_value_t = 0)]
    confirm: usize,
    /// basic.qos prefetch per consumer (0: unlimited).
    #[arg(long, default_value_t = 0)]
    prefetch: u16,
    /// Consume in no-ack mode.
    #[arg(long)]
    autoack: bool,
    /// Ack every N deliveries with multiple=true.
    #[arg(long, default_value_t = 1)]
    ack_every: u64,
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[arg(long, default_value = "perf-q")]
    queue: String,
    /// Backlog mode: publish this many messages (confirmed) with no consumer,
    /// then drain them with the consumers and time both phases.
    #[arg(long, default_value_t = 0)]
    backlog: u64,
    /// Keep whatever the queue holds (no purge at start).
    #[arg(long)]
    no_purge: bool,
    /// Backlog mode: stop after publishing (e.g. to restart the broker before draining).
    #[arg(long)]
    publish_only: bool,
    /// Drain this many messages from the queue as fast as possible, then exit.
    #[arg(long, default_value_t = 0)]
    drain: u64,
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let setup = Connection::connect(&args.uri, ConnectionProperties::default()).await?;
    let ch = setup.create_channel().await?;
    ch.queue_declare(
        args.queue.as_str().into(),
        QueueDeclareOptions {
            durable: args.persistent,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    if !args.no_purge {
        ch.queue_purge(args.queue.as_str().into(), QueuePurgeOptions::default())
            .await?;
    }
    if args.backlog > 0 {
        return backlog(&args, &setup).await;
    }
    if args.drain > 0 {
        return drain(&args, &setup, args.drain).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let confirmed = Arc::new(AtomicU64::new(0));
    let consumed = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(parking_lot::Mutex::new(Vec::<u64>::new()));

    let mut tasks = Vec::new();
    for _ in 0..args.consumers {
        let (args, stop, consumed, latencies) = (
            args.clone(),
            stop.clone(),
            consumed.clone(),
            latencies.clone(),
        );
        let conn = Connection::connect(&args.uri, ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        if args.prefetch > 0 {
            ch.basic_qos(args.prefetch, BasicQosOptions::default())
                .await?;
        }
        let mut consumer = ch
            .basic_consume(
                args.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: args.autoack,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut local = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let Ok(Some(Ok(d))) =
                    tokio::time::timeout(Duration::from_millis(200), consumer.next()).await
                else {
                    continue;
                };
                n += 1;
                if n.is_multiple_of(16) && d.data.len() >= 8 {
                    let mut ts = [0u8; 8];
                    ts.copy_from_slice(&d.data[..8]);
                    local.push(now_nanos().saturating_sub(u64::from_be_bytes(ts)));
                }
                if !args.autoack && n.is_multiple_of(args.ack_every.max(1)) {
                    let _ = d
                        .acker
                        .ack(BasicAckOptions {
                            multiple: args.ack_every > 1,
                        })
                        .await;
                }
                consumed.fetch_add(1, Ordering::Relaxed);
            }
            latencies.lock().extend(local);
            drop(conn);
        }));
    }
    for _ in 0..args.producers {
        let (args, stop, published, confirmed) = (
            args.clone(),
            stop.clone(),
            published.clone(),
            confirmed.clone(),
        );
        let conn = Connection::connect(&args.uri, ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        if args.confirm > 0 {
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
        }
        tasks.push(tokio::spawn(async move {
            let mut body = vec![0u8; args.size.max(8)];
            let props = if args.persistent {
                BasicProperties::default().with_delivery_mode(2)
            } else {
                BasicProperties::default()
            };
            let mut inflight = VecDeque::new();
            while !stop.load(Ordering::Relaxed) {
                body[..8].copy_from_slice(&now_nanos().to_be_bytes());
                let Ok(confirm) = ch
                    .basic_publish(
                        "".into(),
                        args.queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        props.clone(),
                    )
                    .await
                else {
                    break;
                };
                published.fetch_add(1, Ordering::Relaxed);
                if args.confirm > 0 {
                    inflight.push_back(confirm);
                    while inflight.len() >= args.confirm {
                        if let Some(c) = inflight.pop_front() {
                            if matches!(c.await, Ok(lapin::Confirmation::Ack(_))) {
                                confirmed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
            drop(conn);
        }));
    }
    let start = Instant::now();
    let mut last = (0, 0, 0);
    for _ in 0..args.duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = (
            published.load(Ordering::Relaxed),
            confirmed.load(Ordering::Relaxed),
            consumed.load(Ordering::Relaxed),
        );
        println!(
            "published {}/s confirmed {}/s consumed {}/s",
            now.0 - last.0,
            now.1 - last.1,
            now.2 - last.2
        );
        last = now;
    }
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let mut lat = latencies.lock().clone();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map(|ns| *ns as f64 / 1e6)
            .unwrap_or(0.0)
    };
    println!(
        "SUMMARY published {:.0}/s confirmed {:.0}/s consumed {:.0}/s latency ms p50 {:.2} p95 {:.2} p99 {:.2}",
        published.load(Ordering::Relaxed) as f64 / secs,
        confirmed.load(Ordering::Relaxed) as f64 / secs,
        consumed.load(Ordering::Relaxed) as f64 / secs,
        pct(0.5),
        pct(0.95),
        pct(0.99)
    );
    let _ = setup.close(200, "bye".into()).await;
    Ok(())
}

/// Publish `args.backlog` messages with confirms, then drain them with one
/// consumer; print both rates.
async fn backlog(args: &Args, setup: &Connection) -> Result<(), Box<dyn std::error::Error>> {
    let ch = setup.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let props = if args.persistent {
        BasicProperties::default().with_delivery_mode(2)
    } else {
        BasicProperties::default()
    };
    let body = vec![7u8; args.size.max(8)];
    let window = args.confirm.max(1);
    let start = Instant::now();
    let mut inflight = VecDeque::new();
    for _ in 0..args.backlog {
        let c = ch
            .basic_publish(
                "".into(),
                args.queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                props.clone(),
            )
            .await?;
        inflight.push_back(c);
        while inflight.len() >= window {
            if let Some(c) = inflight.pop_front() {
                c.await?;
            }
        }
    }
    for c in inflight {
        c.await?;
    }
    let publish_secs = start.elapsed().as_secs_f64();
    println!(
        "BACKLOG published {} in {:.1}s: {:.0}/s",
        args.backlog,
        publish_secs,
        args.backlog as f64 / publish_secs
    );
    if args.publish_only {
        return Ok(());
    }
    drain(args, setup, args.backlog).await
}

/// Consume `n` messages as fast as the broker delivers them.
async fn drain(args: &Args, setup: &Connection, n: u64) -> Result<(), Box<dyn std::error::Error>> {
    let ch = setup.create_channel().await?;
    if args.prefetch > 0 {
        ch.basic_qos(args.prefetch, BasicQosOptions::default())
            .await?;
    }
    let mut consumer = ch
        .basic_consume(
            args.queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: args.autoack,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let start = Instant::now();
    let mut got = 0u64;
    while got < n {
        let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await
        else {
            println!("drain stalled after {got} messages");
            break;
        };
        got += 1;
        if !args.autoack && got.is_multiple_of(args.ack_every.max(1)) {
            d.acker
                .ack(BasicAckOptions {
                    multiple: args.ack_every > 1,
                })
                .await?;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "BACKLOG drained {got} in {secs:.1}s: {:.0}/s",
        got as f64 / secs
    );
    Ok(())
}
