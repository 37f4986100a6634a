//! Stateful: a whole connection (`hopper::connection::serve`) over an in-memory
//! duplex pipe, fed the protocol header, an optional valid handshake and then
//! a sequence of frames built from the input: well-formed methods (from
//! amq-protocol's generator) on arbitrary channels, content headers and bodies,
//! heartbeats, and raw frames with arbitrary type, size, payload and end octet.
//!
//! Invariants: no panic; everything the broker writes is whole, valid frames
//! (or the protocol header); once the client stops sending, the connection ends
//! within bounded (virtual) time, and afterwards the broker holds no connection,
//! consumer or exclusive queue of it. Time is paused: timers (handshake timeout,
//! heartbeats, close-ok wait) fire as soon as the runtime is idle.
#![no_main]

use amq_protocol::frame::{gen_frame, AMQPContentHeader, AMQPFrame, WriteContext};
use amq_protocol::protocol::basic::{self as b, AMQPProperties};
use amq_protocol::protocol::{
    access, channel, confirm, connection as c, exchange, queue, tx, AMQPClass,
};
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use arbitrary::Arbitrary;
use bytes::BytesMut;
use hopper::broker::Broker;
use hopper::protocol::{read_frame, Frame, PROTOCOL_HEADER};
use hopper::store::NullStore;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Arbitrary)]
struct Input {
    start: Start,
    frames: Vec<F>,
}

#[derive(Debug, Arbitrary)]
enum Start {
    /// Arbitrary bytes where the protocol header belongs.
    Raw(Vec<u8>),
    /// The protocol header only: the input makes the handshake.
    Header,
    /// A complete valid handshake.
    Open {
        amqplain: bool,
        heartbeat: u8,
        frame_max: u8,
        channel_max: u8,
    },
}

