//! Who is calling the management API: HTTP Basic credentials checked against
//! the broker's users (the same hashes as AMQP, the same loopback-only rule),
//! and what their tags allow, with RabbitMQ's 401 answers and texts. Objects in
//! a vhost the user cannot see are reported missing (404), never forbidden.

use axum::http::{header, HeaderMap, StatusCode};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use std::net::SocketAddr;

use super::reply::ApiError;
use crate::broker::Broker;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub tags: Vec<String>,
}

/// What a user's tags let them do (RabbitMQ's management rights).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// `management`: their own vhosts.
    Management,
    /// `policymaker`: + policies and parameters in their vhosts.
    Policymaker,
    /// `monitoring`: + every vhost read-only, all connections, nodes.
    Monitoring,
    /// `administrator`: everything.
    Administrator,
}

impl Caller {
    fn has(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    /// The highest level among the caller's tags; None without any
    /// management tag.
    pub fn level(&self) -> Option<Level> {
        if self.has("administrator") {
            Some(Level::Administrator)
        } else if self.has("monitoring") {
            Some(Level::Monitoring)
        } else if self.has("policymaker") {
            Some(Level::Policymaker)
        } else if self.has("management") {
            Some(Level::Management)
        } else {
            None
        }
    }

    pub fn is_admin(&self) -> bool {
        self.level() == Some(Level::Administrator)
    }

    /// Monitoring and administrators see every vhost.
    pub fn sees_all(&self) -> bool {
        self.level() >= Some(Level::Monitoring)
    }

    /// Policymaker and administrator may change policies (in vhosts they see).
    pub fn may_set_policies(&self) -> bool {
        matches!(
            self.level(),
            Some(Level::Policymaker | Level::Administrator)
        )
    }

    /// Whether the caller can see objects in `vhost` (reading).
    pub fn may_see_vhost(&self, broker: &Broker, vhost: &str) -> bool {
        self.sees_all() || broker.access.may_open_vhost(&self.name, vhost)
    }

    /// Whether the caller can change objects in `vhost`: administrators
    /// everywhere, others where they have permissions (then the AMQP
    /// permission patterns apply, as RabbitMQ checks them).
    pub fn may_use_vhost(&self, broker: &Broker, vhost: &str) -> bool {
        broker.access.may_open_vhost(&self.name, vhost)
            || (self.is_admin() && broker.vhost(vhost).is_some())
    }
}

/// 401 for an administrator-only (or monitoring-only) operation.
pub fn not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "not_authorised",
        "Not administrator user",
    )
}

pub fn not_monitor() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "not_authorised",
        "Not monitor user",
    )
}

/// Check the `Authorization` header.
pub fn authenticate(
    broker: &Broker,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Caller, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        let mut e = ApiError::new(StatusCode::UNAUTHORIZED, "not_authorized", "Not_Authorized");
        e.challenge = true;
        return Err(e);
    };
    let wrong = || ApiError::new(StatusCode::UNAUTHORIZED, "not_authorized", "Not_Authorized");
    let text = value.to_str().map_err(|_| wrong())?;
    let Some(encoded) = text
        .strip_prefix("Basic ")
        .or_else(|| text.strip_prefix("basic "))
    else {
        return Err(wrong());
    };
    let decoded = BASE64.decode(encoded.trim()).map_err(|_| wrong())?;
    let decoded = String::from_utf8(decoded).map_err(|_| wrong())?;
    let Some((user, password)) = decoded.split_once(':') else {
        return Err(wrong());
    };
    if let Err(why) = broker.authenticate_http(user, password) {
        tracing::info!(user, peer = %peer, reason = why.as_str(), "management login refused");
        return Err(wrong());
    }
    if broker.config.loopback_users.iter().any(|u| u == user) && !peer.ip().is_loopback() {
        return Err(ApiError::not_authorised(
            "User can only log in via localhost",
        ));
    }
    let tags = broker.access.tags(user).unwrap_or_default();
    let caller = Caller {
        name: user.to_string(),
        tags,
    };
    if caller.level().is_none() {
        return Err(ApiError::not_authorised("Not management user"));
    }
    Ok(caller)
}
