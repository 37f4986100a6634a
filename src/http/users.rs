//! Users, vhosts and permissions: list, show, create or change (PUT), delete.
//! Changes go through the broker (`broker::users`), which writes them to the
//! store first, so they survive restarts. Only administrators change them;
//! others see themselves, and the vhosts they may use.

use serde_json::{json, Map, Value};

use super::auth::not_allowed;
use super::objects::visible_vhost;
use super::reply::{body_object, check_name, get_str, ApiError, ApiResult, Reply};
use super::{list, Req};
use crate::auth::hashing::{HashingAlgorithm, PasswordHash};
use crate::auth::permissions::{Pattern, VhostPermissions};
use crate::auth::UserInfo;
use crate::store::StoreError;

fn store_failed(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "store write failed");
    ApiError::internal(format!("store write failed: {e}"))
}

fn admin(r: &Req<'_>) -> Result<(), ApiError> {
    if r.caller.is_admin() {
        Ok(())
    } else {
        Err(not_allowed())
    }
}

// ---- vhosts ----

fn vhost_json(r: &Req<'_>, name: &str) -> Value {
    let (mut ready, mut unacked) = (0u64, 0u64);
    if let Some(v) = r.broker.vhost(name) {
        for q in v.queues.iter() {
            let s = q.stats();
            ready += s.ready;
            unacked += s.unacked;
        }
    }
    let description = if name == "/" {
        "Default virtual host"
    } else {
        ""
    };
    json!({
        "name": name,
        "description": description,
        "tags": [],
        "default_queue_type": "classic",
        "metadata": {"description": description, "tags": []},
        "tracing": false,
        "cluster_state": {super::overview::node_name(): "running"},
        "messages": ready + unacked,
        "messages_details": {"rate": 0.0},
        "messages_ready": ready,
        "messages_ready_details": {"rate": 0.0},
        "messages_unacknowledged": unacked,
        "messages_unacknowledged_details": {"rate": 0.0},
    })
}

pub fn list_vhosts(r: &Req<'_>) -> ApiResult {
    let items = r
        .broker
        .vhost_names()
        .iter()
        .filter(|v| r.caller.may_see_vhost(r.broker, v))
        .map(|v| vhost_json(r, v))
        .collect();
    Ok(Reply::Json(list::answer(items, &r.query)?))
}

pub fn get_vhost(r: &Req<'_>, name: &str) -> ApiResult {
    visible_vhost(r, name)?;
    Ok(Reply::Json(vhost_json(r, name)))
}

pub fn put_vhost(r: &Req<'_>, name: &str) -> ApiResult {
    admin(r)?;
    check_name("vhost", name)?;
    body_object(&r.body)?;
    if name.contains('\u{0}') {
        return Err(ApiError::bad_request("vhost name contains NUL"));
    }
    let created = r.broker.add_vhost(name).map_err(store_failed)?;
    Ok(if created {
        Reply::Created(None)
    } else {
        Reply::NoContent
    })
}

pub fn delete_vhost(r: &Req<'_>, name: &str) -> ApiResult {
    admin(r)?;
    match r.broker.delete_vhost(name)? {
        None => Err(ApiError::not_found()),
        Some(deleted) => {
            for d in deleted {
                crate::channel::notify_cancelled(&d.consumers);
            }
            Ok(Reply::NoContent)
        }
    }
}

// ---- users ----

fn user_json(u: &UserInfo) -> Value {
    json!({
        "name": u.name,
        "password_hash": u.hash.encode(),
        "hashing_algorithm": u.hash.algorithm().name(),
        "tags": u.tags,
        "limits": {},
    })
}

pub fn list_users(r: &Req<'_>, without_permissions: bool) -> ApiResult {
    admin(r)?;
    let vhosts = r.broker.vhost_names();
    let with: std::collections::HashSet<String> = r
        .broker
        .access
        .permissions(&vhosts)
        .into_iter()
        .map(|(u, _)| u)
        .collect();
    let items = r
        .broker
        .access
        .users()
        .iter()
        .filter(|u| !without_permissions || !with.contains(&u.name))
        .map(user_json)
        .collect();
    Ok(Reply::Json(list::answer(items, &r.query)?))
}

pub fn get_user(r: &Req<'_>, name: &str) -> ApiResult {
    admin(r)?;
    let u = r.broker.access.user(name).ok_or_else(ApiError::not_found)?;
    Ok(Reply::Json(user_json(&u)))
}

/// Tags as RabbitMQ takes them: a comma-separated string or an array.
fn parse_tags(m: &Map<String, Value>) -> Result<Option<Vec<String>>, ApiError> {
    match m.get("tags") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(
            s.split([',', ' '])
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
        )),
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::bad_request("tags must be strings"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(ApiError::bad_request("tags must be a string or an array")),
    }
}

