//! Content assembly: basic.publish → content header → body frames on one
//! channel, driven through `hopper::channel::Channel` with a NullStore broker.
//!
//! A model of the assembly state predicts which frames are unexpected (a
//! connection error, 505) and which complete a message; a message completed
//! into queue "q" is fetched back with basic.get and must carry exactly the
//! bytes sent. After any error the channel is torn down and a fresh one used,
//! as the connection would.
#![no_main]

use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::basic::{self as b, gen_properties, AMQPProperties};
use amq_protocol::protocol::{confirm, queue, tx, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, ShortString};
use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use hopper::broker::Broker;
use hopper::channel::handle::{ConnHandle, Outbound, WriteFlow};
use hopper::channel::{Channel, ConnCtx};
use hopper::error::AmqpError;
use hopper::protocol::{read_frame, ContentHeader, Frame};
use hopper::store::NullStore;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use tokio::sync::mpsc;

#[derive(Debug, Arbitrary)]
enum Op {
    Publish {
        exchange: u8,
        routing_key: u8,
        mandatory: bool,
        immediate: bool,
    },
    Header {
        class_60: bool,
        size: Size,
        props: Props,
    },
    Body(Vec<u8>),
    /// Exactly the bytes still missing (when a header was seen), `split` frames.
    BodyRest {
        split: u8,
        fill: u8,
    },
    Method(M),
}

#[derive(Debug, Arbitrary)]
enum Size {
    Small(u16),
    Any(u64),
}

#[derive(Debug, Arbitrary)]
struct Props {
    delivery_mode: Option<u8>,
    expiration: Option<String>,
    priority: Option<u8>,
    message_id: Option<String>,
    user_id: Option<bool>,
    headers: Option<Vec<(String, i64)>>,
}

#[derive(Debug, Arbitrary)]
enum M {
    ConfirmSelect,
    TxSelect,
    TxCommit,
    TxRollback,
    Get,
    Ack(u64, bool),
    Qos(u16),
}

const EXCHANGES: [&str; 4] = ["", "amq.fanout", "missing", "amq.direct"];
const KEYS: [&str; 4] = ["q", "d", "none", "amq.rabbitmq.reply-to"];

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Idle,
    AwaitHeader,
    AwaitBody { expected: u64, got: u64 },
}

