//! The opening handshake: protocol header, connection.start / start-ok (PLAIN
//! or AMQPLAIN), tune / tune-ok negotiation, connection.open of a vhost. The
//! whole handshake must finish within `limits.handshake_timeout`.

use amq_protocol::protocol::{connection as conn, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::Buf;
use std::time::Duration;
use tokio::io::AsyncRead;
use tokio::time::Instant;

use super::{frame_error, header_reply, Connection, End};
use crate::channel::handle::Outbound;
use crate::error::AmqpError;
use crate::protocol::{codes, read_frame, Frame, PROTOCOL_HEADER};

/// The smallest frame_max a client may ask for.
pub(super) const FRAME_MIN_SIZE: u32 = 4096;

/// What connection.start calls the server: the RabbitMQ release line whose
/// AMQP 0-9-1 behaviour we follow (the last 3.x; kombu treats 4.x differently).
pub(super) const COMPATIBLE_PRODUCT: &str = "RabbitMQ";
pub(super) const COMPATIBLE_VERSION: &str = "3.13.7";

fn server_properties() -> FieldTable {
    let mut caps = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        caps.insert(cap.into(), AMQPValue::Boolean(true));
    }
    let mut p = FieldTable::default();
    let s = |v: &str| AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()));
    p.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    // Clients choose behaviour from `product` and `version`: kombu (Celery)
    // uses global basic.qos only for "RabbitMQ" 3.3 to 3.x, and Celery raises
    // the prefetch for each ETA task it holds with it; anything else gets
    // per-consumer qos that never reaches the running consumer, so plain tasks
    // wait behind countdowns. We follow RabbitMQ 3.x's semantics, so we say so
    // (see docs/COMPATIBILITY.md). Hopper's own identity is in `information`
    // and `hopper_version`.
    p.insert("product".into(), s(COMPATIBLE_PRODUCT));
    p.insert("version".into(), s(COMPATIBLE_VERSION));
    p.insert("platform".into(), s("Rust"));
    p.insert("cluster_name".into(), s("hopper"));
    p.insert("copyright".into(), s("The Hopper authors"));
    p.insert(
        "information".into(),
        s(concat!(
            "Hopper ",
            env!("CARGO_PKG_VERSION"),
            ", an AMQP 0-9-1 broker compatible with RabbitMQ 3.x clients"
        )),
    );
    p.insert("hopper_version".into(), s(env!("CARGO_PKG_VERSION")));
    p
}

/// (user, password) from a SASL response.
fn credentials(mechanism: &str, response: &[u8]) -> Option<(String, String)> {
    match mechanism {
        "PLAIN" => {
            let mut parts = response.split(|b| *b == 0);
            let _authzid = parts.next()?;
            let user = parts.next()?;
            let pass = parts.next()?;
            if parts.next().is_some() {
                return None;
            }
            Some((
                String::from_utf8_lossy(user).into_owned(),
                String::from_utf8_lossy(pass).into_owned(),
            ))
        }
        "AMQPLAIN" => {
            // A field table without its length prefix.
            let mut framed = (response.len() as u32).to_be_bytes().to_vec();
            framed.extend_from_slice(response);
            // Nesting-bounded: the response is client bytes up to frame_max.
            let (_, table) = crate::protocol::table::parse_table(&framed[..])?;
            let text = |k: &str| match table.inner().get(k)? {
                AMQPValue::LongString(s) => {
                    Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
                _ => None,
            };
            Some((text("LOGIN")?, text("PASSWORD")?))
        }
        _ => None,
    }
}

fn client_capability(props: &FieldTable, name: &str) -> bool {
    match props.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(caps)) => {
            matches!(caps.inner().get(name), Some(AMQPValue::Boolean(true)))
        }
        _ => false,
    }
}

/// Check one tune-ok value as RabbitMQ does: with a limit offered, the client
/// may not ask for more, nor for 0 ("no limit").
fn negotiate(name: &str, ours: u32, theirs: u32) -> Result<u32, AmqpError> {
    if ours == 0 {
        return Ok(theirs);
    }
    if theirs == 0 || theirs > ours {
        return Err(AmqpError::connection(
            codes::NOT_ALLOWED,
            format!("failed to negotiate connection parameters: {name}={theirs} > {ours} max size"),
        ));
    }
    Ok(theirs)
}

