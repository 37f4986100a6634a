//! Bindings: list (all, per vhost, per queue, per exchange as source or
//! destination, per source/destination pair), create (201 with a `Location`
//! naming the binding's `properties_key`) and delete by `properties_key`.
//! Binding and unbinding go through `VHost::bind` / `VHost::unbind` with the
//! AMQP permission checks (write on the destination, read on the source).

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;

use super::objects::{check, vhosts_for, visible_vhost, API_CONN};
use super::reply::{
    body_object, check_name, get_str, get_table, table_to_json, ApiError, ApiResult, Reply,
};
use super::{list, percent_encode, Req};
use crate::auth::{Permission, Resource};
use crate::broker::VHost;
use crate::exchange::Destination;
use amq_protocol::types::FieldTable;

/// Which bindings a list shows.
#[derive(Debug, Clone, Copy)]
pub enum BindingFilter<'a> {
    /// Bindings to this queue (the default exchange's included).
    Queue(&'a str),
    /// Bindings from this exchange.
    Source(&'a str),
    /// Bindings to this exchange.
    Destination(&'a str),
    /// From an exchange to a queue (false) or exchange (true).
    Pair(&'a str, bool, &'a str),
}

/// The key that names a binding among those between the same two ends:
/// RabbitMQ's form, the routing key (`~` when empty) and, with arguments, a
/// hash of them after a `~`.
pub fn properties_key(routing_key: &str, args: &FieldTable) -> String {
    let key = if routing_key.is_empty() {
        "~".to_string()
    } else {
        routing_key.replace('%', "%25").replace('~', "%7E")
    };
    if args.inner().is_empty() {
        return key;
    }
    let text = serde_json::to_vec(&table_to_json(args)).unwrap_or_default();
    let digest = Sha256::digest(&text);
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    if routing_key.is_empty() {
        format!("~{hash}")
    } else {
        format!("{key}~{hash}")
    }
}

fn binding_json(
    vhost: &str,
    source: &str,
    dest: &str,
    to_exchange: bool,
    key: &str,
    args: &FieldTable,
) -> Value {
    json!({
        "source": source,
        "vhost": vhost,
        "destination": dest,
        "destination_type": if to_exchange { "exchange" } else { "queue" },
        "routing_key": key,
        "arguments": table_to_json(args),
        "properties_key": properties_key(key, args),
    })
}

/// Every binding of a vhost, the default exchange's first (as RabbitMQ lists them).
fn all_in(v: &VHost) -> Vec<Value> {
    let mut out = Vec::new();
    let mut queues: Vec<String> = v.queues.iter().map(|q| q.name.clone()).collect();
    queues.sort();
    for q in &queues {
        out.push(binding_json(
            &v.name,
            "",
            q,
            false,
            q,
            &FieldTable::default(),
        ));
    }
    let mut xs: Vec<_> = v.exchanges.iter().map(|x| x.clone()).collect();
    xs.sort_by(|a, b| a.name.cmp(&b.name));
    for x in xs {
        for b in x.bindings() {
            let (dest, to_x) = match &b.dest {
                Destination::Queue(q) => (q.name.clone(), false),
                Destination::Exchange(e) => (e.name.clone(), true),
            };
            out.push(binding_json(
                &v.name,
                &x.name,
                &dest,
                to_x,
                &b.routing_key,
                &b.arguments,
            ));
        }
    }
    out
}

pub fn list_all_bindings(r: &Req<'_>, vhost: Option<&str>) -> ApiResult {
    let mut items = Vec::new();
    for v in vhosts_for(r, vhost)? {
        items.extend(all_in(&v));
    }
    Ok(Reply::Json(list::answer(items, &r.query)?))
}

pub fn list_bindings(r: &Req<'_>, vhost: &str, f: BindingFilter<'_>) -> ApiResult {
    let v = visible_vhost(r, vhost)?;
    match f {
        BindingFilter::Queue(q) if !v.queues.contains_key(q) => return Err(ApiError::not_found()),
        BindingFilter::Source(x) | BindingFilter::Destination(x)
            if !v.exchanges.contains_key(x) =>
        {
            return Err(ApiError::not_found())
        }
        BindingFilter::Pair(src, to_x, dst) => {
            let dst_exists = if to_x {
                v.exchanges.contains_key(dst)
            } else {
                v.queues.contains_key(dst)
            };
            if !v.exchanges.contains_key(src) || !dst_exists {
                return Err(ApiError::not_found());
            }
        }
        _ => {}
    }
    let items: Vec<Value> = all_in(&v)
        .into_iter()
        .filter(|b| {
            let s = b["source"].as_str().unwrap_or_default();
            let d = b["destination"].as_str().unwrap_or_default();
            let to_x = b["destination_type"] == "exchange";
            match f {
                BindingFilter::Queue(q) => !to_x && d == q,
                BindingFilter::Source(x) => s == x && !s.is_empty(),
                BindingFilter::Destination(x) => to_x && d == x,
                BindingFilter::Pair(src, want_x, dst) => s == src && to_x == want_x && d == dst,
            }
        })
        .collect();
    Ok(Reply::Json(list::answer(items, &r.query)?))
}

fn missing(what: &str, name: &str, vhost: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "not_found",
        format!("no {what} '{name}' in vhost '{vhost}'"),
    )
}

/// Both ends must exist (404 naming the missing one, as RabbitMQ does).
fn ends(v: &Arc<VHost>, source: &str, to_exchange: bool, dest: &str) -> Result<(), ApiError> {
    if !v.exchanges.contains_key(source) {
        return Err(missing("exchange", source, &v.name));
    }
    let exists = if to_exchange {
        v.exchanges.contains_key(dest)
    } else {
        v.queues.contains_key(dest)
    };
    if !exists {
        return Err(missing(
            if to_exchange { "exchange" } else { "queue" },
            dest,
            &v.name,
        ));
    }
    Ok(())
}

fn access(
    r: &Req<'_>,
    vhost: &str,
    source: &str,
    to_exchange: bool,
    dest: &str,
) -> Result<(), ApiError> {
    let kind = if to_exchange {
        Resource::Exchange
    } else {
        Resource::Queue
    };
    check(r, vhost, Permission::Write, kind, dest)?;
    check(r, vhost, Permission::Read, Resource::Exchange, source)
}

pub fn create_binding(
    r: &Req<'_>,
    vhost: &str,
    source: &str,
    to_exchange: bool,
    dest: &str,
) -> ApiResult {
    check_name("exchange", source)?;
    check_name("destination", dest)?;
    let body = body_object(&r.body)?;
    let v = visible_vhost(r, vhost)?;
    ends(&v, source, to_exchange, dest)?;
    access(r, vhost, source, to_exchange, dest)?;
    let key = get_str(&body, "routing_key")?.unwrap_or("").to_string();
    check_name("routing key", &key)?;
    let args = get_table(&body, "arguments")?;
    let props = properties_key(&key, &args);
    v.bind(dest, to_exchange, source, &key, args, API_CONN)?;
    Ok(Reply::Created(Some(format!(
        "{}/{}",
        percent_encode(dest),
        percent_encode(&props)
    ))))
}

/// The binding between two ends with this properties key.
fn find(
    v: &VHost,
    source: &str,
    to_exchange: bool,
    dest: &str,
    props: &str,
) -> Option<(String, FieldTable)> {
    let x = v.exchanges.get(source)?.clone();
    x.bindings().into_iter().find_map(|b| {
        let same_dest = match &b.dest {
            Destination::Queue(q) => !to_exchange && q.name == dest,
            Destination::Exchange(e) => to_exchange && e.name == dest,
        };
        (same_dest && properties_key(&b.routing_key, &b.arguments) == props)
            .then_some((b.routing_key, b.arguments))
    })
}

pub fn get_binding(
    r: &Req<'_>,
    vhost: &str,
    source: &str,
    to_exchange: bool,
    dest: &str,
    props: &str,
) -> ApiResult {
    let v = visible_vhost(r, vhost)?;
    let (key, args) = find(&v, source, to_exchange, dest, props).ok_or_else(ApiError::not_found)?;
    Ok(Reply::Json(binding_json(
        vhost,
        source,
        dest,
        to_exchange,
        &key,
        &args,
    )))
}

pub fn delete_binding(
    r: &Req<'_>,
    vhost: &str,
    source: &str,
    to_exchange: bool,
    dest: &str,
    props: &str,
) -> ApiResult {
    let v = visible_vhost(r, vhost)?;
    let (key, args) = find(&v, source, to_exchange, dest, props).ok_or_else(ApiError::not_found)?;
    access(r, vhost, source, to_exchange, dest)?;
    v.unbind(dest, to_exchange, source, &key, args, API_CONN)?;
    Ok(Reply::NoContent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_keys() {
        let none = FieldTable::default();
        assert_eq!(properties_key("", &none), "~");
        assert_eq!(properties_key("a.b", &none), "a.b");
        assert_eq!(properties_key("a~b%", &none), "a%7Eb%25");
        let mut args = FieldTable::default();
        args.insert("x".into(), amq_protocol::types::AMQPValue::LongLongInt(1));
        let k = properties_key("k", &args);
        assert!(k.starts_with("k~") && k.len() == 2 + 16, "{k}");
        assert_ne!(k, properties_key("k", &none));
    }
}
