//! The broker in the test's own runtime: [`InProc::start`] calls
//! `hopper::run` (the binary's own entry point) on a fresh data directory
//! with port 0 and the management API and Prometheus listener off.
//!
//! Its point is time. [`paused`] runs a test on a current-thread runtime whose
//! tokio clock is paused, so heartbeats, handshake and write timeouts, TTLs,
//! `x-expires` and the sweeper follow the test's `tokio::time::sleep` /
//! `advance` instantly instead of real seconds. A paused clock jumps to the
//! next timer whenever the runtime has nothing to run, so for the jumps to be
//! the test's and nothing else's, everything a paused test waits for must run
//! on that runtime:
//! - talk to the broker through [`InProc::raw`]: a [`RawClient`] over an
//!   in-memory `tokio::io::duplex` served by `connection::serve` (no socket,
//!   no I/O driver; lapin runs its own threads and must not be used);
//! - wait for nothing the store's threads complete: publisher confirms of
//!   persistent messages on durable queues, or their delivery (held back
//!   until synced). While the runtime waits for an fsync the clock would race
//!   from timer to timer. Transient messages and non-durable queues never
//!   reach the store; durable declares are synchronous and safe.
//!
//! These tests cannot run against an external broker: [`skip_in_external_mode`]
//! makes them skip themselves (with a printed reason) when
//! `HOPPER_TEST_EXTERNAL_URI` is set.

use super::raw::{self, Auth, RawClient};
use super::{EXTERNAL_ENV, WAIT};
use hopper::broker::Broker;
use hopper::config::Config;
use lapin::protocol::{self as proto, AMQPClass};
use lapin::types::FieldTable;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

/// A broker started with `hopper::run` in the current runtime.
pub struct InProc {
    running: Option<hopper::Running>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    broker: Arc<Broker>,
    amqp: SocketAddr,
    // Dropped last: the store is shut down before its directory goes.
    dir: tempfile::TempDir,
}

impl InProc {
    /// Start with the default config (conf/broker.toml).
    pub async fn start() -> InProc {
        Self::start_with(|_| {}).await
    }

    /// Start with the default config changed by `edit` (data dir, listen
    /// address, management and metrics are set before `edit` runs).
    pub async fn start_with(edit: impl FnOnce(&mut Config)) -> InProc {
        let dir = tempfile::Builder::new()
            .prefix("hopper-inproc-")
            .tempdir()
            .expect("create temp data dir");
        let mut config = Config::default_config().expect("the default config");
        config.listen = "127.0.0.1:0".to_string();
        config.management.listen = "off".to_string();
        config.prometheus.listen = "off".to_string();
        config.data_dir = dir.path().to_path_buf();
        edit(&mut config);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let running = hopper::run(config, async move {
            let _ = rx.await;
        })
        .await
        .expect("start the broker in-process");
        InProc {
            broker: running.broker.clone(),
            amqp: running.amqp,
            running: Some(running),
            stop: Some(tx),
            dir,
        }
    }

    /// The broker object itself (queues, config, alarms).
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// The TCP listener's address (for real-time tests only: see the module docs).
    pub fn addr(&self) -> SocketAddr {
        self.amqp
    }

    /// A raw client connected through an in-memory duplex (nothing sent yet).
    pub fn raw(&self) -> RawClient {
        let (client, server) = tokio::io::duplex(256 * 1024);
        // A loopback peer, as a local TCP client would be (guest may log in).
        let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
        tokio::spawn(hopper::connection::serve(server, peer, self.broker.clone()));
        RawClient::over(client)
    }

    /// A raw client after the handshake (guest, vhost "/", `heartbeat` s; 0 = off).
    pub async fn raw_open(&self, heartbeat: u16) -> RawClient {
        let mut c = self.raw();
        c.handshake_on(Auth::Plain("guest", "guest"), heartbeat, "/")
            .await;
        c
    }