#[derive(Debug, Arbitrary)]
enum F {
    Method(u8, M),
    Header {
        channel: u8,
        class_60: bool,
        size: u16,
        props: Props,
    },
    Body(u8, Vec<u8>),
    Heartbeat(u8),
    /// A frame with an arbitrary type, declared size, payload and end octet.
    Raw {
        kind: u8,
        channel: u8,
        size: Option<u32>,
        payload: Vec<u8>,
        end: u8,
    },
    /// A method frame with arbitrary class, method and argument bytes.
    RawMethod {
        channel: u8,
        class_id: u16,
        method_id: u16,
        args: Vec<u8>,
    },
    Bytes(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
struct Props {
    delivery_mode: Option<u8>,
    expiration: Option<Name>,
    priority: Option<u8>,
    message_id: Option<Name>,
    user_id: Option<Name>,
    reply_to: Option<Name>,
    headers: Option<Table>,
}

/// A name from a small set, so that declarations, bindings and uses meet.
#[derive(Debug, Arbitrary, Clone, Copy)]
struct Name(u8);

const NAMES: [&str; 16] = [
    "",
    "q",
    "q2",
    "x",
    "x2",
    "amq.direct",
    "amq.fanout",
    "amq.topic",
    "amq.headers",
    "amq.match",
    "amq.rabbitmq.reply-to",
    "amq.gen-x",
    "a.#",
    "*.b",
    "100",
    "-1",
];

fn name(n: &Name) -> ShortString {
    ShortString::from(NAMES[n.0 as usize % NAMES.len()])
}

const ARG_KEYS: [&str; 24] = [
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-priority",
    "x-single-active-consumer",
    "x-queue-type",
    "x-queue-mode",
    "x-queue-master-locator",
    "x-message-deduplication",
    "x-cache-size",
    "x-cache-ttl",
    "x-deduplication-header",
    "alternate-exchange",
    "x-match",
    "x-priority",
    "x-death",
    "x-other",
    "k",
    "x-cancel-on-ha-failover",
    "",
];

#[derive(Debug, Arbitrary)]
struct Table(Vec<(u8, Value)>);

#[derive(Debug, Arbitrary)]
enum Value {
    Bool(bool),
    I8(i8),
    U8(u8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
    F64(f64),
    Text(Name),
    Bytes(Vec<u8>),
    Timestamp(u64),
    Void,
    Array(Vec<Name>),
    Table(Vec<(u8, i32)>),
}

fn table(t: &Table) -> FieldTable {
    let mut out = FieldTable::default();
    for (k, v) in t.0.iter().take(8) {
        let key = ShortString::from(ARG_KEYS[*k as usize % ARG_KEYS.len()]);
        let v = match v {
            Value::Bool(x) => AMQPValue::Boolean(*x),
            Value::I8(x) => AMQPValue::ShortShortInt(*x),
            Value::U8(x) => AMQPValue::ShortShortUInt(*x),
            Value::I16(x) => AMQPValue::ShortInt(*x),
            Value::U16(x) => AMQPValue::ShortUInt(*x),
            Value::I32(x) => AMQPValue::LongInt(*x),
            Value::U32(x) => AMQPValue::LongUInt(*x),
            Value::I64(x) => AMQPValue::LongLongInt(*x),
            Value::F32(x) => AMQPValue::Float(*x),
            Value::F64(x) => AMQPValue::Double(*x),
            Value::Text(n) => {
                AMQPValue::LongString(LongString::from(name(n).as_str().as_bytes().to_vec()))
            }
            Value::Bytes(x) => AMQPValue::ByteArray(x.clone().into()),
            Value::Timestamp(x) => AMQPValue::Timestamp(*x),
            Value::Void => AMQPValue::Void,
            Value::Array(xs) => {
                let mut a = FieldArray::default();
                for n in xs.iter().take(4) {
                    a.push(AMQPValue::LongString(LongString::from(
                        name(n).as_str().as_bytes().to_vec(),
                    )));
                }
                AMQPValue::FieldArray(a)
            }
            Value::Table(kv) => {
                let mut t = FieldTable::default();
                for (k, v) in kv.iter().take(4) {
                    t.insert(
                        ShortString::from(ARG_KEYS[*k as usize % ARG_KEYS.len()]),
                        AMQPValue::LongInt(*v),
                    );
                }
                AMQPValue::FieldTable(t)
            }
        };
        out.insert(key, v);
    }
    out
}

#[derive(Debug, Arbitrary)]
enum M {
    ChannelOpen,
    ChannelClose(u16),
    ChannelCloseOk,
    ChannelFlow(bool),
    ExchangeDeclare {
        x: Name,
        kind: Name,
        flags: u8,
        args: Table,
    },
    ExchangeDelete {
        x: Name,
        if_unused: bool,
        nowait: bool,
    },
    ExchangeBind {
        d: Name,
        s: Name,
        rk: Name,
        args: Table,
    },
    ExchangeUnbind {
        d: Name,
        s: Name,
        rk: Name,
        args: Table,
    },
    QueueDeclare {
        q: Name,
        flags: u8,
        args: Table,
    },
    QueueBind {
        q: Name,
        x: Name,
        rk: Name,
        nowait: bool,
        args: Table,
    },
    QueueUnbind {
        q: Name,
        x: Name,
        rk: Name,
        args: Table,
    },
    QueuePurge {
        q: Name,
        nowait: bool,
    },
    QueueDelete {
        q: Name,
        flags: u8,
    },
    Qos {
        count: u16,
        global: bool,
    },
    Consume {
        q: Name,
        tag: Name,
        flags: u8,
        args: Table,
    },
    Cancel {
        tag: Name,
        nowait: bool,
    },
    Publish {
        x: Name,
        rk: Name,
        mandatory: bool,
        immediate: bool,
    },
    Get {
        q: Name,
        no_ack: bool,
    },
    Ack {
        tag: u8,
        multiple: bool,
    },
    Reject {
        tag: u8,
        requeue: bool,
    },
    Nack {
        tag: u8,
        multiple: bool,
        requeue: bool,
    },
    Recover(bool),
    RecoverAsync(bool),
    ConfirmSelect(bool),
    TxSelect,
    TxCommit,
    TxRollback,
    AccessRequest,
    ConnectionClose,
    ConnectionCloseOk,
    ConnectionBlocked,
    ConnectionUpdateSecret,
    ConnectionStartOk,
    ConnectionTuneOk(u16, u32, u16),
    ConnectionOpen(Name),
}

fn method(m: &M) -> AMQPClass {
    match m {
        M::ChannelOpen => AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        M::ChannelClose(code) => AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: *code,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
        M::ChannelCloseOk => AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
        M::ChannelFlow(active) => {
            AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow { active: *active }))
        }
        M::ExchangeDeclare {
            x,
            kind,
            flags,
            args,
        } => {
            let kinds = ["direct", "fanout", "topic", "headers", "x-unknown"];
            let kind = match kind.0 as usize % 8 {
                i if i < kinds.len() => ShortString::from(kinds[i]),
                _ => name(kind),
            };
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: name(x),
                kind,
                passive: flags & 1 != 0,
                durable: flags & 2 != 0,
                auto_delete: flags & 4 != 0,
                internal: flags & 8 != 0,
                nowait: flags & 16 != 0,
                arguments: table(args),
            }))
        }
        M::ExchangeDelete {
            x,
            if_unused,
            nowait,
        } => AMQPClass::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
            exchange: name(x),
            if_unused: *if_unused,
            nowait: *nowait,
        })),
        M::ExchangeBind { d, s, rk, args } => {
            AMQPClass::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
                destination: name(d),
                source: name(s),
                routing_key: name(rk),
                nowait: false,
                arguments: table(args),
            }))
        }
        M::ExchangeUnbind { d, s, rk, args } => {
            AMQPClass::Exchange(exchange::AMQPMethod::Unbind(exchange::Unbind {
                destination: name(d),
                source: name(s),
                routing_key: name(rk),
                nowait: false,
                arguments: table(args),
            }))
        }
        M::QueueDeclare { q, flags, args } => {
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: name(q),
                passive: flags & 1 != 0,
                durable: flags & 2 != 0,
                exclusive: flags & 4 != 0,
                auto_delete: flags & 8 != 0,
                nowait: flags & 16 != 0,
                arguments: table(args),
            }))
        }
        M::QueueBind {
            q,
            x,
            rk,
            nowait,
            args,
        } => AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
            queue: name(q),
            exchange: name(x),
            routing_key: name(rk),
            nowait: *nowait,
            arguments: table(args),
        })),
        M::QueueUnbind { q, x, rk, args } => {
            AMQPClass::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
                queue: name(q),
                exchange: name(x),
                routing_key: name(rk),
                arguments: table(args),
            }))
        }
        M::QueuePurge { q, nowait } => AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
            queue: name(q),
            nowait: *nowait,
        })),
        M::QueueDelete { q, flags } => AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
            queue: name(q),
            if_unused: flags & 1 != 0,
            if_empty: flags & 2 != 0,
            nowait: flags & 4 != 0,
        })),
        M::Qos { count, global } => AMQPClass::Basic(b::AMQPMethod::Qos(b::Qos {
            prefetch_count: *count % 4,
            global: *global,
        })),
        M::Consume {
            q,
            tag,
            flags,
            args,
        } => AMQPClass::Basic(b::AMQPMethod::Consume(b::Consume {
            queue: name(q),
            consumer_tag: name(tag),
            no_local: flags & 1 != 0,
            no_ack: flags & 2 != 0,
            exclusive: flags & 4 != 0,
            nowait: flags & 8 != 0,
            arguments: table(args),
        })),
        M::Cancel { tag, nowait } => AMQPClass::Basic(b::AMQPMethod::Cancel(b::Cancel {
            consumer_tag: name(tag),
            nowait: *nowait,
        })),
        M::Publish {
            x,
            rk,
            mandatory,
            immediate,
        } => AMQPClass::Basic(b::AMQPMethod::Publish(b::Publish {
            exchange: name(x),
            routing_key: name(rk),
            mandatory: *mandatory,
            immediate: *immediate,
        })),
        M::Get { q, no_ack } => AMQPClass::Basic(b::AMQPMethod::Get(b::Get {
            queue: name(q),
            no_ack: *no_ack,
        })),
        M::Ack { tag, multiple } => AMQPClass::Basic(b::AMQPMethod::Ack(b::Ack {
            delivery_tag: *tag as u64 % 8,
            multiple: *multiple,
        })),
        M::Reject { tag, requeue } => AMQPClass::Basic(b::AMQPMethod::Reject(b::Reject {
            delivery_tag: *tag as u64 % 8,
            requeue: *requeue,
        })),
        M::Nack {
            tag,
            multiple,
            requeue,
        } => AMQPClass::Basic(b::AMQPMethod::Nack(b::Nack {
            delivery_tag: *tag as u64 % 8,
            multiple: *multiple,
            requeue: *requeue,
        })),
        M::Recover(requeue) => {
            AMQPClass::Basic(b::AMQPMethod::Recover(b::Recover { requeue: *requeue }))
        }
        M::RecoverAsync(requeue) => {
            AMQPClass::Basic(b::AMQPMethod::RecoverAsync(b::RecoverAsync {
                requeue: *requeue,
            }))
        }
        M::ConfirmSelect(nowait) => {
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: *nowait,
            }))
        }
        M::TxSelect => AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {})),
        M::TxCommit => AMQPClass::Tx(tx::AMQPMethod::Commit(tx::Commit {})),
        M::TxRollback => AMQPClass::Tx(tx::AMQPMethod::Rollback(tx::Rollback {})),
        M::AccessRequest => AMQPClass::Access(access::AMQPMethod::Request(access::Request {
            realm: "/data".into(),
            exclusive: false,
            passive: true,
            active: true,
            write: true,
            read: true,
        })),
        M::ConnectionClose => AMQPClass::Connection(c::AMQPMethod::Close(c::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
        M::ConnectionCloseOk => AMQPClass::Connection(c::AMQPMethod::CloseOk(c::CloseOk {})),
        M::ConnectionBlocked => {
            AMQPClass::Connection(c::AMQPMethod::Blocked(c::Blocked { reason: "x".into() }))
        }
        M::ConnectionUpdateSecret => {
            AMQPClass::Connection(c::AMQPMethod::UpdateSecret(c::UpdateSecret {
                new_secret: LongString::from(b"s".to_vec()),
                reason: "r".into(),
            }))
        }
        M::ConnectionStartOk => start_ok(false),
        M::ConnectionTuneOk(channel_max, frame_max, heartbeat) => {
            AMQPClass::Connection(c::AMQPMethod::TuneOk(c::TuneOk {
                channel_max: *channel_max,
                frame_max: *frame_max,
                heartbeat: *heartbeat,
            }))
        }
        M::ConnectionOpen(v) => AMQPClass::Connection(c::AMQPMethod::Open(c::Open {
            virtual_host: if v.0 % 2 == 0 { "/".into() } else { name(v) },
        })),
    }
}

