//! Queues and exchanges: list, show, declare (PUT: 201 created, 204 existed,
//! 400 with the AMQP PRECONDITION_FAILED text when inequivalent), delete,
//! purge, get messages. Every change goes through the same `VHost` functions
//! and permission checks as the AMQP methods, so both behave alike.

use amq_protocol::types::FieldTable;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde_json::{json, Value};
use std::sync::Arc;

use super::reply::{
    body_object, check_name, get_bool, get_str, get_table, get_u64, table_to_json, ApiError,
    ApiResult, Reply,
};
use super::{list, Req};
use crate::auth::{Permission, Resource};
use crate::broker::vhost::{ExchangeSpec, QueueSpec};
use crate::broker::VHost;
use crate::exchange::Exchange;
use crate::queue::Queue;

/// The connection id the API acts under: no AMQP connection has it, so the
/// API never owns an exclusive queue.
pub const API_CONN: u64 = 0;

/// A permission check as the AMQP side makes it; a refusal is RabbitMQ's
/// management answer, 401 "Access refused.".
pub fn check(
    r: &Req<'_>,
    vhost: &str,
    perm: Permission,
    kind: Resource,
    name: &str,
) -> Result<(), ApiError> {
    r.broker
        .access
        .check(&r.caller.name, vhost, perm, kind, name)
        .map_err(|_| ApiError::not_authorised("Access refused."))
}

/// A vhost the caller may see: a missing one answers 404, one the caller
/// has no access to 401 (RabbitMQ 3.10's answers, checked).
pub fn visible_vhost(r: &Req<'_>, name: &str) -> Result<Arc<VHost>, ApiError> {
    match r.broker.vhost(name) {
        Some(v) if r.caller.may_see_vhost(r.broker, name) => Ok(v),
        Some(_) => Err(no_vhost_access()),
        None => Err(ApiError::not_found()),
    }
}

fn no_vhost_access() -> ApiError {
    ApiError::not_authorised("User not authorised to access virtual host")
}

/// A vhost the caller may change objects in; missing answers RabbitMQ's
/// `vhost_not_found`.
fn usable_vhost(r: &Req<'_>, name: &str) -> Result<Arc<VHost>, ApiError> {
    match r.broker.vhost(name) {
        Some(v) if r.caller.may_use_vhost(r.broker, name) => Ok(v),
        Some(_) => Err(no_vhost_access()),
        None => Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "not_found",
            "vhost_not_found",
        )),
    }
}

/// The vhosts a list covers: one, or all the caller sees.
pub fn vhosts_for(r: &Req<'_>, vhost: Option<&str>) -> Result<Vec<Arc<VHost>>, ApiError> {
    match vhost {
        Some(v) => Ok(vec![visible_vhost(r, v)?]),
        None => {
            let mut v: Vec<Arc<VHost>> = r
                .broker
                .vhosts
                .iter()
                .filter(|v| r.caller.may_see_vhost(r.broker, &v.name))
                .map(|v| v.clone())
                .collect();
            v.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(v)
        }
    }
}

fn rate() -> Value {
    json!({"rate": 0.0})
}

pub fn queue_json(q: &Queue) -> Value {
    queue_json_with(q, None)
}

