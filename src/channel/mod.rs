//! One AMQP channel as the connection task sees it: content assembly
//! (publish → header → body frames), and the dispatch of every channel-level
//! method. Methods live in `basic` (publish, consume, ack...) and `definitions`
//! (exchange, queue); `handle` holds what queues and the store share with us.

mod basic;
mod definitions;
pub mod handle;
pub mod reply_to;
mod tx;

use amq_protocol::protocol::{
    access, basic as b, channel, confirm, exchange, queue, tx as amqp_tx, AMQPClass,
};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::Arc;

use crate::broker::{Broker, VHost};
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::{codes, encode, ContentHeader};
use crate::queue::{Queue, QueueEntry};
use handle::{ChannelHandle, ConnHandle};

/// What a channel needs from its connection while handling a frame.
pub struct ConnCtx<'a> {
    pub broker: &'a Arc<Broker>,
    pub vhost: &'a Arc<VHost>,
    pub conn: &'a Arc<ConnHandle>,
    /// The authenticated user.
    pub user: &'a str,
    /// Exclusive queues declared on this connection, deleted when it closes.
    pub exclusive_queues: &'a mut Vec<Arc<Queue>>,
    /// Queues published to that are under flow control: the connection
    /// pauses reading after this burst (see `Queue::in_flow`).
    pub flow: &'a mut Vec<Arc<Queue>>,
    /// The read burst: confirms settled while handling it go out at its end.
    pub batch: &'a mut crate::batch::Batch,
}

impl ConnCtx<'_> {
    /// RabbitMQ's permission check for this connection's user and vhost:
    /// a refusal is a 403 channel error.
    pub fn check(
        &self,
        perm: crate::auth::Permission,
        kind: crate::auth::Resource,
        name: &str,
    ) -> AmqpResult<()> {
        self.broker
            .access
            .check(self.user, &self.vhost.name, perm, kind, name)
    }
}

/// A publish waiting for its content header and body.
#[derive(Debug)]
struct Assembly {
    publish: b::Publish,
    header: Option<ContentHeader>,
    body: BodyBuf,
}

/// Body frames collected so far; one frame (the common case) is kept without a copy.
#[derive(Debug, Default)]
enum BodyBuf {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl BodyBuf {
    fn len(&self) -> usize {
        match self {
            BodyBuf::Empty => 0,
            BodyBuf::One(b) => b.len(),
            BodyBuf::Many(b) => b.len(),
        }
    }

    fn push(&mut self, part: Bytes) {
        *self = match std::mem::take(self) {
            BodyBuf::Empty => BodyBuf::One(part),
            BodyBuf::One(first) => {
                let mut m = BytesMut::with_capacity(first.len() + part.len());
                m.extend_from_slice(&first);
                m.extend_from_slice(&part);
                BodyBuf::Many(m)
            }
            BodyBuf::Many(mut m) => {
                m.extend_from_slice(&part);
                BodyBuf::Many(m)
            }
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            BodyBuf::Empty => Bytes::new(),
            BodyBuf::One(b) => b,
            BodyBuf::Many(m) => m.freeze(),
        }
    }
}

pub struct Channel {
    pub handle: Arc<ChannelHandle>,
    assembly: Option<Assembly>,
    /// Last queue declared on this channel, used when a method names queue "".
    last_queue: Option<String>,
    /// Some once tx.select was seen: what the open transaction holds.
    tx: Option<tx::TxState>,
}

fn unexpected_frame(text: &str) -> AmqpError {
    AmqpError::connection(codes::UNEXPECTED_FRAME, text)
}

impl Channel {
    pub fn new(id: u16, conn: Arc<ConnHandle>) -> Self {
        Channel {
            handle: Arc::new(ChannelHandle::new(id, conn)),
            assembly: None,
            last_queue: None,
            tx: None,
        }
    }

    pub fn id(&self) -> u16 {
        self.handle.id
    }

