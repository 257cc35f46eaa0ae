//! Per-topic ordering: turns deliveries that may repeat, arrive ahead of a gap or come from a
//! restarted gateway into the sequence the application sees, each `(topic, seqNo)` once and in
//! order, with every loss named. Pure and synchronous: the socket task feeds it and carries out
//! what it answers (deliver, ask for a replay, report).
//!
//! # Invariants
//! - `last` only grows within one numbering; a message is handed over only when its seqNo is
//!   `last + 1` (or it re-baselines after the gateway said what it could not replay).
//! - A message with `seqNo <= last` is a duplicate (QoS 1 redelivery, replay overlap) and is
//!   dropped, except on a fresh connection before the topic is known to continue: there it is
//!   kept aside, because a restarted gateway numbers from 1 again and its `REPLAY_UNAVAILABLE`
//!   ("fromSeq is ahead") arrives after such messages on a `/ws/sub/{topic}` socket.
//! - A topic with no delivery yet has no baseline. While a `resume` is out, its deliveries are
//!   held, not taken as the baseline: a `/ws/sub/{topic}` socket is subscribed by the gateway
//!   before the `resume` arrives, so live messages can come ahead of the replay of older ones
//!   the session kept (unacknowledged QoS 1). `resumed` (or the end of the resume) sets the
//!   baseline below the lowest one held.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::wire::Message;
use crate::Event;

/// What the socket must do after an input.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Hand these to the application, in this order.
    pub deliver: Vec<Message>,
    /// Send `replay {topic, fromSeq}` with this `fromSeq`.
    pub replay_from: Option<u64>,
    /// Report these.
    pub events: Vec<Event>,
    /// The input was a duplicate of something already handed over (ack it again if QoS 1).
    pub duplicate: bool,
}

/// The ordering state of one topic. Outlives connections.
#[derive(Debug)]
pub(crate) struct TopicOrder {
    topic: String,
    /// The last seqNo handed to the application (`None` before the first delivery).
    last: Option<u64>,
    /// Messages received ahead of a gap, by seqNo; bounded by `max_pending`.
    pending: BTreeMap<u64, Message>,
    /// The `fromSeq` of the replay (or resume / subscribe with `fromSeq`) not yet answered,
    /// and when it was asked.
    recovering: Option<(u64, Instant)>,
    /// The next delivery sets `last` whatever its seqNo (after an unanswerable replay).
    rebaseline: bool,
    /// Whether this connection has shown that the topic's numbering continues.
    settled: bool,
    /// Duplicates dropped on this connection before it settled (see the module invariants).
    dropped_unsettled: Vec<Message>,
    /// A `resume` is out and `last` is `None`: deliveries wait in `pending` for the baseline.
    holding: bool,
    /// Bound of `pending` and `dropped_unsettled`.
    max_pending: usize,
}

impl TopicOrder {
    pub(crate) fn new(topic: String, max_pending: usize) -> Self {
        TopicOrder {
            topic,
            last: None,
            pending: BTreeMap::new(),
            recovering: None,
            rebaseline: false,
            settled: true,
            dropped_unsettled: Vec::new(),
            holding: false,
            max_pending: max_pending.max(1),
        }
    }

    /// The last seqNo handed over, for `resume`'s `lastSeqPerTopic` and `fromSeq`.
    pub(crate) fn last(&self) -> Option<u64> {
        self.last
    }

    /// A new connection began: continuity must be shown again.
    pub(crate) fn new_connection(&mut self) {
        self.settled = false;
        self.dropped_unsettled.clear();
        self.recovering = None;
        self.holding = false;
    }

    /// A `resume`, `replay` or `subscribe` with `fromSeq = from` was sent.
    pub(crate) fn recovery_sent(&mut self, from: u64, now: Instant) {
        self.recovering = Some((from, now));
    }

    /// A `resume` was sent: until it is answered, a topic with no baseline yet holds its
    /// deliveries (see the module invariants).
    pub(crate) fn resume_sent(&mut self) {
        self.holding = self.last.is_none();
    }

    /// The `resume` is over (`resumed`, or refused and the topic subscribed again): what was
    /// held is handed over from the lowest seqNo on.
    pub(crate) fn release_held(&mut self) -> Outcome {
        let mut out = Outcome::default();
        self.holding = false;
        if self.last.is_none() {
            if let Some((&first, _)) = self.pending.first_key_value() {
                self.last = Some(first - 1);
                self.drain(&mut out);
            }
        }
        out
    }

    /// The gateway said `resumed`: the numbering continues and the replay is complete.
    pub(crate) fn resumed(&mut self, now: Instant) -> Outcome {
        self.recovering = None;
        let mut out = self.release_held();
        self.settle();
        self.ask_for_gap(&mut out, now);
        out
    }