/// A queue's JSON, with `message_stats` and rates when `w` is given.
pub fn queue_json_with(q: &Queue, w: Option<&super::rates::Window>) -> Value {
    let s = q.stats();
    let mut v = json!({
        "name": q.name,
        "vhost": q.vhost,
        "type": if q.quorum { "quorum" } else { "classic" },
        "durable": q.durable,
        "auto_delete": q.auto_delete,
        "exclusive": q.exclusive_owner.is_some(),
        "arguments": table_to_json(&q.arguments),
        "node": super::overview::node_name(),
        "state": "running",
        "consumers": s.consumers,
        "consumer_capacity": if s.consumers > 0 { 1.0 } else { 0.0 },
        "consumer_utilisation": if s.consumers > 0 { 1.0 } else { 0.0 },
        "exclusive_consumer_tag": null,
        "policy": null,
        "operator_policy": null,
        "effective_policy_definition": {},
        "memory": s.memory,
        "messages": s.ready + s.unacked,
        "messages_details": rate(),
        "messages_ready": s.ready,
        "messages_ready_details": rate(),
        "messages_unacknowledged": s.unacked,
        "messages_unacknowledged_details": rate(),
        "message_bytes": s.ready_bytes,
        "message_bytes_ready": s.ready_bytes,
        "message_bytes_unacknowledged": 0,
        "message_bytes_ram": s.memory,
        "message_bytes_persistent": 0,
        "messages_ram": s.ready,
        "messages_persistent": 0,
        "reductions": 0,
        "garbage_collection": {},
    });
    if s.consumers == 0 {
        v["idle_since"] = json!(idle_time());
    }
    if let Some(r) = q.replica() {
        // A replicated quorum queue: the group's placement, and what it
        // holds on every node (this node's view holds only its part).
        let i = r.info();
        v["leader"] = json!(i.leader);
        if let Some(l) = &i.leader {
            v["node"] = json!(l);
        }
        v["members"] = json!(i.members);
        v["online"] = json!(i.online);
        v["messages"] = json!(i.messages);
        v["messages_ready"] = json!(i.ready);
        v["messages_unacknowledged"] = json!(i.messages.saturating_sub(i.ready));
        v["replication"] = json!({
            "confirmed": i.confirmed,
            "confirms_sampled": i.sampled,
            "confirms_sampled_on_majority": i.sampled_majority,
            "last_sample": i.last_sample.map(|(index, nodes)| json!({"log_index": index, "synced_on": nodes})),
        });
    } else if q.quorum {
        // One node: it leads, and is the only member.
        let node = super::overview::node_name();
        v["leader"] = json!(node);
        v["members"] = json!([node]);
        v["online"] = json!([node]);
    }
    if let Some(w) = w {
        v["message_stats"] = super::rates::queue_stats(w, &q.vhost, &q.name, &s.counts);
        v["messages_paged_out_bytes"] = json!(s.paged_out_bytes);
    }
    v
}

/// A queue's JSON with the policies that apply to it (`queue_json` leaves
/// them empty: it does not see the vhost).
pub fn queue_json_in(v: &VHost, q: &Queue, w: Option<&super::rates::Window>) -> Value {
    let mut j = queue_json_with(q, w);
    let (policy, operator_policy) = v.policies.for_queue(q);
    j["policy"] = json!(policy.map(|p| p.name.clone()));
    j["operator_policy"] = json!(operator_policy.map(|p| p.name.clone()));
    j["effective_policy_definition"] = Value::Object(v.policies.effective_definition(q));
    j
}

/// An exchange's JSON with the policy that applies to it.
pub fn exchange_json_in(v: &VHost, x: &Exchange, w: &super::rates::Window) -> Value {
    let mut j = exchange_json_with(&v.name, x, w);
    j["policy"] = json!(v.policies.for_exchange(x).map(|p| p.name.clone()));
    j
}

/// RabbitMQ's `idle_since` format ("2026-11-30T14:33:47.123+00:00", 3.10).
fn idle_time() -> String {
    format_time(crate::queue::now_ms())
}

/// ms since the Unix epoch as RabbitMQ's ISO 8601 UTC text.
fn format_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// An exchange's JSON with its `message_stats`.
pub fn exchange_json_with(vhost: &str, x: &Exchange, w: &super::rates::Window) -> Value {
    let mut v = exchange_json(vhost, x);
    v["message_stats"] =
        super::rates::exchange_stats(w, vhost, &x.name, x.publish_in.get(), x.publish_out.get());
    v
}

pub fn exchange_json(vhost: &str, x: &Exchange) -> Value {
    json!({
        "name": x.name,
        "vhost": vhost,
        "type": x.kind.as_str(),
        "durable": x.durable,
        "auto_delete": x.auto_delete,
        "internal": x.internal,
        "arguments": table_to_json(&x.arguments),
        "policy": null,
        "user_who_performed_action": "",
    })
}

