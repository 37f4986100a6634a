//! The accept loop: one task per connection, until shutdown is signalled.

use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

use crate::broker::Broker;

/// Accept connections until `shutdown` completes.
pub async fn run(listener: TcpListener, broker: Arc<Broker>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let max = broker.config.limits.max_connections;
                    if max > 0 && broker.live_connection_count() >= max {
                        tracing::warn!(peer = %peer, max, "connection limit reached; refusing connection");
                        drop(stream);
                        continue;
                    }
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "set_nodelay failed");
                    }
                    let broker = broker.clone();
                    tokio::spawn(async move {
                        crate::connection::serve(stream, peer, broker).await;
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = &mut shutdown => {
                tracing::info!("shutting down");
                return;
            }
        }
    }
}
