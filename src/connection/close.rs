//! Ending a connection: connection.close with a connection error's code,
//! the wait for close-ok, and the teardown that returns unacked deliveries
//! to their queues and deletes the connection's exclusive queues. Every way
//! a connection ends on the broker's side comes through `close_with`.

use amq_protocol::protocol::{connection as conn, AMQPClass};
use std::time::Duration;
use tokio::io::AsyncRead;

use super::{Connection, End, Slot};
use crate::channel::notify_cancelled;
use crate::error::AmqpError;
use crate::protocol::{read_frame, Frame};

impl<R: AsyncRead + Unpin> Connection<R> {
    /// Send connection.close for `e`, wait briefly for close-ok, and end.
    pub(super) async fn close_with(&mut self, e: AmqpError) -> End {
        let AmqpError::Connection {
            code,
            text,
            class_id,
            method_id,
        } = e
        else {
            return End::Closed;
        };
        tracing::warn!(conn = self.handle.id, peer = %self.peer, code, %text, "closing connection");
        self.flush_confirms();
        self.teardown();
        self.send_method(
            0,
            AMQPClass::Connection(conn::AMQPMethod::Close(conn::Close {
                reply_code: code,
                reply_text: crate::protocol::short(&text),
                class_id,
                method_id,
            })),
        );
        self.await_close_ok().await;
        End::Closed
    }

    /// After our connection.close: drop every frame but close-ok, for at most a second.
    async fn await_close_ok(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            // Frames are cut leniently here: anything unparseable ends the wait.
            loop {
                match read_frame(&mut self.buf, self.frame_max) {
                    Ok(Some(Frame::Method(0, m)))
                        if matches!(
                            *m,
                            AMQPClass::Connection(conn::AMQPMethod::CloseOk(_))
                                | AMQPClass::Connection(conn::AMQPMethod::Close(_))
                        ) =>
                    {
                        return
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match self.fill(Some(left)).await {
                Ok(true) => {}
                _ => return,
            }
        }
    }

    /// Close every channel (requeueing unacked deliveries) and delete this
    /// connection's exclusive queues. Idempotent.
    pub(super) fn teardown(&mut self) {
        let vhost = self.vhost.take();
        for (_, slot) in self.channels.drain() {
            if let Slot::Open(mut c) = slot {
                c.teardown(&self.broker, vhost.as_ref());
            }
        }
        if let Some(v) = vhost.as_ref() {
            for q in self.exclusive_queues.drain(..) {
                if !q.is_deleted() {
                    match v.remove_queue(&q) {
                        Ok(d) => notify_cancelled(&d.consumers),
                        Err(e) => {
                            tracing::error!(queue = %q.name, error = %e, "failed to delete exclusive queue")
                        }
                    }
                }
            }
        }
    }
}
