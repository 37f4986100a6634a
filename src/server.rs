//! The accept loops: one per listener (plain AMQP and, when configured, amqps),
//! sharing the connection limit and stopping together at shutdown. Each
//! accepted socket gets its own task; a TLS handshake runs in that task, under
//! `limits.handshake_timeout`, so a slow or silent TLS client never holds up
//! accepting others. This module never reads or writes AMQP frames.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::broker::Broker;

/// A bound socket and what to speak on it.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
}

impl Listener {
    /// Plain AMQP 0-9-1.
    pub fn plain(tcp: TcpListener) -> Listener {
        Listener { tcp, tls: None }
    }

    /// AMQP 0-9-1 inside TLS (`amqps`).
    pub fn tls(tcp: TcpListener, acceptor: TlsAcceptor) -> Listener {
        Listener {
            tcp,
            tls: Some(acceptor),
        }
    }
}

/// State shared by all accept loops.
struct Shared {
    broker: Arc<Broker>,
    /// Sockets accepted on a TLS listener whose handshake is still running:
    /// not yet connections, but they hold a socket, so the limit counts them.
    tls_handshakes: AtomicUsize,
}

/// Accept on every listener until `shutdown` completes, then stop accepting
/// (the listeners are closed when this returns).
pub async fn run(
    listeners: Vec<Listener>,
    broker: Arc<Broker>,
    shutdown: impl Future<Output = ()>,
) {
    let shared = Arc::new(Shared {
        broker,
        tls_handshakes: AtomicUsize::new(0),
    });
    // Dropping the sender tells every loop to stop.
    let (stop_tx, stop_rx) = watch::channel(());
    let mut loops = JoinSet::new();
    for listener in listeners {
        loops.spawn(accept_loop(listener, shared.clone(), stop_rx.clone()));
    }
    drop(stop_rx);
    shutdown.await;
    tracing::info!("shutting down");
    drop(stop_tx);
    while loops.join_next().await.is_some() {}
}

async fn accept_loop(listener: Listener, shared: Arc<Shared>, mut stop: watch::Receiver<()>) {
    loop {
        tokio::select! {
            accepted = listener.tcp.accept() => match accepted {
                Ok((stream, peer)) => accepted_socket(stream, peer, &listener, &shared),
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // Only the sender's drop ends this: no value is ever sent.
            _ = stop.changed() => return,
        }
    }
}

fn accepted_socket(stream: TcpStream, peer: SocketAddr, listener: &Listener, shared: &Arc<Shared>) {
    let broker = &shared.broker;
    let max = broker.config.limits.max_connections;
    let live = broker.live_connection_count() + shared.tls_handshakes.load(Ordering::Acquire);
    if max > 0 && live >= max {
        tracing::warn!(peer = %peer, max, "connection limit reached; refusing connection");
        return;
    }
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "set_nodelay failed");
    }
    let broker = broker.clone();
    match &listener.tls {
        None => {
            tokio::spawn(crate::connection::serve(stream, peer, broker));
        }
        Some(acceptor) => {
            let acceptor = acceptor.clone();
            let pending = HandshakeGuard::new(shared.clone());
            tokio::spawn(async move {
                let Some(tls) = tls_handshake(acceptor, stream, peer, &broker).await else {
                    return;
                };
                drop(pending);
                // A handshake that finished after shutdown began would open
                // a connection nobody closes with 320.
                if *broker.shutdown_signal().borrow() {
                    return;
                }
                crate::connection::serve(tls, peer, broker).await;
            });
        }
    }
}

/// The TLS handshake with its deadline; `None` (the socket dropped) on failure.
/// The socket is dropped only after the failure is logged.
async fn tls_handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    broker: &Broker,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let limit = Duration::from_secs(broker.config.limits.handshake_timeout.max(1));
    let accept = acceptor.accept(stream).into_fallible();
    tokio::pin!(accept);
    match tokio::time::timeout(limit, &mut accept).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err((e, _socket))) => {
            // Clients with the wrong CA, plain AMQP on the TLS port, scanners.
            tracing::info!(peer = %peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::info!(peer = %peer, "TLS handshake not finished within {limit:?}, closing");
            None
        }
    }
}

/// Counts a TLS handshake in progress until dropped (whatever way the task ends).
struct HandshakeGuard(Arc<Shared>);

impl HandshakeGuard {
    fn new(shared: Arc<Shared>) -> HandshakeGuard {
        shared.tls_handshakes.fetch_add(1, Ordering::AcqRel);
        HandshakeGuard(shared)
    }
}

impl Drop for HandshakeGuard {
    fn drop(&mut self) {
        self.0.tls_handshakes.fetch_sub(1, Ordering::AcqRel);
    }
}
