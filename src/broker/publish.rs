//! The one publish path: exchange → deduplication → route → enqueue →
//! persist → once the write is synced, deliverable and confirmed; if it
//! failed, withdrawn and nacked.
//!
//! Channels call it for basic.publish and tx.commit, and deduplication
//! waiters call it to publish a duplicate whose original failed. It owns the
//! rule that makes confirms safe: a message a queue keeps in the store (a
//! persistent one in a durable queue, any in a quorum queue) is held back
//! from consumers and its confirm is not sent until the store has synced it, and a duplicate is confirmed only once its original
//! is. It never names `channel`: the publisher is reached through
//! `PublishSink`, a transaction through `WriteWaiter`. It never blocks: the
//! store write completes later, on the store's side.

use amq_protocol::protocol::basic::AMQPProperties;
use bytes::Bytes;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use super::deadletter;
use super::{Broker, VHost};
use crate::batch::Batch;
use crate::error::{AmqpError, AmqpResult};
use crate::exchange::dedup::{self, Reservation, Seen};
use crate::exchange::Exchange;
use crate::message::Message;
use crate::queue::{now_ms, Enqueued, Queue};
use crate::store::{DedupDef, IndexMeta, QueueKey, Store};

/// The publisher's side: where its confirm and a returned message go.
pub trait PublishSink: Send + Sync {
    /// Settle the publish with this confirm sequence number: ack or nack.
    /// What it sends may wait for the end of `batch`.
    fn confirm(self: Arc<Self>, seq: u64, ack: bool, batch: &mut Batch);
    /// basic.return (312 NO_ROUTE) of an unroutable mandatory message.
    fn returned(&self, exchange: &str, routing_key: &str, raw_properties: &Bytes, body: &Bytes);
}

/// A transaction counting the writes its commit-ok waits for.
pub trait WriteWaiter: Send + Sync {
    fn add(&self);
    fn done(&self, ok: bool);
}

/// Who published, and what they wait for.
#[derive(Clone)]
pub struct Publisher {
    pub sink: Arc<dyn PublishSink>,
    /// The confirm sequence number, when the channel is in confirm mode.
    pub seq: Option<u64>,
    pub tx: Option<Arc<dyn WriteWaiter>>,
}

impl Publisher {
    fn confirm(&self, ack: bool, batch: &mut Batch) {
        if let Some(seq) = self.seq {
            self.sink.clone().confirm(seq, ack, batch);
        }
    }

    fn tx_add(&self) {
        if let Some(tx) = &self.tx {
            tx.add();
        }
    }

    fn tx_done(&self, ok: bool) {
        if let Some(tx) = &self.tx {
            tx.done(ok);
        }
    }
}

/// A complete message as published.
#[derive(Debug, Clone)]
pub struct Publication {
    pub exchange: String,
    pub routing_key: String,
    pub mandatory: bool,
    pub properties: AMQPProperties,
    pub raw_properties: Bytes,
    pub body: Bytes,
}

impl Publication {
    fn of(msg: &Message, mandatory: bool) -> Publication {
        Publication {
            exchange: msg.exchange.clone(),
            routing_key: msg.routing_key.clone(),
            mandatory,
            properties: msg.properties.clone(),
            raw_properties: msg.raw_properties.clone(),
            body: msg.body.clone(),
        }
    }
}

/// What became of a publish (its confirm comes separately).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    /// Enqueued in at least one queue now.
    pub routed: bool,
}

/// Publish `p`. Errors are the publisher's channel errors (404 exchange, 403
/// internal exchange, 406 bad expiration); they happen before anything is
/// enqueued. Queues under flow control are added to `flow`. Confirms that
/// are settled at once go out at the end of `batch`.
pub fn publish(
    broker: &Arc<Broker>,
    vhost: &Arc<VHost>,
    p: Publication,
    from: Publisher,
    flow: &mut Vec<Arc<Queue>>,
    batch: &mut Batch,
) -> AmqpResult<Published> {
    let x = vhost.exchange(&p.exchange)?;
    if x.internal {
        return Err(AmqpError::access_refused(format!(
            "cannot publish to internal exchange '{}' in vhost '{}'",
            x.name, vhost.name
        )));
    }
    let ttl = match p.properties.expiration() {
        None => None,
        Some(e) => Some(e.as_str().parse::<u64>().map_err(|_| {
            AmqpError::precondition(format!("invalid expiration '{}': {{error,no_integer}}", e))
        })?),
    };
    let key = match dedup_check(broker, vhost, &x, &p) {
        Checked::NoKey => None,
        Checked::Duplicate => {
            from.confirm(true, batch);
            return Ok(Published::default());
        }
        Checked::InFlight(key) => {
            wait_for_original(broker, vhost, &x, key, p, from, batch);
            return Ok(Published::default());
        }
        Checked::New(r) => Some(r),
    };
    route(broker, vhost, x, p, from, key, ttl, flow, batch)
}

