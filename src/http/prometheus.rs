//! The Prometheus text format (0.0.4) with RabbitMQ's metric names, types,
//! help texts and labels (`rabbitmq_prometheus`), so RabbitMQ's Grafana
//! dashboards read Hopper unchanged, plus Hopper's durability figures
//! (`hopper_*`). `render` reads the broker once (one lock per queue and
//! channel) and writes text; it never changes anything.
//!
//! `/metrics` sums every object (RabbitMQ's aggregated mode);
//! `/metrics/per-object` has one sample per queue (`vhost`, `queue`),
//! exchange (`vhost`, `exchange`), channel and connection (`channel`, the
//! name the management API shows), as RabbitMQ's per-object endpoint.

use std::fmt::Write as _;

use crate::broker::connections::ChannelSnapshot;
use crate::broker::Broker;
use crate::queue::QueueStats;
use crate::stats::{HistogramCounts, IoCounts, MsgCounts, MESSAGE_SIZE_BOUNDS};
use crate::store::stats::{BATCH_BOUNDS, LATENCY_BOUNDS_US};

/// Where an object's samples go: its labels, or none when aggregated.
type Labels = Vec<(&'static str, String)>;

struct Out {
    s: String,
}

fn escape(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.s, "# TYPE {name} {kind}\n# HELP {name} {help}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, String)], v: impl std::fmt::Display) {
        self.s.push_str(name);
        if !labels.is_empty() {
            self.s.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.s.push(',');
                }
                self.s.push_str(k);
                self.s.push_str("=\"");
                escape(val, &mut self.s);
                self.s.push('"');
            }
            self.s.push('}');
        }
        let _ = writeln!(self.s, " {v}");
    }

    /// One family with one value per object.
    fn each<T>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        items: &[(Labels, T)],
        f: impl Fn(&T) -> u64,
    ) {
        self.family(name, kind, help);
        for (labels, item) in items {
            self.sample(name, labels, f(item));
        }
    }

    /// A histogram from per-bucket counts; `le` strings are given.
    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, String)],
        les: &[String],
        h: &HistogramCounts,
        sum: String,
    ) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0u64;
        for (le, n) in les.iter().zip(&h.buckets) {
            cumulative += n;
            let mut l: Vec<(&str, String)> = vec![("le", le.clone())];
            l.extend(labels.iter().cloned());
            self.sample(&bucket, &l, cumulative);
        }
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, h.count());
    }
}

/// What one scrape reads of the broker.
struct View {
    queues: Vec<(Labels, QueueStats)>,
    exchanges: Vec<(Labels, (u64, u64))>,
    channels: Vec<(Labels, ChannelSnapshot)>,
    connections: Vec<(Labels, (IoCounts, usize))>,
}

fn read(b: &Broker, per_object: bool) -> View {
    let mut v = View {
        queues: Vec::new(),
        exchanges: Vec::new(),
        channels: Vec::new(),
        connections: Vec::new(),
    };
    let label = |pairs: Labels| if per_object { pairs } else { Vec::new() };
    for vh in b.vhosts.iter() {
        for q in vh.queues.iter() {
            v.queues.push((
                label(vec![("vhost", vh.name.clone()), ("queue", q.name.clone())]),
                q.stats(),
            ));
        }
        for x in vh.exchanges.iter() {
            v.exchanges.push((
                label(vec![
                    ("vhost", vh.name.clone()),
                    ("exchange", x.name.clone()),
                ]),
                (x.publish_in.get(), x.publish_out.get()),
            ));
        }
    }
    for c in b.connection_list() {
        for ch in c.channel_snapshots() {
            v.channels.push((
                label(vec![("channel", format!("{} ({})", c.name, ch.number))]),
                ch,
            ));
        }
        v.connections.push((
            label(vec![("channel", c.name.clone())]),
            (c.io.snapshot(), c.channel_count()),
        ));
    }
    if !per_object {
        v.queues = sum_into(v.queues, |a, b| {
            a.ready += b.ready;
            a.ready_bytes += b.ready_bytes;
            a.unacked += b.unacked;
            a.consumers += b.consumers;
            a.memory += b.memory;
            a.paged_out_bytes += b.paged_out_bytes;
            let c = &mut a.counts;
            let d = &b.counts;
            c.publish += d.publish;
            c.deliver += d.deliver;
            c.deliver_no_ack += d.deliver_no_ack;
            c.get += d.get;
            c.get_no_ack += d.get_no_ack;
            c.get_empty += d.get_empty;
            c.redeliver += d.redeliver;
            c.ack += d.ack;
        });
        v.exchanges = sum_into(v.exchanges, |a, b| {
            a.0 += b.0;
            a.1 += b.1;
        });
        v.channels = sum_into(v.channels, |a, b| {
            a.consumer_count += b.consumer_count;
            a.unacked += b.unacked;
            a.unconfirmed += b.unconfirmed;
            a.prefetch_count = a.prefetch_count.saturating_add(b.prefetch_count);
            a.global_prefetch_count = a
                .global_prefetch_count
                .saturating_add(b.global_prefetch_count);
            a.counts += b.counts;
        });
        v.connections = sum_into(v.connections, |a, b| {
            a.0 += b.0;
            a.1 += b.1;
        });
    }
    v
}

