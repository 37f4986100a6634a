//! Frame decoder: `hopper::protocol::read_frame` over arbitrary bytes.
//!
//! Invariants: it never panics; an accepted frame consumed exactly the 8 + size
//! bytes its header declared, within frame_max, on the channel it declared; a
//! refusal to wait leaves the buffer alone; and feeding the same bytes in
//! arbitrary pieces gives exactly the same frames and the same final error as
//! feeding them at once (incomplete never turns into a different outcome when
//! bytes are appended).
#![no_main]

use bytes::BytesMut;
use hopper::protocol::frame::{Frame, FrameError, FRAME_OVERHEAD};
use hopper::protocol::{encode, read_frame};
use libfuzzer_sys::fuzz_target;

// Fields are read through Debug only (see the comparison at the end).
#[allow(dead_code)]
#[derive(Debug)]
enum Outcome {
    Frame(Frame),
    Error(FrameError),
}

fn header(buf: &[u8]) -> Option<(u16, usize)> {
    (buf.len() >= 7).then(|| {
        (
            u16::from_be_bytes([buf[1], buf[2]]),
            u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize,
        )
    })
}

/// Call read_frame once, checking what it did to the buffer.
fn step(buf: &mut BytesMut, frame_max: u32) -> Option<Outcome> {
    let before = buf.clone();
    let r = read_frame(buf, frame_max);
    match r {
        Ok(None) => {
            assert_eq!(&before[..], &buf[..], "incomplete must not consume");
            if let Some((_, size)) = header(&before) {
                assert!(
                    before.len() < size + FRAME_OVERHEAD,
                    "whole frame left unread"
                );
                assert!(
                    size + FRAME_OVERHEAD <= frame_max as usize,
                    "oversized frame awaited"
                );
            }
            None
        }
        Ok(Some(frame)) => {
            let (channel, size) = header(&before).expect("a frame needs a header");
            let consumed = before.len() - buf.len();
            assert_eq!(
                consumed,
                size + FRAME_OVERHEAD,
                "frame size differs from the header's"
            );
            assert!(
                consumed <= frame_max as usize,
                "frame over frame_max accepted"
            );
            assert_eq!(&before[consumed..], &buf[..], "the rest is left as it was");
            assert_eq!(frame.channel(), channel);
            assert_eq!(before[consumed - 1], 0xCE);
            match &frame {
                Frame::Body(_, b) => assert_eq!(b.len(), size),
                // Replies echo parsed methods: encoding one must not panic.
                Frame::Method(ch, m) => encode::method(&mut BytesMut::new(), *ch, m),
                Frame::Header(_, h) => assert_eq!(h.raw_properties.len() + 12, size),
                Frame::Heartbeat(_) => {}
            }
            Some(Outcome::Frame(frame))
        }
        Err(e) => {
            if let FrameError::TooLarge { size, .. } = e {
                let (_, declared) = header(&before).expect("size comes from a header");
                assert_eq!(size, declared as u64 + FRAME_OVERHEAD as u64);
                assert!(size > frame_max as u64);
            }
            Some(Outcome::Error(e))
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    // frame_max: the broker's range (4096 ..= 131072) most of the time, any
    // value up to 1 MiB sometimes (an incomplete frame reserves its declared
    // size, so a configured frame_max of gigabytes would make the fuzzer
    // allocate them; the configuration is trusted).
    let frame_max = match data[0] % 4 {
        0 => u32::from_be_bytes([0, data[0] >> 4, data[1], data[2]]),
        _ => 4096 + (u16::from_be_bytes([data[1], data[2]]) as u32) * 2,
    };
    let chunking = data[1];
    let stream = &data[3..];

    // All at once.
    let mut whole = Vec::new();
    let mut buf = BytesMut::from(stream);
    while let Some(o) = step(&mut buf, frame_max) {
        let stop = matches!(o, Outcome::Error(_));
        whole.push(o);
        if stop {
            break;
        }
    }

    // The same bytes appended piece by piece (piece sizes from the input).
    let mut pieces = Vec::new();
    let mut buf = BytesMut::new();
    let mut at = 0;
    let mut n = 0usize;
    'feed: while at < stream.len() {
        let len = 1 + (stream[at] as usize ^ chunking as usize) % 64 + n % 3;
        n += 1;
        let end = (at + len).min(stream.len());
        buf.extend_from_slice(&stream[at..end]);
        at = end;
        while let Some(o) = step(&mut buf, frame_max) {
            let stop = matches!(o, Outcome::Error(_));
            pieces.push(o);
            if stop {
                break 'feed;
            }
        }
    }
    // Compared as text: a parsed Float(NaN) argument is not equal to itself.
    assert_eq!(
        format!("{whole:?}"),
        format!("{pieces:?}"),
        "appending bytes changed the outcome"
    );
});
