//! The AMQP 0-9-1 wire format: cutting whole frames out of a byte stream
//! (`frame`), and writing frames (`encode`). This module knows bytes and frames
//! only; it never looks at broker state.
//!
//! amq-protocol parses method arguments and content headers; we read the 7-byte
//! frame header ourselves so that a declared size is checked against `frame_max`
//! before anything is buffered (amq-protocol would wait forever for a frame that
//! claims 4 GiB), and so that body frames are sliced out of the read buffer
//! without a copy.

pub mod encode;
pub mod frame;
pub mod table;

pub use frame::{read_frame, ContentHeader, Frame, FrameError};

/// AMQP 0-9-1 protocol header a client must send first.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// Reply codes (AMQP 0-9-1 constants, as RabbitMQ uses them).
pub mod codes {
    pub const REPLY_SUCCESS: u16 = 200;
    pub const CONTENT_TOO_LARGE: u16 = 311;
    pub const NO_ROUTE: u16 = 312;
    pub const CONNECTION_FORCED: u16 = 320;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const RESOURCE_LOCKED: u16 = 405;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const FRAME_ERROR: u16 = 501;
    pub const SYNTAX_ERROR: u16 = 502;
    pub const COMMAND_INVALID: u16 = 503;
    pub const CHANNEL_ERROR: u16 = 504;
    pub const UNEXPECTED_FRAME: u16 = 505;
    pub const RESOURCE_ERROR: u16 = 506;
    pub const NOT_ALLOWED: u16 = 530;
    pub const NOT_IMPLEMENTED: u16 = 540;
    pub const INTERNAL_ERROR: u16 = 541;

    /// The symbolic name RabbitMQ puts at the start of a reply text.
    pub fn name(code: u16) -> &'static str {
        match code {
            REPLY_SUCCESS => "OK",
            CONTENT_TOO_LARGE => "CONTENT_TOO_LARGE",
            NO_ROUTE => "NO_ROUTE",
            CONNECTION_FORCED => "CONNECTION_FORCED",
            ACCESS_REFUSED => "ACCESS_REFUSED",
            NOT_FOUND => "NOT_FOUND",
            RESOURCE_LOCKED => "RESOURCE_LOCKED",
            PRECONDITION_FAILED => "PRECONDITION_FAILED",
            FRAME_ERROR => "FRAME_ERROR",
            SYNTAX_ERROR => "SYNTAX_ERROR",
            COMMAND_INVALID => "COMMAND_INVALID",
            CHANNEL_ERROR => "CHANNEL_ERROR",
            UNEXPECTED_FRAME => "UNEXPECTED_FRAME",
            RESOURCE_ERROR => "RESOURCE_ERROR",
            NOT_ALLOWED => "NOT_ALLOWED",
            NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
            _ => "INTERNAL_ERROR",
        }
    }
}

/// Build a ShortString from text that may be longer than 255 bytes (client or
/// config supplied): amq-protocol's `From<&str>` panics on such text, so cut it at
/// a char boundary instead.
pub fn short(text: &str) -> amq_protocol::types::ShortString {
    let mut end = text.len().min(255);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    amq_protocol::types::ShortString::from(&text[..end])
}