    fn settle(&mut self) {
        self.settled = true;
        self.dropped_unsettled.clear();
    }

    /// A delivery arrived.
    pub(crate) fn on_delivery(&mut self, msg: Message, now: Instant) -> Outcome {
        let mut out = Outcome::default();
        self.accept(msg, now, &mut out);
        out
    }

    fn accept(&mut self, msg: Message, now: Instant, out: &mut Outcome) {
        let s = msg.seq_no;
        if self.rebaseline {
            self.rebaseline = false;
            self.settle();
            match self.last {
                Some(l) if s <= l => {
                    out.events.push(Event::Restarted {
                        topic: self.topic.clone(),
                        last_seq_before: l,
                    });
                    self.pending.clear();
                }
                Some(l) if s > l + 1 => out.events.push(Event::Lost {
                    topic: self.topic.clone(),
                    from_seq: l + 1,
                    to_seq: s - 1,
                }),
                _ => {}
            }
            self.last = Some(s.saturating_sub(1));
        }
        let Some(l) = self.last else {
            if self.holding && self.pending.len() < self.max_pending {
                self.pending.entry(s).or_insert(msg);
                return;
            }
            // The baseline: this delivery, or a lower one held during a resume.
            let first = self.pending.first_key_value().map_or(s, |(&p, _)| p.min(s));
            self.holding = false;
            self.last = Some(first.saturating_sub(1));
            if s > first {
                self.pending.entry(s).or_insert(msg);
                self.settle();
                self.drain(out);
                self.ask_for_gap(out, now);
                return;
            }
            return self.accept(msg, now, out);
        };
        if s <= l {
            out.duplicate = true;
            if !self.settled && self.dropped_unsettled.len() < self.max_pending {
                self.dropped_unsettled.push(msg);
            }
            return;
        }
        self.settle();
        if s == l + 1 {
            self.last = Some(s);
            out.deliver.push(msg);
            self.drain(out);
            return;
        }
        self.pending.insert(s, msg);
        if self.pending.len() > self.max_pending {
            // Too far behind to keep waiting: what the replay has not brought is lost.
            self.give_up_gap(out);
            return;
        }
        self.ask_for_gap(out, now);
    }

    /// Hands over the pending run that follows `last`; ends recovery when no gap is left.
    fn drain(&mut self, out: &mut Outcome) {
        while let Some(entry) = self.pending.first_entry() {
            let l = self.last.unwrap_or(0);
            if *entry.key() <= l {
                entry.remove();
            } else if *entry.key() == l + 1 {
                self.last = Some(l + 1);
                out.deliver.push(entry.remove());
            } else {
                break;
            }
        }
        if self.pending.is_empty() {
            self.recovering = None;
        }
    }

    /// Asks for the missing messages unless a request for them is already out.
    fn ask_for_gap(&mut self, out: &mut Outcome, now: Instant) {
        if self.pending.is_empty() || self.recovering.is_some() {
            return;
        }
        let from = self.last.unwrap_or(0) + 1;
        self.recovering = Some((from, now));
        out.replay_from = Some(from);
    }

    /// Declares every gap among the pending messages lost and hands them over.
    fn give_up_gap(&mut self, out: &mut Outcome) {
        while let Some((&first, _)) = self.pending.first_key_value() {
            let l = self.last.unwrap_or(0);
            if first > l + 1 {
                out.events.push(Event::Lost {
                    topic: self.topic.clone(),
                    from_seq: l + 1,
                    to_seq: first - 1,
                });
                self.last = Some(first - 1);
            }
            self.drain(out);
        }
        self.recovering = None;
    }

    /// The gateway dropped up to `to_seq` for this connection (its `drop` policy): ask for
    /// what follows `last` unless a request is already out.
    pub(crate) fn dropped(&mut self, to_seq: u64, now: Instant) -> Outcome {
        let mut out = Outcome::default();
        if let Some(l) = self.last {
            if to_seq > l && self.recovering.is_none() {
                self.recovering = Some((l + 1, now));
                out.replay_from = Some(l + 1);
            }
        }
        out
    }

    /// A replay request outstanding for longer than `timeout` with the gap still open is
    /// asked again (the answer can be lost with a connection).
    pub(crate) fn check_stalled(&mut self, now: Instant, timeout: Duration) -> Outcome {
        let mut out = Outcome::default();
        if let Some((_, at)) = self.recovering {
            if !self.pending.is_empty() && now.duration_since(at) >= timeout {
                self.recovering = None;
                self.ask_for_gap(&mut out, now);
            }
        }
        out
    }

