//! Exchanges and routing. `route` appends the queues a message goes to; it never
//! enqueues anything itself.

pub mod dedup;
pub mod headers;
pub mod topic;

use amq_protocol::types::FieldTable;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;

use crate::queue::Queue;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
    /// The deduplication plugin's type: routes like fanout, after the
    /// exchange's cache has let the message through.
    Dedup,
}

impl ExchangeKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "direct" => Some(ExchangeKind::Direct),
            "fanout" => Some(ExchangeKind::Fanout),
            "topic" => Some(ExchangeKind::Topic),
            "headers" => Some(ExchangeKind::Headers),
            dedup::EXCHANGE_TYPE => Some(ExchangeKind::Dedup),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
            ExchangeKind::Dedup => dedup::EXCHANGE_TYPE,
        }
    }
}

/// Where a binding leads: a queue, or another exchange (exchange-to-exchange).
#[derive(Debug, Clone)]
pub enum Destination {
    Queue(Arc<Queue>),
    Exchange(Arc<Exchange>),
}

impl Destination {
    fn same(&self, other: &Destination) -> bool {
        match (self, other) {
            (Destination::Queue(a), Destination::Queue(b)) => Arc::ptr_eq(a, b),
            (Destination::Exchange(a), Destination::Exchange(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Binding {
    pub dest: Destination,
    pub routing_key: String,
    pub arguments: FieldTable,
}

#[derive(Debug, Default)]
struct Bindings {
    all: Vec<Binding>,
    /// Direct exchanges: routing key → destinations, so routing is one lookup.
    by_key: HashMap<String, Vec<Destination>>,
}

#[derive(Debug)]
pub struct Exchange {
    pub name: String,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
    /// `x-message-deduplication`: recently seen keys.
    pub dedup: Option<dedup::DedupCache>,
    bindings: RwLock<Bindings>,
    /// The `alternate-exchange` of the policy that applies, if any (the
    /// argument wins over it, as in RabbitMQ). Read only for unroutable messages.
    policy_alternate: RwLock<Option<String>>,
    /// Messages published to this exchange (`publish_in`) and those it
    /// routed to at least one queue (`publish_out`): every channel publishing
    /// here writes them, so they are sharded by thread.
    pub publish_in: crate::stats::Sharded,
    pub publish_out: crate::stats::Sharded,
}

impl Exchange {
    pub fn new(
        name: String,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Self {
        Exchange {
            name,
            kind,
            durable,
            auto_delete,
            internal,
            dedup: dedup::DedupCache::for_exchange(kind.as_str(), &arguments),
            arguments,
            bindings: RwLock::new(Bindings::default()),
            policy_alternate: RwLock::new(None),
            publish_in: Default::default(),
            publish_out: Default::default(),
        }
    }

    /// Where unroutable messages go: the `alternate-exchange` argument,
    /// else the policy's.
    pub fn alternate_exchange(&self) -> Option<String> {
        self.arguments
            .inner()
            .get("alternate-exchange")
            .and_then(crate::queue::as_text)
            .or_else(|| self.policy_alternate.read().clone())
    }

    /// Set (or clear) the alternate exchange a policy gives.
    pub fn set_policy_alternate(&self, ae: Option<String>) {
        *self.policy_alternate.write() = ae;
    }

    /// Add a binding; false if the same one exists already.
    pub fn bind(&self, b: Binding) -> bool {
        let mut bs = self.bindings.write();
        if bs
            .all
            .iter()
            .any(|x| same_binding(x, &b.dest, &b.routing_key, &b.arguments))
        {
            return false;
        }
        bs.by_key
            .entry(b.routing_key.clone())
            .or_default()
            .push(b.dest.clone());
        bs.all.push(b);
        true
    }

    /// Remove a binding; false if there was none.
    pub fn unbind(&self, dest: &Destination, routing_key: &str, arguments: &FieldTable) -> bool {
        let mut bs = self.bindings.write();
        let before = bs.all.len();
        bs.all
            .retain(|x| !same_binding(x, dest, routing_key, arguments));
        if bs.all.len() == before {
            return false;
        }
        rebuild_key(&mut bs, routing_key);
        true
    }

    /// Remove every binding leading to `dest`; returns the removed ones.
    pub fn unbind_all_to(&self, dest: &Destination) -> Vec<Binding> {
        let mut bs = self.bindings.write();
        let (gone, kept): (Vec<Binding>, Vec<Binding>) = std::mem::take(&mut bs.all)
            .into_iter()
            .partition(|b| b.dest.same(dest));
        bs.all = kept;
        for b in &gone {
            rebuild_key(&mut bs, &b.routing_key);
        }
        gone
    }

    /// Drop every binding from this exchange (it is being deleted).
    pub fn clear_bindings(&self) {
        *self.bindings.write() = Bindings::default();
    }

    /// Whether this exact binding exists.
    pub fn has_binding(
        &self,
        dest: &Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> bool {
        self.bindings
            .read()
            .all
            .iter()
            .any(|x| same_binding(x, dest, routing_key, arguments))
    }

    pub fn has_bindings(&self) -> bool {
        !self.bindings.read().all.is_empty()
    }

    pub fn bindings(&self) -> Vec<Binding> {
        self.bindings.read().all.clone()
    }

    /// Append the destinations a message with this key and headers goes to
    /// (possibly with duplicates; the caller dedups and follows exchanges).
    pub fn route(
        &self,
        routing_key: &str,
        headers: Option<&FieldTable>,
        out: &mut Vec<Destination>,
    ) {
        let bs = self.bindings.read();
        match self.kind {
            ExchangeKind::Direct => {
                if let Some(ds) = bs.by_key.get(routing_key) {
                    out.extend(ds.iter().cloned());
                }
            }
            ExchangeKind::Fanout | ExchangeKind::Dedup => {
                out.extend(bs.all.iter().map(|b| b.dest.clone()))
            }
            ExchangeKind::Topic => out.extend(
                bs.all
                    .iter()
                    .filter(|b| topic::matches(&b.routing_key, routing_key))
                    .map(|b| b.dest.clone()),
            ),
            ExchangeKind::Headers => out.extend(
                bs.all
                    .iter()
                    .filter(|b| headers::matches(&b.arguments, headers))
                    .map(|b| b.dest.clone()),
            ),
        }
    }
}

fn same_binding(
    b: &Binding,
    dest: &Destination,
    routing_key: &str,
    arguments: &FieldTable,
) -> bool {
    b.dest.same(dest) && b.routing_key == routing_key && &b.arguments == arguments
}

fn rebuild_key(bs: &mut Bindings, routing_key: &str) {
    let ds: Vec<Destination> = bs
        .all
        .iter()
        .filter(|b| b.routing_key == routing_key)
        .map(|b| b.dest.clone())
        .collect();
    if ds.is_empty() {
        bs.by_key.remove(routing_key);
    } else {
        bs.by_key.insert(routing_key.to_string(), ds);
    }
}
