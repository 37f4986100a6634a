//! Policies and operator policies (RabbitMQ's runtime `policy` and
//! `operator_policy` parameters): validation with RabbitMQ's texts, the
//! per-vhost lists, matching (highest priority wins), and applying the
//! result to queues (their limits) and exchanges (their alternate exchange),
//! to existing ones when a policy changes and to new ones at declare.
//! Changes are written to the store (synced) before they take effect and are
//! applied again at boot. This module never parses HTTP; the management API
//! hands it JSON values.

use parking_lot::RwLock;
use serde_json::{json, Map, Value};
use std::sync::Arc;

use super::{Broker, VHost};
use crate::exchange::Exchange;
use crate::queue::{Overflow, PolicyLimits, Queue};
use crate::store::{blocking, StoreError, StoredObject};

/// Which list a policy belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    /// `/api/policies` (policymaker).
    User,
    /// `/api/operator-policies` (administrator): numeric limits only, merged
    /// with the user policy by taking the lower value.
    Operator,
}

impl PolicyKind {
    /// The kind of store object.
    fn object_kind(self) -> &'static str {
        match self {
            PolicyKind::User => "policy",
            PolicyKind::Operator => "operator_policy",
        }
    }
}

/// What a policy applies to (`apply-to`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyTo {
    All,
    Queues,
    Exchanges,
    ClassicQueues,
    QuorumQueues,
    /// 3.12's `streams`: accepted; Hopper has no streams, so it matches nothing.
    Streams,
}

impl ApplyTo {
    fn parse(s: &str) -> Option<ApplyTo> {
        Some(match s {
            "all" => ApplyTo::All,
            "queues" => ApplyTo::Queues,
            "exchanges" => ApplyTo::Exchanges,
            "classic_queues" => ApplyTo::ClassicQueues,
            "quorum_queues" => ApplyTo::QuorumQueues,
            "streams" => ApplyTo::Streams,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ApplyTo::All => "all",
            ApplyTo::Queues => "queues",
            ApplyTo::Exchanges => "exchanges",
            ApplyTo::ClassicQueues => "classic_queues",
            ApplyTo::QuorumQueues => "quorum_queues",
            ApplyTo::Streams => "streams",
        }
    }

    fn queue(self, quorum: bool) -> bool {
        match self {
            ApplyTo::All | ApplyTo::Queues => true,
            ApplyTo::ClassicQueues => !quorum,
            ApplyTo::QuorumQueues => quorum,
            ApplyTo::Exchanges | ApplyTo::Streams => false,
        }
    }

    fn exchange(self) -> bool {
        matches!(self, ApplyTo::All | ApplyTo::Exchanges)
    }
}

/// One validated policy.
#[derive(Debug)]
pub struct Policy {
    pub vhost: String,
    pub name: String,
    pub pattern: String,
    regex: regex::Regex,
    pub apply_to: ApplyTo,
    /// As given (RabbitMQ keeps any JSON number).
    pub priority: serde_json::Number,
    pub definition: Map<String, Value>,
    limits: PolicyLimits,
    alternate_exchange: Option<String>,
}

impl Policy {
    /// The policy as the API and definitions show it.
    pub fn to_json(&self) -> Value {
        json!({
            "vhost": self.vhost,
            "name": self.name,
            "pattern": self.pattern,
            "apply-to": self.apply_to.as_str(),
            "definition": self.definition,
            "priority": self.priority,
        })
    }

    fn rank(&self) -> f64 {
        self.priority.as_f64().unwrap_or(0.0)
    }
}

/// A vhost's policies of both kinds.
#[derive(Debug, Default)]
pub struct Policies {
    user: RwLock<Vec<Arc<Policy>>>,
    operator: RwLock<Vec<Arc<Policy>>>,
    /// Serializes changes, so the store and the lists see them in the same
    /// order (held across the store write; readers never take it).
    changes: parking_lot::Mutex<()>,
}

impl Policies {
    fn list(&self, kind: PolicyKind) -> &RwLock<Vec<Arc<Policy>>> {
        match kind {
            PolicyKind::User => &self.user,
            PolicyKind::Operator => &self.operator,
        }
    }

