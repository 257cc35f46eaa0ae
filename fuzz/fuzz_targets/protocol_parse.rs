//! Fuzzes `protocol::parse_client_msg` with arbitrary text, and the encoders with what it parsed.
//!
//! Parsing must never panic and every error must be `BAD_REQUEST`. A parsed `publish` is turned
//! into a delivery with `encode_message_frame`; the frame must be one unmasked text frame whose
//! JSON parses back (`parse_delivery`) with the same topic, seqNo, messageId and `data` equal to
//! the published payload byte for byte. Every other encoder is run on the parsed strings too, so
//! escaping of arbitrary (unescaped) text is exercised.

#![no_main]

use libfuzzer_sys::fuzz_target;
use subsocket::protocol::{
    encode_ack, encode_error, encode_message_frame, encode_subscribed, encode_unsubscribed,
    parse_client_msg, parse_delivery, AckStatus, ClientMsg, ErrorCode,
};

/// The payload of a single unmasked FIN text frame that fills `frame` exactly.
fn frame_text(frame: &[u8]) -> &str {
    assert_eq!(frame[0], 0x81, "FIN + text opcode");
    assert_eq!(frame[1] & 0x80, 0, "server frames are unmasked");
    let (len, head) = match frame[1] & 0x7f {
        126 => (usize::from(u16::from_be_bytes([frame[2], frame[3]])), 4),
        127 => {
            let mut be = [0u8; 8];
            be.copy_from_slice(&frame[2..10]);
            (usize::try_from(u64::from_be_bytes(be)).expect("fits"), 10)
        }
        n => (usize::from(n), 2),
    };
    assert_eq!(head + len, frame.len(), "exactly one frame");
    std::str::from_utf8(&frame[head..]).expect("text frames hold UTF-8")
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let msg = match parse_client_msg(text) {
        Ok(msg) => msg,
        Err(err) => {
            assert_eq!(err.code, ErrorCode::BadRequest);
            let mut out = Vec::new();
            encode_error(&mut out, &err);
            frame_text(&out);
            return;
        }
    };
    match msg {
        ClientMsg::Publish {
            topic,
            message_id,
            payload,
            qos,
        } => {
            assert!(qos <= 1);
            let id = message_id.as_deref().unwrap_or("generated-id");
            let frame = encode_message_frame(&topic, 42, id, payload.get().as_bytes());
            let delivery = parse_delivery(frame_text(&frame)).expect("a delivery is valid JSON");
            assert_eq!(delivery.topic, topic);
            assert_eq!(delivery.seq_no, 42);
            assert_eq!(delivery.message_id, id);
            assert_eq!(delivery.data.get(), payload.get(), "data byte for byte");
            let mut out = Vec::new();
            encode_ack(&mut out, id, AckStatus::Ok, Some(42));
            frame_text(&out);
        }
        ClientMsg::Subscribe { topics, .. } | ClientMsg::Unsubscribe { topics } => {
            let names: Vec<&str> = topics.as_slice().iter().map(|t| &**t).collect();
            let mut out = Vec::new();
            encode_subscribed(&mut out, &names, topics.is_batch());
            frame_text(&out);
            out.clear();
            encode_unsubscribed(&mut out, &names, topics.is_batch());
            frame_text(&out);
        }
        _ => {}
    }
});
