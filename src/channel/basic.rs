//! The basic class on a channel: publish (after content assembly), qos,
//! consume/cancel, get, ack/nack/reject, recover.

use amq_protocol::protocol::{basic as b, AMQPClass};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use super::handle::{Consumer, Unacked};
use super::reply_to;
use super::tx::TxCommit;
use super::{delete_auto_queue, requeue_all, Channel, ConnCtx};
use crate::auth::{Permission, Resource};
use crate::broker::publish::{publish, Publication, PublishSink, Publisher, WriteWaiter};
use crate::broker::vhost::random_name;
use crate::broker::{deadletter, ReplyTarget};
use crate::error::{AmqpError, AmqpResult};
use crate::message::Message;
use crate::protocol::{codes, encode, short, ContentHeader};
use crate::queue::Queue;

/// An `x-priority` consumer argument of any integer type.
fn consumer_priority(v: &amq_protocol::types::AMQPValue) -> Option<i64> {
    crate::exchange::headers::as_i128(v).and_then(|x| i64::try_from(x).ok())
}

impl Channel {
    /// Resolve a queue name, "" meaning the last queue declared on this channel.
    pub(super) fn queue_name(&self, name: &str) -> AmqpResult<String> {
        if !name.is_empty() {
            return Ok(name.to_string());
        }
        self.last_queue
            .clone()
            .ok_or_else(|| AmqpError::channel(codes::NOT_FOUND, "no previously declared queue"))
    }

    /// Route and enqueue a publish now; `commit` counts the persistent writes
    /// of a transaction (commit-ok waits for them).
    pub(super) fn publish_now(
        &mut self,
        ctx: &mut ConnCtx<'_>,
        p: b::Publish,
        header: ContentHeader,
        body: Bytes,
        commit: Option<&Arc<TxCommit>>,
    ) -> AmqpResult<()> {
        let mut header = header;
        // Only requests addressed to the pseudo-queue look at the reply consumer.
        if reply_to::is_request(&header.properties) {
            let reply = self.handle.delivery.lock().reply_consumer.clone();
            header.raw_properties =
                reply_to::rewrite_request(&mut header.properties, reply.as_ref())?;
        }
        if p.exchange.as_str().is_empty() {
            if let Some(token) = p.routing_key.as_str().strip_prefix(reply_to::REPLY_PREFIX) {
                return self.publish_reply(ctx, &p, token, &header, &body);
            }
        }
        if let Some(user_id) = header.properties.user_id() {
            if user_id.as_str() != ctx.user {
                return Err(AmqpError::precondition(format!(
                    "user_id property set to '{}' but authenticated user was '{}'",
                    user_id, ctx.user
                )));
            }
        }
        let seq = {
            let mut c = self.handle.confirms.lock();
            c.enabled.then(|| c.register())
        };
        let from = Publisher {
            sink: self.handle.clone(),
            seq,
            tx: commit.map(|c| c.clone() as Arc<dyn WriteWaiter>),
        };
        let publication = Publication {
            exchange: p.exchange.as_str().to_string(),
            routing_key: p.routing_key.as_str().to_string(),
            mandatory: p.mandatory,
            properties: header.properties,
            raw_properties: header.raw_properties,
            body,
        };
        let size = publication.body.len() as u64;
        let published = publish(
            ctx.broker,
            ctx.vhost,
            publication,
            from,
            ctx.flow,
            ctx.batch,
        )?;
        // The reader task is the one writer of these.
        let stats = &self.handle.stats;
        stats.published(size, seq.is_some());
        if published.routed {
            stats.routed.add(1);
        } else {
            stats.unroutable.add(1);
        }
        Ok(())
    }

