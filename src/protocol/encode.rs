//! Writing frames into an output buffer.
//!
//! Control methods go through amq-protocol's generator; the hot path (deliver,
//! get-ok, return: method + content header + body) is written by hand so that the
//! client's property bytes are forwarded unchanged and bodies are split by the
//! negotiated `frame_max` without intermediate allocations.

use amq_protocol::frame::{gen_frame, AMQPFrame, WriteContext};
use amq_protocol::protocol::AMQPClass;
use bytes::{BufMut, BytesMut};

use super::frame::{
    FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, FRAME_OVERHEAD,
};

/// Append a method frame. amq-protocol only fails to generate when its output
/// buffer is too small, which a `Vec` never is; should it ever fail, nothing is
/// appended and the failure is logged, so the peer sees a missing reply rather
/// than a corrupt stream.
pub fn method(out: &mut BytesMut, channel: u16, class: &AMQPClass) {
    let frame = AMQPFrame::Method(channel, class.clone());
    let result = gen_frame(&frame)(WriteContext::from(Vec::with_capacity(128)));
    match result {
        Ok(ctx) => out.extend_from_slice(&ctx.into_inner().0),
        Err(e) => tracing::error!(error = ?e, ?class, "failed to encode method frame"),
    }
}

pub fn heartbeat(out: &mut BytesMut) {
    out.extend_from_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

/// Start a frame whose payload length is patched by `finish_frame`.
fn begin_frame(out: &mut BytesMut, kind: u8, channel: u16) -> usize {
    out.put_u8(kind);
    out.put_u16(channel);
    let at = out.len();
    out.put_u32(0);
    at
}

fn finish_frame(out: &mut BytesMut, size_at: usize) {
    let size = (out.len() - size_at - 4) as u32;
    out[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    out.put_u8(FRAME_END);
}

fn put_short(out: &mut BytesMut, s: &str) {
    // Names handled by the broker are ShortStrings already (<= 255 bytes); cut
    // defensively rather than write a corrupt length.
    let b = &s.as_bytes()[..s.len().min(255)];
    out.put_u8(b.len() as u8);
    out.extend_from_slice(b);
}

/// basic.deliver(consumer_tag, delivery_tag, redelivered, exchange, routing_key).
pub fn deliver_method(
    out: &mut BytesMut,
    channel: u16,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
) {
    let at = begin_frame(out, FRAME_METHOD, channel);
    out.put_u16(60);
    out.put_u16(60);
    put_short(out, consumer_tag);
    out.put_u64(delivery_tag);
    out.put_u8(redelivered as u8);
    put_short(out, exchange);
    put_short(out, routing_key);
    finish_frame(out, at);
}

/// basic.get-ok(delivery_tag, redelivered, exchange, routing_key, message_count).
pub fn get_ok_method(
    out: &mut BytesMut,
    channel: u16,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
    message_count: u32,
) {
    let at = begin_frame(out, FRAME_METHOD, channel);
    out.put_u16(60);
    out.put_u16(71);
    out.put_u64(delivery_tag);
    out.put_u8(redelivered as u8);
    put_short(out, exchange);
    put_short(out, routing_key);
    out.put_u32(message_count);
    finish_frame(out, at);
}

/// A content header frame carrying the client's raw property bytes.
pub fn header_frame(out: &mut BytesMut, channel: u16, body_size: u64, raw_properties: &[u8]) {
    let at = begin_frame(out, FRAME_HEADER, channel);
    out.put_u16(60);
    out.put_u16(0);
    out.put_u64(body_size);
    out.extend_from_slice(raw_properties);
    finish_frame(out, at);
}

/// Body frames, each at most `frame_max` bytes long overhead included.
pub fn body_frames(out: &mut BytesMut, channel: u16, body: &[u8], frame_max: u32) {
    let chunk = (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1);
    out.reserve(body.len() + (body.len() / chunk + 1) * FRAME_OVERHEAD);
    for part in body.chunks(chunk) {
        out.put_u8(FRAME_BODY);
        out.put_u16(channel);
        out.put_u32(part.len() as u32);
        out.extend_from_slice(part);
        out.put_u8(FRAME_END);
    }
}

/// Header and body frames of a message.
pub fn content(
    out: &mut BytesMut,
    channel: u16,
    raw_properties: &[u8],
    body: &[u8],
    frame_max: u32,
) {
    header_frame(out, channel, body.len() as u64, raw_properties);
    body_frames(out, channel, body, frame_max);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{read_frame, Frame};
    use amq_protocol::protocol::basic;

    #[test]
    fn deliver_roundtrips_through_the_parser() {
        let mut out = BytesMut::new();
        deliver_method(&mut out, 7, "ctag", 42, true, "ex", "rk");
        let f = read_frame(&mut out, 131072).unwrap().unwrap();
        match f {
            Frame::Method(7, m) => match *m {
                AMQPClass::Basic(basic::AMQPMethod::Deliver(d)) => {
                    assert_eq!(d.consumer_tag.as_str(), "ctag");
                    assert_eq!(d.delivery_tag, 42);
                    assert!(d.redelivered);
                    assert_eq!(d.exchange.as_str(), "ex");
                    assert_eq!(d.routing_key.as_str(), "rk");
                }
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bodies_are_split_by_frame_max() {
        let body = vec![7u8; 10_000];
        let mut out = BytesMut::new();
        body_frames(&mut out, 1, &body, 4096);
        let mut got = Vec::new();
        let mut frames = 0;
        while let Some(f) = read_frame(&mut out, 4096).unwrap() {
            frames += 1;
            if let Frame::Body(1, b) = f {
                assert!(b.len() <= 4096 - 8);
                got.extend_from_slice(&b);
            }
        }
        assert_eq!(frames, 3);
        assert_eq!(got, body);
    }

    #[test]
    fn header_keeps_raw_properties() {
        let props = basic::AMQPProperties::default()
            .with_delivery_mode(2)
            .with_message_id("m1".into());
        let raw =
            amq_protocol::protocol::basic::gen_properties(&props)(WriteContext::from(Vec::new()))
                .unwrap()
                .into_inner()
                .0;
        let mut out = BytesMut::new();
        header_frame(&mut out, 1, 5, &raw);
        match read_frame(&mut out, 131072).unwrap().unwrap() {
            Frame::Header(1, h) => {
                assert_eq!(h.body_size, 5);
                assert_eq!(h.properties.delivery_mode(), &Some(2));
                assert_eq!(&h.raw_properties[..], &raw[..]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
