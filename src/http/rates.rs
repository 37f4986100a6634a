//! Message rates: a sampler reads every counter each `sample_interval_ms`
//! (RabbitMQ's 5 s) and keeps the last two samples; a rate is the change
//! between them over the time between them, as RabbitMQ's `*_details.rate`.
//! Counts shown beside a rate are read live. Reading a counter takes the
//! same short locks the management API's lists take; nothing here runs on
//! the publish or deliver path.

use parking_lot::Mutex;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::broker::Broker;
use crate::stats::{IoCounts, MsgCounts, QueueCounts};
use crate::store::stats::StoreCounts;

/// Everything rates are computed from, read at one moment.
#[derive(Debug, Default, Clone)]
pub struct Sample {
    pub at: Option<Instant>,
    pub totals: MsgCounts,
    pub ready: u64,
    pub unacked: u64,
    pub churn: [u64; 7],
    pub queues: HashMap<(String, String), QueueCounts>,
    pub exchanges: HashMap<(String, String), (u64, u64)>,
    pub channels: HashMap<(u64, u16), MsgCounts>,
    pub connections: HashMap<u64, (MsgCounts, IoCounts)>,
    pub store: Option<StoreCounts>,
}

/// The last two samples of one broker.
#[derive(Debug, Default)]
pub struct Rates {
    samples: Mutex<(Arc<Sample>, Arc<Sample>)>,
}

/// The two samples a rate is computed from: (earlier, later, seconds).
pub struct Window {
    pub prev: Arc<Sample>,
    pub last: Arc<Sample>,
    pub secs: f64,
}

impl Window {
    /// Per-second change of a counter between the samples (0 without two).
    pub fn rate(&self, prev: u64, last: u64) -> f64 {
        if self.secs <= 0.0 {
            return 0.0;
        }
        last.saturating_sub(prev) as f64 / self.secs
    }
}

impl Rates {
    pub fn window(&self) -> Window {
        let (prev, last) = self.samples.lock().clone();
        let secs = match (prev.at, last.at) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        Window { prev, last, secs }
    }

    fn push(&self, s: Sample) {
        let mut g = self.samples.lock();
        g.0 = std::mem::replace(&mut g.1, Arc::new(s));
    }
}

type Registry = Mutex<Vec<(Weak<Broker>, Arc<Rates>)>>;

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// The rates of `broker`, starting its sampler the first time (the
/// management and metrics listeners both call this; one sampler runs).
/// Must be called inside the tokio runtime.
pub fn for_broker(broker: &Arc<Broker>) -> Arc<Rates> {
    let mut reg = registry().lock();
    reg.retain(|(b, _)| b.strong_count() > 0);
    if let Some((_, r)) = reg
        .iter()
        .find(|(b, _)| std::ptr::eq(b.as_ptr(), Arc::as_ptr(broker)))
    {
        return r.clone();
    }
    let rates = Arc::new(Rates::default());
    reg.push((Arc::downgrade(broker), rates.clone()));
    let every = Duration::from_millis(broker.config.management.sample_interval_ms.max(10));
    let weak = Arc::downgrade(broker);
    let r = rates.clone();
    let mut shutdown = broker.shutdown_signal();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            let Some(b) = weak.upgrade() else { return };
            // With many queues a sample takes a while: off the async workers.
            match tokio::task::spawn_blocking(move || take_sample(&b)).await {
                Ok(sample) => r.push(sample),
                Err(e) => tracing::error!(error = %e, "sampling message rates"),
            }
        }
    });
    rates
}

/// Read every counter of the broker.
pub fn take_sample(b: &Broker) -> Sample {
    let mut s = Sample {
        at: Some(Instant::now()),
        totals: b.message_totals(),
        store: b.store.stats(),
        ..Default::default()
    };
    s.churn = take_churn(b);
    for v in b.vhosts.iter() {
        for q in v.queues.iter() {
            let st = q.stats();
            s.ready += st.ready;
            s.unacked += st.unacked;
            s.queues.insert((v.name.clone(), q.name.clone()), st.counts);
        }
        for x in v.exchanges.iter() {
            s.exchanges.insert(
                (v.name.clone(), x.name.clone()),
                (x.publish_in.get(), x.publish_out.get()),
            );
        }
    }
    for c in b.connection_list() {
        for ch in c.channel_snapshots() {
            s.channels.insert((c.id, ch.number), ch.counts);
        }
        s.connections.insert(c.id, (c.counters(), c.io.snapshot()));
    }
    s
}

