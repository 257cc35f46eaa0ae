//! Micro Socket messages, exactly as `PROTOCOL.md` (the contract) defines them.
//!
//! What lives here: [`parse_client_msg`] (one client text message -> [`ClientMsg`] or a
//! `BAD_REQUEST` [`ProtoError`]), [`validate_topic`], the stable error codes ([`ErrorCode`]) and
//! the encoders of every server message. Each `encode_*` appends ONE complete unmasked WebSocket
//! text frame (header + JSON) to a caller's buffer; [`encode_message_frame`] builds a delivery
//! once per publish as a finished frame in one `Bytes` shared by every subscriber.
//!
//! What may not: sockets, glommio, async, topic state, authorization, sequence numbers. This
//! module is pure: bytes in, bytes out.
//!
//! # Invariants
//! - A published `payload` is never re-encoded: it is kept as the `&RawValue` slice of the
//!   client's own text and written into the delivery's `data` byte for byte.
//! - Strings are borrowed from the client's text whenever they contain no escape (`Cow`).
//! - Output JSON has a fixed field order (as in `PROTOCOL.md`), optional fields are omitted when
//!   absent, and every string is escaped by `serde_json`.
//! - Every parse error is `BAD_REQUEST` with a message naming the problem, and carries the
//!   request's `topic` / `messageId` when they could be read.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::ws::frame::{server_header, OpCode, MAX_SERVER_HEADER_BYTES};

/// Longest accepted `messageId`, in bytes: ids are dedup keys held per identity for a window, so
/// their size bounds that memory.
pub const MAX_MESSAGE_ID_BYTES: usize = 128;

/// Longest `type` value echoed back in an "unknown type" error, in bytes.
const MAX_ECHOED_TYPE_BYTES: usize = 64;

/// The stable error codes of `{"type":"error","code":…}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The message is not a well-formed request (`BAD_REQUEST`).
    BadRequest,
    /// Authentication is required and missing or invalid (`UNAUTHORIZED`).
    Unauthorized,
    /// The identity may not read/write that topic (`FORBIDDEN`).
    Forbidden,
    /// A message or payload is over the size limit (`TOO_LARGE`).
    TooLarge,
    /// A count limit (topics per connection, connections, …) is reached (`LIMIT_EXCEEDED`).
    LimitExceeded,
    /// Too many requests in the window (`RATE_LIMITED`).
    RateLimited,
    /// `resume` named a session no longer held (`SESSION_EXPIRED`).
    SessionExpired,
    /// `replay` asked for messages no longer held (`REPLAY_UNAVAILABLE`).
    ReplayUnavailable,
    /// A `/ws/sub/{topic}` micro socket was asked about another topic (`SINGLE_TOPIC`).
    SingleTopic,
    /// The connection's outbound backlog is over its limit (`SLOW_CONSUMER`).
    SlowConsumer,
    /// A bug or unexpected condition in the gateway (`INTERNAL_ERROR`).
    Internal,
    /// (extension, clusters) The publish was not stored by the cluster backbone in time, or too
    /// many wait for it (`BACKBONE_UNAVAILABLE`). Publishing again with the same `messageId`
    /// is safe.
    BackboneUnavailable,
}

