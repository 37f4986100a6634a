//! Message properties as the management API shows and takes them: RabbitMQ's
//! JSON names (`content_type`, `delivery_mode`, `headers`, `type`, ...).

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::ShortString;
use serde_json::{Map, Value};

use super::reply::{table_from_json, table_to_json, ApiError};

pub fn properties_to_json(p: &AMQPProperties) -> Value {
    let mut m = Map::new();
    let mut text = |k: &str, v: &Option<ShortString>| {
        if let Some(v) = v {
            m.insert(k.to_string(), Value::String(v.as_str().to_string()));
        }
    };
    text("content_type", p.content_type());
    text("content_encoding", p.content_encoding());
    text("correlation_id", p.correlation_id());
    text("reply_to", p.reply_to());
    text("expiration", p.expiration());
    text("message_id", p.message_id());
    text("type", p.kind());
    text("user_id", p.user_id());
    text("app_id", p.app_id());
    text("cluster_id", p.cluster_id());
    if let Some(d) = p.delivery_mode() {
        m.insert("delivery_mode".into(), Value::from(*d));
    }
    if let Some(pr) = p.priority() {
        m.insert("priority".into(), Value::from(*pr));
    }
    if let Some(t) = p.timestamp() {
        m.insert("timestamp".into(), Value::from(*t));
    }
    if let Some(h) = p.headers() {
        m.insert("headers".into(), table_to_json(h));
    }
    Value::Object(m)
}

/// Properties from a publish request; unknown keys are ignored, numbers may
/// come as strings.
pub fn properties_from_json(v: Option<&Value>) -> Result<AMQPProperties, ApiError> {
    let mut p = AMQPProperties::default();
    let m = match v {
        None | Some(Value::Null) => return Ok(p),
        Some(Value::Array(a)) if a.is_empty() => return Ok(p),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(ApiError::bad_request("properties must be an object")),
    };
    let short = |k: &str| -> Result<Option<ShortString>, ApiError> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.len() <= 255 => Ok(Some(ShortString::from(s.as_str()))),
            Some(Value::Number(n)) => Ok(Some(ShortString::from(n.to_string()))),
            Some(_) => Err(ApiError::bad_request(format!(
                "property {k} must be a string of at most 255 bytes"
            ))),
        }
    };
    let number = |k: &str| -> Result<Option<u64>, ApiError> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| ApiError::bad_request(format!("property {k} must be a number"))),
            Some(Value::String(s)) => s
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("property {k} must be a number"))),
            Some(_) => Err(ApiError::bad_request(format!(
                "property {k} must be a number"
            ))),
        }
    };
    if let Some(v) = short("content_type")? {
        p = p.with_content_type(v);
    }
    if let Some(v) = short("content_encoding")? {
        p = p.with_content_encoding(v);
    }
    if let Some(v) = short("correlation_id")? {
        p = p.with_correlation_id(v);
    }
    if let Some(v) = short("reply_to")? {
        p = p.with_reply_to(v);
    }
    if let Some(v) = short("expiration")? {
        p = p.with_expiration(v);
    }
    if let Some(v) = short("message_id")? {
        p = p.with_message_id(v);
    }
    if let Some(v) = short("type")? {
        p = p.with_type(v);
    }
    if let Some(v) = short("user_id")? {
        p = p.with_user_id(v);
    }
    if let Some(v) = short("app_id")? {
        p = p.with_app_id(v);
    }
    if let Some(v) = short("cluster_id")? {
        p = p.with_cluster_id(v);
    }
    if let Some(d) = number("delivery_mode")? {
        let d = u8::try_from(d).map_err(|_| ApiError::bad_request("delivery_mode out of range"))?;
        p = p.with_delivery_mode(d);
    }
    if let Some(pr) = number("priority")? {
        let pr = u8::try_from(pr).map_err(|_| ApiError::bad_request("priority out of range"))?;
        p = p.with_priority(pr);
    }
    if let Some(t) = number("timestamp")? {
        p = p.with_timestamp(t);
    }
    match m.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(h)) => p = p.with_headers(table_from_json(h, 0)?),
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(_) => return Err(ApiError::bad_request("headers must be an object")),
    }
    Ok(p)
}
