//! What a management handler answers: a JSON document, a bare status, or an
//! error that is always `{"error": ..., "reason": ...}` with RabbitMQ's status
//! and wording. Also the lenient readers for request bodies (RabbitMQ's tools
//! send booleans and numbers as strings) and the JSON ⇄ AMQP field table
//! conversion used for `arguments`, `headers` and the like. Never panics on
//! client input.

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::error::AmqpError;

/// A successful answer.
#[derive(Debug)]
pub enum Reply {
    /// 200 with a JSON body.
    Json(Value),
    /// 201 (created) with an optional `Location`.
    Created(Option<String>),
    /// 204: done, nothing to say (also "existed" for PUT).
    NoContent,
    /// 200 with a JSON body and extra headers (e.g. a download name).
    JsonWith(Value, Vec<(header::HeaderName, String)>),
}

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: String,
    pub reason: String,
    /// Sent with 401 when no credentials came.
    pub challenge: bool,
    /// A body other than `{"error","reason"}` (health checks answer
    /// `{"status":"failed", ...}`).
    pub body: Option<Value>,
}

pub type ApiResult = Result<Reply, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, error: &str, reason: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: error.to_string(),
            reason: reason.into(),
            challenge: false,
            body: None,
        }
    }

    /// RabbitMQ's 404 for anything missing (or invisible to the user).
    pub fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "Object Not Found", "Not Found")
    }

    pub fn bad_request(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", reason)
    }

    pub fn not_authorised(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "not_authorised", reason)
    }

    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed",
            "Method Not Allowed",
        )
    }

    pub fn internal(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", reason)
    }
}

/// A broker refusal as RabbitMQ's management API reports it: the AMQP text
/// (e.g. "PRECONDITION_FAILED - inequivalent arg ...") without its code name,
/// 404 for missing objects, 400 otherwise (RabbitMQ answers 400 for 403 and
/// 406 alike).
impl From<AmqpError> for ApiError {
    fn from(e: AmqpError) -> ApiError {
        let (code, text) = match &e {
            AmqpError::Channel { code, text, .. } | AmqpError::Connection { code, text, .. } => {
                (*code, text.as_str())
            }
        };
        let reason = text.split_once(" - ").map(|(_, r)| r).unwrap_or(text);
        match code {
            404 => ApiError::not_found(),
            541 => ApiError::internal(reason.to_string()),
            _ => ApiError::bad_request(reason.to_string()),
        }
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let text = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from(text),
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self
            .body
            .unwrap_or_else(|| json!({"error": self.error, "reason": self.reason}));
        let mut r = json_response(self.status, &body);
        if self.challenge {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"RabbitMQ Management\""),
            );
        }
        r
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        match self {
            Reply::Json(v) => json_response(StatusCode::OK, &v),
            Reply::JsonWith(v, headers) => {
                let mut r = json_response(StatusCode::OK, &v);
                for (k, val) in headers {
                    if let Ok(val) = HeaderValue::from_str(&val) {
                        r.headers_mut().insert(k, val);
                    }
                }
                r
            }
            Reply::Created(location) => {
                let mut r = StatusCode::CREATED.into_response();
                if let Some(l) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
                    r.headers_mut().insert(header::LOCATION, l);
                }
                r
            }
            Reply::NoContent => StatusCode::NO_CONTENT.into_response(),
        }
    }
}

// ---- request bodies ----

/// Parse a JSON object body. An empty body (or `null`) is an empty object, as
/// pyrabbit and others PUT with no body.
pub fn body_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(Value::Null) => Ok(Map::new()),
        Ok(_) => Err(ApiError::bad_request("not_json")),
        Err(_) => Err(ApiError::bad_request("not_json")),
    }
}

