//! What a queue needs from whoever consumes from it, so the queue never
//! names a channel: a channel's basic.consume implements `Subscriber`, and
//! tests can offer a queue a plain fake.
//!
//! The queue decides *what* is delivered (its head, in order, after expiry,
//! only once the store has it) and to *whom* (priority groups, round-robin,
//! single active consumer); the subscriber decides *whether* it can take a
//! delivery now (credit, flow, write backpressure) and how it reaches the
//! client. Entries change hands by value: the queue's ready list stays private.

use std::sync::Arc;

use super::{Queue, QueueEntry};
use crate::message::Message;

/// Pops the queue's head for a subscriber that takes it.
pub type Take<'a> = dyn FnMut() -> Option<(QueueEntry, Arc<Message>)> + 'a;

pub trait Subscriber: Send + Sync + std::fmt::Debug {
    /// Higher gets messages first (`x-priority`).
    fn priority(&self) -> i64;
    /// Holds the queue alone (basic.consume exclusive).
    fn exclusive(&self) -> bool;
    /// Takes deliveries without acknowledgement (for the queue's counts).
    fn no_ack(&self) -> bool {
        false
    }
    /// The queue offers its head message (in memory, deliverable). If the
    /// subscriber can take a delivery now it calls `take` (exactly once),
    /// delivers what it got and returns true; otherwise false, leaving the
    /// head where it is. Called with the queue's lock held: it may take its
    /// own locks (the queue's lock comes first), never the queue's.
    fn offer(self: Arc<Self>, queue: &Arc<Queue>, take: &mut Take<'_>) -> bool;
    /// The queue was deleted under the subscription (basic.cancel to the client).
    fn cancelled(&self);
    /// What the management API shows of it.
    fn info(&self) -> SubscriberInfo;
}

/// A subscription as the management API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberInfo {
    pub tag: String,
    pub ack_required: bool,
    pub prefetch: u16,
    pub exclusive: bool,
    pub priority: i64,
    /// Deliveries not yet acknowledged.
    pub unacked: u32,
    /// The connection (broker-wide id) and channel number it consumes on.
    pub connection: u64,
    pub channel: u16,
}

/// Whether two subscriber handles are the same subscription.
pub fn same(a: &Arc<dyn Subscriber>, b: &Arc<dyn Subscriber>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}
