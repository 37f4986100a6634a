//! Idle mode (`--connections N`): open N connections with a channel each,
//! hold them `--idle` seconds, and report the broker's RSS before and after,
//! i.e. the memory one idle connection costs.

use anyhow::Result;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::Conn;
use crate::report::{self, Idle, Report};
use crate::rss::RssSampler;
use crate::scenario::{config, round3};
use crate::topology::Topology;
use crate::uri::AmqpUri;
use crate::{Args, ExchangeType};

/// Connections opened at once.
const OPEN_PARALLEL: usize = 32;

/// Idle mode: open `--connections` connections with a channel each, hold
/// them `--idle` seconds, report the broker's RSS before and after.
pub async fn idle(args: &Args, uri: &AmqpUri) -> Result<Report> {
    let rss = args
        .rss_pid
        .map(|p| RssSampler::start(p, "open"))
        .transpose()?;
    let before = rss.as_ref().and_then(|r| r.sample());
    let t0 = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(OPEN_PARALLEL));
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..args.connections {
        let (gate, uri) = (gate.clone(), uri.clone());
        opening.spawn(async move {
            let _permit = gate.acquire_owned().await;
            Conn::open(&uri).await
        });
    }
    let mut conns = Vec::with_capacity(args.connections);
    let mut first_err = None;
    while let Some(r) = opening.join_next().await {
        match r {
            Ok(Ok(c)) => conns.push(c),
            Err(e) if e.is_cancelled() => {}
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(anyhow::anyhow!("connection task failed: {e}"));
            }
        }
        if first_err.is_some() {
            // A broker at its limit (connections, file descriptors) tends to
            // leave every later attempt hanging until its timeout: stop now.
            opening.abort_all();
        }
    }
    let open_secs = t0.elapsed().as_secs_f64();
    if let Some(e) = first_err {
        let opened = conns.len();
        close_all(conns).await;
        return Err(e.context(format!(
            "opened {opened} of {} connections",
            args.connections
        )));
    }
    if let Some(r) = &rss {
        r.phase("idle");
    }
    if !args.quiet {
        eprintln!(
            "perf: {} connections open in {open_secs:.2}s; holding {}s",
            conns.len(),
            args.idle
        );
    }
    tokio::time::sleep(Duration::from_secs(args.idle)).await;
    let after = rss.as_ref().and_then(|r| r.sample());
    let n = conns.len();
    close_all(conns).await;
    let rss_report = rss.map(|r| r.finish());
    let per_connection_kb = match (before, after) {
        (Some(b), Some(a)) if n > 0 => {
            Some((a as f64 - b as f64) / n as f64 * 10.0).map(|x| x.round() / 10.0)
        }
        _ => None,
    };
    let topo = Topology {
        queues: Vec::new(),
        kind: ExchangeType::Direct,
        exchange: String::new(),
        quorum: false,
    };
    Ok(Report {
        uri: uri.redacted(),
        mode: "idle".into(),
        config: config(args, &topo),
        elapsed_secs: round3(t0.elapsed().as_secs_f64()),
        published: 0,
        confirmed: 0,
        nacked: 0,
        consumed: 0,
        publish_rate: 0.0,
        confirm_rate: 0.0,
        consume_rate: 0.0,
        latency: report::LatencyReport::default(),
        blocked: 0,
        backlog: None,
        idle: Some(Idle {
            connections: n,
            open_secs: round3(open_secs),
            idle_secs: args.idle,
            rss_before_kb: before,
            rss_after_kb: after,
            per_connection_kb,
        }),
        rss: rss_report,
    })
}

async fn close_all(conns: Vec<Conn>) {
    let mut closing = tokio::task::JoinSet::new();
    for c in conns {
        closing.spawn(c.close());
    }
    while closing.join_next().await.is_some() {}
}