    /// All of one kind, by name.
    pub fn all(&self, kind: PolicyKind) -> Vec<Arc<Policy>> {
        let mut v = self.list(kind).read().clone();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn get(&self, kind: PolicyKind, name: &str) -> Option<Arc<Policy>> {
        self.list(kind)
            .read()
            .iter()
            .find(|p| p.name == name)
            .cloned()
    }

    /// The highest-priority policy of `kind` matching a name (ties: the
    /// first by name).
    fn best(
        &self,
        kind: PolicyKind,
        name: &str,
        applies: impl Fn(ApplyTo) -> bool,
    ) -> Option<Arc<Policy>> {
        let list = self.list(kind).read();
        let mut best: Option<&Arc<Policy>> = None;
        for p in list.iter() {
            if !applies(p.apply_to) || !p.regex.is_match(name) {
                continue;
            }
            best = match best {
                Some(b) if b.rank() > p.rank() || (b.rank() == p.rank() && b.name <= p.name) => {
                    Some(b)
                }
                _ => Some(p),
            };
        }
        best.cloned()
    }

    /// The (user, operator) policies that apply to a queue.
    pub fn for_queue(&self, q: &Queue) -> (Option<Arc<Policy>>, Option<Arc<Policy>>) {
        let applies = |a: ApplyTo| a.queue(q.quorum);
        (
            self.best(PolicyKind::User, &q.name, applies),
            self.best(PolicyKind::Operator, &q.name, applies),
        )
    }

    /// The policy that applies to an exchange.
    pub fn for_exchange(&self, x: &Exchange) -> Option<Arc<Policy>> {
        if x.name.is_empty() {
            return None;
        }
        self.best(PolicyKind::User, &x.name, ApplyTo::exchange)
    }

    /// The merged definition a queue gets (`effective_policy_definition`):
    /// the user policy's keys, with each operator policy key taking the
    /// lower value when both set it (all operator keys are numeric).
    pub fn effective_definition(&self, q: &Queue) -> Map<String, Value> {
        let (user, op) = self.for_queue(q);
        let mut def = user.map(|p| p.definition.clone()).unwrap_or_default();
        if let Some(op) = op {
            for (k, v) in &op.definition {
                let merged = match (def.get(k).and_then(Value::as_u64), v.as_u64()) {
                    (Some(a), Some(b)) => json!(a.min(b)),
                    _ => v.clone(),
                };
                def.insert(k.clone(), merged);
            }
        }
        def
    }

    /// The queue keys of the merged policies.
    fn queue_limits(&self, q: &Queue) -> Option<PolicyLimits> {
        let (user, op) = self.for_queue(q);
        let min = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match (user, op) {
            (None, None) => None,
            (Some(u), None) => Some(u.limits.clone()),
            (None, Some(o)) => Some(o.limits.clone()),
            (Some(u), Some(o)) => {
                let (u, o) = (&u.limits, &o.limits);
                Some(PolicyLimits {
                    max_length: min(u.max_length, o.max_length),
                    max_length_bytes: min(u.max_length_bytes, o.max_length_bytes),
                    message_ttl: min(u.message_ttl, o.message_ttl),
                    expires: min(u.expires, o.expires),
                    delivery_limit: min(u.delivery_limit, o.delivery_limit),
                    ..u.clone()
                })
            }
        }
    }

    /// Give a queue the limits its policies set now; true when dead letters wait.
    pub fn apply_to_queue(&self, q: &Queue) -> bool {
        q.set_policy(self.queue_limits(q).as_ref())
    }

    /// Give an exchange the alternate exchange its policy sets now.
    pub fn apply_to_exchange(&self, x: &Exchange) {
        x.set_policy_alternate(
            self.for_exchange(x)
                .and_then(|p| p.alternate_exchange.clone()),
        );
    }
}

/// A JSON value as RabbitMQ's validation messages print it (Erlang terms).
fn erl(v: &Value) -> String {
    match v {
        Value::String(s) => format!("<<\"{s}\">>"),
        Value::Array(a) => format!("[{}]", a.iter().map(erl).collect::<Vec<_>>().join(",")),
        Value::Object(m) => format!(
            "[{}]",
            m.iter()
                .map(|(k, v)| format!("{{<<\"{k}\">>,{}}}", erl(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

/// Keys a policy may set, with no effect in Hopper beyond being accepted
/// (so definitions exported from RabbitMQ 3.x, which often carry classic
/// mirroring keys, import unchanged).
const ACCEPTED_ONLY: &[&str] = &[
    "ha-mode",
    "ha-params",
    "ha-sync-mode",
    "ha-sync-batch-size",
    "ha-promote-on-shutdown",
    "ha-promote-on-failure",
    "queue-master-locator",
    "queue-leader-locator",
    "queue-version",
    "max-in-memory-length",
    "max-in-memory-bytes",
];

/// Keys an operator policy may set (RabbitMQ 3.10's list).
const OPERATOR_KEYS: &[&str] = &[
    "expires",
    "message-ttl",
    "max-length",
    "max-length-bytes",
    "max-in-memory-length",
    "max-in-memory-bytes",
    "delivery-limit",
];

/// Validate a policy from its API body (`pattern`, `definition`,
/// `priority`, `apply-to`). The error is RabbitMQ's reason text, without
/// the HTML escaping its management API adds (see `http::policies`).
pub fn parse(
    kind: PolicyKind,
    vhost: &str,
    name: &str,
    body: &Map<String, Value>,
) -> Result<Policy, String> {
    for k in ["pattern", "definition"] {
        if !body.contains_key(k) {
            return Err(format!("[{{key_missing,{k}}}]"));
        }
    }
    let failed = |why: String| format!("Validation failed\n\n{why}\n");
    let priority = match body.get("priority") {
        None | Some(Value::Null) => serde_json::Number::from(0),
        Some(Value::Number(n)) => n.clone(),
        Some(other) => {
            return Err(failed(format!(
                "priority should be a number, actually was {}",
                erl(other)
            )))
        }
    };
    let pattern = match body.get("pattern") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(failed(format!(
                "pattern should be a binary but was {}",
                erl(other)
            )))
        }
        None => String::new(),
    };
    let regex = regex::Regex::new(&pattern).map_err(|e| {
        let brief = e
            .to_string()
            .lines()
            .last()
            .unwrap_or("")
            .trim()
            .trim_start_matches("error: ")
            .to_string();
        failed(format!(
            "pattern should be regular expression but is invalid: {{\"{brief}\",0}}"
        ))
    })?;
    let apply_to = match body.get("apply-to") {
        None | Some(Value::Null) => ApplyTo::All,
        Some(v) => {
            let text = v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            ApplyTo::parse(&text).ok_or_else(|| {
                failed(format!(
                    "apply-to '{text}' unrecognised; should be 'queues', 'exchanges' or 'all'"
                ))
            })?
        }
    };
    let definition = match body.get("definition") {
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            return Err(failed(format!(
                "definition should be a dictionary but was {}",
                erl(other)
            )))
        }
        None => Map::new(),
    };
    let (limits, alternate_exchange) = validate_definition(kind, &definition).map_err(failed)?;
    Ok(Policy {
        vhost: vhost.to_string(),
        name: name.to_string(),
        pattern,
        regex,
        apply_to,
        priority,
        definition,
        limits,
        alternate_exchange,
    })
}

fn validate_definition(
    kind: PolicyKind,
    def: &Map<String, Value>,
) -> Result<(PolicyLimits, Option<String>), String> {
    if def.is_empty() {
        return Err("no policy provided".into());
    }
    let known = |k: &str| match kind {
        PolicyKind::Operator => OPERATOR_KEYS.contains(&k),
        PolicyKind::User => {
            ACCEPTED_ONLY.contains(&k)
                || matches!(
                    k,
                    "message-ttl"
                        | "expires"
                        | "max-length"
                        | "max-length-bytes"
                        | "overflow"
                        | "dead-letter-exchange"
                        | "dead-letter-routing-key"
                        | "alternate-exchange"
                        | "delivery-limit"
                        | "queue-mode"
                )
        }
    };
    let mut unknown: Vec<(&String, &Value)> = def.iter().filter(|(k, _)| !known(k)).collect();
    if !unknown.is_empty() {
        unknown.sort_by(|a, b| a.0.cmp(b.0));
        let items: Vec<String> = unknown
            .iter()
            .map(|(k, v)| format!("{{<<\"{k}\">>,{}}}", erl(v)))
            .collect();
        return Err(format!(
            "[{}] are not recognised policy settings",
            items.join(",")
        ));
    }
    let mut l = PolicyLimits::default();
    let mut ae = None;
    let mut keys: Vec<&String> = def.keys().collect();
    keys.sort();
    for k in keys {
        let v = &def[k];
        let int = |min: u64, what: &str| -> Result<u64, String> {
            v.as_u64()
                .filter(|n| *n >= min)
                .ok_or_else(|| format!("{} is not a valid {what}", erl(v)))
        };
        let text = |what: &str| -> Result<String, String> {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("{} is not a valid {what}", erl(v)))
        };
        match k.as_str() {
            "message-ttl" => l.message_ttl = Some(int(0, "message TTL")?),
            "expires" => l.expires = Some(int(1, "queue expiry")?),
            "max-length" => l.max_length = Some(int(0, "maximum length")?),
            "max-length-bytes" => l.max_length_bytes = Some(int(0, "maximum length in bytes")?),
            "delivery-limit" => l.delivery_limit = Some(int(0, "delivery limit")?),
            "max-in-memory-length" => {
                int(0, "maximum memory length")?;
            }
            "max-in-memory-bytes" => {
                int(0, "maximum memory in bytes")?;
            }
            "dead-letter-exchange" => l.dlx = Some(text("dead letter exchange name")?),
            "dead-letter-routing-key" => l.dlrk = Some(text("dead letter routing key")?),
            "alternate-exchange" => ae = Some(text("alternate exchange name")?),
            "overflow" => {
                l.overflow = Some(
                    v.as_str()
                        .and_then(Overflow::parse)
                        .ok_or_else(|| format!("{} is not a valid overflow value", erl(v)))?,
                )
            }
            "queue-mode" if !matches!(v.as_str(), Some("default" | "lazy")) => {
                return Err(format!("{} is not a valid queue-mode value", erl(v)));
            }
            _ => {}
        }
    }
    Ok((l, ae))
}

/// A policy's store key: vhost and name (a NUL in either is refused by `put_policy`).
fn store_key(vhost: &str, name: &str) -> String {
    format!("{vhost}\u{0}{name}")
}

impl VHost {
    /// Apply the policies to every queue and exchange of this vhost.
    fn reapply_policies(self: &Arc<Self>, broker: &Arc<Broker>) {
        let queues: Vec<Arc<Queue>> = self.queues.iter().map(|q| q.clone()).collect();
        for q in queues {
            if self.policies.apply_to_queue(&q) {
                super::deadletter::flush(broker, self, &q);
            }
        }
        for x in self.exchanges.iter() {
            self.policies.apply_to_exchange(&x);
        }
    }
}

impl Broker {
    /// Create or replace a policy (written to the store first), then apply
    /// the policies again to the vhost's queues and exchanges. True when
    /// created, None when the vhost does not exist.
    pub fn put_policy(
        self: &Arc<Self>,
        kind: PolicyKind,
        p: Policy,
    ) -> Result<Option<bool>, StoreError> {
        let Some(v) = self.vhost(&p.vhost) else {
            return Ok(None);
        };
        let mut value = p.to_json();
        if let Value::Object(m) = &mut value {
            m.remove("vhost");
            m.remove("name");
        }
        let obj = StoredObject {
            kind: kind.object_kind().to_string(),
            key: store_key(&p.vhost, &p.name),
            value: serde_json::to_vec(&value).unwrap_or_default(),
        };
        let _serial = v.policies.changes.lock();
        blocking(|| self.store.put_object(&obj))?;
        let created = {
            let mut list = v.policies.list(kind).write();
            let before = list.len();
            list.retain(|x| x.name != p.name);
            let created = list.len() == before;
            list.push(Arc::new(p));
            created
        };
        v.reapply_policies(self);
        Ok(Some(created))
    }

    /// Delete a policy; false when there was none.
    pub fn delete_policy(
        self: &Arc<Self>,
        kind: PolicyKind,
        vhost: &str,
        name: &str,
    ) -> Result<bool, StoreError> {
        let Some(v) = self.vhost(vhost) else {
            return Ok(false);
        };
        let _serial = v.policies.changes.lock();
        if v.policies.get(kind, name).is_none() {
            return Ok(false);
        }
        blocking(|| {
            self.store
                .delete_object(kind.object_kind(), &store_key(vhost, name))
        })?;
        v.policies.list(kind).write().retain(|x| x.name != name);
        v.reapply_policies(self);
        Ok(true)
    }

    /// Forget the stored policies of a vhost being deleted.
    pub(super) fn delete_vhost_policies(&self, v: &VHost) -> Result<(), StoreError> {
        for kind in [PolicyKind::User, PolicyKind::Operator] {
            for p in v.policies.all(kind) {
                blocking(|| {
                    self.store
                        .delete_object(kind.object_kind(), &store_key(&v.name, &p.name))
                })?;
            }
        }
        Ok(())
    }

    /// A stored policy, at boot. One that no longer validates (or whose
    /// vhost is gone) is skipped with a warning.
    pub(super) fn restore_policy(self: &Arc<Self>, kind_name: &str, key: &str, value: &Value) {
        let kind = match kind_name {
            "policy" => PolicyKind::User,
            _ => PolicyKind::Operator,
        };
        let Some((vhost, name)) = key.split_once('\u{0}') else {
            return;
        };
        let (Some(v), Some(body)) = (self.vhost(vhost), value.as_object()) else {
            tracing::warn!(vhost, name, "skipping stored policy of a missing vhost");
            return;
        };
        match parse(kind, vhost, name, body) {
            Ok(p) => {
                v.policies.list(kind).write().push(Arc::new(p));
                v.reapply_policies(self);
            }
            Err(e) => {
                tracing::warn!(vhost, name, error = %e, "skipping stored policy that does not validate")
            }
        }
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
