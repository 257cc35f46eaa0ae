//! Client -> server: one text message -> [`ClientMsg`] ([`parse_client_msg`]), borrowing from
//! the client's text, the `payload` kept as its raw JSON slice; and [`validate_topic`].
//! Every failure is a `BAD_REQUEST` [`ProtoError`] naming the problem. Pure: no I/O, no topic
//! state, no authorization. Read next: `encode.rs`.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::{ErrorCode, ProtoError, MAX_ECHOED_TYPE_BYTES, MAX_MESSAGE_ID_BYTES};

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
        /// `"latest": true` (extension): the newest held message of each topic first, then
        /// live. Excludes `fromSeq`.
        latest: bool,
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
    /// `latest`.
    latest: Option<&'a RawValue>,
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
                        "latest" => (&mut env.latest, "latest"),
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

/// An optional boolean field (`null` = absent).
fn opt_bool(raw: Option<&RawValue>, name: &str) -> Result<Option<bool>, String> {
    match non_null(raw) {
        None => Ok(None),
        Some(raw) => serde_json::from_str::<bool>(raw.get())
            .map(Some)
            .map_err(|_| format!("field '{name}' must be true or false")),
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
pub(super) fn looks_like_object(text: &str) -> bool {
    text.trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
}

/// `s` cut to at most `max` bytes at a char boundary, with `…` when cut.
pub(super) fn truncated(s: &str, max: usize) -> Cow<'_, str> {
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
        "subscribe" => {
            let from_seq = opt_u64(env.from_seq, "fromSeq")?;
            let latest = opt_bool(env.latest, "latest")?.unwrap_or(false);
            if latest && from_seq.is_some() {
                return Err("'fromSeq' and 'latest' exclude each other: give one".into());
            }
            ClientMsg::Subscribe {
                topics: topics(env)?,
                from_seq,
                latest,
            }
        }
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
