//! What a micro socket tells the application besides messages: its connection state (a
//! `watch`: always the latest) and events (a `broadcast`: each change and each loss, in order).

use std::time::Duration;

/// The connection state of one micro socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Attempt number `attempt` (1-based since the last ready connection) is under way.
    Connecting {
        /// Consecutive attempt number.
        attempt: u32,
    },
    /// Connected, authenticated and subscribed (or resumed); messages flow.
    Connected {
        /// The gateway session this socket resumes after a disconnect.
        session_id: String,
    },
    /// Waiting before the next attempt.
    Backoff {
        /// The attempt that failed.
        attempt: u32,
        /// The jittered delay before the next one.
        retry_in: Duration,
    },
    /// Closed by the application ([`crate::MicroSocket::close`] or dropping it).
    Closed,
    /// The retry policy gave up; the socket is finished.
    Failed {
        /// The last error.
        reason: String,
    },
}

/// How a connection took up the stream again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// The first connection: subscribed from now on.
    Fresh,
    /// `resume` succeeded: every held message after the last one handed over was replayed.
    Resumed,
    /// The session had expired: re-subscribed with `fromSeq` (a replay from history).
    Resubscribed,
}

/// Something that happened to a micro socket. Receivers that lag lose the oldest events
/// (`broadcast`), never stall the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A connection is ready (state [`ConnectionState::Connected`]).
    Connected {
        /// The session it belongs to.
        session_id: String,
        /// How the stream was taken up.
        recovery: Recovery,
    },
    /// The connection was lost (a reconnect follows unless the policy gives up).
    Disconnected {
        /// Why.
        reason: String,
    },
    /// Waiting `delay` before attempt `attempt + 1`.
    Backoff {
        /// The attempt that failed.
        attempt: u32,
        /// The jittered delay.
        delay: Duration,
        /// Why the attempt failed.
        reason: String,
    },
    /// The retry policy gave up.
    GaveUp {
        /// The last error.
        reason: String,
    },
    /// `resume` was refused (`SESSION_EXPIRED`): the socket re-subscribed with `fromSeq`.
    SessionExpired {
        /// The session that was not resumed.
        session_id: String,
    },
    /// The gateway's `drop` slow-consumer policy skipped `from_seq..=to_seq` of `topic` for
    /// this socket while it was behind. Not an end: the socket asks for the range with
    /// `replay`; what the gateway no longer holds then comes as [`Event::Lost`].
    Dropped {
        /// The topic.
        topic: String,
        /// First seqNo skipped.
        from_seq: u64,
        /// Last seqNo skipped.
        to_seq: u64,
    },
    /// Messages `from_seq..=to_seq` of `topic` can never be delivered (the gateway no longer
    /// holds them); delivery goes on from `to_seq + 1`.
    Lost {
        /// The topic.
        topic: String,
        /// First seqNo lost.
        from_seq: u64,
        /// Last seqNo lost.
        to_seq: u64,
    },
    /// The gateway's numbering of `topic` started again (a gateway restart loses history and
    /// sequence numbers); what was published after `last_seq_before` and before the restart is
    /// unknown, and delivery goes on with the new numbering.
    Restarted {
        /// The topic.
        topic: String,
        /// The last seqNo handed over under the old numbering.
        last_seq_before: u64,
    },
    /// A delivery whose signature did not verify was dropped (its seqNo counts as delivered).
    BadSignature {
        /// The topic.
        topic: String,
        /// Its seqNo.
        seq_no: u64,
    },
    /// The gateway sent an `error` that is not the answer to a publish (those fail the
    /// publish itself).
    ServerError {
        /// The stable error word.
        code: String,
        /// The explanation.
        message: String,
        /// The topic it names, if any.
        topic: Option<String>,
    },
}
