//! Server-Sent Events (`text/event-stream`): the wire form of a subscriber that reads
//! `GET /sse/sub/{topic}` or `GET /sse?topic=A&topic=B` instead of a WebSocket. Pure: no
//! sockets, no glommio.
//!
//! What lives here:
//! - [`delivery_event`]: a delivery as one event, `id: <seqNo>` then the message JSON in `data:`
//!   lines (the same JSON WebSocket subscribers get), built once per publish on the topic's owner
//!   next to the frame ([`crate::mesh::Delivery::sse`]);
//! - [`Stream`]: one SSE subscriber's topics and the last `seqNo` it was sent of each, which
//!   make its event ids; [`Stream::push_delivery`] appends a delivery (the shared event as it is
//!   for one topic; for several, with this stream's own `id:` line after it, which wins: the
//!   last `id` field of an event is its id) and [`Stream::convert_frame`] turns any other server
//!   frame (answers, errors, loss reports, pings, the close) into its event;
//! - [`parse_last_event_id`]: what an `EventSource` sends back on reconnecting (`Last-Event-ID`
//!   or `?lastEventId=`), checked against the stream's topics;
//! - [`event_len`] / [`event_json`]: how the out buffer walks queued events (to shed deliveries
//!   of a slow stream like frames of a slow socket).
//!
//! Ids: a one-topic stream's id is the `seqNo`; a stream of n topics gets `s1.s2.….sn`, the last
//! `seqNo` sent of each topic in the order the URL names them (0: none yet), so the one id a
//! browser keeps resumes every topic exactly. Events never contain a blank line but at their end
//! (a payload's own line breaks become more `data:` lines, which `EventSource` joins with `\n`),
//! so `\n\n` always ends an event.

use crate::ws::frame::{self, OpCode};
use std::sync::Arc;

/// The head of a delivery's JSON (`protocol::encode` writes it first).
const DELIVERY_PREFIX: &[u8] = b"{\"type\":\"message\",";

/// A heartbeat: a comment line, which `EventSource` ignores but which keeps proxies and the
/// TCP path from timing the stream out.
pub const HEARTBEAT: &[u8] = b": ping\n\n";

/// The response head of an event stream, with a first `retry:` (the reconnect delay a browser
/// uses, in ms) and a comment so that the client sees bytes at once. The stream ends when the
/// connection closes (no length, not chunked: HTTP/1.1 lets the close delimit it).
pub fn response_head(retry_ms: u64, cors_origin: Option<&str>) -> Vec<u8> {
    let cors = cors_origin
        .map(|o| format!("Access-Control-Allow-Origin: {o}\r\n"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache, no-transform\r\nX-Accel-Buffering: no\r\n{cors}Connection: close\r\n\r\nretry: {retry_ms}\n: subsocket event stream\n\n"
    )
    .into_bytes()
}

/// Appends `json` as `data:` lines (`\r\n`, `\r` and `\n` all end a line in SSE, so each becomes
/// a new `data:` line; `EventSource` gives the lines back joined by `\n`).
fn push_data(out: &mut Vec<u8>, json: &[u8]) {
    out.extend_from_slice(b"data: ");
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'\r' => {
                out.extend_from_slice(b"\ndata: ");
                if json.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\ndata: "),
            b => out.push(b),
        }
        i += 1;
    }
    out.push(b'\n');
}

/// A delivery as one finished event: `id: <seqNo>\ndata: <json>\n\n`. O(json).
pub fn delivery_event(seq_no: u64, json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + 32);
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(seq_no.to_string().as_bytes());
    out.push(b'\n');
    push_data(&mut out, json);
    out.push(b'\n');
    out
}

/// A protocol message other than a delivery (`subscribed`, `error`, `dropped`, …) as an event
/// named after its `type`: `event: <type>\ndata: <json>\n\n`.
fn named_event(out: &mut Vec<u8>, json: &[u8]) {
    let name = json
        .strip_prefix(b"{\"type\":\"")
        .and_then(|rest| rest.iter().position(|&b| b == b'"').map(|n| &rest[..n]))
        .filter(|n| !n.is_empty() && n.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_'))
        .unwrap_or(b"protocol");
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name);
    out.push(b'\n');
    push_data(out, json);
    out.push(b'\n');
}

/// Why a `Last-Event-ID` is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadEventId(pub String);

/// Parses a `Last-Event-ID` for a stream of `n_topics` topics: `n_topics` unsigned integers
/// joined by `.` (one for a one-topic stream). An empty id means none (a browser sends none
/// before its first event).
pub fn parse_last_event_id(id: &str, n_topics: usize) -> Result<Option<Vec<u64>>, BadEventId> {
    let id = id.trim();
    if id.is_empty() {
        return Ok(None);
    }
    let seqs: Vec<u64> = id
        .split('.')
        .map(|p| {
            p.parse::<u64>()
                .map_err(|_| BadEventId(format!("Last-Event-ID {id:?}: {p:?} is not a seqNo")))
        })
        .collect::<Result<_, _>>()?;
    if seqs.len() != n_topics {
        return Err(BadEventId(format!(
            "Last-Event-ID {id:?} names {} seqNo(s) but the stream has {n_topics} topic(s) (ids are one seqNo per topic, in the order of the URL)",
            seqs.len()
        )));
    }
    Ok(Some(seqs))
}

