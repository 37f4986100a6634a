//! The tx class: publishes and acks on a transactional channel are held back
//! until `tx.commit` and dropped by `tx.rollback`, as RabbitMQ does. commit-ok
//! is sent once every persistent message of the transaction is on disk.

use amq_protocol::protocol::{basic as b, tx, AMQPClass};
use bytes::{Bytes, BytesMut};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use super::handle::ChannelHandle;
use super::{Channel, ConnCtx};
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::{codes, encode, ContentHeader};

/// What a transaction holds until commit.
#[derive(Debug, Default)]
pub struct TxState {
    publishes: Vec<(b::Publish, ContentHeader, Bytes)>,
    settles: Vec<Settle>,
}

#[derive(Debug)]
enum Settle {
    Ack {
        tag: u64,
        multiple: bool,
    },
    Reject {
        tag: u64,
        multiple: bool,
        requeue: bool,
    },
}

/// Counts the persistent writes of one commit; the last one sends commit-ok.
#[derive(Debug)]
pub struct TxCommit {
    remaining: AtomicUsize,
    failed: AtomicBool,
    channel: Arc<ChannelHandle>,
}

impl crate::broker::publish::WriteWaiter for TxCommit {
    fn add(&self) {
        TxCommit::add(self);
    }
    fn done(&self, ok: bool) {
        TxCommit::done(self, ok);
    }
}

impl TxCommit {
    fn new(channel: Arc<ChannelHandle>) -> Arc<Self> {
        // One count for the commit itself, released when every publish is handed on.
        Arc::new(TxCommit {
            remaining: AtomicUsize::new(1),
            failed: AtomicBool::new(false),
            channel,
        })
    }

    pub fn add(&self) {
        self.remaining.fetch_add(1, Ordering::AcqRel);
    }

    pub fn done(&self, ok: bool) {
        if !ok {
            self.failed.store(true, Ordering::Release);
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.finish();
        }
    }

    fn finish(&self) {
        if self.failed.load(Ordering::Acquire) {
            // The commit cannot be honoured: end the connection rather than
            // claim a durable commit that did not happen. The connection's
            // reader closes it the usual way (close handshake, unacked
            // deliveries back to their queues).
            tracing::error!(
                channel = self.channel.id,
                "tx.commit failed: store write failed"
            );
            self.channel.conn.fail(
                AmqpError::connection(codes::INTERNAL_ERROR, "store write failed during tx.commit")
                    .caused_by(90, 20),
            );
            return;
        }
        let mut out = BytesMut::new();
        encode::method(
            &mut out,
            self.channel.id,
            &AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
        );
        self.channel.conn.send(out.freeze());
    }
}

impl Channel {
    pub(super) fn tx_select(&mut self) -> AmqpResult<()> {
        if self.handle.confirms.lock().enabled {
            return Err(AmqpError::precondition(
                "cannot switch from confirm to tx mode",
            ));
        }
        if self.tx.is_none() {
            self.tx = Some(TxState::default());
        }
        self.reply(AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})));
        Ok(())
    }

    /// Hold a publish back if the channel is transactional; gives it back otherwise.
    pub(super) fn tx_hold_publish(
        &mut self,
        p: b::Publish,
        header: ContentHeader,
        body: Bytes,
    ) -> Option<(b::Publish, ContentHeader, Bytes)> {
        match self.tx.as_mut() {
            Some(t) => {
                t.publishes.push((p, header, body));
                None
            }
            None => Some((p, header, body)),
        }
    }

    /// Hold an ack / nack / reject back if the channel is transactional.
    pub(super) fn tx_hold_settle(
        &mut self,
        tag: u64,
        multiple: bool,
        reject: Option<bool>,
    ) -> bool {
        let Some(t) = self.tx.as_mut() else {
            return false;
        };
        t.settles.push(match reject {
            None => Settle::Ack { tag, multiple },
            Some(requeue) => Settle::Reject {
                tag,
                multiple,
                requeue,
            },
        });
        true
    }

    pub(super) fn tx_commit(&mut self, ctx: &mut ConnCtx<'_>) -> AmqpResult<()> {
        let Some(t) = self.tx.as_mut() else {
            return Err(AmqpError::precondition("channel is not transactional"));
        };
        let TxState { publishes, settles } = std::mem::take(t);
        let commit = TxCommit::new(self.handle.clone());
        for s in settles {
            match s {
                Settle::Ack { tag, multiple } => self.ack_now(tag, multiple)?,
                Settle::Reject {
                    tag,
                    multiple,
                    requeue,
                } => self.reject_now(ctx, tag, multiple, requeue)?,
            }
        }
        for (p, header, body) in publishes {
            self.publish_now(ctx, p, header, body, Some(&commit))?;
        }
        commit.done(true);
        Ok(())
    }

    pub(super) fn tx_rollback(&mut self) -> AmqpResult<()> {
        let Some(t) = self.tx.as_mut() else {
            return Err(AmqpError::precondition("channel is not transactional"));
        };
        *t = TxState::default();
        self.reply(AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})));
        Ok(())
    }
}