/// Create or change a user: `password` (hashed here) or `password_hash`
/// (with an optional `hashing_algorithm`; without one it follows from the
/// hash's length, as rabbitmqadmin v2 sends it), and `tags`.
pub fn put_user(r: &Req<'_>, name: &str) -> ApiResult {
    admin(r)?;
    check_name("user", name)?;
    if name.is_empty() || name.contains('\u{0}') {
        return Err(ApiError::bad_request("invalid user name"));
    }
    let body = body_object(&r.body)?;
    let existing = r.broker.access.user(name);
    let tags = parse_tags(&body)?
        .or_else(|| existing.as_ref().map(|u| u.tags.clone()))
        .unwrap_or_default();
    let algorithm = match get_str(&body, "hashing_algorithm")? {
        None | Some("rabbit_password_hashing_sha256") => HashingAlgorithm::Sha256,
        Some("rabbit_password_hashing_sha512") => HashingAlgorithm::Sha512,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unsupported hashing algorithm {other}"
            )))
        }
    };
    let hash = match (
        get_str(&body, "password")?,
        get_str(&body, "password_hash")?,
    ) {
        (Some(p), _) => PasswordHash::new(p.as_bytes(), algorithm),
        (None, Some("")) => PasswordHash::new(&rand::random::<[u8; 32]>(), algorithm),
        (None, Some(h)) => PasswordHash::parse(h)
            .map_err(|e| ApiError::bad_request(format!("invalid password_hash: {e}")))?,
        // No password: keep the old one, or make one nobody knows (RabbitMQ
        // creates such users too; they can log in by other means only).
        (None, None) => match &existing {
            Some(u) => u.hash.clone(),
            None => PasswordHash::new(&rand::random::<[u8; 32]>(), algorithm),
        },
    };
    let created = r.broker.put_user(name, hash, tags).map_err(store_failed)?;
    Ok(if created {
        Reply::Created(None)
    } else {
        Reply::NoContent
    })
}

pub fn delete_user(r: &Req<'_>, name: &str) -> ApiResult {
    admin(r)?;
    if r.broker.access.user(name).is_none() {
        return Err(ApiError::not_found());
    }
    r.broker.delete_user(name).map_err(store_failed)?;
    Ok(Reply::NoContent)
}

/// `POST /api/users/bulk-delete` with `{"users": [...]}`.
pub fn bulk_delete_users(r: &Req<'_>) -> ApiResult {
    admin(r)?;
    let body = body_object(&r.body)?;
    let Some(Value::Array(names)) = body.get("users") else {
        return Err(ApiError::bad_request("users must be an array"));
    };
    for n in names.iter().filter_map(Value::as_str) {
        r.broker.delete_user(n).map_err(store_failed)?;
    }
    Ok(Reply::NoContent)
}

// ---- permissions ----

fn permission_json(user: &str, p: &VhostPermissions) -> Value {
    json!({
        "user": user,
        "vhost": p.vhost,
        "configure": p.configure.as_str(),
        "write": p.write.as_str(),
        "read": p.read.as_str(),
    })
}

pub fn list_permissions(r: &Req<'_>, vhost: Option<&str>, user: Option<&str>) -> ApiResult {
    admin(r)?;
    if let Some(v) = vhost {
        visible_vhost(r, v)?;
    }
    if let Some(u) = user {
        r.broker.access.user(u).ok_or_else(ApiError::not_found)?;
    }
    let items = r
        .broker
        .access
        .permissions(&r.broker.vhost_names())
        .iter()
        .filter(|(u, p)| vhost.is_none_or(|v| p.vhost == v) && user.is_none_or(|w| u == w))
        .map(|(u, p)| permission_json(u, p))
        .collect();
    Ok(Reply::Json(list::answer(items, &r.query)?))
}

pub fn get_permission(r: &Req<'_>, vhost: &str, user: &str) -> ApiResult {
    admin(r)?;
    r.broker
        .access
        .permissions(&r.broker.vhost_names())
        .iter()
        .find(|(u, p)| u == user && p.vhost == vhost)
        .map(|(u, p)| Reply::Json(permission_json(u, p)))
        .ok_or_else(ApiError::not_found)
}

pub fn put_permission(r: &Req<'_>, vhost: &str, user: &str) -> ApiResult {
    admin(r)?;
    let body = body_object(&r.body)?;
    if r.broker.vhost(vhost).is_none() || r.broker.access.user(user).is_none() {
        return Err(ApiError::bad_request("vhost_or_user_not_found"));
    }
    let pattern = |k: &str| -> Result<Pattern, ApiError> {
        let text = get_str(&body, k)?.unwrap_or("");
        Pattern::new(text).map_err(|e| ApiError::bad_request(format!("invalid_regexp: {e}")))
    };
    let p = VhostPermissions {
        vhost: vhost.to_string(),
        configure: pattern("configure")?,
        write: pattern("write")?,
        read: pattern("read")?,
    };
    let existed = r
        .broker
        .access
        .permissions(&r.broker.vhost_names())
        .iter()
        .any(|(u, q)| u == user && q.vhost == vhost);
    if !r.broker.set_permissions(user, p).map_err(store_failed)? {
        return Err(ApiError::bad_request("vhost_or_user_not_found"));
    }
    Ok(if existed {
        Reply::NoContent
    } else {
        Reply::Created(None)
    })
}

pub fn delete_permission(r: &Req<'_>, vhost: &str, user: &str) -> ApiResult {
    admin(r)?;
    if !r
        .broker
        .clear_permissions(user, vhost)
        .map_err(store_failed)?
    {
        return Err(ApiError::not_found());
    }
    Ok(Reply::NoContent)
}
