//! Node-wide reads: `/api/overview`, `/api/whoami`, `/api/nodes`, the health
//! checks (`/api/aliveness-test` is `http::aliveness`). Fields are RabbitMQ's, including the ones
//! `rabbitmq_http_client` cannot do without (MANAGEMENT.md). Hopper has one
//! node; it reports a RabbitMQ-compatible `rabbitmq_version` (tools read it
//! first) and its own `product_name` / `product_version`.

use serde_json::{json, Value};
use std::sync::OnceLock;

use super::auth::{not_monitor, Level};
use super::reply::{ApiError, ApiResult, Reply};
use super::Req;

/// The RabbitMQ version whose management API this one follows.
pub const RABBITMQ_VERSION: &str = "3.13.7";
pub const PRODUCT_NAME: &str = "Hopper";

static STARTED: OnceLock<std::time::Instant> = OnceLock::new();

/// Remember when the broker started (called when the API starts serving).
pub fn mark_started() {
    STARTED.get_or_init(std::time::Instant::now);
}

fn uptime_ms() -> u64 {
    STARTED
        .get()
        .map(|s| s.elapsed().as_millis() as u64)
        .unwrap_or(0)
}

pub fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!("hopper@{host}")
}

fn listeners(r: &Req<'_>) -> Vec<Value> {
    let node = node_name();
    r.broker
        .listeners()
        .iter()
        .map(|(protocol, a)| {
            json!({"node": node, "protocol": protocol, "ip_address": a.ip().to_string(), "port": a.port()})
        })
        .collect()
}

fn rate(n: f64) -> Value {
    json!({ "rate": n })
}

pub fn overview(r: &Req<'_>) -> ApiResult {
    let b = r.broker;
    let (mut queues, mut exchanges, mut consumers) = (0u64, 0u64, 0u64);
    let (mut ready, mut unacked, mut paged) = (0u64, 0u64, 0u64);
    for v in b.vhosts.iter() {
        if !r.caller.may_see_vhost(b, &v.name) {
            continue;
        }
        exchanges += v.exchanges.len() as u64;
        for q in v.queues.iter() {
            queues += 1;
            let s = q.stats();
            ready += s.ready;
            unacked += s.unacked;
            consumers += s.consumers;
            paged += s.paged_out_bytes;
        }
    }
    let w = super::rates::for_broker(b).window();
    // Totals are broker-wide (RabbitMQ's overview counts them per vhost the
    // caller sees; one vhost is the common case).
    let totals = b.message_totals();
    let message_stats = super::rates::msg_stats(&w, &totals, |s| Some(s.totals));
    let churn = super::rates::churn_rates(&w, b);
    let store = super::rates::store_stats(&w, b.store.stats().as_ref(), paged);
    let depth_rate = |f: fn(&super::rates::Sample) -> u64| {
        if w.secs > 0.0 {
            (f(&w.last) as f64 - f(&w.prev) as f64) / w.secs
        } else {
            0.0
        }
    };
    let node = b
        .config
        .cluster
        .as_ref()
        .map_or_else(node_name, |c| c.node_name());
    let cluster_name = b
        .config
        .cluster
        .as_ref()
        .map_or_else(|| node.clone(), |c| c.cluster_name());
    let conns: Vec<_> = b
        .connection_list()
        .into_iter()
        .filter(|c| r.caller.sees_all() || c.user == r.caller.name)
        .collect();
    Ok(Reply::Json(json!({
        "management_version": RABBITMQ_VERSION,
        "rates_mode": "basic",
        "exchange_types": [
            {"name": "direct", "description": "AMQP direct exchange, as per the AMQP specification", "enabled": true},
            {"name": "fanout", "description": "AMQP fanout exchange, as per the AMQP specification", "enabled": true},
            {"name": "headers", "description": "AMQP headers exchange, as per the AMQP specification", "enabled": true},
            {"name": "topic", "description": "AMQP topic exchange, as per the AMQP specification", "enabled": true},
        ],
        "product_version": env!("CARGO_PKG_VERSION"),
        "product_name": PRODUCT_NAME,
        "rabbitmq_version": RABBITMQ_VERSION,
        "cluster_name": cluster_name,
        "erlang_version": "none",
        "erlang_full_version": "none (Hopper is written in Rust)",
        "release_series_support_status": "supported",
        "disable_stats": false,
        "enable_queue_totals": true,
        "is_op_policy_updating_enabled": true,
        "statistics_db_event_queue": 0,
        "node": node,
        "churn_rates": churn,
        "message_stats": message_stats,
        "store_stats": store,
        "queue_totals": {
            "messages": ready + unacked,
            "messages_details": rate(depth_rate(|s| s.ready + s.unacked)),
            "messages_ready": ready,
            "messages_ready_details": rate(depth_rate(|s| s.ready)),
            "messages_unacknowledged": unacked,
            "messages_unacknowledged_details": rate(depth_rate(|s| s.unacked)),
        },
        "object_totals": {
            "channels": conns.iter().map(|c| c.channel_count()).sum::<usize>(),
            "connections": conns.len(),
            "consumers": consumers,
            "exchanges": exchanges,
            "queues": queues,
        },
        "listeners": listeners(r),
        "contexts": r.broker.listeners().iter().filter(|(p, _)| *p == "http").map(|(_, a)| {
            json!({"node": node, "description": "RabbitMQ Management", "path": "/", "port": a.port().to_string()})
        }).collect::<Vec<_>>(),
    })))
}