impl ErrorCode {
    /// The wire word of the code, e.g. `"BAD_REQUEST"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::TooLarge => "TOO_LARGE",
            ErrorCode::LimitExceeded => "LIMIT_EXCEEDED",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::SessionExpired => "SESSION_EXPIRED",
            ErrorCode::ReplayUnavailable => "REPLAY_UNAVAILABLE",
            ErrorCode::SingleTopic => "SINGLE_TOPIC",
            ErrorCode::SlowConsumer => "SLOW_CONSUMER",
            ErrorCode::Internal => "INTERNAL_ERROR",
            ErrorCode::BackboneUnavailable => "BACKBONE_UNAVAILABLE",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error answer: `{"type":"error","code":…,"message":…,"topic":…,"messageId":…}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoError {
    /// The stable machine-readable code.
    pub code: ErrorCode,
    /// A human-readable explanation naming the problem.
    pub message: String,
    /// The topic of the request this answers, so the client can correlate it.
    pub topic: Option<String>,
    /// The `messageId` of the request this answers (publish/ack), for correlation.
    pub message_id: Option<String>,
    /// `REPLAY_UNAVAILABLE` (extension): the oldest `seqNo` still held, when any is.
    pub oldest_seq: Option<u64>,
}

impl ProtoError {
    /// An error with no request context.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtoError {
            code,
            message: message.into(),
            topic: None,
            message_id: None,
            oldest_seq: None,
        }
    }

    /// Names the oldest `seqNo` still held (`REPLAY_UNAVAILABLE`).
    pub fn with_oldest_seq(mut self, seq: Option<u64>) -> Self {
        self.oldest_seq = seq;
        self
    }

    /// Names the topic of the request.
    pub fn with_topic(mut self, topic: &str) -> Self {
        self.topic = Some(topic.to_owned());
        self
    }

    /// Names the `messageId` of the request.
    pub fn with_message_id(mut self, id: &str) -> Self {
        self.message_id = Some(id.to_owned());
        self
    }
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if let Some(topic) = &self.topic {
            write!(f, " (topic {topic:?})")?;
        }
        if let Some(id) = &self.message_id {
            write!(f, " (messageId {id:?})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ProtoError {}

/// The topic(s) of a `subscribe`/`unsubscribe`: `topic` (answered with `topic`) or the batch
/// extension `topics` (answered with `topics`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topics<'a> {
    /// The request had `"topic": "…"`.
    One(Cow<'a, str>),
    /// The request had `"topics": [..]` (never empty).
    Many(Vec<Cow<'a, str>>),
}

impl<'a> Topics<'a> {
    /// The topics as a slice (one element for [`Topics::One`]).
    pub fn as_slice(&self) -> &[Cow<'a, str>] {
        match self {
            Topics::One(t) => std::slice::from_ref(t),
            Topics::Many(ts) => ts,
        }
    }

    /// Whether the answer must use the batch form (`topics`).
    pub fn is_batch(&self) -> bool {
        matches!(self, Topics::Many(_))
    }
}

/// One parsed client message. Strings borrow from the text when they have no escapes.
#[derive(Debug, Clone)]
pub enum ClientMsg<'a> {
    /// `setup`: authenticate (optional token) and subscribe to `topics` (empty when absent).
    Setup {
        /// `token`, when present and not null.
        token: Option<Cow<'a, str>>,
        /// `topics`, empty when absent or null.
        topics: Vec<Cow<'a, str>>,
    },
    /// `subscribe`, optionally replaying from `fromSeq`.
    Subscribe {
        /// `topic` or `topics`.
        topics: Topics<'a>,
        /// `fromSeq` (extension), when present.
        from_seq: Option<u64>,
    },
    /// `unsubscribe`.
    Unsubscribe {
        /// `topic` or `topics`.
        topics: Topics<'a>,
    },
    /// `publish`.
    Publish {
        /// `topic` (syntax not yet checked: see [`validate_topic`]).
        topic: Cow<'a, str>,
        /// `messageId`; the gateway makes one when absent. Non-empty, at most
        /// [`MAX_MESSAGE_ID_BYTES`].
        message_id: Option<Cow<'a, str>>,
        /// `payload`, exactly the bytes the client sent (any JSON value, `null` included).
        payload: &'a RawValue,
        /// `qos`: 0 (default) or 1.
        qos: u8,
    },
    /// `ack` of a QoS 1 delivery: `messageId`, or (extension) `topic` + `seqNo`.
    Ack {
        /// `messageId`, when present.
        message_id: Option<Cow<'a, str>>,
        /// `topic` (extension), when present.
        topic: Option<Cow<'a, str>>,
        /// `seqNo` (extension), when present.
        seq_no: Option<u64>,
    },
    /// `replay` of a topic's held messages from `fromSeq` on.
    Replay {
        /// `topic`.
        topic: Cow<'a, str>,
        /// `fromSeq`.
        from_seq: u64,
    },
    /// `resume` of a session: re-subscribe and replay after each last seen seqNo.
    Resume {
        /// `sessionId` (non-empty).
        session_id: Cow<'a, str>,
        /// `lastSeqPerTopic` as (topic, seqNo) pairs in the client's order, no duplicate topic;
        /// empty when absent or null.
        last_seq_per_topic: Vec<(Cow<'a, str>, u64)>,
    },
    /// `ping` (extension): answered with `pong`.
    Ping,
}

impl ClientMsg<'_> {
    /// The wire `type` of the message, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMsg::Setup { .. } => "setup",
            ClientMsg::Subscribe { .. } => "subscribe",
            ClientMsg::Unsubscribe { .. } => "unsubscribe",
            ClientMsg::Publish { .. } => "publish",
            ClientMsg::Ack { .. } => "ack",
            ClientMsg::Replay { .. } => "replay",
            ClientMsg::Resume { .. } => "resume",
            ClientMsg::Ping => "ping",
        }
    }
}

/// A JSON string, borrowed from the input when it has no escape sequence. Serde's own
/// `Cow<str>` impl always allocates outside a `#[serde(borrow)]` struct field; this one borrows
/// anywhere (map keys, array elements).
struct CowStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(StrVisitor)
    }
}

/// `lastSeqPerTopic`: a JSON object `{topic: seqNo}` kept as pairs in the client's order.
struct SeqMap<'a>(Vec<(Cow<'a, str>, u64)>);

impl<'de> Deserialize<'de> for SeqMap<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SeqMapVisitor;
        impl<'de> Visitor<'de> for SeqMapVisitor {
            type Value = SeqMap<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of topic -> seqNo")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some(CowStr(topic)) = map.next_key()? {
                    let seq: u64 = map.next_value()?;
                    pairs.push((topic, seq));
                }
                Ok(SeqMap(pairs))
            }
        }
        deserializer.deserialize_map(SeqMapVisitor)
    }
}

/// The first pass over a client message: the known fields as raw JSON slices (JSON `null`
/// included, so "absent" and "null" stay distinguishable), unknown fields skipped. Typing each
/// field afterwards lets every error name its field and still carry `topic`/`messageId`.
#[derive(Default)]
struct Envelope<'a> {
    /// `type`.
    ty: Option<&'a RawValue>,
    /// `topic`.
    topic: Option<&'a RawValue>,
    /// `topics`.
    topics: Option<&'a RawValue>,
    /// `token`.
    token: Option<&'a RawValue>,
    /// `messageId`.
    message_id: Option<&'a RawValue>,
    /// `payload`.
    payload: Option<&'a RawValue>,
    /// `qos`.
    qos: Option<&'a RawValue>,
    /// `seqNo`.
    seq_no: Option<&'a RawValue>,
    /// `fromSeq`.
    from_seq: Option<&'a RawValue>,
    /// `sessionId`.
    session_id: Option<&'a RawValue>,
    /// `lastSeqPerTopic`.
    last_seq_per_topic: Option<&'a RawValue>,
    /// The first known field that appeared twice: rejected rather than guessing which one wins.
    duplicate: Option<&'static str>,
}

impl<'de> Deserialize<'de> for Envelope<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EnvelopeVisitor;
        impl<'de> Visitor<'de> for EnvelopeVisitor {
            type Value = Envelope<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut env = Envelope::default();
                while let Some(CowStr(key)) = map.next_key()? {
                    let (slot, name) = match &*key {
                        "type" => (&mut env.ty, "type"),
                        "topic" => (&mut env.topic, "topic"),
                        "topics" => (&mut env.topics, "topics"),
                        "token" => (&mut env.token, "token"),
                        "messageId" => (&mut env.message_id, "messageId"),
                        "payload" => (&mut env.payload, "payload"),
                        "qos" => (&mut env.qos, "qos"),
                        "seqNo" => (&mut env.seq_no, "seqNo"),
                        "fromSeq" => (&mut env.from_seq, "fromSeq"),
                        "sessionId" => (&mut env.session_id, "sessionId"),
                        "lastSeqPerTopic" => (&mut env.last_seq_per_topic, "lastSeqPerTopic"),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    let value: &'de RawValue = map.next_value()?;
                    if slot.replace(value).is_some() && env.duplicate.is_none() {
                        env.duplicate = Some(name);
                    }
                }
                Ok(env)
            }
        }
        deserializer.deserialize_map(EnvelopeVisitor)
    }
}

