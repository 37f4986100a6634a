//! The Prometheus listener (`[prometheus] listen`, RabbitMQ's port 15692):
//! `GET /metrics` (aggregated) and `GET /metrics/per-object`, no
//! authentication (as `rabbitmq_prometheus`), gzip when the scraper asks
//! for it. The text itself comes from `prometheus`; the scrape is built on
//! the blocking pool so a big per-object answer never holds an async worker.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

use crate::broker::Broker;

/// The content type of the text format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serve metrics on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    broker: Arc<Broker>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let app = axum::Router::new().fallback(handle).with_state(broker);
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(error = %e, "metrics listener stopped");
    }
}

/// Bind `addr` (port 0 picks one) and serve metrics in a task; returns the
/// bound address. Called where the management listener is started.
pub async fn start(
    addr: &str,
    broker: &Arc<Broker>,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let tcp = tokio::net::TcpListener::bind(addr).await?;
    let bound = tcp.local_addr()?;
    tracing::info!(addr = %bound, "Prometheus metrics listening");
    let task = tokio::spawn(serve(tcp, broker.clone(), broker.shutdown_signal()));
    Ok((bound, task))
}

async fn handle(State(broker): State<Arc<Broker>>, request: Request<Body>) -> Response {
    let per_object = match request.uri().path().trim_end_matches('/') {
        "/metrics" => false,
        "/metrics/per-object" => true,
        _ => return (StatusCode::NOT_FOUND, "Not Found\n").into_response(),
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n").into_response();
    }
    let gzip = wants_gzip(request.headers());
    let built = tokio::task::spawn_blocking(move || {
        let text = super::prometheus::render(&broker, per_object);
        if gzip {
            compress(text.as_bytes()).map(|b| (b, true))
        } else {
            Ok((text.into_bytes(), false))
        }
    })
    .await;
    match built {
        Ok(Ok((body, gzipped))) => {
            let mut r = (StatusCode::OK, body).into_response();
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(CONTENT_TYPE),
            );
            if gzipped {
                h.insert(
                    header::CONTENT_ENCODING,
                    header::HeaderValue::from_static("gzip"),
                );
            }
            h.insert(
                header::VARY,
                header::HeaderValue::from_static("accept-encoding"),
            );
            r
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "compressing metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "compression failed\n").into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "building metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "metrics failed\n").into_response()
        }
    }
}

/// Whether `Accept-Encoding` lists gzip with a non-zero weight.
fn wants_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let q_zero = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !q_zero
        })
}

fn compress(text: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(text.len() / 4),
        flate2::Compression::fast(),
    );
    enc.write_all(text)?;
    enc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_only_when_asked() {
        let mut h = HeaderMap::new();
        assert!(!wants_gzip(&h));
        h.insert(
            header::ACCEPT_ENCODING,
            "deflate, gzip;q=0.8".parse().unwrap(),
        );
        assert!(wants_gzip(&h));
        h.insert(header::ACCEPT_ENCODING, "gzip;q=0".parse().unwrap());
        assert!(!wants_gzip(&h));
        h.insert(header::ACCEPT_ENCODING, "identity".parse().unwrap());
        assert!(!wants_gzip(&h));
    }
}
