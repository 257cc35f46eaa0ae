//! QoS 1 (I4) acknowledgements: a client's `ack` clears the matching in-flight delivery.
//!
//! The rest of QoS 1 lives where it happens: deliveries are tracked as they are queued
//! ([`super::fanout`], `deliver_now`), and redelivered when unacknowledged by the sweeper
//! ([`super::housekeeping`]).
//!
//! May touch: one connection's in-flight set. May not: queue frames.
//!
//! Read next: [`super::backbone`].

use super::connections::ConnId;
use super::Shard;
use crate::metrics::Counters;

impl Shard {
    /// A client's `ack`. Unknown acks (QoS 0, already acknowledged) are ignored.
    pub(crate) fn ack(
        &self,
        id: ConnId,
        message_id: Option<&str>,
        topic: Option<&str>,
        seq_no: Option<u64>,
    ) {
        let matched = self.with_conn(id, |c| {
            let Some(inf) = c.inflight.as_mut() else {
                return false;
            };
            let hit = inf.ack(message_id, topic, seq_no);
            if inf.is_empty() {
                c.inflight = None;
            }
            hit
        });
        if matched == Some(true) {
            Counters::add(&self.counters.qos1_acks, 1);
        }
    }
}
