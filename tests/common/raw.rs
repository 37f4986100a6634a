//! A raw, byte-level AMQP 0-9-1 client, for the tests that need to see or
//! send exactly what is on the wire. It talks over any byte stream: a TCP or
//! TLS socket, or an in-memory duplex to an in-process broker (`inproc`).

use super::WAIT;
use lapin::protocol::{self as proto, AMQPClass};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// One frame as read from the wire.
#[derive(Debug, Clone)]
pub struct Frame {
    pub typ: u8,
    pub channel: u16,
    pub payload: Vec<u8>,
}

impl Frame {
    /// Decode a method frame's payload.
    pub fn method(&self) -> Option<AMQPClass> {
        if self.typ != FRAME_METHOD {
            return None;
        }
        proto::parse_class(&self.payload[..]).ok().map(|(_, m)| m)
    }

    /// (class id, method id) of a method frame.
    pub fn ids(&self) -> Option<(u16, u16)> {
        if self.typ != FRAME_METHOD || self.payload.len() < 4 {
            return None;
        }
        Some((
            u16::from_be_bytes([self.payload[0], self.payload[1]]),
            u16::from_be_bytes([self.payload[2], self.payload[3]]),
        ))
    }
}

/// Why reading a frame stopped.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the socket (EOF or reset).
    Closed,
    /// Nothing arrived in time.
    Timeout,
    /// The bytes were not a frame.
    Garbage(String),
}

/// A close (connection.close or channel.close) as received.
#[derive(Debug, Clone, PartialEq)]
pub struct CloseInfo {
    pub code: u16,
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
}

/// What the server offered during the handshake.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub start: proto::connection::Start,
    pub tune: proto::connection::Tune,
}

/// SASL mechanism for the raw handshake.
#[derive(Debug, Clone, Copy)]
pub enum Auth<'a> {
    Plain(&'a str, &'a str),
    AmqPlain(&'a str, &'a str),
}

/// What a raw client talks over: a TCP socket, or a TLS stream on one.
pub trait RawStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> RawStream for T {}

pub struct RawClient {
    pub stream: Box<dyn RawStream>,
    buf: Vec<u8>,
}

/// Serialize a method (class id, method id, arguments) into a payload.
pub fn method_payload(class: &AMQPClass) -> Vec<u8> {
    let ser = proto::gen_class::<Vec<u8>>(class);
    let ctx = ser(Vec::<u8>::new().into()).expect("serialize method");
    ctx.write
}

/// Build a frame from its parts.
pub fn frame(typ: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.push(typ);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(FRAME_END);
    out
}

pub fn method_frame(channel: u16, class: &AMQPClass) -> Vec<u8> {
    frame(FRAME_METHOD, channel, &method_payload(class))
}

/// A basic content header with no properties set.
pub fn header_frame(channel: u16, body_size: u64) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&60u16.to_be_bytes()); // class basic
    p.extend_from_slice(&0u16.to_be_bytes()); // weight
    p.extend_from_slice(&body_size.to_be_bytes());
    p.extend_from_slice(&0u16.to_be_bytes()); // property flags: none
    frame(FRAME_HEADER, channel, &p)
}

pub fn body_frame(channel: u16, body: &[u8]) -> Vec<u8> {
    frame(FRAME_BODY, channel, body)
}

pub fn heartbeat_frame() -> Vec<u8> {
    frame(FRAME_HEARTBEAT, 0, &[])
}

