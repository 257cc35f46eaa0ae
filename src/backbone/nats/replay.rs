//! A replay out of JetStream, for an owner core whose own history does not reach back far
//! enough: the topic's frames from a `seqNo` to its last, found by binary search over stream
//! sequences and read in batches, with the same errors the owner's own history would give
//! (`fromSeq` in the future, no longer held; partial: the frames still held after the gap).
//!
//! May touch: JetStream, through the reads of [`super::read`].
//! May not: change a topic's state or talk to the cores (the answer goes back to the owner from
//! the command's dispatch in [`super`]).
//!
//! Read next: the cores' side of the backbone, `src/shard/backbone.rs`.

use super::read::{ReadErr, Stored};
use super::{Node, READ_BATCH};
use crate::history::{HeldFrame, ReplayError};
use crate::mesh::ReplayAnswer;
use std::collections::VecDeque;

impl Node {
    /// A stream sequence from which the topic's first stored message with `seqNo >= seq` is
    /// the next one of the subject. `f(x)` = "the subject's first message at or after stream
    /// sequence x" grows with x, and `f(hi)` qualifies: binary search for the smallest x in
    /// `[lo, hi]` whose `f(x)` does (O(log(hi - lo)) reads).
    async fn find(
        &self,
        subject: &str,
        seq: u64,
        mut lo: u64,
        mut hi: u64,
    ) -> Result<u64, ReadErr> {
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let m = self.next_of(subject, mid).await?;
            if m.seq < seq {
                lo = m.stream_seq + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// A replay out of JetStream: the frames from `from_seq` to the topic's last, or the error
    /// the owner's own history would give (partial: the frames still held after it).
    pub(super) async fn replay(&self, topic: &str, from_seq: u64, partial: bool) -> ReplayAnswer {
        let err = |e: String| {
            tracing::warn!(topic, "replay from the backbone failed: {e}");
            ReplayAnswer {
                last_seq: 0,
                frames: Vec::new(),
                error: Some(ReplayError::Unavailable {
                    oldest_held: None,
                    last_seq: 0,
                }),
            }
        };
        let subject = self.cc.in_subject(topic);
        let (last_stream, last_seq) = match self.last_of(topic).await {
            Ok(l) => l,
            Err(e) => return err(e),
        };
        let from_seq = match from_seq {
            u64::MAX => last_seq + 1,
            // "latest": the newest message, or nothing when there is none yet.
            crate::history::REPLAY_LATEST => last_seq.max(1),
            f => f.max(1),
        };
        if from_seq > last_seq + 1 {
            return ReplayAnswer {
                last_seq,
                frames: Vec::new(),
                error: Some(ReplayError::FromSeqInFuture { from_seq, last_seq }),
            };
        }
        if from_seq == last_seq + 1 {
            return ReplayAnswer {
                last_seq,
                frames: Vec::new(),
                error: None,
            };
        }
        let first = match self.next_of(&subject, 1).await {
            Ok(f) => f,
            Err(ReadErr::NotFound) => {
                return ReplayAnswer {
                    last_seq,
                    frames: Vec::new(),
                    error: Some(ReplayError::Unavailable {
                        oldest_held: None,
                        last_seq,
                    }),
                }
            }
            Err(ReadErr::Io(e)) => return err(e),
        };
        let mut error = None;
        let start_seq = if from_seq < first.seq {
            error = Some(ReplayError::Unavailable {
                oldest_held: Some(first.seq),
                last_seq,
            });
            if !partial {
                return ReplayAnswer {
                    last_seq,
                    frames: Vec::new(),
                    error,
                };
            }
            first.seq
        } else {
            from_seq
        };
        let start = if start_seq == first.seq {
            first.stream_seq
        } else {
            match self
                .find(&subject, start_seq, first.stream_seq, last_stream)
                .await
            {
                Ok(s) => s,
                Err(ReadErr::NotFound) => last_stream,
                Err(ReadErr::Io(e)) => return err(e),
            }
        };
        let mut frames = Vec::with_capacity((last_seq + 1 - start_seq).min(65_536) as usize);
        let mut at = start;
        let mut expect = start_seq;
        let mut buf: VecDeque<Stored> = VecDeque::new();
        while expect <= last_seq {
            let m = match buf.pop_front() {
                Some(m) => m,
                None => {
                    let want = (last_seq + 1 - expect).min(READ_BATCH as u64) as usize;
                    match self.next_many(&subject, at, want).await {
                        Ok(v) => {
                            buf.extend(v);
                            continue;
                        }
                        Err(ReadErr::NotFound) => break,
                        Err(ReadErr::Io(e)) => return err(e),
                    }
                }
            };
            if m.seq < expect {
                at = m.stream_seq + 1;
                continue;
            }
            if m.seq > expect {
                // A hole inside the stream (a message removed): only what follows it is whole.
                frames.clear();
                error = Some(ReplayError::Unavailable {
                    oldest_held: Some(m.seq),
                    last_seq,
                });
                if !partial {
                    return ReplayAnswer {
                        last_seq,
                        frames,
                        error,
                    };
                }
            }
            expect = m.seq + 1;
            at = m.stream_seq + 1;
            frames.push(HeldFrame {
                seq_no: m.seq,
                frame: m.frame(),
                // Not compressed: a clustered replay goes out in plain frames (valid under
                // permessage-deflate too).
                deflated: None,
                qos1: m.qos1,
            });
        }
        let last = frames.last().map_or(last_seq, |f| f.seq_no);
        ReplayAnswer {
            last_seq: last,
            frames,
            error,
        }
    }
}