/// The part of the message JSON in `data:` that an event starts with (its first `data:` line):
/// a delivery's head (`type`, `topic`, `seqNo`, `messageId`) is always there.
pub fn event_json(event: &[u8]) -> &[u8] {
    let start = if event.starts_with(b"data: ") {
        6
    } else {
        match memchr::memmem::find(event, b"\ndata: ") {
            Some(i) => i + 7,
            None => return &[],
        }
    };
    let rest = &event[start..];
    &rest[..memchr::memchr(b'\n', rest).unwrap_or(rest.len())]
}

/// Length of the whole event at the start of `b` (through its blank line), once it is all there.
pub fn event_len(b: &[u8]) -> Option<usize> {
    memchr::memmem::find(b, b"\n\n").map(|i| i + 2)
}

/// One SSE subscriber: its topics (in the order of its URL) and the last `seqNo` of each it was
/// sent, which make its event ids.
#[derive(Debug)]
pub struct Stream {
    topics: Box<[Arc<str>]>,
    last: Box<[u64]>,
}

impl Stream {
    /// A stream of `topics`, resuming after `last` (from [`parse_last_event_id`]) if given.
    pub fn new(topics: Vec<Arc<str>>, last: Option<Vec<u64>>) -> Self {
        let n = topics.len();
        Stream {
            topics: topics.into(),
            last: last
                .filter(|l| l.len() == n)
                .unwrap_or_else(|| vec![0; n])
                .into(),
        }
    }

    pub fn topics(&self) -> &[Arc<str>] {
        &self.topics
    }

    /// A one-topic stream takes shared events exactly as they are built, so several of them
    /// can be appended in one copy (the batched fan-out); it only has to note the last seqNo.
    pub fn is_single(&self) -> bool {
        self.topics.len() == 1
    }

    /// Notes that deliveries up to `seq_no` of its only topic were appended (see
    /// [`Stream::is_single`]).
    pub fn note_sent(&mut self, seq_no: u64) {
        if let Some(l) = self.last.first_mut() {
            *l = (*l).max(seq_no);
        }
    }

    /// The id of the stream's position now (what `Last-Event-ID` will say).
    pub fn cursor(&self) -> String {
        let mut s = Vec::new();
        self.write_cursor(&mut s);
        String::from_utf8(s).expect("digits and dots")
    }

    /// Appends [`Stream::cursor`] to `out` (no allocation of its own: once per delivery on a
    /// stream of several topics).
    fn write_cursor(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        for (i, v) in self.last.iter().enumerate() {
            if i > 0 {
                out.push(b'.');
            }
            let _ = write!(out, "{v}");
        }
    }

    /// Appends a delivery of `topic` #`seq_no` to `out`: `event` is its shared event
    /// ([`delivery_event`]). A one-topic stream takes it as it is; a stream of several topics
    /// takes it without its last `\n`, then its own `id:` line and the blank line.
    pub fn push_delivery(
        &mut self,
        topic: &str,
        seq_no: u64,
        event: &[u8],
        mut push: impl FnMut(&[u8]),
    ) {
        if let Some(i) = self.topics.iter().position(|t| &**t == topic) {
            self.last[i] = self.last[i].max(seq_no);
        }
        if self.topics.len() == 1 {
            return push(event);
        }
        push(&event[..event.len().saturating_sub(1)]);
        let mut tail = Vec::with_capacity(8 + 8 * self.last.len());
        tail.extend_from_slice(b"id: ");
        self.write_cursor(&mut tail);
        tail.extend_from_slice(b"\n\n");
        push(&tail);
    }

    /// Appends to `out` what the finished server frame `f` is on an event stream: a delivery
    /// (a replayed one, here built per stream) its event; any other text message an event named
    /// after its type; a ping a heartbeat; the close frame an `event: close` with its code and
    /// reason; nothing for a pong (or a binary frame, which the gateway never sends here).
    pub fn convert_frame(&mut self, f: &[u8], out: &mut Vec<u8>) {
        let Some(&b0) = f.first() else {
            return;
        };
        let payload = f.get(frame::header_len(f)..).unwrap_or_default();
        match b0 & 0x0f {
            op if op == OpCode::Text as u8 => {
                if payload.starts_with(DELIVERY_PREFIX) {
                    if let Some(h) = crate::protocol::delivery_head(payload) {
                        let ev = delivery_event(h.seq_no, payload);
                        return self
                            .push_delivery(&h.topic, h.seq_no, &ev, |b| out.extend_from_slice(b));
                    }
                }
                named_event(out, payload);
            }
            op if op == OpCode::Ping as u8 => out.extend_from_slice(HEARTBEAT),
            op if op == OpCode::Close as u8 => {
                let code = payload
                    .get(..2)
                    .map_or(frame::CLOSE_NORMAL, |c| u16::from_be_bytes([c[0], c[1]]));
                let reason =
                    std::str::from_utf8(payload.get(2..).unwrap_or_default()).unwrap_or("");
                let reason = serde_json::to_string(reason).unwrap_or_else(|_| "\"\"".into());
                let json = format!(r#"{{"type":"close","code":{code},"reason":{reason}}}"#);
                named_event(out, json.as_bytes());
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
