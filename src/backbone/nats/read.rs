//! Reading JetStream back: the form of a stored message as every node reads it ([`Stored`]:
//! `seqNo`, `messageId`, QoS, acceptance time and node from the headers, the delivery JSON as
//! body), and the reads the other jobs build on: a topic's last message, one message by stream
//! sequence, the next message of a subject, and up to [`READ_BATCH`](super::READ_BATCH) of them
//! with one batched direct get.
//!
//! May touch: the stream (reads only) and the client (the direct get's inbox).
//! May not: store anything, change a topic's state, or talk to the cores: callers decide what a
//! read means.
//!
//! Read next: [`super::replay`].

use super::{Node, H_AT, H_ID, H_NODE, H_QOS, H_SEQ};
use crate::ws::frame::{write_server_frame, OpCode};
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::RawMessageError;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// A stored message, read back.
pub(super) struct Stored {
    pub(super) stream_seq: u64,
    pub(super) seq: u64,
    json: Bytes,
    pub(super) qos1: Option<Arc<str>>,
    pub(super) at_us: u64,
    pub(super) node: Option<String>,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.as_str())
}

/// The stream sequence JetStream puts on a message it sends (`Nats-Sequence`: a republished
/// copy, a direct get's answer).
pub(super) fn nats_sequence(headers: Option<&HeaderMap>) -> Option<u64> {
    headers
        .and_then(|h| header(h, "Nats-Sequence"))
        .and_then(|v| v.parse().ok())
}

impl Stored {
    pub(super) fn from_parts(
        stream_seq: u64,
        headers: Option<&HeaderMap>,
        payload: Bytes,
    ) -> Option<Stored> {
        let h = headers?;
        let seq = header(h, H_SEQ)?.parse().ok()?;
        let qos1 = (header(h, H_QOS) == Some("1"))
            .then(|| header(h, H_ID).map(Arc::from))
            .flatten();
        Some(Stored {
            stream_seq,
            seq,
            json: payload,
            qos1,
            at_us: header(h, H_AT).and_then(|v| v.parse().ok()).unwrap_or(0),
            node: header(h, H_NODE).map(String::from),
        })
    }

    pub(super) fn frame(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.json.len() + 10);
        write_server_frame(&mut out, OpCode::Text, &self.json);
        Bytes::from(out)
    }
}

/// Why a JetStream read failed.
pub(super) enum ReadErr {
    /// Nothing there (no message of the subject at or after the sequence).
    NotFound,
    /// The link or the server: try again later.
    Io(String),
}

impl Node {
    /// (stream sequence, `seqNo`) of the topic's last stored message; (0, 0) when none.
    pub(super) async fn last_of(&self, topic: &str) -> Result<(u64, u64), String> {
        let subject = self.cc.in_subject(topic);
        match self.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => {
                let s = Stored::from_parts(m.sequence, Some(&m.headers), m.payload)
                    .ok_or("a stored message without Ss-Seq")?;
                Ok((s.stream_seq, s.seq))
            }
            Err(e) if is_not_found(&e.to_string()) => Ok((0, 0)),
            Err(e) => Err(e.to_string()),
        }
    }

    pub(super) async fn read_seq(&self, stream_seq: u64) -> Result<Stored, ReadErr> {
        read_back(self.stream.get_raw_message(stream_seq).await)
    }

    /// The topic's first stored message at or after stream sequence `from`.
    pub(super) async fn next_of(&self, subject: &str, from: u64) -> Result<Stored, ReadErr> {
        read_back(
            self.stream
                .raw_message_builder()
                .sequence(from.max(1))
                .next_by_subject(subject)
                .send()
                .await,
        )
    }

    /// Up to `max` of the subject's stored messages from stream sequence `from` on, in stream
    /// order, with one request: JetStream's batched direct get (NATS 2.11+; the server streams
    /// them to an inbox and ends with a status). Never empty: when the batch brings nothing
    /// (a replica behind the leader, an older server) one read from the leader decides.
    pub(super) async fn next_many(
        &self,
        subject: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<Stored>, ReadErr> {
        let got = self
            .direct_batch(subject, from, max)
            .await
            .unwrap_or_default();
        if !got.is_empty() {
            return Ok(got);
        }
        self.next_of(subject, from).await.map(|m| vec![m])
    }

    async fn direct_batch(&self, subject: &str, from: u64, max: usize) -> Option<Vec<Stored>> {
        let inbox = self.client.new_inbox();
        let mut sub = self.client.subscribe(inbox.clone()).await.ok()?;
        let req = serde_json::json!({"seq": from.max(1), "next_by_subj": subject, "batch": max});
        self.client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{}", self.cc.stream),
                inbox,
                Bytes::from(req.to_string()),
            )
            .await
            .ok()?;
        let mut out = Vec::new();
        let wait = Duration::from_millis(self.cc.request_timeout_ms);
        loop {
            match tokio::time::timeout(wait, sub.next()).await {
                Ok(Some(m)) if m.status.is_none() => {
                    let seq = nats_sequence(m.headers.as_ref())?;
                    out.push(Stored::from_parts(seq, m.headers.as_ref(), m.payload)?);
                    if out.len() >= max {
                        break;
                    }
                }
                // The end-of-batch status (204), or not found (404): done.
                Ok(Some(_)) | Ok(None) => break,
                Err(_) => {
                    if out.is_empty() {
                        return None;
                    }
                    break;
                }
            }
        }
        let _ = sub.unsubscribe().await;
        Some(out)
    }
}

/// One message read by stream sequence (or the next of a subject) as a [`Stored`], or why there
/// is none.
fn read_back(read: Result<StreamMessage, RawMessageError>) -> Result<Stored, ReadErr> {
    match read {
        Ok(m) => Stored::from_parts(m.sequence, Some(&m.headers), m.payload)
            .ok_or_else(|| ReadErr::Io("a stored message without Ss-Seq".into())),
        Err(e) if is_not_found(&e.to_string()) => Err(ReadErr::NotFound),
        Err(e) => Err(ReadErr::Io(e.to_string())),
    }
}

fn is_not_found(e: &str) -> bool {
    let e = e.to_ascii_lowercase();
    e.contains("not found") || e.contains("no message") || e.contains("10037")
}
