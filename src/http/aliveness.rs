//! `GET /api/aliveness-test/{vhost}` as RabbitMQ answers it: declare the
//! queue `aliveness-test` (non-durable, kept afterwards), publish
//! `test_message` to it through the one publish path, get it back, and say
//! `{"status":"ok"}`; a message that does not come back answers
//! `{"status":"failed","reason":...}`. Only through the broker's own
//! declare, publish and get, so it proves those work.

use amq_protocol::protocol::basic::AMQPProperties;
use axum::http::StatusCode;
use bytes::Bytes;
use serde_json::json;

use super::objects::API_CONN;
use super::reply::{ApiError, ApiResult, Reply};
use super::Req;
use crate::broker::publish::Publication;
use crate::broker::vhost::QueueSpec;

const QUEUE: &str = "aliveness-test";
const PAYLOAD: &[u8] = b"test_message";

fn failed(reason: &str) -> ApiError {
    let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "failed", reason);
    e.body = Some(json!({"status": "failed", "reason": reason}));
    e
}

pub async fn aliveness(r: &Req<'_>, vhost: &str) -> ApiResult {
    let v = match r.broker.vhost(vhost) {
        Some(v) if r.caller.may_use_vhost(r.broker, vhost) => v,
        _ => return Err(ApiError::not_found()),
    };
    let (q, _, _) = v.declare_queue(
        QueueSpec {
            name: QUEUE.to_string(),
            server_named: false,
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            arguments: Default::default(),
        },
        API_CONN,
    )?;
    let properties = AMQPProperties::default();
    let raw = amq_protocol::protocol::basic::gen_properties(&properties)(
        amq_protocol::frame::WriteContext::from(Vec::new()),
    )
    .map(|ctx| ctx.into_inner().0)
    .map_err(|e| ApiError::internal(format!("cannot encode properties: {e:?}")))?;
    let routed = super::publish::publish_confirmed(
        r.broker,
        &v,
        Publication {
            exchange: String::new(),
            routing_key: QUEUE.to_string(),
            mandatory: false,
            properties,
            raw_properties: Bytes::from(raw),
            body: Bytes::from_static(PAYLOAD),
        },
    )
    .await?
    .routed;
    if !routed {
        return Err(failed("aliveness-test message was not routed"));
    }
    // Take messages until ours (an earlier failed run may have left some).
    while let Some((entry, msg, _)) = q.get(true) {
        q.settled(&entry);
        if msg.body.as_ref() == PAYLOAD {
            return Ok(Reply::Json(json!({"status": "ok"})));
        }
    }
    Err(failed("aliveness-test message did not come back"))
}