/// The body of a field table without its 4-byte length prefix, as the
/// AMQPLAIN mechanism wants it.
pub fn amqplain_response(user: &str, pass: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in [("LOGIN", user), ("PASSWORD", pass)] {
        out.push(k.len() as u8);
        out.extend_from_slice(k.as_bytes());
        out.push(b'S');
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

pub fn basic_publish(exchange: &str, routing_key: &str) -> AMQPClass {
    AMQPClass::Basic(proto::basic::AMQPMethod::Publish(proto::basic::Publish {
        exchange: exchange.into(),
        routing_key: routing_key.into(),
        mandatory: false,
        immediate: false,
    }))
}

/// basic.consume with manual acks and no arguments.
pub fn basic_consume(queue: &str, consumer_tag: &str) -> AMQPClass {
    AMQPClass::Basic(proto::basic::AMQPMethod::Consume(proto::basic::Consume {
        queue: queue.into(),
        consumer_tag: consumer_tag.into(),
        no_local: false,
        no_ack: false,
        exclusive: false,
        nowait: false,
        arguments: FieldTable::default(),
    }))
}

pub fn channel_open() -> AMQPClass {
    AMQPClass::Channel(proto::channel::AMQPMethod::Open(proto::channel::Open {}))
}

pub fn queue_declare(name: &str, passive: bool) -> AMQPClass {
    AMQPClass::Queue(proto::queue::AMQPMethod::Declare(proto::queue::Declare {
        queue: name.into(),
        passive,
        durable: false,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::default(),
    }))
}

pub fn connection_close() -> AMQPClass {
    AMQPClass::Connection(proto::connection::AMQPMethod::Close(
        proto::connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        },
    ))
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = super::within("tcp connect", TcpStream::connect(addr))
            .await
            .expect("tcp connect");
        stream.set_nodelay(true).ok();
        RawClient::over(stream)
    }

    /// A client over an already connected stream (e.g. TLS).
    pub fn over(stream: impl RawStream + 'static) -> RawClient {
        RawClient {
            stream: Box::new(stream),
            buf: Vec::new(),
        }
    }

    /// Connect, send the protocol header and complete the handshake with
    /// the given credentials, heartbeat (0 = off) and vhost.
    pub async fn handshake(
        addr: SocketAddr,
        auth: Auth<'_>,
        heartbeat: u16,
    ) -> (RawClient, Handshake) {
        let mut c = RawClient::connect(addr).await;
        let hs = c.handshake_on(auth, heartbeat, "/").await;
        (c, hs)
    }

    /// Full handshake with PLAIN guest/guest, heartbeats off, vhost "/".
    pub async fn open(addr: SocketAddr) -> RawClient {
        Self::handshake(addr, Auth::Plain("guest", "guest"), 0)
            .await
            .0
    }

    /// Handshake on an already connected socket.
    pub async fn handshake_on(&mut self, auth: Auth<'_>, heartbeat: u16, vhost: &str) -> Handshake {
        let start = self.start_and_tune_begin(auth).await;
        let tune = match self.expect_method(0).await {
            AMQPClass::Connection(proto::connection::AMQPMethod::Tune(t)) => t,
            other => panic!("expected connection.tune, got {other:?}"),
        };
        self.send_method(
            0,
            &AMQPClass::Connection(proto::connection::AMQPMethod::TuneOk(
                proto::connection::TuneOk {
                    channel_max: tune.channel_max,
                    frame_max: tune.frame_max,
                    heartbeat,
                },
            )),
        )
        .await;
        self.send_method(
            0,
            &AMQPClass::Connection(proto::connection::AMQPMethod::Open(
                proto::connection::Open {
                    virtual_host: vhost.into(),
                },
            )),
        )
        .await;
        match self.expect_method(0).await {
            AMQPClass::Connection(proto::connection::AMQPMethod::OpenOk(_)) => {}
            other => panic!("expected connection.open-ok, got {other:?}"),
        }
        Handshake { start, tune }
    }

    /// Send the protocol header, read connection.start and answer start-ok.
    pub async fn start_and_tune_begin(&mut self, auth: Auth<'_>) -> proto::connection::Start {
        self.send(PROTOCOL_HEADER).await;
        let start = match self.expect_method(0).await {
            AMQPClass::Connection(proto::connection::AMQPMethod::Start(s)) => s,
            other => panic!("expected connection.start, got {other:?}"),
        };
        let (mechanism, response): (&str, Vec<u8>) = match auth {
            Auth::Plain(u, p) => ("PLAIN", format!("\0{u}\0{p}").into_bytes()),
            Auth::AmqPlain(u, p) => ("AMQPLAIN", amqplain_response(u, p)),
        };
        let mut client_properties = FieldTable::default();
        client_properties.insert(
            ShortString::from("product"),
            AMQPValue::LongString(LongString::from("hopper raw test client")),
        );
        let mut caps = FieldTable::default();
        caps.insert(
            "authentication_failure_close".into(),
            AMQPValue::Boolean(true),
        );
        caps.insert("consumer_cancel_notify".into(), AMQPValue::Boolean(true));
        client_properties.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        self.send_method(
            0,
            &AMQPClass::Connection(proto::connection::AMQPMethod::StartOk(
                proto::connection::StartOk {
                    client_properties,
                    mechanism: mechanism.into(),
                    response: LongString::from(response),
                    locale: "en_US".into(),
                },
            )),
        )
        .await;
        start
    }

    /// The socket, once nothing read is left unparsed (for tests that
    /// drive both directions at once).
    pub fn into_stream(self) -> Box<dyn RawStream> {
        assert!(self.buf.is_empty(), "unread bytes: {:?}", self.buf);
        self.stream
    }

    /// Write bytes; write errors are ignored (the peer may have closed, and
    /// the tests then look at what was read).
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = super::within("socket write", self.stream.write_all(bytes)).await;
    }

    pub async fn send_method(&mut self, channel: u16, class: &AMQPClass) {
        let f = method_frame(channel, class);
        self.send(&f).await;
    }

    /// Read exactly `n` raw bytes (for the protocol-header reply).
    pub async fn read_bytes(&mut self, n: usize, dur: Duration) -> Result<Vec<u8>, ReadError> {
        let deadline = tokio::time::Instant::now() + dur;
        while self.buf.len() < n {
            self.fill(deadline).await?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    async fn fill(&mut self, deadline: tokio::time::Instant) -> Result<(), ReadError> {
        self.buf.reserve(65536);
        match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
            Err(_) => Err(ReadError::Timeout),
            Ok(Ok(0)) | Ok(Err(_)) => Err(ReadError::Closed),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// Read the next frame (heartbeats included).
    pub async fn read_frame(&mut self, dur: Duration) -> Result<Frame, ReadError> {
        let deadline = tokio::time::Instant::now() + dur;
        loop {
            if self.buf.len() >= 7 {
                let size = u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]])
                    as usize;
                if size > 16 * 1024 * 1024 {
                    return Err(ReadError::Garbage(format!("frame size {size}")));
                }
                if self.buf.len() >= size + 8 {
                    let f: Vec<u8> = self.buf.drain(..size + 8).collect();
                    if f[size + 7] != FRAME_END {
                        return Err(ReadError::Garbage(format!(
                            "bad frame end {:#x} in {:?}",
                            f[size + 7],
                            &f[..f.len().min(64)]
                        )));
                    }
                    return Ok(Frame {
                        typ: f[0],
                        channel: u16::from_be_bytes([f[1], f[2]]),
                        payload: f[7..7 + size].to_vec(),
                    });
                }
            }
            self.fill(deadline).await?;
        }
    }

    /// Read frames until a method frame arrives, skipping heartbeats.
    pub async fn next_method(&mut self, dur: Duration) -> Result<(u16, Frame), ReadError> {
        let deadline = tokio::time::Instant::now() + dur;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self.read_frame(left).await?;
            match f.typ {
                FRAME_HEARTBEAT => continue,
                FRAME_METHOD => return Ok((f.channel, f)),
                _ => continue, // content frames of deliveries: not what we wait for
            }
        }
    }

    /// Expect the next method on `channel` (skipping heartbeats); panics otherwise.
    pub async fn expect_method(&mut self, channel: u16) -> AMQPClass {
        match self.next_method(WAIT).await {
            Ok((ch, f)) => {
                let m = f
                    .method()
                    .unwrap_or_else(|| panic!("undecodable method frame {:?}", f.payload));
                assert_eq!(ch, channel, "method {m:?} arrived on an unexpected channel");
                m
            }
            Err(e) => panic!("expected a method on channel {channel}, got {e:?}"),
        }
    }

    /// Open a channel and wait for open-ok.
    pub async fn open_channel(&mut self, channel: u16) {
        self.send_method(channel, &channel_open()).await;
        match self.expect_method(channel).await {
            AMQPClass::Channel(proto::channel::AMQPMethod::OpenOk(_)) => {}
            other => panic!("expected channel.open-ok, got {other:?}"),
        }
    }

    /// Read until connection.close arrives (panics on EOF/timeout first),
    /// answer close-ok, then expect the server to close the socket.
    pub async fn expect_connection_close(&mut self) -> CloseInfo {
        let info = self.read_connection_close().await;
        self.expect_closed(WAIT).await;
        info
    }

    /// Read until connection.close arrives (panics on EOF/timeout first)
    /// and answer close-ok; does not wait for the socket to close.
    pub async fn read_connection_close(&mut self) -> CloseInfo {
        match self.close_or_drop().await {
            Some(info) => info,
            None => panic!("expected connection.close, but the socket was closed without one"),
        }
    }

    /// The broker must end the connection: either with connection.close
    /// (answered with close-ok; returns it) or by closing the socket
    /// without a word (returns None). Panics on timeout.
    pub async fn close_or_drop(&mut self) -> Option<CloseInfo> {
        match self.next_method(WAIT).await {
            Ok((0, f)) => Some(self.answer_close(&f).await),
            Ok((ch, f)) => {
                panic!(
                    "expected connection.close, got {:?} on channel {ch}",
                    f.method()
                )
            }
            Err(ReadError::Closed) => None,
            Err(e) => panic!("expected the broker to end the connection, got {e:?}"),
        }
    }

    /// `f` must be a connection.close: answer it with close-ok.
    pub async fn answer_close(&mut self, f: &Frame) -> CloseInfo {
        match f.method() {
            Some(AMQPClass::Connection(proto::connection::AMQPMethod::Close(c))) => {
                self.send_method(
                    0,
                    &AMQPClass::Connection(proto::connection::AMQPMethod::CloseOk(
                        proto::connection::CloseOk {},
                    )),
                )
                .await;
                CloseInfo {
                    code: c.reply_code,
                    text: c.reply_text.to_string(),
                    class_id: c.class_id,
                    method_id: c.method_id,
                }
            }
            other => panic!("expected connection.close, got {other:?}"),
        }
    }

    /// Expect channel.close on `channel`, answer close-ok.
    pub async fn expect_channel_close(&mut self, channel: u16) -> CloseInfo {
        match self.expect_method(channel).await {
            AMQPClass::Channel(proto::channel::AMQPMethod::Close(c)) => {
                self.send_method(
                    channel,
                    &AMQPClass::Channel(proto::channel::AMQPMethod::CloseOk(
                        proto::channel::CloseOk {},
                    )),
                )
                .await;
                CloseInfo {
                    code: c.reply_code,
                    text: c.reply_text.to_string(),
                    class_id: c.class_id,
                    method_id: c.method_id,
                }
            }
            other => panic!("expected channel.close on channel {channel}, got {other:?}"),
        }
    }

    /// Expect the server to close the socket within `dur` (frames that
    /// arrive meanwhile are discarded).
    pub async fn expect_closed(&mut self, dur: Duration) {
        let deadline = tokio::time::Instant::now() + dur;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_frame(left).await {
                Ok(_) => continue,
                Err(ReadError::Closed) => return,
                Err(ReadError::Timeout) => {
                    panic!("server did not close the socket within {dur:?}")
                }
                Err(ReadError::Garbage(_)) => {
                    self.buf.clear();
                    continue;
                }
            }
        }
    }

    /// Graceful client-initiated close: send close, expect close-ok.
    pub async fn close(&mut self) {
        self.send_method(0, &connection_close()).await;
        loop {
            match self.expect_method(0).await {
                AMQPClass::Connection(proto::connection::AMQPMethod::CloseOk(_)) => return,
                AMQPClass::Connection(proto::connection::AMQPMethod::Close(c)) => {
                    panic!("server closed the connection instead of close-ok: {c:?}")
                }
                _ => continue,
            }
        }
    }
}
