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

mod families;

use std::fmt::Write as _;

use crate::broker::connections::ChannelSnapshot;
use crate::broker::Broker;
use crate::queue::QueueStats;
use crate::stats::{HistogramCounts, IoCounts};
use families::{channels, connections, global, hopper, node, queues, totals};

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

/// A float as Prometheus clients print one ("1.0", "0.00025", "1e+06").
pub(super) fn float(v: f64) -> String {
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
