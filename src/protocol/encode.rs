//! Server -> client: each `encode_*` appends ONE complete unmasked WebSocket text frame (the
//! header, then JSON in a fixed field order) to a caller's buffer; [`encode_message_frame_with`] builds a
//! delivery once per publish as a finished frame in one `Bytes`, the payload written byte for
//! byte. [`parse_delivery`] is its client side (load generator, tests, fuzzing). Pure: bytes in,
//! bytes out. Next on the path of a publish: the shard's `fanout.rs` appends that frame.

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use super::parse::{looks_like_object, truncated};
use super::{ErrorCode, ProtoError, MAX_ECHOED_TYPE_BYTES};
use crate::ws::frame::{server_header, OpCode, MAX_SERVER_HEADER_BYTES};

/// Appends `s` as a JSON string literal (quoted, escaped by serde_json).
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s)
        .expect("serializing a str into a Vec<u8> has no failure path (no I/O, no map keys)");
}

/// Appends `n` in decimal without allocating.
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends one text frame whose payload `write_json` appends. The JSON is written after a
/// reserved maximal header, then shifted left over the unused header bytes: no temporary buffer.
/// O(n) in the JSON length.
fn push_text_frame(out: &mut Vec<u8>, write_json: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.resize(start + MAX_SERVER_HEADER_BYTES, 0);
    write_json(out);
    let json_len = out.len() - start - MAX_SERVER_HEADER_BYTES;
    let mut head = [0u8; MAX_SERVER_HEADER_BYTES];
    let head_len = server_header(OpCode::Text, json_len, &mut head);
    out.copy_within(start + MAX_SERVER_HEADER_BYTES.., start + head_len);
    out[start..start + head_len].copy_from_slice(&head[..head_len]);
    out.truncate(start + head_len + json_len);
}

