//! Helpers for the policy tests (tests/policies.rs, tests/policy_effects.rs):
//! setting policies through `rabbitmq_http_client`, and waiting for their
//! effects, which RabbitMQ applies after answering the PUT.

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use rabbitmq_http_client::commons::PolicyTarget;
use rabbitmq_http_client::requests::{PolicyDefinition, PolicyParams};
use serde_json::{Map, Value};
use std::time::{Duration, Instant};

use super::mgmt::{http, Api, GUEST};
use super::Broker;

pub fn definition(v: Value) -> PolicyDefinition {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

pub fn set_policy(
    c: &Api,
    pname: &str,
    pattern: &str,
    target: PolicyTarget,
    def: Value,
    prio: i32,
) {
    c.declare_policy(
        &PolicyParams::new("/", pname, pattern, definition(def))
            .apply_to(target)
            .priority(prio),
    )
    .unwrap_or_else(|e| panic!("declare policy {pname}: {e:?}"));
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

/// Poll the queue's ready count over AMQP until it is `n` (RabbitMQ applies
/// a policy after answering the PUT).
pub fn wait_ready(rt: &tokio::runtime::Runtime, ch: &lapin::Channel, q: &str, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = rt.block_on(super::message_count(ch, q));
        if got == n {
            return;
        }
        assert!(Instant::now() < deadline, "{q}: {got} ready, not {n}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn declare(rt: &tokio::runtime::Runtime, ch: &lapin::Channel, q: &str, args: FieldTable) {
    rt.block_on(ch.queue_declare(q.into(), QueueDeclareOptions::default(), args))
        .unwrap_or_else(|e| panic!("declare {q}: {e:?}"));
}

pub fn bodies(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| i.to_string().into_bytes()).collect()
}

pub fn fill(rt: &tokio::runtime::Runtime, conn: &lapin::Connection, q: &str, n: usize) {
    let b = bodies(n);
    let refs: Vec<&[u8]> = b.iter().map(|x| x.as_slice()).collect();
    rt.block_on(super::fill_queue(conn, q, &refs));
}

pub fn args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

/// GET `path` until `done` holds for its JSON (RabbitMQ's management
/// shows queue fields from its stats, refreshed every 5 s).
pub fn wait_json(b: &mut Broker, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = http(b.mgmt_addr(), "GET", path, GUEST, None);
        if r.status == 200 {
            let j = r.json();
            if done(&j) {
                return j;
            }
        }
        assert!(Instant::now() < deadline, "{path}: {} {}", r.status, r.body);
        std::thread::sleep(Duration::from_millis(100));
    }
}