// ---- queues ----

pub fn list_queues(r: &Req<'_>, vhost: Option<&str>) -> ApiResult {
    // Names are filtered before any JSON is built: with many queues the
    // JSON is the cost.
    let matcher = list::name_matcher(&r.query);
    let w = super::rates::for_broker(r.broker).window();
    let mut items = Vec::new();
    let mut total = 0;
    for v in vhosts_for(r, vhost)? {
        let mut qs: Vec<Arc<Queue>> = v.queues.iter().map(|q| q.clone()).collect();
        total += qs.len();
        if let Some(m) = &matcher {
            qs.retain(|q| m(&q.name));
        }
        qs.sort_by(|a, b| a.name.cmp(&b.name));
        items.extend(qs.iter().map(|q| queue_json_in(&v, q, Some(&w))));
    }
    Ok(Reply::Json(list::answer_counted(items, total, &r.query)?))
}

fn find_queue(r: &Req<'_>, vhost: &str, name: &str) -> Result<(Arc<VHost>, Arc<Queue>), ApiError> {
    let v = visible_vhost(r, vhost)?;
    let q = v
        .queues
        .get(name)
        .map(|q| q.clone())
        .ok_or_else(ApiError::not_found)?;
    Ok((v, q))
}

pub fn get_queue(r: &Req<'_>, vhost: &str, name: &str) -> ApiResult {
    let (v, q) = find_queue(r, vhost, name)?;
    let w = super::rates::for_broker(r.broker).window();
    Ok(Reply::Json(queue_json_in(&v, &q, Some(&w))))
}

pub fn put_queue(r: &Req<'_>, vhost: &str, name: &str) -> ApiResult {
    check_name("queue", name)?;
    let body = body_object(&r.body)?;
    let v = usable_vhost(r, vhost)?;
    if name.is_empty() {
        return Err(ApiError::not_found());
    }
    if name.starts_with("amq.") {
        return Err(ApiError::not_authorised("Access refused."));
    }
    check(r, vhost, Permission::Configure, Resource::Queue, name)?;
    let arguments = queue_type_argument(get_table(&body, "arguments")?, get_str(&body, "type")?)?;
    let existed = v.queues.contains_key(name);
    if !existed {
        if let Some(dlx) = arguments
            .inner()
            .get("x-dead-letter-exchange")
            .and_then(crate::queue::as_text)
        {
            check(r, vhost, Permission::Read, Resource::Queue, name)?;
            check(r, vhost, Permission::Write, Resource::Exchange, &dlx)?;
        }
        let max = r.broker.config.limits.max_queues;
        if max > 0 && v.queues.len() >= max {
            return Err(ApiError::bad_request(format!(
                "cannot declare queue '{name}': queue limit in vhost '{vhost}' ({max}) is reached"
            )));
        }
    }
    v.declare_queue(
        QueueSpec {
            name: name.to_string(),
            server_named: false,
            passive: false,
            durable: get_bool(&body, "durable", false)?,
            exclusive: false,
            auto_delete: get_bool(&body, "auto_delete", false)?,
            arguments,
        },
        API_CONN,
    )?;
    Ok(if existed {
        Reply::NoContent
    } else {
        Reply::Created(None)
    })
}

/// The queue type of an API declare: `x-queue-type: classic` (which tools
/// such as rabbitmq_http_client always send, also as `type`) is dropped so
/// that an AMQP redeclare without it stays equivalent, as in RabbitMQ; any
/// other type (from the argument, else from `type`) is kept as the
/// argument, for the broker's declare to accept (quorum) or refuse with
/// RabbitMQ's text.
pub fn queue_type_argument(
    arguments: FieldTable,
    kind: Option<&str>,
) -> Result<FieldTable, ApiError> {
    let mut inner = arguments.inner().clone();
    if !inner.contains_key("x-queue-type") {
        if let Some(t) = kind {
            inner.insert(
                "x-queue-type".into(),
                amq_protocol::types::AMQPValue::LongString(t.into()),
            );
        }
    }
    let classic = inner
        .get("x-queue-type")
        .and_then(crate::queue::as_text)
        .is_some_and(|t| t == "classic");
    if classic {
        inner.remove("x-queue-type");
    }
    Ok(FieldTable::from(inner))
}

