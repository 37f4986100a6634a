//! Definitions export and import in RabbitMQ 3.13's shape (every array always
//! present; users with password hashes and algorithms; the default and
//! `amq.*` exchanges left out), whole broker or one vhost, and the import of
//! a definitions file at boot (`load_definitions`). Import merges as RabbitMQ
//! does: existing queues, exchanges and bindings are kept (an inequivalent one
//! is reported and skipped), users, vhosts and permissions are created or
//! overwritten. Everything goes through the same broker functions as the rest
//! of the API.

use serde_json::{json, Map, Value};
use std::path::Path;
use std::sync::Arc;

use super::auth::not_allowed;
use super::objects::{exchange_json, queue_json, vhosts_for, API_CONN};
use super::overview::{PRODUCT_NAME, RABBITMQ_VERSION};
use super::reply::{check_name, get_bool, get_str, get_table, ApiError, ApiResult, Reply};
use super::Req;
use crate::auth::hashing::{HashingAlgorithm, PasswordHash};
use crate::auth::permissions::{Pattern, VhostPermissions};
use crate::broker::policy::{self, PolicyKind};
use crate::broker::vhost::{ExchangeSpec, QueueSpec};
use crate::broker::Broker;
use crate::exchange::Destination;

const QUEUE_KEYS: &[&str] = &["name", "vhost", "durable", "auto_delete", "arguments"];
const POLICY_KEYS: &[&str] = &[
    "vhost",
    "name",
    "pattern",
    "apply-to",
    "definition",
    "priority",
];
const EXCHANGE_KEYS: &[&str] = &[
    "name",
    "vhost",
    "type",
    "durable",
    "auto_delete",
    "internal",
    "arguments",
];

fn keep(v: &Value, keys: &[&str], with_vhost: bool) -> Value {
    let mut m = Map::new();
    for k in keys {
        if *k == "vhost" && !with_vhost {
            continue;
        }
        if let Some(x) = v.get(*k) {
            m.insert(k.to_string(), x.clone());
        }
    }
    Value::Object(m)
}

/// The definitions document of the broker (`vhost` None) or one vhost.
pub fn document(r: &Req<'_>, vhost: Option<&str>) -> Result<Value, ApiError> {
    let b = r.broker;
    let with_vhost = vhost.is_none();
    let mut queues = Vec::new();
    let mut exchanges = Vec::new();
    let mut bindings = Vec::new();
    let mut policies = Vec::new();
    for v in vhosts_for(r, vhost)? {
        for p in v.policies.all(PolicyKind::User) {
            policies.push(keep(&p.to_json(), POLICY_KEYS, with_vhost));
        }
        let mut qs: Vec<_> = v.queues.iter().map(|q| q.clone()).collect();
        qs.sort_by(|a, b| a.name.cmp(&b.name));
        for q in qs.iter().filter(|q| q.exclusive_owner.is_none()) {
            queues.push(keep(&queue_json(q), QUEUE_KEYS, with_vhost));
        }
        let mut xs: Vec<_> = v.exchanges.iter().map(|x| x.clone()).collect();
        xs.sort_by(|a, b| a.name.cmp(&b.name));
        for x in &xs {
            if !x.name.is_empty() && !x.name.starts_with("amq.") {
                exchanges.push(keep(&exchange_json(&v.name, x), EXCHANGE_KEYS, with_vhost));
            }
            for bd in x.bindings() {
                let (dest, kind) = match &bd.dest {
                    Destination::Queue(q) if q.exclusive_owner.is_none() => {
                        (q.name.clone(), "queue")
                    }
                    Destination::Queue(_) => continue,
                    Destination::Exchange(e) => (e.name.clone(), "exchange"),
                };
                let mut item = json!({
                    "source": x.name,
                    "destination": dest,
                    "destination_type": kind,
                    "routing_key": bd.routing_key,
                    "arguments": super::reply::table_to_json(&bd.arguments),
                });
                if with_vhost {
                    item["vhost"] = json!(v.name);
                }
                bindings.push(item);
            }
        }
    }
    let mut doc = json!({
        "rabbit_version": RABBITMQ_VERSION,
        "rabbitmq_version": RABBITMQ_VERSION,
        "product_name": PRODUCT_NAME,
        "product_version": env!("CARGO_PKG_VERSION"),
        "parameters": [],
        "policies": policies,
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    });
    if with_vhost {
        let names = b.vhost_names();
        doc["users"] = Value::Array(
            b.access
                .users()
                .iter()
                .map(|u| {
                    json!({
                        "name": u.name,
                        "password_hash": u.hash.encode(),
                        "hashing_algorithm": u.hash.algorithm().name(),
                        "tags": u.tags,
                        "limits": {},
                    })
                })
                .collect(),
        );
        doc["vhosts"] = Value::Array(
            names
                .iter()
                .map(|n| json!({"name": n, "limits": [], "metadata": {"description": "", "tags": []}}))
                .collect(),
        );
        doc["permissions"] = Value::Array(
            b.access
                .permissions(&names)
                .iter()
                .map(|(u, p)| {
                    json!({"user": u, "vhost": p.vhost, "configure": p.configure.as_str(),
                           "write": p.write.as_str(), "read": p.read.as_str()})
                })
                .collect(),
        );
        doc["topic_permissions"] = json!([]);
        doc["global_parameters"] = json!([]);
    }
    Ok(doc)
}