    /// Handle a method frame; errors carry the method's class and method ids.
    pub fn handle_method(&mut self, ctx: &mut ConnCtx<'_>, method: AMQPClass) -> AmqpResult<()> {
        let (class_id, method_id) = (method.get_amqp_class_id(), method.get_amqp_method_id());
        if self.assembly.is_some() {
            return Err(unexpected_frame(&format!(
                "expected content header for class 60, got non content header frame instead (method {class_id}/{method_id})"
            ))
            .caused_by(class_id, method_id));
        }
        self.dispatch(ctx, method)
            .map_err(|e| e.caused_by(class_id, method_id))
    }

    fn dispatch(&mut self, ctx: &mut ConnCtx<'_>, method: AMQPClass) -> AmqpResult<()> {
        match method {
            AMQPClass::Basic(m) => match m {
                b::AMQPMethod::Publish(p) => {
                    if p.immediate {
                        return Err(AmqpError::not_implemented("immediate=true"));
                    }
                    self.assembly = Some(Assembly {
                        publish: p,
                        header: None,
                        body: BodyBuf::Empty,
                    });
                    Ok(())
                }
                b::AMQPMethod::Qos(m) => self.qos(ctx, m),
                b::AMQPMethod::Consume(m) => self.consume(ctx, m),
                b::AMQPMethod::Cancel(m) => self.cancel(ctx, m),
                b::AMQPMethod::Get(m) => self.get(ctx, m),
                b::AMQPMethod::Ack(m) => self.ack(m.delivery_tag, m.multiple),
                b::AMQPMethod::Reject(m) => self.reject(ctx, m.delivery_tag, false, m.requeue),
                b::AMQPMethod::Nack(m) => self.reject(ctx, m.delivery_tag, m.multiple, m.requeue),
                b::AMQPMethod::Recover(m) => {
                    if !m.requeue {
                        return Err(AmqpError::not_implemented("requeue=false"));
                    }
                    // recover-ok first: clients drop deliveries that arrive before it.
                    self.reply(AMQPClass::Basic(b::AMQPMethod::RecoverOk(b::RecoverOk {})));
                    self.recover(true)
                }
                b::AMQPMethod::RecoverAsync(m) => self.recover(m.requeue),
                b::AMQPMethod::QosOk(_)
                | b::AMQPMethod::ConsumeOk(_)
                | b::AMQPMethod::CancelOk(_)
                | b::AMQPMethod::Return(_)
                | b::AMQPMethod::Deliver(_)
                | b::AMQPMethod::GetOk(_)
                | b::AMQPMethod::GetEmpty(_)
                | b::AMQPMethod::RecoverOk(_) => Err(server_only()),
            },
            AMQPClass::Exchange(m) => match m {
                exchange::AMQPMethod::Declare(m) => self.exchange_declare(ctx, m),
                exchange::AMQPMethod::Delete(m) => self.exchange_delete(ctx, m),
                exchange::AMQPMethod::Bind(m) => self.exchange_bind(ctx, m),
                exchange::AMQPMethod::Unbind(m) => self.exchange_unbind(ctx, m),
                exchange::AMQPMethod::DeclareOk(_)
                | exchange::AMQPMethod::DeleteOk(_)
                | exchange::AMQPMethod::BindOk(_)
                | exchange::AMQPMethod::UnbindOk(_) => Err(server_only()),
            },
            AMQPClass::Queue(m) => match m {
                queue::AMQPMethod::Declare(m) => self.queue_declare(ctx, m),
                queue::AMQPMethod::Bind(m) => self.queue_bind(ctx, m),
                queue::AMQPMethod::Unbind(m) => self.queue_unbind(ctx, m),
                queue::AMQPMethod::Purge(m) => self.queue_purge(ctx, m),
                queue::AMQPMethod::Delete(m) => self.queue_delete(ctx, m),
                queue::AMQPMethod::DeclareOk(_)
                | queue::AMQPMethod::BindOk(_)
                | queue::AMQPMethod::UnbindOk(_)
                | queue::AMQPMethod::PurgeOk(_)
                | queue::AMQPMethod::DeleteOk(_) => Err(server_only()),
            },
            AMQPClass::Confirm(m) => match m {
                confirm::AMQPMethod::Select(s) => {
                    if self.tx.is_some() {
                        return Err(AmqpError::precondition(
                            "cannot switch from tx to confirm mode",
                        ));
                    }
                    self.handle.confirms.lock().enabled = true;
                    if !s.nowait {
                        self.reply(AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(
                            confirm::SelectOk {},
                        )));
                    }
                    Ok(())
                }
                confirm::AMQPMethod::SelectOk(_) => Err(server_only()),
            },
            AMQPClass::Tx(m) => match m {
                amqp_tx::AMQPMethod::Select(_) => self.tx_select(),
                amqp_tx::AMQPMethod::Commit(_) => self.tx_commit(ctx),
                amqp_tx::AMQPMethod::Rollback(_) => self.tx_rollback(),
                amqp_tx::AMQPMethod::SelectOk(_)
                | amqp_tx::AMQPMethod::CommitOk(_)
                | amqp_tx::AMQPMethod::RollbackOk(_) => Err(server_only()),
            },
            AMQPClass::Channel(m) => match m {
                channel::AMQPMethod::Flow(f) => {
                    // RabbitMQ refuses to stop deliveries this way (use basic.qos).
                    if !f.active {
                        return Err(AmqpError::not_implemented("active=false"));
                    }
                    self.reply(AMQPClass::Channel(channel::AMQPMethod::FlowOk(
                        channel::FlowOk { active: true },
                    )));
                    Ok(())
                }
                channel::AMQPMethod::FlowOk(_) => Ok(()),
                channel::AMQPMethod::Open(_) => Err(AmqpError::connection(
                    codes::CHANNEL_ERROR,
                    "second 'channel.open' seen",
                )),
                // close / close-ok are handled by the connection.
                channel::AMQPMethod::Close(_)
                | channel::AMQPMethod::CloseOk(_)
                | channel::AMQPMethod::OpenOk(_) => Err(server_only()),
            },
            AMQPClass::Access(m) => match m {
                access::AMQPMethod::Request(_) => {
                    self.reply(AMQPClass::Access(access::AMQPMethod::RequestOk(
                        access::RequestOk {},
                    )));
                    Ok(())
                }
                access::AMQPMethod::RequestOk(_) => Err(server_only()),
            },
            AMQPClass::Connection(_) => Err(AmqpError::connection(
                codes::COMMAND_INVALID,
                "connection method on a non-zero channel",
            )),
        }
    }

