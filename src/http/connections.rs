//! AMQP connections as the management API shows them: list (all, per vhost),
//! one by name, and close (DELETE: the connection sends 320
//! CONNECTION_FORCED with the `X-Reason` header's text, or RabbitMQ's
//! "Closed via management plugin"), and the consumers of the queues.
//! Management users see their own connections only; monitoring and
//! administrators see all.

use serde_json::{json, Value};
use std::sync::Arc;

use super::auth::Level;
use super::objects::visible_vhost;
use super::reply::{table_to_json, ApiError, ApiResult, Reply};
use super::{list, Req};
use crate::broker::connections::ConnectionInfo;

fn sees(r: &Req<'_>, c: &ConnectionInfo) -> bool {
    r.caller.level() >= Some(Level::Monitoring) || c.user == r.caller.name
}

/// A connection's JSON with its socket counts and `message_stats`.
fn connection_json_with(c: &ConnectionInfo, w: &super::rates::Window) -> Value {
    let mut v = connection_json(c);
    for (k, f) in super::rates::io_fields(w, c.id, &c.io.snapshot()) {
        v[k] = f;
    }
    let id = c.id;
    v["message_stats"] =
        super::rates::msg_stats(w, &c.counters(), |s| s.connections.get(&id).map(|c| c.0));
    v
}

pub fn connection_json(c: &ConnectionInfo) -> Value {
    let (host, port) = match c.name.rsplit_once(" -> ") {
        Some((_, local)) => match local.parse::<std::net::SocketAddr>() {
            Ok(a) => (a.ip().to_string(), a.port()),
            Err(_) => (local.to_string(), 0),
        },
        None => (String::new(), 0),
    };
    json!({
        "name": c.name,
        "node": super::overview::node_name(),
        "type": "network",
        "state": "running",
        "protocol": "AMQP 0-9-1",
        "auth_mechanism": "PLAIN",
        "user": c.user,
        "user_who_performed_action": c.user,
        "vhost": c.vhost,
        "connected_at": c.connected_at,
        "host": host,
        "port": port,
        "peer_host": c.peer.ip().to_string(),
        "peer_port": c.peer.port(),
        "channels": c.channel_count(),
        "channel_max": c.channel_max,
        "frame_max": c.frame_max,
        "timeout": c.heartbeat,
        "client_properties": table_to_json(&c.client_properties),
    })
}

pub fn list_connections(r: &Req<'_>, vhost: Option<&str>) -> ApiResult {
    let w = super::rates::for_broker(r.broker).window();
    if let Some(v) = vhost {
        visible_vhost(r, v)?;
    }
    let items = r
        .broker
        .connection_list()
        .iter()
        .filter(|c| sees(r, c) && vhost.is_none_or(|v| c.vhost == v))
        .map(|c| connection_json_with(c, &w))
        .collect();
    Ok(Reply::Json(list::answer(items, &r.query)?))
}

fn find(r: &Req<'_>, name: &str) -> Result<Arc<ConnectionInfo>, ApiError> {
    r.broker
        .connection_list()
        .into_iter()
        .find(|c| c.name == name && sees(r, c))
        .ok_or_else(ApiError::not_found)
}

pub fn get_connection(r: &Req<'_>, name: &str) -> ApiResult {
    let c = find(r, name)?;
    let w = super::rates::for_broker(r.broker).window();
    Ok(Reply::Json(connection_json_with(&c, &w)))
}

pub fn close_connection(r: &Req<'_>, name: &str) -> ApiResult {
    let c = find(r, name)?;
    if !r.caller.is_admin() && c.user != r.caller.name {
        return Err(super::auth::not_allowed());
    }
    let reason = r
        .headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .unwrap_or("Closed via management plugin")
        .to_string();
    c.request_close(reason);
    Ok(Reply::NoContent)
}

/// `channel_details` of a consumer: its channel on its connection.
fn channel_details(r: &Req<'_>, c: &crate::queue::subscriber::SubscriberInfo) -> Value {
    let conn = r.broker.connections.get(&c.connection).map(|i| i.clone());
    match conn {
        Some(i) => json!({
            "number": c.channel,
            "name": format!("{} ({})", i.name, c.channel),
            "connection_name": i.name,
            "node": super::overview::node_name(),
            "peer_host": i.peer.ip().to_string(),
            "peer_port": i.peer.port(),
            "user": i.user,
        }),
        None => json!({}),
    }
}