/// The aggregated form: one unlabelled item summing all (zero when none).
fn sum_into<T: Default>(items: Vec<(Labels, T)>, add: impl Fn(&mut T, &T)) -> Vec<(Labels, T)> {
    let mut total = T::default();
    for (_, i) in &items {
        add(&mut total, i);
    }
    vec![(Vec::new(), total)]
}

const PROTOCOL: (&str, &str) = ("protocol", "amqp091");
const CLASSIC: (&str, &str) = ("queue_type", "rabbit_classic_queue");

/// The whole scrape.
pub fn render(b: &Broker, per_object: bool) -> String {
    let v = read(b, per_object);
    let mut o = Out {
        s: String::with_capacity(16 * 1024 + v.queues.len() * 2048),
    };
    node(&mut o, b);
    queues(&mut o, &v);
    channels(&mut o, &v);
    connections(&mut o, &v);
    let x = &v.exchanges;
    o.each(
        "rabbitmq_exchange_messages_published_total",
        "counter",
        "Total number of messages published into an exchange",
        x,
        |c| c.0,
    );
    o.each("rabbitmq_exchange_messages_routed_total", "counter", "Total number of messages published into an exchange and routed to at least one queue (Hopper)", x, |c| c.1);
    totals(&mut o, b, &v);
    global(&mut o, b, &v);
    hopper(&mut o, b, &v);
    if per_object {
        o.family(
            "rabbitmq_queue_info",
            "gauge",
            "A metric with a constant '1' value and labels that provide some queue details",
        );
        for (labels, _) in &v.queues {
            let mut l = labels.clone();
            l.push(("queue_type", "rabbit_classic_queue".into()));
            l.push(("membership", "leader".into()));
            o.sample("rabbitmq_queue_info", &l, 1);
        }
    }
    identity(
        &mut o,
        if per_object {
            "per-object"
        } else {
            "aggregated"
        },
    );
    o.s
}

fn node(o: &mut Out, b: &Broker) {
    let churn = super::rates::take_churn(b);
    for (i, (name, help)) in [
        (
            "rabbitmq_connections_opened_total",
            "Total number of connections opened",
        ),
        (
            "rabbitmq_connections_closed_total",
            "Total number of connections closed or terminated",
        ),
        (
            "rabbitmq_channels_opened_total",
            "Total number of channels opened",
        ),
        (
            "rabbitmq_channels_closed_total",
            "Total number of channels closed",
        ),
        (
            "rabbitmq_queues_declared_total",
            "Total number of queues declared",
        ),
        (
            "rabbitmq_queues_created_total",
            "Total number of queues created",
        ),
        (
            "rabbitmq_queues_deleted_total",
            "Total number of queues deleted",
        ),
    ]
    .iter()
    .enumerate()
    {
        o.family(name, "counter", help);
        o.sample(name, &[], churn[i]);
    }
    let (fd_used, fd_total) = super::overview::fds();
    let alarms = b.alarms();
    let disk_free = crate::broker::disk::free_bytes(&b.config.data_dir).unwrap_or(0);
    let gauges: [(&str, &str, u64); 6] = [
        (
            "rabbitmq_process_open_fds",
            "Open file descriptors",
            fd_used,
        ),
        (
            "rabbitmq_process_resident_memory_bytes",
            "Memory used in bytes",
            resident_bytes(),
        ),
        (
            "rabbitmq_disk_space_available_bytes",
            "Disk space available in bytes",
            disk_free,
        ),
        (
            "rabbitmq_process_max_fds",
            "Open file descriptors limit",
            fd_total,
        ),
        (
            "rabbitmq_resident_memory_limit_bytes",
            "Memory high watermark in bytes",
            b.config.limits.memory_high_watermark as u64,
        ),
        (
            "rabbitmq_disk_space_available_limit_bytes",
            "Free disk space low watermark in bytes",
            b.config.limits.disk_free_limit,
        ),
    ];
    for (name, help, v) in gauges {
        o.family(name, "gauge", help);
        o.sample(name, &[], v);
    }
    for (name, help, on) in [
        (
            "rabbitmq_alarms_file_descriptor_limit",
            "is 1 if file descriptor limit alarm is in effect",
            false,
        ),
        (
            "rabbitmq_alarms_free_disk_space_watermark",
            "is 1 if free disk space watermark alarm is in effect",
            alarms.disk || alarms.store,
        ),
        (
            "rabbitmq_alarms_memory_used_watermark",
            "is 1 if VM memory watermark alarm is in effect",
            alarms.memory,
        ),
    ] {
        o.family(name, "untyped", help);
        o.sample(name, &[], u64::from(on));
    }
}

