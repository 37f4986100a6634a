//! The exchange and queue classes on a channel: declare, delete, bind, unbind,
//! purge. The checks themselves live in `broker::vhost`; the permission
//! checks (`ConnCtx::check`) are made here, in the order RabbitMQ makes them.

use amq_protocol::protocol::{exchange, queue, AMQPClass};

use super::{notify_cancelled, Channel, ConnCtx};
use crate::auth::{Permission, Resource};
use crate::broker::vhost::{is_predeclared, random_name, ExchangeSpec, QueueSpec};
use crate::cluster::definitions as cluster;
use crate::error::{AmqpError, AmqpResult};
use crate::exchange::ExchangeKind;
use crate::protocol::short;

impl Channel {
    pub(super) fn exchange_declare(
        &mut self,
        ctx: &mut ConnCtx<'_>,
        m: exchange::Declare,
    ) -> AmqpResult<()> {
        let name = m.exchange.as_str();
        // Passive declares need no permission. An unknown type and the default
        // exchange are refused by the vhost before any permission is looked at.
        if !m.passive && !name.is_empty() && ExchangeKind::parse(m.kind.as_str()).is_some() {
            ctx.check(Permission::Configure, Resource::Exchange, name)?;
            if !ctx.vhost.exchanges.contains_key(name) {
                // Naming an alternate exchange lets messages flow from this one
                // into it: read here, write there.
                if let Some(ae) = m
                    .arguments
                    .inner()
                    .get("alternate-exchange")
                    .and_then(crate::queue::as_text)
                {
                    ctx.check(Permission::Read, Resource::Exchange, name)?;
                    ctx.check(Permission::Write, Resource::Exchange, &ae)?;
                }
            }
        }
        cluster::declare_exchange(
            ctx.broker,
            ctx.vhost,
            ExchangeSpec {
                name: m.exchange.as_str().to_string(),
                kind: m.kind.as_str().to_string(),
                passive: m.passive,
                durable: m.durable,
                auto_delete: m.auto_delete,
                internal: m.internal,
                arguments: m.arguments,
            },
        )?;
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
        // The default and predeclared exchanges are refused by the vhost first.
        if !m.exchange.as_str().is_empty() && !is_predeclared(m.exchange.as_str()) {
            ctx.check(
                Permission::Configure,
                Resource::Exchange,
                m.exchange.as_str(),
            )?;
        }
        cluster::delete_exchange(ctx.broker, ctx.vhost, m.exchange.as_str(), m.if_unused)?;
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
        binding_access(
            ctx,
            Resource::Exchange,
            m.destination.as_str(),
            m.source.as_str(),
        )?;
        cluster::bind(
            ctx.broker,
            ctx.vhost,
            false,
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
        binding_access(
            ctx,
            Resource::Exchange,
            m.destination.as_str(),
            m.source.as_str(),
        )?;
        cluster::bind(
            ctx.broker,
            ctx.vhost,
            true,
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
        let server_named = !m.passive && m.queue.as_str().is_empty();
        let name = if m.passive {
            self.queue_name(m.queue.as_str())?
        } else if server_named {
            // Named here so that the permission check sees the real name, as
            // RabbitMQ checks amq.gen-* names too.
            random_name("amq.gen-")
        } else {
            m.queue.as_str().to_string()
        };
        if !m.passive {
            // RabbitMQ refuses the reserved prefix before it looks at
            // permissions (and for existing queues too, amq.gen-* included).
            if !server_named && name.starts_with("amq.") {
                return Err(AmqpError::access_refused(format!(
                    "queue name '{name}' contains reserved prefix 'amq.*'"
                )));
            }
            ctx.check(Permission::Configure, Resource::Queue, &name)?;
        }
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
        if !m.passive && !ctx.vhost.queues.contains_key(&name) {
            // A dead-letter exchange lets messages flow from this queue into
            // it: read here, write there (checked for new queues only).
            if let Some(dlx) = m
                .arguments
                .inner()
                .get("x-dead-letter-exchange")
                .and_then(crate::queue::as_text)
            {
                ctx.check(Permission::Read, Resource::Queue, &name)?;
                ctx.check(Permission::Write, Resource::Exchange, &dlx)?;
            }
        }
        let mut spec = QueueSpec {
            name,
            server_named,
            passive: m.passive,
            durable: m.durable,
            exclusive: m.exclusive,
            auto_delete: m.auto_delete,
            arguments: m.arguments,
        };
        if let Some(replicated) = cluster::declare_queue(ctx.broker, ctx.vhost, &spec) {
            // Applied here too by now: answer with the queue as it stands.
            replicated?;
            spec.passive = true;
        }
        let (q, messages, consumers) = ctx.vhost.declare_queue(spec, ctx.conn.id)?;
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
        binding_access(ctx, Resource::Queue, &name, m.exchange.as_str())?;
        let routing_key = if m.routing_key.as_str().is_empty() && m.queue.as_str().is_empty() {
            // The spec: an empty key with an empty queue name binds with the
            // queue's (server-generated) name.
            name.clone()
        } else {
            m.routing_key.as_str().to_string()
        };
        cluster::bind(
            ctx.broker,
            ctx.vhost,
            false,
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
        binding_access(ctx, Resource::Queue, &name, m.exchange.as_str())?;
        cluster::bind(
            ctx.broker,
            ctx.vhost,
            true,
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
        ctx.check(Permission::Read, Resource::Queue, &name)?;
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
        ctx.check(Permission::Configure, Resource::Queue, &name)?;
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
        let count = q.message_count();
        if let Some(replicated) =
            cluster::delete_queue(ctx.broker, ctx.vhost, &name, m.if_unused, m.if_empty)
        {
            replicated?;
            ctx.exclusive_queues
                .retain(|e| !std::sync::Arc::ptr_eq(e, &q));
            if !m.nowait {
                self.reply(AMQPClass::Queue(queue::AMQPMethod::DeleteOk(
                    queue::DeleteOk {
                        message_count: count,
                    },
                )));
            }
            return Ok(());
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

/// queue.bind / exchange.bind and their unbinds: write on the destination,
/// read on the source exchange. The default exchange is refused by the vhost
/// (before RabbitMQ would look at read permission on it).
fn binding_access(
    ctx: &ConnCtx<'_>,
    dest_kind: Resource,
    dest: &str,
    source: &str,
) -> AmqpResult<()> {
    ctx.check(Permission::Write, dest_kind, dest)?;
    let default_dest = dest_kind == Resource::Exchange && dest.is_empty();
    if !source.is_empty() && !default_dest {
        ctx.check(Permission::Read, Resource::Exchange, source)?;
    }
    Ok(())
}
