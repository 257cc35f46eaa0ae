//! One turn of the epoll loop: read what each ready connection has, parse the server frames in
//! place (no allocation per delivery), and book every delivery: sequence gaps and reordering per
//! topic, end-to-end latency from the timestamp in the payload, completion of a message once its
//! last subscriber has it, QoS 1 acks, answers to publishers and churners.

use crate::conn::{Conn, Phase};
use crate::run::{now_ns, Run, Totals};
use crate::{CHURN_OPS_BASE, PUBLISHER_BASE};
use hdrhistogram::Histogram;
use mio::{Events, Interest, Token};
use std::collections::HashMap;
use std::io;
use std::time::Duration;
use subsocket::ws::frame;
use subsocket::ws::frame::OpCode;

/// Finds `key` (e.g. `"seqNo":`) in `hay` and parses the unsigned integer after it.
pub(crate) fn find_u64(hay: &[u8], key: &[u8]) -> Option<(u64, usize)> {
    let at = memchr::memmem::find(hay, key)? + key.len();
    let mut v: u64 = 0;
    let mut i = at;
    while i < hay.len() && hay[i].is_ascii_digit() {
        v = v * 10 + u64::from(hay[i] - b'0');
        i += 1;
    }
    (i > at).then_some((v, i))
}

pub(crate) fn find_str<'a>(hay: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let at = memchr::memmem::find(hay, key)? + key.len();
    let end = memchr::memchr(b'"', &hay[at..])? + at;
    Some(&hay[at..end])
}

pub(crate) fn topic_index(name: &[u8]) -> Option<u32> {
    std::str::from_utf8(name.strip_prefix(b"t")?)
        .ok()?
        .parse()
        .ok()
}

/// One complete server frame at the start of `b`: (opcode, header length, payload length).
pub(crate) fn next_frame(b: &[u8]) -> Option<(u8, usize, usize)> {
    if b.len() < 2 {
        return None;
    }
    let (len, hl) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
        127 if b.len() >= 10 => (
            u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")) as usize,
            10,
        ),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    (b.len() >= hl + len).then_some((b[0] & 0x0f, hl, len))
}

