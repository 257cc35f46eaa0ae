//! QoS 1 (I4): the deliveries one connection has been sent and has not acknowledged yet.
//!
//! Only QoS 1 deliveries are tracked; a connection that never received one holds no state
//! at all (the engine keeps an `Option<Box<Inflight>>`, one word per connection). An entry
//! points to a [`QosMsg`] that the core makes once per delivery and shares between all its
//! subscribers through an `Rc` (a plain, non-atomic count: tracking a delivery for a thousand
//! subscribers bounces no cache line between cores). It holds the delivery's frame (the same
//! `Bytes` every subscriber got, no copy), so a redelivery writes the very same bytes: same
//! `seqNo`, same `messageId`. Clients drop a (topic, seqNo) they have already handled.
//!
//! Bounded: at most `window` entries per connection. Acks usually arrive in order, so the
//! front of the queue is checked first; the window is small (hundreds to a few thousand),
//! so a search from the front is cheap even when they do not.
//!
//! Pure: no glommio, no sockets. The shard calls in here from its connection and sweeper code.

use bytes::Bytes;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A QoS 1 delivery as one core tracks it, shared by its subscribers' entries.
#[derive(Debug)]
pub struct QosMsg {
    /// The delivery's topic.
    pub topic: Arc<str>,
    /// Its `seqNo`.
    pub seq_no: u64,
    /// Its `messageId` (acks may name only that).
    pub message_id: Arc<str>,
    /// The finished frame, shared with every other subscriber.
    pub frame: Bytes,
    /// Its compressed form, when the owner built one (permessage-deflate).
    pub deflated: Option<Bytes>,
}

impl QosMsg {
    /// The frame for a connection with permessage-deflate window bits `deflate_bits` (0: none).
    pub fn frame_for(&self, deflate_bits: u8) -> &Bytes {
        crate::mesh::pick_frame(&self.frame, self.deflated.as_ref(), deflate_bits)
    }
}

/// One unacknowledged QoS 1 delivery of one connection.
#[derive(Debug, Clone)]
pub struct Unacked {
    /// What was delivered.
    pub msg: Rc<QosMsg>,
    /// When it was last queued for the socket.
    pub sent_at: Instant,
    /// How many times it has been queued (1 = the first delivery).
    pub attempts: u32,
}

/// What became of a new delivery offered to the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Track {
    /// Tracked: send it.
    Tracked,
    /// Already tracked (a replay overlapping a live delivery): send nothing new.
    AlreadyTracked,
    /// The window is full: the client is not acknowledging (the slow-consumer case).
    WindowFull,
}

/// The unacknowledged QoS 1 deliveries of one connection, oldest first.
#[derive(Debug, Default)]
pub struct Inflight {
    entries: VecDeque<Unacked>,
}

impl Inflight {
    /// Tracks a live delivery about to be queued, unless `window` entries are already
    /// waiting. A live delivery is always new to the connection. O(1).
    pub fn track(&mut self, u: Unacked, window: usize) -> Track {
        if self.entries.len() >= window {
            return Track::WindowFull;
        }
        self.entries.push_back(u);
        Track::Tracked
    }

    /// Tracks a replayed delivery, which the connection may still hold unacknowledged (a
    /// client's `replay` overlapping its own window). O(n).
    pub fn track_replayed(&mut self, u: Unacked, window: usize) -> Track {
        if self
            .entries
            .iter()
            .any(|e| e.msg.seq_no == u.msg.seq_no && e.msg.topic == u.msg.topic)
        {
            return Track::AlreadyTracked;
        }
        self.track(u, window)
    }

    /// Acknowledges by `topic` + `seqNo` (exact) or, without them, by `messageId` (the oldest
    /// entry with that id). True when an entry was removed. O(position of the entry).
    pub fn ack(
        &mut self,
        message_id: Option<&str>,
        topic: Option<&str>,
        seq_no: Option<u64>,
    ) -> bool {
        let pos = match (topic, seq_no) {
            (Some(t), Some(s)) => self
                .entries
                .iter()
                .position(|e| e.msg.seq_no == s && &*e.msg.topic == t),
            _ => match message_id {
                Some(m) => self.entries.iter().position(|e| &*e.msg.message_id == m),
                None => None,
            },
        };
        match pos {
            Some(0) => self.entries.pop_front().is_some(),
            Some(i) => self.entries.remove(i).is_some(),
            None => false,
        }
    }

    /// The entries queued longer than `timeout` ago, marked as sent again at `now`; the caller
    /// queues their frames (the variant for `deflate_bits`) in the returned order (oldest
    /// first). O(n).
    pub fn due(&mut self, now: Instant, timeout: Duration, deflate_bits: u8) -> Vec<Bytes> {
        let mut out = Vec::new();
        for e in self.entries.iter_mut() {
            if now.saturating_duration_since(e.sent_at) >= timeout {
                e.sent_at = now;
                e.attempts = e.attempts.saturating_add(1);
                out.push(e.msg.frame_for(deflate_bits).clone());
            }
        }
        out
    }