enum Checked {
    NoKey,
    Duplicate,
    InFlight(String),
    New(Reservation),
}

/// Exchange-level deduplication: a committed key is a duplicate, a key in
/// flight makes the publish wait for its original, a new key is reserved.
fn dedup_check(broker: &Broker, vhost: &VHost, x: &Exchange, p: &Publication) -> Checked {
    let Some(cache) = &x.dedup else {
        return Checked::NoKey;
    };
    let Some(key) = cache.key_of(&p.properties) else {
        return Checked::NoKey;
    };
    match cache.check(&key, dedup::message_ttl(&p.properties), now_ms()) {
        Seen::Duplicate => Checked::Duplicate,
        Seen::InFlight => Checked::InFlight(key),
        Seen::New(r) => {
            if x.durable {
                for old in &r.evicted {
                    broker.store.forget_dedup(&vhost.name, &x.name, old);
                }
            }
            Checked::New(r)
        }
    }
}

/// A duplicate of a message still on its way is not confirmed before the
/// original is; if the original fails, this copy is published in its place.
fn wait_for_original(
    broker: &Arc<Broker>,
    vhost: &Arc<VHost>,
    x: &Exchange,
    key: String,
    p: Publication,
    from: Publisher,
    batch: &mut Batch,
) {
    let Some(cache) = &x.dedup else {
        return;
    };
    from.tx_add();
    let (b, v) = (broker.clone(), vhost.clone());
    cache.wait(
        &key,
        Box::new(move |stored, batch| {
            if stored {
                from.confirm(true, batch);
            } else {
                republish(&b, &v, p, &from, batch);
            }
            from.tx_done(true);
        }),
        now_ms(),
        batch,
    );
}

/// Publish a message again whose original (a duplicate it waited for) failed.
fn republish(
    broker: &Arc<Broker>,
    vhost: &Arc<VHost>,
    p: Publication,
    from: &Publisher,
    batch: &mut Batch,
) {
    let mut flow = Vec::new();
    if let Err(e) = publish(broker, vhost, p, from.clone(), &mut flow, batch) {
        tracing::debug!(error = %e, "publishing a duplicate in place of its failed original");
        from.confirm(false, batch);
    }
}

#[allow(clippy::too_many_arguments)]
fn route(
    broker: &Arc<Broker>,
    vhost: &Arc<VHost>,
    x: Arc<Exchange>,
    p: Publication,
    from: Publisher,
    key: Option<Reservation>,
    ttl: Option<u64>,
    flow: &mut Vec<Arc<Queue>>,
    batch: &mut Batch,
) -> AmqpResult<Published> {
    let hold = KeyHold { x: x.clone(), key };
    let queues = vhost.route_with_alternates(&x, &p.routing_key, p.properties.headers().as_ref());
    x.publish_in.add(1);
    if !queues.is_empty() {
        x.publish_out.add(1);
    }
    if queues.is_empty() {
        if p.mandatory {
            from.sink
                .returned(&p.exchange, &p.routing_key, &p.raw_properties, &p.body);
        }
        from.confirm(true, batch);
        hold.settle(true, batch);
        return Ok(Published::default());
    }
    let mandatory = p.mandatory;
    let msg = Arc::new(
        Message::new(
            broker.next_message_id(),
            p.exchange,
            p.routing_key,
            p.properties,
            p.raw_properties,
            p.body,
        )
        .with_ttl(ttl),
    );
    let placed = place(broker, vhost, msg, queues, flow);
    let refused = placed.refused;
    let published = Published {
        routed: !placed.accepted.is_empty() || !placed.replicated.is_empty(),
    };
    if placed.settled() {
        // A queue that refused the message (full, reject-publish) nacks it.
        from.confirm(!refused, batch);
        hold.settle(!refused, batch);
        return Ok(published);
    }
    // A copy that went nowhere but waits on originals takes their place if they fail.
    let replay = (placed.accepted.is_empty() && placed.replicated.is_empty() && !refused)
        .then(|| Publication::of(&placed.msg, mandatory));
    let dedup = match &hold.key {
        Some(r) if x.durable && !refused => Some(DedupDef {
            vhost: vhost.name.clone(),
            exchange: x.name.clone(),
            key: r.key.clone(),
            expires_at: r.expires_at,
        }),
        _ => None,
    };
    from.tx_add();
    let (b, v) = (broker.clone(), vhost.clone());
    when_written(
        broker,
        placed,
        dedup,
        Box::new(move |ok, batch| {
            match replay {
                Some(p) if !ok => {
                    hold.settle(false, batch);
                    republish(&b, &v, p, &from, batch);
                }
                _ => {
                    let ok = ok && !refused;
                    from.confirm(ok, batch);
                    hold.settle(ok, batch);
                }
            }
            from.tx_done(ok);
        }),
        batch,
    );
    Ok(published)
}