fn query_flag(r: &Req<'_>, key: &str) -> bool {
    r.query.get(key).is_some_and(|v| v == "true")
}

pub fn delete_queue(r: &Req<'_>, vhost: &str, name: &str) -> ApiResult {
    let (v, q) = find_queue(r, vhost, name)?;
    check(r, vhost, Permission::Configure, Resource::Queue, name)?;
    if query_flag(r, "if-unused") && q.consumer_count() > 0 {
        return Err(ApiError::bad_request(format!(
            "queue '{name}' in vhost '{vhost}' in use"
        )));
    }
    if query_flag(r, "if-empty") && q.message_count() > 0 {
        return Err(ApiError::bad_request(format!(
            "queue '{name}' in vhost '{vhost}' is not empty"
        )));
    }
    let deleted = v.remove_queue(&q)?;
    crate::channel::notify_cancelled(&deleted.consumers);
    Ok(Reply::NoContent)
}

pub fn purge_queue(r: &Req<'_>, vhost: &str, name: &str) -> ApiResult {
    let (_, q) = find_queue(r, vhost, name)?;
    check(r, vhost, Permission::Read, Resource::Queue, name)?;
    q.purge();
    Ok(Reply::NoContent)
}

/// `POST /api/queues/{vh}/{q}/get` with `count`, `ackmode`
/// (`ack_requeue_true|false`, `reject_requeue_true|false`), `encoding`
/// (`auto` or `base64`) and optional `truncate`.
pub fn get_messages(r: &Req<'_>, vhost: &str, name: &str) -> ApiResult {
    let body = body_object(&r.body)?;
    let (_, q) = find_queue(r, vhost, name)?;
    check(r, vhost, Permission::Read, Resource::Queue, name)?;
    let count = get_u64(&body, "count")?.unwrap_or(1).min(10_000) as usize;
    let requeue = match get_str(&body, "ackmode")? {
        Some("ack_requeue_true" | "reject_requeue_true") => true,
        Some("ack_requeue_false" | "reject_requeue_false") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!("Unknown ackmode: {other}")));
        }
        None => return Err(ApiError::bad_request("ackmode is required")),
    };
    let base64 = match get_str(&body, "encoding")? {
        Some("auto") | None => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!("Unknown encoding: {other}")));
        }
    };
    let truncate = get_u64(&body, "truncate")?.map(|t| t as usize);
    let out: Vec<Value> = q
        .api_get(count, requeue)
        .into_iter()
        .map(|(m, redelivered, remaining)| {
            let body = match truncate {
                Some(t) if t < m.body.len() => &m.body[..t],
                _ => &m.body[..],
            };
            let (payload, encoding) = match (base64, std::str::from_utf8(body)) {
                (false, Ok(s)) => (s.to_string(), "string"),
                _ => (BASE64.encode(body), "base64"),
            };
            json!({
                "payload_bytes": m.body.len(),
                "redelivered": redelivered,
                "exchange": m.exchange,
                "routing_key": m.routing_key,
                "message_count": remaining,
                "properties": super::message::properties_to_json(&m.properties),
                "payload": payload,
                "payload_encoding": encoding,
            })
        })
        .collect();
    Ok(Reply::Json(Value::Array(out)))
}

// ---- exchanges ----

pub fn list_exchanges(r: &Req<'_>, vhost: Option<&str>) -> ApiResult {
    let w = super::rates::for_broker(r.broker).window();
    let mut items = Vec::new();
    for v in vhosts_for(r, vhost)? {
        let mut xs: Vec<Arc<Exchange>> = v.exchanges.iter().map(|x| x.clone()).collect();
        xs.sort_by(|a, b| a.name.cmp(&b.name));
        items.extend(xs.iter().map(|x| exchange_json_in(&v, x, &w)));
    }
    Ok(Reply::Json(list::answer(items, &r.query)?))
}

