//! The exchange and queue classes on a channel: declare, delete, bind, unbind,
//! purge. The checks themselves live in `broker::vhost`.

use amq_protocol::protocol::{exchange, queue, AMQPClass};

use super::{notify_cancelled, Channel, ConnCtx};
use crate::broker::vhost::{ExchangeSpec, QueueSpec};
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::short;

impl Channel {
    pub(super) fn exchange_declare(
        &mut self,
        ctx: &mut ConnCtx<'_>,
        m: exchange::Declare,
    ) -> AmqpResult<()> {
        ctx.vhost.declare_exchange(ExchangeSpec {
            name: m.exchange.as_str().to_string(),
            kind: m.kind.as_str().to_string(),
            passive: m.passive,
            durable: m.durable,
            auto_delete: m.auto_delete,
            internal: m.internal,
            arguments: m.arguments,
        })?;
        if !m.nowait {
            self.reply(AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(
                exchange::DeclareOk {},
            )));
        }
        Ok(())
    }

    pub(super) fn exchange_delete(
        &mut self,
        ctx: &mut ConnCtx<'_>,
        m: exchange::Delete,
    ) -> AmqpResult<()> {
        ctx.vhost
            .delete_exchange(m.exchange.as_str(), m.if_unused)?;
        if !m.nowait {
            self.reply(AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(
                exchange::DeleteOk {},
            )));
        }
        Ok(())
    }

    pub(super) fn exchange_bind(
        &mut self,
        ctx: &mut ConnCtx<'_>,
        m: exchange::Bind,
    ) -> AmqpResult<()> {
        ctx.vhost.bind(
            m.destination.as_str(),
            true,
            m.source.as_str(),
            m.routing_key.as_str(),
            m.arguments,
            ctx.conn.id,
        )?;
        if !m.nowait {
            self.reply(AMQPClass::Exchange(exchange::AMQPMethod::BindOk(
                exchange::BindOk {},
            )));
        }
        Ok(())
    }

    pub(super) fn exchange_unbind(
        &mut self,
        ctx: &mut ConnCtx<'_>,
        m: exchange::Unbind,
    ) -> AmqpResult<()> {
        ctx.vhost.unbind(
            m.destination.as_str(),
            true,
            m.source.as_str(),
            m.routing_key.as_str(),
            m.arguments,
            ctx.conn.id,
        )?;
        if !m.nowait {
            self.reply(AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(
                exchange::UnbindOk {},
            )));
        }
        Ok(())
    }

    pub(super) fn queue_declare(
        &mut self,
        ctx: &mut ConnCtx<'_>,
        m: queue::Declare,
    ) -> AmqpResult<()> {
        let name = if m.passive {
            self.queue_name(m.queue.as_str())?
        } else {
            m.queue.as_str().to_string()
        };
        let max = ctx.broker.config.limits.max_queues;
        if max > 0
            && !m.passive
            && (m.queue.as_str().is_empty() || !ctx.vhost.queues.contains_key(m.queue.as_str()))
            && ctx.vhost.queues.len() >= max
        {
            return Err(AmqpError::precondition(format!(
                "cannot declare queue '{}': queue limit in vhost '{}' ({max}) is reached",
                m.queue, ctx.vhost.name
            )));
        }
        let (q, messages, consumers) = ctx.vhost.declare_queue(
            QueueSpec {
                name,
                passive: m.passive,
                durable: m.durable,
                exclusive: m.exclusive,
                auto_delete: m.auto_delete,
                arguments: m.arguments,
            },
            ctx.conn.id,
        )?;
        if q.exclusive_owner == Some(ctx.conn.id)
            && !ctx
                .exclusive_queues
                .iter()
                .any(|e| std::sync::Arc::ptr_eq(e, &q))
        {
            ctx.exclusive_queues.push(q.clone());
        }
        self.last_queue = Some(q.name.clone());
        if !m.nowait {
            self.reply(AMQPClass::Queue(queue::AMQPMethod::DeclareOk(
                queue::DeclareOk {
                    queue: short(&q.name),
                    message_count: messages,
                    consumer_count: consumers,
                },
            )));
        }
        Ok(())
    }

    pub(super) fn queue_bind(&mut self, ctx: &mut ConnCtx<'_>, m: queue::Bind) -> AmqpResult<()> {
        let name = self.queue_name(m.queue.as_str())?;
        let routing_key = if m.routing_key.as_str().is_empty() && m.queue.as_str().is_empty() {
            // The spec: an empty key with an empty queue name binds with the
            // queue's (server-generated) name.
            name.clone()
        } else {
            m.routing_key.as_str().to_string()
        };
        ctx.vhost.bind(
            &name,
            false,
            m.exchange.as_str(),
            &routing_key,
            m.arguments,
            ctx.conn.id,
        )?;
        if !m.nowait {
            self.reply(AMQPClass::Queue(queue::AMQPMethod::BindOk(
                queue::BindOk {},
            )));
        }
        Ok(())
    }

    pub(super) fn queue_unbind(
        &mut self,
        ctx: &mut ConnCtx<'_>,
        m: queue::Unbind,
    ) -> AmqpResult<()> {
        let name = self.queue_name(m.queue.as_str())?;
        ctx.vhost.unbind(
            &name,
            false,
            m.exchange.as_str(),
            m.routing_key.as_str(),
            m.arguments,
            ctx.conn.id,
        )?;
        self.reply(AMQPClass::Queue(queue::AMQPMethod::UnbindOk(
            queue::UnbindOk {},
        )));
        Ok(())
    }

    pub(super) fn queue_purge(&mut self, ctx: &mut ConnCtx<'_>, m: queue::Purge) -> AmqpResult<()> {
        let name = self.queue_name(m.queue.as_str())?;
        let q = ctx.vhost.queue(&name, ctx.conn.id)?;
        let count = q.purge();
        if !m.nowait {
            self.reply(AMQPClass::Queue(queue::AMQPMethod::PurgeOk(
                queue::PurgeOk {
                    message_count: count,
                },
            )));
        }
        Ok(())
    }

    pub(super) fn queue_delete(
        &mut self,
        ctx: &mut ConnCtx<'_>,
        m: queue::Delete,
    ) -> AmqpResult<()> {
        let name = self.queue_name(m.queue.as_str())?;
        let q = match ctx.vhost.queue(&name, ctx.conn.id) {
            Ok(q) => q,
            // Deleting a queue that does not exist succeeds, as in RabbitMQ.
            Err(AmqpError::Channel { code: 404, .. }) => {
                if !m.nowait {
                    self.reply(AMQPClass::Queue(queue::AMQPMethod::DeleteOk(
                        queue::DeleteOk { message_count: 0 },
                    )));
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if m.if_unused && q.consumer_count() > 0 {
            return Err(AmqpError::precondition(format!(
                "queue '{name}' in vhost '{}' in use",
                ctx.vhost.name
            )));
        }
        if m.if_empty && q.message_count() > 0 {
            return Err(AmqpError::precondition(format!(
                "queue '{name}' in vhost '{}' is not empty",
                ctx.vhost.name
            )));
        }
        let deleted = ctx.vhost.remove_queue(&q)?;
        ctx.exclusive_queues
            .retain(|e| !std::sync::Arc::ptr_eq(e, &q));
        notify_cancelled(&deleted.consumers);
        if !m.nowait {
            self.reply(AMQPClass::Queue(queue::AMQPMethod::DeleteOk(
                queue::DeleteOk {
                    message_count: deleted.messages,
                },
            )));
        }
        Ok(())
    }
}
