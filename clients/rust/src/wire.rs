//! The Micro Socket messages this client sends and reads (`shared/PROTOCOL.md`), and the
//! signature check of signed deliveries. Pure: text in, values out.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use sha2::Sha256;

/// The delivery guarantee of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Qos {
    /// At most once: no ack from subscribers, lost if a connection drops before the write and
    /// the topic keeps no history.
    #[default]
    AtMostOnce,
    /// At least once: subscribers ack each delivery, the gateway redelivers what is not acked
    /// and keeps it for `resume`; this client drops the redeliveries it already handed over.
    AtLeastOnce,
}

impl Qos {
    /// The wire value of `qos`.
    pub fn as_u8(self) -> u8 {
        match self {
            Qos::AtMostOnce => 0,
            Qos::AtLeastOnce => 1,
        }
    }
}

/// One delivery handed to the application: exactly once per `(topic, seq_no)`, in `seq_no`
/// order per topic.
#[derive(Debug, Clone)]
pub struct Message {
    /// The topic it was published to.
    pub topic: String,
    /// Its per-topic sequence number (1, 2, 3, … with no gap unless an [`crate::Event::Lost`]
    /// said so).
    pub seq_no: u64,
    /// The publisher's (or the gateway's) `messageId`.
    pub message_id: String,
    /// The QoS it was delivered with.
    pub qos: Qos,
    /// The payload, byte for byte as published.
    pub data: Box<RawValue>,
    /// Whether an HMAC signature was present and checked (only with
    /// [`crate::MicroSocketBuilder::verify_signatures`]).
    pub signature_verified: bool,
    /// Its signature was required and did not verify: counted in the order, never handed over.
    pub(crate) rejected: bool,
}

impl Message {
    /// The payload decoded as `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.data.get())
    }

    /// The payload as a `serde_json::Value`.
    pub fn value(&self) -> serde_json::Value {
        // A RawValue is valid JSON by construction, so this parse cannot fail.
        serde_json::from_str(self.data.get()).unwrap_or(serde_json::Value::Null)
    }
}

/// A server message, borrowed from the frame's text.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Incoming<'a> {
    #[serde(rename = "type")]
    pub kind: String,
    pub topic: Option<String>,
    pub seq_no: Option<u64>,
    pub message_id: Option<String>,
    pub qos: Option<u8>,
    pub kid: Option<String>,
    pub sig: Option<String>,
    /// `data` exactly as it appears in the frame (`null` included, hence not `Option<&RawValue>`,
    /// which would read `null` as absent).
    #[serde(default, borrow, deserialize_with = "present_raw")]
    pub data: Option<&'a RawValue>,
    pub session_id: Option<String>,
    pub status: Option<String>,
    pub code: Option<String>,
    pub message: Option<String>,
    /// Extension of `REPLAY_UNAVAILABLE`: the oldest seqNo still held (sent from there on).
    pub oldest_seq: Option<u64>,
    /// Extension of `SLOW_CONSUMER` (the gateway's `drop` policy): the range of `topic` it
    /// skipped for this connection.
    pub from_seq: Option<u64>,
    pub to_seq: Option<u64>,
}

fn present_raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

pub(crate) fn parse(text: &str) -> Result<Incoming<'_>, serde_json::Error> {
    serde_json::from_str(text)
}

/// A client message; field order as in `PROTOCOL.md`, absent fields omitted.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub(crate) enum Outgoing<'a> {
    Setup {
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<&'a str>,
    },
    #[serde(rename_all = "camelCase")]
    Subscribe {
        #[serde(skip_serializing_if = "Option::is_none")]
        topic: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        topics: Option<&'a [String]>,
        #[serde(skip_serializing_if = "Option::is_none")]
        from_seq: Option<u64>,
        /// `"latest": true` (subsocket extension): each topic's newest held message first.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        latest: bool,
    },
    #[serde(rename_all = "camelCase")]
    Publish {
        topic: &'a str,
        message_id: &'a str,
        payload: &'a RawValue,
        qos: u8,
    },
    #[serde(rename_all = "camelCase")]
    Ack {
        message_id: &'a str,
        topic: &'a str,
        seq_no: u64,
    },
    #[serde(rename_all = "camelCase")]
    Replay { topic: &'a str, from_seq: u64 },
    #[serde(rename_all = "camelCase")]
    Resume {
        session_id: &'a str,
        last_seq_per_topic: BTreeMap<&'a str, u64>,
    },
}

