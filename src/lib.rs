//! Hopper: an AMQP 0-9-1 message broker that RabbitMQ clients use unchanged.
//!
//! Module map (a frame's way through the broker, top to bottom):
//! - `run`: the entry point, `hopper::run(config, shutdown)`: store, broker,
//!   listeners, background tasks, shutdown (the binary and the in-process
//!   test harness both start here).
//! - `server`: accept loops (plain and amqps), connection limit, TLS handshake.
//! - `tls`: the rustls server configuration from `[tls]` (cert, key, client CAs).
//! - `connection`: one task per socket: handshake, frame loop, heartbeats,
//!   connection errors; `connection::writer` batches outgoing frames.
//! - `protocol`: frames in (`frame`) and out (`encode`), reply codes.
//! - `channel`: per-channel state machine: content assembly, the basic /
//!   exchange / queue / confirm methods; `channel::handle` is what queues and
//!   the store share with a channel (consumers, unacked deliveries, confirms).
//! - `broker`: vhosts with exchanges, queues, bindings; recovery at boot.
//! - `exchange`: routing (direct, fanout, topic, headers).
//! - `queue`: ready messages, consumers, round-robin delivery, requeue.
//! - `store`: the storage trait; `store::rocks` is the only RocksDB user;
//!   `store::health` reports failed writes and the way back (disk alarm).
//! - `auth`: users (password hashes), vhost access and permissions.
//! - `config`: the configuration file.
//! - `stats`: counters that cost nothing measurable on the message paths
//!   (single-writer, thread-sharded, histograms) for the management API and
//!   Prometheus.
//! - `cluster`: `[cluster]` only: openraft (every type of it stays here), the
//!   meta group replicating definitions, Raft logs on the store's committer,
//!   the inter-node link.
//! - `http`: the management HTTP API (RabbitMQ's `/api`): reads broker state,
//!   changes it through the same broker functions AMQP uses.
//!
//! Layers: a module names (`crate::x`, or `super::` out of itself) only
//! modules of its own layer or below, never a higher one:
//! 1. `protocol`, `message`, `store`, `error`, `config`, `auth`, `batch`, `tls`,
//!    `stats`
//! 2. `queue` (defines what a consumer must offer it; never names `channel`)
//! 3. `exchange`
//! 4. `broker` (never names `channel`)
//! 5. `cluster` (applies replicated definitions through `broker`)
//! 6. `channel`
//! 7. `connection`
//! 8. `run`, `server`, `http`, `main` and this crate root
//!
//! `scripts/check-layers.sh` (run by CI) enforces it outside `#[cfg(test)]`
//! code; `scripts/layers-allow.txt` lists the old violations still to remove.

#![deny(unsafe_code)]
#![warn(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod auth;
pub mod batch;
pub mod broker;
pub mod channel;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod error;
pub mod exchange;
pub mod http;
pub mod message;
pub mod protocol;
pub mod queue;
pub mod run;
pub mod server;
pub mod stats;
pub mod store;
pub mod tls;

#[cfg(feature = "rocks")]
pub use run::run;
pub use run::{run_with_store, Running};