/// `raw` unless it is absent or JSON `null` (optional fields treat both as "not given").
fn non_null(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|r| r.get() != "null")
}

/// The request context an error carries, read leniently before the message is typed.
struct Context<'a> {
    /// `topic`, when it is a string.
    topic: Option<Cow<'a, str>>,
    /// `messageId`, when it is a string of acceptable length.
    message_id: Option<Cow<'a, str>>,
}

impl Context<'_> {
    /// A `BAD_REQUEST` error carrying the context.
    fn bad(&self, message: impl Into<String>) -> ProtoError {
        let mut err = ProtoError::new(ErrorCode::BadRequest, message);
        err.topic = self.topic.as_deref().map(str::to_owned);
        err.message_id = self.message_id.as_deref().map(str::to_owned);
        err
    }
}

/// An optional string field (`null` = absent).
fn opt_str<'a>(raw: Option<&'a RawValue>, name: &str) -> Result<Option<Cow<'a, str>>, String> {
    match non_null(raw) {
        None => Ok(None),
        Some(raw) => serde_json::from_str::<CowStr<'a>>(raw.get())
            .map(|s| Some(s.0))
            .map_err(|_| format!("field '{name}' must be a string")),
    }
}

/// A required string field.
fn req_str<'a>(raw: Option<&'a RawValue>, name: &str) -> Result<Cow<'a, str>, String> {
    match raw {
        None => Err(format!("missing field '{name}'")),
        Some(raw) => serde_json::from_str::<CowStr<'a>>(raw.get())
            .map(|s| s.0)
            .map_err(|_| format!("field '{name}' must be a string")),
    }
}

/// An optional non-negative integer field (`null` = absent).
fn opt_u64(raw: Option<&RawValue>, name: &str) -> Result<Option<u64>, String> {
    match non_null(raw) {
        None => Ok(None),
        Some(raw) => serde_json::from_str::<u64>(raw.get())
            .map(Some)
            .map_err(|_| format!("field '{name}' must be a non-negative integer")),
    }
}

/// A required non-negative integer field.
fn req_u64(raw: Option<&RawValue>, name: &str) -> Result<u64, String> {
    match raw {
        None => Err(format!("missing field '{name}'")),
        Some(_) => opt_u64(raw, name)?
            .ok_or_else(|| format!("field '{name}' must be a non-negative integer")),
    }
}

/// An optional array of strings (`null` = absent).
fn opt_str_array<'a>(
    raw: Option<&'a RawValue>,
    name: &str,
) -> Result<Option<Vec<Cow<'a, str>>>, String> {
    match non_null(raw) {
        None => Ok(None),
        Some(raw) => serde_json::from_str::<Vec<CowStr<'a>>>(raw.get())
            .map(|v| Some(v.into_iter().map(|s| s.0).collect()))
            .map_err(|_| format!("field '{name}' must be an array of strings")),
    }
}

/// `messageId` rules: a string, non-empty, at most [`MAX_MESSAGE_ID_BYTES`] bytes.
fn message_id<'a>(raw: Option<&'a RawValue>) -> Result<Option<Cow<'a, str>>, String> {
    let id = opt_str(raw, "messageId")?;
    match &id {
        Some(id) if id.is_empty() => Err("field 'messageId' must not be empty".to_owned()),
        Some(id) if id.len() > MAX_MESSAGE_ID_BYTES => Err(format!(
            "field 'messageId' is longer than {MAX_MESSAGE_ID_BYTES} bytes"
        )),
        _ => Ok(id),
    }
}

/// `topic` xor `topics` (non-empty) of subscribe/unsubscribe.
fn topics<'a>(env: &Envelope<'a>) -> Result<Topics<'a>, String> {
    let one = opt_str(env.topic, "topic")?;
    let many = opt_str_array(env.topics, "topics")?;
    match (one, many) {
        (Some(_), Some(_)) => Err("use either 'topic' or 'topics', not both".to_owned()),
        (None, None) => Err("missing field 'topic' (or 'topics')".to_owned()),
        (Some(one), None) => Ok(Topics::One(one)),
        (None, Some(many)) if many.is_empty() => Err("field 'topics' must not be empty".to_owned()),
        (None, Some(many)) => Ok(Topics::Many(many)),
    }
}

/// Whether `text` starts (after JSON whitespace) with `{`.
fn looks_like_object(text: &str) -> bool {
    text.trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
}

/// `s` cut to at most `max` bytes at a char boundary, with `…` when cut.
fn truncated(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &s[..end]))
}

/// Parses one client text message.
///
/// Errors are `BAD_REQUEST` with a message naming the problem (malformed JSON, not an object,
/// missing or non-string `type`, unknown type, a missing field, a field of the wrong type, `qos`
/// not 0/1, both or neither of `topic`/`topics`, an empty `topics` list, a `messageId` empty or
/// longer than [`MAX_MESSAGE_ID_BYTES`], a field given twice, …), carrying the request's `topic`
/// and `messageId` when they could be read. Unknown fields are ignored. Topic syntax is NOT
/// checked here (the limit is configuration): call [`validate_topic`].
///
/// O(n) in the text length; allocates only for strings containing escapes and for lists.
pub fn parse_client_msg(text: &str) -> Result<ClientMsg<'_>, ProtoError> {
    let env: Envelope<'_> = if looks_like_object(text) {
        serde_json::from_str(text)
            .map_err(|e| ProtoError::new(ErrorCode::BadRequest, format!("malformed JSON: {e}")))?
    } else {
        return Err(match serde_json::from_str::<IgnoredAny>(text) {
            Ok(_) => ProtoError::new(ErrorCode::BadRequest, "message must be a JSON object"),
            Err(e) => ProtoError::new(ErrorCode::BadRequest, format!("malformed JSON: {e}")),
        });
    };
    let ctx = Context {
        topic: opt_str(env.topic, "topic").ok().flatten(),
        message_id: message_id(env.message_id).ok().flatten(),
    };
    if let Some(name) = env.duplicate {
        return Err(ctx.bad(format!("field '{name}' given more than once")));
    }
    let ty = match env.ty {
        None => return Err(ctx.bad("missing field 'type'")),
        Some(raw) => {
            serde_json::from_str::<CowStr<'_>>(raw.get())
                .map_err(|_| ctx.bad("field 'type' must be a string"))?
                .0
        }
    };
    parse_typed(&ty, &env).map_err(|message| ctx.bad(message))
}

