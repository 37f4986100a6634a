//! Crash durability: the broker is killed with SIGKILL (no shutdown code runs,
//! nothing is flushed on the way out) and restarted on the same data directory.
//!
//! What the broker promises (and these tests hold it to):
//! * a persistent message (delivery_mode 2) routed to durable queues is on disk
//!   (synced) before its publisher confirm goes out, so no confirmed message is
//!   ever lost, and it comes back in each queue it was routed to, in order,
//!   marked redelivered;
//! * durable exchanges, queues (with their arguments) and bindings (with theirs)
//!   come back; transient messages, non-durable queues and exchanges do not;
//! * acks are written without a sync of their own: they ride along with the next
//!   synced write. A SIGKILL does not lose what the broker already handed to the
//!   kernel (the page cache survives a process crash), so an ack that the broker
//!   processed and wrote is not lost; one still queued inside the broker when the
//!   SIGKILL lands may legitimately come back as a redelivery (at-least-once).
//!   The tests that check acked messages stay gone therefore make sure the acks
//!   were processed (and give the broker a moment) before killing it.
//! * only one broker may use a data directory at a time.
//!
//! Every test needs to kill and restart the broker, so all of them skip
//! themselves when `HOPPER_TEST_EXTERNAL_URI` points the suite elsewhere.
//! Run with `cargo test --test durability -- --nocapture` to see the counts.

mod common;

use common::*;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::types::FieldTable;
use lapin::{Confirmation, ExchangeKind};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::durable::*;

// ---------------------------------------------------------------------------
// 1. concurrent publishers, random SIGKILL, three rounds
// ---------------------------------------------------------------------------

const PUBLISHERS: u32 = 4;
const IN_FLIGHT: usize = 50;
const ROUNDS: u32 = 3;
/// A publisher stops on its own after this many messages in one round (keeps a
/// very fast broker from producing more than the test can check in time).
const MAX_PER_PUBLISHER: u64 = 25_000;

/// Where message `n` of a publisher goes: (label, routes to queue A, to queue B).
/// a: direct exchange, key "a" -> A; b: key "b" -> B; ab: key "ab" -> A and B
/// (one message in two queues); d: default exchange -> B.
fn route_of(n: u64) -> &'static str {
    ["a", "b", "ab", "d"][(n % 4) as usize]
}

fn label_targets(label: &str) -> (bool, bool) {
    match label {
        "a" => (true, false),
        "b" | "d" => (false, true),
        "ab" => (true, true),
        other => panic!("unknown route label {other:?}"),
    }
}

/// `r{round}-p{publisher}-{n}-{label}`
fn parse_body(body: &str) -> Option<(u32, u32, u64, String)> {
    let mut it = body.split('-');
    let r = it.next()?.strip_prefix('r')?.parse().ok()?;
    let p = it.next()?.strip_prefix('p')?.parse().ok()?;
    let n = it.next()?.parse().ok()?;
    let label = it.next()?.to_string();
    if it.next().is_some() {
        return None;
    }
    Some((r, p, n, label))
}

#[derive(Debug, Default)]
struct PubState {
    /// Sequence numbers handed to basic.publish (the message may or may not
    /// have reached the broker).
    attempted: BTreeSet<u64>,
    /// Sequence numbers the broker confirmed with basic.ack.
    confirmed: BTreeSet<u64>,
    nacked: u64,
    /// Confirms that neither arrived nor failed within the timeout.
    unresolved: u64,
    /// Why the publisher stopped.
    stopped: String,
}

struct Topology {
    exchange: String,
    queue_a: String,
    queue_b: String,
}

