//! `POST /api/exchanges/{vhost}/{exchange}/publish`: a message published
//! through the broker's one publish path (`broker::publish`), answered with
//! `{"routed": bool}` once it is confirmed (on disk when persistent and
//! routed to a durable queue), as RabbitMQ's API waits for its confirm.

use amq_protocol::protocol::basic::gen_properties;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

use super::message::properties_from_json;
use super::objects::{check, visible_vhost};
use super::reply::{body_object, check_name, get_str, ApiError, ApiResult, Reply};
use super::Req;
use crate::auth::{Permission, Resource};
use crate::broker::publish::{self, Publication, PublishSink, Publisher};

/// How long the API waits for the confirm of a message it published.
const CONFIRM_WAIT: Duration = Duration::from_secs(30);

/// The API's side of a publish: the confirm goes to the waiting request.
struct Waiter(Mutex<Option<tokio::sync::oneshot::Sender<bool>>>);

impl PublishSink for Waiter {
    fn confirm(self: Arc<Self>, _seq: u64, ack: bool, _: &mut crate::batch::Batch) {
        if let Some(tx) = self.0.lock().take() {
            let _ = tx.send(ack);
        }
    }

    // Not mandatory: nothing is ever returned.
    fn returned(&self, _: &str, _: &str, _: &Bytes, _: &Bytes) {}
}

pub async fn publish(r: &Req<'_>, vhost: &str, exchange: &str) -> ApiResult {
    let body = body_object(&r.body)?;
    let v = visible_vhost(r, vhost)?;
    if !v.exchanges.contains_key(exchange) {
        // RabbitMQ 3.10 answers the channel error as a 400.
        return Err(ApiError::bad_request(format!(
            "404 NOT_FOUND - no exchange '{exchange}' in vhost '{vhost}'"
        )));
    }
    check(r, vhost, Permission::Write, Resource::Exchange, exchange)?;
    let routing_key = get_str(&body, "routing_key")?.unwrap_or("").to_string();
    check_name("routing key", &routing_key)?;
    let payload = get_str(&body, "payload")?.unwrap_or("");
    let bytes = match get_str(&body, "payload_encoding")?.unwrap_or("string") {
        "string" => payload.as_bytes().to_vec(),
        "base64" => BASE64
            .decode(payload)
            .map_err(|_| ApiError::bad_request("payload is not valid base64"))?,
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown payload_encoding {other}"
            )))
        }
    };
    if bytes.len() as u64 > r.broker.config.limits.max_message_size {
        return Err(ApiError::bad_request(format!(
            "message size {} is larger than configured max size {}",
            bytes.len(),
            r.broker.config.limits.max_message_size
        )));
    }
    let properties = properties_from_json(body.get("properties"))?;
    let raw = gen_properties(&properties)(amq_protocol::frame::WriteContext::from(Vec::new()))
        .map(|ctx| ctx.into_inner().0)
        .map_err(|e| ApiError::bad_request(format!("cannot encode properties: {e:?}")))?;
    let published = publish_confirmed(
        r.broker,
        &v,
        Publication {
            exchange: exchange.to_string(),
            routing_key,
            mandatory: false,
            properties,
            raw_properties: Bytes::from(raw),
            body: Bytes::from(bytes),
        },
    )
    .await?;
    Ok(Reply::Json(json!({"routed": published.routed})))
}

/// Publish through the broker's one path and wait for the confirm (on disk
/// when persistent and routed to a durable queue). Errors when the broker
/// refuses the publication, nacks it, or does not confirm in time.
pub async fn publish_confirmed(
    broker: &Arc<crate::broker::Broker>,
    vhost: &Arc<crate::broker::VHost>,
    publication: Publication,
) -> Result<publish::Published, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let sink = Arc::new(Waiter(Mutex::new(Some(tx))));
    let published = publish::publish(
        broker,
        vhost,
        publication,
        Publisher {
            sink,
            seq: Some(1),
            tx: None,
        },
        &mut Vec::new(),
        &mut crate::batch::Batch::new(),
    )?;
    match tokio::time::timeout(CONFIRM_WAIT, rx).await {
        Ok(Ok(true)) => Ok(published),
        Ok(Ok(false)) => Err(ApiError::internal("the message could not be stored")),
        Ok(Err(_)) | Err(_) => Err(ApiError::internal("no confirm for the message")),
    }
}