    /// A reply to a direct reply-to request: straight to the requester's channel.
    fn publish_reply(
        &mut self,
        ctx: &mut ConnCtx<'_>,
        p: &b::Publish,
        token: &str,
        header: &ContentHeader,
        body: &Bytes,
    ) -> AmqpResult<()> {
        let seq = {
            let mut c = self.handle.confirms.lock();
            c.enabled.then(|| c.register())
        };
        self.handle
            .stats
            .published(body.len() as u64, seq.is_some());
        let target = ctx
            .broker
            .reply_channels
            .get(token)
            .and_then(|w| w.upgrade());
        let delivered = target
            .is_some_and(|t| t.deliver_reply(p.routing_key.as_str(), &header.raw_properties, body));
        if !delivered && p.mandatory {
            self.handle.returned(
                p.exchange.as_str(),
                p.routing_key.as_str(),
                &header.raw_properties,
                body,
            );
        }
        if let Some(seq) = seq {
            self.handle.confirms.lock().complete(seq, true);
        }
        Ok(())
    }

    pub(super) fn qos(&mut self, ctx: &mut ConnCtx<'_>, m: b::Qos) -> AmqpResult<()> {
        let queues: Vec<Arc<Queue>> = {
            let mut d = self.handle.delivery.lock();
            if m.global {
                d.prefetch_global = m.prefetch_count;
            } else {
                d.prefetch_consumer = m.prefetch_count;
            }
            d.consumers.values().map(|c| c.queue.clone()).collect()
        };
        let _ = ctx;
        self.reply(AMQPClass::Basic(b::AMQPMethod::QosOk(b::QosOk {})));
        // A larger channel limit may let held-back messages flow.
        for q in queues {
            q.kick();
        }
        Ok(())
    }

    pub(super) fn consume(&mut self, ctx: &mut ConnCtx<'_>, m: b::Consume) -> AmqpResult<()> {
        if m.queue.as_str() == reply_to::PSEUDO_QUEUE {
            return self.consume_replies(ctx, m);
        }
        let name = self.queue_name(m.queue.as_str())?;
        ctx.check(Permission::Read, Resource::Queue, &name)?;
        let queue = ctx.vhost.queue(&name, ctx.conn.id)?;
        let tag = if m.consumer_tag.as_str().is_empty() {
            random_name("amq.ctag-")
        } else {
            m.consumer_tag.as_str().to_string()
        };
        let consumer = {
            let mut d = self.handle.delivery.lock();
            let max = ctx.broker.config.limits.max_consumers_per_channel;
            if max > 0 && d.consumers.len() >= max {
                return Err(AmqpError::connection(
                    codes::NOT_ALLOWED,
                    format!("reached maximum ({max}) of consumers per channel"),
                ));
            }
            if d.consumers.contains_key(&tag) {
                return Err(AmqpError::connection(
                    codes::NOT_ALLOWED,
                    format!("attempt to reuse consumer tag '{tag}'"),
                ));
            }
            let c = Arc::new(Consumer {
                tag: tag.clone(),
                channel: self.handle.clone(),
                queue: queue.clone(),
                no_ack: m.no_ack,
                exclusive: m.exclusive,
                prefetch: d.prefetch_consumer,
                priority: m
                    .arguments
                    .inner()
                    .get("x-priority")
                    .and_then(consumer_priority)
                    .unwrap_or(0),
                unacked: AtomicU32::new(0),
            });
            d.consumers.insert(tag.clone(), c.clone());
            c
        };
        if !consumer.subscribe() {
            self.handle.delivery.lock().consumers.remove(&tag);
            return Err(AmqpError::access_refused(format!(
                "queue '{name}' in vhost '{}' in exclusive use",
                ctx.vhost.name
            )));
        }
        if !m.nowait {
            self.reply(AMQPClass::Basic(b::AMQPMethod::ConsumeOk(b::ConsumeOk {
                consumer_tag: short(&tag),
            })));
        }
        // Deliveries start only after consume-ok is on its way.
        queue.kick();
        Ok(())
    }

