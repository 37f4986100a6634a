//! Hopper: an AMQP 0-9-1 message broker that RabbitMQ clients use unchanged.
//!
//! Module map (a frame's way through the broker, top to bottom):
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
//! - `store`: the storage trait; `store::rocks` is the only RocksDB user.
//! - `auth`: users (password hashes), vhost access and permissions.
//! - `config`: the configuration file.
//! - `http`: the management HTTP API (RabbitMQ's `/api`): reads broker state,
//!   changes it through the same broker functions AMQP uses.

#![deny(unsafe_code)]
#![warn(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod auth;
pub mod batch;
pub mod broker;
pub mod channel;
pub mod config;
pub mod connection;
pub mod error;
pub mod exchange;
pub mod http;
pub mod message;
pub mod protocol;
pub mod queue;
pub mod server;
pub mod store;
pub mod tls;
