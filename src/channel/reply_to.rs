//! Direct reply-to (RabbitMQ's `amq.rabbitmq.reply-to` pseudo-queue): an RPC
//! client consumes the pseudo-queue in no-ack mode and publishes requests with
//! `reply_to = amq.rabbitmq.reply-to`; the broker rewrites that to a name
//! routable back to the client's channel, and a reply published to that name
//! on the default exchange is delivered straight to the client's consumer,
//! without a queue.

use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::basic::{gen_properties, AMQPProperties};
use bytes::{Bytes, BytesMut};

use super::handle::ChannelHandle;
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::{encode, short};

pub const PSEUDO_QUEUE: &str = "amq.rabbitmq.reply-to";
pub const REPLY_PREFIX: &str = "amq.rabbitmq.reply-to.";

/// The channel's reply consumer: its consumer tag and routing token.
#[derive(Debug, Clone)]
pub struct ReplyConsumer {
    pub tag: String,
    pub token: String,
}

/// Whether a publish is a direct reply-to request (`reply_to` is the pseudo-queue).
pub fn is_request(props: &AMQPProperties) -> bool {
    props.reply_to().as_ref().map(|r| r.as_str()) == Some(PSEUDO_QUEUE)
}

/// Rewrite a request's `reply_to` into the channel's reply address; returns
/// the new raw property bytes.
pub fn rewrite_request(
    props: &mut AMQPProperties,
    reply: Option<&ReplyConsumer>,
) -> AmqpResult<Bytes> {
    let Some(reply) = reply else {
        return Err(AmqpError::precondition(
            "fast reply consumer does not exist",
        ));
    };
    let new = props
        .clone()
        .with_reply_to(short(&format!("{REPLY_PREFIX}{}", reply.token)));
    let raw = gen_properties(&new)(WriteContext::from(Vec::new()))
        .map(|ctx| ctx.into_inner().0)
        .map_err(|e| AmqpError::precondition(format!("cannot encode properties: {e:?}")))?;
    *props = new;
    Ok(Bytes::from(raw))
}

/// Deliver a reply straight to the requesting channel's reply consumer.
/// Returns false when that consumer is gone (the reply is unroutable).
impl crate::broker::ReplyTarget for ChannelHandle {
    fn deliver_reply(&self, routing_key: &str, raw_properties: &[u8], body: &[u8]) -> bool {
        deliver_reply(self, routing_key, raw_properties, body)
    }
}

fn deliver_reply(
    target: &ChannelHandle,
    routing_key: &str,
    raw_properties: &[u8],
    body: &[u8],
) -> bool {
    let mut d = target.delivery.lock();
    let Some(reply) = d.reply_consumer.clone() else {
        return false;
    };
    if d.closed {
        return false;
    }
    let tag = d.next_tag;
    d.next_tag += 1;
    let mut out = BytesMut::with_capacity(body.len() + raw_properties.len() + 128);
    encode::deliver_method(&mut out, target.id, &reply.tag, tag, false, "", routing_key);
    encode::content(
        &mut out,
        target.id,
        raw_properties,
        body,
        target.conn.frame_max(),
    );
    target.conn.send(out.freeze());
    true
}