    /// basic.consume on amq.rabbitmq.reply-to.
    fn consume_replies(&mut self, ctx: &mut ConnCtx<'_>, m: b::Consume) -> AmqpResult<()> {
        if !m.no_ack {
            return Err(AmqpError::precondition("reply consumer cannot acknowledge"));
        }
        let tag = if m.consumer_tag.as_str().is_empty() {
            random_name("amq.ctag-")
        } else {
            m.consumer_tag.as_str().to_string()
        };
        {
            let mut d = self.handle.delivery.lock();
            if d.reply_consumer.is_some() {
                return Err(AmqpError::precondition("reply consumer already set"));
            }
            if d.consumers.contains_key(&tag) {
                return Err(AmqpError::connection(
                    codes::NOT_ALLOWED,
                    format!("attempt to reuse consumer tag '{tag}'"),
                ));
            }
            let token = random_name("");
            ctx.broker.reply_channels.insert(token.clone(), {
                let target: Arc<dyn ReplyTarget> = self.handle.clone();
                Arc::downgrade(&target)
            });
            d.reply_consumer = Some(reply_to::ReplyConsumer {
                tag: tag.clone(),
                token,
            });
        }
        if !m.nowait {
            self.reply(AMQPClass::Basic(b::AMQPMethod::ConsumeOk(b::ConsumeOk {
                consumer_tag: short(&tag),
            })));
        }
        Ok(())
    }

    pub(super) fn cancel(&mut self, ctx: &mut ConnCtx<'_>, m: b::Cancel) -> AmqpResult<()> {
        {
            let mut d = self.handle.delivery.lock();
            if d.reply_consumer.as_ref().map(|r| r.tag.as_str()) == Some(m.consumer_tag.as_str()) {
                if let Some(r) = d.reply_consumer.take() {
                    ctx.broker.reply_channels.remove(&r.token);
                }
            }
        }
        let consumer = self
            .handle
            .delivery
            .lock()
            .consumers
            .remove(m.consumer_tag.as_str());
        if !m.nowait {
            self.reply(AMQPClass::Basic(b::AMQPMethod::CancelOk(b::CancelOk {
                consumer_tag: m.consumer_tag.clone(),
            })));
        }
        if let Some(c) = consumer {
            if c.unsubscribe() {
                delete_auto_queue(ctx.vhost, &c.queue);
            }
        }
        Ok(())
    }

    pub(super) fn get(&mut self, ctx: &mut ConnCtx<'_>, m: b::Get) -> AmqpResult<()> {
        let name = self.queue_name(m.queue.as_str())?;
        ctx.check(Permission::Read, Resource::Queue, &name)?;
        let queue = ctx.vhost.queue(&name, ctx.conn.id)?;
        match queue.get(m.no_ack) {
            Some((entry, msg, remaining)) => {
                self.deliver_got(&queue, entry, &msg, remaining, m.no_ack)
            }
            None => {
                self.handle.stats.get_empty.add(1);
                self.reply(AMQPClass::Basic(b::AMQPMethod::GetEmpty(b::GetEmpty {})))
            }
        }
        Ok(())
    }

    /// basic.get-ok with the message taken from `queue`.
    fn deliver_got(
        &self,
        queue: &Arc<Queue>,
        entry: crate::queue::QueueEntry,
        msg: &Message,
        remaining: u32,
        no_ack: bool,
    ) {
        let mut d = self.handle.delivery.lock();
        let tag = d.next_tag;
        d.next_tag += 1;
        // Under the delivery lock, like a consumer's deliveries.
        let stats = &self.handle.stats;
        if no_ack {
            stats.get_no_ack.add(1);
        } else {
            stats.get.add(1);
        }
        if entry.redelivered {
            stats.redeliver.add(1);
        }
        let mut out = BytesMut::with_capacity(msg.body.len() + 128);
        encode::get_ok_method(
            &mut out,
            self.id(),
            tag,
            entry.redelivered,
            &msg.exchange,
            &msg.routing_key,
            remaining,
        );
        encode::content(
            &mut out,
            self.id(),
            &entry.delivery_properties(msg, queue.quorum),
            &msg.body,
            self.handle.conn.frame_max(),
        );
        if no_ack {
            queue.settled(&entry);
        } else {
            d.unacked.insert(
                tag,
                Unacked {
                    queue: queue.clone(),
                    entry: queue.hold_got(entry),
                    consumer: None,
                    at: std::time::Instant::now(),
                },
            );
        }
        self.handle.conn.send(out.freeze());
    }