impl<R: AsyncRead + Unpin> Connection<R> {
    /// Ok(true) once the connection is open; Ok(false) when it was refused.
    pub(super) async fn handshake(&mut self) -> Result<bool, End> {
        let limit = Duration::from_secs(self.broker.config.limits.handshake_timeout.max(1));
        let deadline = Instant::now() + limit;
        while self.buf.len() < PROTOCOL_HEADER.len() {
            if !self.fill(Some(left(deadline))).await? {
                return Err(End::Gone);
            }
        }
        if &self.buf[..8] != PROTOCOL_HEADER {
            tracing::info!(conn = self.handle.id, peer = %self.peer, header = ?&self.buf[..8], "bad protocol header");
            self.handle.send(header_reply());
            return Ok(false);
        }
        self.buf.advance(8);
        self.send_method(
            0,
            AMQPClass::Connection(conn::AMQPMethod::Start(conn::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: server_properties(),
                mechanisms: "PLAIN AMQPLAIN".into(),
                locales: "en_US".into(),
            })),
        );
        match self.steps(deadline).await {
            Ok(()) => Ok(true),
            Err(Step::End(end)) => Err(end),
            Err(Step::Refuse(e)) => {
                self.close_with(e).await;
                Ok(false)
            }
        }
    }

    async fn steps(&mut self, deadline: Instant) -> Result<(), Step> {
        let start_ok = match self.next_method(deadline).await? {
            AMQPClass::Connection(conn::AMQPMethod::StartOk(s)) => s,
            other => return Err(out_of_order(&other)),
        };
        let mechanism = start_ok.mechanism.as_str().to_string();
        if mechanism != "PLAIN" && mechanism != "AMQPLAIN" {
            return Err(Step::Refuse(
                AmqpError::connection(
                    codes::COMMAND_INVALID,
                    format!("unknown authentication mechanism '{mechanism}'"),
                )
                .caused_by(10, 11),
            ));
        }
        let (user, password) =
            credentials(&mechanism, start_ok.response.as_bytes()).unwrap_or_default();
        // The password goes to the hash check and nowhere else: never log it.
        let login = if user.is_empty() {
            Err("no user name in the response")
        } else {
            self.broker
                .authenticate(&user, &password)
                .map_err(|why| why.as_str())
        };
        drop(password);
        if let Err(why) = login {
            // Debug formatting escapes control characters a client may send.
            tracing::warn!(conn = self.handle.id, peer = %self.peer, mechanism = %mechanism, reason = why, "authentication failed for user {user:?}");
            return Err(Step::Refuse(
                AmqpError::connection(
                    codes::ACCESS_REFUSED,
                    format!("Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."),
                )
                .caused_by(10, 11),
            ));
        }
        if self.broker.config.loopback_users.contains(&user) && !self.peer.ip().is_loopback() {
            tracing::warn!(conn = self.handle.id, peer = %self.peer, mechanism = %mechanism, reason = "user may only connect via localhost", "authentication failed for user {user:?}");
            return Err(Step::Refuse(
                AmqpError::connection(
                    codes::ACCESS_REFUSED,
                    format!("Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."),
                )
                .caused_by(10, 11),
            ));
        }
        self.user = user;
        self.handle.set_cancel_notify(client_capability(
            &start_ok.client_properties,
            "consumer_cancel_notify",
        ));
        self.blocked_notify = client_capability(&start_ok.client_properties, "connection.blocked");
        self.client_properties = start_ok.client_properties.clone();

        let limits = &self.broker.config.limits;
        let (frame_max, channel_max, heartbeat) =
            (limits.frame_max, limits.channel_max, limits.heartbeat);
        self.send_method(
            0,
            AMQPClass::Connection(conn::AMQPMethod::Tune(conn::Tune {
                channel_max,
                frame_max,
                heartbeat,
            })),
        );
        let tune_ok = match self.next_method(deadline).await? {
            AMQPClass::Connection(conn::AMQPMethod::TuneOk(t)) => t,
            other => return Err(out_of_order(&other)),
        };
        let refuse = |e: AmqpError| Step::Refuse(e.caused_by(10, 31));
        let fm = negotiate("frame_max", frame_max, tune_ok.frame_max).map_err(refuse)?;
        if fm < FRAME_MIN_SIZE {
            return Err(refuse(AmqpError::connection(
                codes::NOT_ALLOWED,
                format!("failed to negotiate connection parameters: frame_max={fm} < {FRAME_MIN_SIZE} min size"),
            )));
        }
        let cm = negotiate(
            "channel_max",
            channel_max as u32,
            tune_ok.channel_max as u32,
        )
        .map_err(refuse)?;
        self.frame_max = fm;
        self.channel_max = cm as u16;
        self.heartbeat = tune_ok.heartbeat;
        self.handle.set_frame_max(fm);
        self.handle.control(Outbound::Heartbeat(tune_ok.heartbeat));

        let open = match self.next_method(deadline).await? {
            AMQPClass::Connection(conn::AMQPMethod::Open(o)) => o,
            other => return Err(out_of_order(&other)),
        };
        let vhost_name = open.virtual_host.as_str();
        let Some(vhost) = self.broker.vhost(vhost_name) else {
            return Err(Step::Refuse(
                AmqpError::connection(codes::NOT_ALLOWED, format!("vhost {vhost_name} not found"))
                    .caused_by(10, 40),
            ));
        };
        if !self.broker.may_open_vhost(&self.user, vhost_name) {
            return Err(Step::Refuse(
                AmqpError::connection(
                    codes::NOT_ALLOWED,
                    format!(
                        "access to vhost '{vhost_name}' refused for user '{}'",
                        self.user
                    ),
                )
                .caused_by(10, 40),
            ));
        }
        if !self.broker.user_connected(&self.user) {
            return Err(Step::Refuse(
                AmqpError::connection(
                    codes::NOT_ALLOWED,
                    format!(
                        "Connection refused for user '{}': user connection limit ({}) is reached",
                        self.user, self.broker.config.limits.max_connections_per_user
                    ),
                )
                .caused_by(10, 40),
            ));
        }
        self.user_counted = true;
        self.vhost = Some(vhost);
        self.send_method(
            0,
            AMQPClass::Connection(conn::AMQPMethod::OpenOk(conn::OpenOk {})),
        );
        Ok(())
    }

    /// The next method on channel 0, skipping heartbeats.
    async fn next_method(&mut self, deadline: Instant) -> Result<AMQPClass, Step> {
        loop {
            match read_frame(&mut self.buf, self.frame_max) {
                Ok(Some(Frame::Heartbeat(0))) => continue,
                Ok(Some(Frame::Method(0, m))) => {
                    if let AMQPClass::Connection(conn::AMQPMethod::Close(_)) = *m {
                        self.send_method(
                            0,
                            AMQPClass::Connection(conn::AMQPMethod::CloseOk(conn::CloseOk {})),
                        );
                        return Err(Step::End(End::Closed));
                    }
                    return Ok(*m);
                }
                // RabbitMQ 3.10: UNEXPECTED_FRAME for any other frame.
                Ok(Some(_)) => {
                    return Err(Step::Refuse(AmqpError::connection(
                        codes::UNEXPECTED_FRAME,
                        "expected a connection method on channel 0 during the handshake",
                    )))
                }
                Ok(None) => {}
                Err(e) => return Err(Step::Refuse(frame_error(e))),
            }
            match self.fill(Some(left(deadline))).await {
                Ok(true) => {}
                Ok(false) => return Err(Step::End(End::Gone)),
                Err(end) => return Err(Step::End(end)),
            }
        }
    }
}

