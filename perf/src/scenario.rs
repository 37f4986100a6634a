//! The modes of a run: timed (`--duration`), backlog (`--backlog N`, publish
//! then drain), drain (`--drain N`) and idle connections (`--connections N`);
//! the idle mode is in `idle`, the queues and exchange in `topology`.

use anyhow::{bail, Context, Result};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

use crate::client::Conn;
use crate::load::{
    new_histogram, ConsumerResult, ConsumerSpec, Ctx, Producer, ProducerResult, ProducerSpec,
    Snapshot,
};
use crate::report::{rate, Backlog, Config, Latency, LatencyReport, Report};
use crate::rss::RssSampler;
use crate::topology::Topology;
use crate::uri::AmqpUri;
use crate::{Args, ExchangeType};

/// A drain that makes no progress for this long is reported as stalled.
const STALL: Duration = Duration::from_secs(30);
/// How long a stopping task may take to finish.
const JOIN_WAIT: Duration = Duration::from_secs(20);

pub async fn run(mut args: Args) -> Result<Report> {
    // Several brokers (a cluster's nodes): comma-separated; producer i and
    // consumer j connect to the (i mod n)th and (j mod n)th.
    let uris = args
        .uri
        .split(',')
        .map(AmqpUri::parse)
        .collect::<Result<Vec<_>>>()?;
    let uri = &uris[0];
    let modes = [args.backlog > 0, args.drain > 0, args.connections > 0];
    if modes.iter().filter(|m| **m).count() > 1 {
        bail!("--backlog, --drain and --connections are separate modes: pick one");
    }
    if args.publish_only && args.backlog == 0 {
        bail!("--publish-only goes with --backlog N");
    }
    if !args.autoack && args.prefetch > 0 && args.ack_every > args.prefetch as u64 {
        eprintln!(
            "perf: --ack-every {} exceeds --prefetch {}: acking every {} instead",
            args.ack_every, args.prefetch, args.prefetch
        );
        args.ack_every = args.prefetch as u64;
    }
    if args.connections > 0 {
        return crate::idle::idle(&args, uri).await;
    }
    if (args.backlog > 0 && !args.publish_only || args.drain > 0)
        && args.consumers < args.queues as usize
    {
        bail!(
            "draining {} queues needs at least as many consumers (--consumers {})",
            args.queues,
            args.consumers
        );
    }
    let topo = Topology::new(&args);
    let mut setup = Conn::open(uri).await?;
    let purge = !args.no_purge && args.drain == 0;
    topo.declare(&mut setup, args.persistent, purge).await?;
    let result = if args.backlog > 0 {
        backlog(&args, &uris, &topo, &mut setup).await
    } else if args.drain > 0 {
        drain_only(&args, &uris, &topo).await
    } else {
        timed(&args, &uris, &topo).await
    };
    let keep = args.keep_queues || args.publish_only;
    if !keep {
        let cleaned = topo.delete(&mut setup).await;
        if result.is_ok() {
            cleaned?;
        }
    }
    let _ = setup.close().await;
    result
}

pub fn config(args: &Args, topo: &Topology) -> Config {
    Config {
        producers: args.producers,
        consumers: args.consumers,
        size: args.size as usize,
        persistent: args.persistent,
        confirm: args.confirm,
        prefetch: args.prefetch,
        ack_every: args.ack_every,
        autoack: args.autoack,
        rate: args.rate,
        queues: topo.queues.clone(),
        exchange: topo.exchange.clone(),
        exchange_type: match topo.kind {
            ExchangeType::Direct => "direct".into(),
            ExchangeType::Fanout => "fanout".into(),
        },
    }
}

fn producer_spec(args: &Args, topo: &Topology, i: usize, limit: Option<u64>) -> ProducerSpec {
    let (exchange, routing_key) = topo.producer_target(i);
    ProducerSpec {
        exchange,
        routing_key,
        persistent: args.persistent,
        size: args.size as usize,
        confirm: args.confirm,
        rate: args.rate,
        limit,
    }
}

fn consumer_spec(args: &Args, topo: &Topology, j: usize) -> ConsumerSpec {
    ConsumerSpec {
        queue: topo.consumer_queue(j),
        prefetch: args.prefetch,
        autoack: args.autoack,
        ack_every: args.ack_every,
    }
}