#[allow(clippy::too_many_arguments)]
async fn publisher(
    uri: String,
    round: u32,
    p: u32,
    top: Arc<Topology>,
    state: Arc<Mutex<PubState>>,
    ready: Arc<tokio::sync::Barrier>,
    first_confirm: Arc<tokio::sync::Notify>,
) {
    let conn = connect_uri(&uri)
        .await
        .unwrap_or_else(|e| panic!("publisher {p}: connect: {e:?}"));
    let ch = open_channel(&conn).await;
    confirm_select(&ch).await;
    ready.wait().await;

    type Outcome = (
        u64,
        Result<lapin::Result<Confirmation>, tokio::time::error::Elapsed>,
    );
    let record = |(n, res): Outcome, dead: &mut bool| {
        let mut st = state.lock().unwrap();
        match res {
            Ok(Ok(Confirmation::Ack(_))) => {
                st.confirmed.insert(n);
                first_confirm.notify_one();
            }
            Ok(Ok(Confirmation::Nack(_))) => st.nacked += 1,
            Ok(Ok(Confirmation::NotRequested)) => {
                panic!("publisher {p}: channel is not in confirm mode")
            }
            Ok(Err(e)) => {
                if !*dead {
                    st.stopped = format!("confirm failed: {e}");
                }
                *dead = true;
            }
            Err(_) => {
                st.unresolved += 1;
                if !*dead {
                    st.stopped = "confirm timed out".into();
                }
                *dead = true;
            }
        }
    };

    let mut in_flight = FuturesUnordered::new();
    let mut dead = false;
    let mut n = 0u64;
    while !dead {
        while in_flight.len() >= IN_FLIGHT && !dead {
            let outcome = in_flight.next().await.expect("in-flight confirm");
            record(outcome, &mut dead);
        }
        if dead {
            break;
        }
        if n >= MAX_PER_PUBLISHER {
            state.lock().unwrap().stopped = format!("published its maximum of {n}");
            break;
        }
        let label = route_of(n);
        let (exchange, key) = match label {
            "d" => ("", top.queue_b.as_str()),
            l => (top.exchange.as_str(), l),
        };
        let body = format!("r{round}-p{p}-{n}-{label}");
        state.lock().unwrap().attempted.insert(n);
        let publish = tokio::time::timeout(
            WAIT,
            ch.basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                persistent(),
            ),
        )
        .await;
        match publish {
            Ok(Ok(confirm)) => {
                in_flight.push(async move { (n, tokio::time::timeout(WAIT, confirm).await) });
            }
            Ok(Err(e)) => {
                state.lock().unwrap().stopped = format!("basic.publish failed: {e}");
                dead = true;
            }
            Err(_) => {
                state.lock().unwrap().stopped = "basic.publish timed out".into();
                dead = true;
            }
        }
        n += 1;
    }
    // Collect whatever is still in flight: confirms that arrived before the
    // kill count, the rest fail (or time out) once the connection is gone.
    while let Some(outcome) = in_flight.next().await {
        record(outcome, &mut dead);
    }
    drop(conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_survive_random_kill9() {
    let mut broker = Broker::start();
    skip_if_external!(broker);
    let seed = std::env::var("HOPPER_DURABILITY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("concurrent_publishers_survive_random_kill9: seed {seed} (set HOPPER_DURABILITY_SEED to repeat)");
    let started = Instant::now();
    within_for(
        Duration::from_secs(55),
        "the whole kill/restart test",
        kill_rounds(&mut broker, seed),
    )
    .await;
    println!(
        "concurrent_publishers_survive_random_kill9: {ROUNDS} rounds in {:?}",
        started.elapsed()
    );
}

async fn kill_rounds(broker: &mut Broker, seed: u64) {
    let mut rng = Rng(seed);
    let top = Arc::new(Topology {
        exchange: unique("kill-x"),
        queue_a: unique("kill-qa"),
        queue_b: unique("kill-qb"),
    });
    {
        let (conn, ch) = connect_channel(broker).await;
        declare_exchange(
            &ch,
            &top.exchange,
            ExchangeKind::Direct,
            durable_exchange_opts(),
            FieldTable::default(),
        )
        .await
        .expect("declare durable direct exchange");
        durable_queue(&ch, &top.queue_a, FieldTable::default()).await;
        durable_queue(&ch, &top.queue_b, FieldTable::default()).await;
        for (q, key) in [
            (&top.queue_a, "a"),
            (&top.queue_b, "b"),
            (&top.queue_a, "ab"),
            (&top.queue_b, "ab"),
        ] {
            bind(&ch, q, &top.exchange, key, FieldTable::default()).await;
        }
        let _ = within("connection.close", conn.close(200, "bye".into())).await;
    }

    for round in 0..ROUNDS {
        let delay = Duration::from_millis(rng.range(200, 800));
        let uri = broker.uri();
        let states: Vec<Arc<Mutex<PubState>>> = (0..PUBLISHERS)
            .map(|_| Arc::new(Mutex::new(PubState::default())))
            .collect();
        let ready = Arc::new(tokio::sync::Barrier::new(PUBLISHERS as usize + 1));
        let first_confirm = Arc::new(tokio::sync::Notify::new());
        let tasks: Vec<_> = (0..PUBLISHERS)
            .map(|p| {
                tokio::spawn(publisher(
                    uri.clone(),
                    round,
                    p,
                    top.clone(),
                    states[p as usize].clone(),
                    ready.clone(),
                    first_confirm.clone(),
                ))
            })
            .collect();
        within_for(
            Duration::from_secs(15),
            "all publishers connected and in confirm mode",
            ready.wait(),
        )
        .await;
        // Start the clock at the first confirm, so every round kills the
        // broker with publishes flowing (never before any was confirmed).
        within_for(
            Duration::from_secs(15),
            "the first publisher confirm",
            first_confirm.notified(),
        )
        .await;
        tokio::time::sleep(delay).await;
        broker.kill9();
        let killed_at = Instant::now();
        for (p, t) in tasks.into_iter().enumerate() {
            match tokio::time::timeout(Duration::from_secs(15), t).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("round {round}: publisher {p} failed: {e}"),
                Err(_) => {
                    panic!("round {round}: publisher {p} did not stop within 15s of the kill")
                }
            }
        }
        let settle = killed_at.elapsed();
        broker.restart();

        // What each publisher sent and had confirmed.
        let states: Vec<PubState> = states
            .iter()
            .map(|s| std::mem::take(&mut *s.lock().unwrap()))
            .collect();
        let attempted: usize = states.iter().map(|s| s.attempted.len()).sum();
        let confirmed: usize = states.iter().map(|s| s.confirmed.len()).sum();
        let nacked: u64 = states.iter().map(|s| s.nacked).sum();
        let unresolved: u64 = states.iter().map(|s| s.unresolved).sum();

        // Read everything back.
        let conn = connect(broker).await;
        {
            let ch = open_channel(&conn).await;
            passive_exchange(&ch, &top.exchange)
                .await
                .unwrap_or_else(|e| panic!("round {round}: durable exchange lost: {e:?}"));
        }
        let got_a = consume_all(&conn, &top.queue_a).await;
        let got_b = consume_all(&conn, &top.queue_b).await;

        let mut problems: Vec<String> = Vec::new();
        let mut extra = 0usize; // present but never confirmed (allowed)
        let mut expected_total = 0usize;
        for (qname, is_a, got) in [("A", true, &got_a), ("B", false, &got_b)] {
            let mut present: HashSet<(u32, u64)> = HashSet::new();
            let mut last: BTreeMap<u32, u64> = BTreeMap::new();
            let mut foreign = Vec::new();
            let mut misrouted = Vec::new();
            let mut out_of_order = Vec::new();
            let mut not_redelivered = Vec::new();
            for g in got.iter() {
                if !g.redelivered {
                    not_redelivered.push(g.body.clone());
                }
                let Some((r, p, n, label)) = parse_body(&g.body) else {
                    foreign.push(g.body.clone());
                    continue;
                };
                if r != round
                    || p >= PUBLISHERS
                    || !states[p as usize].attempted.contains(&n)
                    || label != route_of(n)
                {
                    // From an earlier (consumed and acked) round, or never sent.
                    foreign.push(g.body.clone());
                    continue;
                }
                let (to_a, to_b) = label_targets(&label);
                if (is_a && !to_a) || (!is_a && !to_b) {
                    misrouted.push(g.body.clone());
                }
                if let Some(prev) = last.get(&p) {
                    if n <= *prev {
                        out_of_order.push(format!("p{p}: {n} after {prev}"));
                    }
                }
                last.insert(p, n);
                present.insert((p, n));
                if !states[p as usize].confirmed.contains(&n) {
                    extra += 1;
                }
            }
            let mut missing = Vec::new();
            for (p, st) in states.iter().enumerate() {
                for &n in &st.confirmed {
                    let (to_a, to_b) = label_targets(route_of(n));
                    if (is_a && to_a) || (!is_a && to_b) {
                        expected_total += 1;
                        if !present.contains(&(p as u32, n)) {
                            missing.push(format!("r{round}-p{p}-{n}-{}", route_of(n)));
                        }
                    }
                }
            }
            let (a, b) = (got.len(), missing.len());
            println!("  round {round} queue {qname}: recovered {a}, confirmed-and-missing {b}");
            for (what, list) in [
                ("confirmed messages missing", &missing),
                (
                    "messages not published this round (old or unknown)",
                    &foreign,
                ),
                ("messages in a queue they were not routed to", &misrouted),
                ("per-publisher order violations", &out_of_order),
                ("messages without redelivered=true", &not_redelivered),
            ] {
                if !list.is_empty() {
                    problems.push(format!(
                        "round {round} queue {qname}: {} {what}: {}",
                        list.len(),
                        sample(list, 8)
                    ));
                }
            }
        }
        println!(
            "round {round}: killed {delay:?} after the first confirm; attempted {attempted}, \
             confirmed {confirmed} ({expected_total} queue copies), nacked {nacked}, \
             unresolved {unresolved}; recovered A={} B={}; present but unconfirmed {extra}; \
             publishers settled {settle:?} after the kill",
            got_a.len(),
            got_b.len()
        );
        for (p, st) in states.iter().enumerate() {
            println!(
                "  publisher {p}: attempted {}, confirmed {}, stopped: {}",
                st.attempted.len(),
                st.confirmed.len(),
                st.stopped
            );
        }
        assert!(confirmed > 0, "round {round}: nothing was confirmed");
        assert!(
            problems.is_empty(),
            "round {round} (seed {seed}):\n{}",
            problems.join("\n")
        );
        // Everything was consumed and acked: close cleanly so the acks are
        // processed before the next round's publishes (whose synced writes
        // then carry them to disk before the next kill).
        let _ = within("connection.close", conn.close(200, "bye".into())).await;
    }
}

// ---------------------------------------------------------------------------
// 2. delivered but unacked messages survive, acked ones do not
// ---------------------------------------------------------------------------
