//! The result of a run: one JSON object (`--json`) or a few readable lines.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::rss::RssReport;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        Some(Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p95_us: h.value_at_quantile(0.95),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
            mean_us: (h.mean() * 10.0).round() / 10.0,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub producers: usize,
    pub consumers: usize,
    pub size: usize,
    pub persistent: bool,
    pub confirm: usize,
    pub prefetch: u16,
    pub ack_every: u64,
    pub autoack: bool,
    pub rate: u64,
    pub queues: Vec<String>,
    pub exchange: String,
    pub exchange_type: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Backlog {
    pub messages: u64,
    pub published: u64,
    pub publish_secs: f64,
    pub publish_rate: f64,
    pub drained: u64,
    pub drain_secs: f64,
    pub drain_rate: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Idle {
    pub connections: usize,
    pub open_secs: f64,
    pub idle_secs: u64,
    pub rss_before_kb: Option<u64>,
    pub rss_after_kb: Option<u64>,
    pub per_connection_kb: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencyReport {
    pub end_to_end: Option<Latency>,
    pub confirm: Option<Latency>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub uri: String,
    /// run, backlog, publish-only, drain or idle.
    pub mode: String,
    pub config: Config,
    /// The measured window (run mode) or the whole of the phases.
    pub elapsed_secs: f64,
    pub published: u64,
    pub confirmed: u64,
    pub nacked: u64,
    pub consumed: u64,
    pub publish_rate: f64,
    pub confirm_rate: f64,
    pub consume_rate: f64,
    pub latency: LatencyReport,
    pub blocked: u64,
    pub backlog: Option<Backlog>,
    pub idle: Option<Idle>,
    pub rss: Option<RssReport>,
}

pub fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        (n as f64 / secs).round()
    } else {
        0.0
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

impl Report {
    pub fn text(&self) -> String {
        let c = &self.config;
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        if self.mode == "idle" {
            line(format!("{} mode=idle", self.uri));
        } else {
            line(format!(
            "{} mode={} producers={} consumers={} size={}B {} confirm={} prefetch={} {} queues={} exchange={:?} ({})",
            self.uri,
            self.mode,
            c.producers,
            c.consumers,
            c.size,
            if c.persistent { "persistent" } else { "transient" },
            c.confirm,
            c.prefetch,
            if c.autoack {
                "autoack".to_string()
            } else {
                format!("ack-every={}", c.ack_every)
            },
            c.queues.len(),
            c.exchange,
            c.exchange_type,
        ));
        }
        if self.mode != "idle" {
            line(format!(
                "over {:.1}s: published {:.0}/s  confirmed {:.0}/s  consumed {:.0}/s  (totals {} / {} / {}, nacked {})",
                self.elapsed_secs,
                self.publish_rate,
                self.confirm_rate,
                self.consume_rate,
                self.published,
                self.confirmed,
                self.consumed,
                self.nacked
            ));
        }
        for (name, l) in [
            ("end-to-end", &self.latency.end_to_end),
            ("publish-to-confirm", &self.latency.confirm),
        ] {
            if let Some(l) = l {
                line(format!(
                    "latency {name} ms: p50 {:.3}  p95 {:.3}  p99 {:.3}  max {:.3}  (n={})",
                    ms(l.p50_us),
                    ms(l.p95_us),
                    ms(l.p99_us),
                    ms(l.max_us),
                    l.count
                ));
            }
        }
        if let Some(b) = &self.backlog {
            line(format!(
                "backlog {}: published {} in {:.2}s ({:.0}/s), drained {} in {:.2}s ({:.0}/s)",
                b.messages,
                b.published,
                b.publish_secs,
                b.publish_rate,
                b.drained,
                b.drain_secs,
                b.drain_rate
            ));
        }
        if let Some(i) = &self.idle {
            line(format!(
                "idle: {} connections opened in {:.2}s, held {}s",
                i.connections, i.open_secs, i.idle_secs
            ));
            if let (Some(b), Some(a), Some(per)) =
                (i.rss_before_kb, i.rss_after_kb, i.per_connection_kb)
            {
                line(format!(
                    "broker RSS {:.1} MiB before, {:.1} MiB after: {:.1} KiB per connection",
                    mib(b),
                    mib(a),
                    per
                ));
            }
        }
        if self.blocked > 0 {
            line(format!(
                "the broker blocked publishers {} time(s) (memory alarm)",
                self.blocked
            ));
        }
        if let Some(r) = &self.rss {
            for p in &r.phases {
                line(format!(
                    "broker RSS (pid {}) {}: start {:.1} MiB, peak {:.1} MiB, end {:.1} MiB",
                    r.pid,
                    p.phase,
                    mib(p.start_kb),
                    mib(p.peak_kb),
                    mib(p.end_kb)
                ));
            }
        }
        out
    }
}