/// Where a routed message went, before its store write.
pub(super) struct Placed {
    pub msg: Arc<Message>,
    /// Queues that took it (it may still be held back from their consumers).
    pub accepted: Vec<Arc<Queue>>,
    /// Its index entries in the durable queues among them: the store write.
    stored: Vec<(QueueKey, IndexMeta)>,
    /// Some queue refused it (full with reject-publish, or deleted).
    pub refused: bool,
    /// Originals still being written that queue-level duplicates of it wait for.
    originals: Vec<Arc<Message>>,
    /// Quorum queues a cluster replicates: the message goes to their groups
    /// (`Replica::enqueue`) instead of into this node's queue.
    replicated: Vec<Arc<Queue>>,
}

impl Placed {
    /// Nothing to wait for: no store write, no original, no replication.
    pub fn settled(&self) -> bool {
        self.stored.is_empty() && self.originals.is_empty() && self.replicated.is_empty()
    }
}

/// Enqueue `msg` in `queues`. A message some queue keeps in the store
/// (`Queue::stores_message`: persistent in a durable queue, any in a quorum
/// queue) is held back from consumers until `when_written` has its write synced.
/// Dead letters the enqueues caused (a length limit dropping a head,
/// reject-publish-dlx) are routed on; queues under flow control join `flow`.
pub(super) fn place(
    broker: &Arc<Broker>,
    vhost: &Arc<VHost>,
    msg: Arc<Message>,
    queues: Vec<Arc<Queue>>,
    flow: &mut Vec<Arc<Queue>>,
) -> Placed {
    // Held back from consumers until synced when any queue keeps it.
    if queues
        .iter()
        .any(|q| q.replica().is_none() && q.stores_message(&msg))
    {
        msg.mark_pending();
    }
    let mut placed = Placed {
        msg,
        accepted: Vec::with_capacity(queues.len()),
        stored: Vec::new(),
        refused: false,
        originals: Vec::new(),
        replicated: Vec::new(),
    };
    for q in queues {
        if q.replica().is_some() {
            placed.replicated.push(q);
            continue;
        }
        match q.enqueue(placed.msg.clone()) {
            Enqueued::Accepted(meta) => {
                if q.stores_message(&placed.msg) {
                    placed.stored.push((q.key(), meta));
                }
                placed.accepted.push(q);
            }
            Enqueued::Refused => {
                placed.refused = true;
                // reject-publish-dlx dead-letters what it refuses.
                deadletter::flush(broker, vhost, &q);
            }
            Enqueued::Duplicate(original) => placed.originals.extend(original),
        }
    }
    for q in &placed.accepted {
        // x-max-length may have dropped a head message to its dead-letter exchange.
        deadletter::flush(broker, vhost, q);
        if q.in_flow() && !flow.iter().any(|f| Arc::ptr_eq(f, q)) {
            flow.push(q.clone());
        }
    }
    if placed.stored.is_empty() && !placed.msg.is_deliverable() {
        // Every durable queue refused it: nothing to write after all.
        placed.msg.mark_stored();
        for q in &placed.accepted {
            q.kick();
        }
    }
    placed
}

