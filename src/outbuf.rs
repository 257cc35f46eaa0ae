//! `OutBuf`: the bytes queued for one connection's socket, and the backlog cap.
//!
//! A delivery is appended here once (a `memcpy` of the owner-built frame), so everything a
//! connection has pending is contiguous and goes out in ONE write, whatever number of frames it
//! holds (coalescing: GLOMMIO-NOTES.md section 4). No per-subscriber reference count is taken on
//! the frame. The cap is checked here, when enqueueing, because the writer of a stuck connection
//! never runs.
//!
//! Every byte queued in any `OutBuf` of a thread is counted in that thread's total
//! ([`queued_on_this_thread`]): one thread is one core, so this is the core's backlog, what its
//! backlog budget (`core_backlog_budget_bytes`) bounds. Everything pushed is a complete server
//! frame — or, on an event stream (`/sse`), a complete event ([`crate::sse`]): a frame's first
//! byte has FIN set (≥ 0x80), an event's is ASCII, so the two are told apart without a field —
//! which lets [`OutBuf::discard_deliveries`] drop queued deliveries without cutting the frame
//! the socket is in the middle of.
//!
//! Pure: no sockets, no glommio. The shard owns one per connection.

use crate::config::SlowConsumerPolicy;
use crate::ws::frame;
use std::cell::Cell;

thread_local! {
    /// Bytes queued in the `OutBuf`s of this thread and not yet taken by the kernel.
    static QUEUED: Cell<usize> = const { Cell::new(0) };
}

/// Bytes queued and not yet written in every [`OutBuf`] of the calling thread (a core).
#[inline]
pub fn queued_on_this_thread() -> usize {
    QUEUED.with(Cell::get)
}

#[inline]
fn count_in(n: usize) {
    QUEUED.with(|q| q.set(q.get().wrapping_add(n)));
}

#[inline]
fn count_out(n: usize) {
    QUEUED.with(|q| q.set(q.get().wrapping_sub(n)));
}

/// The payload of a delivery frame starts so (`protocol::encode` writes it).
const DELIVERY_PREFIX: &[u8] = b"{\"type\":\"message\",";

/// Whether a finished frame (header included) is a delivery (`{"type":"message",…`), not a
/// report that travels like one (a cluster's loss report).
pub fn is_delivery_frame(frame: &[u8]) -> bool {
    frame
        .get(frame::header_len(frame)..)
        .is_some_and(|p| p.starts_with(DELIVERY_PREFIX))
}

/// How much of a compressed frame is inflated to read its head (`type`, `topic`, `seqNo`,
/// `messageId`, `qos`): topics and ids are far shorter (`max_topic_bytes` is 256 by default).
const COMPRESSED_HEAD_BYTES: usize = 4096;

/// Length of the complete unit queued at the start of `b`: a server frame, or an SSE event.
#[inline]
fn unit_len(b: &[u8]) -> Option<usize> {
    match *b.first()? {
        b0 if b0 & 0x80 == 0 => crate::sse::event_len(b),
        _ => frame::server_frame_len(b),
    }
}

/// What [`OutBuf::discard_deliveries`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Discarded {
    /// Delivery frames removed.
    pub frames: usize,
    /// Their bytes.
    pub bytes: usize,
}

/// A partly written buffer is compacted once this many bytes at its front were sent.
const COMPACT_BYTES: usize = 16 * 1024;
/// A drained buffer keeps its allocation up to this size: a busy subscriber reuses it write
/// after write (32 small deliveries, a full window, fit), while one that had a burst queued
/// (the `subscribed` answers of a batch of subscribes, a replay) gives it back at once instead
/// of holding it until the idle sweep. Writes larger than this pay one allocation each (from
/// the core's own allocator pages, ~0.1 µs next to a ~5 µs `send`).
const KEEP_BYTES: usize = 4 * 1024;

/// What is being queued: the slow-consumer policy treats the two differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A `message` fan-out frame: subject to the `drop` policy.
    Delivery,
    /// An answer the client asked for (ack, pong, error, subscribed, WebSocket pong, server
    /// ping): never dropped by the `drop` policy, because the protocol promises it. It may use a
    /// second `max_backlog_bytes` of room; past that the connection is cut off whatever the
    /// policy.
    Reply,
}