    /// Handle a content header frame.
    pub fn handle_header(
        &mut self,
        ctx: &mut ConnCtx<'_>,
        header: ContentHeader,
    ) -> AmqpResult<()> {
        let Some(asm) = self.assembly.as_mut() else {
            return Err(unexpected_frame(
                "content header without a preceding basic.publish",
            ));
        };
        if asm.header.is_some() {
            return Err(unexpected_frame(
                "second content header for one basic.publish",
            ));
        }
        if header.class_id != 60 {
            return Err(unexpected_frame("content header class must be basic (60)"));
        }
        let max = ctx.broker.config.limits.max_message_size;
        if header.body_size > max {
            self.assembly = None;
            return Err(AmqpError::precondition(format!(
                "message size {} is larger than configured max size {max}",
                header.body_size
            ))
            .caused_by(60, 40));
        }
        let done = header.body_size == 0;
        asm.header = Some(header);
        if done {
            self.finish_publish(ctx)?;
        }
        Ok(())
    }

    /// Handle a content body frame.
    pub fn handle_body(&mut self, ctx: &mut ConnCtx<'_>, part: Bytes) -> AmqpResult<()> {
        let Some(asm) = self.assembly.as_mut() else {
            return Err(unexpected_frame(
                "content body without a preceding basic.publish",
            ));
        };
        let Some(header) = asm.header.as_ref() else {
            return Err(unexpected_frame("content body before its content header"));
        };
        let expected = header.body_size;
        if (asm.body.len() + part.len()) as u64 > expected {
            return Err(unexpected_frame(
                "content body larger than its declared size",
            ));
        }
        asm.body.push(part);
        if asm.body.len() as u64 == expected {
            self.finish_publish(ctx)?;
        }
        Ok(())
    }