async fn connect_producers(
    args: &Args,
    uris: &[AmqpUri],
    topo: &Topology,
    total: Option<u64>,
) -> Result<Vec<Producer>> {
    let mut out = Vec::with_capacity(args.producers);
    for i in 0..args.producers {
        // Backlog: split the total, the first producers taking the remainder.
        let limit = total.map(|n| {
            let p = args.producers as u64;
            n / p + u64::from((i as u64) < n % p)
        });
        let spec = producer_spec(args, topo, i, limit);
        out.push(
            Producer::connect(&uris[i % uris.len()], spec)
                .await
                .with_context(|| format!("producer {i}"))?,
        );
    }
    Ok(out)
}

async fn start_consumers(
    args: &Args,
    uris: &[AmqpUri],
    topo: &Topology,
    ctx: &Arc<Ctx>,
) -> Result<Vec<JoinHandle<Result<ConsumerResult>>>> {
    let mut prepared = Vec::with_capacity(args.consumers);
    for j in 0..args.consumers {
        prepared.push(
            crate::load::Consumer::connect(&uris[j % uris.len()], consumer_spec(args, topo, j))
                .await
                .with_context(|| format!("consumer {j}"))?,
        );
    }
    let mut handles = Vec::with_capacity(prepared.len());
    for (j, c) in prepared.into_iter().enumerate() {
        handles.push(
            c.start(ctx.clone())
                .await
                .with_context(|| format!("consumer {j}"))?,
        );
    }
    Ok(handles)
}

