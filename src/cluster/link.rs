//! The inter-node link: one TCP connection per node pair (the lower id dials
//! the higher), length-delimited frames of postcard-encoded messages,
//! reconnecting with backoff, authenticated both ways with an HMAC-SHA256
//! challenge over the shared secret when one is set. It carries requests of
//! any Raft group (a group id in each) both ways and matches replies by id.
//! Owns sockets and framing only; what a request means is the `Handler`'s.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::log::{decode, encode};
use super::types::GroupId;

/// Largest frame once the peer is authenticated: an append carrying the
/// largest message a client may publish, with room to spare (appends are
/// otherwise cut at `network::APPEND_BUDGET`, snapshots sent in chunks).
const MAX_FRAME: usize = crate::config::MAX_MESSAGE_SIZE_CAP as usize + 64 * 1024 * 1024;
/// Largest frame before: the handshake's few bytes (an unauthenticated
/// peer never makes this node reserve more).
const HANDSHAKE_FRAME: usize = 64 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What a request or a reply carries: encoded by the caller (the group's
/// RPC types are the cluster's business, not the link's).
pub type Payload = Vec<u8>;

#[derive(Debug, Serialize, Deserialize)]
enum Frame {
    /// Dialer → acceptor: who I am and a nonce for the acceptor to sign.
    Hello {
        node: u64,
        nonce: [u8; 32],
    },
    /// Acceptor → dialer: who I am, my proof, and a nonce for the dialer.
    Challenge {
        node: u64,
        mac: Vec<u8>,
        nonce: [u8; 32],
    },
    /// Dialer → acceptor: the dialer's proof.
    Auth {
        mac: Vec<u8>,
    },
    /// Acceptor → dialer: accepted.
    Welcome,
    Request {
        id: u64,
        group: GroupId,
        #[serde(with = "serde_bytes")]
        body: Payload,
    },
    Response {
        id: u64,
        result: Answer,
    },
}

/// A reply's payload, written as one byte string (not byte by byte).
#[derive(Debug, Serialize, Deserialize)]
enum Answer {
    Ok(#[serde(with = "serde_bytes")] Payload),
    Err(String),
}

impl From<Result<Payload, String>> for Answer {
    fn from(r: Result<Payload, String>) -> Answer {
        match r {
            Ok(p) => Answer::Ok(p),
            Err(e) => Answer::Err(e),
        }
    }
}

impl From<Answer> for Result<Payload, String> {
    fn from(a: Answer) -> Self {
        match a {
            Answer::Ok(p) => Ok(p),
            Answer::Err(e) => Err(e),
        }
    }
}

/// Answers the requests peers send.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        from: u64,
        group: GroupId,
        body: Payload,
    ) -> futures_util::future::BoxFuture<'static, Result<Payload, String>>;
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("node {0} is not connected")]
    NotConnected(u64),
    #[error("node {0} did not answer in time")]
    Timeout(u64),
    #[error("node {0} answered with an error: {1}")]
    Remote(u64, String),
    #[error("unknown node {0}")]
    Unknown(u64),
}

struct PeerConn {
    tx: mpsc::UnboundedSender<Frame>,
    /// Distinguishes this connection from a later one (replies of a dead
    /// connection fail their callers).
    generation: u64,
}

type Pending = HashMap<u64, oneshot::Sender<Result<Payload, String>>>;

struct Peer {
    addr: String,
    conn: Mutex<Option<PeerConn>>,
    pending: Mutex<Pending>,
}

pub struct Link {
    me: u64,
    secret: Option<Vec<u8>>,
    peers: HashMap<u64, Peer>,
    next_id: AtomicU64,
    generation: AtomicU64,
    handler: std::sync::OnceLock<Arc<dyn Handler>>,
    /// Told the peer's id whenever a connection to it ends.
    on_down: std::sync::OnceLock<Arc<dyn Fn(u64) + Send + Sync>>,
}

fn mac(secret: &[u8], role: &[u8], nonce: &[u8; 32], node: u64) -> Vec<u8> {
    // Any key length is valid for HMAC; new_from_slice cannot fail here.
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(secret) else {
        return Vec::new();
    };
    m.update(role);
    m.update(nonce);
    m.update(&node.to_be_bytes());
    m.finalize().into_bytes().to_vec()
}

fn verify(secret: &Option<Vec<u8>>, role: &[u8], nonce: &[u8; 32], node: u64, got: &[u8]) -> bool {
    match secret {
        None => true,
        Some(s) => {
            let Ok(mut m) = Hmac::<Sha256>::new_from_slice(s) else {
                return false;
            };
            m.update(role);
            m.update(nonce);
            m.update(&node.to_be_bytes());
            m.verify_slice(got).is_ok()
        }
    }
}