    /// Shut down as SIGTERM does (320 to clients, store synced) and wait for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(r) = self.running.take() {
            r.stopped().await.expect("broker stopped");
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for InProc {
    fn drop(&mut self) {
        // Not stopped by the test (it failed, or did not care): the runtime
        // ends with the test, so stop the store's threads here.
        if self.running.is_some() {
            self.broker.store.shutdown();
        }
    }
}

/// Run `test` on a current-thread runtime with tokio's clock paused (see the
/// module docs).
pub fn paused<F: Future<Output = ()>>(test: F) {
    // The broker's expiry clock takes its base at the first reading; taken
    // before the paused clock starts, that clock never reads behind it.
    let _ = hopper::queue::now_ms();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("build a paused runtime")
        .block_on(test)
}

/// True (after printing why) when the suite runs against an external broker:
/// an in-process test has nothing to test there.
pub fn skip_in_external_mode() -> bool {
    let external = std::env::var(EXTERNAL_ENV).is_ok_and(|u| !u.trim().is_empty());
    if external {
        eprintln!(
            "skipped: starts hopper in-process (paused time), impossible against the external broker"
        );
    }
    external
}

/// Shorthands for the paused tests (raw clients have no lapin).
impl RawClient {
    /// queue.declare (non-durable) with `arguments`; returns the message count.
    pub async fn declare(&mut self, channel: u16, name: &str, arguments: FieldTable) -> u32 {
        self.send_method(
            channel,
            &AMQPClass::Queue(proto::queue::AMQPMethod::Declare(proto::queue::Declare {
                queue: name.into(),
                passive: false,
                durable: false,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments,
            })),
        )
        .await;
        match self.expect_method(channel).await {
            AMQPClass::Queue(proto::queue::AMQPMethod::DeclareOk(ok)) => ok.message_count,
            other => panic!("expected queue.declare-ok for {name}, got {other:?}"),
        }
    }

    /// The ready-message count of an existing queue (passive declare).
    pub async fn count(&mut self, channel: u16, name: &str) -> u32 {
        self.send_method(channel, &super::raw::queue_declare(name, true))
            .await;
        match self.expect_method(channel).await {
            AMQPClass::Queue(proto::queue::AMQPMethod::DeclareOk(ok)) => ok.message_count,
            other => panic!("expected queue.declare-ok for {name}, got {other:?}"),
        }
    }

    /// basic.publish of a transient message, with an `expiration` property if given.
    pub async fn publish(
        &mut self,
        channel: u16,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        expiration: Option<&str>,
    ) {
        let mut header = Vec::new();
        header.extend_from_slice(&60u16.to_be_bytes()); // class basic
        header.extend_from_slice(&0u16.to_be_bytes()); // weight
        header.extend_from_slice(&(body.len() as u64).to_be_bytes());
        match expiration {
            Some(e) => {
                header.extend_from_slice(&0x0100u16.to_be_bytes()); // expiration only
                header.push(e.len() as u8);
                header.extend_from_slice(e.as_bytes());
            }
            None => header.extend_from_slice(&0u16.to_be_bytes()),
        }
        let mut bytes = raw::method_frame(channel, &raw::basic_publish(exchange, routing_key));
        bytes.extend(raw::frame(raw::FRAME_HEADER, channel, &header));
        bytes.extend(raw::body_frame(channel, body));
        self.send(&bytes).await;
    }

    /// basic.get with no-ack: the body, or None when the queue is empty.
    pub async fn get(&mut self, channel: u16, queue: &str) -> Option<Vec<u8>> {
        self.send_method(
            channel,
            &AMQPClass::Basic(proto::basic::AMQPMethod::Get(proto::basic::Get {
                queue: queue.into(),
                no_ack: true,
            })),
        )
        .await;
        match self.expect_method(channel).await {
            AMQPClass::Basic(proto::basic::AMQPMethod::GetOk(_)) => {}
            AMQPClass::Basic(proto::basic::AMQPMethod::GetEmpty(_)) => return None,
            other => panic!("expected basic.get-ok or get-empty, got {other:?}"),
        }
        let header = self.read_frame(WAIT).await.expect("content header");
        assert_eq!(header.typ, raw::FRAME_HEADER, "expected a content header");
        let size = u64::from_be_bytes(header.payload[4..12].try_into().expect("8 bytes")) as usize;
        let mut body = Vec::with_capacity(size);
        while body.len() < size {
            let f = self.read_frame(WAIT).await.expect("body frame");
            assert_eq!(f.typ, raw::FRAME_BODY, "expected a body frame");
            body.extend_from_slice(&f.payload);
        }
        Some(body)
    }

    /// Every message left in `queue`, by basic.get, in order.
    pub async fn drain(&mut self, channel: u16, queue: &str) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(b) = self.get(channel, queue).await {
            out.push(b);
            assert!(out.len() < 10_000, "queue {queue} never runs dry");
        }
        out
    }
}