/// `GET /api/consumers[/{vhost}]`: every consumer of the queues the caller sees.
pub fn list_consumers(r: &Req<'_>, vhost: Option<&str>) -> ApiResult {
    let mut items = Vec::new();
    for v in super::objects::vhosts_for(r, vhost)? {
        let mut queues: Vec<_> = v.queues.iter().map(|q| q.clone()).collect();
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        for q in queues {
            for c in q.consumers() {
                let mut arguments = serde_json::Map::new();
                if c.priority != 0 {
                    arguments.insert("x-priority".into(), json!(c.priority));
                }
                items.push(json!({
                    "consumer_tag": c.tag,
                    "active": true,
                    "activity_status": "up",
                    "ack_required": c.ack_required,
                    "prefetch_count": c.prefetch,
                    "exclusive": c.exclusive,
                    "arguments": arguments,
                    "consumer_timeout": r.broker.config.limits.consumer_timeout,
                    "queue": {"name": q.name, "vhost": q.vhost},
                    "channel_details": channel_details(r, &c),
                }));
            }
        }
    }
    Ok(Reply::Json(list::answer(items, &r.query)?))
}

fn channel_json(
    c: &ConnectionInfo,
    ch: &crate::broker::connections::ChannelSnapshot,
    w: &super::rates::Window,
) -> Value {
    let key = (c.id, ch.number);
    let stats = super::rates::msg_stats(w, &ch.counts, |s| s.channels.get(&key).copied());
    json!({
        "message_stats": stats,
        "number": ch.number,
        "name": format!("{} ({})", c.name, ch.number),
        "node": super::overview::node_name(),
        "connection_details": {
            "name": c.name,
            "peer_host": c.peer.ip().to_string(),
            "peer_port": c.peer.port(),
        },
        "vhost": c.vhost,
        "user": c.user,
        "user_who_performed_action": c.user,
        "state": "running",
        "consumer_count": ch.consumer_count,
        "confirm": ch.confirm,
        "prefetch_count": ch.prefetch_count,
        "global_prefetch_count": ch.global_prefetch_count,
        "messages_unacknowledged": ch.unacked,
        "messages_unconfirmed": ch.unconfirmed,
        "messages_uncommitted": 0,
        "acks_uncommitted": 0,
    })
}

/// Which channels a list shows.
#[derive(Debug, Clone, Copy)]
pub enum ChannelFilter<'a> {
    All,
    Vhost(&'a str),
    Connection(&'a str),
}

fn channel_items(r: &Req<'_>, f: ChannelFilter<'_>) -> Vec<Value> {
    let w = super::rates::for_broker(r.broker).window();
    let mut items = Vec::new();
    for c in r.broker.connection_list() {
        let wanted = match f {
            ChannelFilter::All => true,
            ChannelFilter::Vhost(v) => c.vhost == v,
            ChannelFilter::Connection(n) => c.name == n,
        };
        if wanted && sees(r, &c) {
            items.extend(
                c.channel_snapshots()
                    .iter()
                    .map(|ch| channel_json(&c, ch, &w)),
            );
        }
    }
    items
}

/// `GET /api/channels`, `/api/vhosts/{vh}/channels`, `/api/connections/{name}/channels`.
pub fn list_channels(r: &Req<'_>, f: ChannelFilter<'_>) -> ApiResult {
    match f {
        ChannelFilter::Vhost(v) => {
            visible_vhost(r, v)?;
        }
        ChannelFilter::Connection(n) => {
            find(r, n)?;
        }
        ChannelFilter::All => {}
    }
    Ok(Reply::Json(list::answer(channel_items(r, f), &r.query)?))
}

/// `GET /api/channels/{name}`.
pub fn get_channel(r: &Req<'_>, name: &str) -> ApiResult {
    channel_items(r, ChannelFilter::All)
        .into_iter()
        .find(|c| c["name"] == name)
        .map(Reply::Json)
        .ok_or_else(ApiError::not_found)
}