/// Resident memory of this process (Linux; 0 elsewhere).
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn queues(o: &mut Out, v: &View) {
    let q = &v.queues;
    o.each(
        "rabbitmq_queue_messages_ready",
        "gauge",
        "Messages ready to be delivered to consumers",
        q,
        |s| s.ready,
    );
    o.each(
        "rabbitmq_queue_messages_unacked",
        "gauge",
        "Messages delivered to consumers but not yet acknowledged",
        q,
        |s| s.unacked,
    );
    o.each(
        "rabbitmq_queue_messages",
        "gauge",
        "Sum of ready and unacknowledged messages - total queue depth",
        q,
        |s| s.ready + s.unacked,
    );
    o.each(
        "rabbitmq_queue_consumers",
        "gauge",
        "Consumers on a queue",
        q,
        |s| s.consumers,
    );
    o.each(
        "rabbitmq_queue_process_memory_bytes",
        "gauge",
        "Memory in bytes used by the Erlang queue process",
        q,
        |s| s.memory,
    );
    o.each(
        "rabbitmq_queue_messages_ram_bytes",
        "gauge",
        "Size of ready and unacknowledged messages stored in memory",
        q,
        |s| s.memory,
    );
    o.each(
        "rabbitmq_queue_messages_bytes",
        "gauge",
        "Size in bytes of ready and unacknowledged messages",
        q,
        |s| s.ready_bytes,
    );
    o.each(
        "rabbitmq_queue_messages_ready_bytes",
        "gauge",
        "Size in bytes of ready messages",
        q,
        |s| s.ready_bytes,
    );
    o.each(
        "rabbitmq_queue_messages_paged_out_bytes",
        "gauge",
        "Size in bytes of messages paged out to disk",
        q,
        |s| s.paged_out_bytes,
    );
    o.each(
        "rabbitmq_queue_messages_published_total",
        "counter",
        "Total number of messages published to queues",
        q,
        |s| s.counts.publish,
    );
    o.each("rabbitmq_queue_get_ack_total", "counter", "Total number of messages fetched from a queue with basic.get in manual acknowledgement mode", q, |s| s.counts.get);
    o.each("rabbitmq_queue_get_total", "counter", "Total number of messages fetched from a queue with basic.get in automatic acknowledgement mode", q, |s| s.counts.get_no_ack);
    o.each("rabbitmq_queue_messages_delivered_ack_total", "counter", "Total number of messages delivered from a queue to consumers in manual acknowledgement mode", q, |s| s.counts.deliver);
    o.each("rabbitmq_queue_messages_delivered_total", "counter", "Total number of messages delivered from a queue to consumers in automatic acknowledgement mode", q, |s| s.counts.deliver_no_ack);
    o.each(
        "rabbitmq_queue_messages_redelivered_total",
        "counter",
        "Total number of messages redelivered from a queue to consumers",
        q,
        |s| s.counts.redeliver,
    );
    o.each(
        "rabbitmq_queue_messages_acked_total",
        "counter",
        "Total number of messages acknowledged by consumers on a queue",
        q,
        |s| s.counts.ack,
    );
    o.each(
        "rabbitmq_queue_get_empty_total",
        "counter",
        "Total number of times basic.get operations fetched no message on a queue",
        q,
        |s| s.counts.get_empty,
    );
}