impl Run {
    /// Registers connection `id` with the poller, for reads and writes.
    pub(crate) fn watch(&self, c: &mut Conn, id: usize) -> io::Result<()> {
        self.poll.registry().register(
            &mut c.stream,
            Token(id),
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    /// Keeps reading (and answering) for `how_long`.
    pub(crate) fn pump_for(
        &mut self,
        events: &mut Events,
        how_long: Duration,
    ) -> Result<(), String> {
        let until = std::time::Instant::now() + how_long;
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            self.pump(events, left.min(Duration::from_millis(50)))?;
        }
    }

    /// One epoll wait and the work it brings.
    pub(crate) fn pump(&mut self, events: &mut Events, timeout: Duration) -> Result<(), String> {
        self.poll
            .poll(events, Some(timeout))
            .map_err(|e| e.to_string())?;
        let tokens: Vec<(usize, bool, bool)> = events
            .iter()
            .map(|e| {
                (
                    e.token().0,
                    e.is_readable() || e.is_read_closed() || e.is_error(),
                    e.is_writable(),
                )
            })
            .collect();
        for (id, readable, writable) in tokens {
            if writable {
                if let Some(c) = self.conns.get_mut(&id) {
                    if c.phase == Phase::Connecting {
                        c.phase = if c.is_http {
                            Phase::Open
                        } else {
                            Phase::Handshake
                        };
                    }
                    if c.flush().is_err() {
                        c.phase = Phase::Closed;
                    }
                }
            }
            if readable {
                self.read_conn(id)?;
            }
        }
        Ok(())
    }

    pub(crate) fn read_conn(&mut self, id: usize) -> Result<(), String> {
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return Ok(());
            };
            // Read straight into the connection's buffer: no per-read zeroing of a big array.
            // Small until a read fills it (idle connections by the 100,000: 4 KB each), then
            // 64 KB for connections that get bursts.
            let old = c.rbuf.len();
            if c.rbuf.capacity() - old < 1024 {
                c.rbuf.reserve(4096);
            } else if c.rbuf_hot && c.rbuf.capacity() - old < 16 * 1024 {
                c.rbuf.reserve(64 * 1024);
            }
            let spare = c.rbuf.capacity() - old;
            // SAFETY: `read(2)` writes at most `spare` bytes into the vector's spare capacity,
            // and `set_len` below only exposes the bytes it reports as written.
            let n = unsafe {
                libc::read(
                    std::os::fd::AsRawFd::as_raw_fd(&c.stream),
                    c.rbuf.as_mut_ptr().add(old).cast(),
                    spare,
                )
            };
            match n {
                0 => {
                    if c.churn_deadline.is_none() && c.phase != Phase::Closed {
                        self.totals.closed_unexpectedly += 1;
                    }
                    c.phase = Phase::Closed;
                    let _ = self.poll.registry().deregister(&mut c.stream);
                    return Ok(());
                }
                n if n > 0 => {
                    // SAFETY: the kernel initialized `n` bytes after `old`.
                    unsafe { c.rbuf.set_len(old + n as usize) };
                    if self.measuring && id < CHURN_OPS_BASE {
                        self.totals.measured_wire_bytes += n as u64;
                    }
                    let full = n as usize == spare;
                    if full {
                        c.rbuf_hot = true;
                    }
                    self.process(id);
                    if !full {
                        return Ok(());
                    }
                }
                _ => {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::WouldBlock => return Ok(()),
                        io::ErrorKind::Interrupted => {}
                        _ => {
                            c.phase = Phase::Closed;
                            self.totals.closed_unexpectedly += 1;
                            let _ = self.poll.registry().deregister(&mut c.stream);
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    pub(crate) fn process(&mut self, id: usize) {
        let now = now_ns(self.epoch);
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let mut pos = 0;
        if c.is_http {
            // Responses: count complete ones (status line .. body by Content-Length).
            loop {
                let rest = &c.rbuf[pos..];
                let Some(head_end) = memchr::memmem::find(rest, b"\r\n\r\n") else {
                    break;
                };
                let len =
                    find_u64(&rest[..head_end], b"Content-Length: ").map_or(0, |v| v.0) as usize;
                if rest.len() < head_end + 4 + len {
                    break;
                }
                if !rest.starts_with(b"HTTP/1.1 200") {
                    self.totals.errors += 1;
                }
                self.totals.acked += 1;
                c.outstanding = c.outstanding.saturating_sub(1);
                pos += head_end + 4 + len;
            }
            c.rbuf.drain(..pos);
            return;
        }
        if c.phase == Phase::Handshake || c.phase == Phase::Connecting {
            let Some(end) = memchr::memmem::find(&c.rbuf, b"\r\n\r\n") else {
                return;
            };
            let ok: &[u8] = if c.is_sse {
                b"HTTP/1.1 200"
            } else {
                b"HTTP/1.1 101"
            };
            if !c.rbuf.starts_with(ok) {
                c.phase = Phase::Closed;
                self.totals.errors += 1;
                return;
            }
            // Header names are case-insensitive; the gateway and Bun both spell it this way,
            // and a peer that does not is counted as declining (the run then stops).
            let head = &c.rbuf[..end];
            if memchr::memmem::find(head, b"\r\nSec-WebSocket-Extensions: permessage-deflate")
                .or_else(|| {
                    memchr::memmem::find(head, b"\r\nsec-websocket-extensions: permessage-deflate")
                })
                .is_some()
            {
                self.totals.deflate_negotiated += 1;
            }
            c.phase = Phase::Open;
            pos = end + 4;
        }
        let rbuf = std::mem::take(&mut c.rbuf);
        while c.is_sse {
            // Events: each ends at its blank line; a delivery's JSON is its first `data:` line.
            let b = &rbuf[pos..];
            let Some(len) = subsocket::sse::event_len(b) else {
                break;
            };
            let json = subsocket::sse::event_json(&b[..len]);
            if !json.is_empty() {
                on_text(
                    json,
                    now,
                    c,
                    &mut self.totals,
                    &mut self.hist,
                    &mut self.complete_hist,
                    &mut self.remaining,
                    &self.subs_per_topic,
                    self.measuring,
                    &mut self.timeline,
                    &mut self.lat_max_timeline,
                    false,
                    None,
                );
            }
            pos += len;
        }
        loop {
            if c.is_sse {
                break;
            }
            let b = &rbuf[pos..];
            if b.len() < 2 {
                break;
            }
            let op = b[0] & 0x0f;
            let (len, hl) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => (
                    u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")) as usize,
                    10,
                ),
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if b.len() < hl + len {
                break;
            }
            let mut payload = &b[hl..hl + len];
            let inflated;
            if op == 1 && b[0] & frame::RSV1 != 0 {
                // Compressed (permessage-deflate, no context): the cache holds every distinct
                // frame body seen lately; a miss is inflated and kept.
                self.totals.compressed_deliveries += 1;
                inflated = match self.inflate_cache.get(payload) {
                    Some(m) => m.clone(),
                    None => match self.inflater.inflate(payload, 64 << 20) {
                        Ok(m) => {
                            self.totals.inflated += 1;
                            if self.inflate_cache.len() >= 4096 {
                                self.inflate_cache.clear();
                            }
                            let m: std::rc::Rc<[u8]> = m.into();
                            self.inflate_cache.insert(payload.into(), m.clone());
                            m
                        }
                        Err(e) => {
                            self.totals.errors += 1;
                            eprintln!("bad compressed frame from the server: {e:?}");
                            c.phase = Phase::Closed;
                            break;
                        }
                    },
                };
                payload = &inflated;
            }
            if op == 1 {
                on_text(
                    payload,
                    now,
                    c,
                    &mut self.totals,
                    &mut self.hist,
                    &mut self.complete_hist,
                    &mut self.remaining,
                    &self.subs_per_topic,
                    self.measuring,
                    &mut self.timeline,
                    &mut self.lat_max_timeline,
                    id >= PUBLISHER_BASE,
                    self.ack_qos1.then_some((&mut self.scratch, &mut self.seed)),
                );
            } else if op == 9 {
                let mut f = Vec::new();
                frame::write_client_frame(&mut f, OpCode::Pong, payload, [1, 2, 3, 4], true);
                c.queue(&f);
                let _ = c.flush();
            } else if op == 8 {
                c.phase = Phase::Closed;
                if c.churn_deadline.is_none() {
                    self.totals.closed_unexpectedly += 1;
                }
            }
            pos += hl + len;
        }
        c.rbuf = rbuf;
        c.rbuf.drain(..pos);
        // QoS 1: the acks of everything this read brought, in one write.
        if c.wpos < c.wbuf.len() && c.phase == Phase::Open && c.flush().is_err() {
            c.phase = Phase::Closed;
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn on_text(
    p: &[u8],
    now: u64,
    c: &mut Conn,
    totals: &mut Totals,
    hist: &mut Histogram<u64>,
    complete_hist: &mut Histogram<u64>,
    remaining: &mut HashMap<(u32, u64), u64>,
    subs_per_topic: &[u64],
    measuring: bool,
    timeline: &mut [u64],
    lat_max_timeline: &mut [u64],
    is_publisher: bool,
    ack_qos1: Option<(&mut Vec<u8>, &mut u32)>,
) {
    if p.starts_with(b"{\"type\":\"message\"") {
        let Some(name) = find_str(p, b"\"topic\":\"") else {
            totals.errors += 1;
            return;
        };
        let Some(topic) = topic_index(name) else {
            totals.errors += 1;
            return;
        };
        let Some((seq, after)) = find_u64(p, b"\"seqNo\":") else {
            totals.errors += 1;
            return;
        };
        if is_publisher || c.churn_deadline.is_some() || c.churner {
            return;
        }
        if let Some((scratch, seed)) = ack_qos1 {
            // `"qos":1` sits between `messageId` and `data`: look only there.
            let head = &p[after..];
            let head = &head[..memchr::memmem::find(head, b"\"data\":").unwrap_or(head.len())];
            if memchr::memmem::find(head, b"\"qos\":1").is_some() {
                c.queue_ack(name, seq, scratch, seed);
                totals.acks_sent += 1;
                // A seqNo this connection already has: the gateway resent it (our ack was
                // late or lost), not a reordering. Acked again, counted apart.
                if c.last_seq.get(&topic).is_some_and(|&last| seq <= last) {
                    totals.redelivered += 1;
                    return;
                }
            }
        }
        totals.deliveries += 1;
        if measuring {
            totals.measured_deliveries += 1;
            if let Some(last) = timeline.last_mut() {
                *last += 1;
            }
        }
        match c.last_seq.insert(topic, seq) {
            Some(last) if seq == last + 1 => {}
            Some(last) if seq > last + 1 => totals.gaps += seq - last - 1,
            Some(_) => totals.reordered += 1,
            None => {}
        }
        let ts = find_u64(&p[after..], b"\"ts\":").map(|(ts, _)| ts);
        if let Some(ts) = ts {
            let lat = now.saturating_sub(ts).max(1);
            let _ = hist.record(lat);
            if let Some(m) = lat_max_timeline.last_mut().filter(|_| measuring) {
                *m = (*m).max(lat / 1000);
            }
        }
        let expected = subs_per_topic.get(topic as usize).copied().unwrap_or(0);
        let e = remaining.entry((topic, seq)).or_insert(expected);
        *e = e.saturating_sub(1);
        if *e == 0 {
            remaining.remove(&(topic, seq));
            totals.completed += 1;
            if let Some(ts) = ts {
                let _ = complete_hist.record(now.saturating_sub(ts).max(1));
            }
        }
    } else if p.starts_with(b"{\"type\":\"ack\"") {
        totals.acked += 1;
        c.outstanding = c.outstanding.saturating_sub(1);
    } else if c.churner
        && (p.starts_with(b"{\"type\":\"subscribed\"")
            || p.starts_with(b"{\"type\":\"unsubscribed\""))
    {
        totals.churn_ops_answered += 1;
    } else if p.starts_with(b"{\"type\":\"subscribed\"") {
        let n = memchr::memchr_iter(b',', p).count();
        let k = if memchr::memmem::find(p, b"\"topics\"").is_some() {
            n
        } else {
            1
        };
        totals.subscribed_topics += k as u64;
        c.subscribed_pending = c.subscribed_pending.saturating_sub(k);
    } else if p.starts_with(b"{\"type\":\"error\"") {
        totals.errors += 1;
        if totals.errors <= 5 {
            eprintln!("error from server: {}", String::from_utf8_lossy(p));
        }
    }
}