fn start_ok(amqplain: bool) -> AMQPClass {
    let response = if amqplain {
        amq_protocol::auth::Credentials::new("guest".into(), "guest".into())
            .sasl_auth_string(amq_protocol::auth::SASLMechanism::AMQPlain)
    } else {
        LongString::from(b"\0guest\0guest".to_vec())
    };
    let mut caps = FieldTable::default();
    caps.insert("consumer_cancel_notify".into(), AMQPValue::Boolean(true));
    caps.insert("connection.blocked".into(), AMQPValue::Boolean(true));
    let mut props = FieldTable::default();
    props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    AMQPClass::Connection(c::AMQPMethod::StartOk(c::StartOk {
        client_properties: props,
        mechanism: if amqplain { "AMQPLAIN" } else { "PLAIN" }.into(),
        response,
        locale: "en_US".into(),
    }))
}

fn put(out: &mut Vec<u8>, frame: &AMQPFrame) {
    let bytes = gen_frame(frame)(WriteContext::from(Vec::new()))
        .map(|c| c.into_inner().0)
        .expect("a Vec never runs out of room");
    out.extend_from_slice(&bytes);
}

/// Channel numbers: mostly 0..=3, sometimes far out.
fn chan(c: u8) -> u16 {
    match c {
        0..=250 => (c % 4) as u16,
        251 => 2047,
        252 => 2048,
        253 => 65535,
        _ => 300,
    }
}