fn channels(o: &mut Out, v: &View) {
    let c = &v.channels;
    o.each(
        "rabbitmq_channel_consumers",
        "gauge",
        "Consumers on a channel",
        c,
        |s| s.consumer_count as u64,
    );
    o.each(
        "rabbitmq_channel_messages_unacked",
        "gauge",
        "Delivered but not yet acknowledged messages",
        c,
        |s| s.unacked as u64,
    );
    o.each(
        "rabbitmq_channel_messages_unconfirmed",
        "gauge",
        "Published but not yet confirmed messages",
        c,
        |s| s.unconfirmed as u64,
    );
    o.each(
        "rabbitmq_channel_messages_uncommitted",
        "gauge",
        "Messages received in a transaction but not yet committed",
        c,
        |_| 0,
    );
    o.each(
        "rabbitmq_channel_acks_uncommitted",
        "gauge",
        "Message acknowledgements in a transaction not yet committed",
        c,
        |_| 0,
    );
    o.each(
        "rabbitmq_consumer_prefetch",
        "gauge",
        "Limit of unacknowledged messages for each consumer",
        c,
        |s| u64::from(s.prefetch_count),
    );
    o.each(
        "rabbitmq_channel_prefetch",
        "gauge",
        "Total limit of unacknowledged messages for all consumers on a channel",
        c,
        |s| u64::from(s.global_prefetch_count),
    );
    o.each(
        "rabbitmq_channel_messages_published_total",
        "counter",
        "Total number of messages published into an exchange on a channel",
        c,
        |s| s.counts.publish,
    );
    o.each(
        "rabbitmq_channel_messages_confirmed_total",
        "counter",
        "Total number of messages published into an exchange and confirmed on the channel",
        c,
        |s| s.counts.confirm,
    );
    o.each("rabbitmq_channel_messages_unroutable_returned_total", "counter", "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable", c, |s| s.counts.return_unroutable);
    o.each("rabbitmq_channel_messages_unroutable_dropped_total", "counter", "Total number of messages published as non-mandatory into an exchange and dropped as unroutable", c, |s| dropped(&s.counts));
    o.each(
        "rabbitmq_channel_get_ack_total",
        "counter",
        "Total number of messages fetched with basic.get in manual acknowledgement mode",
        c,
        |s| s.counts.get,
    );
    o.each(
        "rabbitmq_channel_get_total",
        "counter",
        "Total number of messages fetched with basic.get in automatic acknowledgement mode",
        c,
        |s| s.counts.get_no_ack,
    );
    o.each(
        "rabbitmq_channel_messages_delivered_ack_total",
        "counter",
        "Total number of messages delivered to consumers in manual acknowledgement mode",
        c,
        |s| s.counts.deliver,
    );
    o.each(
        "rabbitmq_channel_messages_delivered_total",
        "counter",
        "Total number of messages delivered to consumers in automatic acknowledgement mode",
        c,
        |s| s.counts.deliver_no_ack,
    );
    o.each(
        "rabbitmq_channel_messages_redelivered_total",
        "counter",
        "Total number of messages redelivered to consumers",
        c,
        |s| s.counts.redeliver,
    );
    o.each(
        "rabbitmq_channel_messages_acked_total",
        "counter",
        "Total number of messages acknowledged by consumers",
        c,
        |s| s.counts.ack,
    );
    o.each(
        "rabbitmq_channel_get_empty_total",
        "counter",
        "Total number of times basic.get operations fetched no message",
        c,
        |s| s.counts.get_empty,
    );
}

/// Unroutable publishes that were not returned (non-mandatory).
fn dropped(m: &MsgCounts) -> u64 {
    m.unroutable.saturating_sub(m.return_unroutable)
}

fn connections(o: &mut Out, v: &View) {
    let c = &v.connections;
    o.each(
        "rabbitmq_connection_incoming_bytes_total",
        "counter",
        "Total number of bytes received on a connection",
        c,
        |s| s.0.recv_oct,
    );
    o.each(
        "rabbitmq_connection_outgoing_bytes_total",
        "counter",
        "Total number of bytes sent on a connection",
        c,
        |s| s.0.send_oct,
    );
    o.each(
        "rabbitmq_connection_incoming_packets_total",
        "counter",
        "Total number of packets received on a connection",
        c,
        |s| s.0.recv_cnt,
    );
    o.each(
        "rabbitmq_connection_outgoing_packets_total",
        "counter",
        "Total number of packets sent on a connection",
        c,
        |s| s.0.send_cnt,
    );
    o.each(
        "rabbitmq_connection_channels",
        "gauge",
        "Channels on a connection",
        c,
        |s| s.1 as u64,
    );
}