/// The second pass: types the fields `ty` needs. Errors are the message text of a `BAD_REQUEST`.
fn parse_typed<'a>(ty: &str, env: &Envelope<'a>) -> Result<ClientMsg<'a>, String> {
    Ok(match ty {
        "setup" => ClientMsg::Setup {
            token: opt_str(env.token, "token")?,
            topics: opt_str_array(env.topics, "topics")?.unwrap_or_default(),
        },
        "subscribe" => ClientMsg::Subscribe {
            topics: topics(env)?,
            from_seq: opt_u64(env.from_seq, "fromSeq")?,
        },
        "unsubscribe" => ClientMsg::Unsubscribe {
            topics: topics(env)?,
        },
        "publish" => {
            let topic = req_str(env.topic, "topic")?;
            let message_id = message_id(env.message_id)?;
            let payload = env.payload.ok_or("missing field 'payload'")?;
            let qos = match opt_u64(env.qos, "qos") {
                Ok(None) => 0,
                Ok(Some(q @ (0 | 1))) => q as u8,
                _ => return Err("field 'qos' must be 0 or 1".to_owned()),
            };
            ClientMsg::Publish {
                topic,
                message_id,
                payload,
                qos,
            }
        }
        "ack" => {
            let message_id = message_id(env.message_id)?;
            let topic = opt_str(env.topic, "topic")?;
            let seq_no = opt_u64(env.seq_no, "seqNo")?;
            if message_id.is_none() && (topic.is_none() || seq_no.is_none()) {
                return Err("ack needs 'messageId' (or 'topic' with 'seqNo')".to_owned());
            }
            ClientMsg::Ack {
                message_id,
                topic,
                seq_no,
            }
        }
        "replay" => ClientMsg::Replay {
            topic: req_str(env.topic, "topic")?,
            from_seq: req_u64(env.from_seq, "fromSeq")?,
        },
        "resume" => {
            let session_id = req_str(env.session_id, "sessionId")?;
            if session_id.is_empty() {
                return Err("field 'sessionId' must not be empty".to_owned());
            }
            let last_seq_per_topic = match non_null(env.last_seq_per_topic) {
                None => Vec::new(),
                Some(raw) => {
                    serde_json::from_str::<SeqMap<'a>>(raw.get())
                        .map_err(|_| {
                            "field 'lastSeqPerTopic' must be an object of topic -> seqNo (a non-negative integer)"
                                .to_owned()
                        })?
                        .0
                }
            };
            let mut seen = std::collections::HashSet::with_capacity(last_seq_per_topic.len());
            if let Some((dup, _)) = last_seq_per_topic
                .iter()
                .find(|(topic, _)| !seen.insert(&**topic))
            {
                return Err(format!("topic '{dup}' given twice in 'lastSeqPerTopic'"));
            }
            ClientMsg::Resume {
                session_id,
                last_seq_per_topic,
            }
        }
        "ping" => ClientMsg::Ping,
        other => {
            return Err(format!(
                "unknown type '{}'",
                truncated(other, MAX_ECHOED_TYPE_BYTES)
            ))
        }
    })
}

/// Topic syntax: non-empty, at most `max_bytes` bytes, no ASCII control character.
/// `BAD_REQUEST` naming the topic otherwise. O(n) in the topic length.
pub fn validate_topic(topic: &str, max_bytes: usize) -> Result<(), ProtoError> {
    let problem = if topic.is_empty() {
        "topic must not be empty".to_owned()
    } else if topic.len() > max_bytes {
        format!("topic is longer than {max_bytes} bytes")
    } else if topic.bytes().any(|b| b.is_ascii_control()) {
        "topic must not contain control characters".to_owned()
    } else {
        return Ok(());
    };
    Err(ProtoError::new(ErrorCode::BadRequest, problem).with_topic(topic))
}

