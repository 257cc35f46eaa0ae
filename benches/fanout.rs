//! Per-core fan-out without I/O: what one delivery to one local subscriber costs.
//!
//! Exactly the shard's enqueue path per delivery (`Shard::fan_out`, minus the connection-state
//! check and dirty marking): look the topic's subscribers up in the core's `TopicTable`, and
//! append the same finished frame (built once by `encode_message_frame`, 64-byte payload) to
//! each subscriber's `OutBuf` under the default backlog cap and slow-consumer policy. No socket,
//! no syscall, no glommio.
//!
//! - `deliver_1_frame`: one delivery; the out buffers are drained (untimed) after each, so every
//!   push lands in an empty buffer that kept its allocation, as after each loop turn's flush.
//! - `deliver_32_frames_then_drain`: 32 deliveries, then every out buffer drained with
//!   `advance(pending)`, all timed: a loop turn's worth of queueing plus the flush bookkeeping,
//!   without the write itself.
//!
//! Criterion's throughput line is deliveries (subscriber x frame) per second; the time per
//! delivery is its inverse. Nothing is pinned: this measures the pure path on whatever core runs
//! the bench.
//!
//! Run: `cargo bench --bench fanout`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use subsocket::config::Config;
use subsocket::outbuf::{Kind, OutBuf, Push};
use subsocket::protocol::encode_message_frame;
use subsocket::topics::TopicTable;

/// Benchmark names are padded to this width with `_` so they line up in the output.
const NAME_WIDTH: usize = 40;
/// Local subscriber counts of the fanned-out topic.
const SUBSCRIBERS: [(u32, &str); 2] = [(1_000, "1k"), (10_000, "10k")];
/// Deliveries queued per flush in the batched variant (a busy loop turn).
const FRAMES_PER_FLUSH: usize = 32;
/// Topic of the benchmark deliveries.
const TOPIC: &str = "chat.room.42";

/// `name` padded with `_` to [`NAME_WIDTH`].
fn padded(name: &str) -> String {
    format!("{name:_<NAME_WIDTH$}")
}

/// One core's state for the bench: the topic table and one out buffer per connection slot.
struct Core {
    topics: TopicTable,
    outs: Vec<OutBuf>,
    cfg: Config,
}

impl Core {
    /// Slots `0..subscribers` all subscribed to [`TOPIC`].
    fn new(subscribers: u32) -> Self {
        let mut topics = TopicTable::new();
        for slot in 0..subscribers {
            topics.subscribe(slot, TOPIC);
        }
        Core {
            topics,
            outs: (0..subscribers).map(|_| OutBuf::new()).collect(),
            cfg: Config::default(),
        }
    }

    /// One delivery: the shard's lookup + enqueue per local subscriber. Returns how many were
    /// queued (all of them: the buffers stay far below the cap).
    #[inline]
    fn deliver(&mut self, frame: &[u8]) -> usize {
        let Core { topics, outs, cfg } = self;
        let mut queued = 0;
        topics.for_each_subscriber(TOPIC, |slot| {
            let pushed = outs[slot as usize].push(
                frame,
                Kind::Delivery,
                cfg.max_backlog_bytes,
                cfg.slow_consumer,
            );
            queued += usize::from(pushed == Push::Queued);
        });
        queued
    }

    /// Every out buffer fully written: what the flush does after the kernel took everything.
    fn drain(&mut self) {
        for out in &mut self.outs {
            let n = out.pending();
            out.advance(n);
        }
    }
}

fn fanout(c: &mut Criterion) {
    // A 64-byte JSON string as the published payload.
    let data = format!("\"{}\"", "x".repeat(62));
    let frame = encode_message_frame(TOPIC, 42, "01HZX3K4M5N6P7Q8-000000000042", data.as_bytes());
    eprintln!("fanout: frame of {} bytes (64-byte payload)", frame.len());

    let mut g = c.benchmark_group("fanout");
    // Flat sampling: the 10k x 32-frame batch takes ~15 ms, too slow for criterion's linear
    // ramp of 20 samples in 3 s.
    g.sample_size(20)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    for (subscribers, label) in SUBSCRIBERS {
        let mut core = Core::new(subscribers);
        let n = subscribers as usize;
        // Warm the buffers' allocations, as a running core has them.
        assert_eq!(core.deliver(&frame), n);
        core.drain();

        g.throughput(Throughput::Elements(u64::from(subscribers)));
        g.bench_function(padded(&format!("deliver_1_frame_{label}_subs")), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let queued = core.deliver(black_box(&frame));
                    timed += start.elapsed();
                    debug_assert_eq!(queued, n);
                    core.drain();
                }
                timed
            })
        });

        g.throughput(Throughput::Elements(
            u64::from(subscribers) * FRAMES_PER_FLUSH as u64,
        ));
        g.bench_function(
            padded(&format!("deliver_32_frames_then_drain_{label}_subs")),
            |b| {
                b.iter(|| {
                    let mut queued = 0;
                    for _ in 0..FRAMES_PER_FLUSH {
                        queued += core.deliver(black_box(&frame));
                    }
                    core.drain();
                    black_box(queued)
                })
            },
        );
        assert_eq!(core.deliver(&frame), n, "nothing was dropped or cut off");
    }
    g.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
