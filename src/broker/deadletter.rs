//! Dead-lettering: messages rejected without requeue, expired, or dropped by a
//! length limit go to the queue's `x-dead-letter-exchange`, with the `x-death`
//! history and `x-first-death-*` headers RabbitMQ writes, so retry libraries
//! that read them work. A message dead-lettered around a cycle of queues with
//! no rejection in it is dropped, as RabbitMQ does.
//!
//! Queues collect their dead letters under their own lock; whoever holds the
//! vhost next (the channel that rejected, the publish that overflowed, or the
//! expiry sweeper) routes them here, with no queue lock held.

use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::basic::{gen_properties, AMQPProperties};
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};
use bytes::Bytes;
use std::sync::Arc;

use super::{Broker, VHost};
use crate::message::Message;
use crate::queue::{now_ms, Enqueued, Queue, QueueEntry, Slot};
use crate::store::{IndexMeta, QueueKey};

/// Route every waiting dead letter of `q`.
pub fn flush(broker: &Broker, vhost: &VHost, q: &Arc<Queue>) {
    let dead = q.take_dead();
    if dead.is_empty() {
        return;
    }
    let exchange = q
        .limits()
        .dlx
        .as_ref()
        .and_then(|name| vhost.exchanges.get(name).map(|x| x.clone()));
    for (entry, reason) in dead {
        // RabbitMQ drops dead letters whose exchange does not exist.
        let Some(x) = exchange.as_ref() else {
            q.settled(&entry);
            continue;
        };
        let msg = match &entry.slot {
            Slot::Mem(m) => Some(m.clone()),
            Slot::Stored(id) => broker
                .store
                .load(&[*id])
                .ok()
                .and_then(|mut v| v.pop().flatten()),
        };
        let Some(msg) = msg else {
            q.settled(&entry);
            continue;
        };
        let routing_key = q
            .limits()
            .dlrk
            .clone()
            .unwrap_or_else(|| msg.routing_key.clone());
        let props = dead_properties(&msg, q, reason);
        let raw = match gen_properties(&props)(WriteContext::from(Vec::new())) {
            Ok(ctx) => Bytes::from(ctx.into_inner().0),
            Err(e) => {
                tracing::error!(queue = %q.name, error = ?e, "cannot encode a dead letter's properties; dropping it");
                q.settled(&entry);
                continue;
            }
        };
        let copy = Arc::new(Message::new(
            broker.next_message_id(),
            x.name.clone(),
            routing_key.clone(),
            props,
            raw,
            msg.body.clone(),
        ));
        let targets: Vec<Arc<Queue>> = vhost
            .route_with_alternates(x, &routing_key, copy.properties.headers().as_ref())
            .into_iter()
            .filter(|t| !in_cycle(&copy.properties, &t.name))
            .collect();
        publish(broker, vhost, q, entry, copy, targets);
    }
}

/// Enqueue the dead-lettered copy; the original leaves its queue's store
/// only once the copy is safe (written, when it is persistent).
fn publish(
    broker: &Broker,
    vhost: &VHost,
    source: &Arc<Queue>,
    original: QueueEntry,
    copy: Arc<Message>,
    targets: Vec<Arc<Queue>>,
) {
    let stores = |t: &Arc<Queue>| t.durable && t.exclusive_owner.is_none();
    let persistent = copy.is_persistent() && targets.iter().any(stores);
    if persistent {
        copy.mark_pending();
    }
    let mut accepted = Vec::new();
    let mut stored: Vec<(QueueKey, IndexMeta)> = Vec::new();
    for t in targets {
        if let Enqueued::Accepted(meta) = t.enqueue(copy.clone()) {
            if persistent && stores(&t) {
                stored.push((t.key(), meta));
            }
            accepted.push(t);
        }
    }
    for t in &accepted {
        // A full target may drop its own head: route that too.
        flush(broker, vhost, t);
    }
    if stored.is_empty() {
        copy.mark_stored();
        for t in &accepted {
            t.kick();
        }
        source.settled(&original);
        return;
    }
    let source = source.clone();
    let m = copy.clone();
    broker.store.persist(
        copy,
        stored,
        None,
        Box::new(move |ok| {
            if ok {
                m.mark_stored();
                for t in &accepted {
                    t.kick();
                }
                source.settled(&original);
            } else {
                m.mark_failed();
                for t in &accepted {
                    t.withdraw(m.id);
                }
            }
        }),
    );
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn get_text(t: &FieldTable, k: &str) -> Option<String> {
    t.inner().get(k).and_then(crate::queue::as_text)
}

/// The properties of the dead-lettered copy: `x-death` updated, the
/// `x-first-death-*` headers set once, and `expiration` moved into the
/// `x-death` entry as `original-expiration`.
fn dead_properties(msg: &Message, q: &Queue, reason: &str) -> AMQPProperties {
    let p = &msg.properties;
    let mut headers = p.headers().clone().unwrap_or_default();
    let mut deaths: Vec<AMQPValue> = match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
        _ => Vec::new(),
    };
    let same = |d: &AMQPValue| match d {
        AMQPValue::FieldTable(t) => {
            get_text(t, "queue").as_deref() == Some(q.name.as_str())
                && get_text(t, "reason").as_deref() == Some(reason)
        }
        _ => false,
    };
    let now = AMQPValue::Timestamp(now_ms() / 1000);
    let entry = match deaths.iter().position(same) {
        Some(i) => {
            let mut t = match deaths.remove(i) {
                AMQPValue::FieldTable(t) => t,
                _ => FieldTable::default(),
            };
            let count = match t.inner().get("count") {
                Some(v) => crate::queue::as_u64(v).unwrap_or(0),
                None => 0,
            };
            t.insert("count".into(), AMQPValue::LongLongInt(count as i64 + 1));
            t.insert("time".into(), now);
            t
        }
        None => {
            let mut t = FieldTable::default();
            t.insert("count".into(), AMQPValue::LongLongInt(1));
            t.insert("reason".into(), text(reason));
            t.insert("queue".into(), text(&q.name));
            t.insert("time".into(), now);
            t.insert("exchange".into(), text(&msg.exchange));
            t.insert(
                "routing-keys".into(),
                AMQPValue::FieldArray(FieldArray::from(vec![text(&msg.routing_key)])),
            );
            if let Some(exp) = p.expiration() {
                t.insert("original-expiration".into(), text(exp.as_str()));
            }
            t
        }
    };
    deaths.insert(0, AMQPValue::FieldTable(entry));
    headers.insert("x-death".into(), AMQPValue::FieldArray(deaths.into()));
    if !headers.contains_key("x-first-death-reason") {
        headers.insert("x-first-death-reason".into(), text(reason));
        headers.insert("x-first-death-queue".into(), text(&q.name));
        headers.insert("x-first-death-exchange".into(), text(&msg.exchange));
    }
    without_expiration(p).with_headers(headers)
}