type Conn = Framed<TcpStream, LengthDelimitedCodec>;

async fn send(conn: &mut Conn, f: &Frame) -> io::Result<()> {
    conn.send(Bytes::from(encode(f)?)).await
}

async fn recv(conn: &mut Conn) -> io::Result<Frame> {
    match conn.next().await {
        Some(Ok(b)) => decode(&b),
        Some(Err(e)) => Err(e),
        None => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "link closed")),
    }
}

fn framed(s: TcpStream) -> Conn {
    let _ = s.set_nodelay(true);
    let codec = LengthDelimitedCodec::builder()
        .max_frame_length(HANDSHAKE_FRAME)
        .new_codec();
    Framed::new(s, codec)
}

/// The handshake is over: frames may now be as large as a message.
fn authenticated(mut conn: Conn) -> Conn {
    conn.codec_mut().set_max_frame_length(MAX_FRAME);
    conn
}

impl Link {
    pub fn new(me: u64, secret: Option<Vec<u8>>, peers: &[(u64, String)]) -> Arc<Link> {
        let peers = peers
            .iter()
            .filter(|(id, _)| *id != me)
            .map(|(id, addr)| {
                let p = Peer {
                    addr: addr.clone(),
                    conn: Mutex::new(None),
                    pending: Mutex::new(HashMap::new()),
                };
                (*id, p)
            })
            .collect();
        Arc::new(Link {
            me,
            secret,
            peers,
            next_id: AtomicU64::new(1),
            generation: AtomicU64::new(1),
            handler: std::sync::OnceLock::new(),
            on_down: std::sync::OnceLock::new(),
        })
    }

    pub fn set_handler(&self, h: Arc<dyn Handler>) {
        let _ = self.handler.set(h);
    }

    /// Call `f(peer)` whenever a connection to `peer` ends.
    pub fn on_down(&self, f: Arc<dyn Fn(u64) + Send + Sync>) {
        let _ = self.on_down.set(f);
    }

