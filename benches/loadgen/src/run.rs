//! One run from start to report, phase by phase: connect the subscribers, subscribe them, open
//! the publishers and churners, publish and measure, drain what is in flight, read the gateway's
//! books, close everything; then the JSON result line and the summary on stderr.

use crate::conn::{
    connect_from, make_token, masked_text, source_addrs, sse_request, upgrade_request,
    upgrade_request_with, ws_path, Conn, Phase,
};
use crate::picker::Picker;
use crate::probe::run_probe;
use crate::sys::{
    http_get_json, kernel_snapshot, proc_cpu_seconds, proc_rss_bytes, raise_nofile,
    self_cpu_seconds,
};
use crate::{Args, CHURN_BASE, CHURN_OPS_BASE, PUBLISHER_BASE};
use hdrhistogram::Histogram;
use mio::{Events, Poll};
use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

#[derive(Default)]
pub(crate) struct Totals {
    pub(crate) deliveries: u64,
    pub(crate) measured_deliveries: u64,
    pub(crate) gaps: u64,
    pub(crate) reordered: u64,
    pub(crate) published: u64,
    pub(crate) acked: u64,
    pub(crate) completed: u64,
    pub(crate) errors: u64,
    pub(crate) subscribed_topics: u64,
    pub(crate) closed_unexpectedly: u64,
    pub(crate) churned: u64,
    /// QoS 1: acks the subscribers sent (one per delivery, redeliveries included).
    pub(crate) acks_sent: u64,
    /// QoS 1: deliveries of a seqNo the connection already had (the gateway resent it because
    /// the ack came late); not counted as deliveries, gaps or reorderings.
    pub(crate) redelivered: u64,
    /// `--churn-ops`: subscribe and unsubscribe requests sent, and answers received.
    pub(crate) churn_ops_sent: u64,
    pub(crate) churn_ops_answered: u64,
    /// `--deflate`: subscribers whose upgrade answer accepted permessage-deflate.
    pub(crate) deflate_negotiated: u64,
    /// Bytes the subscribers read while measuring (frames with their headers, TCP payload).
    pub(crate) measured_wire_bytes: u64,
    /// Deliveries that came compressed (RSV1), all phases.
    pub(crate) compressed_deliveries: u64,
    /// Compressed deliveries whose bytes were not in the inflate cache (inflated anew).
    pub(crate) inflated: u64,
}

pub(crate) fn now_ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

pub(crate) struct Run {
    pub(crate) poll: Poll,
    pub(crate) conns: HashMap<usize, Conn>,
    pub(crate) epoch: Instant,
    pub(crate) totals: Totals,
    pub(crate) hist: Histogram<u64>,
    pub(crate) measuring: bool,
    /// (topic, seq) -> deliveries still expected.
    pub(crate) remaining: HashMap<(u32, u64), u64>,
    pub(crate) subs_per_topic: Vec<u64>,
    pub(crate) seed: u32,
    pub(crate) timeline: Vec<u64>,
    /// Largest end-to-end latency (µs) of each measured second, beside `timeline`.
    pub(crate) lat_max_timeline: Vec<u64>,
    /// QoS 1: ack every delivery that carries `"qos":1`.
    pub(crate) ack_qos1: bool,
    /// Scratch for building ack messages (no allocation per delivery).
    pub(crate) scratch: Vec<u8>,
    /// Publish (timestamp in the payload) to the delivery that completed the message: the
    /// last of its topic's subscribers to receive it.
    pub(crate) complete_hist: Histogram<u64>,
    /// `--deflate`: compressed payload -> its inflated message. With no context takeover a
    /// publish's compressed frame is the same bytes for every subscriber, so each distinct one
    /// is inflated once and every other delivery of it is matched byte for byte (cleared when
    /// it grows past 4,096 entries).
    pub(crate) inflate_cache: HashMap<Box<[u8]>, std::rc::Rc<[u8]>>,
    pub(crate) inflater: subsocket::ws::deflate::Inflater,
}