/// The outcome of [`OutBuf::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Appended.
    Queued,
    /// Not appended: over the cap with the `drop` policy (count it).
    Dropped,
    /// Not appended: over the cap and the connection must be cut off (slow consumer).
    OverLimit,
}

/// Bytes waiting for the socket: `buf[sent..]`.
///
/// `FRAMES` (the default): everything pushed is a whole WebSocket frame and `buf` always
/// starts with a frame header, because compaction keeps the frame the socket is in from its
/// header on. So the frames can be walked from the front ([`OutBuf::discard_deliveries`]) with
/// no extra field (a `Conn` holds one of these: its size counts). `OutBuf<false>` holds other
/// bytes (sealed TLS records) and compacts at `sent`.
#[derive(Debug, Default)]
pub struct OutBuf<const FRAMES: bool = true> {
    buf: Vec<u8>,
    sent: usize,
}

impl<const FRAMES: bool> Drop for OutBuf<FRAMES> {
    fn drop(&mut self) {
        count_out(self.pending());
    }
}

impl<const FRAMES: bool> OutBuf<FRAMES> {
    /// Bytes queued and not yet taken by the kernel.
    #[inline]
    pub fn pending(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// The bytes to write next, contiguous.
    #[inline]
    pub fn pending_bytes(&self) -> &[u8] {
        &self.buf[self.sent..]
    }

    /// Heap bytes held (for memory accounting).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Appends `bytes` unless that would pass `max_backlog_bytes` (see [`Kind`]). O(len).
    #[inline]
    pub fn push(
        &mut self,
        bytes: &[u8],
        kind: Kind,
        max_backlog_bytes: usize,
        policy: SlowConsumerPolicy,
    ) -> Push {
        let after = self.pending() + bytes.len();
        if after > max_backlog_bytes {
            match kind {
                Kind::Reply if after <= 2 * max_backlog_bytes => {}
                Kind::Reply => return Push::OverLimit,
                Kind::Delivery => {
                    return match policy {
                        // `refill` discards through `discard_deliveries_where` (see the
                        // ladder); a frame pushed here (a QoS 1 redelivery) waits its turn.
                        SlowConsumerPolicy::Drop | SlowConsumerPolicy::Refill => Push::Dropped,
                        SlowConsumerPolicy::Disconnect => Push::OverLimit,
                    };
                }
            }
        }
        self.push_uncapped(bytes);
        Push::Queued
    }

    /// Appends without the cap (the close frame and last error of a connection being cut off,
    /// and the conformance echo endpoint).
    #[inline]
    pub fn push_uncapped(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(bytes);
        count_in(bytes.len());
    }

    /// The kernel took `n` more bytes. Returns true when everything is written.
    pub fn advance(&mut self, n: usize) -> bool {
        debug_assert!(n <= self.pending());
        let n = n.min(self.pending());
        count_out(n);
        self.sent += n;
        if self.sent == self.buf.len() {
            self.sent = 0;
            if self.buf.capacity() > KEEP_BYTES {
                self.buf = Vec::new();
            } else {
                self.buf.clear();
            }
            true
        } else {
            false
        }
    }

    /// Forgets everything queued (the peer is gone).
    pub fn clear(&mut self) {
        count_out(self.pending());
        self.buf = Vec::new();
        self.sent = 0;
    }

    /// Frees the allocation when nothing is pending (idle connections hold no write buffer).
    pub fn release_if_empty(&mut self) {
        if self.pending() == 0 && self.buf.capacity() > 0 {
            self.clear();
        }
    }

    /// Where the frame the socket is in begins and ends (`(sent, sent)` when the socket is
    /// between frames, and always for `OutBuf<false>`). O(frames written since the buffer was
    /// last compacted or emptied).
    fn frame_in_flight(&self) -> (usize, usize) {
        if !FRAMES {
            return (self.sent, self.sent);
        }
        let mut at = 0;
        while at < self.sent {
            let Some(len) = unit_len(&self.buf[at..]) else {
                break;
            };
            if at + len > self.sent {
                return (at, (at + len).min(self.buf.len()));
            }
            at += len;
        }
        (self.sent, self.sent)
    }

    /// Drops the bytes already sent once they are most of the buffer, so a connection that is
    /// always a little behind (never fully drained) cannot grow the buffer without bound.
    #[inline]
    fn compact(&mut self) {
        if self.sent == 0 {
            return;
        }
        if self.sent == self.buf.len() {
            self.buf.clear();
            self.sent = 0;
        } else if self.sent >= COMPACT_BYTES && self.sent * 2 >= self.buf.len() {
            // Keep the frame the socket is in from its header on, so frames stay walkable.
            let (cut, _) = self.frame_in_flight();
            self.buf.drain(..cut);
            self.sent -= cut;
        }
    }
}

impl OutBuf {
    /// An empty buffer of frames; allocates nothing until the first push.
    pub const fn new() -> Self {
        OutBuf {
            buf: Vec::new(),
            sent: 0,
        }
    }

