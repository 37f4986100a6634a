//! The management HTTP API, compatible with RabbitMQ's `/api` (what
//! rabbitmqadmin, Flower, pyrabbit and health probes call). It sits on top of
//! the broker: it reads broker state and changes it only through the same
//! broker functions the AMQP channel methods use, so both behave alike. The
//! broker never calls into this module.
//!
//! axum serves HTTP/1.1; routing is one `match` over the decoded path segments
//! (`dispatch`), because RabbitMQ's paths carry names as percent-encoded
//! segments that may be empty (`/api/queues//` is vhost `/` for Flower) or
//! contain `%2F`, and a trailing slash is tolerated. Paths outside `/api`
//! are the embedded web UI (`ui`).

pub mod aliveness;
pub mod auth;
pub mod bindings;
pub mod connections;
pub mod definitions;
pub mod list;
pub mod message;
pub mod metrics;
pub mod objects;
pub mod overview;
pub mod policies;
pub mod prometheus;
pub mod publish;
pub mod rates;
pub mod reply;
pub mod ui;
pub mod ui_messages;
pub mod users;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{Method, Request};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::broker::Broker;
use auth::Caller;
use reply::{ApiError, ApiResult};

/// Largest request body accepted (definitions files, published messages).
const BODY_LIMIT: usize = 64 * 1024 * 1024;

/// Serve the API on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    broker: Arc<Broker>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    overview::mark_started();
    // Start sampling message rates now, not at the first request.
    rates::for_broker(&broker);
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(broker)
        .into_make_service_with_connect_info::<SocketAddr>();
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(error = %e, "management API stopped");
    }
}

/// One request: everything a handler needs.
pub struct Req<'a> {
    pub broker: &'a Arc<Broker>,
    pub caller: Caller,
    pub method: Method,
    pub query: HashMap<String, String>,
    pub headers: axum::http::HeaderMap,
    pub body: axum::body::Bytes,
}

async fn handle(
    State(broker): State<Arc<Broker>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request<Body>,
) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "bad_request",
                "request body too large",
            )
            .into_response()
        }
    };
    let Some(segments) = segments(parts.uri.path()) else {
        return ApiError::bad_request("invalid percent-encoding in path").into_response();
    };
    let query = parts
        .uri
        .query()
        .and_then(serde_urlencoded_map)
        .unwrap_or_default();
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    if seg.first() != Some(&"api") {
        // The web UI's page and files (no credentials; it logs in to /api).
        return ui::serve(&parts.method, &seg);
    }
    let caller = match auth::authenticate(&broker, &parts.headers, peer) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let req = Req {
        broker: &broker,
        caller,
        method: parts.method,
        query,
        headers: parts.headers,
        body,
    };
    match dispatch(&req, &seg[1..]).await {
        Ok(r) => r.into_response(),
        Err(e) => e.into_response(),
    }
}

fn serde_urlencoded_map(q: &str) -> Option<HashMap<String, String>> {
    let uri: axum::http::Uri = format!("/?{q}").parse().ok()?;
    axum::extract::Query::<HashMap<String, String>>::try_from_uri(&uri)
        .ok()
        .map(|axum::extract::Query(m)| m)
}