    /// Accept peers on `listener` and dial every peer with a higher id.
    pub fn start(
        self: &Arc<Self>,
        listener: TcpListener,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let link = self.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stop.changed() => return,
                };
                match accepted {
                    Ok((s, addr)) => {
                        let link = link.clone();
                        tokio::spawn(async move {
                            if let Err(e) = link.accept(s).await {
                                tracing::warn!(peer = %addr, error = %e, "cluster link refused");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster link accept failed");
                        tokio::time::sleep(BACKOFF_MIN).await;
                    }
                }
            }
        });
        for (&id, _) in self.peers.iter().filter(|(id, _)| **id > self.me) {
            let link = self.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move { link.dial_loop(id, stop).await });
        }
    }

    async fn dial_loop(self: Arc<Self>, id: u64, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            if *stop.borrow() {
                return;
            }
            let Some(addr) = self.peers.get(&id).map(|p| p.addr.clone()) else {
                return;
            };
            let attempt = async {
                let s = TcpStream::connect(&addr).await?;
                let mut conn = framed(s);
                tokio::time::timeout(HANDSHAKE_TIMEOUT, self.dial_handshake(&mut conn, id))
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "handshake timed out")
                    })??;
                Ok::<_, io::Error>(authenticated(conn))
            };
            let result = tokio::select! {
                r = attempt => r,
                _ = stop.changed() => return,
            };
            match result {
                Ok(conn) => {
                    tracing::info!(peer = id, %addr, "cluster link up");
                    backoff = BACKOFF_MIN;
                    self.run(id, conn, stop.clone()).await;
                    tracing::info!(peer = id, "cluster link down");
                }
                Err(e) => tracing::debug!(peer = id, %addr, error = %e, "cluster link dial failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn dial_handshake(&self, conn: &mut Conn, id: u64) -> io::Result<()> {
        let nonce: [u8; 32] = rand::random();
        send(
            conn,
            &Frame::Hello {
                node: self.me,
                nonce,
            },
        )
        .await?;
        let Frame::Challenge {
            node,
            mac: their,
            nonce: theirs,
        } = recv(conn).await?
        else {
            return Err(io::Error::other("expected a challenge"));
        };
        if node != id || !verify(&self.secret, b"acceptor", &nonce, node, &their) {
            return Err(io::Error::other(format!(
                "node at the address of {id} failed authentication"
            )));
        }
        let proof = self
            .secret
            .as_deref()
            .map(|s| mac(s, b"dialer", &theirs, self.me))
            .unwrap_or_default();
        send(conn, &Frame::Auth { mac: proof }).await?;
        match recv(conn).await? {
            Frame::Welcome => Ok(()),
            _ => Err(io::Error::other("expected welcome")),
        }
    }

    async fn accept(self: Arc<Self>, s: TcpStream) -> io::Result<()> {
        let mut conn = framed(s);
        let id = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let Frame::Hello { node, nonce } = recv(&mut conn).await? else {
                return Err(io::Error::other("expected hello"));
            };
            if node >= self.me || !self.peers.contains_key(&node) {
                return Err(io::Error::other(format!(
                    "node {node} may not dial node {}",
                    self.me
                )));
            }
            let ours: [u8; 32] = rand::random();
            let proof = self
                .secret
                .as_deref()
                .map(|s| mac(s, b"acceptor", &nonce, self.me))
                .unwrap_or_default();
            send(
                &mut conn,
                &Frame::Challenge {
                    node: self.me,
                    mac: proof,
                    nonce: ours,
                },
            )
            .await?;
            let Frame::Auth { mac: theirs } = recv(&mut conn).await? else {
                return Err(io::Error::other("expected auth"));
            };
            if !verify(&self.secret, b"dialer", &ours, node, &theirs) {
                return Err(io::Error::other(format!(
                    "node {node} failed authentication"
                )));
            }
            send(&mut conn, &Frame::Welcome).await?;
            Ok(node)
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))??;
        tracing::info!(peer = id, "cluster link up");
        let (_tx, never) = tokio::sync::watch::channel(false);
        self.run(id, authenticated(conn), never).await;
        tracing::info!(peer = id, "cluster link down");
        Ok(())
    }

    /// Serve one authenticated connection until it breaks.
    async fn run(&self, id: u64, conn: Conn, mut stop: tokio::sync::watch::Receiver<bool>) {
        let Some(peer) = self.peers.get(&id) else {
            return;
        };
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
        *peer.conn.lock() = Some(PeerConn {
            tx: tx.clone(),
            generation,
        });
        let (mut sink, mut stream) = conn.split();
        let writer = async {
            while let Some(f) = rx.recv().await {
                let Ok(bytes) = encode(&f) else { continue };
                if sink.send(Bytes::from(bytes)).await.is_err() {
                    break;
                }
            }
        };
        let reader = async {
            while let Some(Ok(b)) = stream.next().await {
                match decode::<Frame>(&b) {
                    Ok(Frame::Request {
                        id: rid,
                        group,
                        body,
                    }) => {
                        let Some(h) = self.handler.get().cloned() else {
                            continue;
                        };
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            let result = h.handle(id, group, body).await;
                            let _ = tx.send(Frame::Response {
                                id: rid,
                                result: result.into(),
                            });
                        });
                    }
                    Ok(Frame::Response { id: rid, result }) => {
                        if let Some(w) = peer.pending.lock().remove(&rid) {
                            let _ = w.send(result.into());
                        }
                    }
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(peer = id, error = %e, "undecodable cluster frame");
                        break;
                    }
                }
            }
        };
        tokio::select! {
            _ = writer => {}
            _ = reader => {}
            _ = stop.changed() => {}
        }
        let current = {
            let mut c = peer.conn.lock();
            let current = c.as_ref().is_some_and(|c| c.generation == generation);
            if current {
                *c = None;
            }
            current
        };
        if current {
            if let Some(f) = self.on_down.get() {
                f(id);
            }
        }
    }

    /// Send a request to a peer and wait for its reply.
    pub async fn call(
        &self,
        to: u64,
        group: GroupId,
        body: Payload,
        ttl: Duration,
    ) -> Result<Payload, LinkError> {
        let peer = self.peers.get(&to).ok_or(LinkError::Unknown(to))?;
        let rid = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (w, r) = oneshot::channel();
        peer.pending.lock().insert(rid, w);
        let sent = match peer.conn.lock().as_ref() {
            Some(c) => {
                c.tx.send(Frame::Request {
                    id: rid,
                    group,
                    body,
                })
                .is_ok()
            }
            None => false,
        };
        if !sent {
            peer.pending.lock().remove(&rid);
            return Err(LinkError::NotConnected(to));
        }
        match tokio::time::timeout(ttl, r).await {
            Ok(Ok(Ok(b))) => Ok(b),
            Ok(Ok(Err(e))) => Err(LinkError::Remote(to, e)),
            Ok(Err(_)) => Err(LinkError::NotConnected(to)),
            Err(_) => {
                peer.pending.lock().remove(&rid);
                Err(LinkError::Timeout(to))
            }
        }
    }

    /// Peers with a link up now.
    pub fn connected(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .peers
            .iter()
            .filter(|(_, p)| p.conn.lock().is_some())
            .map(|(id, _)| *id)
            .collect();
        v.sort_unstable();
        v
    }
}
