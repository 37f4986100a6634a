//! Cutting whole frames out of the read buffer.
//!
//! `read_frame` returns `Ok(None)` while a frame is incomplete (read more, it is
//! not an error), checks the declared size against `frame_max` before waiting for
//! the payload, checks the frame-end octet, and only then parses.

use amq_protocol::frame::parsing::parse_content_header;
use amq_protocol::protocol::{basic::AMQPProperties, parse_class, AMQPClass};
use bytes::{Buf, Bytes, BytesMut};

use super::codes;

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;
/// Bytes a frame adds around its payload: type, channel, size, frame-end.
pub const FRAME_OVERHEAD: usize = 8;

#[derive(Debug, Clone, PartialEq)]
pub struct ContentHeader {
    pub class_id: u16,
    pub body_size: u64,
    pub properties: AMQPProperties,
    /// The property flags and list exactly as the client sent them, forwarded
    /// unchanged on delivery so every field-table type round-trips.
    pub raw_properties: Bytes,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Method(u16, Box<AMQPClass>),
    Header(u16, Box<ContentHeader>),
    Body(u16, Bytes),
    Heartbeat(u16),
}

impl Frame {
    pub fn channel(&self) -> u16 {
        match self {
            Frame::Method(c, _) | Frame::Header(c, _) | Frame::Body(c, _) | Frame::Heartbeat(c) => {
                *c
            }
        }
    }
}

/// A frame that cannot be accepted; every one is a connection error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrameError {
    #[error("frame size {size} exceeds frame_max {max}")]
    TooLarge { size: u64, max: u32 },
    #[error("bad frame end octet {0:#04x}")]
    BadFrameEnd(u8),
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("unknown method {class_id}/{method_id}")]
    UnknownMethod { class_id: u16, method_id: u16 },
    #[error("malformed arguments for method {class_id}/{method_id}")]
    MalformedMethod { class_id: u16, method_id: u16 },
    #[error("malformed content header")]
    MalformedHeader,
    /// Field tables nested past `table::MAX_DEPTH` (refused before parsing).
    #[error("field table nested deeper than {max} levels in method {class_id}/{method_id}", max = super::table::MAX_DEPTH)]
    TooDeep { class_id: u16, method_id: u16 },
    /// A valid method with an argument the broker does not support, which
    /// amq-protocol's parser would silently drop (basic.qos prefetch_size).
    #[error("{text}")]
    Unsupported {
        class_id: u16,
        method_id: u16,
        text: String,
    },
}

impl FrameError {
    /// The reply code RabbitMQ closes the connection with.
    pub fn reply_code(&self) -> u16 {
        match self {
            FrameError::TooLarge { .. }
            | FrameError::BadFrameEnd(_)
            | FrameError::UnknownType(_)
            | FrameError::MalformedHeader
            | FrameError::TooDeep { .. }
            // RabbitMQ: "cannot decode ..." is a frame error.
            | FrameError::MalformedMethod { .. } => codes::FRAME_ERROR,
            FrameError::UnknownMethod { .. } | FrameError::Unsupported { .. } => {
                codes::NOT_IMPLEMENTED
            }
        }
    }

    pub fn class_method(&self) -> (u16, u16) {
        match self {
            FrameError::UnknownMethod {
                class_id,
                method_id,
            }
            | FrameError::MalformedMethod {
                class_id,
                method_id,
            }
            | FrameError::TooDeep {
                class_id,
                method_id,
            }
            | FrameError::Unsupported {
                class_id,
                method_id,
                ..
            } => (*class_id, *method_id),
            _ => (0, 0),
        }
    }
}