fn s(text: &str) -> ShortString {
    hopper::protocol::short(text)
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fn properties(p: &Props) -> AMQPProperties {
    let mut out = AMQPProperties::default();
    if let Some(d) = p.delivery_mode {
        out = out.with_delivery_mode(d);
    }
    if let Some(e) = &p.expiration {
        out = out.with_expiration(s(e));
    }
    if let Some(x) = p.priority {
        out = out.with_priority(x);
    }
    if let Some(m) = &p.message_id {
        out = out.with_message_id(s(m));
    }
    if let Some(ok) = p.user_id {
        out = out.with_user_id(s(if ok { "guest" } else { "mallory" }));
    }
    if let Some(h) = &p.headers {
        let mut t = FieldTable::default();
        for (k, v) in h.iter().take(8) {
            t.insert(s(k), AMQPValue::LongLongInt(*v));
        }
        out = out.with_headers(t);
    }
    out
}

fn header(class_id: u16, body_size: u64, properties: AMQPProperties) -> ContentHeader {
    let raw = gen_properties(&properties)(WriteContext::from(Vec::new()))
        .map(|c| c.into_inner().0)
        .expect("a Vec never runs out of room");
    ContentHeader {
        class_id,
        body_size,
        properties,
        raw_properties: Bytes::from(raw),
    }
}

struct Env {
    broker: Arc<Broker>,
    vhost: Arc<hopper::broker::VHost>,
    conn: Arc<ConnHandle>,
    rx: mpsc::UnboundedReceiver<Outbound>,
    exclusive: Vec<Arc<hopper::queue::Queue>>,
}

impl Env {
    fn ctx(&mut self) -> ConnCtx<'_> {
        ConnCtx {
            broker: &self.broker,
            vhost: &self.vhost,
            conn: &self.conn,
            user: "guest",
            exclusive_queues: &mut self.exclusive,
        }
    }

    /// Everything sent to the client so far, as frames.
    fn drain(&mut self) -> Vec<Frame> {
        let mut buf = BytesMut::new();
        while let Ok(m) = self.rx.try_recv() {
            if let Outbound::Frames(f) = m {
                buf.extend_from_slice(&f);
            }
        }
        let mut frames = Vec::new();
        while let Some(f) = read_frame(&mut buf, u32::MAX).expect("the broker writes valid frames")
        {
            frames.push(f);
        }
        assert!(buf.is_empty(), "the broker writes whole frames");
        frames
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let _guard = runtime().enter();
    static CONFIG: OnceLock<hopper::config::Config> = OnceLock::new();
    let config = CONFIG
        .get_or_init(|| hopper::config::Config::default_config().expect("default config"))
        .clone();
    let max_size = config.limits.max_message_size;
    let broker = Broker::new(config, Arc::new(NullStore)).expect("null store recovers");
    let vhost = broker.vhost("/").expect("default vhost");
    let (txo, rx) = mpsc::unbounded_channel();
    let conn = Arc::new(ConnHandle::new(
        1,
        txo,
        131_072,
        Arc::new(WriteFlow::default()),
    ));
    let mut env = Env {
        broker,
        vhost,
        conn,
        rx,
        exclusive: Vec::new(),
    };
    let mut ch = Channel::new(1, env.conn.clone());
    for (name, durable) in [("q", false), ("d", true)] {
        let m = AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: s(name),
            durable,
            ..Default::default()
        }));
        ch.handle_method(&mut env.ctx(), m).expect("declare");
    }
    let q = env.vhost.queue("q", 1).expect("queue q");
    env.drain();

    let mut state = State::Idle;
    // The publish being assembled: (checkable, body so far).
    let mut pending: Option<(bool, Vec<u8>)> = None;
    let mut tx_mode = false;
    for op in ops.iter().take(64) {
        let before = state;
        let mut finished = false;
        let r = match op {
            Op::Publish {
                exchange,
                routing_key,
                mandatory,
                immediate,
            } => {
                let exchange = EXCHANGES[*exchange as usize % EXCHANGES.len()];
                let routing_key = KEYS[*routing_key as usize % KEYS.len()];
                let m = AMQPClass::Basic(b::AMQPMethod::Publish(b::Publish {
                    exchange: s(exchange),
                    routing_key: s(routing_key),
                    mandatory: *mandatory,
                    immediate: *immediate,
                }));
                let r = ch.handle_method(&mut env.ctx(), m);
                if before == State::Idle && !*immediate {
                    state = State::AwaitHeader;
                    pending = Some(((exchange, routing_key) == ("", "q") && !tx_mode, Vec::new()));
                }
                r
            }
            Op::Header {
                class_60,
                size,
                props,
            } => {
                let size = match size {
                    Size::Small(n) => *n as u64 % 600,
                    Size::Any(n) => *n,
                };
                let props = properties(props);
                if let Some((check, _)) = pending.as_mut() {
                    *check &= props.expiration().is_none() && props.user_id().is_none();
                }
                let r = ch.handle_header(
                    &mut env.ctx(),
                    header(if *class_60 { 60 } else { 61 }, size, props),
                );
                if before == State::AwaitHeader && *class_60 && size <= max_size {
                    if size == 0 {
                        state = State::Idle;
                        finished = true;
                    } else {
                        state = State::AwaitBody {
                            expected: size,
                            got: 0,
                        };
                    }
                }
                r
            }
            Op::Body(bytes) => {
                if let (State::AwaitBody { expected, got }, Some((_, body))) =
                    (before, pending.as_mut())
                {
                    if got + bytes.len() as u64 <= expected {
                        body.extend_from_slice(bytes);
                        let got = got + bytes.len() as u64;
                        state = State::AwaitBody { expected, got };
                        if got == expected {
                            state = State::Idle;
                            finished = true;
                        }
                    }
                }
                ch.handle_body(&mut env.ctx(), Bytes::copy_from_slice(bytes))
            }
            Op::BodyRest { split, fill } => {
                let State::AwaitBody { expected, got } = before else {
                    continue;
                };
                let missing = (expected - got) as usize;
                let parts = 1 + (*split as usize % 4).min(missing.max(1) - 1);
                let chunk = missing.div_ceil(parts).max(1);
                let all: Vec<u8> = (0..missing).map(|i| fill.wrapping_add(i as u8)).collect();
                let mut r = Ok(());
                for part in all.chunks(chunk) {
                    r = ch.handle_body(&mut env.ctx(), Bytes::copy_from_slice(part));
                    if r.is_err() {
                        break;
                    }
                }
                if let Some((_, body)) = pending.as_mut() {
                    body.extend_from_slice(&all);
                }
                state = State::Idle;
                finished = true;
                r
            }
            Op::Method(m) => {
                let m = match m {
                    M::ConfirmSelect => {
                        AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                            nowait: false,
                        }))
                    }
                    M::TxSelect => {
                        if before == State::Idle {
                            tx_mode = true;
                        }
                        AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {}))
                    }
                    M::TxCommit => AMQPClass::Tx(tx::AMQPMethod::Commit(tx::Commit {})),
                    M::TxRollback => AMQPClass::Tx(tx::AMQPMethod::Rollback(tx::Rollback {})),
                    M::Get => AMQPClass::Basic(b::AMQPMethod::Get(b::Get {
                        queue: s("q"),
                        no_ack: true,
                    })),
                    M::Ack(tag, multiple) => AMQPClass::Basic(b::AMQPMethod::Ack(b::Ack {
                        delivery_tag: *tag,
                        multiple: *multiple,
                    })),
                    M::Qos(n) => AMQPClass::Basic(b::AMQPMethod::Qos(b::Qos {
                        prefetch_count: *n,
                        global: false,
                    })),
                };
                ch.handle_method(&mut env.ctx(), m)
            }
        };

        // A frame the model calls unexpected is a 505 connection error.
        let unexpected = match op {
            Op::Publish { .. } | Op::Method(_) => before != State::Idle,
            Op::Header { class_60, .. } => before != State::AwaitHeader || !*class_60,
            Op::Body(bytes) => match before {
                State::AwaitBody { expected, got } => got + bytes.len() as u64 > expected,
                _ => true,
            },
            Op::BodyRest { .. } => false,
        };
        if unexpected {
            match &r {
                Err(AmqpError::Connection { code: 505, .. }) => {}
                other => panic!("{op:?} in {before:?}: expected 505, got {other:?}"),
            }
        } else if let Err(AmqpError::Connection { code: 505, .. }) = &r {
            panic!("{op:?} in {before:?}: unexpected 505 {r:?}");
        }

        if let (true, Some((true, _)), Err(e)) = (finished, &pending, &r) {
            panic!("a valid publish to q failed: {e:?}");
        }
        if r.is_err() {
            // The connection closes the channel (or itself): start over on a new one.
            ch.teardown(&env.broker, Some(&env.vhost));
            ch = Channel::new(1, env.conn.clone());
            state = State::Idle;
            pending = None;
            tx_mode = false;
            let _ = q.purge();
            env.drain();
            continue;
        }
        if finished {
            let (check, body) = pending.take().expect("a publish was assembled");
            env.drain();
            if check {
                assert_eq!(q.message_count(), 1, "the completed message is in q");
                let get = AMQPClass::Basic(b::AMQPMethod::Get(b::Get {
                    queue: s("q"),
                    no_ack: true,
                }));
                ch.handle_method(&mut env.ctx(), get).expect("basic.get");
                let frames = env.drain();
                let mut got = Vec::new();
                for f in &frames {
                    if let Frame::Body(_, part) = f {
                        got.extend_from_slice(part);
                    }
                }
                assert!(
                    matches!(frames.first(), Some(Frame::Method(1, m)) if matches!(**m, AMQPClass::Basic(b::AMQPMethod::GetOk(_)))),
                    "get-ok first: {frames:?}"
                );
                assert_eq!(got, body, "the body comes back as it was sent");
            }
            let _ = q.purge();
        }
        env.drain();
    }
    ch.teardown(&env.broker, Some(&env.vhost));
});