/// A counter set read from both samples (looked up once per object).
pub type Pair<T> = (Option<T>, Option<T>);

pub fn pair<T>(w: &Window, get: impl Fn(&Sample) -> Option<T>) -> Pair<T> {
    (get(&w.prev), get(&w.last))
}

/// The rate of one counter of a `Pair`.
pub fn rate_of<T>(w: &Window, p: &Pair<T>, f: impl Fn(&T) -> u64) -> f64 {
    match p {
        (Some(a), Some(b)) => w.rate(f(a), f(b)),
        // New since the earlier sample: it started from zero.
        (None, Some(b)) => w.rate(0, f(b)),
        _ => 0.0,
    }
}

/// A rate between the two samples of a counter read by `get`.
pub fn sampled<T>(w: &Window, get: impl Fn(&Sample) -> Option<T>, f: impl Fn(&T) -> u64) -> f64 {
    rate_of(w, &pair(w, get), f)
}

fn stats_object(fields: Vec<(&str, u64, f64)>) -> Value {
    let mut m = Map::new();
    for (name, now, rate) in fields {
        m.insert(name.to_string(), json!(now));
        m.insert(format!("{name}_details"), json!({ "rate": rate }));
    }
    Value::Object(m)
}

/// A queue's `message_stats`.
pub fn queue_stats(w: &Window, vhost: &str, name: &str, now: &QueueCounts) -> Value {
    let key = (vhost.to_string(), name.to_string());
    let p = pair(w, |s| s.queues.get(&key).copied());
    let r = |f: fn(&QueueCounts) -> u64| rate_of(w, &p, f);
    stats_object(vec![
        ("publish", now.publish, r(|c| c.publish)),
        ("deliver", now.deliver, r(|c| c.deliver)),
        (
            "deliver_no_ack",
            now.deliver_no_ack,
            r(|c| c.deliver_no_ack),
        ),
        ("get", now.get, r(|c| c.get)),
        ("get_no_ack", now.get_no_ack, r(|c| c.get_no_ack)),
        ("get_empty", now.get_empty, r(|c| c.get_empty)),
        ("deliver_get", now.deliver_get(), r(|c| c.deliver_get())),
        ("redeliver", now.redeliver, r(|c| c.redeliver)),
        ("ack", now.ack, r(|c| c.ack)),
    ])
}

/// An exchange's `message_stats`.
pub fn exchange_stats(
    w: &Window,
    vhost: &str,
    name: &str,
    publish_in: u64,
    publish_out: u64,
) -> Value {
    let key = (vhost.to_string(), name.to_string());
    let p = pair(w, |s| s.exchanges.get(&key).copied());
    let r = |f: fn(&(u64, u64)) -> u64| rate_of(w, &p, f);
    stats_object(vec![
        ("publish_in", publish_in, r(|c| c.0)),
        ("publish_out", publish_out, r(|c| c.1)),
    ])
}

/// `message_stats` of a channel, a connection or the whole broker, with
/// rates from `get` over the samples.
pub fn msg_stats(w: &Window, now: &MsgCounts, get: impl Fn(&Sample) -> Option<MsgCounts>) -> Value {
    let p = pair(w, get);
    let r = |f: fn(&MsgCounts) -> u64| rate_of(w, &p, f);
    stats_object(vec![
        ("publish", now.publish, r(|c| c.publish)),
        ("confirm", now.confirm, r(|c| c.confirm)),
        (
            "return_unroutable",
            now.return_unroutable,
            r(|c| c.return_unroutable),
        ),
        (
            "drop_unroutable",
            now.unroutable.saturating_sub(now.return_unroutable),
            r(|c| c.unroutable.saturating_sub(c.return_unroutable)),
        ),
        ("deliver", now.deliver, r(|c| c.deliver)),
        (
            "deliver_no_ack",
            now.deliver_no_ack,
            r(|c| c.deliver_no_ack),
        ),
        ("get", now.get, r(|c| c.get)),
        ("get_no_ack", now.get_no_ack, r(|c| c.get_no_ack)),
        ("get_empty", now.get_empty, r(|c| c.get_empty)),
        ("deliver_get", now.deliver_get(), r(|c| c.deliver_get())),
        ("redeliver", now.redeliver, r(|c| c.redeliver)),
        ("ack", now.ack, r(|c| c.ack)),
    ])
}

