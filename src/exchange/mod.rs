//! Exchanges and routing. `route` appends the queues a message goes to; it never
//! enqueues anything itself.

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
}

impl ExchangeKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "direct" => Some(ExchangeKind::Direct),
            "fanout" => Some(ExchangeKind::Fanout),
            "topic" => Some(ExchangeKind::Topic),
            "headers" => Some(ExchangeKind::Headers),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Binding {
    pub queue: Arc<Queue>,
    pub routing_key: String,
    pub arguments: FieldTable,
}

#[derive(Debug, Default)]
struct Bindings {
    all: Vec<Binding>,
    /// Direct exchanges: routing key → queues, so routing is one lookup.
    by_key: HashMap<String, Vec<Arc<Queue>>>,
}

#[derive(Debug)]
pub struct Exchange {
    pub name: String,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
    bindings: RwLock<Bindings>,
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
            arguments,
            bindings: RwLock::new(Bindings::default()),
        }
    }

    /// Add a binding; false if the same one exists already.
    pub fn bind(&self, b: Binding) -> bool {
        let mut bs = self.bindings.write();
        if bs.all.iter().any(|x| same_binding(x, &b.queue, &b.routing_key, &b.arguments)) {
            return false;
        }
        bs.by_key
            .entry(b.routing_key.clone())
            .or_default()
            .push(b.queue.clone());
        bs.all.push(b);
        true
    }

    /// Remove a binding; false if there was none.
    pub fn unbind(&self, queue: &Arc<Queue>, routing_key: &str, arguments: &FieldTable) -> bool {
        let mut bs = self.bindings.write();
        let before = bs.all.len();
        bs.all
            .retain(|x| !same_binding(x, queue, routing_key, arguments));
        if bs.all.len() == before {
            return false;
        }
        rebuild_key(&mut bs, routing_key);
        true
    }

    /// Remove every binding to `queue`; returns the removed ones.
    pub fn unbind_queue(&self, queue: &Arc<Queue>) -> Vec<Binding> {
        let mut bs = self.bindings.write();
        let (gone, kept): (Vec<Binding>, Vec<Binding>) = std::mem::take(&mut bs.all)
            .into_iter()
            .partition(|b| Arc::ptr_eq(&b.queue, queue));
        bs.all = kept;
        for b in &gone {
            rebuild_key(&mut bs, &b.routing_key);
        }
        gone
    }

    pub fn has_bindings(&self) -> bool {
        !self.bindings.read().all.is_empty()
    }

    pub fn bindings(&self) -> Vec<Binding> {
        self.bindings.read().all.clone()
    }

    /// Append the queues a message with this key and headers goes to
    /// (possibly with duplicates; the caller dedups).
    pub fn route(&self, routing_key: &str, headers: Option<&FieldTable>, out: &mut Vec<Arc<Queue>>) {
        let bs = self.bindings.read();
        match self.kind {
            ExchangeKind::Direct => {
                if let Some(qs) = bs.by_key.get(routing_key) {
                    out.extend(qs.iter().cloned());
                }
            }
            ExchangeKind::Fanout => out.extend(bs.all.iter().map(|b| b.queue.clone())),
            ExchangeKind::Topic => out.extend(
                bs.all
                    .iter()
                    .filter(|b| topic::matches(&b.routing_key, routing_key))
                    .map(|b| b.queue.clone()),
            ),
            ExchangeKind::Headers => out.extend(
                bs.all
                    .iter()
                    .filter(|b| headers::matches(&b.arguments, headers))
                    .map(|b| b.queue.clone()),
            ),
        }
    }
}

fn same_binding(b: &Binding, queue: &Arc<Queue>, routing_key: &str, arguments: &FieldTable) -> bool {
    Arc::ptr_eq(&b.queue, queue) && b.routing_key == routing_key && &b.arguments == arguments
}

fn rebuild_key(bs: &mut Bindings, routing_key: &str) {
    let qs: Vec<Arc<Queue>> = bs
        .all
        .iter()
        .filter(|b| b.routing_key == routing_key)
        .map(|b| b.queue.clone())
        .collect();
    if qs.is_empty() {
        bs.by_key.remove(routing_key);
    } else {
        bs.by_key.insert(routing_key.to_string(), qs);
    }
}