pub(crate) fn run(args: Args) -> Result<(), String> {
    if args.conns == 0
        || args.topics == 0
        || args.topics_per_conn == 0
        || args.topics_per_conn > args.topics
    {
        return Err("need conns > 0, topics > 0 and 0 < topics_per_conn <= topics".into());
    }
    if let Some(c) = args.core {
        core_affinity::set_for_current(core_affinity::CoreId { id: c });
    }
    raise_nofile();
    let hard_deadline = Instant::now() + Duration::from_secs_f64(args.max_seconds);
    let mut r = Run {
        poll: Poll::new().map_err(|e| e.to_string())?,
        conns: HashMap::new(),
        epoch: Instant::now(),
        totals: Totals::default(),
        hist: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds"),
        measuring: false,
        remaining: HashMap::new(),
        subs_per_topic: vec![0; args.topics],
        seed: 0x1234_5678,
        timeline: Vec::new(),
        lat_max_timeline: Vec::new(),
        ack_qos1: args.qos == 1,
        scratch: Vec::with_capacity(128),
        complete_hist: Histogram::new_with_bounds(1, 60_000_000_000, 3)
            .expect("valid histogram bounds"),
        inflate_cache: HashMap::new(),
        inflater: subsocket::ws::deflate::Inflater::no_context(),
    };
    let token = match (&args.token, &args.hs256_secret) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(s)) => Some(make_token(s)?),
        (None, None) => None,
    };
    let ws_path = ws_path(token.as_deref());
    let rss_before = args.pid.and_then(proc_rss_bytes);

    // ---- connect ----
    let sources = source_addrs(&args);
    let t0 = Instant::now();
    let mut picker = Picker::new(&args.dist, args.topics, 0x9e37_79b9_7f4a_7c15);
    let mut next = 0usize;
    let max_pending = args.connect_concurrency.max(1);
    let phase_limit = Duration::from_secs_f64(args.phase_seconds);
    let kernel_before = kernel_snapshot();
    let mut events = Events::with_capacity(4096);
    let total = args.conns;
    let mut open = 0usize;
    // Connections not open yet (O(pending) per turn, not O(connections)).
    let mut pending: Vec<usize> = Vec::with_capacity(max_pending);
    let mut last_connect_progress = Instant::now();
    while open < total {
        while next < total && pending.len() < max_pending {
            let src = sources.get(next / args.per_source).copied();
            let stream =
                connect_from(src, args.target).map_err(|e| format!("connect #{next}: {e}"))?;
            let mut c = Conn::new(stream);
            r.watch(&mut c, next).map_err(|e| e.to_string())?;
            let mut ts: Vec<u32> = Vec::with_capacity(args.topics_per_conn);
            while ts.len() < args.topics_per_conn {
                let t = picker.pick();
                if !ts.contains(&t) {
                    ts.push(t);
                } else if args.dist == "one" {
                    break;
                }
            }
            for &t in &ts {
                r.subs_per_topic[t as usize] += 1;
            }
            if args.sse {
                // Subscribed by the request: its `subscribed` event counts like the answer.
                c.is_sse = true;
                c.queue(&sse_request(&args.target, &ts, &ws_path));
                c.subscribed_pending = ts.len();
            } else {
                c.queue(&upgrade_request_with(&args.target, &ws_path, args.deflate));
            }
            c.topics = ts;
            r.conns.insert(next, c);
            pending.push(next);
            next += 1;
        }
        r.pump(&mut events, Duration::from_millis(50))?;
        pending.retain(|id| r.conns.get(id).is_some_and(|c| c.phase != Phase::Open));
        open = next - pending.len();
        if args.progress && last_connect_progress.elapsed() >= Duration::from_secs(2) {
            eprintln!(
                "  connecting: {open} of {total} open ({:.0}/s)",
                open as f64 / t0.elapsed().as_secs_f64()
            );
            last_connect_progress = Instant::now();
        }
        if r.totals.errors > 0 {
            return Err(format!(
                "{} connections refused or answered with an error while connecting (auth? see above)",
                r.totals.errors
            ));
        }
        if Instant::now() > hard_deadline || t0.elapsed() > phase_limit {
            return Err(format!("only {open} of {total} connections opened in time"));
        }
    }
    let connect_s = t0.elapsed().as_secs_f64();
    if args.deflate && r.totals.deflate_negotiated < total as u64 {
        return Err(format!(
            "--deflate: the server accepted permessage-deflate on {} of {total} subscribers",
            r.totals.deflate_negotiated
        ));
    }
    // What the connections hold, not what opening them briefly needed: let the gateway finish
    // its side of the handshakes and give back its transient buffers (its idle sweep runs once
    // a second) before reading its RSS.
    let settle = Duration::from_millis(args.settle_ms);
    r.pump_for(&mut events, settle)?;
    let rss_connected = args.pid.and_then(proc_rss_bytes);
    let kernel_connected = kernel_snapshot();

    // ---- subscribe ----
    let t1 = Instant::now();
    let want: u64 = r.conns.values().map(|c| c.topics.len() as u64).sum();
    let ids: Vec<usize> = r.conns.keys().copied().collect();
    for id in ids {
        let c = r.conns.get_mut(&id).expect("listed");
        if c.is_sse {
            continue;
        }
        let topics = c.topics.clone();
        for chunk in topics.chunks(args.subscribe_batch.max(1)) {
            let names: Vec<String> = chunk.iter().map(|t| format!("\"t{t}\"")).collect();
            let msg = format!(
                "{{\"type\":\"subscribe\",\"topics\":[{}]}}",
                names.join(",")
            );
            let mut f = Vec::new();
            masked_text(&mut f, msg.as_bytes(), &mut r.seed);
            c.queue(&f);
        }
        c.subscribed_pending = topics.len();
        let _ = c.flush();
    }
    while r.totals.subscribed_topics < want {
        r.pump(&mut events, Duration::from_millis(50))?;
        if r.totals.errors > 0 {
            return Err(format!(
                "{} errors from the gateway while subscribing (auth? see above)",
                r.totals.errors
            ));
        }
        if args.progress && last_connect_progress.elapsed() >= Duration::from_secs(2) {
            eprintln!(
                "  subscribing: {} of {want} confirmed",
                r.totals.subscribed_topics
            );
            last_connect_progress = Instant::now();
        }
        if Instant::now() > hard_deadline || t1.elapsed() > phase_limit {
            return Err(format!(
                "only {} of {want} subscriptions confirmed in time",
                r.totals.subscribed_topics
            ));
        }
    }
    let subscribe_s = t1.elapsed().as_secs_f64();
    let subs_per_s = want as f64 / subscribe_s.max(1e-9);
    // Right after the last answer the gateway still holds the burst's transient buffers (the
    // `subscribed` answers it queued): that is the peak. What the subscriptions themselves hold
    // is read after the settle.
    let rss_subscribe_peak = args.pid.and_then(proc_rss_bytes);
    r.pump_for(&mut events, settle)?;
    let rss_subscribed = args.pid.and_then(proc_rss_bytes);
    let kernel_subscribed = kernel_snapshot();
    let client_rss_subscribed = proc_rss_bytes(std::process::id());
    if args.progress {
        eprintln!("connected {total} in {connect_s:.2}s; {want} subscriptions in {subscribe_s:.3}s ({subs_per_s:.0}/s)");
    }

    // ---- publishers ----
    let via_http = args.publish_via == "http";
    let publish_target = args.publish_target.unwrap_or(args.target);
    for p in 0..args.publishers.max(1) {
        let stream =
            connect_from(None, publish_target).map_err(|e| format!("publisher connect: {e}"))?;
        let mut c = Conn::new(stream);
        c.is_http = via_http;
        let id = PUBLISHER_BASE + p;
        r.watch(&mut c, id).map_err(|e| e.to_string())?;
        if !via_http {
            c.queue(&upgrade_request(&publish_target, &ws_path));
        } else {
            c.phase = Phase::Open;
        }
        r.conns.insert(id, c);
    }
    let tp = Instant::now();
    while r
        .conns
        .iter()
        .any(|(id, c)| *id >= PUBLISHER_BASE && c.phase != Phase::Open)
    {
        r.pump(&mut events, Duration::from_millis(20))?;
        if tp.elapsed() > Duration::from_secs(10) {
            return Err("publishers did not connect".into());
        }
    }

    // ---- churn connections (--churn-ops) ----
    let churn_conns = if args.churn_ops > 0.0 {
        args.churn_conns.max(1)
    } else {
        0
    };
    for k in 0..churn_conns {
        let src = sources.get(k % sources.len()).copied();
        let stream = connect_from(src, args.target).map_err(|e| format!("churn connect: {e}"))?;
        let mut c = Conn::new(stream);
        c.churner = true;
        r.watch(&mut c, CHURN_OPS_BASE + k)
            .map_err(|e| e.to_string())?;
        c.queue(&upgrade_request(&args.target, &ws_path));
        r.conns.insert(CHURN_OPS_BASE + k, c);
    }
    let tc0 = Instant::now();
    while (0..churn_conns).any(|k| {
        r.conns
            .get(&(CHURN_OPS_BASE + k))
            .is_some_and(|c| c.phase != Phase::Open)
    }) {
        r.pump(&mut events, Duration::from_millis(20))?;
        if tc0.elapsed() > Duration::from_secs(10) {
            return Err("churn connections did not connect".into());
        }
    }
    let mut churn_picker = Picker::new("uniform", args.topics, 0xc4a2_51f3);
    let mut churn_ops_done = 0u64;
    let mut churn_conn_next = 0usize;
    let mut churn_scratch = Vec::with_capacity(128);

    // ---- publish ----
    let warmup = Duration::from_secs_f64(args.warmup);
    let measure = Duration::from_secs_f64(args.duration);
    let start = Instant::now();
    let mut pub_picker = Picker::new(
        if args.dist == "one" { "one" } else { "uniform" },
        args.topics,
        0x51ed_2701,
    );
    // Only publish to topics somebody subscribed to, so "delivered to all" is well defined.
    let live_topics: Vec<u32> = (0..args.topics as u32)
        .filter(|t| r.subs_per_topic[*t as usize] > 0)
        .collect();
    let mut counter: u64 = 0;
    let mut next_pub = 0usize;
    let mut cpu_server_start = None;
    let mut cpu_self_start = 0.0;
    let mut writes_start: Option<(u64, u64)> = None;
    let mut measure_start = start;
    let mut last_progress = Instant::now();
    let mut last_deliveries = 0u64;
    let mut churn_next = 0usize;
    let mut churn_due = 0.0f64;
    let mut last_tick = Instant::now();
    // Side probe: ping/pong round trips on a connection and thread of their own.
    let probe_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let in_flight_shared = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let probe = (args.probe_interval_ms > 0.0).then(|| {
        let stop = probe_stop.clone();
        let busy = in_flight_shared.clone();
        let target = args.target;
        let path = ws_path.clone();
        let every = Duration::from_secs_f64(args.probe_interval_ms / 1000.0);
        std::thread::spawn(move || run_probe(target, &path, every, &stop, &busy))
    });
    loop {
        in_flight_shared.store(
            r.totals.published - r.totals.completed,
            std::sync::atomic::Ordering::Relaxed,
        );
        let elapsed = start.elapsed();
        if !r.measuring && elapsed >= warmup {
            r.measuring = true;
            measure_start = Instant::now();
            cpu_server_start = args.pid.and_then(proc_cpu_seconds);
            cpu_self_start = self_cpu_seconds();
            writes_start = gateway_write_counts(args.target);
            r.totals.measured_deliveries = 0;
        }
        if elapsed >= warmup + measure || Instant::now() > hard_deadline {
            break;
        }
        // How many may we publish now?
        let allowed = if args.rate > 0.0 {
            let due = (elapsed.as_secs_f64() * args.rate) as u64;
            due.saturating_sub(r.totals.published)
        } else {
            let in_flight = r.totals.published - r.totals.completed;
            (args.window as u64).saturating_sub(in_flight)
        };
        for _ in 0..allowed.min(4096) {
            let topic = live_topics[pub_picker.pick() as usize % live_topics.len()];
            counter += 1;
            let payload = if args.payload_kind == "ticks" {
                subsocket::sample::price_ticks(now_ns(r.epoch), counter, args.payload)
            } else {
                make_payload(now_ns(r.epoch), counter, args.payload)
            };
            let pid = PUBLISHER_BASE + next_pub % args.publishers.max(1);
            next_pub += 1;
            let c = r.conns.get_mut(&pid).expect("publisher");
            if c.is_http {
                let req = format!(
                    "POST /publish/t{topic} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    payload.len()
                );
                c.queue(req.as_bytes());
                c.queue(payload.as_bytes());
            } else {
                let qos = if args.qos == 1 { ",\"qos\":1" } else { "" };
                let msg = format!(
                    "{{\"type\":\"publish\",\"topic\":\"t{topic}\"{qos},\"payload\":{payload}}}"
                );
                let mut f = Vec::with_capacity(msg.len() + 14);
                masked_text(&mut f, msg.as_bytes(), &mut r.seed);
                c.queue(&f);
            }
            c.outstanding += 1;
            r.totals.published += 1;
        }
        for p in 0..args.publishers.max(1) {
            if let Some(c) = r.conns.get_mut(&(PUBLISHER_BASE + p)) {
                c.flush().map_err(|e| format!("publisher write: {e}"))?;
            }
        }
        // Churn: arrive, subscribe, leave.
        if args.churn_rate > 0.0 {
            let dt = last_tick.elapsed().as_secs_f64();
            last_tick = Instant::now();
            churn_due += dt * args.churn_rate;
            while churn_due >= 1.0 {
                churn_due -= 1.0;
                let id = CHURN_BASE + churn_next;
                churn_next += 1;
                if let Ok(stream) = connect_from(
                    sources.get(churn_next % sources.len()).copied(),
                    args.target,
                ) {
                    let mut c = Conn::new(stream);
                    if r.watch(&mut c, id).is_ok() {
                        c.queue(&upgrade_request(&args.target, &ws_path));
                        let names: Vec<String> = (0..args.churn_topics)
                            .map(|i| format!("\"churn{}\"", (churn_next + i) % 1000))
                            .collect();
                        let msg = format!(
                            "{{\"type\":\"subscribe\",\"topics\":[{}]}}",
                            names.join(",")
                        );
                        let mut f = Vec::new();
                        masked_text(&mut f, msg.as_bytes(), &mut r.seed);
                        c.queue(&f);
                        c.churn_deadline = Some(Instant::now() + Duration::from_millis(500));
                        r.conns.insert(id, c);
                    }
                }
            }
            let expired: Vec<usize> = r
                .conns
                .iter()
                .filter(|(_, c)| c.churn_deadline.is_some_and(|d| Instant::now() > d))
                .map(|(k, _)| *k)
                .collect();
            for k in expired {
                if let Some(mut c) = r.conns.remove(&k) {
                    let _ = r.poll.registry().deregister(&mut c.stream);
                    r.totals.churned += 1;
                }
            }
        }
        // Churn operations: one topic per request, round robin over the churn connections.
        if churn_conns > 0 {
            let due = (elapsed.as_secs_f64() * args.churn_ops) as u64;
            let n = due.saturating_sub(churn_ops_done).min(10_000);
            let mut touched = Vec::new();
            for _ in 0..n {
                let id = CHURN_OPS_BASE + churn_conn_next % churn_conns;
                churn_conn_next += 1;
                let Some(c) = r.conns.get_mut(&id) else {
                    continue;
                };
                let (kind, t) = if c.held.len() >= args.churn_hold.max(1) {
                    ("unsubscribe", c.held.pop_front().expect("held"))
                } else {
                    let t = churn_picker.pick();
                    c.held.push_back(t);
                    ("subscribe", t)
                };
                churn_scratch.clear();
                write!(churn_scratch, "{{\"type\":\"{kind}\",\"topic\":\"t{t}\"}}")
                    .expect("write to a Vec");
                if c.wpos == c.wbuf.len() {
                    c.wbuf.clear();
                    c.wpos = 0;
                }
                masked_text(&mut c.wbuf, &churn_scratch, &mut r.seed);
                touched.push(id);
                churn_ops_done += 1;
                r.totals.churn_ops_sent += 1;
            }
            touched.sort_unstable();
            touched.dedup();
            for id in touched {
                if let Some(c) = r.conns.get_mut(&id) {
                    if c.flush().is_err() {
                        c.phase = Phase::Closed;
                    }
                }
            }
        }
        let wait = if args.rate > 0.0 || churn_conns > 0 {
            Duration::from_micros(200)
        } else {
            Duration::from_millis(5)
        };
        r.pump(&mut events, wait)?;
        if args.progress && last_progress.elapsed() >= Duration::from_secs(1) {
            let d = r.totals.deliveries - last_deliveries;
            eprintln!(
                "  t={:>5.1}s  {:>10} deliveries/s  published {}  in flight {}",
                elapsed.as_secs_f64(),
                d,
                r.totals.published,
                r.totals.published - r.totals.completed
            );
            last_deliveries = r.totals.deliveries;
            last_progress = Instant::now();
        }
        if r.measuring {
            let sec = measure_start.elapsed().as_secs() as usize;
            if r.timeline.len() <= sec {
                r.timeline.resize(sec + 1, 0);
                r.lat_max_timeline.resize(sec + 1, 0);
            }
        }
    }
    let measured_s = measure_start.elapsed().as_secs_f64();
    probe_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let probe = probe.map(|h| h.join().unwrap_or_default());
    let cpu_server = match (cpu_server_start, args.pid.and_then(proc_cpu_seconds)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let cpu_self = self_cpu_seconds() - cpu_self_start;
    let measured_deliveries = r.totals.measured_deliveries;
    // Frames per write over the measured window, from the gateway's own counters (subsocket
    // only: a peer without /stats gives none).
    let deliveries_per_write = match (writes_start, gateway_write_counts(args.target)) {
        (Some((d0, w0)), Some((d1, w1))) if w1 > w0 => Some((d1 - d0) as f64 / (w1 - w0) as f64),
        _ => None,
    };
    // ---- drain: wait for what is in flight ----
    let td = Instant::now();
    while r.totals.completed < r.totals.published && td.elapsed() < Duration::from_secs(3) {
        r.pump(&mut events, Duration::from_millis(20))?;
    }
    // A message is lost when some subscriber of its topic never got it (after the drain).
    let unfinished = r.totals.published - r.totals.completed;
    let lost = unfinished;
    let missing_deliveries: u64 = r.remaining.values().sum();
    let rss_end = args.pid.and_then(proc_rss_bytes);
    let kernel_end = kernel_snapshot();
    // The gateway's QoS 1 books while the connections are still open: with QoS 1 keep pumping
    // (the last acks go out) until nothing is unacknowledged, at most 2 s.
    let mut stats_end = serde_json::Value::Null;
    let ts = Instant::now();
    loop {
        if let Some(v) = http_get_json(args.target, "/stats") {
            stats_end = serde_json::json!({"connections": v["connections"], "qos1Acks": v["qos1Acks"],
                "qos1Redeliveries": v["qos1Redeliveries"], "qos1Unacked": v["qos1Unacked"]});
        }
        let settled = stats_end["qos1Unacked"].as_u64().unwrap_or(0) == 0;
        if args.qos == 0 || settled || ts.elapsed() > Duration::from_secs(2) {
            break;
        }
        r.pump(&mut events, Duration::from_millis(50))?;
    }
    // Close everything and see whether the gateway returns to its baseline (churn: nothing leaks).
    for (_, mut c) in r.conns.drain() {
        let _ = r.poll.registry().deregister(&mut c.stream);
    }
    let mut after_close = serde_json::Value::Null;
    let tc = Instant::now();
    while tc.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(250));
        if let Some(v) = http_get_json(args.target, "/stats") {
            let done = v["connections"] == 0 && v["subscriptions"] == 0;
            after_close = serde_json::json!({"connections": v["connections"], "subscriptions": v["subscriptions"], "topics": v["topics"]});
            if done {
                break;
            }
        }
    }
    let rss_after_close = args.pid.and_then(proc_rss_bytes);

    let dps = measured_deliveries as f64 / measured_s.max(1e-9);
    let ns_per_delivery = cpu_server.map(|c| c * 1e9 / measured_deliveries.max(1) as f64);
    let server_util = cpu_server.map(|c| c / measured_s);
    let client_util = cpu_self / measured_s;
    let bottleneck = match server_util {
        Some(s) if s >= 0.9 => "server",
        _ if client_util >= 0.9 => "load generator",
        Some(_) if args.rate > 0.0 => "neither (open loop at a fixed rate)",
        Some(_) => "neither saturated (closed-loop window / loopback latency bound)",
        None => "unknown (no --pid)",
    };
    let subs = want;
    // Per connection: what opening the connections added (idle, unsubscribed connections).
    // Per subscription: what subscribing then added, over the number of subscriptions.
    let rss_per_conn = match (rss_before, rss_connected) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / args.conns as f64),
        _ => None,
    };
    let rss_per_sub = match (rss_connected, rss_subscribed) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / subs as f64),
        _ => None,
    };
    let rss_per_sub_peak = match (rss_connected, rss_subscribe_peak) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / subs as f64),
        _ => None,
    };
    let q = |p: f64| r.hist.value_at_quantile(p) as f64 / 1000.0;
    // [latency µs, quantile] pairs for a CDF plot: 0.0..=0.975 in steps of 0.025, then the tail.
    let latency_cdf_us: Vec<[f64; 2]> = if r.hist.is_empty() {
        Vec::new()
    } else {
        (0..40)
            .map(|i| f64::from(i) / 40.0)
            .chain([0.99, 0.995, 0.999, 0.9999, 1.0])
            .map(|p| [q(p), p])
            .collect()
    };
    let result = serde_json::json!({
        "scenario": args.scenario, "server": args.server, "target": args.target.to_string(),
        "publish_target": publish_target.to_string(), "conns": args.conns, "topics": args.topics,
        "topics_per_conn": args.topics_per_conn, "subscriptions": subs, "payload_bytes": args.payload,
        "publishers": args.publishers, "publish_via": args.publish_via, "rate": args.rate, "window": args.window,
        "connect_s": connect_s, "subscribe_s": subscribe_s, "subscriptions_per_s": subs_per_s,
        "measured_s": measured_s, "published": r.totals.published, "acked": r.totals.acked,
        "deliveries": measured_deliveries, "deliveries_per_s": dps,
        "lost": lost, "missing_deliveries": missing_deliveries, "gaps": r.totals.gaps, "reordered": r.totals.reordered,
        "errors": r.totals.errors, "closed_unexpectedly": r.totals.closed_unexpectedly, "churned": r.totals.churned,
        "latency_us": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": r.hist.max() as f64 / 1000.0, "count": r.hist.len()},
        "server_cpu_s": cpu_server, "server_cpu_ns_per_delivery": ns_per_delivery, "server_cpu_util": server_util,
        "deliveries_per_write": deliveries_per_write,
        "client_cpu_s": cpu_self, "client_cpu_util": client_util, "bottleneck": bottleneck,
        "server_rss_before": rss_before, "server_rss_connected": rss_connected, "server_rss_subscribed": rss_subscribed, "server_rss_subscribe_peak": rss_subscribe_peak, "server_rss_end": rss_end,
        "server_rss_after_close": rss_after_close, "stats_after_close": after_close,
        "rss_per_conn_bytes": rss_per_conn, "rss_per_subscription_bytes": rss_per_sub, "rss_per_subscription_peak_bytes": rss_per_sub_peak, "settle_ms": args.settle_ms,
        "deliveries_per_s_timeline": r.timeline, "latency_cdf_us": latency_cdf_us,
        "auth": token.is_some(), "qos": args.qos, "acks_sent": r.totals.acks_sent,
        "redelivered": r.totals.redelivered, "stats_end": stats_end,
        "publish_to_last_delivery_us": hist_json(&r.complete_hist),
        "churn_ops": args.churn_ops, "churn_ops_sent": r.totals.churn_ops_sent,
        "churn_ops_answered": r.totals.churn_ops_answered,
        "probe": probe.as_ref().map(|p| serde_json::json!({
            "interval_ms": args.probe_interval_ms, "sent": p.sent, "error": p.error,
            "rtt_busy_us": hist_json(&p.busy), "rtt_idle_us": hist_json(&p.idle),
        })),
        "kernel": {"before": kernel_before, "connected": kernel_connected,
            "subscribed": kernel_subscribed, "end": kernel_end},
        "client_rss_subscribed": client_rss_subscribed,
        "latency_max_us_timeline": r.lat_max_timeline,
        "payload_kind": args.payload_kind, "deflate": args.deflate, "sse": args.sse,
        "deflate_negotiated": r.totals.deflate_negotiated,
        "compressed_deliveries": r.totals.compressed_deliveries, "inflated_anew": r.totals.inflated,
        "wire_bytes_per_delivery": (measured_deliveries > 0)
            .then(|| r.totals.measured_wire_bytes as f64 / measured_deliveries as f64),
    });
    let line = result.to_string();
    println!("{line}");
    if let Some(path) = &args.json {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| e.to_string())?;
        writeln!(f, "{line}").map_err(|e| e.to_string())?;
    }
    eprintln!(
        "{} {}: {:.0} deliveries/s, server {} ns/delivery (util {}), {} deliveries/write, client util {:.2}, p50 {:.0}us p99 {:.0}us max {:.0}us, lost {} gaps {} reordered {} [bottleneck: {}]",
        args.server, args.scenario, dps,
        ns_per_delivery.map_or("?".into(), |v| format!("{v:.0}")),
        server_util.map_or("?".into(), |v| format!("{v:.2}")),
        deliveries_per_write.map_or("?".into(), |v| format!("{v:.1}")),
        client_util, q(0.5), q(0.99), r.hist.max() as f64 / 1000.0, lost, r.totals.gaps, r.totals.reordered, bottleneck
    );
    if !r.complete_hist.is_empty() {
        let c = &r.complete_hist;
        eprintln!(
            "  publish to last delivery: p50 {:.0}us p99 {:.0}us max {:.0}us ({} messages)",
            c.value_at_quantile(0.5) as f64 / 1000.0,
            c.value_at_quantile(0.99) as f64 / 1000.0,
            c.max() as f64 / 1000.0,
            c.len()
        );
    }
    if churn_conns > 0 {
        eprintln!(
            "  churn: {} subscribe/unsubscribe ops sent, {} answered",
            r.totals.churn_ops_sent, r.totals.churn_ops_answered
        );
    }
    if let Some(p) = &probe {
        let f = |h: &Histogram<u64>| {
            format!(
                "{} samples p50 {:.0}us p99 {:.0}us max {:.0}us",
                h.len(),
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0,
                h.max() as f64 / 1000.0
            )
        };
        eprintln!(
            "  probe ping/pong: during fan-out {}; idle {}{}",
            f(&p.busy),
            f(&p.idle),
            p.error
                .as_ref()
                .map_or(String::new(), |e| format!(" (error: {e})"))
        );
    }
    if args.qos == 1 {
        eprintln!(
            "  qos 1: acks sent {}, redelivered {}; gateway: qos1Acks {}, qos1Redeliveries {}, qos1Unacked {}",
            r.totals.acks_sent,
            r.totals.redelivered,
            stats_end["qos1Acks"],
            stats_end["qos1Redeliveries"],
            stats_end["qos1Unacked"]
        );
    }
    if lost > 0 || r.totals.gaps > 0 || r.totals.reordered > 0 {
        return Err(format!(
            "delivery problems: lost {lost}, gaps {}, reordered {}",
            r.totals.gaps, r.totals.reordered
        ));
    }
    if args.qos == 1 && r.totals.acks_sent == 0 && r.totals.deliveries > 0 {
        return Err("qos 1: no delivery carried \"qos\":1, nothing was acked".into());
    }
    Ok(())
}

/// The gateway's `deliveries` and `writes` counters (`/stats`), when it has them.
fn gateway_write_counts(target: std::net::SocketAddr) -> Option<(u64, u64)> {
    let v = http_get_json(target, "/stats")?;
    Some((v["deliveries"].as_u64()?, v["writes"].as_u64()?))
}

/// p50/p90/p99/p99.9/max in µs and the sample count of a ns histogram.
pub(crate) fn hist_json(h: &Histogram<u64>) -> serde_json::Value {
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    serde_json::json!({"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
        "max": h.max() as f64 / 1000.0, "count": h.len()})
}

pub(crate) fn make_payload(ts: u64, counter: u64, size: usize) -> String {
    let mut s = format!("{{\"ts\":{ts},\"c\":{counter},\"p\":\"");
    let pad = size.saturating_sub(s.len() + 2);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}