/// A boolean field: JSON true/false or the strings "true"/"false".
pub fn get_bool(m: &Map<String, Value>, key: &str, default: bool) -> Result<bool, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" => Ok(true),
        Some(Value::String(s)) if s == "false" => Ok(false),
        Some(other) => Err(ApiError::bad_request(format!(
            "{key} must be a boolean, got {other}"
        ))),
    }
}

/// A non-negative integer field, also given as a string.
pub fn get_u64(m: &Map<String, Value>, key: &str) -> Result<Option<u64>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(format!("{key} must be a non-negative integer"))),
        Some(Value::String(s)) => s
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("{key} must be a non-negative integer"))),
        Some(_) => Err(ApiError::bad_request(format!(
            "{key} must be a non-negative integer"
        ))),
    }
}

/// A string field.
pub fn get_str<'a>(m: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad_request(format!("{key} must be a string"))),
    }
}

/// `arguments` (or any table): a JSON object; an empty string or null is empty.
pub fn get_table(m: &Map<String, Value>, key: &str) -> Result<FieldTable, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(FieldTable::default()),
        Some(Value::String(s)) if s.is_empty() => Ok(FieldTable::default()),
        Some(Value::Array(a)) if a.is_empty() => Ok(FieldTable::default()),
        Some(Value::Object(o)) => table_from_json(o, 0),
        Some(_) => Err(ApiError::bad_request(format!("{key} must be an object"))),
    }
}

/// Deepest nesting accepted in a table from JSON (as the AMQP side's guard).
const MAX_DEPTH: usize = 64;

pub fn table_from_json(o: &Map<String, Value>, depth: usize) -> Result<FieldTable, ApiError> {
    let mut t = FieldTable::default();
    for (k, v) in o {
        if k.len() > 255 {
            return Err(ApiError::bad_request(format!(
                "argument name longer than 255 bytes: {k:.40}..."
            )));
        }
        t.insert(
            ShortString::from(k.as_str()),
            value_from_json(v, depth + 1)?,
        );
    }
    Ok(t)
}

fn value_from_json(v: &Value, depth: usize) -> Result<AMQPValue, ApiError> {
    if depth > MAX_DEPTH {
        return Err(ApiError::bad_request("arguments nested too deeply"));
    }
    Ok(match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => AMQPValue::LongLongInt(i),
            (None, Some(f)) => AMQPValue::Double(f),
            (None, None) => return Err(ApiError::bad_request("number out of range")),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
        Value::Array(a) => AMQPValue::FieldArray(FieldArray::from(
            a.iter()
                .map(|v| value_from_json(v, depth + 1))
                .collect::<Result<Vec<_>, _>>()?,
        )),
        Value::Object(o) => AMQPValue::FieldTable(table_from_json(o, depth + 1)?),
    })
}

/// A field table as JSON: an object, `{}` when empty.
pub fn table_to_json(t: &FieldTable) -> Value {
    Value::Object(
        t.inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), value_to_json(v)))
            .collect(),
    )
}

pub fn value_to_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(i) => json!(i),
        AMQPValue::ShortShortUInt(i) => json!(i),
        AMQPValue::ShortInt(i) => json!(i),
        AMQPValue::ShortUInt(i) => json!(i),
        AMQPValue::LongInt(i) => json!(i),
        AMQPValue::LongUInt(i) => json!(i),
        AMQPValue::LongLongInt(i) => json!(i),
        AMQPValue::Float(f) => json!(f),
        AMQPValue::Double(f) => json!(f),
        AMQPValue::DecimalValue(d) => {
            json!(d.value as f64 / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_to_json).collect()),
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::FieldTable(t) => table_to_json(t),
        AMQPValue::ByteArray(b) => json!(String::from_utf8_lossy(b.as_slice())),
        AMQPValue::Void => Value::Null,
    }
}

/// A name from a path or body: 1 to 255 bytes, as AMQP short strings.
pub fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    if name.len() > 255 {
        return Err(ApiError::bad_request(format!(
            "{what} name is longer than 255 bytes"
        )));
    }
    Ok(())
}