/// Take one whole frame from the front of `buf`, or `Ok(None)` if more bytes are
/// needed. `frame_max` bounds the whole frame, overhead included.
pub fn read_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let kind = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    if !matches!(
        kind,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(FrameError::UnknownType(kind));
    }
    if size as u64 + FRAME_OVERHEAD as u64 > frame_max as u64 {
        return Err(FrameError::TooLarge {
            size: size as u64 + FRAME_OVERHEAD as u64,
            max: frame_max,
        });
    }
    let total = size + FRAME_OVERHEAD;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let end = buf[total - 1];
    if end != FRAME_END {
        return Err(FrameError::BadFrameEnd(end));
    }
    buf.advance(7);
    let payload = buf.split_to(size).freeze();
    buf.advance(1);
    let frame = match kind {
        FRAME_METHOD => Frame::Method(channel, Box::new(parse_method(&payload)?)),
        FRAME_HEADER => Frame::Header(channel, Box::new(parse_header(payload)?)),
        FRAME_BODY => Frame::Body(channel, payload),
        _ => Frame::Heartbeat(channel),
    };
    Ok(Some(frame))
}

fn parse_method(payload: &[u8]) -> Result<AMQPClass, FrameError> {
    if payload.len() < 4 {
        return Err(FrameError::MalformedMethod {
            class_id: 0,
            method_id: 0,
        });
    }
    let class_id = u16::from_be_bytes([payload[0], payload[1]]);
    let method_id = u16::from_be_bytes([payload[2], payload[3]]);
    if !is_known_method(class_id, method_id) {
        return Err(FrameError::UnknownMethod {
            class_id,
            method_id,
        });
    }
    // basic.qos: prefetch_size is parsed and dropped by amq-protocol; RabbitMQ
    // refuses any non-zero value.
    if (class_id, method_id) == (60, 10) && payload.len() >= 8 {
        let size = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
        if size != 0 {
            return Err(FrameError::Unsupported {
                class_id,
                method_id,
                text: format!("prefetch_size!=0 ({size})"),
            });
        }
    }
    // amq-protocol parses nested tables recursively: bound the nesting first,
    // or one frame overflows the stack and takes the whole broker down.
    if super::table::method_too_deep(class_id, method_id, &payload[4..]) {
        return Err(FrameError::TooDeep {
            class_id,
            method_id,
        });
    }
    match parse_class(payload) {
        Ok((&[], class)) => Ok(class),
        _ => Err(FrameError::MalformedMethod {
            class_id,
            method_id,
        }),
    }
}

fn parse_header(payload: Bytes) -> Result<ContentHeader, FrameError> {
    // Nested `headers` tables: see parse_method.
    if payload.len() >= 12 && super::table::properties_too_deep(&payload[12..]) {
        return Err(FrameError::MalformedHeader);
    }
    match parse_content_header(&payload[..]) {
        Ok((rest, h)) if rest.is_empty() && payload.len() >= 14 => Ok(ContentHeader {
            class_id: h.class_id,
            body_size: h.body_size,
            properties: h.properties,
            raw_properties: payload.slice(12..),
        }),
        _ => Err(FrameError::MalformedHeader),
    }
}