/// Appends `"topic":"a"` when `!batch` and there is exactly one topic, else `"topics":[..]`.
fn push_topics(out: &mut Vec<u8>, topics: &[&str], batch: bool) {
    if let (false, [one]) = (batch, topics) {
        out.extend_from_slice(br#""topic":"#);
        push_json_str(out, one);
    } else {
        out.extend_from_slice(br#""topics":["#);
        for (i, topic) in topics.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_json_str(out, topic);
        }
        out.push(b']');
    }
}

/// Appends `{"type":"ready","sessionId":"…"}` as one text frame.
pub fn encode_ready(out: &mut Vec<u8>, session_id: &str) {
    push_text_frame(out, |out| {
        out.extend_from_slice(br#"{"type":"ready","sessionId":"#);
        push_json_str(out, session_id);
        out.push(b'}');
    });
}

/// Appends `{"type":"subscribed","topic":"a"}` (`batch == false` with exactly one topic: the
/// answer to a `topic` request) or `{"type":"subscribed","topics":["a","b"]}` (any other case:
/// the answer to a `topics` request) as one text frame.
pub fn encode_subscribed(out: &mut Vec<u8>, topics: &[&str], batch: bool) {
    push_text_frame(out, |out| {
        out.extend_from_slice(br#"{"type":"subscribed","#);
        push_topics(out, topics, batch);
        out.push(b'}');
    });
}

/// Appends `{"type":"unsubscribed","topic":"a"}` or `{"type":"unsubscribed","topics":[..]}`,
/// chosen as in [`encode_subscribed`], as one text frame.
pub fn encode_unsubscribed(out: &mut Vec<u8>, topics: &[&str], batch: bool) {
    push_text_frame(out, |out| {
        out.extend_from_slice(br#"{"type":"unsubscribed","#);
        push_topics(out, topics, batch);
        out.push(b'}');
    });
}

/// The `status` of a publish answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckStatus {
    /// Accepted and delivered: `"ok"`.
    Ok,
    /// A repeated `messageId` within the dedup window, not delivered again: `"duplicate"`.
    Duplicate,
}

impl AckStatus {
    /// The wire word: `"ok"` or `"duplicate"`.
    pub fn as_str(self) -> &'static str {
        match self {
            AckStatus::Ok => "ok",
            AckStatus::Duplicate => "duplicate",
        }
    }
}

/// Appends `{"type":"ack","messageId":"…","status":"ok","seqNo":N}` (`seqNo` omitted when
/// `None`) as one text frame.
pub fn encode_ack(out: &mut Vec<u8>, message_id: &str, status: AckStatus, seq_no: Option<u64>) {
    push_text_frame(out, |out| {
        out.extend_from_slice(br#"{"type":"ack","messageId":"#);
        push_json_str(out, message_id);
        out.extend_from_slice(br#","status":""#);
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b'"');
        if let Some(seq_no) = seq_no {
            out.extend_from_slice(br#","seqNo":"#);
            push_u64(out, seq_no);
        }
        out.push(b'}');
    });
}

/// Appends `{"type":"error","code":"…","message":"…","topic":"…","messageId":"…"}` (`topic`
/// and `messageId` omitted when `None`) as one text frame.
pub fn encode_error(out: &mut Vec<u8>, err: &ProtoError) {
    push_text_frame(out, |out| {
        out.extend_from_slice(br#"{"type":"error","code":""#);
        out.extend_from_slice(err.code.as_str().as_bytes());
        out.extend_from_slice(br#"","message":"#);
        push_json_str(out, &err.message);
        if let Some(topic) = &err.topic {
            out.extend_from_slice(br#","topic":"#);
            push_json_str(out, topic);
        }
        if let Some(id) = &err.message_id {
            out.extend_from_slice(br#","messageId":"#);
            push_json_str(out, id);
        }
        if let Some(seq) = err.oldest_seq {
            out.extend_from_slice(br#","oldestSeq":"#);
            push_u64(out, seq);
        }
        if let Some((from, to)) = err.range {
            out.extend_from_slice(br#","fromSeq":"#);
            push_u64(out, from);
            out.extend_from_slice(br#","toSeq":"#);
            push_u64(out, to);
        }
        out.push(b'}');
    });
}

/// Appends `{"type":"pong"}` as one text frame.
pub fn encode_pong(out: &mut Vec<u8>) {
    push_text_frame(out, |out| out.extend_from_slice(br#"{"type":"pong"}"#));
}

/// Appends `{"type":"resumed","sessionId":"…"}` as one text frame.
pub fn encode_resumed(out: &mut Vec<u8>, session_id: &str) {
    push_text_frame(out, |out| {
        out.extend_from_slice(br#"{"type":"resumed","sessionId":"#);
        push_json_str(out, session_id);
        out.push(b'}');
    });
}

/// The delivery, built ONCE per publish: one finished unmasked WebSocket text frame holding
/// `{"type":"message","topic":"…","seqNo":42,"messageId":"…","data":<data, byte for byte>}`,
/// whose bytes are then shared (not copied) by every subscriber on every core.
///
/// `data` must be one complete JSON value (the publish's `&RawValue` bytes, or a validated HTTP
/// body); it is not re-parsed in release builds.
///
/// The JSON is written into a `Vec` after [`MAX_SERVER_HEADER_BYTES`] reserved bytes, the header
/// is written right-aligned in front of it, and the `Bytes` starts at the header: one allocation
/// of the frame, no second copy. O(n) in the frame length.
pub fn encode_message_frame(
    topic: &str,
    seq_no: u64,
    message_id: &str,
    data: &[u8],
) -> bytes::Bytes {
    encode_message_frame_with(topic, seq_no, message_id, &FrameExtras::default(), data)
}

/// Optional fields of a delivery, written between `messageId` and `data`.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameExtras<'a> {
    /// A QoS 1 delivery: `"qos":1` (the subscriber must `ack` it).
    pub qos1: bool,
    /// `"kid":…,"sig":…` (I7): the key id and the lowercase hex signature.
    pub signature: Option<(&'a str, &'a str)>,
}

/// What the slow-consumer ladder must know of a delivery it discards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryHead {
    pub topic: String,
    pub seq_no: u64,
    /// `"qos":1`: tracked until acknowledged, sent again by its own rules.
    pub qos1: bool,
}

/// The head of a delivery payload made by [`encode_message_frame_with`] (the JSON without its
/// frame header), read back from its fixed opening; `None` for anything else. O(topic and
/// messageId length).
pub fn delivery_head(payload: &[u8]) -> Option<DeliveryHead> {
    fn json_str(b: &[u8]) -> Option<(String, &[u8])> {
        let mut values = serde_json::Deserializer::from_slice(b).into_iter::<String>();
        let s = values.next()?.ok()?;
        Some((s, &b[values.byte_offset()..]))
    }
    let rest = payload.strip_prefix(br#"{"type":"message","topic":"#)?;
    let (topic, rest) = json_str(rest)?;
    let rest = rest.strip_prefix(br#","seqNo":"#)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let seq_no = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = rest[digits..].strip_prefix(br#","messageId":"#)?;
    let (_, rest) = json_str(rest)?;
    Some(DeliveryHead {
        topic,
        seq_no,
        qos1: rest.starts_with(br#","qos":1"#),
    })
}

/// [`encode_message_frame`] with `"qos":1` and/or `"kid"`/`"sig"` (placed before `data`).
pub fn encode_message_frame_with(
    topic: &str,
    seq_no: u64,
    message_id: &str,
    extras: &FrameExtras<'_>,
    data: &[u8],
) -> bytes::Bytes {
    debug_assert!(
        serde_json::from_slice::<IgnoredAny>(data).is_ok(),
        "delivery data must be one JSON value"
    );
    const FIXED: &[u8] = br#"{"type":"message","topic":"","seqNo":,"messageId":"","data":}"#;
    let extra_len = if extras.qos1 { 8 } else { 0 }
        + extras.signature.map_or(0, |(k, s)| 20 + k.len() + s.len());
    let mut buf = Vec::with_capacity(
        MAX_SERVER_HEADER_BYTES
            + FIXED.len()
            + 20
            + topic.len()
            + message_id.len()
            + extra_len
            + data.len(),
    );
    buf.resize(MAX_SERVER_HEADER_BYTES, 0);
    buf.extend_from_slice(br#"{"type":"message","topic":"#);
    push_json_str(&mut buf, topic);
    buf.extend_from_slice(br#","seqNo":"#);
    push_u64(&mut buf, seq_no);
    buf.extend_from_slice(br#","messageId":"#);
    push_json_str(&mut buf, message_id);
    if extras.qos1 {
        buf.extend_from_slice(br#","qos":1"#);
    }
    if let Some((kid, sig)) = extras.signature {
        buf.extend_from_slice(br#","kid":"#);
        push_json_str(&mut buf, kid);
        buf.extend_from_slice(br#","sig":"#);
        push_json_str(&mut buf, sig);
    }
    buf.extend_from_slice(br#","data":"#);
    buf.extend_from_slice(data);
    buf.push(b'}');
    let json_len = buf.len() - MAX_SERVER_HEADER_BYTES;
    let mut head = [0u8; MAX_SERVER_HEADER_BYTES];
    let head_len = server_header(OpCode::Text, json_len, &mut head);
    let start = MAX_SERVER_HEADER_BYTES - head_len;
    buf[start..MAX_SERVER_HEADER_BYTES].copy_from_slice(&head[..head_len]);
    bytes::Bytes::from(buf).slice(start..)
}

/// The plain JSON (no frame) answer of HTTP `POST /publish/{topic}`:
/// `{"seqNo":N,"messageId":"…","status":"ok"}`.
pub fn publish_result_json(seq_no: u64, message_id: &str, status: AckStatus) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + message_id.len());
    out.extend_from_slice(br#"{"seqNo":"#);
    push_u64(&mut out, seq_no);
    out.extend_from_slice(br#","messageId":"#);
    push_json_str(&mut out, message_id);
    out.extend_from_slice(br#","status":""#);
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(br#""}"#);
    out
}

/// A delivery as a subscriber reads it: the client side of [`encode_message_frame`], for the load
/// generator, integration tests and fuzzing.
#[derive(Debug, Clone)]
pub struct Delivery<'a> {
    /// `topic`.
    pub topic: Cow<'a, str>,
    /// `seqNo`.
    pub seq_no: u64,
    /// `messageId`.
    pub message_id: Cow<'a, str>,
    /// `data`, the published payload byte for byte.
    pub data: &'a RawValue,
}

/// The wire shape of a delivery (`type` checked separately so its error is clear).
#[derive(serde::Deserialize)]
struct DeliveryWire<'a> {
    /// `type`, must be `"message"`.
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    /// `topic`.
    #[serde(borrow)]
    topic: Cow<'a, str>,
    /// `seqNo`.
    #[serde(rename = "seqNo")]
    seq_no: u64,
    /// `messageId`.
    #[serde(rename = "messageId", borrow)]
    message_id: Cow<'a, str>,
    /// `data`.
    #[serde(borrow)]
    data: &'a RawValue,
}

/// Parses the JSON text of a delivery (`{"type":"message",…}`, the frame payload of
/// [`encode_message_frame`]). `BAD_REQUEST` when it is not valid JSON, not an object, not of
/// type `message` or lacks a field. O(n) in the text length.
pub fn parse_delivery(text: &str) -> Result<Delivery<'_>, ProtoError> {
    if !looks_like_object(text) {
        return Err(ProtoError::new(
            ErrorCode::BadRequest,
            "delivery must be a JSON object",
        ));
    }
    let wire: DeliveryWire<'_> = serde_json::from_str(text)
        .map_err(|e| ProtoError::new(ErrorCode::BadRequest, format!("bad delivery: {e}")))?;
    if wire.ty != "message" {
        return Err(ProtoError::new(
            ErrorCode::BadRequest,
            format!(
                "delivery has type '{}', not 'message'",
                truncated(&wire.ty, MAX_ECHOED_TYPE_BYTES)
            ),
        ));
    }
    Ok(Delivery {
        topic: wire.topic,
        seq_no: wire.seq_no,
        message_id: wire.message_id,
        data: wire.data,
    })
}
