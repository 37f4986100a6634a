//! A virtual host: its exchanges, queues and bindings, and the declare / delete /
//! bind operations with RabbitMQ's checks and reply codes. Durable changes are
//! written to the store before the operation is answered.

use amq_protocol::types::FieldTable;
use dashmap::DashMap;
use std::sync::Arc;

use super::arguments::{inequivalent, validate_queue_arguments};
use crate::error::{AmqpError, AmqpResult};
use crate::exchange::{Binding, Destination, Exchange, ExchangeKind};
use crate::protocol::codes;
use crate::queue::Queue;
use crate::store::{blocking, BindingDef, ExchangeDef, QueueDef, Store, StoreError};

/// Exchanges every vhost has.
const PREDECLARED: &[(&str, ExchangeKind)] = &[
    ("", ExchangeKind::Direct),
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
];

/// Queue arguments compared on redeclare (RabbitMQ ignores the others).
const EQUIVALENT_QUEUE_ARGS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-queue-type",
    "x-single-active-consumer",
    "x-queue-mode",
    "x-queue-master-locator",
];

#[derive(Debug)]
pub struct VHost {
    pub name: String,
    pub exchanges: DashMap<String, Arc<Exchange>>,
    pub queues: DashMap<String, Arc<Queue>>,
    store: Arc<dyn Store>,
    /// Serializes the creating declares of this vhost, so the synced store
    /// write of a durable one happens outside the maps' shard locks (which
    /// every publish's lookups take) while two declares of one name still
    /// cannot both create it.
    declares: parking_lot::Mutex<()>,
    /// Policies and operator policies (`broker::policy`).
    pub policies: super::policy::Policies,
    /// Queues declared, created and deleted here (Prometheus' churn).
    pub churn: super::stats::QueueChurn,
}

/// Parameters of queue.declare.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    pub name: String,
    /// The client left the name empty and `name` was generated (amq.gen-*).
    pub server_named: bool,
    pub passive: bool,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

/// Parameters of exchange.declare.
#[derive(Debug, Clone)]
pub struct ExchangeSpec {
    pub name: String,
    pub kind: String,
    pub passive: bool,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

fn store_failed(e: StoreError) -> AmqpError {
    tracing::error!(error = %e, "store write failed");
    AmqpError::connection(codes::INTERNAL_ERROR, format!("store write failed: {e}"))
}

/// One of the amq.* exchanges every vhost has (they cannot be deleted).
pub fn is_predeclared(name: &str) -> bool {
    name.starts_with("amq.") && PREDECLARED.iter().any(|(n, _)| *n == name)
}

pub fn random_name(prefix: &str) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    let suffix: String = (0..22)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{suffix}")
}

impl VHost {
    pub fn new(name: String, store: Arc<dyn Store>) -> Self {
        let exchanges = DashMap::new();
        for (xname, kind) in PREDECLARED {
            exchanges.insert(
                xname.to_string(),
                Arc::new(Exchange::new(
                    xname.to_string(),
                    *kind,
                    true,
                    false,
                    false,
                    FieldTable::default(),
                )),
            );
        }
        VHost {
            name,
            exchanges,
            queues: DashMap::new(),
            store,
            declares: parking_lot::Mutex::new(()),
            policies: Default::default(),
            churn: Default::default(),
        }
    }

    pub fn exchange(&self, name: &str) -> AmqpResult<Arc<Exchange>> {
        self.exchanges
            .get(name)
            .map(|x| x.clone())
            .ok_or_else(|| AmqpError::not_found("exchange", name, &self.name))
    }

    /// A queue this connection may use: 404 if missing, 405 if another
    /// connection holds it exclusively.
    pub fn queue(&self, name: &str, conn_id: u64) -> AmqpResult<Arc<Queue>> {
        let q = self
            .queues
            .get(name)
            .map(|q| q.clone())
            .ok_or_else(|| AmqpError::not_found("queue", name, &self.name))?;
        self.check_exclusive(&q, conn_id)?;
        Ok(q)
    }

    fn check_exclusive(&self, q: &Queue, conn_id: u64) -> AmqpResult<()> {
        match q.exclusive_owner {
            Some(owner) if owner != conn_id => Err(AmqpError::channel(
                codes::RESOURCE_LOCKED,
                format!(
                    "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
                    q.name, self.name
                ),
            )),
            _ => Ok(()),
        }
    }