    /// `REPLAY_UNAVAILABLE` for this topic. With `oldest` (the oldest seqNo held), what lies
    /// before it is lost and the rest is asked for again; without it (nothing held, or a
    /// `fromSeq` ahead of a restarted gateway) the next delivery sets the numbering and says
    /// what was lost or that it restarted.
    pub(crate) fn on_replay_unavailable(&mut self, oldest: Option<u64>, now: Instant) -> Outcome {
        let mut out = Outcome::default();
        self.recovering = None;
        let l = self.last.unwrap_or(0);
        match oldest {
            Some(o) if o > l + 1 => {
                out.events.push(Event::Lost {
                    topic: self.topic.clone(),
                    from_seq: l + 1,
                    to_seq: o - 1,
                });
                self.last = Some(o - 1);
                self.drain(&mut out);
                // Held from `o` on: ask for it (duplicates of what the gateway sends anyway
                // are dropped).
                let from = self.last.unwrap_or(0) + 1;
                self.recovering = Some((from, now));
                out.replay_from = Some(from);
            }
            Some(_) => self.ask_for_gap(&mut out, now),
            None => {
                self.give_up_gap(&mut out);
                self.rebaseline = true;
                let mut kept = std::mem::take(&mut self.dropped_unsettled);
                kept.sort_by_key(|m| m.seq_no);
                kept.dedup_by_key(|m| m.seq_no);
                for m in kept {
                    self.accept(m, now, &mut out);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    use crate::wire::Qos;

    fn msg(seq: u64) -> Message {
        Message {
            topic: "t".into(),
            seq_no: seq,
            message_id: format!("m{seq}"),
            qos: Qos::AtMostOnce,
            data: RawValue::from_string(seq.to_string()).unwrap(),
            signature_verified: false,
            rejected: false,
        }
    }

    fn seqs(out: &Outcome) -> Vec<u64> {
        out.deliver.iter().map(|m| m.seq_no).collect()
    }

    #[test]
    fn in_order_deliveries_pass_and_duplicates_drop() {
        let now = Instant::now();
        let mut t = TopicOrder::new("t".into(), 100);
        assert_eq!(seqs(&t.on_delivery(msg(5), now)), [5]);
        assert_eq!(seqs(&t.on_delivery(msg(6), now)), [6]);
        let dup = t.on_delivery(msg(6), now);
        assert!(dup.duplicate && dup.deliver.is_empty());
        assert_eq!(t.last(), Some(6));
    }

    #[test]
    fn a_gap_asks_for_replay_once_and_fills_in_order() {
        let now = Instant::now();
        let mut t = TopicOrder::new("t".into(), 100);
        t.on_delivery(msg(1), now);
        let out = t.on_delivery(msg(4), now);
        assert_eq!(out.replay_from, Some(2));
        assert!(out.deliver.is_empty());
        assert_eq!(
            t.on_delivery(msg(5), now).replay_from,
            None,
            "one request per gap"
        );
        assert_eq!(seqs(&t.on_delivery(msg(2), now)), [2]);
        assert_eq!(seqs(&t.on_delivery(msg(3), now)), [3, 4, 5]);
        assert!(t.on_delivery(msg(4), now).duplicate);
        assert_eq!(seqs(&t.on_delivery(msg(6), now)), [6]);
    }

    #[test]
    fn a_stalled_replay_is_asked_again() {
        let now = Instant::now();
        let mut t = TopicOrder::new("t".into(), 100);
        t.on_delivery(msg(1), now);
        t.on_delivery(msg(3), now);
        assert_eq!(
            t.check_stalled(now, Duration::from_secs(1)).replay_from,
            None
        );
        let later = now + Duration::from_secs(2);
        assert_eq!(
            t.check_stalled(later, Duration::from_secs(1)).replay_from,
            Some(2)
        );
    }

    #[test]
    fn evicted_history_names_the_loss_and_asks_for_the_rest() {
        let now = Instant::now();
        let mut t = TopicOrder::new("t".into(), 100);
        t.on_delivery(msg(1), now);
        t.on_delivery(msg(9), now);
        let out = t.on_replay_unavailable(Some(5), now);
        assert!(matches!(
            out.events.as_slice(),
            [Event::Lost {
                from_seq: 2,
                to_seq: 4,
                ..
            }]
        ));
        assert_eq!(out.replay_from, Some(5));
        assert_eq!(seqs(&t.on_delivery(msg(5), now)), [5]);
        for s in 6..=8 {
            t.on_delivery(msg(s), now);
        }
        assert_eq!(t.last(), Some(9));
    }

    #[test]
    fn nothing_held_rebaselines_on_the_next_delivery() {
        let now = Instant::now();
        let mut t = TopicOrder::new("t".into(), 100);
        t.on_delivery(msg(1), now);
        t.new_connection();
        let out = t.on_replay_unavailable(None, now);
        assert!(out.events.is_empty() && out.deliver.is_empty());
        let out = t.on_delivery(msg(7), now);
        assert_eq!(seqs(&out), [7]);
        assert!(matches!(
            out.events.as_slice(),
            [Event::Lost {
                from_seq: 2,
                to_seq: 6,
                ..
            }]
        ));
    }

    #[test]
    fn a_restarted_gateway_is_reported_and_its_messages_kept() {
        let now = Instant::now();
        let mut t = TopicOrder::new("t".into(), 100);
        for s in 1..=10 {
            t.on_delivery(msg(s), now);
        }
        t.new_connection();
        // /ws/sub: the restarted gateway's live 1 and 2 arrive before its answer.
        assert!(t.on_delivery(msg(1), now).duplicate);
        assert!(t.on_delivery(msg(2), now).duplicate);
        let out = t.on_replay_unavailable(None, now);
        assert_eq!(seqs(&out), [1, 2]);
        assert!(matches!(
            out.events.as_slice(),
            [Event::Restarted {
                last_seq_before: 10,
                ..
            }]
        ));
        assert_eq!(seqs(&t.on_delivery(msg(3), now)), [3]);
    }

    #[test]
    fn too_many_pending_gives_the_gap_up() {
        let now = Instant::now();
        let mut t = TopicOrder::new("t".into(), 3);
        t.on_delivery(msg(1), now);
        for s in 3..=5 {
            assert!(t.on_delivery(msg(s), now).deliver.is_empty());
        }
        let out = t.on_delivery(msg(6), now);
        assert_eq!(seqs(&out), [3, 4, 5, 6]);
        assert!(matches!(
            out.events.as_slice(),
            [Event::Lost {
                from_seq: 2,
                to_seq: 2,
                ..
            }]
        ));
    }

    #[test]
    fn live_messages_ahead_of_a_resume_replay_wait_for_resumed() {
        // A /ws/sub socket is subscribed before its `resume` is read: live 16 arrives, then
        // the replay of 1..16 the session kept unacknowledged, then `resumed`.
        let now = Instant::now();
        let mut t = TopicOrder::new("t".into(), 100);
        t.new_connection();
        t.resume_sent();
        assert!(t.on_delivery(msg(16), now).deliver.is_empty());
        for s in 1..=16 {
            assert!(t.on_delivery(msg(s), now).deliver.is_empty(), "{s} held");
        }
        let out = t.resumed(now);
        assert_eq!(seqs(&out), (1..=16).collect::<Vec<_>>());
        assert_eq!(out.replay_from, None);
        assert!(t.on_delivery(msg(16), now).duplicate);
        assert_eq!(seqs(&t.on_delivery(msg(17), now)), [17]);
    }

    #[test]
    fn a_topic_with_a_baseline_is_not_held_during_a_resume() {
        let now = Instant::now();
        let mut t = TopicOrder::new("t".into(), 100);
        t.on_delivery(msg(1), now);
        t.new_connection();
        t.resume_sent();
        assert_eq!(seqs(&t.on_delivery(msg(2), now)), [2]);
    }

    #[test]
    fn what_a_lost_connection_left_held_still_sets_the_baseline() {
        let now = Instant::now();
        let mut t = TopicOrder::new("t".into(), 100);
        t.resume_sent();
        t.on_delivery(msg(5), now);
        t.on_delivery(msg(3), now);
        t.new_connection(); // cut before `resumed`; the next connection does not resume
        let out = t.on_delivery(msg(6), now);
        assert_eq!(seqs(&out), [3], "from the lowest held on; 4 is missing");
        assert_eq!(out.replay_from, Some(4));
        assert_eq!(seqs(&t.on_delivery(msg(4), now)), [4, 5, 6]);
    }

    #[test]
    fn a_dropped_range_is_asked_for_once_and_filled() {
        let now = Instant::now();
        let mut t = TopicOrder::new("t".into(), 100);
        t.on_delivery(msg(1), now);
        assert_eq!(t.dropped(4, now).replay_from, Some(2));
        assert_eq!(t.dropped(4, now).replay_from, None, "one request");
        assert_eq!(seqs(&t.on_delivery(msg(2), now)), [2]);
        assert_eq!(seqs(&t.on_delivery(msg(3), now)), [3]);
        assert_eq!(seqs(&t.on_delivery(msg(4), now)), [4]);
        assert_eq!(
            t.dropped(4, now).replay_from,
            None,
            "nothing is missing any more"
        );
    }
}
