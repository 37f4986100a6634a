//! `/api/policies` and `/api/operator-policies`: list, show, create or
//! replace (201 / 204), delete, with RabbitMQ's rights (policymaker or
//! administrator for policies in vhosts they have permissions in;
//! administrator alone for operator policies) and its validation texts.
//! Validating, storing and applying belong to `broker::policy`.

use serde_json::Value;

use super::reply::{body_object, check_name, ApiError, ApiResult, Reply};
use super::{list, Req};
use crate::broker::policy::{self, PolicyKind};

fn no_object_access() -> ApiError {
    ApiError::not_authorised("User not authorised to access object")
}

/// May the caller read or change this kind of policy in `vhost`?
fn allowed(r: &Req<'_>, kind: PolicyKind, vhost: &str, change: bool) -> Result<(), ApiError> {
    match kind {
        PolicyKind::Operator if !r.caller.is_admin() => Err(super::auth::not_allowed()),
        PolicyKind::Operator => Ok(()),
        PolicyKind::User => {
            if (change && !r.caller.may_set_policies()) || !r.caller.may_use_vhost(r.broker, vhost)
            {
                return Err(no_object_access());
            }
            Ok(())
        }
    }
}

/// GET `/api/policies[/{vhost}]` (and operator policies): the policies in
/// the vhosts the caller has permissions in (all for administrators); a
/// vhost the caller has none in answers 401, as RabbitMQ 3.10 does.
pub fn list_policies(r: &Req<'_>, kind: PolicyKind, vhost: Option<&str>) -> ApiResult {
    let names = match vhost {
        Some(v) => {
            if r.broker.vhost(v).is_none() {
                return Err(ApiError::not_found());
            }
            if !r.caller.may_use_vhost(r.broker, v) {
                return Err(ApiError::not_authorised(
                    "User not authorised to access virtual host",
                ));
            }
            vec![v.to_string()]
        }
        None => r.broker.vhost_names(),
    };
    let mut items: Vec<Value> = Vec::new();
    for name in names {
        if !r.caller.may_use_vhost(r.broker, &name) {
            continue;
        }
        if let Some(v) = r.broker.vhost(&name) {
            items.extend(v.policies.all(kind).iter().map(|p| p.to_json()));
        }
    }
    Ok(Reply::Json(list::answer(items, &r.query)?))
}

pub fn get_policy(r: &Req<'_>, kind: PolicyKind, vhost: &str, name: &str) -> ApiResult {
    let v = r.broker.vhost(vhost).ok_or_else(ApiError::not_found)?;
    allowed(r, kind, vhost, true)?;
    let p = v.policies.get(kind, name).ok_or_else(ApiError::not_found)?;
    Ok(Reply::Json(p.to_json()))
}

/// RabbitMQ's management API HTML-escapes the angle brackets of Erlang
/// binaries in a policy's validation reason (not an operator policy's).
fn escaped(kind: PolicyKind, reason: String) -> String {
    match kind {
        PolicyKind::User => reason.replace('<', "&lt;").replace('>', "&gt;"),
        PolicyKind::Operator => reason,
    }
}

pub fn put_policy(r: &Req<'_>, kind: PolicyKind, vhost: &str, name: &str) -> ApiResult {
    check_name("policy", name)?;
    if r.broker.vhost(vhost).is_none() {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "not_found",
            "vhost_not_found",
        ));
    }
    allowed(r, kind, vhost, true)?;
    let body = body_object(&r.body)?;
    let p = policy::parse(kind, vhost, name, &body)
        .map_err(|e| ApiError::bad_request(escaped(kind, e)))?;
    match r.broker.put_policy(kind, p) {
        Ok(Some(true)) => Ok(Reply::Created(None)),
        Ok(Some(false)) => Ok(Reply::NoContent),
        Ok(None) => Err(ApiError::not_found()),
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}

pub fn delete_policy(r: &Req<'_>, kind: PolicyKind, vhost: &str, name: &str) -> ApiResult {
    if r.broker.vhost(vhost).is_none() {
        return Err(ApiError::not_found());
    }
    allowed(r, kind, vhost, true)?;
    match r.broker.delete_policy(kind, vhost, name) {
        Ok(true) => Ok(Reply::NoContent),
        Ok(false) => Err(ApiError::not_found()),
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}
