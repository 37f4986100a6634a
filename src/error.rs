//! Errors that end a channel or a connection. Each carries the AMQP reply code
//! and the class/method ids of the frame that caused it, which go back to the
//! client in `channel.close` / `connection.close`.

use crate::protocol::codes;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmqpError {
    /// Closes the channel only.
    #[error("channel error {code}: {text}")]
    Channel {
        code: u16,
        text: String,
        class_id: u16,
        method_id: u16,
    },
    /// Closes the whole connection.
    #[error("connection error {code}: {text}")]
    Connection {
        code: u16,
        text: String,
        class_id: u16,
        method_id: u16,
    },
}

impl AmqpError {
    /// A channel error; `text` is prefixed with the code's name as RabbitMQ does.
    pub fn channel(code: u16, text: impl AsRef<str>) -> Self {
        AmqpError::Channel {
            code,
            text: format!("{} - {}", codes::name(code), text.as_ref()),
            class_id: 0,
            method_id: 0,
        }
    }

    pub fn connection(code: u16, text: impl AsRef<str>) -> Self {
        AmqpError::Connection {
            code,
            text: format!("{} - {}", codes::name(code), text.as_ref()),
            class_id: 0,
            method_id: 0,
        }
    }

    /// Record the method that caused the error, unless one is recorded already.
    pub fn caused_by(mut self, class: u16, method: u16) -> Self {
        match &mut self {
            AmqpError::Channel {
                class_id,
                method_id,
                ..
            }
            | AmqpError::Connection {
                class_id,
                method_id,
                ..
            } => {
                if *class_id == 0 && *method_id == 0 {
                    *class_id = class;
                    *method_id = method;
                }
            }
        }
        self
    }

    pub fn code(&self) -> u16 {
        match self {
            AmqpError::Channel { code, .. } | AmqpError::Connection { code, .. } => *code,
        }
    }

    pub fn not_found(what: &str, name: &str, vhost: &str) -> Self {
        AmqpError::channel(
            codes::NOT_FOUND,
            format!("no {what} '{name}' in vhost '{vhost}'"),
        )
    }

    pub fn precondition(text: impl AsRef<str>) -> Self {
        AmqpError::channel(codes::PRECONDITION_FAILED, text)
    }

    pub fn access_refused(text: impl AsRef<str>) -> Self {
        AmqpError::channel(codes::ACCESS_REFUSED, text)
    }

    pub fn not_implemented(text: impl AsRef<str>) -> Self {
        AmqpError::connection(codes::NOT_IMPLEMENTED, text)
    }
}

pub type AmqpResult<T> = Result<T, AmqpError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_carries_code_name_and_method_is_kept_once() {
        let e = AmqpError::not_found("queue", "q", "/")
            .caused_by(50, 10)
            .caused_by(60, 40);
        assert_eq!(
            e,
            AmqpError::Channel {
                code: 404,
                text: "NOT_FOUND - no queue 'q' in vhost '/'".into(),
                class_id: 50,
                method_id: 10
            }
        );
    }
}