    fn default_exchange_refused(&self) -> AmqpError {
        AmqpError::access_refused("operation not permitted on the default exchange")
    }

    // ---- exchanges ----

    pub fn declare_exchange(&self, spec: ExchangeSpec) -> AmqpResult<()> {
        if spec.passive {
            // RabbitMQ refuses even a passive declare of the default exchange.
            if spec.name.is_empty() {
                return Err(self.default_exchange_refused());
            }
            self.exchange(&spec.name)?;
            return Ok(());
        }
        let kind = ExchangeKind::parse(&spec.kind).ok_or_else(|| {
            AmqpError::connection(
                codes::COMMAND_INVALID,
                format!("unknown exchange type '{}'", spec.kind),
            )
        })?;
        if spec.name.is_empty() {
            return Err(self.default_exchange_refused());
        }
        let serial = self.declares.lock();
        let found = self.exchanges.get(&spec.name).map(|x| x.clone());
        let existing = match found {
            Some(x) => x,
            None => {
                if spec.name.starts_with("amq.") {
                    return Err(AmqpError::access_refused(format!(
                        "exchange name '{}' contains reserved prefix 'amq.*'",
                        spec.name
                    )));
                }
                if kind == ExchangeKind::Dedup {
                    crate::exchange::dedup::validate_plugin_arguments(&spec.arguments)
                        .map_err(AmqpError::precondition)?;
                }
                if spec.durable {
                    let def = ExchangeDef {
                        vhost: self.name.clone(),
                        name: spec.name.clone(),
                        kind: kind.as_str().to_string(),
                        durable: true,
                        auto_delete: spec.auto_delete,
                        internal: spec.internal,
                        arguments: spec.arguments.clone(),
                    };
                    blocking(|| self.store.put_exchange(&def)).map_err(store_failed)?;
                }
                let x = Arc::new(Exchange::new(
                    spec.name.clone(),
                    kind,
                    spec.durable,
                    spec.auto_delete,
                    spec.internal,
                    spec.arguments,
                ));
                self.policies.apply_to_exchange(&x);
                self.exchanges.insert(spec.name, x.clone());
                self.policies.apply_to_exchange(&x);
                return Ok(());
            }
        };
        drop(serial);
        let x = &existing;
        let mismatch = |field: &str, got: &str, have: &str| {
            AmqpError::precondition(format!(
                "inequivalent arg '{field}' for exchange '{}' in vhost '{}': received {got} but current is {have}",
                x.name, self.name
            ))
        };
        if x.kind != kind {
            return Err(mismatch("type", kind.as_str(), x.kind.as_str()));
        }
        if let Some((k, got, have)) = inequivalent(
            &[
                ("durable", spec.durable, x.durable),
                ("auto_delete", spec.auto_delete, x.auto_delete),
                ("internal", spec.internal, x.internal),
            ],
            &spec.arguments,
            &x.arguments,
            &["alternate-exchange"],
        ) {
            return Err(mismatch(&k, &got, &have));
        }
        Ok(())
    }

    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> AmqpResult<()> {
        if name.is_empty() {
            return Err(self.default_exchange_refused());
        }
        // RabbitMQ refuses any `amq.` name, declared or not.
        if name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "deletion of system exchange '{name}' in vhost '{}' not allowed",
                self.name
            )));
        }
        let Some(x) = self.exchanges.get(name).map(|x| x.clone()) else {
            return Ok(());
        };
        if if_unused && x.has_bindings() {
            return Err(AmqpError::precondition(format!(
                "exchange '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        self.remove_exchange(&x)
    }

    fn remove_exchange(&self, x: &Arc<Exchange>) -> AmqpResult<()> {
        if x.durable {
            blocking(|| self.store.delete_exchange(&self.name, &x.name)).map_err(store_failed)?;
        }
        self.exchanges.remove_if(&x.name, |_, v| Arc::ptr_eq(v, x));
        // Its own bindings go with it, as in the store. A binding to itself
        // (legal, as in RabbitMQ) would otherwise keep the deleted exchange,
        // and everything it binds to, alive forever (found by fuzzing).
        x.clear_bindings();
        self.unbind_everywhere(&Destination::Exchange(x.clone()))
    }

    /// Remove every binding leading to `dest`, deleting auto-delete sources
    /// left without bindings.
    fn unbind_everywhere(&self, dest: &Destination) -> AmqpResult<()> {
        let exchanges: Vec<Arc<Exchange>> = self.exchanges.iter().map(|x| x.clone()).collect();
        for src in exchanges {
            if !src.unbind_all_to(dest).is_empty() && src.auto_delete && !src.has_bindings() {
                self.remove_exchange(&src)?;
            }
        }
        Ok(())
    }

    // ---- queues ----

    /// queue.declare; returns the queue with its message and consumer counts.
    pub fn declare_queue(
        &self,
        spec: QueueSpec,
        conn_id: u64,
    ) -> AmqpResult<(Arc<Queue>, u32, u32)> {
        self.churn.declared.add_shared(1);
        if spec.passive {
            let q = self.queue(&spec.name, conn_id)?;
            q.touch();
            let (m, c) = (q.message_count(), q.consumer_count());
            return Ok((q, m, c));
        }
        validate_queue_arguments(&spec.name, &self.name, &spec.arguments)?;
        if super::queue_type::is_quorum(&spec, &self.name)? {
            super::queue_type::check_quorum(&spec, &spec.name, &self.name)?;
        }
        let name = if spec.name.is_empty() {
            random_name("amq.gen-")
        } else {
            spec.name.clone()
        };
        let server_named = spec.server_named || spec.name.is_empty();
        let serial = self.declares.lock();
        let found = self.queues.get(&name).map(|q| q.clone());
        match found {
            Some(q) => {
                drop(serial);
                self.check_exclusive(&q, conn_id)?;
                self.check_queue_equivalence(&q, &spec)?;
                q.touch();
                let (m, c) = (q.message_count(), q.consumer_count());
                Ok((q, m, c))
            }
            None => {
                if name.starts_with("amq.") && !server_named {
                    return Err(AmqpError::access_refused(format!(
                        "queue name '{name}' contains reserved prefix 'amq.*'"
                    )));
                }
                // Exclusive queues die with their connection: never stored.
                let durable = spec.durable && !spec.exclusive;
                if durable {
                    let def = QueueDef {
                        vhost: self.name.clone(),
                        name: name.clone(),
                        auto_delete: spec.auto_delete,
                        arguments: spec.arguments.clone(),
                    };
                    blocking(|| self.store.put_queue(&def)).map_err(store_failed)?;
                }
                let q = Arc::new(Queue::new(
                    name,
                    self.name.clone(),
                    spec.durable,
                    spec.exclusive.then_some(conn_id),
                    spec.auto_delete,
                    spec.arguments,
                    self.store.clone(),
                ));
                self.policies.apply_to_queue(&q);
                self.queues.insert(q.name.clone(), q.clone());
                // Again: a policy changed between the two applies re-applied
                // to a snapshot of the queues that may have missed this one.
                self.policies.apply_to_queue(&q);
                self.churn.created.add_shared(1);
                Ok((q, 0, 0))
            }
        }
    }

    fn check_queue_equivalence(&self, q: &Queue, spec: &QueueSpec) -> AmqpResult<()> {
        let mismatch = |field: &str, got: &str, have: &str| {
            AmqpError::precondition(format!(
                "inequivalent arg '{field}' for queue '{}' in vhost '{}': received {got} but current is {have}",
                q.name, self.name
            ))
        };
        if let Some((k, got, have)) = inequivalent(
            &[
                ("durable", spec.durable, q.durable),
                ("auto_delete", spec.auto_delete, q.auto_delete),
            ],
            &spec.arguments,
            &q.arguments,
            EQUIVALENT_QUEUE_ARGS,
        ) {
            return Err(mismatch(&k, &got, &have));
        }
        Ok(())
    }

    /// Remove a queue with its bindings; returns its consumers (to be told) and
    /// how many messages it held.
    pub fn remove_queue(&self, q: &Arc<Queue>) -> AmqpResult<crate::queue::Deleted> {
        // In memory first: from here on, acks of its deliveries leave the store
        // alone, so the store's own cleanup is the only one.
        let deleted = q.delete();
        if self
            .queues
            .remove_if(&q.name, |_, v| Arc::ptr_eq(v, q))
            .is_some()
        {
            self.churn.deleted.add_shared(1);
        }
        self.unbind_everywhere(&Destination::Queue(q.clone()))?;
        if q.durable && q.exclusive_owner.is_none() {
            let key = q.key();
            blocking(|| self.store.delete_queue(&key)).map_err(store_failed)?;
        }
        Ok(deleted)
    }

    // ---- bindings ----

    /// Resolve a binding's ends: (source, destination, destination is durable).
    fn binding_ends(
        &self,
        source: &str,
        dest: &str,
        to_exchange: bool,
        conn_id: u64,
    ) -> AmqpResult<(Arc<Exchange>, Destination, bool)> {
        if source.is_empty() || (to_exchange && dest.is_empty()) {
            return Err(self.default_exchange_refused());
        }
        let (d, durable) = if to_exchange {
            let x = self.exchange(dest)?;
            let durable = x.durable;
            (Destination::Exchange(x), durable)
        } else {
            let q = self.queue(dest, conn_id)?;
            let durable = q.durable && q.exclusive_owner.is_none();
            (Destination::Queue(q), durable)
        };
        let src = self.exchange(source)?;
        Ok((src, d, durable))
    }

    /// queue.bind (`to_exchange` false) or exchange.bind (true).
    pub fn bind(
        &self,
        dest: &str,
        to_exchange: bool,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
        conn_id: u64,
    ) -> AmqpResult<()> {
        let (src, d, dest_durable) = self.binding_ends(source, dest, to_exchange, conn_id)?;
        let def = BindingDef {
            vhost: self.name.clone(),
            exchange: source.to_string(),
            destination: dest.to_string(),
            to_exchange,
            routing_key: routing_key.to_string(),
            arguments: arguments.clone(),
        };
        let added = src.bind(Binding {
            dest: d.clone(),
            routing_key: routing_key.to_string(),
            arguments,
        });
        if added && src.durable && dest_durable {
            if let Err(e) = blocking(|| self.store.put_binding(&def)) {
                src.unbind(&d, &def.routing_key, &def.arguments);
                return Err(store_failed(e));
            }
        }
        Ok(())
    }

    pub fn unbind(
        &self,
        dest: &str,
        to_exchange: bool,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
        conn_id: u64,
    ) -> AmqpResult<()> {
        if source.is_empty() || (to_exchange && dest.is_empty()) {
            return Err(self.default_exchange_refused());
        }
        // RabbitMQ 3.x: unbinding from or to an exchange or queue that does not
        // exist (any more, e.g. auto-deleted) answers unbind-ok, as does a
        // binding that does not exist. The exclusive-queue check applies only
        // to a binding that is there to remove.
        let Some(src) = self.exchanges.get(source).map(|x| x.clone()) else {
            return Ok(());
        };
        let (d, dest_durable) = if to_exchange {
            let Some(x) = self.exchanges.get(dest).map(|x| x.clone()) else {
                return Ok(());
            };
            let durable = x.durable;
            (Destination::Exchange(x), durable)
        } else {
            let Some(q) = self.queues.get(dest).map(|q| q.clone()) else {
                return Ok(());
            };
            let durable = q.durable && q.exclusive_owner.is_none();
            (Destination::Queue(q), durable)
        };
        if !src.has_binding(&d, routing_key, &arguments) {
            return Ok(());
        }
        if let Destination::Queue(q) = &d {
            self.check_exclusive(q, conn_id)?;
        }
        if src.unbind(&d, routing_key, &arguments) {
            if src.durable && dest_durable {
                let def = BindingDef {
                    vhost: self.name.clone(),
                    exchange: source.to_string(),
                    destination: dest.to_string(),
                    to_exchange,
                    routing_key: routing_key.to_string(),
                    arguments,
                };
                blocking(|| self.store.delete_binding(&def)).map_err(store_failed)?;
            }
            if src.auto_delete && !src.has_bindings() {
                self.remove_exchange(&src)?;
            }
        }
        Ok(())
    }

    /// Route through `x`; when nothing matches, through its alternate exchange
    /// (and that one's, never looping), as RabbitMQ does.
    pub fn route_with_alternates(
        &self,
        x: &Arc<Exchange>,
        routing_key: &str,
        headers: Option<&FieldTable>,
    ) -> Vec<Arc<Queue>> {
        let mut x = x.clone();
        let mut seen: Vec<String> = Vec::new();
        loop {
            let queues = self.route(&x, routing_key, headers);
            if !queues.is_empty() {
                return queues;
            }
            let Some(ae) = x.alternate_exchange() else {
                return queues;
            };
            if seen.contains(&ae) || ae == x.name {
                return queues;
            }
            let Some(next) = self.exchanges.get(&ae).map(|e| e.clone()) else {
                return queues;
            };
            seen.push(x.name.clone());
            x = next;
        }
    }

    /// The queues a message goes to (deduplicated), following exchange-to-
    /// exchange bindings without looping. The default exchange routes to the
    /// queue named by the routing key.
    pub fn route(
        &self,
        x: &Arc<Exchange>,
        routing_key: &str,
        headers: Option<&FieldTable>,
    ) -> Vec<Arc<Queue>> {
        let mut queues = Vec::new();
        if x.name.is_empty() {
            if let Some(q) = self.queues.get(routing_key) {
                queues.push(q.clone());
            }
            return queues;
        }
        let mut dests = Vec::new();
        x.route(routing_key, headers, &mut dests);
        let mut seen: Vec<*const Exchange> = vec![Arc::as_ptr(x)];
        while let Some(d) = dests.pop() {
            match d {
                Destination::Queue(q) => queues.push(q),
                Destination::Exchange(next) => {
                    if !seen.contains(&Arc::as_ptr(&next)) {
                        seen.push(Arc::as_ptr(&next));
                        next.route(routing_key, headers, &mut dests);
                    }
                }
            }
        }
        if queues.len() > 1 {
            queues.sort_by_key(|q| Arc::as_ptr(q) as usize);
            queues.dedup_by(|a, b| Arc::ptr_eq(a, b));
        }
        queues
    }

    // ---- recovery ----

    pub fn restore_exchange(&self, d: ExchangeDef) {
        let Some(kind) = ExchangeKind::parse(&d.kind) else {
            tracing::warn!(exchange = %d.name, kind = %d.kind, "skipping stored exchange of unknown type");
            return;
        };
        self.exchanges.insert(
            d.name.clone(),
            Arc::new(Exchange::new(
                d.name,
                kind,
                true,
                d.auto_delete,
                d.internal,
                d.arguments,
            )),
        );
    }

    pub fn restore_queue(&self, d: QueueDef, msgs: Vec<(u64, crate::store::IndexMeta)>) {
        let q = Arc::new(Queue::new(
            d.name.clone(),
            self.name.clone(),
            true,
            None,
            d.auto_delete,
            d.arguments,
            self.store.clone(),
        ));
        q.recover(msgs);
        self.queues.insert(d.name, q);
    }

    pub fn restore_binding(&self, b: BindingDef) {
        let dest = if b.to_exchange {
            self.exchanges
                .get(&b.destination)
                .map(|x| Destination::Exchange(x.clone()))
        } else {
            self.queues
                .get(&b.destination)
                .map(|q| Destination::Queue(q.clone()))
        };
        let (Some(src), Some(dest)) = (self.exchanges.get(&b.exchange).map(|x| x.clone()), dest)
        else {
            tracing::warn!(exchange = %b.exchange, destination = %b.destination, "skipping stored binding to a missing exchange or queue");
            return;
        };
        src.bind(Binding {
            dest,
            routing_key: b.routing_key,
            arguments: b.arguments,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NullStore;

    #[test]
    fn deleted_self_bound_exchange_is_freed() {
        // Found by fuzzing (fuzz/fuzz_targets/connection.rs): exchange.bind
        // of an exchange to itself made a reference cycle, so deleting the
        // exchange leaked it.
        let v = VHost::new("/".into(), Arc::new(NullStore));
        v.declare_exchange(ExchangeSpec {
            name: "x".into(),
            kind: "direct".into(),
            passive: false,
            durable: false,
            auto_delete: false,
            internal: false,
            arguments: FieldTable::default(),
        })
        .unwrap();
        v.bind("x", true, "x", "k", FieldTable::default(), 1)
            .unwrap();
        let weak = Arc::downgrade(&v.exchange("x").unwrap());
        v.delete_exchange("x", false).unwrap();
        assert!(weak.upgrade().is_none(), "deleted exchange still alive");
    }
}