/// Write a placed message (with the deduplication key it brought, if any)
/// and wait for the originals its duplicates wait on; then `finish(ok)`.
/// Once synced the message is released to consumers; if the write failed
/// it is withdrawn from every queue that took it.
pub(super) fn when_written(
    broker: &Arc<Broker>,
    placed: Placed,
    dedup: Option<DedupDef>,
    finish: Finish,
    batch: &mut Batch,
) {
    let Placed {
        msg,
        accepted,
        stored,
        originals,
        replicated,
        ..
    } = placed;
    let join = Join::new(
        originals.len() + usize::from(!stored.is_empty()) + replicated.len(),
        finish,
    );
    for q in &replicated {
        let join = join.clone();
        let Some(replica) = q.replica() else {
            join.part(false, batch);
            continue;
        };
        replica.enqueue(msg.clone(), Box::new(move |ok, batch| join.part(ok, batch)));
    }
    for original in originals {
        let join = join.clone();
        when_settled(
            broker.store.clone(),
            original,
            Box::new(move |ok, batch| join.part(ok, batch)),
            0,
            batch,
        );
    }
    if stored.is_empty() {
        return;
    }
    let m = msg.clone();
    broker.store.persist(
        msg,
        stored,
        dedup,
        Box::new(move |ok, batch| {
            if ok {
                m.mark_stored();
                for q in &accepted {
                    q.kick();
                }
            } else {
                m.mark_failed();
                for q in &accepted {
                    q.withdraw(m.id);
                }
            }
            join.part(ok, batch);
        }),
    );
}

/// The deduplication key a publish reserved, settled once with its outcome.
struct KeyHold {
    x: Arc<Exchange>,
    key: Option<Reservation>,
}

impl KeyHold {
    fn settle(mut self, stored: bool, batch: &mut Batch) {
        if let (Some(cache), Some(r)) = (&self.x.dedup, self.key.take()) {
            cache.settle(&r, stored, batch);
        }
    }
}

impl Drop for KeyHold {
    fn drop(&mut self) {
        // Never leave a key pending (its waiters would wait forever).
        if let (Some(cache), Some(r)) = (&self.x.dedup, self.key.take()) {
            crate::batch::run(|batch| cache.settle(&r, false, batch));
        }
    }
}

/// Settles a publish once every part has: its own write and each pending
/// original its duplicates wait for.
struct Join {
    parts: AtomicUsize,
    ok: AtomicBool,
    finish: Mutex<Option<Finish>>,
}

pub(super) type Finish = Box<dyn FnOnce(bool, &mut Batch) + Send>;

impl Join {
    fn new(parts: usize, finish: Finish) -> Arc<Join> {
        Arc::new(Join {
            parts: AtomicUsize::new(parts),
            ok: AtomicBool::new(true),
            finish: Mutex::new(Some(finish)),
        })
    }

    fn part(&self, ok: bool, batch: &mut Batch) {
        if !ok {
            self.ok.store(false, Ordering::Release);
        }
        if self.parts.fetch_sub(1, Ordering::AcqRel) == 1 {
            let finish = self.finish.lock().take();
            if let Some(f) = finish {
                f(self.ok.load(Ordering::Acquire), batch);
            }
        }
    }
}

/// Run `then` once `msg`'s store write has settled: `true` if it was stored.
/// The write may not even be submitted yet (its publisher is between
/// enqueueing and persisting), so a store barrier that finds it still
/// pending waits behind the next batch again. A store that completes
/// barriers at once (no committer) gives up after `MAX_ROUNDS`, as a nack.
fn when_settled(
    store: Arc<dyn Store>,
    msg: Arc<Message>,
    then: Finish,
    round: u32,
    batch: &mut Batch,
) {
    const MAX_ROUNDS: u32 = 100_000;
    if msg.is_deliverable() {
        return then(true, batch);
    }
    if msg.is_failed() || round >= MAX_ROUNDS {
        return then(false, batch);
    }
    let s = store.clone();
    store.after(Box::new(move |_, batch| {
        when_settled(s, msg, then, round + 1, batch)
    }));
}