fn totals(o: &mut Out, b: &Broker, v: &View) {
    let conns = b.connections.len() as u64;
    let chans: u64 = b
        .connection_list()
        .iter()
        .map(|c| c.channel_count() as u64)
        .sum();
    let consumers: u64 = v.queues.iter().map(|(_, s)| s.consumers).sum();
    let queues: u64 = b.vhosts.iter().map(|vh| vh.queues.len() as u64).sum();
    for (name, help, n) in [
        ("rabbitmq_connections", "Connections currently open", conns),
        ("rabbitmq_channels", "Channels currently open", chans),
        (
            "rabbitmq_consumers",
            "Consumers currently connected",
            consumers,
        ),
        ("rabbitmq_queues", "Queues available", queues),
    ] {
        o.family(name, "gauge", help);
        o.sample(name, &[], n);
    }
}

/// `rabbitmq_global_*`: broker-wide counters that never go down (closed
/// channels included), with RabbitMQ's `protocol` / `queue_type` labels.
fn global(o: &mut Out, b: &Broker, v: &View) {
    let m = b.message_totals();
    let p = [(PROTOCOL.0, PROTOCOL.1.to_string())];
    let pq = [p[0].clone(), (CLASSIC.0, CLASSIC.1.to_string())];
    let consumers: u64 = v.queues.iter().map(|(_, s)| s.consumers).sum();
    let publishers = b
        .connection_list()
        .iter()
        .flat_map(|c| c.channel_snapshots())
        .filter(|ch| ch.counts.publish > 0)
        .count() as u64;
    o.family(
        "rabbitmq_global_consumers",
        "gauge",
        "Current number of consumers",
    );
    o.sample("rabbitmq_global_consumers", &p, consumers);
    o.family(
        "rabbitmq_global_publishers",
        "gauge",
        "Current number of publishers",
    );
    o.sample("rabbitmq_global_publishers", &p, publishers);
    let per_protocol: [(&str, &str, u64); 6] = [
        ("received", "Total number of messages received from publishers", m.publish),
        ("received_confirm", "Total number of messages received from publishers expecting confirmations", m.publish_confirm),
        ("routed", "Total number of messages routed to queues or streams", m.routed),
        ("unroutable_dropped", "Total number of messages published as non-mandatory into an exchange and dropped as unroutable", dropped(&m)),
        ("unroutable_returned", "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable", m.return_unroutable),
        ("confirmed", "Total number of messages confirmed to publishers", m.confirm),
    ];
    for (what, help, n) in per_protocol {
        let name = format!("rabbitmq_global_messages_{what}_total");
        o.family(&name, "counter", help);
        o.sample(&name, &p, n);
    }
    let per_queue_type: [(&str, &str, u64); 8] = [
        ("delivered", "Total number of messages delivered to consumers", m.deliver_get()),
        ("delivered_consume_manual_ack", "Total number of messages delivered to consumers using basic.consume with manual acknowledgment", m.deliver),
        ("delivered_consume_auto_ack", "Total number of messages delivered to consumers using basic.consume with automatic acknowledgment", m.deliver_no_ack),
        ("delivered_get_manual_ack", "Total number of messages delivered to consumers using basic.get with manual acknowledgment", m.get),
        ("delivered_get_auto_ack", "Total number of messages delivered to consumers using basic.get with automatic acknowledgment", m.get_no_ack),
        ("get_empty", "Total number of times basic.get operations fetched no message", m.get_empty),
        ("redelivered", "Total number of messages redelivered to consumers", m.redeliver),
        ("acknowledged", "Total number of messages acknowledged by consumers", m.ack),
    ];
    for (what, help, n) in per_queue_type {
        let name = format!("rabbitmq_global_messages_{what}_total");
        o.family(&name, "counter", help);
        o.sample(&name, &pq, n);
    }
    let les: Vec<String> = [
        "100.0", "1000.0", "10000.0", "100000.0", "1e+06", "1e+07", "5e+07", "1e+08", "+Inf",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    debug_assert_eq!(les.len(), MESSAGE_SIZE_BOUNDS.len() + 1);
    let sizes = HistogramCounts {
        buckets: m.sizes.to_vec(),
        sum: m.size_sum,
    };
    o.histogram(
        "rabbitmq_message_size_bytes",
        "Size of messages received from publishers",
        &p,
        &les,
        &sizes,
        m.size_sum.to_string(),
    );
}

/// Hopper's durability figures.
fn hopper(o: &mut Out, b: &Broker, v: &View) {
    let paged: u64 = v.queues.iter().map(|(_, s)| s.paged_out_bytes).sum();
    o.family(
        "hopper_paged_out_bytes",
        "gauge",
        "Bytes of ready message bodies paged out of memory to the store",
    );
    o.sample("hopper_paged_out_bytes", &[], paged);
    let Some(s) = b.store.stats() else { return };
    o.family(
        "hopper_store_fsyncs_total",
        "counter",
        "Synced store writes holding persistent messages (one fsync each)",
    );
    o.sample("hopper_store_fsyncs_total", &[], s.fsyncs);
    o.family(
        "hopper_store_persisted_messages_total",
        "counter",
        "Persistent messages written by synced store writes",
    );
    o.sample("hopper_store_persisted_messages_total", &[], s.messages);
    let les = |bounds: &[u64], scale: f64| -> Vec<String> {
        let mut v: Vec<String> = bounds.iter().map(|&b| float(b as f64 / scale)).collect();
        v.push("+Inf".into());
        v
    };
    o.histogram(
        "hopper_store_messages_per_fsync",
        "Persistent messages per synced store write (group-commit batch size)",
        &[],
        &les(&BATCH_BOUNDS, 1.0),
        &s.batch,
        s.batch.sum.to_string(),
    );
    o.histogram(
        "hopper_confirm_latency_seconds",
        "Time from a persistent publish reaching the store to its synced write, after which it is confirmed",
        &[],
        &les(&LATENCY_BOUNDS_US, 1e6),
        &s.latency_us,
        float(s.latency_us.sum as f64 / 1e6),
    );
}

/// A float as Prometheus clients print one ("1.0", "0.00025", "1e+06").
fn float(v: f64) -> String {
    if v >= 1e6 {
        let exp = v.log10().floor() as i32;
        let mant = v / 10f64.powi(exp);
        if mant == mant.trunc() {
            return format!("{mant}e+{exp:02}");
        }
        return format!("{v:e}");
    }
    if v == v.trunc() {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

fn identity(o: &mut Out, endpoint: &str) {
    let node = super::overview::node_name();
    o.family(
        "rabbitmq_build_info",
        "untyped",
        "RabbitMQ & Erlang/OTP version info",
    );
    o.sample(
        "rabbitmq_build_info",
        &[
            ("product_name", super::overview::PRODUCT_NAME.to_string()),
            ("product_version", env!("CARGO_PKG_VERSION").to_string()),
            (
                "rabbitmq_version",
                super::overview::RABBITMQ_VERSION.to_string(),
            ),
            (
                "prometheus_plugin_version",
                super::overview::RABBITMQ_VERSION.to_string(),
            ),
            ("prometheus_client_version", "hopper".to_string()),
            ("erlang_version", "none".to_string()),
        ],
        1,
    );
    o.family(
        "rabbitmq_identity_info",
        "untyped",
        "RabbitMQ node & cluster identity info",
    );
    o.sample(
        "rabbitmq_identity_info",
        &[
            ("rabbitmq_node", node.clone()),
            ("rabbitmq_cluster", node.clone()),
            (
                "rabbitmq_cluster_permanent_id",
                format!("hopper-cluster-id-{node}"),
            ),
            ("rabbitmq_endpoint", endpoint.to_string()),
        ],
        1,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_prometheus_clients_do() {
        assert_eq!(float(100.0), "100.0");
        assert_eq!(float(1e6), "1e+06");
        assert_eq!(float(5e7), "5e+07");
        assert_eq!(float(0.00025), "0.00025");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut o = Out { s: String::new() };
        o.sample("m", &[("queue", "a\"b\\c\nd".to_string())], 1);
        assert_eq!(o.s, "m{queue=\"a\\\"b\\\\c\\nd\"} 1\n");
    }
}