/// Whether dead-lettering into `queue` closes a cycle with no rejection in it.
fn in_cycle(props: &AMQPProperties, queue: &str) -> bool {
    let Some(AMQPValue::FieldArray(deaths)) = props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death"))
    else {
        return false;
    };
    let tables: Vec<&FieldTable> = deaths
        .as_slice()
        .iter()
        .filter_map(|d| match d {
            AMQPValue::FieldTable(t) => Some(t),
            _ => None,
        })
        .collect();
    tables
        .iter()
        .any(|t| get_text(t, "queue").as_deref() == Some(queue))
        && !tables
            .iter()
            .any(|t| get_text(t, "reason").as_deref() == Some("rejected"))
}

fn without_expiration(p: &AMQPProperties) -> AMQPProperties {
    let mut n = AMQPProperties::default();
    if let Some(v) = p.content_type() {
        n = n.with_content_type(v.clone());
    }
    if let Some(v) = p.content_encoding() {
        n = n.with_content_encoding(v.clone());
    }
    if let Some(v) = p.headers() {
        n = n.with_headers(v.clone());
    }
    if let Some(v) = p.delivery_mode() {
        n = n.with_delivery_mode(*v);
    }
    if let Some(v) = p.priority() {
        n = n.with_priority(*v);
    }
    if let Some(v) = p.correlation_id() {
        n = n.with_correlation_id(v.clone());
    }
    if let Some(v) = p.reply_to() {
        n = n.with_reply_to(v.clone());
    }
    if let Some(v) = p.message_id() {
        n = n.with_message_id(v.clone());
    }
    if let Some(v) = p.timestamp() {
        n = n.with_timestamp(*v);
    }
    if let Some(v) = p.kind() {
        n = n.with_type(v.clone());
    }
    if let Some(v) = p.user_id() {
        n = n.with_user_id(v.clone());
    }
    if let Some(v) = p.app_id() {
        n = n.with_app_id(v.clone());
    }
    if let Some(v) = p.cluster_id() {
        n = n.with_cluster_id(v.clone());
    }
    n
}

/// Expire messages and route dead letters in every queue, every 100 ms.
pub async fn sweeper(broker: Arc<Broker>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        broker.check_memory();
        let vhosts: Vec<Arc<VHost>> = broker.vhosts.iter().map(|v| v.clone()).collect();
        for v in vhosts {
            let queues: Vec<Arc<Queue>> = v.queues.iter().map(|q| q.clone()).collect();
            let now = now_ms();
            for q in queues {
                if q.expire() {
                    flush(&broker, &v, &q);
                }
                if q.unused_expired(now) {
                    tracing::info!(queue = %q.name, vhost = %v.name, "deleting queue unused for its x-expires");
                    match v.remove_queue(&q) {
                        Ok(d) => d.consumers.iter().for_each(|c| c.cancelled()),
                        Err(e) => {
                            tracing::error!(queue = %q.name, error = %e, "cannot delete expired queue")
                        }
                    }
                }
            }
        }
    }
}
