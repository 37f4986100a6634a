//! `perf`: a load generator for any AMQP 0-9-1 broker, so hopper and RabbitMQ
//! are measured by the same client (in the spirit of RabbitMQ's PerfTest and
//! LavinMQ's lavinmqperf).
//!
//! ```sh
//! cargo build --release -p perf     # no RocksDB: the tool is a crate of its own
//! target/release/perf --uri amqp://guest:guest@127.0.0.1:5672/%2f --autoack --duration 15
//! target/release/perf --persistent --confirm 100 --prefetch 100 --producers 4 --json
//! target/release/perf --persistent --confirm 100 --prefetch 100 --backlog 1000000 --rss-pid PID
//! target/release/perf --exchange-type fanout --queues 10 --consumers 10 --autoack
//! target/release/perf --connections 1000 --idle 10 --rss-pid PID
//! ```
//!
//! Modules: `uri` (amqp:// URIs), `client` (the lean AMQP client on
//! amq-protocol's codec: handshake and synchronous methods), `wire` (the hot
//! path: frames in the receive buffer, pre-encoded publishes), `load`
//! (producer and consumer tasks, counters), `confirms` (which publishes
//! a confirm settles),
//! `scenario` (run, backlog and drain modes), `idle` (idle connections),
//! `topology` (queues and exchange), `rss` (broker memory
//! sampling), `report` (JSON and text output). The tool is not the broker: it
//! reports errors with anyhow and exits non-zero when the broker refuses
//! something.

#![deny(unsafe_code)]
#![warn(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod client;
mod confirms;
mod idle;
mod load;
mod report;
mod rss;
mod scenario;
mod topology;
mod uri;
mod wire;

use clap::{Parser, ValueEnum};
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExchangeType {
    /// The default exchange: producer i publishes to queue i mod --queues.
    Direct,
    /// One fanout exchange (--exchange) bound to every queue.
    Fanout,
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "perf",
    about = "Load generator for AMQP 0-9-1 brokers (hopper, RabbitMQ): rates and latency percentiles"
)]
pub struct Args {
    /// Broker URI: amqp://user:pass@host:port/vhost (vhost percent-encoded);
    /// several, comma-separated (a cluster's nodes), spread the producers
    /// and consumers over them in turn.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub uri: String,
    /// Producers, each on its own connection.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Consumers, each on its own connection.
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Message body size in bytes (at least 8: the publish timestamp).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(8..))]
    pub size: u32,
    /// Persistent messages (delivery-mode 2) and durable queues.
    #[arg(long)]
    pub persistent: bool,
    /// Declare the queues as quorum queues (`x-queue-type: quorum`; durable).
    #[arg(long)]
    pub quorum: bool,
    /// Publisher confirms with at most N unconfirmed messages per producer (0: off).
    #[arg(long, default_value_t = 0)]
    pub confirm: usize,
    /// basic.qos prefetch count per consumer (0: unlimited).
    #[arg(long, default_value_t = 0)]
    pub prefetch: u16,
    /// Ack every N deliveries (multiple=true when N > 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub ack_every: u64,
    /// Consume without acks (no-ack).
    #[arg(long)]
    pub autoack: bool,
    /// Length of the measured window in seconds (run mode).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Messages per second per producer (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Queue name (with --queues N > 1: NAME-0 .. NAME-{N-1}).
    #[arg(long, default_value = "perf-q")]
    pub queue: String,
    /// Number of queues.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub queues: u32,
    /// Routing: direct (default exchange, producer i to queue i mod N) or
    /// fanout (every message to every queue).
    #[arg(long, value_enum, default_value_t = ExchangeType::Direct)]
    pub exchange_type: ExchangeType,
    /// Name of the fanout exchange.
    #[arg(long, default_value = "perf-fanout")]
    pub exchange: String,
    /// Backlog mode: publish N messages with no consumer (split among the
    /// producers), then drain them with the consumers; times both phases.
    #[arg(long, default_value_t = 0)]
    pub backlog: u64,
    /// Backlog mode: stop after publishing and keep the queues (e.g. to
    /// restart the broker, then --drain).
    #[arg(long)]
    pub publish_only: bool,
    /// Drain mode: consume N messages already in the queues as fast as
    /// possible, then exit (implies --no-purge).
    #[arg(long, default_value_t = 0)]
    pub drain: u64,
    /// Do not purge the queues before starting.
    #[arg(long)]
    pub no_purge: bool,
    /// Do not delete the queues (and the fanout exchange) at the end.
    #[arg(long)]
    pub keep_queues: bool,
    /// Idle mode: open N connections with one channel each and hold them.
    #[arg(long, default_value_t = 0)]
    pub connections: usize,
    /// Idle mode: seconds to hold the connections.
    #[arg(long, default_value_t = 5)]
    pub idle: u64,
    /// Sample this process's VmRSS (the broker) every 100 ms; report the
    /// peak per phase.
    #[arg(long)]
    pub rss_pid: Option<u32>,
    /// Print one JSON object on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// No per-second progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("perf: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(scenario::run(args.clone())) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("perf: cannot encode the report: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", report.text());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("perf: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