fn encode(input: &Input) -> Vec<u8> {
    let mut out = Vec::new();
    match &input.start {
        Start::Raw(bytes) => out.extend_from_slice(bytes),
        Start::Header => out.extend_from_slice(PROTOCOL_HEADER),
        Start::Open {
            amqplain,
            heartbeat,
            frame_max,
            channel_max,
        } => {
            out.extend_from_slice(PROTOCOL_HEADER);
            put(&mut out, &AMQPFrame::Method(0, start_ok(*amqplain)));
            let frame_max = [131_072, 4096, 8192, 65_536][*frame_max as usize % 4];
            put(
                &mut out,
                &AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(c::AMQPMethod::TuneOk(c::TuneOk {
                        channel_max: 1 + *channel_max as u16 % 2047,
                        frame_max,
                        heartbeat: *heartbeat as u16 % 4,
                    })),
                ),
            );
            put(
                &mut out,
                &AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(c::AMQPMethod::Open(c::Open {
                        virtual_host: "/".into(),
                    })),
                ),
            );
        }
    }
    for f in input.frames.iter().take(128) {
        match f {
            F::Method(ch, m) => put(&mut out, &AMQPFrame::Method(chan(*ch), method(m))),
            F::Header {
                channel,
                class_60,
                size,
                props,
            } => {
                let mut p = AMQPProperties::default();
                if let Some(d) = props.delivery_mode {
                    p = p.with_delivery_mode(d % 3);
                }
                if let Some(e) = &props.expiration {
                    p = p.with_expiration(name(e));
                }
                if let Some(x) = props.priority {
                    p = p.with_priority(x);
                }
                if let Some(m) = &props.message_id {
                    p = p.with_message_id(name(m));
                }
                if let Some(u) = &props.user_id {
                    p = p.with_user_id(if u.0 % 2 == 0 {
                        "guest".into()
                    } else {
                        name(u)
                    });
                }
                if let Some(r) = &props.reply_to {
                    p = p.with_reply_to(name(r));
                }
                if let Some(h) = &props.headers {
                    p = p.with_headers(table(h));
                }
                put(
                    &mut out,
                    &AMQPFrame::Header(
                        chan(*channel),
                        AMQPContentHeader {
                            class_id: if *class_60 { 60 } else { 10 },
                            body_size: *size as u64 % 300,
                            properties: p,
                        },
                    ),
                );
            }
            F::Body(ch, bytes) => put(&mut out, &AMQPFrame::Body(chan(*ch), bytes.clone())),
            F::Heartbeat(ch) => out.extend_from_slice(&[8, 0, chan(*ch) as u8, 0, 0, 0, 0, 0xCE]),
            F::Raw {
                kind,
                channel,
                size,
                payload,
                end,
            } => {
                out.push(*kind);
                out.extend_from_slice(&chan(*channel).to_be_bytes());
                let size = size.unwrap_or(payload.len() as u32);
                out.extend_from_slice(&size.to_be_bytes());
                out.extend_from_slice(payload);
                out.push(*end);
            }
            F::RawMethod {
                channel,
                class_id,
                method_id,
                args,
            } => {
                out.push(1);
                out.extend_from_slice(&chan(*channel).to_be_bytes());
                out.extend_from_slice(&(4 + args.len() as u32).to_be_bytes());
                out.extend_from_slice(&class_id.to_be_bytes());
                out.extend_from_slice(&method_id.to_be_bytes());
                out.extend_from_slice(args);
                out.push(0xCE);
            }
            F::Bytes(bytes) => out.extend_from_slice(bytes),
        }
    }
    out
}