/// A connection's socket counts with rates (top-level fields, as RabbitMQ).
pub fn io_fields(w: &Window, id: u64, now: &IoCounts) -> Vec<(String, Value)> {
    let p = pair(w, |s| s.connections.get(&id).map(|c| c.1));
    let r = |f: fn(&IoCounts) -> u64| rate_of(w, &p, f);
    vec![
        ("recv_oct".into(), json!(now.recv_oct)),
        (
            "recv_oct_details".into(),
            json!({"rate": r(|c| c.recv_oct)}),
        ),
        ("recv_cnt".into(), json!(now.recv_cnt)),
        ("send_oct".into(), json!(now.send_oct)),
        (
            "send_oct_details".into(),
            json!({"rate": r(|c| c.send_oct)}),
        ),
        ("send_cnt".into(), json!(now.send_cnt)),
    ]
}

/// The overview's `churn_rates`.
pub fn churn_rates(w: &Window, b: &Broker) -> Value {
    const NAMES: [&str; 7] = [
        "connection_created",
        "connection_closed",
        "channel_created",
        "channel_closed",
        "queue_declared",
        "queue_created",
        "queue_deleted",
    ];
    let now = take_churn(b);
    let fields = NAMES
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, now[i], sampled(w, |s| Some(s.churn[i]), |c| *c)))
        .collect();
    stats_object(fields)
}

pub fn take_churn(b: &Broker) -> [u64; 7] {
    let mut churn = [
        b.stats.connections_opened.get(),
        b.stats.connections_closed.get(),
        b.stats.channels_opened.get(),
        b.stats.channels_closed.get(),
        0,
        0,
        0,
    ];
    for v in b.vhosts.iter() {
        churn[4] += v.churn.declared.get();
        churn[5] += v.churn.created.get();
        churn[6] += v.churn.deleted.get();
    }
    churn
}

/// Hopper's durability figures for the overview (`store_stats`): fsyncs
/// with their rate, messages per fsync and confirm latency over the last
/// interval, bytes of ready messages paged out to the store now.
pub fn store_stats(w: &Window, now: Option<&StoreCounts>, paged_out_bytes: u64) -> Value {
    use crate::store::stats::LATENCY_BOUNDS_US;
    let fsyncs = now.map_or(0, |s| s.fsyncs);
    let fsync_rate = sampled(w, |s| s.store.as_ref().map(|s| s.fsyncs), |c| *c);
    let (per_fsync, p50, p99) = match (&w.prev.store, &w.last.store) {
        (Some(a), Some(b)) => {
            let syncs = b.fsyncs.saturating_sub(a.fsyncs);
            let msgs = b.messages.saturating_sub(a.messages);
            let per = if syncs > 0 {
                msgs as f64 / syncs as f64
            } else {
                0.0
            };
            let lat = b.latency_us.since(&a.latency_us);
            (
                per,
                lat.quantile(&LATENCY_BOUNDS_US, 0.5),
                lat.quantile(&LATENCY_BOUNDS_US, 0.99),
            )
        }
        _ => (0.0, None, None),
    };
    json!({
        "fsyncs": fsyncs,
        "fsyncs_details": {"rate": fsync_rate},
        "messages_per_fsync": per_fsync,
        "confirm_latency_us": {"p50": p50, "p99": p99},
        "paged_out_bytes": paged_out_bytes,
    })
}
