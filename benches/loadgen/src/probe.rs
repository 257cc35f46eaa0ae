//! The side probe (`--probe-interval-ms`): `{"type":"ping"}` round trips on a blocking
//! connection and a thread of its own, split into rounds that overlapped a delivery (busy) and
//! rounds that did not (idle).

use crate::conn::{masked_text, upgrade_request};
use crate::pump::next_frame;
use hdrhistogram::Histogram;
use std::io;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use subsocket::ws::frame;
use subsocket::ws::frame::OpCode;

/// Round trips of the side probe (`--probe-interval-ms`).
pub(crate) struct ProbeResult {
    pub(crate) busy: Histogram<u64>,
    pub(crate) idle: Histogram<u64>,
    pub(crate) sent: u64,
    pub(crate) error: Option<String>,
}

impl Default for ProbeResult {
    fn default() -> Self {
        let h = || Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds");
        ProbeResult {
            busy: h(),
            idle: h(),
            sent: 0,
            error: None,
        }
    }
}

/// The side probe: `{"type":"ping"}` every `every` on a blocking connection of its own until
/// `stop`; each round trip goes to the busy histogram when some publish was being delivered
/// when it was sent or answered, else to the idle one. Bounded: a read waits at most 10 s.
pub(crate) fn run_probe(
    target: SocketAddr,
    path: &str,
    every: Duration,
    stop: &std::sync::atomic::AtomicBool,
    in_flight: &std::sync::atomic::AtomicU64,
) -> ProbeResult {
    use std::io::Read as _;
    use std::sync::atomic::Ordering::Relaxed;
    let mut res = ProbeResult::default();
    let outcome = (|| -> io::Result<()> {
        let mut s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(&upgrade_request(&target, path))?;
        let mut buf: Vec<u8> = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(e) = memchr::memmem::find(&buf, b"\r\n\r\n") {
                break e + 4;
            }
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        if !buf.starts_with(b"HTTP/1.1 101") {
            return Err(io::Error::other("probe upgrade refused"));
        }
        buf.drain(..head_end);
        let mut seed = 0x0bad_cafe_u32;
        let mut ping = Vec::new();
        masked_text(&mut ping, br#"{"type":"ping"}"#, &mut seed);
        while !stop.load(Relaxed) {
            let busy_before = in_flight.load(Relaxed) > 0;
            let t = Instant::now();
            s.write_all(&ping)?;
            res.sent += 1;
            'answer: loop {
                while let Some((op, hl, len)) = next_frame(&buf) {
                    let payload = buf[hl..hl + len].to_vec();
                    buf.drain(..hl + len);
                    if op == 9 {
                        let mut f = Vec::new();
                        frame::write_client_frame(
                            &mut f,
                            OpCode::Pong,
                            &payload,
                            [1, 2, 3, 4],
                            true,
                        );
                        s.write_all(&f)?;
                    } else if op == 1 && memchr::memmem::find(&payload, b"\"pong\"").is_some() {
                        break 'answer;
                    } else if op == 8 {
                        return Err(io::Error::other("probe connection closed by the gateway"));
                    }
                }
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let rtt = t.elapsed();
            let busy = busy_before || in_flight.load(Relaxed) > 0;
            let h = if busy { &mut res.busy } else { &mut res.idle };
            let _ = h.record((rtt.as_nanos() as u64).max(1));
            std::thread::sleep(every.saturating_sub(rtt));
        }
        Ok(())
    })();
    if let Err(e) = outcome {
        res.error = Some(e.to_string());
    }
    res
}