fn config() -> hopper::config::Config {
    static CONFIG: OnceLock<hopper::config::Config> = OnceLock::new();
    CONFIG
        .get_or_init(|| hopper::config::Config::default_config().expect("default config"))
        .clone()
}

/// Check the server's output: the protocol header alone, or whole valid frames.
fn check_output(out: &[u8]) {
    if out == PROTOCOL_HEADER {
        return;
    }
    let mut buf = BytesMut::from(out);
    loop {
        match read_frame(&mut buf, u32::MAX) {
            Ok(Some(
                Frame::Method(..) | Frame::Header(..) | Frame::Body(..) | Frame::Heartbeat(..),
            )) => {}
            Ok(None) => break,
            Err(e) => panic!("the broker wrote an invalid frame: {e}"),
        }
    }
    assert!(
        buf.is_empty(),
        "the broker left a partial frame: {} bytes",
        buf.len()
    );
}

fuzz_target!(|input: Input| {
    let bytes = encode(&input);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let broker = Broker::new(config(), Arc::new(NullStore)).expect("null store recovers");
        let (client, server) = tokio::io::duplex(64 * 1024);
        let peer = "127.0.0.1:40000".parse().expect("address");
        let serve = tokio::spawn(hopper::connection::serve(server, peer, broker.clone()));
        let (mut rd, mut wr) = tokio::io::split(client);
        let reader = tokio::spawn(async move {
            let mut out = Vec::new();
            let _ = rd.read_to_end(&mut out).await;
            out
        });
        // The broker may close first: a failed write is fine.
        let _ = wr.write_all(&bytes).await;
        let _ = wr.shutdown().await;
        match tokio::time::timeout(Duration::from_secs(300), serve).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("connection task failed: {e}"),
            Err(_) => panic!("connection still running 300 s after the client stopped sending"),
        }
        drop(wr);
        let out = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("the broker closes its end")
            .expect("reader task");
        check_output(&out);
        assert_eq!(broker.live_connection_count(), 0);
        for v in broker.vhosts.iter() {
            for q in v.queues.iter() {
                assert_eq!(q.consumer_count(), 0, "consumer left on {}", q.name);
                assert!(
                    q.exclusive_owner.is_none(),
                    "exclusive queue {} left behind",
                    q.name
                );
            }
        }
        // Exchanges still declared may be bound to themselves (legal): a
        // reference cycle the broker keeps until the process exits. Break it,
        // so LeakSanitizer reports only what a running broker would leak.
        for v in broker.vhosts.iter() {
            for x in v.exchanges.iter() {
                x.clear_bindings();
            }
        }
        assert!(
            broker.reply_channels.is_empty(),
            "direct reply-to consumer left behind"
        );
    });
});