enum Step {
    End(End),
    Refuse(AmqpError),
}

/// RabbitMQ 3.10: CHANNEL_ERROR "unexpected method in connection state ...".
fn out_of_order(m: &AMQPClass) -> Step {
    Step::Refuse(
        AmqpError::connection(
            codes::CHANNEL_ERROR,
            "unexpected method during the connection handshake",
        )
        .caused_by(m.get_amqp_class_id(), m.get_amqp_method_id()),
    )
}

fn left(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_amqplain_credentials() {
        assert_eq!(
            credentials("PLAIN", b"\0guest\0secret"),
            Some(("guest".into(), "secret".into()))
        );
        assert_eq!(credentials("PLAIN", b"guest"), None);
        let c = amq_protocol::auth::Credentials::new("u".into(), "p".into());
        let raw = c.sasl_auth_string(amq_protocol::auth::SASLMechanism::AMQPlain);
        assert_eq!(
            credentials("AMQPLAIN", raw.as_bytes()),
            Some(("u".into(), "p".into()))
        );
        assert_eq!(credentials("AMQPLAIN", b"\xff\xff"), None);
        // ~21,000 nested tables (one frame's worth) are refused, not parsed
        // recursively into a stack overflow (found by fuzzing).
        let deep = crate::protocol::table::nested_for_tests(21_000);
        // The response is a table without its length prefix.
        assert_eq!(credentials("AMQPLAIN", &deep[4..]), None);
    }

    #[test]
    fn tune_negotiation() {
        assert!(negotiate("frame_max", 131072, 0).is_err());
        assert_eq!(negotiate("heartbeat", 0, 30), Ok(30));
        assert_eq!(negotiate("frame_max", 131072, 8192), Ok(8192));
        assert!(negotiate("frame_max", 131072, 131073).is_err());
    }
}
