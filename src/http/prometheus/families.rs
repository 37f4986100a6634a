//! The families of a scrape, one function per group as RabbitMQ's
//! collector groups them (node, queues, channels, connections, totals,
//! global counters), then Hopper's own durability families.

use super::{float, Out, View};
use crate::broker::Broker;
use crate::stats::{HistogramCounts, MsgCounts, MESSAGE_SIZE_BOUNDS};
use crate::store::stats::{BATCH_BOUNDS, LATENCY_BOUNDS_US};

const PROTOCOL: (&str, &str) = ("protocol", "amqp091");
const CLASSIC: (&str, &str) = ("queue_type", "rabbit_classic_queue");

pub(super) fn node(o: &mut Out, b: &Broker) {
    let churn = crate::http::rates::take_churn(b);
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
    let st = &b.stats;
    for (name, help, amqp, http) in [
        (
            "rabbitmq_auth_attempts_total",
            "Total number of authorization attempts",
            st.auth_amqp_succeeded.get() + st.auth_amqp_failed.get(),
            st.auth_http_succeeded.get() + st.auth_http_failed.get(),
        ),
        (
            "rabbitmq_auth_attempts_succeeded_total",
            "Total number of successful authentication attempts",
            st.auth_amqp_succeeded.get(),
            st.auth_http_succeeded.get(),
        ),
        (
            "rabbitmq_auth_attempts_failed_total",
            "Total number of failed authentication attempts",
            st.auth_amqp_failed.get(),
            st.auth_http_failed.get(),
        ),
    ] {
        o.family(name, "counter", help);
        o.sample(name, &[("protocol", "http".to_string())], http);
        o.sample(name, &[("protocol", "amqp091".to_string())], amqp);
    }
    let (fd_used, fd_total) = crate::http::overview::fds();
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

pub(super) fn queues(o: &mut Out, v: &View) {
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

pub(super) fn channels(o: &mut Out, v: &View) {
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

pub(super) fn connections(o: &mut Out, v: &View) {
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

pub(super) fn totals(o: &mut Out, b: &Broker, v: &View) {
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
pub(super) fn global(o: &mut Out, b: &Broker, v: &View) {
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
pub(super) fn hopper(o: &mut Out, b: &Broker, v: &View) {
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