pub fn whoami(r: &Req<'_>) -> ApiResult {
    Ok(Reply::Json(json!({
        "name": r.caller.name,
        "tags": r.caller.tags,
        "is_internal_user": true,
    })))
}

pub fn cluster_name(r: &Req<'_>) -> ApiResult {
    let name = r
        .broker
        .config
        .cluster
        .as_ref()
        .map_or_else(node_name, |c| c.cluster_name());
    Ok(Reply::Json(json!({ "name": name })))
}

fn node_json(r: &Req<'_>) -> Value {
    let b = r.broker;
    let alarms = b.alarms();
    let c = &b.config;
    let (fd_used, fd_total) = fds();
    json!({
        "name": node_name(),
        "type": "disc",
        "running": true,
        "being_drained": false,
        "uptime": uptime_ms(),
        "run_queue": 0,
        "processors": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "os_pid": std::process::id().to_string(),
        "fd_used": fd_used,
        "fd_total": fd_total,
        "sockets_used": b.live_connection_count(),
        "sockets_total": fd_total,
        "proc_used": 0,
        "proc_total": 1048576,
        "mem_used": b.vhosts.iter().map(|v| v.queues.iter().map(|q| q.memory()).sum::<usize>()).sum::<usize>(),
        "mem_limit": c.limits.memory_high_watermark,
        "mem_alarm": alarms.memory,
        "disk_free_limit": c.limits.disk_free_limit,
        "disk_free_alarm": alarms.disk,
        "rates_mode": "basic",
        "enabled_plugins": ["rabbitmq_management"],
        "applications": [
            {"name": "rabbit", "description": "RabbitMQ (Hopper)", "version": RABBITMQ_VERSION},
            {"name": "rabbitmq_management", "description": "RabbitMQ Management Console (Hopper)", "version": RABBITMQ_VERSION},
        ],
        "partitions": [],
        "net_ticktime": 60,
    })
}

/// Open and allowed file descriptors of this process (Linux; zeros elsewhere).
pub fn fds() -> (u64, u64) {
    let used = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    let total = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(1024);
    (used, total)
}

pub fn nodes(r: &Req<'_>) -> ApiResult {
    if r.caller.level() < Some(Level::Monitoring) {
        return Err(not_monitor());
    }
    Ok(Reply::Json(json!([node_json(r)])))
}

pub fn node(r: &Req<'_>, name: &str) -> ApiResult {
    if r.caller.level() < Some(Level::Monitoring) {
        return Err(not_monitor());
    }
    if name != node_name() {
        return Err(ApiError::not_found());
    }
    Ok(Reply::Json(node_json(r)))
}

/// A failed health check: 503 `{"status":"failed","reason":...}`.
fn failed(reason: impl Into<String>, extra: Option<(&str, Value)>) -> ApiError {
    let reason = reason.into();
    let mut body = json!({"status": "failed", "reason": reason});
    if let Some((k, v)) = extra {
        body[k] = v;
    }
    let mut e = ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "failed",
        reason,
    );
    e.body = Some(body);
    e
}

/// A health check: 200 `{"status":"ok"}` or 503 `{"status":"failed", ...}`.
pub fn health(r: &Req<'_>, check: &str, arg: Option<&str>) -> ApiResult {
    let b = r.broker;
    let ok = || Ok(Reply::Json(json!({"status": "ok"})));
    match (check, arg) {
        ("alarms" | "local-alarms", None) => {
            let a = b.alarms();
            if !a.any() {
                return ok();
            }
            let node = node_name();
            let mut list = Vec::new();
            if a.memory {
                list.push(json!({"node": node, "resource": "memory"}));
            }
            if a.disk {
                list.push(json!({"node": node, "resource": "disk"}));
            }
            Err(failed(
                "resource alarm(s) in effect in the cluster",
                Some(("alarms", Value::Array(list))),
            ))
        }
        ("port-listener", Some(port)) => {
            let Ok(port) = port.parse::<u16>() else {
                return Err(ApiError::bad_request(format!("invalid port {port}")));
            };
            if listeners(r).iter().any(|l| l["port"] == port) {
                ok()
            } else {
                Err(failed(format!("No active listener on port {port}"), None))
            }
        }
        ("protocol-listener", Some(proto)) => {
            let wanted = match proto {
                "amqp" | "amqp091" | "amqp0.9.1" | "amqp0-9-1" => "amqp",
                "amqps" | "amqp/ssl" => "amqp/ssl",
                "http" | "management" => "http",
                other => other,
            };
            if listeners(r).iter().any(|l| l["protocol"] == wanted) {
                ok()
            } else {
                Err(failed(
                    format!("No active listener for protocol {proto}"),
                    None,
                ))
            }
        }
        ("virtual-hosts", None)
        | ("is-in-service", None)
        | ("ready-to-serve-clients", None)
        | ("node-is-quorum-critical", None)
        | ("node-is-mirror-sync-critical", None)
        | ("certificate-expiration", _) => ok(),
        _ => Err(ApiError::not_found()),
    }
}

/// Lists Hopper does not track yet answer empty.
pub fn empty_list(r: &Req<'_>) -> ApiResult {
    Ok(Reply::Json(super::list::answer(Vec::new(), &r.query)?))
}
