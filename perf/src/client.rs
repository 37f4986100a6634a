//! A lean AMQP 0-9-1 client: just what a load generator needs, on tokio and
//! amq-protocol's codec, one connection with one channel (number 1) per
//! producer or consumer: the handshake (PLAIN, heartbeats off, the URI's
//! vhost), the synchronous methods (declares, binds, purge, delete, qos,
//! confirm.select, consume) and close. The producer and consumer loops in
//! `load` take the socket and buffer over after set-up and use `wire` for the
//! hot path.

use amq_protocol::frame::{parse_frame, AMQPFrame};
use amq_protocol::protocol::{basic, channel, confirm, connection, exchange, queue, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, BytesMut};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::uri::AmqpUri;
use crate::wire::{
    close_method, closed_error, frame_at, method_ids, put_method, short, CHANNEL, FRAME_METHOD,
};

/// How long a control reply (open-ok, declare-ok, ...) may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a TCP connect may take (a broker whose accept queue is full
/// leaves SYNs unanswered for minutes).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection with channel 1 open. Fields are public so the producer and
/// consumer loops can drive the socket and the buffer directly.
pub struct Conn {
    pub stream: TcpStream,
    pub rbuf: BytesMut,
    pub frame_max: u32,
}

impl Conn {
    /// TCP connect, handshake (PLAIN, heartbeats off), open the URI's vhost
    /// and channel 1.
    pub async fn open(uri: &AmqpUri) -> Result<Conn> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(uri.addr()))
            .await
            .map_err(|_| anyhow!("no TCP connection in {CONNECT_TIMEOUT:?}"))
            .and_then(|r| r.map_err(anyhow::Error::from))
            .with_context(|| format!("cannot connect to {}", uri.addr()))?;
        stream.set_nodelay(true).ok();
        let mut c = Conn {
            stream,
            rbuf: BytesMut::with_capacity(64 * 1024),
            frame_max: 131_072,
        };
        c.handshake(uri).await?;
        c.rpc(AMQPClass::Channel(channel::AMQPMethod::Open(
            channel::Open {},
        )))
        .await
        .context("channel.open")?;
        Ok(c)
    }

    async fn handshake(&mut self, uri: &AmqpUri) -> Result<()> {
        self.stream
            .write_all(b"AMQP\x00\x00\x09\x01")
            .await
            .context("writing the protocol header")?;
        let start = match self
            .expect(0)
            .await
            .context("waiting for connection.start")?
        {
            AMQPClass::Connection(connection::AMQPMethod::Start(s)) => s,
            other => bail!("expected connection.start, got {other:?}"),
        };
        if !start
            .mechanisms
            .to_string()
            .split_whitespace()
            .any(|m| m == "PLAIN")
        {
            bail!(
                "the broker does not offer PLAIN authentication (offers {:?})",
                start.mechanisms.to_string()
            );
        }
        let mut caps = FieldTable::default();
        for cap in [
            "authentication_failure_close",
            "publisher_confirms",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
        ] {
            caps.insert(cap.into(), AMQPValue::Boolean(true));
        }
        let mut props = FieldTable::default();
        props.insert(
            "product".into(),
            AMQPValue::LongString(LongString::from("hopper perf")),
        );
        props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        let response = format!("\0{}\0{}", uri.user, uri.password);
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: props,
                mechanism: "PLAIN".into(),
                response: LongString::from(response),
                locale: "en_US".into(),
            })),
        )
        .await?;
        let tune = match self.expect(0).await.context("authentication")? {
            AMQPClass::Connection(connection::AMQPMethod::Tune(t)) => t,
            other => bail!("expected connection.tune, got {other:?}"),
        };
        self.frame_max = if tune.frame_max == 0 {
            131_072
        } else {
            tune.frame_max.clamp(4096, 1 << 20)
        };
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: if tune.channel_max == 0 {
                    2047
                } else {
                    tune.channel_max
                },
                frame_max: self.frame_max,
                heartbeat: 0,
            })),
        )
        .await?;
        let vhost = short(&uri.vhost)?;
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: vhost,
            })),
        )
        .await?;
        match self
            .expect(0)
            .await
            .with_context(|| format!("opening vhost {:?}", uri.vhost))?
        {
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => Ok(()),
            other => bail!("expected connection.open-ok, got {other:?}"),
        }
    }

    pub async fn send(&mut self, channel: u16, class: AMQPClass) -> Result<()> {
        let mut out = Vec::new();
        put_method(&mut out, channel, class)?;
        self.stream
            .write_all(&out)
            .await
            .context("writing to the broker")
    }

    /// Read into the buffer; an error on EOF.
    pub async fn fill(&mut self) -> Result<()> {
        self.rbuf.reserve(64 * 1024);
        let n = self
            .stream
            .read_buf(&mut self.rbuf)
            .await
            .context("reading from the broker")?;
        if n == 0 {
            bail!("the broker closed the socket");
        }
        Ok(())
    }

    /// The next method on `channel`, skipping heartbeats and content frames;
    /// a close from the broker is an error (answered with close-ok first).
    pub async fn expect(&mut self, channel: u16) -> Result<AMQPClass> {
        let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
        loop {
            while let Some((kind, ch, len)) = frame_at(&self.rbuf)? {
                let total = len + 8;
                if kind != FRAME_METHOD {
                    self.rbuf.advance(total);
                    continue;
                }
                let parsed = parse_frame(&self.rbuf[..total]);
                let class = match parsed {
                    Ok((_, AMQPFrame::Method(_, class))) => class,
                    _ => bail!(
                        "cannot parse a method frame from the broker: {:?}",
                        &self.rbuf[7..total.min(64)]
                    ),
                };
                self.rbuf.advance(total);
                if let Some(err) = closed_error(&class) {
                    self.answer_close(&class).await;
                    return Err(err);
                }
                if ch == channel {
                    return Ok(class);
                }
            }
            tokio::time::timeout_at(deadline, self.fill())
                .await
                .map_err(|_| anyhow!("no reply from the broker in {REPLY_TIMEOUT:?}"))??;
        }
    }

    /// Best-effort close-ok for a close the broker sent.
    async fn answer_close(&mut self, class: &AMQPClass) {
        let reply = match class {
            AMQPClass::Connection(connection::AMQPMethod::Close(_)) => (
                0,
                AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
            ),
            _ => (
                CHANNEL,
                AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
            ),
        };
        let _ = self.send(reply.0, reply.1).await;
    }

    /// Send a synchronous method on channel 1 and return the reply.
    pub async fn rpc(&mut self, class: AMQPClass) -> Result<AMQPClass> {
        self.send(CHANNEL, class).await?;
        self.expect(CHANNEL).await
    }

    pub async fn queue_declare(&mut self, name: &str, durable: bool, quorum: bool) -> Result<u32> {
        let mut arguments = FieldTable::default();
        if quorum {
            arguments.insert(
                "x-queue-type".into(),
                amq_protocol::types::AMQPValue::LongString("quorum".into()),
            );
        }
        let reply = self
            .rpc(AMQPClass::Queue(queue::AMQPMethod::Declare(
                queue::Declare {
                    queue: short(name)?,
                    passive: false,
                    durable,
                    exclusive: false,
                    auto_delete: false,
                    nowait: false,
                    arguments,
                },
            )))
            .await
            .with_context(|| format!("queue.declare {name:?}"))?;
        match reply {
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => Ok(ok.message_count),
            other => bail!("expected queue.declare-ok, got {other:?}"),
        }
    }

    pub async fn exchange_declare(&mut self, name: &str, kind: &str, durable: bool) -> Result<()> {
        self.rpc(AMQPClass::Exchange(exchange::AMQPMethod::Declare(
            exchange::Declare {
                exchange: short(name)?,
                kind: short(kind)?,
                passive: false,
                durable,
                auto_delete: false,
                internal: false,
                nowait: false,
                arguments: FieldTable::default(),
            },
        )))
        .await
        .with_context(|| format!("exchange.declare {name:?}"))?;
        Ok(())
    }

    pub async fn queue_bind(
        &mut self,
        queue_name: &str,
        exchange_name: &str,
        key: &str,
    ) -> Result<()> {
        self.rpc(AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
            queue: short(queue_name)?,
            exchange: short(exchange_name)?,
            routing_key: short(key)?,
            nowait: false,
            arguments: FieldTable::default(),
        })))
        .await
        .with_context(|| format!("queue.bind {queue_name:?} to {exchange_name:?}"))?;
        Ok(())
    }

    pub async fn queue_purge(&mut self, name: &str) -> Result<()> {
        self.rpc(AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
            queue: short(name)?,
            nowait: false,
        })))
        .await
        .with_context(|| format!("queue.purge {name:?}"))?;
        Ok(())
    }

    pub async fn queue_delete(&mut self, name: &str) -> Result<()> {
        self.rpc(AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
            queue: short(name)?,
            if_unused: false,
            if_empty: false,
            nowait: false,
        })))
        .await
        .with_context(|| format!("queue.delete {name:?}"))?;
        Ok(())
    }

    pub async fn exchange_delete(&mut self, name: &str) -> Result<()> {
        self.rpc(AMQPClass::Exchange(exchange::AMQPMethod::Delete(
            exchange::Delete {
                exchange: short(name)?,
                if_unused: false,
                nowait: false,
            },
        )))
        .await
        .with_context(|| format!("exchange.delete {name:?}"))?;
        Ok(())
    }

    pub async fn basic_qos(&mut self, prefetch: u16) -> Result<()> {
        self.rpc(AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: prefetch,
            global: false,
        })))
        .await
        .context("basic.qos")?;
        Ok(())
    }

    pub async fn confirm_select(&mut self) -> Result<()> {
        self.rpc(AMQPClass::Confirm(confirm::AMQPMethod::Select(
            confirm::Select { nowait: false },
        )))
        .await
        .context("confirm.select")?;
        Ok(())
    }

    /// basic.consume; deliveries that follow consume-ok stay in `rbuf`.
    pub async fn basic_consume(&mut self, queue_name: &str, no_ack: bool) -> Result<()> {
        let reply = self
            .rpc(AMQPClass::Basic(basic::AMQPMethod::Consume(
                basic::Consume {
                    queue: short(queue_name)?,
                    consumer_tag: "".into(),
                    no_local: false,
                    no_ack,
                    exclusive: false,
                    nowait: false,
                    arguments: FieldTable::default(),
                },
            )))
            .await
            .with_context(|| format!("basic.consume on {queue_name:?}"))?;
        match reply {
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)) => Ok(()),
            other => bail!("expected basic.consume-ok, got {other:?}"),
        }
    }

    /// connection.close, then discard whatever arrives until close-ok (or
    /// the socket closes, or 5 s pass).
    pub async fn close(mut self) -> Result<()> {
        let mut out = Vec::new();
        put_method(&mut out, 0, close_method())?;
        self.stream.write_all(&out).await?;
        let wait = async {
            loop {
                while let Some((kind, _, len)) = frame_at(&self.rbuf)? {
                    let ids = method_ids(&self.rbuf[7..7 + len]);
                    self.rbuf.advance(len + 8);
                    // close-ok, or the broker's own close crossing ours.
                    if kind == FRAME_METHOD && (ids == (10, 51) || ids == (10, 50)) {
                        return Ok::<(), anyhow::Error>(());
                    }
                }
                if self.fill().await.is_err() {
                    return Ok(());
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .unwrap_or(Ok(()))
    }
}
