//! The writer task: owns the socket's write half, drains the connection's
//! outbound queue and writes everything pending in one `write` per burst, and
//! sends heartbeats when the connection has been quiet.

use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc::UnboundedReceiver;

use std::sync::Arc;

use crate::channel::handle::{Outbound, WriteFlow, MESSAGE_OVERHEAD};

/// Stop gathering and write once this much is pending.
const BURST: usize = 256 * 1024;

/// Write everything, or give up when the peer has not taken any of it for
/// `limit` (a client that stopped reading: RabbitMQ's `send_timeout`).
async fn write_all<W: AsyncWrite + Unpin>(
    wr: &mut W,
    bytes: &[u8],
    limit: Option<Duration>,
) -> bool {
    match limit {
        None => wr.write_all(bytes).await.is_ok(),
        Some(d) => {
            let mut rest = bytes;
            while !rest.is_empty() {
                match tokio::time::timeout(d, wr.write(rest)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return false,
                    Ok(Ok(n)) => rest = &rest[n..],
                    Err(_) => {
                        tracing::warn!(
                            "client took no data for {d:?} (not reading its socket); closing the connection"
                        );
                        return false;
                    }
                }
            }
            true
        }
    }
}

/// `send_timeout`: how long a write may make no progress before the
/// connection is given up (`None`: wait forever).
pub async fn run<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: UnboundedReceiver<Outbound>,
    flow: Arc<WriteFlow>,
    send_timeout: Option<Duration>,
) {
    // Grows with the first bursts; an idle connection keeps only what it used.
    let mut buf: Vec<u8> = Vec::new();
    let mut heartbeat: Option<Duration> = None;
    loop {
        let first = match heartbeat {
            Some(every) => match tokio::time::timeout(every, rx.recv()).await {
                Ok(m) => m,
                Err(_) => {
                    let mut hb = bytes::BytesMut::new();
                    crate::protocol::encode::heartbeat(&mut hb);
                    if !write_all(&mut wr, &hb, send_timeout).await {
                        break;
                    }
                    flow.io.send_oct.add(hb.len() as u64);
                    flow.io.send_cnt.add(1);
                    continue;
                }
            },
            None => rx.recv().await,
        };
        let Some(mut msg) = first else { break };
        let mut closing = false;
        let mut counted = 0usize;
        loop {
            match msg {
                Outbound::Frames(b) => {
                    counted += b.len() + MESSAGE_OVERHEAD;
                    buf.extend_from_slice(&b);
                }
                Outbound::Heartbeat(secs) => {
                    // Send well within the interval the peer waits for.
                    heartbeat = (secs > 0).then(|| {
                        Duration::from_millis(secs as u64 * 500).max(Duration::from_millis(500))
                    });
                }
                Outbound::Close => closing = true,
            }
            if closing || buf.len() >= BURST {
                break;
            }
            match rx.try_recv() {
                Ok(m) => msg = m,
                Err(_) => break,
            }
        }
        if !buf.is_empty() {
            if !write_all(&mut wr, &buf, send_timeout).await {
                flow.written(counted);
                break;
            }
            flow.io.send_oct.add(buf.len() as u64);
            flow.io.send_cnt.add(1);
            buf.clear();
            flow.written(counted);
            if buf.capacity() > 4 * BURST {
                buf = Vec::new();
            }
        }
        if closing {
            break;
        }
    }
    flow.writer_stopped();
    let _ = wr.flush().await;
    let _ = wr.shutdown().await;
}