pub fn export(r: &Req<'_>, vhost: Option<&str>) -> ApiResult {
    if !r.caller.is_admin() {
        return Err(not_allowed());
    }
    let doc = document(r, vhost)?;
    if let Some(name) = r.query.get("download") {
        let disposition = format!("attachment; filename=\"{}\"", name.replace('"', ""));
        return Ok(Reply::JsonWith(
            doc,
            vec![(axum::http::header::CONTENT_DISPOSITION, disposition)],
        ));
    }
    Ok(Reply::Json(doc))
}

/// The JSON of an import request: a JSON body, or a multipart form with the
/// document in its `file` field (the web UI's upload).
fn import_body(r: &Req<'_>) -> Result<Value, ApiError> {
    let body = &r.body[..];
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    // multipart/form-data: take the first part that parses as a JSON object.
    let text = String::from_utf8_lossy(body);
    for part in text.split("\r\n\r\n").skip(1) {
        let candidate = part.rsplit_once("\r\n--").map(|(a, _)| a).unwrap_or(part);
        if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(candidate) {
            return Ok(v);
        }
    }
    Err(ApiError::bad_request("not_json"))
}

pub fn import(r: &Req<'_>, vhost: Option<&str>) -> ApiResult {
    if !r.caller.is_admin() {
        return Err(not_allowed());
    }
    let doc = import_body(r)?;
    if let Some(v) = vhost {
        if r.broker.vhost(v).is_none() {
            return Err(ApiError::not_found());
        }
    }
    apply(r.broker, &doc, vhost)?;
    Ok(Reply::NoContent)
}

/// Import a definitions file at boot (`load_definitions`).
pub fn load_file(broker: &Arc<Broker>, path: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let doc: Value = serde_json::from_str(&text)?;
    apply(broker, &doc, None).map_err(|e| anyhow::anyhow!("{}", e.reason))?;
    tracing::info!(path = %path.display(), "definitions loaded");
    Ok(())
}

fn array<'a>(doc: &'a Value, key: &str) -> &'a [Value] {
    doc.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn obj(v: &Value) -> Result<&Map<String, Value>, ApiError> {
    v.as_object()
        .ok_or_else(|| ApiError::bad_request("definitions items must be objects"))
}

/// A name or key of a definitions item: present, at most 255 bytes (AMQP's
/// short strings).
fn text<'a>(m: &'a Map<String, Value>, key: &str) -> Result<&'a str, ApiError> {
    let t = get_str(m, key)?
        .ok_or_else(|| ApiError::bad_request(format!("definitions item without {key}")))?;
    check_name(key, t)?;
    Ok(t)
}

fn store_failed(e: crate::store::StoreError) -> ApiError {
    ApiError::internal(format!("store write failed: {e}"))
}