pub fn get_exchange(r: &Req<'_>, vhost: &str, name: &str) -> ApiResult {
    let v = visible_vhost(r, vhost)?;
    let x = v
        .exchanges
        .get(name)
        .map(|x| x.clone())
        .ok_or_else(ApiError::not_found)?;
    let w = super::rates::for_broker(r.broker).window();
    Ok(Reply::Json(exchange_json_in(&v, &x, &w)))
}

pub fn put_exchange(r: &Req<'_>, vhost: &str, name: &str) -> ApiResult {
    check_name("exchange", name)?;
    let body = body_object(&r.body)?;
    let v = usable_vhost(r, vhost)?;
    let kind = get_str(&body, "type")?.unwrap_or("direct").to_string();
    if name.is_empty() || (name.starts_with("amq.") && !v.exchanges.contains_key(name)) {
        return Err(ApiError::not_authorised("Access refused."));
    }
    if crate::exchange::ExchangeKind::parse(&kind).is_none() {
        return Err(ApiError::bad_request(format!(
            "unknown exchange type '{kind}'"
        )));
    }
    check(r, vhost, Permission::Configure, Resource::Exchange, name)?;
    let arguments: FieldTable = get_table(&body, "arguments")?;
    let existed = v.exchanges.contains_key(name);
    if !existed {
        if let Some(ae) = arguments
            .inner()
            .get("alternate-exchange")
            .and_then(crate::queue::as_text)
        {
            check(r, vhost, Permission::Read, Resource::Exchange, name)?;
            check(r, vhost, Permission::Write, Resource::Exchange, &ae)?;
        }
    }
    v.declare_exchange(ExchangeSpec {
        name: name.to_string(),
        kind,
        passive: false,
        durable: get_bool(&body, "durable", false)?,
        auto_delete: get_bool(&body, "auto_delete", false)?,
        internal: get_bool(&body, "internal", false)?,
        arguments,
    })?;
    Ok(if existed {
        Reply::NoContent
    } else {
        Reply::Created(None)
    })
}

pub fn delete_exchange(r: &Req<'_>, vhost: &str, name: &str) -> ApiResult {
    let v = visible_vhost(r, vhost)?;
    if name.is_empty() || name.starts_with("amq.") {
        return Err(ApiError::not_authorised("Access refused."));
    }
    let Some(x) = v.exchanges.get(name).map(|x| x.clone()) else {
        return Err(ApiError::not_found());
    };
    check(r, vhost, Permission::Configure, Resource::Exchange, name)?;
    if query_flag(r, "if-unused") && x.has_bindings() {
        return Err(ApiError::bad_request(format!(
            "exchange '{name}' in vhost '{vhost}' in use"
        )));
    }
    v.delete_exchange(name, false)?;
    Ok(Reply::NoContent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_as_rabbitmq_writes_them() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000+00:00");
        assert_eq!(
            format_time(1_700_000_000_123),
            "2023-11-14T22:13:20.123+00:00"
        );
        assert_eq!(
            format_time(951_782_400_000),
            "2000-02-29T00:00:00.000+00:00"
        );
    }

    #[test]
    fn classic_type_is_dropped_others_kept() {
        use amq_protocol::types::AMQPValue;
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("classic".into()),
        );
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(5));
        let kept = queue_type_argument(args.clone(), Some("classic")).unwrap();
        assert_eq!(kept.inner().len(), 1);
        assert!(kept.inner().contains_key("x-max-length"));
        let quorum = queue_type_argument(FieldTable::default(), Some("quorum")).unwrap();
        assert_eq!(
            quorum.inner().get("x-queue-type"),
            Some(&AMQPValue::LongString("quorum".into()))
        );
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("stream".into()),
        );
        let stream = queue_type_argument(args, Some("classic")).unwrap();
        assert!(stream.inner().contains_key("x-queue-type"));
    }
}