    /// Removes every queued delivery frame (`{"type":"message",…`) except the one the socket is
    /// in the middle of; replies and control frames stay, in order. `seen` gets the payload of
    /// each removed delivery (to tell what was lost). O(pending bytes).
    pub fn discard_deliveries(&mut self, mut seen: impl FnMut(&[u8])) -> Discarded {
        self.discard_deliveries_where(|p| {
            seen(p);
            true
        })
    }

    /// [`OutBuf::discard_deliveries`] of the delivery frames whose payload `pick` answers true
    /// for; the others stay, in order.
    pub fn discard_deliveries_where(&mut self, mut pick: impl FnMut(&[u8]) -> bool) -> Discarded {
        let (_, keep_to) = self.frame_in_flight();
        let mut out = Discarded::default();
        let mut kept: Vec<u8> = Vec::new();
        let mut at = keep_to;
        while at < self.buf.len() {
            let Some(len) = unit_len(&self.buf[at..]).filter(|l| at + l <= self.buf.len()) else {
                // Not a whole frame (never pushed so): keep the rest as it is.
                kept.extend_from_slice(&self.buf[at..]);
                break;
            };
            let f = &self.buf[at..at + len];
            let mut payload = &f[frame::header_len(f)..];
            let head;
            if f[0] & 0x80 == 0 {
                // An event of an event stream: its first `data:` line holds the head.
                payload = crate::sse::event_json(f);
            } else if f[0] & frame::RSV1 != 0 {
                // A compressed delivery (permessage-deflate): its head, inflated, says what it
                // is. Only this rare path (a backlog being shed) ever inflates our own frames.
                head = crate::ws::deflate::inflate_prefix(payload, COMPRESSED_HEAD_BYTES)
                    .unwrap_or_default();
                payload = &head;
            }
            if payload.starts_with(DELIVERY_PREFIX) && pick(payload) {
                out.frames += 1;
                out.bytes += len;
            } else {
                kept.extend_from_slice(f);
            }
            at += len;
        }
        self.buf.truncate(keep_to);
        self.buf.extend_from_slice(&kept);
        count_out(out.bytes);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SlowConsumerPolicy::{Disconnect, Drop};

    #[test]
    fn deliveries_past_the_cap_follow_the_policy() {
        let mut o = OutBuf::new();
        assert_eq!(o.push(&[1; 60], Kind::Delivery, 100, Drop), Push::Queued);
        assert_eq!(o.push(&[2; 60], Kind::Delivery, 100, Drop), Push::Dropped);
        assert_eq!(
            o.push(&[2; 60], Kind::Delivery, 100, Disconnect),
            Push::OverLimit
        );
        assert_eq!(o.pending(), 60);
    }

    #[test]
    fn replies_get_a_second_allowance_then_cut_off() {
        let mut o = OutBuf::new();
        o.push(&[1; 90], Kind::Delivery, 100, Drop);
        assert_eq!(o.push(&[2; 60], Kind::Reply, 100, Drop), Push::Queued);
        assert_eq!(o.push(&[3; 60], Kind::Reply, 100, Drop), Push::OverLimit);
    }

    fn text_frame(payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        frame::write_server_frame(&mut f, frame::OpCode::Text, payload);
        f
    }

    fn delivery(topic: &str, seq: u64) -> Vec<u8> {
        text_frame(
            format!(r#"{{"type":"message","topic":"{topic}","seqNo":{seq},"data":1}}"#).as_bytes(),
        )
    }

    /// The socket takes half of what is pending (at least a byte): a connection always a little
    /// behind, never fully drained. Checks the bytes written are the next expected ones and that
    /// compaction keeps the buffer small.
    fn write_half<const F: bool>(o: &mut OutBuf<F>, expect: &mut Vec<u8>) {
        let n = (o.pending() / 2).max(1);
        assert_eq!(o.pending_bytes()[..n], expect[..n]);
        expect.drain(..n);
        o.advance(n);
        assert!(o.capacity() < 256 * 1024, "buffer grew to {}", o.capacity());
    }

    #[test]
    fn partial_writes_keep_order_and_compaction_bounds_memory() {
        let mut o = OutBuf::new();
        let mut expect = Vec::new();
        for i in 0..2000u32 {
            let f = text_frame(&i.to_le_bytes().repeat(10));
            assert_eq!(
                o.push(&f, Kind::Delivery, 1 << 20, Disconnect),
                Push::Queued
            );
            expect.extend_from_slice(&f);
            write_half(&mut o, &mut expect);
        }
        assert_eq!(o.pending_bytes(), &expect[..]);
        assert!(o.advance(o.pending()));
        assert_eq!(o.pending(), 0);
    }

    #[test]
    fn a_buffer_of_records_compacts_too() {
        // TLS records are not WebSocket frames: bytes that would read as a frame header
        // announcing 2^63 bytes must not stop compaction.
        let mut o: OutBuf<false> = OutBuf::default();
        let mut expect = Vec::new();
        let record = [
            0x17, 0x7f, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x03, 0x00,
        ];
        for _ in 0..20_000 {
            o.push_uncapped(&record);
            expect.extend_from_slice(&record);
            write_half(&mut o, &mut expect);
        }
        assert_eq!(o.pending_bytes(), &expect[..]);
    }

    #[test]
    fn the_thread_total_counts_every_queued_byte() {
        // Tests run one per thread: this thread's total is this test's buffers only.
        let base = queued_on_this_thread();
        let mut a = OutBuf::new();
        let mut b = OutBuf::new();
        a.push_uncapped(&[0; 100]);
        b.push(&[0; 50], Kind::Delivery, 1000, Drop);
        assert_eq!(queued_on_this_thread() - base, 150);
        a.advance(30);
        assert_eq!(queued_on_this_thread() - base, 120);
        b.clear();
        assert_eq!(queued_on_this_thread() - base, 70);
        drop(a);
        assert_eq!(queued_on_this_thread(), base);
    }

    #[test]
    fn discarding_keeps_the_frame_in_flight_and_every_reply() {
        let base = queued_on_this_thread();
        let mut o = OutBuf::new();
        let first = delivery("t", 1);
        o.push_uncapped(&first);
        let pong = text_frame(br#"{"type":"pong"}"#);
        for seq in 2..=5 {
            o.push_uncapped(&delivery("t", seq));
            if seq == 3 {
                o.push_uncapped(&pong);
            }
        }
        // The socket took half of the first delivery: that one must be finished.
        o.advance(first.len() / 2);
        let mut lost = Vec::new();
        let d = o.discard_deliveries(|p| lost.push(String::from_utf8(p.to_vec()).unwrap()));
        assert_eq!(d.frames, 4);
        assert_eq!(lost.len(), 4);
        assert!(lost[0].contains(r#""seqNo":2"#) && lost[3].contains(r#""seqNo":5"#));
        let mut want = first[first.len() / 2..].to_vec();
        want.extend_from_slice(&pong);
        assert_eq!(o.pending_bytes(), &want[..]);
        assert_eq!(queued_on_this_thread() - base, want.len());
        // Aligned exactly on a frame boundary, nothing is in flight: every delivery goes.
        o.advance(o.pending());
        o.push_uncapped(&delivery("t", 6));
        o.push_uncapped(&pong);
        o.push_uncapped(&delivery("t", 7));
        assert_eq!(o.discard_deliveries(|_| {}).frames, 2);
        assert_eq!(o.pending_bytes(), &pong[..]);
    }

    #[test]
    fn compressed_deliveries_are_recognised_and_discarded_too() {
        let mut o = OutBuf::new();
        let big = [
            br#"{"type":"message","topic":"t","seqNo":9,"messageId":"m","data":""#.as_slice(),
            &[b'a'; 2000],
            b"\"}",
        ]
        .concat();
        let z = crate::ws::deflate::compress_frame(frame::OpCode::Text, &big, 3, 15).unwrap();
        let reply = crate::ws::deflate::compress_frame(
            frame::OpCode::Text,
            &[
                br#"{"type":"error","code":"X","message":""#.as_slice(),
                &[b'b'; 500],
                b"\"}",
            ]
            .concat(),
            3,
            15,
        )
        .unwrap();
        o.push_uncapped(&delivery("t", 1));
        o.push_uncapped(&z);
        o.push_uncapped(&reply);
        let mut heads = Vec::new();
        let d = o.discard_deliveries(|p| heads.extend(crate::protocol::delivery_head(p)));
        assert_eq!(d.frames, 2, "the plain and the compressed delivery");
        // (The plain one has no messageId, so it has no head to report.)
        assert_eq!(heads.iter().map(|h| h.seq_no).collect::<Vec<_>>(), vec![9]);
        assert_eq!(o.pending_bytes(), &reply[..], "the compressed reply stays");
    }

    #[test]
    fn an_event_streams_deliveries_are_recognised_and_discarded() {
        let mut o = OutBuf::new();
        let mut s = crate::sse::Stream::new(vec!["t".into(), "u".into()], None);
        let mut reply = Vec::new();
        s.convert_frame(
            &text_frame(br#"{"type":"subscribed","topic":"t"}"#),
            &mut reply,
        );
        for seq in 1..=3 {
            let json = format!(
                r#"{{"type":"message","topic":"t","seqNo":{seq},"messageId":"m{seq}","data":{{}}}}"#
            );
            let ev = crate::sse::delivery_event(seq, json.as_bytes());
            s.push_delivery("t", seq, &ev, |b| o.push_uncapped(b));
            if seq == 1 {
                o.push_uncapped(&reply);
            }
        }
        o.push_uncapped(crate::sse::HEARTBEAT);
        // The socket is inside the first event: it stays whole, like a frame in flight.
        o.advance(5);
        let mut seen = Vec::new();
        let d = o.discard_deliveries(|p| seen.extend(crate::protocol::delivery_head(p)));
        assert_eq!(d.frames, 2);
        assert_eq!(
            seen.iter().map(|h| h.seq_no).collect::<Vec<_>>(),
            vec![2, 3]
        );
        let left = String::from_utf8(o.pending_bytes().to_vec()).unwrap();
        assert!(left.starts_with("\ndata: {\"type\":\"message\""), "{left}");
        assert!(left.contains("\nid: 1.0\n\nevent: subscribed\n"), "{left}");
        assert!(left.ends_with(": ping\n\n"), "{left}");
    }

    #[test]
    fn discarding_after_compaction_still_finds_the_frames() {
        let mut o = OutBuf::new();
        let big = text_frame(&[b'x'; 300]);
        for _ in 0..200 {
            o.push_uncapped(&big);
        }
        // Mid-frame, past the compaction threshold; the next push compacts.
        o.advance(COMPACT_BYTES + 100);
        o.push_uncapped(&delivery("t", 1));
        let before = o.pending();
        let d = o.discard_deliveries(|_| {});
        // 300-byte text frames are not deliveries (no prefix); only the last one is.
        assert_eq!(d.frames, 1);
        assert_eq!(o.pending(), before - d.bytes);
    }

    #[test]
    fn idle_buffers_hold_no_memory() {
        let mut o = OutBuf::new();
        o.push(&[0; 100], Kind::Reply, 1000, Drop);
        o.release_if_empty();
        assert!(o.capacity() > 0, "pending bytes are kept");
        o.advance(100);
        o.release_if_empty();
        assert_eq!(o.capacity(), 0);
    }

    #[test]
    fn a_drained_burst_gives_its_buffer_back_at_once_a_small_write_keeps_it() {
        let mut o = OutBuf::new();
        o.push(&[0; 2000], Kind::Delivery, 1 << 20, Drop);
        assert!(o.advance(2000));
        let kept = o.capacity();
        assert!(kept >= 2000, "a window's worth is reused, not reallocated");
        // The `subscribed` answers of a batch of subscribes: ten replies in one turn.
        for _ in 0..10 {
            o.push(&[1; 1000], Kind::Reply, 1 << 20, Drop);
        }
        assert!(o.capacity() > KEEP_BYTES);
        assert!(!o.advance(9000));
        assert!(o.capacity() > KEEP_BYTES, "bytes still pending are kept");
        assert!(o.advance(1000));
        assert_eq!(o.capacity(), 0, "the burst's buffer is freed when drained");
    }
}