/// Apply a definitions document; `only_vhost` is the per-vhost form, whose
/// items have no `vhost` keys.
pub fn apply(b: &Arc<Broker>, doc: &Value, only_vhost: Option<&str>) -> Result<(), ApiError> {
    if !doc.is_object() {
        return Err(ApiError::bad_request("definitions must be a JSON object"));
    }
    let vhost_of = |m: &Map<String, Value>| -> Result<String, ApiError> {
        match only_vhost {
            Some(v) => Ok(v.to_string()),
            None => Ok(text(m, "vhost")?.to_string()),
        }
    };
    if only_vhost.is_none() {
        for v in array(doc, "vhosts") {
            b.add_vhost(text(obj(v)?, "name")?).map_err(store_failed)?;
        }
        for u in array(doc, "users") {
            let m = obj(u)?;
            let name = text(m, "name")?;
            let hash = match get_str(m, "password_hash")? {
                Some(h) if !h.is_empty() => PasswordHash::parse(h)
                    .map_err(|e| ApiError::bad_request(format!("user '{name}': {e}")))?,
                _ => PasswordHash::new(&rand::random::<[u8; 32]>(), HashingAlgorithm::Sha256),
            };
            let tags = match m.get("tags") {
                Some(Value::String(s)) => s
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
                    .collect(),
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect(),
                _ => Vec::new(),
            };
            b.put_user(name, hash, tags).map_err(store_failed)?;
        }
        for p in array(doc, "permissions") {
            let m = obj(p)?;
            let pattern = |k: &str| -> Result<Pattern, ApiError> {
                Pattern::new(get_str(m, k)?.unwrap_or("")).map_err(ApiError::bad_request)
            };
            let vhost = text(m, "vhost")?;
            if b.vhost(vhost).is_none() {
                return Err(ApiError::bad_request(format!(
                    "vhost '{vhost}' does not exist"
                )));
            }
            let perms = VhostPermissions {
                vhost: vhost.to_string(),
                configure: pattern("configure")?,
                write: pattern("write")?,
                read: pattern("read")?,
            };
            b.set_permissions(text(m, "user")?, perms)
                .map_err(store_failed)?;
        }
    }
    for x in array(doc, "exchanges") {
        let m = obj(x)?;
        let vhost = vhost_of(m)?;
        let name = text(m, "name")?;
        let v = b
            .vhost(&vhost)
            .ok_or_else(|| ApiError::bad_request(format!("vhost '{vhost}' does not exist")))?;
        if name.is_empty() || name.starts_with("amq.") || v.exchanges.contains_key(name) {
            continue;
        }
        v.declare_exchange(ExchangeSpec {
            name: name.to_string(),
            kind: get_str(m, "type")?.unwrap_or("direct").to_string(),
            passive: false,
            durable: get_bool(m, "durable", true)?,
            auto_delete: get_bool(m, "auto_delete", false)?,
            internal: get_bool(m, "internal", false)?,
            arguments: get_table(m, "arguments")?,
        })?;
    }
    for q in array(doc, "queues") {
        let m = obj(q)?;
        let vhost = vhost_of(m)?;
        let name = text(m, "name")?;
        let v = b
            .vhost(&vhost)
            .ok_or_else(|| ApiError::bad_request(format!("vhost '{vhost}' does not exist")))?;
        if v.queues.contains_key(name) {
            continue;
        }
        v.declare_queue(
            QueueSpec {
                name: name.to_string(),
                server_named: false,
                passive: false,
                durable: get_bool(m, "durable", true)?,
                exclusive: false,
                auto_delete: get_bool(m, "auto_delete", false)?,
                arguments: super::objects::queue_type_argument(
                    get_table(m, "arguments")?,
                    get_str(m, "type")?,
                )?,
            },
            API_CONN,
        )?;
    }
    for bd in array(doc, "bindings") {
        let m = obj(bd)?;
        let vhost = vhost_of(m)?;
        let v = b
            .vhost(&vhost)
            .ok_or_else(|| ApiError::bad_request(format!("vhost '{vhost}' does not exist")))?;
        let source = text(m, "source")?;
        if source.is_empty() {
            continue;
        }
        let to_exchange = get_str(m, "destination_type")? == Some("exchange");
        let key = get_str(m, "routing_key")?.unwrap_or("");
        check_name("routing_key", key)?;
        let args = get_table(m, "arguments")?;
        v.bind(
            text(m, "destination")?,
            to_exchange,
            source,
            key,
            args,
            API_CONN,
        )?;
    }
    for p in array(doc, "policies") {
        let m = obj(p)?;
        let vhost = vhost_of(m)?;
        let name = text(m, "name")?;
        check_name("policy", name)?;
        let policy = policy::parse(PolicyKind::User, &vhost, name, m)
            .map_err(|e| ApiError::bad_request(format!("policy '{name}': {e}")))?;
        match b.put_policy(PolicyKind::User, policy) {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(ApiError::bad_request(format!(
                    "vhost '{vhost}' does not exist"
                )))
            }
            Err(e) => return Err(store_failed(e)),
        }
    }
    for k in ["parameters", "global_parameters", "topic_permissions"] {
        if !array(doc, k).is_empty() {
            tracing::warn!(
                what = k,
                "definitions import: Hopper does not support these yet; skipped"
            );
        }
    }
    Ok(())
}
