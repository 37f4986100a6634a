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

use super::publish::{place, when_written};
use super::{Broker, VHost};
use crate::batch::Batch;
use crate::message::Message;
use crate::queue::{now_ms, Queue, QueueEntry, Reason, Slot};

/// Route every waiting dead letter of `q`. Bodies paged out to the store
/// are read back in one batch, on a blocking thread when a runtime is
/// there: the caller (a publish, a reject, the sweeper) is an async worker.
pub fn flush(broker: &Arc<Broker>, vhost: &Arc<VHost>, q: &Arc<Queue>) {
    let dead = q.take_dead();
    if dead.is_empty() {
        return;
    }
    if q.limits().dlx.is_none() {
        // RabbitMQ drops dead letters that have nowhere to go.
        dead.iter().for_each(|(e, _)| q.settled(e));
        return;
    }
    let ids: Vec<u64> = dead
        .iter()
        .filter_map(|(e, _)| match e.slot {
            Slot::Stored(id) => Some(id),
            Slot::Mem(_) => None,
        })
        .collect();
    if ids.is_empty() {
        return route_all(broker, vhost, q, dead, Vec::new());
    }
    let (b, v, q) = (broker.clone(), vhost.clone(), q.clone());
    let load = move || {
        let loaded = match b.store.load(&ids) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(queue = %q.name, error = %e, "cannot read dead letters back from the store");
                ids.iter().map(|_| None).collect()
            }
        };
        route_all(&b, &v, &q, dead, loaded);
    };
    broker.dead_letter_lane.run(Box::new(load));
}

type Job = Box<dyn FnOnce() + Send>;

/// Dead-letter work that reads the store, run off the async workers one job
/// at a time, in submission order: dead letters of a queue keep their order.
#[derive(Debug, Default)]
pub struct Lane {
    jobs: parking_lot::Mutex<Option<tokio::sync::mpsc::UnboundedSender<Job>>>,
}

impl Lane {
    /// Run `job` on a blocking thread after the jobs before it; at once on
    /// this thread when there is no tokio runtime (tools, unit tests).
    fn run(&self, job: Job) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return job();
        };
        let mut jobs = self.jobs.lock();
        let tx = jobs.get_or_insert_with(|| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
            rt.spawn(async move {
                while let Some(job) = rx.recv().await {
                    if let Err(e) = tokio::task::spawn_blocking(job).await {
                        tracing::error!(error = %e, "dead-letter job failed");
                    }
                }
            });
            tx
        });
        if let Err(tokio::sync::mpsc::error::SendError(job)) = tx.send(job) {
            // The runtime that ran the lane is gone: run it here.
            *jobs = None;
            drop(jobs);
            job();
        }
    }
}

/// Route dead letters; `loaded` holds the stored ones' messages in order.
fn route_all(
    broker: &Arc<Broker>,
    vhost: &Arc<VHost>,
    q: &Arc<Queue>,
    dead: Vec<(QueueEntry, Reason)>,
    loaded: Vec<Option<Arc<Message>>>,
) {
    let limits = q.limits();
    let exchange = limits
        .dlx
        .as_ref()
        .and_then(|name| vhost.exchanges.get(name).map(|x| x.clone()));
    let mut loaded = loaded.into_iter();
    let mut batch = Batch::new();
    for (entry, reason) in dead {
        let msg = match &entry.slot {
            Slot::Mem(m) => Some(m.clone()),
            Slot::Stored(_) => loaded.next().flatten(),
        };
        // RabbitMQ drops dead letters whose exchange does not exist.
        let (Some(x), Some(msg)) = (exchange.as_ref(), msg) else {
            q.settled(&entry);
            continue;
        };
        let routing_key = limits
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
        publish(broker, vhost, q, entry, copy, targets, &mut batch);
    }
    batch.finish();
}

/// Put the dead-lettered copy on the one publish path (without a
/// publisher); the original leaves its queue's store only once the copy is
/// safe (written, when it is persistent). A target that refuses the copy
/// (full) drops it there, as RabbitMQ does.
fn publish(
    broker: &Arc<Broker>,
    vhost: &Arc<VHost>,
    source: &Arc<Queue>,
    original: QueueEntry,
    copy: Arc<Message>,
    targets: Vec<Arc<Queue>>,
    batch: &mut Batch,
) {
    let placed = place(broker, vhost, copy, targets, &mut Vec::new());
    if placed.settled() {
        source.settled(&original);
        return;
    }
    let source = source.clone();
    when_written(
        broker,
        placed,
        None,
        Box::new(move |ok, _| {
            if ok {
                source.settled(&original);
            }
        }),
        batch,
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