impl Outgoing<'_> {
    pub(crate) fn to_text(&self) -> String {
        // Strings, integers, maps with string keys and RawValues always serialize.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A fresh `messageId`: 128 random bits in hex, so retries of one publish (same id) are
/// recognised by the gateway and different publishes never collide.
pub(crate) fn new_message_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// The key that signed deliveries are checked against.
#[derive(Clone)]
pub struct SignatureKey {
    /// The `kid` the gateway puts in signed deliveries.
    pub key_id: String,
    /// The HMAC-SHA256 secret.
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for SignatureKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignatureKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl SignatureKey {
    /// Checks `sig` (lowercase hex HMAC-SHA256) over `topic \n seqNo \n data` in constant time.
    pub fn verify(
        &self,
        kid: Option<&str>,
        sig: Option<&str>,
        topic: &str,
        seq_no: u64,
        data: &str,
    ) -> bool {
        let (Some(kid), Some(sig)) = (kid, sig) else {
            return false;
        };
        if kid != self.key_id {
            return false;
        }
        let Ok(sig) = hex::decode(sig) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.secret) else {
            return false;
        };
        mac.update(topic.as_bytes());
        mac.update(b"\n");
        mac.update(seq_no.to_string().as_bytes());
        mac.update(b"\n");
        mac.update(data.as_bytes());
        mac.verify_slice(&sig).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_keeps_its_data_bytes_even_null() {
        let m =
            parse(r#"{"type":"message","topic":"t","seqNo":3,"messageId":"m","data":{ "a" : 1 }}"#)
                .unwrap();
        assert_eq!(m.kind, "message");
        assert_eq!(m.seq_no, Some(3));
        assert_eq!(m.data.unwrap().get(), r#"{ "a" : 1 }"#);
        let m = parse(r#"{"type":"message","topic":"t","seqNo":1,"messageId":"m","data":null}"#)
            .unwrap();
        assert_eq!(m.data.unwrap().get(), "null");
        let m = parse(r#"{"type":"ready","sessionId":"s1"}"#).unwrap();
        assert!(m.data.is_none());
        assert_eq!(m.session_id.as_deref(), Some("s1"));
    }

    #[test]
    fn client_messages_are_the_protocol_text() {
        let payload = RawValue::from_string("{\"p\":1}".into()).unwrap();
        let publish = Outgoing::Publish {
            topic: "t",
            message_id: "m1",
            payload: &payload,
            qos: 1,
        };
        assert_eq!(
            publish.to_text(),
            r#"{"type":"publish","topic":"t","messageId":"m1","payload":{"p":1},"qos":1}"#
        );
        let mut last = BTreeMap::new();
        last.insert("a", 4);
        let resume = Outgoing::Resume {
            session_id: "s",
            last_seq_per_topic: last,
        };
        assert_eq!(
            resume.to_text(),
            r#"{"type":"resume","sessionId":"s","lastSeqPerTopic":{"a":4}}"#
        );
        let sub = Outgoing::Subscribe {
            topic: Some("t"),
            topics: None,
            from_seq: Some(7),
            latest: false,
        };
        assert_eq!(
            sub.to_text(),
            r#"{"type":"subscribe","topic":"t","fromSeq":7}"#
        );
        let ack = Outgoing::Ack {
            message_id: "m",
            topic: "t",
            seq_no: 2,
        };
        assert_eq!(
            ack.to_text(),
            r#"{"type":"ack","messageId":"m","topic":"t","seqNo":2}"#
        );
        assert_eq!(
            Outgoing::Setup { token: None }.to_text(),
            r#"{"type":"setup"}"#
        );
    }

    #[test]
    fn signatures_cover_topic_seq_and_exact_data() {
        let key = SignatureKey {
            key_id: "k1".into(),
            secret: b"secret".to_vec(),
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(b"secret").unwrap();
        mac.update(b"prices\n42\n{\"p\": 1}");
        let sig = hex::encode(mac.finalize().into_bytes());
        assert!(key.verify(Some("k1"), Some(&sig), "prices", 42, "{\"p\": 1}"));
        assert!(!key.verify(Some("k1"), Some(&sig), "prices", 43, "{\"p\": 1}"));
        assert!(!key.verify(Some("k1"), Some(&sig), "prices", 42, "{\"p\":1}"));
        assert!(!key.verify(Some("k2"), Some(&sig), "prices", 42, "{\"p\": 1}"));
        assert!(!key.verify(None, None, "prices", 42, "{\"p\": 1}"));
    }

    #[test]
    fn message_ids_are_distinct() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_message_id()).collect();
        assert_eq!(ids.len(), 1000);
    }
}