/// Join tasks (after the stop signal); merge their histograms, keep the
/// first error.
async fn join_all<T>(
    handles: Vec<JoinHandle<Result<T>>>,
    what: &str,
    wait: Option<Duration>,
    mut each: impl FnMut(T),
) -> Result<()> {
    // No limit: a long publish phase ends when it ends.
    let wait = wait.unwrap_or(Duration::MAX);
    let mut first_err = None;
    for (i, h) in handles.into_iter().enumerate() {
        let abort = h.abort_handle();
        let r = match tokio::time::timeout(wait, h).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(anyhow::anyhow!("{what} {i} panicked: {e}")),
            Err(_) => {
                abort.abort();
                Err(anyhow::anyhow!("{what} {i} did not stop within {wait:?}"))
            }
        };
        match r {
            Ok(v) => each(v),
            Err(e) => {
                if first_err.is_none() {
                    first_err = Some(e.context(format!("{what} {i}")));
                }
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

fn progress(args: &Args, t: f64, last: &mut Snapshot, now: Snapshot) {
    if !args.quiet {
        eprintln!(
            "t={t:>5.1}s published {}/s confirmed {}/s consumed {}/s",
            now.published - last.published,
            now.confirmed - last.confirmed,
            now.consumed - last.consumed
        );
    }
    *last = now;
}

/// Run mode: consumers first, then producers, for `--duration` seconds.
async fn timed(args: &Args, uris: &[AmqpUri], topo: &Topology) -> Result<Report> {
    let ctx = Ctx::new();
    let rss = args
        .rss_pid
        .map(|p| RssSampler::start(p, "run"))
        .transpose()?;
    let consumers = start_consumers(args, uris, topo, &ctx).await?;
    let prepared = connect_producers(args, uris, topo, None).await?;
    let t0 = Instant::now();
    let c0 = ctx.counters.snapshot();
    let mut producers = Vec::with_capacity(prepared.len());
    for p in prepared {
        producers.push(p.start(ctx.clone())?);
    }
    let end = t0 + Duration::from_secs_f64(args.duration.max(0.0));
    let mut last = c0;
    let mut next = t0 + Duration::from_secs(1);
    loop {
        tokio::time::sleep_until(next.min(end).into()).await;
        let now = Instant::now();
        if now >= next {
            next += Duration::from_secs(1);
            progress(
                args,
                (now - t0).as_secs_f64(),
                &mut last,
                ctx.counters.snapshot(),
            );
        }
        // A task that ends before the stop signal has failed.
        let failed =
            producers.iter().any(|h| h.is_finished()) || consumers.iter().any(|h| h.is_finished());
        if now >= end || failed {
            break;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let c1 = ctx.counters.snapshot();
    ctx.stop.send_replace(true);
    let mut confirm_lat = new_histogram();
    let mut e2e = new_histogram();
    let p = join_all(
        producers,
        "producer",
        Some(JOIN_WAIT),
        |r: ProducerResult| {
            let _ = confirm_lat.add(&r.confirm_latency);
        },
    )
    .await;
    let c = join_all(
        consumers,
        "consumer",
        Some(JOIN_WAIT),
        |r: ConsumerResult| {
            let _ = e2e.add(&r.latency);
        },
    )
    .await;
    p?;
    c?;
    let d = |a: u64, b: u64| b.saturating_sub(a);
    let (published, confirmed, nacked, consumed) = (
        d(c0.published, c1.published),
        d(c0.confirmed, c1.confirmed),
        d(c0.nacked, c1.nacked),
        d(c0.consumed, c1.consumed),
    );
    Ok(Report {
        uri: uris[0].redacted(),
        mode: "run".into(),
        config: config(args, topo),
        elapsed_secs: round3(secs),
        published,
        confirmed,
        nacked,
        consumed,
        publish_rate: rate(published, secs),
        confirm_rate: rate(confirmed, secs),
        consume_rate: rate(consumed, secs),
        latency: LatencyReport {
            end_to_end: Latency::from_histogram(&e2e),
            confirm: Latency::from_histogram(&confirm_lat),
        },
        blocked: ctx.counters.blocked.load(Ordering::Relaxed),
        backlog: None,
        idle: None,
        rss: rss.map(|r| r.finish()),
    })
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Backlog mode: publish `--backlog` messages with no consumer, then drain.
async fn backlog(
    args: &Args,
    uris: &[AmqpUri],
    topo: &Topology,
    setup: &mut Conn,
) -> Result<Report> {
    if args.producers == 0 {
        bail!("--backlog needs at least one producer");
    }
    let n = args.backlog;
    let expected = n * topo.fanout_factor();
    let ctx = Ctx::new();
    let rss = args
        .rss_pid
        .map(|p| RssSampler::start(p, "publish"))
        .transpose()?;
    let prepared = connect_producers(args, uris, topo, Some(n)).await?;
    let t0 = Instant::now();
    let mut producers = Vec::with_capacity(prepared.len());
    for p in prepared {
        producers.push(p.start(ctx.clone())?);
    }
    let ticker = {
        let (args, ctx) = (args.clone(), ctx.clone());
        tokio::spawn(async move {
            let mut last = ctx.counters.snapshot();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                progress(
                    &args,
                    t0.elapsed().as_secs_f64(),
                    &mut last,
                    ctx.counters.snapshot(),
                );
            }
        })
    };
    // The phase ends when the last producer has its last confirm, not at
    // the next progress tick.
    let mut confirm_lat = new_histogram();
    let joined = join_all(producers, "producer", None, |r: ProducerResult| {
        let _ = confirm_lat.add(&r.confirm_latency);
    })
    .await;
    ticker.abort();
    joined?;
    if args.confirm == 0 {
        // Without confirms, publishing is over when the queues hold it all.
        let mut seen = (0, Instant::now());
        loop {
            let ready = topo.ready(setup, args.persistent).await?;
            if ready >= expected {
                break;
            }
            if ready != seen.0 {
                seen = (ready, Instant::now());
            } else if seen.1.elapsed() > STALL {
                bail!("the queues hold {ready} of {expected} published messages after {STALL:?} without progress");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let publish_secs = t0.elapsed().as_secs_f64();
    let published = ctx.counters.published.load(Ordering::Relaxed);
    let confirmed = ctx.counters.confirmed.load(Ordering::Relaxed);
    let nacked = ctx.counters.nacked.load(Ordering::Relaxed);
    let (drained, drain_secs, e2e) = if args.publish_only {
        (0, 0.0, new_histogram())
    } else {
        if let Some(r) = &rss {
            r.phase("drain");
        }
        drain(args, uris, topo, &ctx, expected).await?
    };
    let mode = if args.publish_only {
        "publish-only"
    } else {
        "backlog"
    };
    Ok(Report {
        uri: uris[0].redacted(),
        mode: mode.into(),
        config: config(args, topo),
        elapsed_secs: round3(publish_secs + drain_secs),
        published,
        confirmed,
        nacked,
        consumed: drained,
        publish_rate: rate(published, publish_secs),
        confirm_rate: rate(confirmed, publish_secs),
        consume_rate: rate(drained, drain_secs),
        latency: LatencyReport {
            end_to_end: Latency::from_histogram(&e2e),
            confirm: Latency::from_histogram(&confirm_lat),
        },
        blocked: ctx.counters.blocked.load(Ordering::Relaxed),
        backlog: Some(Backlog {
            messages: n,
            published,
            publish_secs: round3(publish_secs),
            publish_rate: rate(published, publish_secs),
            drained,
            drain_secs: round3(drain_secs),
            drain_rate: rate(drained, drain_secs),
        }),
        idle: None,
        rss: rss.map(|r| r.finish()),
    })
}

/// Drain mode: consume `--drain` messages already queued.
async fn drain_only(args: &Args, uris: &[AmqpUri], topo: &Topology) -> Result<Report> {
    let ctx = Ctx::new();
    let rss = args
        .rss_pid
        .map(|p| RssSampler::start(p, "drain"))
        .transpose()?;
    let (drained, secs, e2e) = drain(args, uris, topo, &ctx, args.drain).await?;
    Ok(Report {
        uri: uris[0].redacted(),
        mode: "drain".into(),
        config: config(args, topo),
        elapsed_secs: round3(secs),
        published: 0,
        confirmed: 0,
        nacked: 0,
        consumed: drained,
        publish_rate: 0.0,
        confirm_rate: 0.0,
        consume_rate: rate(drained, secs),
        latency: LatencyReport {
            end_to_end: Latency::from_histogram(&e2e),
            confirm: None,
        },
        blocked: ctx.counters.blocked.load(Ordering::Relaxed),
        backlog: None,
        idle: None,
        rss: rss.map(|r| r.finish()),
    })
}

/// Consume until `target` deliveries arrived (or no progress for `STALL`):
/// (delivered, seconds, end-to-end latency).
async fn drain(
    args: &Args,
    uris: &[AmqpUri],
    topo: &Topology,
    ctx: &Arc<Ctx>,
    target: u64,
) -> Result<(u64, f64, hdrhistogram::Histogram<u64>)> {
    if args.consumers == 0 {
        bail!("draining needs at least one consumer");
    }
    let base = ctx.counters.consumed.load(Ordering::Relaxed);
    ctx.drain_target.store(base + target, Ordering::Relaxed);
    let t0 = Instant::now();
    let consumers = start_consumers(args, uris, topo, ctx).await?;
    let mut last = ctx.counters.snapshot();
    let mut seen = (last.consumed, Instant::now());
    let mut stalled = false;
    loop {
        if ctx.drained_at.lock().is_some() {
            break;
        }
        tokio::select! {
            _ = ctx.drained.notified() => continue,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let now = ctx.counters.snapshot();
        progress(args, t0.elapsed().as_secs_f64(), &mut last, now);
        if now.consumed != seen.0 {
            seen = (now.consumed, Instant::now());
        } else if seen.1.elapsed() > STALL {
            stalled = true;
            break;
        }
        if consumers.iter().any(|h| h.is_finished()) {
            break;
        }
    }
    let end = (*ctx.drained_at.lock()).unwrap_or_else(Instant::now);
    let secs = end.duration_since(t0).as_secs_f64();
    let drained = ctx.counters.consumed.load(Ordering::Relaxed) - base;
    ctx.stop.send_replace(true);
    let mut e2e = new_histogram();
    join_all(
        consumers,
        "consumer",
        Some(JOIN_WAIT),
        |r: ConsumerResult| {
            let _ = e2e.add(&r.latency);
        },
    )
    .await?;
    if stalled {
        eprintln!(
            "perf: drain stalled: {drained} of {target} messages in {STALL:?} without progress"
        );
    }
    Ok((drained.min(target), secs, e2e))
}
