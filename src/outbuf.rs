//! `OutBuf`: the bytes queued for one connection's socket, and the backlog cap.
//!
//! A delivery is appended here once (a `memcpy` of the owner-built frame), so everything a
//! connection has pending is contiguous and goes out in ONE write, whatever number of frames it
//! holds (coalescing: GLOMMIO-NOTES.md section 4). No per-subscriber reference count is taken on
//! the frame. The cap is checked here, when enqueueing, because the writer of a stuck connection
//! never runs.
//!
//! Pure: no sockets, no glommio. The shard owns one per connection.

use crate::config::SlowConsumerPolicy;

/// A partly written buffer is compacted once this many bytes at its front were sent.
const COMPACT_BYTES: usize = 16 * 1024;
/// A drained buffer keeps its allocation up to this size (busy connections reuse it).
const KEEP_BYTES: usize = 64 * 1024;

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
#[derive(Debug, Default)]
pub struct OutBuf {
    buf: Vec<u8>,
    sent: usize,
}

impl OutBuf {
    /// An empty buffer; allocates nothing until the first push.
    pub const fn new() -> Self {
        OutBuf {
            buf: Vec::new(),
            sent: 0,
        }
    }

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
                        SlowConsumerPolicy::Drop => Push::Dropped,
                        SlowConsumerPolicy::Disconnect => Push::OverLimit,
                    }
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
    }

    /// The kernel took `n` more bytes. Returns true when everything is written.
    pub fn advance(&mut self, n: usize) -> bool {
        debug_assert!(n <= self.pending());
        self.sent = (self.sent + n).min(self.buf.len());
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
        self.buf = Vec::new();
        self.sent = 0;
    }

    /// Frees the allocation when nothing is pending (idle connections hold no write buffer).
    pub fn release_if_empty(&mut self) {
        if self.pending() == 0 && self.buf.capacity() > 0 {
            self.clear();
        }
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
            self.buf.drain(..self.sent);
            self.sent = 0;
        }
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

    #[test]
    fn partial_writes_keep_order_and_compaction_bounds_memory() {
        let mut o = OutBuf::new();
        let mut expect = Vec::new();
        for i in 0..2000u32 {
            let f = i.to_le_bytes().repeat(10);
            assert_eq!(
                o.push(&f, Kind::Delivery, 1 << 20, Disconnect),
                Push::Queued
            );
            expect.extend_from_slice(&f);
            // Write a bit less than what arrives, then catch up: never fully drained.
            let n = (o.pending() / 2).max(1);
            assert_eq!(o.pending_bytes()[..n], expect[..n]);
            expect.drain(..n);
            o.advance(n);
            assert!(o.capacity() < 256 * 1024, "buffer grew to {}", o.capacity());
        }
        assert_eq!(o.pending_bytes(), &expect[..]);
        assert!(o.advance(o.pending()));
        assert_eq!(o.pending(), 0);
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
}