// ---------------------------------------------------------------------------------------------
// Encoders
// ---------------------------------------------------------------------------------------------

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::write_server_frame;

    /// Decodes one unmasked FIN text frame by hand: returns its payload as text and the bytes
    /// consumed.
    fn decode_text_frame(frame: &[u8]) -> (&str, usize) {
        assert_eq!(frame[0], 0x81, "FIN + text opcode");
        assert_eq!(frame[1] & 0x80, 0, "server frames are unmasked");
        let (len, head) = match frame[1] & 0x7f {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        let text = std::str::from_utf8(&frame[head..head + len]).unwrap();
        (text, head + len)
    }

    /// The JSON of the single frame in `out`, checking nothing else is there.
    fn only_frame(out: &[u8]) -> &str {
        let (text, used) = decode_text_frame(out);
        assert_eq!(used, out.len(), "exactly one frame");
        text
    }

    fn parse_ok(text: &str) -> ClientMsg<'_> {
        parse_client_msg(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn parse_err(text: &str) -> ProtoError {
        match parse_client_msg(text) {
            Ok(msg) => panic!("{text} parsed as {msg:?}"),
            Err(e) => {
                assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
                e
            }
        }
    }

    // The point is to inspect the `Cow` variant, which a `&str` would hide.
    #[allow(clippy::ptr_arg)]
    fn is_borrowed(s: &Cow<'_, str>) -> bool {
        matches!(s, Cow::Borrowed(_))
    }

    // ----- parsing: every message type -------------------------------------------------------

    #[test]
    fn setup_parses_token_and_topics() {
        let ClientMsg::Setup { token, topics } =
            parse_ok(r#"{"type":"setup","token":"tok","topics":["a","b"]}"#)
        else {
            panic!()
        };
        assert_eq!(token.as_deref(), Some("tok"));
        assert_eq!(topics, ["a", "b"]);
        assert!(topics.iter().all(is_borrowed));
    }

    #[test]
    fn setup_without_token_or_topics_parses_empty() {
        let ClientMsg::Setup { token, topics } = parse_ok(r#"{"type":"setup"}"#) else {
            panic!()
        };
        assert!(token.is_none() && topics.is_empty());
        let ClientMsg::Setup { token, topics } =
            parse_ok(r#"{"type":"setup","token":null,"topics":null}"#)
        else {
            panic!()
        };
        assert!(token.is_none() && topics.is_empty());
    }

    #[test]
    fn subscribe_single_topic_borrows_from_the_text() {
        let ClientMsg::Subscribe { topics, from_seq } =
            parse_ok(r#"{"type":"subscribe","topic":"prices.btc"}"#)
        else {
            panic!()
        };
        assert_eq!(topics, Topics::One(Cow::Borrowed("prices.btc")));
        assert!(is_borrowed(&topics.as_slice()[0]));
        assert!(!topics.is_batch());
        assert_eq!(from_seq, None);
    }

    #[test]
    fn subscribe_batch_with_from_seq_parses() {
        let ClientMsg::Subscribe { topics, from_seq } =
            parse_ok(r#" { "type" : "subscribe", "topics" : ["a", "b", "c"], "fromSeq": 17 } "#)
        else {
            panic!()
        };
        assert!(topics.is_batch());
        assert_eq!(topics.as_slice(), ["a", "b", "c"]);
        assert_eq!(from_seq, Some(17));
    }

    #[test]
    fn unsubscribe_single_and_batch_parse() {
        let ClientMsg::Unsubscribe { topics } = parse_ok(r#"{"type":"unsubscribe","topic":"a"}"#)
        else {
            panic!()
        };
        assert_eq!(topics, Topics::One("a".into()));
        let ClientMsg::Unsubscribe { topics } =
            parse_ok(r#"{"type":"unsubscribe","topics":["a","b"]}"#)
        else {
            panic!()
        };
        assert_eq!(topics, Topics::Many(vec!["a".into(), "b".into()]));
    }

    #[test]
    fn publish_with_message_id_and_qos_1_parses() {
        let ClientMsg::Publish {
            topic,
            message_id,
            payload,
            qos,
        } = parse_ok(
            r#"{"type":"publish","topic":"t","messageId":"m-1","payload":{"a":1},"qos":1}"#,
        )
        else {
            panic!()
        };
        assert_eq!(topic, "t");
        assert_eq!(message_id.as_deref(), Some("m-1"));
        assert_eq!(payload.get(), r#"{"a":1}"#);
        assert_eq!(qos, 1);
    }

    #[test]
    fn publish_without_message_id_defaults_to_qos_0() {
        let ClientMsg::Publish {
            message_id, qos, ..
        } = parse_ok(r#"{"type":"publish","topic":"t","payload":1}"#)
        else {
            panic!()
        };
        assert_eq!(message_id, None);
        assert_eq!(qos, 0);
        let ClientMsg::Publish { qos, .. } =
            parse_ok(r#"{"type":"publish","topic":"t","payload":1,"qos":0}"#)
        else {
            panic!()
        };
        assert_eq!(qos, 0);
    }

    #[test]
    fn publish_payload_is_kept_byte_for_byte() {
        let payloads = [
            r#"{ "b" : [1, 2 ,3],"a":{"x" :null} }"#,
            r#"[ 1,"two" , {"three":3.0e0} ]"#,
            r#""a \"quoted\" \\ string \u00e9 é \n""#,
            "-12.50e+3",
            "0",
            "null",
            "true",
            "false",
            r#"{"deep":[[[[{"k":"v"}]]]],"uni":"\ud83d\ude00 😀"}"#,
        ];
        for p in payloads {
            let text =
                format!("{{\"type\":\"publish\",\"topic\":\"t\",\"payload\":  {p}  ,\"x\":1}}");
            let ClientMsg::Publish { payload, .. } = parse_ok(&text) else {
                panic!()
            };
            assert_eq!(payload.get(), p);
        }
    }

    #[test]
    fn escaped_topic_names_are_unescaped_and_owned() {
        let ClientMsg::Subscribe { topics, .. } =
            parse_ok(r#"{"type":"subscribe","topic":"a\"b\\c\u00e9\/d"}"#)
        else {
            panic!()
        };
        let Topics::One(topic) = topics else { panic!() };
        assert_eq!(topic, "a\"b\\cé/d");
        assert!(!is_borrowed(&topic));
        let ClientMsg::Subscribe { topics, .. } =
            parse_ok(r#"{"type":"subscribe","topics":["plain","esc\u0041ped"]}"#)
        else {
            panic!()
        };
        assert_eq!(topics.as_slice(), ["plain", "escAped"]);
        assert!(is_borrowed(&topics.as_slice()[0]));
    }

    #[test]
    fn escaped_field_names_are_recognized() {
        let msg = parse_ok(r#"{"\u0074ype":"sub\u0073cribe","\u0074opic":"a"}"#);
        assert!(matches!(msg, ClientMsg::Subscribe { .. }));
    }

    #[test]
    fn ack_parses_by_message_id_or_topic_and_seq_no() {
        let ClientMsg::Ack {
            message_id,
            topic,
            seq_no,
        } = parse_ok(r#"{"type":"ack","messageId":"m"}"#)
        else {
            panic!()
        };
        assert_eq!(
            (message_id.as_deref(), topic, seq_no),
            (Some("m"), None, None)
        );
        let ClientMsg::Ack {
            message_id,
            topic,
            seq_no,
        } = parse_ok(r#"{"type":"ack","topic":"t","seqNo":9}"#)
        else {
            panic!()
        };
        assert_eq!(
            (message_id, topic.as_deref(), seq_no),
            (None, Some("t"), Some(9))
        );
    }

    #[test]
    fn replay_parses() {
        let ClientMsg::Replay { topic, from_seq } =
            parse_ok(r#"{"type":"replay","topic":"t","fromSeq":18446744073709551615}"#)
        else {
            panic!()
        };
        assert_eq!((&*topic, from_seq), ("t", u64::MAX));
    }

    #[test]
    fn resume_parses_last_seq_per_topic_in_order() {
        let ClientMsg::Resume {
            session_id,
            last_seq_per_topic,
        } = parse_ok(
            r#"{"type":"resume","sessionId":"s-1","lastSeqPerTopic":{"b":2,"a":1,"\u00e9":0}}"#,
        )
        else {
            panic!()
        };
        assert_eq!(session_id, "s-1");
        assert_eq!(
            last_seq_per_topic,
            [("b".into(), 2), ("a".into(), 1), ("é".into(), 0)]
        );
        let ClientMsg::Resume {
            last_seq_per_topic, ..
        } = parse_ok(r#"{"type":"resume","sessionId":"s"}"#)
        else {
            panic!()
        };
        assert!(last_seq_per_topic.is_empty());
    }

    #[test]
    fn ping_parses_and_unknown_fields_are_ignored() {
        let msg = parse_ok(r#"{"extra":{"nested":[1,2]},"type":"ping","more":null}"#);
        assert!(matches!(msg, ClientMsg::Ping));
        assert_eq!(msg.kind(), "ping");
    }

    // ----- parsing: every error case -----------------------------------------------------------

    #[test]
    fn malformed_json_is_bad_request() {
        for text in [
            "",
            "{",
            "nope",
            r#"{"type":"ping",}"#,
            r#"{"type":"ping"} x"#,
            "{'a':1}",
        ] {
            let e = parse_err(text);
            assert!(e.message.starts_with("malformed JSON: "), "{text}: {e}");
        }
    }

    #[test]
    fn json_that_is_not_an_object_is_bad_request() {
        for text in ["[1,2]", r#""ping""#, "42", "null", " true "] {
            assert_eq!(parse_err(text).message, "message must be a JSON object");
        }
    }

    #[test]
    fn missing_or_non_string_type_is_bad_request_naming_the_topic() {
        let e = parse_err(r#"{"topic":"t","messageId":"m"}"#);
        assert_eq!(e.message, "missing field 'type'");
        assert_eq!(e.topic.as_deref(), Some("t"));
        assert_eq!(e.message_id.as_deref(), Some("m"));
        let e = parse_err(r#"{"type":3,"topic":"t"}"#);
        assert_eq!(e.message, "field 'type' must be a string");
        assert_eq!(e.topic.as_deref(), Some("t"));
    }

    #[test]
    fn unknown_type_is_named_in_the_error() {
        assert_eq!(parse_err(r#"{"type":"x"}"#).message, "unknown type 'x'");
        let long = "y".repeat(500);
        let e = parse_err(&format!(r#"{{"type":"{long}"}}"#));
        assert!(e.message.len() < 100, "echo is truncated: {}", e.message);
    }

    #[test]
    fn subscribe_needs_exactly_one_of_topic_and_topics() {
        assert_eq!(
            parse_err(r#"{"type":"subscribe"}"#).message,
            "missing field 'topic' (or 'topics')"
        );
        let e = parse_err(r#"{"type":"subscribe","topic":"a","topics":["b"]}"#);
        assert_eq!(e.message, "use either 'topic' or 'topics', not both");
        assert_eq!(e.topic.as_deref(), Some("a"));
        assert_eq!(
            parse_err(r#"{"type":"unsubscribe","topics":[]}"#).message,
            "field 'topics' must not be empty"
        );
        assert_eq!(
            parse_err(r#"{"type":"subscribe","topics":["a",1]}"#).message,
            "field 'topics' must be an array of strings"
        );
        assert_eq!(
            parse_err(r#"{"type":"subscribe","topics":"a"}"#).message,
            "field 'topics' must be an array of strings"
        );
        assert_eq!(
            parse_err(r#"{"type":"subscribe","topic":["a"]}"#).message,
            "field 'topic' must be a string"
        );
        let e = parse_err(r#"{"type":"subscribe","topic":"a","fromSeq":-1}"#);
        assert_eq!(e.message, "field 'fromSeq' must be a non-negative integer");
        assert_eq!(e.topic.as_deref(), Some("a"));
    }

    #[test]
    fn publish_errors_name_the_topic_and_message_id() {
        let e = parse_err(r#"{"type":"publish","topic":"t","messageId":"m"}"#);
        assert_eq!(e.message, "missing field 'payload'");
        assert_eq!(
            (e.topic.as_deref(), e.message_id.as_deref()),
            (Some("t"), Some("m"))
        );
        for qos in ["2", "-1", "1.5", r#""1""#, "true"] {
            let e = parse_err(&format!(
                r#"{{"type":"publish","topic":"t","messageId":"m","payload":1,"qos":{qos}}}"#
            ));
            assert_eq!(e.message, "field 'qos' must be 0 or 1", "qos {qos}");
            assert_eq!(
                (e.topic.as_deref(), e.message_id.as_deref()),
                (Some("t"), Some("m"))
            );
        }
        let e = parse_err(r#"{"type":"publish","messageId":"m","payload":1}"#);
        assert_eq!(e.message, "missing field 'topic'");
        assert_eq!(e.message_id.as_deref(), Some("m"));
        assert_eq!(
            parse_err(r#"{"type":"publish","topic":null,"payload":1}"#).message,
            "field 'topic' must be a string"
        );
    }

    #[test]
    fn message_id_must_be_a_short_non_empty_string() {
        let ok = "m".repeat(MAX_MESSAGE_ID_BYTES);
        let text = format!(r#"{{"type":"publish","topic":"t","messageId":"{ok}","payload":1}}"#);
        assert!(matches!(parse_ok(&text), ClientMsg::Publish { .. }));
        let long = "m".repeat(MAX_MESSAGE_ID_BYTES + 1);
        let e = parse_err(&format!(
            r#"{{"type":"publish","topic":"t","messageId":"{long}","payload":1}}"#
        ));
        assert_eq!(e.message, "field 'messageId' is longer than 128 bytes");
        assert_eq!(e.topic.as_deref(), Some("t"));
        assert_eq!(e.message_id, None, "an over-long id is not echoed");
        assert_eq!(
            parse_err(r#"{"type":"publish","topic":"t","messageId":"","payload":1}"#).message,
            "field 'messageId' must not be empty"
        );
        assert_eq!(
            parse_err(r#"{"type":"publish","topic":"t","messageId":7,"payload":1}"#).message,
            "field 'messageId' must be a string"
        );
        assert_eq!(
            parse_err(&format!(r#"{{"type":"ack","messageId":"{long}"}}"#)).message,
            "field 'messageId' is longer than 128 bytes"
        );
    }

    #[test]
    fn ack_without_message_id_or_topic_and_seq_no_is_bad_request() {
        for text in [
            r#"{"type":"ack"}"#,
            r#"{"type":"ack","topic":"t"}"#,
            r#"{"type":"ack","seqNo":3}"#,
        ] {
            assert_eq!(
                parse_err(text).message,
                "ack needs 'messageId' (or 'topic' with 'seqNo')"
            );
        }
        assert_eq!(
            parse_err(r#"{"type":"ack","messageId":"m","seqNo":"3"}"#).message,
            "field 'seqNo' must be a non-negative integer"
        );
    }

    #[test]
    fn replay_needs_topic_and_from_seq() {
        assert_eq!(
            parse_err(r#"{"type":"replay","fromSeq":1}"#).message,
            "missing field 'topic'"
        );
        let e = parse_err(r#"{"type":"replay","topic":"t"}"#);
        assert_eq!(e.message, "missing field 'fromSeq'");
        assert_eq!(e.topic.as_deref(), Some("t"));
        assert_eq!(
            parse_err(r#"{"type":"replay","topic":"t","fromSeq":null}"#).message,
            "field 'fromSeq' must be a non-negative integer"
        );
        assert_eq!(
            parse_err(r#"{"type":"replay","topic":"t","fromSeq":18446744073709551616}"#).message,
            "field 'fromSeq' must be a non-negative integer"
        );
    }

    #[test]
    fn resume_errors_name_the_rule() {
        assert_eq!(
            parse_err(r#"{"type":"resume"}"#).message,
            "missing field 'sessionId'"
        );
        assert_eq!(
            parse_err(r#"{"type":"resume","sessionId":""}"#).message,
            "field 'sessionId' must not be empty"
        );
        for bad in [r#"[1]"#, r#"{"a":-1}"#, r#"{"a":"1"}"#, "3"] {
            assert_eq!(
                parse_err(&format!(
                    r#"{{"type":"resume","sessionId":"s","lastSeqPerTopic":{bad}}}"#
                ))
                .message,
                "field 'lastSeqPerTopic' must be an object of topic -> seqNo (a non-negative integer)"
            );
        }
        assert_eq!(
            parse_err(r#"{"type":"resume","sessionId":"s","lastSeqPerTopic":{"a":1,"\u0061":2}}"#)
                .message,
            "topic 'a' given twice in 'lastSeqPerTopic'"
        );
    }

    #[test]
    fn a_known_field_given_twice_is_bad_request() {
        let e = parse_err(r#"{"type":"subscribe","topic":"a","topic":"b"}"#);
        assert_eq!(e.message, "field 'topic' given more than once");
        // Unknown fields may repeat: they are ignored.
        assert!(matches!(
            parse_ok(r#"{"type":"ping","x":1,"x":2}"#),
            ClientMsg::Ping
        ));
    }

    #[test]
    fn validate_topic_rejects_empty_long_and_control_characters() {
        assert!(validate_topic("prices.btc", 16).is_ok());
        assert!(validate_topic("é", 2).is_ok());
        let e = validate_topic("", 16).unwrap_err();
        assert_eq!(e.message, "topic must not be empty");
        let e = validate_topic("abcdef", 5).unwrap_err();
        assert_eq!(
            (e.code, &*e.message),
            (ErrorCode::BadRequest, "topic is longer than 5 bytes")
        );
        assert_eq!(e.topic.as_deref(), Some("abcdef"));
        for t in ["a\nb", "\0", "x\u{7f}", "tab\there"] {
            let e = validate_topic(t, 64).unwrap_err();
            assert_eq!(e.message, "topic must not contain control characters");
            assert_eq!(e.topic.as_deref(), Some(t));
        }
    }

    #[test]
    fn error_codes_have_their_wire_words() {
        let all = [
            (ErrorCode::BadRequest, "BAD_REQUEST"),
            (ErrorCode::Unauthorized, "UNAUTHORIZED"),
            (ErrorCode::Forbidden, "FORBIDDEN"),
            (ErrorCode::TooLarge, "TOO_LARGE"),
            (ErrorCode::LimitExceeded, "LIMIT_EXCEEDED"),
            (ErrorCode::RateLimited, "RATE_LIMITED"),
            (ErrorCode::SessionExpired, "SESSION_EXPIRED"),
            (ErrorCode::ReplayUnavailable, "REPLAY_UNAVAILABLE"),
            (ErrorCode::SingleTopic, "SINGLE_TOPIC"),
            (ErrorCode::SlowConsumer, "SLOW_CONSUMER"),
            (ErrorCode::Internal, "INTERNAL_ERROR"),
            (ErrorCode::BackboneUnavailable, "BACKBONE_UNAVAILABLE"),
        ];
        for (code, word) in all {
            assert_eq!(code.as_str(), word);
        }
    }

    // ----- encoders: exact bytes ---------------------------------------------------------------

    #[test]
    fn control_encoders_write_exact_json_in_one_text_frame() {
        type Encoder = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(Encoder, &str)> = vec![
            (
                Box::new(|o| encode_ready(o, "s-1")),
                r#"{"type":"ready","sessionId":"s-1"}"#,
            ),
            (
                Box::new(|o| encode_resumed(o, "s-\"2\"")),
                r#"{"type":"resumed","sessionId":"s-\"2\""}"#,
            ),
            (Box::new(encode_pong), r#"{"type":"pong"}"#),
            (
                Box::new(|o| encode_subscribed(o, &["a"], false)),
                r#"{"type":"subscribed","topic":"a"}"#,
            ),
            (
                Box::new(|o| encode_subscribed(o, &["a", "b"], true)),
                r#"{"type":"subscribed","topics":["a","b"]}"#,
            ),
            (
                Box::new(|o| encode_subscribed(o, &["a"], true)),
                r#"{"type":"subscribed","topics":["a"]}"#,
            ),
            (
                Box::new(|o| encode_unsubscribed(o, &["q\"\\é\n"], false)),
                r#"{"type":"unsubscribed","topic":"q\"\\é\n"}"#,
            ),
            (
                Box::new(|o| encode_unsubscribed(o, &["a", "b"], true)),
                r#"{"type":"unsubscribed","topics":["a","b"]}"#,
            ),
            (
                Box::new(|o| encode_ack(o, "m-1", AckStatus::Ok, Some(42))),
                r#"{"type":"ack","messageId":"m-1","status":"ok","seqNo":42}"#,
            ),
            (
                Box::new(|o| encode_ack(o, "m", AckStatus::Duplicate, None)),
                r#"{"type":"ack","messageId":"m","status":"duplicate"}"#,
            ),
            (
                Box::new(|o| encode_error(o, &ProtoError::new(ErrorCode::SessionExpired, "gone"))),
                r#"{"type":"error","code":"SESSION_EXPIRED","message":"gone"}"#,
            ),
            (
                Box::new(|o| {
                    encode_error(
                        o,
                        &ProtoError::new(ErrorCode::Forbidden, "no \"write\"")
                            .with_topic("t\\1")
                            .with_message_id("m\u{1}"),
                    )
                }),
                r#"{"type":"error","code":"FORBIDDEN","message":"no \"write\"","topic":"t\\1","messageId":"m\u0001"}"#,
            ),
        ];
        for (encode, expected) in cases {
            let mut out = b"prefix".to_vec();
            encode(&mut out);
            assert_eq!(&out[..6], b"prefix", "appends after existing bytes");
            assert_eq!(only_frame(&out[6..]), expected);
            // The same bytes the frame module would produce from the JSON.
            let mut reference = Vec::new();
            write_server_frame(&mut reference, OpCode::Text, expected.as_bytes());
            assert_eq!(&out[6..], reference);
        }
    }

    #[test]
    fn control_frames_over_125_bytes_get_an_extended_header() {
        let long = "s".repeat(300);
        let mut out = Vec::new();
        encode_ready(&mut out, &long);
        assert_eq!(out[1], 126);
        assert_eq!(
            only_frame(&out),
            format!(r#"{{"type":"ready","sessionId":"{long}"}}"#)
        );
    }

    #[test]
    fn encoders_append_consecutive_frames() {
        let mut out = Vec::new();
        encode_pong(&mut out);
        encode_ack(&mut out, "m", AckStatus::Ok, Some(1));
        let (first, used) = decode_text_frame(&out);
        assert_eq!(first, r#"{"type":"pong"}"#);
        assert_eq!(
            only_frame(&out[used..]),
            r#"{"type":"ack","messageId":"m","status":"ok","seqNo":1}"#
        );
    }

    #[test]
    fn message_frame_is_exact_and_keeps_data_byte_for_byte() {
        let frame = encode_message_frame("pr\"ic\\es.é", 42, "m-1", br#"{ "a" : [1, 2] }"#);
        assert_eq!(
            only_frame(&frame),
            r#"{"type":"message","topic":"pr\"ic\\es.é","seqNo":42,"messageId":"m-1","data":{ "a" : [1, 2] }}"#
        );
        let frame = encode_message_frame("t", u64::MAX, "id", b"null");
        assert_eq!(
            only_frame(&frame),
            r#"{"type":"message","topic":"t","seqNo":18446744073709551615,"messageId":"id","data":null}"#
        );
        let frame = encode_message_frame("t", 0, "id", b"0");
        assert!(only_frame(&frame).contains(r#""seqNo":0,"#));
    }

    #[test]
    fn message_frame_headers_are_correct_at_length_boundaries() {
        let fixed = only_frame(&encode_message_frame("t", 1, "m", br#""""#)).len();
        for (json_len, head) in [
            (125usize, vec![0x81, 125]),
            (126, vec![0x81, 126, 0, 126]),
            (65535, vec![0x81, 126, 0xff, 0xff]),
            (65536, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
            (65537, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 1]),
        ] {
            let data = format!("\"{}\"", "x".repeat(json_len - fixed));
            let frame = encode_message_frame("t", 1, "m", data.as_bytes());
            assert_eq!(frame.len(), head.len() + json_len, "json length {json_len}");
            assert_eq!(&frame[..head.len()], &head[..], "json length {json_len}");
            let text = only_frame(&frame);
            assert!(text.ends_with(&format!(r#""data":{data}}}"#)));
            let mut reference = Vec::new();
            write_server_frame(&mut reference, OpCode::Text, text.as_bytes());
            assert_eq!(&frame[..], &reference[..]);
        }
    }

    #[test]
    fn a_parsed_publish_round_trips_into_a_delivery() {
        let text =
            r#"{"type":"publish","topic":"a\u0022b","messageId":"m","payload":[ 1 , {"x":"\n"} ]}"#;
        let ClientMsg::Publish {
            topic,
            message_id,
            payload,
            ..
        } = parse_ok(text)
        else {
            panic!()
        };
        let frame = encode_message_frame(
            &topic,
            7,
            message_id.as_deref().unwrap(),
            payload.get().as_bytes(),
        );
        let json = only_frame(&frame);
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(value["topic"], "a\"b");
        assert_eq!(value["seqNo"], 7);
        assert!(json.ends_with(r#""data":[ 1 , {"x":"\n"} ]}"#));
    }

    #[test]
    fn parse_delivery_reads_back_an_encoded_message_frame() {
        let frame = encode_message_frame("t\"é", 3, "m", br#"{ "k" : null }"#);
        let d = parse_delivery(only_frame(&frame)).unwrap();
        assert_eq!((&*d.topic, d.seq_no, &*d.message_id), ("t\"é", 3, "m"));
        assert_eq!(d.data.get(), r#"{ "k" : null }"#);
        assert!(parse_delivery(r#"{"type":"ack","messageId":"m"}"#).is_err());
        assert!(parse_delivery("[]").is_err());
    }

    #[test]
    fn publish_result_json_is_exact() {
        assert_eq!(
            publish_result_json(5, "m\"1", AckStatus::Ok),
            br#"{"seqNo":5,"messageId":"m\"1","status":"ok"}"#
        );
        assert_eq!(
            publish_result_json(0, "m", AckStatus::Duplicate),
            br#"{"seqNo":0,"messageId":"m","status":"duplicate"}"#
        );
    }
}