    /// Take unacked deliveries out of the channel: one tag, or every tag up to
    /// it with `multiple` (tag 0 with multiple = all).
    fn take_unacked(&mut self, tag: u64, multiple: bool) -> AmqpResult<Vec<Unacked>> {
        let mut d = self.handle.delivery.lock();
        if multiple {
            if tag != 0 && !d.unacked.contains_key(&tag) {
                return Err(AmqpError::precondition(format!(
                    "unknown delivery tag {tag}"
                )));
            }
            let rest = if tag == 0 {
                std::collections::BTreeMap::new()
            } else {
                d.unacked.split_off(&(tag + 1))
            };
            let taken = std::mem::replace(&mut d.unacked, rest);
            Ok(taken.into_values().collect())
        } else {
            match d.unacked.remove(&tag) {
                Some(u) => Ok(vec![u]),
                None => Err(AmqpError::precondition(format!(
                    "unknown delivery tag {tag}"
                ))),
            }
        }
    }

    pub(super) fn ack(&mut self, tag: u64, multiple: bool) -> AmqpResult<()> {
        if self.tx_hold_settle(tag, multiple, None) {
            return Ok(());
        }
        self.ack_now(tag, multiple)
    }

    pub(super) fn reject(
        &mut self,
        ctx: &mut ConnCtx<'_>,
        tag: u64,
        multiple: bool,
        requeue: bool,
    ) -> AmqpResult<()> {
        if self.tx_hold_settle(tag, multiple, Some(requeue)) {
            return Ok(());
        }
        self.reject_now(ctx, tag, multiple, requeue)
    }

    pub(super) fn ack_now(&mut self, tag: u64, multiple: bool) -> AmqpResult<()> {
        let taken = self.take_unacked(tag, multiple)?;
        self.handle.stats.ack.add(taken.len() as u64);
        let mut touched: HashMap<*const Queue, (Arc<Queue>, u64)> = HashMap::new();
        for u in &taken {
            Consumer::release_credit(&u.consumer);
            u.queue.settled(&u.entry);
            touched
                .entry(Arc::as_ptr(&u.queue))
                .or_insert_with(|| (u.queue.clone(), 0))
                .1 += 1;
        }
        self.kick_after_settle(touched);
        Ok(())
    }

    pub(super) fn reject_now(
        &mut self,
        ctx: &mut ConnCtx<'_>,
        tag: u64,
        multiple: bool,
        requeue: bool,
    ) -> AmqpResult<()> {
        let taken = self.take_unacked(tag, multiple)?;
        let mut touched: HashMap<*const Queue, (Arc<Queue>, u64)> = HashMap::new();
        for u in &taken {
            Consumer::release_credit(&u.consumer);
            touched
                .entry(Arc::as_ptr(&u.queue))
                .or_insert_with(|| (u.queue.clone(), 0));
        }
        if requeue {
            requeue_all(taken.into_iter().map(|u| (u.queue, u.entry)));
        } else {
            for u in taken {
                u.queue.reject([u.entry]);
            }
        }
        // A requeue past a quorum queue's delivery limit dead-letters too.
        for (q, _) in touched.values() {
            deadletter::flush(ctx.broker, ctx.vhost, q);
        }
        self.kick_after_settle(touched);
        Ok(())
    }

    /// Freed credit: deliver again from the queues involved, and with a
    /// channel-wide limit from every queue this channel consumes. Each
    /// queue counts the acks it got (`.1`) under the lock its kick takes anyway.
    fn kick_after_settle(&self, mut touched: HashMap<*const Queue, (Arc<Queue>, u64)>) {
        {
            let d = self.handle.delivery.lock();
            if d.prefetch_global > 0 {
                for c in d.consumers.values() {
                    touched
                        .entry(Arc::as_ptr(&c.queue))
                        .or_insert_with(|| (c.queue.clone(), 0));
                }
            }
        }
        for (q, acks) in touched.into_values() {
            q.kick_acked(acks);
        }
    }

    pub(super) fn recover(&mut self, requeue: bool) -> AmqpResult<()> {
        if !requeue {
            return Err(AmqpError::not_implemented("requeue=false"));
        }
        let taken = self.take_unacked(0, true)?;
        for u in &taken {
            Consumer::release_credit(&u.consumer);
        }
        requeue_all(taken.into_iter().map(|u| (u.queue, u.entry)));
        Ok(())
    }
}