    fn finish_publish(&mut self, ctx: &mut ConnCtx<'_>) -> AmqpResult<()> {
        let Some(Assembly {
            publish,
            header: Some(header),
            body,
        }) = self.assembly.take()
        else {
            return Ok(());
        };
        // Checked when the message is complete, as RabbitMQ does (also inside
        // a transaction: at publish, not at commit).
        ctx.check(
            crate::auth::Permission::Write,
            crate::auth::Resource::Exchange,
            publish.exchange.as_str(),
        )
        .map_err(|e| e.caused_by(60, 40))?;
        let Some((publish, header, body)) =
            self.tx_hold_publish(publish, header, body.into_bytes())
        else {
            return Ok(());
        };
        self.publish_now(ctx, publish, header, body, None)
            .map_err(|e| e.caused_by(60, 40))
    }

    pub fn reply(&self, method: AMQPClass) {
        let mut out = BytesMut::new();
        encode::method(&mut out, self.id(), &method);
        self.handle.conn.send(out.freeze());
    }

    /// Close the channel: cancel its consumers (deleting auto-delete queues
    /// they leave empty) and return unacked deliveries to their queues.
    pub fn teardown(&mut self, ctx_broker: &Broker, vhost: Option<&Arc<VHost>>) {
        self.assembly = None;
        let (consumers, unacked) = {
            let mut d = self.handle.delivery.lock();
            d.closed = true;
            if let Some(r) = d.reply_consumer.take() {
                ctx_broker.reply_channels.remove(&r.token);
            }
            (
                std::mem::take(&mut d.consumers),
                std::mem::take(&mut d.unacked),
            )
        };
        for c in consumers.into_values() {
            if c.unsubscribe() {
                if let Some(v) = vhost {
                    delete_auto_queue(v, &c.queue);
                }
            }
        }
        requeue_all(unacked.into_values().map(|u| (u.queue, u.entry)));
    }
}

/// Put entries back into their queues, one requeue call per queue.
pub(crate) fn requeue_all(entries: impl Iterator<Item = (Arc<Queue>, QueueEntry)>) {
    let mut by_queue: HashMap<*const Queue, (Arc<Queue>, Vec<QueueEntry>)> = HashMap::new();
    for (q, e) in entries {
        by_queue
            .entry(Arc::as_ptr(&q))
            .or_insert_with(|| (q.clone(), Vec::new()))
            .1
            .push(e);
    }
    for (_, (q, es)) in by_queue {
        q.requeue(es);
    }
}

/// Delete an auto-delete queue whose last consumer went away.
pub(crate) fn delete_auto_queue(vhost: &Arc<VHost>, q: &Arc<Queue>) {
    match vhost.remove_queue(q) {
        Ok(d) => notify_cancelled(&d.consumers),
        Err(e) => {
            tracing::error!(queue = %q.name, error = %e, "failed to delete auto-delete queue")
        }
    }
}

/// Tell the consumers of a deleted queue (basic.cancel, when the client supports it).
pub(crate) fn notify_cancelled(consumers: &[Arc<dyn crate::queue::Subscriber>]) {
    for c in consumers {
        c.cancelled();
    }
}

fn server_only() -> AmqpError {
    AmqpError::connection(codes::COMMAND_INVALID, "method is only sent by the server")
}