/// Whether (class, method) is an AMQP 0-9-1 method at all (whichever side sends it).
pub fn is_known_method(class_id: u16, method_id: u16) -> bool {
    let methods: &[u16] = match class_id {
        10 => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51, 60, 61, 70, 71],
        20 => &[10, 11, 20, 21, 40, 41],
        30 => &[10, 11],
        40 => &[10, 11, 20, 21, 30, 31, 40, 51],
        50 => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51],
        60 => &[
            10, 11, 20, 21, 30, 31, 40, 50, 60, 70, 71, 72, 80, 90, 100, 110, 111, 120,
        ],
        85 => &[10, 11],
        90 => &[10, 11, 20, 21, 30, 31],
        _ => &[],
    };
    methods.contains(&method_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::encode;
    use amq_protocol::protocol::channel;

    fn method_bytes(ch: u16, m: AMQPClass) -> BytesMut {
        let mut out = BytesMut::new();
        encode::method(&mut out, ch, &m);
        out
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let full = method_bytes(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        );
        for cut in 0..full.len() {
            let mut b = BytesMut::from(&full[..cut]);
            assert_eq!(read_frame(&mut b, 131072), Ok(None), "cut at {cut}");
        }
        let mut b = full.clone();
        let f = read_frame(&mut b, 131072).unwrap().unwrap();
        assert!(matches!(f, Frame::Method(1, _)));
        assert!(b.is_empty());
    }

    #[test]
    fn oversized_frame_is_refused_before_buffering() {
        let mut b = BytesMut::from(&[1u8, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF][..]);
        assert!(matches!(
            read_frame(&mut b, 131072),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn bad_frame_end_is_an_error() {
        let mut full = method_bytes(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        );
        let last = full.len() - 1;
        full[last] = 0;
        assert_eq!(
            read_frame(&mut full, 131072),
            Err(FrameError::BadFrameEnd(0))
        );
    }

    #[test]
    fn unknown_method_and_type() {
        let mut b = BytesMut::from(&[1u8, 0, 1, 0, 0, 0, 4, 0, 99, 0, 10, 0xCE][..]);
        assert_eq!(
            read_frame(&mut b, 131072),
            Err(FrameError::UnknownMethod {
                class_id: 99,
                method_id: 10
            })
        );
        let mut b = BytesMut::from(&[7u8, 0, 1, 0, 0, 0, 0, 0xCE][..]);
        assert_eq!(read_frame(&mut b, 131072), Err(FrameError::UnknownType(7)));
    }

    #[test]
    fn truncated_arguments_are_a_frame_error() {
        // queue.declare with no arguments at all
        let mut b = BytesMut::from(&[1u8, 0, 1, 0, 0, 0, 4, 0, 50, 0, 10, 0xCE][..]);
        assert_eq!(
            read_frame(&mut b, 131072).map_err(|e| e.reply_code()),
            Err(codes::FRAME_ERROR)
        );
    }

    fn frame_bytes(kind: u8, ch: u16, payload: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.extend_from_slice(&[kind]);
        b.extend_from_slice(&ch.to_be_bytes());
        b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        b.extend_from_slice(payload);
        b.extend_from_slice(&[FRAME_END]);
        b
    }

    #[test]
    fn deeply_nested_tables_are_refused_before_parsing() {
        // Found by fuzzing: ~21,000 nested tables fit in one frame and
        // overflowed the stack in amq-protocol's recursive parser (this test's
        // thread has a 2 MiB stack, like a tokio worker).
        let mut p = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
        p.extend_from_slice(&crate::protocol::table::nested_for_tests(21_000));
        let mut b = frame_bytes(FRAME_METHOD, 1, &p);
        let err = read_frame(&mut b, 131072).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooDeep {
                class_id: 50,
                method_id: 10
            }
        );
        assert_eq!(err.reply_code(), codes::FRAME_ERROR);

        let mut h = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0];
        h.extend_from_slice(&crate::protocol::table::nested_for_tests(21_000));
        let mut b = frame_bytes(FRAME_HEADER, 1, &h);
        assert_eq!(read_frame(&mut b, 131072), Err(FrameError::MalformedHeader));

        // Nesting within the bound still parses.
        let mut p = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
        p.extend_from_slice(&crate::protocol::table::nested_for_tests(
            crate::protocol::table::MAX_DEPTH,
        ));
        let mut b = frame_bytes(FRAME_METHOD, 1, &p);
        assert!(matches!(
            read_frame(&mut b, 131072),
            Ok(Some(Frame::Method(1, _)))
        ));
    }

    #[test]
    fn body_frames_are_sliced() {
        let mut b = BytesMut::new();
        encode::body_frames(&mut b, 3, b"hello", 131072);
        let f = read_frame(&mut b, 131072).unwrap().unwrap();
        assert_eq!(f, Frame::Body(3, Bytes::from_static(b"hello")));
    }
}