/// Split a path into percent-decoded segments. One trailing slash is
/// dropped; an empty segment stays (as a vhost it means `/`).
fn segments(path: &str) -> Option<Vec<String>> {
    let path = path.strip_prefix('/').unwrap_or(path);
    let path = path.strip_suffix('/').unwrap_or(path);
    if path.is_empty() {
        return Some(Vec::new());
    }
    path.split('/').map(percent_decode).collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encode a name for a path or `Location` (as RabbitMQ's tools do:
/// everything but unreserved characters).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// A vhost from a path segment: empty means `/` (Flower's `/api/queues//`).
pub fn vhost_name(seg: &str) -> &str {
    if seg.is_empty() {
        "/"
    } else {
        seg
    }
}

/// An exchange name from a path: `amq.default` is the default exchange.
pub fn exchange_name(seg: &str) -> &str {
    if seg == "amq.default" {
        ""
    } else {
        seg
    }
}

async fn dispatch(r: &Req<'_>, seg: &[&str]) -> ApiResult {
    use Method as M;
    let m = &r.method;
    match (m, seg) {
        (&M::GET, ["overview"]) => overview::overview(r),
        (&M::GET, ["whoami"]) => overview::whoami(r),
        (&M::GET, ["cluster-name"]) => overview::cluster_name(r),
        (&M::GET, ["nodes"]) => overview::nodes(r),
        (&M::GET, ["nodes", name]) => overview::node(r, name),
        (&M::GET, ["extensions"]) => Ok(reply::Reply::Json(serde_json::json!([]))),
        (&M::GET, ["aliveness-test", vh]) => aliveness::aliveness(r, vhost_name(vh)).await,
        (&M::GET, ["healthchecks", "node"]) | (&M::GET, ["healthchecks", "node", _]) => {
            overview::health(r, "alarms", None)
        }
        (&M::GET, ["health", "checks", check]) => overview::health(r, check, None),
        (&M::GET, ["health", "checks", check, arg]) => overview::health(r, check, Some(arg)),

        (&M::GET, ["vhosts"]) => users::list_vhosts(r),
        (&M::GET, ["vhosts", vh]) => users::get_vhost(r, vhost_name(vh)),
        (&M::PUT, ["vhosts", vh]) => users::put_vhost(r, vhost_name(vh)),
        (&M::DELETE, ["vhosts", vh]) => users::delete_vhost(r, vhost_name(vh)),
        (&M::GET, ["vhosts", vh, "permissions"]) => {
            users::list_permissions(r, Some(vhost_name(vh)), None)
        }
        (&M::GET, ["users"]) => users::list_users(r, false),
        (&M::GET, ["users", "without-permissions"]) => users::list_users(r, true),
        (&M::POST, ["users", "bulk-delete"]) => users::bulk_delete_users(r),
        (&M::GET, ["users", name]) => users::get_user(r, name),
        (&M::PUT, ["users", name]) => users::put_user(r, name),
        (&M::DELETE, ["users", name]) => users::delete_user(r, name),
        (&M::GET, ["users", name, "permissions"]) => users::list_permissions(r, None, Some(name)),
        (&M::GET, ["permissions"]) => users::list_permissions(r, None, None),
        (&M::GET, ["permissions", vh, user]) => users::get_permission(r, vhost_name(vh), user),
        (&M::PUT, ["permissions", vh, user]) => users::put_permission(r, vhost_name(vh), user),
        (&M::DELETE, ["permissions", vh, user]) => {
            users::delete_permission(r, vhost_name(vh), user)
        }
        (&M::GET, ["topic-permissions", ..]) => Ok(reply::Reply::Json(serde_json::json!([]))),

        (&M::GET, ["queues"]) => objects::list_queues(r, None),
        (&M::GET, ["queues", vh]) => objects::list_queues(r, Some(vhost_name(vh))),
        (&M::GET, ["queues", vh, q]) => objects::get_queue(r, vhost_name(vh), q),
        (&M::PUT, ["queues", vh, q]) => objects::put_queue(r, vhost_name(vh), q),
        (&M::DELETE, ["queues", vh, q]) => objects::delete_queue(r, vhost_name(vh), q),
        (&M::DELETE, ["queues", vh, q, "contents"]) => objects::purge_queue(r, vhost_name(vh), q),
        (&M::POST, ["queues", vh, q, "get"]) => objects::get_messages(r, vhost_name(vh), q),
        // Hopper-only (the web UI's browse and move; see ui_messages).
        (&M::GET, ["queues", vh, q, "browse"]) => ui_messages::browse(r, vhost_name(vh), q).await,
        (&M::POST, ["queues", vh, q, "move"]) => {
            ui_messages::move_messages(r, vhost_name(vh), q).await
        }
        (&M::GET, ["queues", vh, q, "bindings"]) => {
            bindings::list_bindings(r, vhost_name(vh), bindings::BindingFilter::Queue(q))
        }

        (&M::GET, ["exchanges"]) => objects::list_exchanges(r, None),
        (&M::GET, ["exchanges", vh]) => objects::list_exchanges(r, Some(vhost_name(vh))),
        (&M::GET, ["exchanges", vh, x]) => {
            objects::get_exchange(r, vhost_name(vh), exchange_name(x))
        }
        (&M::PUT, ["exchanges", vh, x]) => {
            objects::put_exchange(r, vhost_name(vh), exchange_name(x))
        }
        (&M::DELETE, ["exchanges", vh, x]) => {
            objects::delete_exchange(r, vhost_name(vh), exchange_name(x))
        }
        (&M::POST, ["exchanges", vh, x, "publish"]) => {
            publish::publish(r, vhost_name(vh), exchange_name(x)).await
        }
        (&M::GET, ["exchanges", vh, x, "bindings", "source"]) => bindings::list_bindings(
            r,
            vhost_name(vh),
            bindings::BindingFilter::Source(exchange_name(x)),
        ),
        (&M::GET, ["exchanges", vh, x, "bindings", "destination"]) => bindings::list_bindings(
            r,
            vhost_name(vh),
            bindings::BindingFilter::Destination(exchange_name(x)),
        ),

        (&M::GET, ["bindings"]) => bindings::list_all_bindings(r, None),
        (&M::GET, ["bindings", vh]) => bindings::list_all_bindings(r, Some(vhost_name(vh))),
        (&M::GET, ["bindings", vh, "e", src, kind @ ("q" | "e"), dst]) => bindings::list_bindings(
            r,
            vhost_name(vh),
            bindings::BindingFilter::Pair(exchange_name(src), *kind == "e", dst),
        ),
        (&M::POST, ["bindings", vh, "e", src, kind @ ("q" | "e"), dst]) => {
            bindings::create_binding(r, vhost_name(vh), exchange_name(src), *kind == "e", dst)
        }
        (&M::GET, ["bindings", vh, "e", src, kind @ ("q" | "e"), dst, props]) => {
            bindings::get_binding(
                r,
                vhost_name(vh),
                exchange_name(src),
                *kind == "e",
                dst,
                props,
            )
        }
        (&M::DELETE, ["bindings", vh, "e", src, kind @ ("q" | "e"), dst, props]) => {
            bindings::delete_binding(
                r,
                vhost_name(vh),
                exchange_name(src),
                *kind == "e",
                dst,
                props,
            )
        }

        (&M::GET, ["definitions"]) => definitions::export(r, None),
        (&M::GET, ["definitions", vh]) => definitions::export(r, Some(vhost_name(vh))),
        (&M::POST, ["definitions"]) => definitions::import(r, None),
        (&M::POST, ["definitions", vh]) => definitions::import(r, Some(vhost_name(vh))),

        (&M::GET, ["connections"]) => connections::list_connections(r, None),
        (&M::GET, ["vhosts", vh, "connections"]) => {
            connections::list_connections(r, Some(vhost_name(vh)))
        }
        (&M::GET, ["connections", name]) => connections::get_connection(r, name),
        (&M::DELETE, ["connections", name]) => connections::close_connection(r, name),
        (&M::GET, ["consumers"]) => connections::list_consumers(r, None),
        (&M::GET, ["consumers", vh]) => connections::list_consumers(r, Some(vhost_name(vh))),
        (&M::GET, ["channels"]) => connections::list_channels(r, connections::ChannelFilter::All),
        (&M::GET, ["channels", name]) => connections::get_channel(r, name),
        (&M::GET, ["connections", name, "channels"]) => {
            connections::list_channels(r, connections::ChannelFilter::Connection(name))
        }
        (&M::GET, ["vhosts", vh, "channels"]) => {
            connections::list_channels(r, connections::ChannelFilter::Vhost(vhost_name(vh)))
        }
        (&M::GET, [kind @ ("policies" | "operator-policies")]) => {
            policies::list_policies(r, policy_kind(kind), None)
        }
        (&M::GET, [kind @ ("policies" | "operator-policies"), vh]) => {
            policies::list_policies(r, policy_kind(kind), Some(vhost_name(vh)))
        }
        (&M::GET, [kind @ ("policies" | "operator-policies"), vh, name]) => {
            policies::get_policy(r, policy_kind(kind), vhost_name(vh), name)
        }
        (&M::PUT, [kind @ ("policies" | "operator-policies"), vh, name]) => {
            policies::put_policy(r, policy_kind(kind), vhost_name(vh), name)
        }
        (&M::DELETE, [kind @ ("policies" | "operator-policies"), vh, name]) => {
            policies::delete_policy(r, policy_kind(kind), vhost_name(vh), name)
        }
        (&M::GET, ["parameters" | "global-parameters"]) => overview::empty_list(r),
        (&M::GET, ["parameters", _]) => overview::empty_list(r),

        // Said plainly rather than a 404 that tools would read as "no such vhost".
        (&M::PUT | &M::DELETE, ["parameters" | "global-parameters", ..]) => Err(ApiError::new(
            axum::http::StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            "runtime parameters are not supported by Hopper yet",
        )),
        (_, _) if known_path(seg) => Err(ApiError::method_not_allowed()),
        _ => Err(ApiError::not_found()),
    }
}

fn policy_kind(seg: &str) -> crate::broker::policy::PolicyKind {
    if seg == "operator-policies" {
        crate::broker::policy::PolicyKind::Operator
    } else {
        crate::broker::policy::PolicyKind::User
    }
}

/// Whether some method is served at this path shape (for 405 vs 404).
fn known_path(seg: &[&str]) -> bool {
    matches!(
        seg.first().copied(),
        Some(
            "overview"
                | "whoami"
                | "nodes"
                | "vhosts"
                | "users"
                | "permissions"
                | "queues"
                | "exchanges"
                | "bindings"
                | "definitions"
                | "policies"
                | "operator-policies"
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments() {
        assert_eq!(
            segments("/api/queues/%2F/q").unwrap(),
            ["api", "queues", "/", "q"]
        );
        assert_eq!(segments("/api/queues//").unwrap(), ["api", "queues", ""]);
        assert_eq!(segments("/api/queues/").unwrap(), ["api", "queues"]);
        assert_eq!(
            segments("/api/queues/a%2Db").unwrap(),
            ["api", "queues", "a-b"]
        );
        assert!(segments("/api/queues/%zz").is_none());
        assert!(segments("/api/queues/%f").is_none());
        assert!(segments("/api/queues/%ff").is_none(), "not UTF-8");
        assert_eq!(percent_encode("a/b c~"), "a%2Fb%20c~");
    }
}