    /// Forgets every entry of `topic` (the connection unsubscribed). O(n).
    pub fn forget_topic(&mut self, topic: &str) {
        self.entries.retain(|e| &*e.msg.topic != topic);
    }

    /// The lowest unacknowledged `seqNo` per topic (what a resumed session must get again),
    /// in first-seen order. O(n · topics).
    pub fn lowest_per_topic(&self) -> Vec<(Arc<str>, u64)> {
        let mut out: Vec<(Arc<str>, u64)> = Vec::new();
        for e in &self.entries {
            match out.iter_mut().find(|(t, _)| *t == e.msg.topic) {
                Some((_, s)) => *s = (*s).min(e.msg.seq_no),
                None => out.push((e.msg.topic.clone(), e.msg.seq_no)),
            }
        }
        out
    }

    /// Entries waiting for an ack.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing waits for an ack.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, oldest first (tests and diagnostics).
    pub fn iter(&self) -> impl Iterator<Item = &Unacked> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(topic: &str, seq: u64, at: Instant) -> Unacked {
        Unacked {
            msg: Rc::new(QosMsg {
                topic: topic.into(),
                seq_no: seq,
                message_id: format!("m-{topic}-{seq}").into(),
                frame: Bytes::from(format!("{topic}/{seq}")),
                deflated: None,
            }),
            sent_at: at,
            attempts: 1,
        }
    }

    #[test]
    fn tracks_up_to_the_window_then_refuses() {
        let now = Instant::now();
        let mut w = Inflight::default();
        for s in 1..=3 {
            assert_eq!(w.track(u("a", s, now), 3), Track::Tracked);
        }
        assert_eq!(w.track(u("a", 4, now), 3), Track::WindowFull);
        assert_eq!(w.len(), 3);
        assert!(w.ack(None, Some("a"), Some(1)));
        assert_eq!(w.track(u("a", 4, now), 3), Track::Tracked);
    }

    #[test]
    fn the_same_delivery_is_tracked_once() {
        let now = Instant::now();
        let mut w = Inflight::default();
        assert_eq!(w.track(u("a", 1, now), 10), Track::Tracked);
        assert_eq!(w.track(u("b", 1, now), 10), Track::Tracked);
        assert_eq!(w.track_replayed(u("a", 1, now), 10), Track::AlreadyTracked);
        assert_eq!(w.track_replayed(u("a", 2, now), 10), Track::Tracked);
        assert_eq!(w.len(), 3);
    }

    #[test]
    fn acks_by_topic_and_seq_or_by_message_id() {
        let now = Instant::now();
        let mut w = Inflight::default();
        for s in 1..=4 {
            w.track(u("a", s, now), 10);
        }
        assert!(w.ack(None, Some("a"), Some(3)), "out of order by seq");
        assert!(!w.ack(None, Some("a"), Some(3)), "only once");
        assert!(!w.ack(None, Some("b"), Some(1)), "wrong topic");
        assert!(w.ack(Some("m-a-1"), None, None), "by messageId");
        assert!(!w.ack(Some("nope"), None, None));
        let left: Vec<u64> = w.iter().map(|e| e.msg.seq_no).collect();
        assert_eq!(left, vec![2, 4]);
    }

    #[test]
    fn due_entries_are_resent_oldest_first_and_rearmed() {
        let t0 = Instant::now();
        let mut w = Inflight::default();
        w.track(u("a", 1, t0), 10);
        w.track(u("a", 2, t0 + Duration::from_millis(500)), 10);
        let timeout = Duration::from_secs(1);
        assert!(w
            .due(t0 + Duration::from_millis(900), timeout, 0)
            .is_empty());
        let d = w.due(t0 + Duration::from_millis(1_200), timeout, 0);
        assert_eq!(d, vec![Bytes::from("a/1")]);
        assert_eq!(w.iter().next().unwrap().attempts, 2);
        // Re-armed: not due again until a full timeout later.
        assert!(w.due(t0 + Duration::from_millis(1_600), timeout, 0).len() == 1);
        let d = w.due(t0 + Duration::from_millis(2_300), timeout, 0);
        assert_eq!(d, vec![Bytes::from("a/1")]);
    }

    #[test]
    fn lowest_per_topic_and_forget_topic() {
        let now = Instant::now();
        let mut w = Inflight::default();
        w.track(u("b", 7, now), 10);
        w.track(u("a", 3, now), 10);
        w.track(u("a", 2, now), 10);
        w.track(u("b", 9, now), 10);
        let l = w.lowest_per_topic();
        assert_eq!(l.len(), 2);
        assert_eq!((&*l[0].0, l[0].1), ("b", 7));
        assert_eq!((&*l[1].0, l[1].1), ("a", 2));
        w.forget_topic("b");
        assert_eq!(w.len(), 2);
        assert!(w.iter().all(|e| &*e.msg.topic == "a"));
    }
}
