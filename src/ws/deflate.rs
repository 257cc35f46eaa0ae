//! permessage-deflate (RFC 7692): the negotiation on the upgrade, compressing a message into a
//! finished frame, and inflating what a client sent compressed, within a size limit.
//!
//! What lives here: [`DeflateConfig`] (the `[deflate]` table), [`negotiate`] (the client's
//! `Sec-WebSocket-Extensions` offers -> the parameters we answer with, [`Negotiated`]),
//! [`compress_frame`] (one message -> one frame with RSV1 set), [`Inflater`] (one connection's
//! inbound side, with or without context takeover) and [`inflate_prefix`] (the first bytes of
//! one of our own compressed frames, for the slow-consumer ladder).
//!
//! What may not: sockets, glommio, anything async or shared between threads. The zlib states
//! are per thread (one per core, `thread_local!`), so no lock is ever taken and no connection
//! holds a compressor: the gateway always answers `server_no_context_takeover`, which makes
//! one compressed frame valid for every subscriber that negotiated the extension — it is built
//! once per publish, like the plain frame.
//!
//! Memory: a connection that only receives compressed deliveries holds nothing here. One that
//! sends compressed messages with context takeover (browsers do: they never offer
//! `client_no_context_takeover`) keeps the last bytes it sent, inflated, up to its window
//! (2^`client_max_window_bits`, 32 KiB at most), in its [`Inflater`]; the shared per-core
//! inflater is primed with them (`inflateSetDictionary`) for each message. So the cost grows
//! with what the client actually sent, not with zlib's ~40 KiB per stream.
//!
//! Backend: flate2 on zlib-rs, chosen by `benches/deflate.rs`-style measurements recorded in
//! docs/performance.md: it does sync flushes (the form RFC 7692 section 7.2.1 describes and
//! every client expects) and window sizes; libdeflate compresses faster but only ends a
//! stream with a final block, which some clients mishandle.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use serde::Deserialize;
use std::cell::RefCell;

use super::frame::{OpCode, MAX_SERVER_HEADER_BYTES};

/// The extension's token in `Sec-WebSocket-Extensions`.
pub const EXTENSION: &str = "permessage-deflate";

/// The four bytes a sync flush ends with; the sender removes them, the receiver adds them back
/// (RFC 7692 section 7.2.1 and 7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The largest LZ77 window DEFLATE has: 2^15 bytes.
pub const MAX_WINDOW_BITS: u8 = 15;

/// `[deflate]`: permessage-deflate on the gateway's WebSocket endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeflateConfig {
    /// Accept the extension when a client offers it (`false`: never negotiated).
    pub enabled: bool,
    /// zlib level 1 (fastest) to 9 (smallest). Paid once per publish, not per subscriber.
    pub level: u32,
    /// Deliveries whose message is smaller than this go out uncompressed to everyone (a few
    /// dozen bytes do not shrink, and a client inflates nothing).
    pub min_bytes: usize,
    /// Let clients compress with context takeover when they ask for it (browsers do). `false`
    /// answers `client_no_context_takeover`: no per-connection state for inbound messages, at
    /// some cost in the client's compression ratio.
    pub client_context_takeover: bool,
    /// The largest window (8-15) a client may compress with, when it offers
    /// `client_max_window_bits`: bounds what a connection that compresses with context
    /// takeover keeps (2^bits bytes).
    pub client_max_window_bits: u8,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            enabled: true,
            level: 3,
            min_bytes: 256,
            client_context_takeover: true,
            client_max_window_bits: MAX_WINDOW_BITS,
        }
    }
}

impl DeflateConfig {
    /// Checks the values (called from `Config::validate`).
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=9).contains(&self.level) {
            return Err(format!("deflate.level must be 1-9 (got {})", self.level));
        }
        if !(8..=MAX_WINDOW_BITS).contains(&self.client_max_window_bits) {
            return Err(format!(
                "deflate.client_max_window_bits must be 8-15 (got {})",
                self.client_max_window_bits
            ));
        }
        Ok(())
    }
}

/// What the upgrade agreed on for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The client asked (or we answered) `client_no_context_takeover`: each inbound message
    /// inflates on its own.
    pub client_no_context_takeover: bool,
    /// The window the client may compress with (what an inbound context takeover keeps).
    pub client_window_bits: u8,
    /// The window our frames to this client may use: 15 unless it offered
    /// `server_max_window_bits`. A compressed delivery is only sent to it when the message
    /// fits that window (a back-reference never reaches further back than the message start).
    pub server_window_bits: u8,
    /// Echo `server_max_window_bits` in the answer (the client offered it).
    answer_server_bits: bool,
    /// Answer `client_max_window_bits` with `client_window_bits` (the client offered it).
    answer_client_bits: bool,
}

impl Negotiated {
    /// The `Sec-WebSocket-Extensions` value of the 101 answer.
    pub fn response_value(&self) -> String {
        let mut s = String::from("permessage-deflate; server_no_context_takeover");
        if self.client_no_context_takeover {
            s.push_str("; client_no_context_takeover");
        }
        if self.answer_server_bits {
            s.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_window_bits
            ));
        }
        if self.answer_client_bits {
            s.push_str(&format!(
                "; client_max_window_bits={}",
                self.client_window_bits
            ));
        }
        s
    }

    /// Whether a compressed message of `len` bytes (before compression) is valid for this
    /// connection: always with a full window, otherwise when it fits the window.
    #[inline]
    pub fn takes_compressed(window_bits: u8, len: usize) -> bool {
        window_bits >= MAX_WINDOW_BITS || len <= 1usize << window_bits
    }
}

/// Picks the first acceptable `permessage-deflate` offer from the client's
/// `Sec-WebSocket-Extensions` value(s) (several headers joined with `,`), as RFC 7692 section
/// 5 says: an offer with an unknown or repeated parameter or an invalid value is declined and
/// the next one is tried. `None`: no offer is acceptable (or the extension is off); the
/// connection goes on uncompressed.
pub fn negotiate(header: &str, cfg: &DeflateConfig) -> Option<Negotiated> {
    if !cfg.enabled {
        return None;
    }
    for offer in split_outside_quotes(header, ',') {
        let mut parts = split_outside_quotes(offer, ';').into_iter();
        if !parts
            .next()
            .is_some_and(|name| name.trim().eq_ignore_ascii_case(EXTENSION))
        {
            continue;
        }
        if let Some(n) = accept_offer(parts, cfg) {
            return Some(n);
        }
    }
    None
}

/// The parameters of one offer, or `None` to decline it.
fn accept_offer<'a>(
    params: impl Iterator<Item = &'a str>,
    cfg: &DeflateConfig,
) -> Option<Negotiated> {
    let (mut server_nct, mut client_nct) = (false, false);
    let mut server_bits: Option<u8> = None;
    let mut client_bits: Option<Option<u8>> = None;
    for p in params {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (p.trim(), None),
        };
        match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if !server_nct && value.is_none() => server_nct = true,
            "client_no_context_takeover" if !client_nct && value.is_none() => client_nct = true,
            "server_max_window_bits" if server_bits.is_none() => {
                server_bits = Some(window_bits(value?)?);
            }
            "client_max_window_bits" if client_bits.is_none() => {
                client_bits = Some(match value {
                    Some(v) => Some(window_bits(v)?),
                    None => None,
                });
            }
            _ => return None,
        }
    }
    let client_no_context_takeover = client_nct || !cfg.client_context_takeover;
    let (client_window_bits, answer_client_bits) = match client_bits {
        // Offered: we may ask for a smaller window (never above what it offered).
        Some(offered) => {
            let bits = offered
                .unwrap_or(MAX_WINDOW_BITS)
                .min(cfg.client_max_window_bits);
            (bits, bits < MAX_WINDOW_BITS || offered.is_some())
        }
        None => (MAX_WINDOW_BITS, false),
    };
    Some(Negotiated {
        client_no_context_takeover,
        client_window_bits,
        server_window_bits: server_bits.unwrap_or(MAX_WINDOW_BITS),
        answer_server_bits: server_bits.is_some(),
        answer_client_bits,
    })
}

/// A window size parameter: a decimal 8-15 without leading zeros (RFC 7692 section 7.1.2).
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.len() > 2 || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u8 = v.parse().ok()?;
    (8..=MAX_WINDOW_BITS).contains(&n).then_some(n)
}

/// A parameter value: a token, or a quoted string (RFC 7692 section 7.1: its content must
/// still be a token after unquoting). `None` for an unterminated quote or an escape.
fn unquote(v: &str) -> Option<&str> {
    match v.strip_prefix('"') {
        Some(rest) => {
            let inner = rest.strip_suffix('"')?;
            (!inner.contains(['"', '\\'])).then_some(inner)
        }
        None => Some(v),
    }
}

/// Splits at `sep` where it is not inside a quoted string.
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, ch) in s.char_indices() {
        if ch == '"' {
            quoted = !quoted;
        } else if ch == sep && !quoted {
            out.push(&s[start..i]);
            start = i + 1;
        }
    }
    out.push(&s[start..]);
    out
}

thread_local! {
    /// This core's compressor: (level, window bits, state). Reset before each message (no
    /// context takeover), so nothing of one message leaks into the next.
    static COMPRESSOR: RefCell<Option<(u32, u8, Compress)>> = const { RefCell::new(None) };
    /// This core's inflater, primed per message with the connection's own window.
    static INFLATER: RefCell<Option<Decompress>> = const { RefCell::new(None) };
    /// Scratch for compressed output (kept: one allocation per core, not per publish).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Compresses `payload` into one finished server frame (FIN and RSV1 set, unmasked), with a
/// window of 2^`window_bits` (9-15). `None` when compressing does not make the frame smaller
/// (the caller sends the plain frame: RFC 7692 lets any message go uncompressed). O(payload).
pub fn compress_frame(
    opcode: OpCode,
    payload: &[u8],
    level: u32,
    window_bits: u8,
) -> Option<Vec<u8>> {
    compress_frame_with(opcode, payload, level, window_bits, false)
}

/// [`compress_frame`], compressed even when that does not make it smaller (`always`): the
/// echo endpoint answers every message of a compressing peer compressed, as Autobahn's
/// reference server does. `None` only on a zlib error.
pub fn compress_frame_with(
    opcode: OpCode,
    payload: &[u8],
    level: u32,
    window_bits: u8,
    always: bool,
) -> Option<Vec<u8>> {
    SCRATCH.with(|scratch| {
        let mut body = scratch.borrow_mut();
        compress_into(payload, level, window_bits, &mut body)?;
        if !always && body.len() + 2 >= payload.len() {
            return None;
        }
        let mut frame = Vec::with_capacity(body.len() + MAX_SERVER_HEADER_BYTES);
        let mut head = [0u8; MAX_SERVER_HEADER_BYTES];
        let n = super::frame::server_header(opcode, body.len(), &mut head);
        head[0] |= super::frame::RSV1;
        frame.extend_from_slice(&head[..n]);
        frame.extend_from_slice(&body);
        if body.capacity() > 256 * 1024 {
            *body = Vec::new();
        }
        Some(frame)
    })
}

/// The compressed form of one message as it travels in a frame's payload (the sync flush's
/// last 4 bytes removed), no context taken over. For clients (tests, the load generator)
/// that send compressed messages; the gateway uses [`compress_frame`].
pub fn compress_message(payload: &[u8], level: u32, window_bits: u8) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    compress_into(payload, level, window_bits, &mut body)?;
    Some(body)
}

/// Compresses `payload` into `out` (cleared first) with this core's compressor, reset first.
fn compress_into(payload: &[u8], level: u32, window_bits: u8, out: &mut Vec<u8>) -> Option<()> {
    debug_assert!((9..=MAX_WINDOW_BITS).contains(&window_bits));
    out.clear();
    COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        let fresh = !matches!(&*cell, Some((l, w, _)) if *l == level && *w == window_bits);
        if fresh {
            *cell = Some((
                level,
                window_bits,
                Compress::new_with_window_bits(Compression::new(level), false, window_bits),
            ));
        }
        let (_, _, c) = cell.as_mut().expect("set above");
        if !fresh {
            c.reset();
        }
        deflate_all(c, payload, out)
    })?;
    // A sync flush ends with an empty stored block: drop its 4 bytes (section 7.2.1).
    if !out.ends_with(&TAIL) {
        return None;
    }
    out.truncate(out.len() - TAIL.len());
    Some(())
}

/// Runs `payload` through `c` with a sync flush into `out`. `None` on a zlib error.
fn deflate_all(c: &mut Compress, payload: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let start_in = c.total_in();
    out.reserve(payload.len() / 2 + 64);
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(1024));
        }
        let consumed = (c.total_in() - start_in) as usize;
        c.compress_vec(&payload[consumed..], out, FlushCompress::Sync)
            .ok()?;
        // zlib has finished a flush when it returns with output room to spare.
        if (c.total_in() - start_in) as usize == payload.len() && out.len() < out.capacity() {
            return Some(());
        }
    }
}

/// Why an inbound compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates past the message limit (close 1009); inflation stopped at the limit.
    TooLarge,
    /// Not a valid DEFLATE stream (close 1007).
    Corrupt,
}

/// One connection's inbound side of permessage-deflate: its window, when the client compresses
/// with context takeover. Small: nothing is allocated until the client sends a compressed
/// message, and then only what it sent (up to its window).
#[derive(Debug)]
pub struct Inflater {
    /// The last inflated bytes (at most `window`), or `None` without context takeover.
    history: Option<Vec<u8>>,
    /// 2^client window bits (at least 512: zlib compresses a window of 8 as 9).
    window: usize,
}

impl Inflater {
    /// The inbound side for what the upgrade agreed on.
    pub fn new(n: &Negotiated) -> Self {
        Inflater {
            history: (!n.client_no_context_takeover).then(Vec::new),
            window: 1usize << n.client_window_bits.max(9),
        }
    }

    /// The receiving side of frames compressed without context takeover (a client of the
    /// gateway, which always answers `server_no_context_takeover`).
    pub fn no_context() -> Self {
        Inflater {
            history: None,
            window: 1 << MAX_WINDOW_BITS,
        }
    }

    /// Bytes this connection keeps for its context (the inbound window it has filled).
    pub fn kept_bytes(&self) -> usize {
        self.history.as_ref().map_or(0, Vec::capacity)
    }

    /// Inflates one message's payload (all its frames' payloads, joined). At most `max` bytes
    /// come out: a message that would inflate further is refused with
    /// [`InflateError::TooLarge`] without ever holding more than `max` + 1 bytes of it.
    pub fn inflate(&mut self, compressed: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
        let out = INFLATER.with(|cell| {
            let mut cell = cell.borrow_mut();
            let d = cell
                .get_or_insert_with(|| Decompress::new_with_window_bits(false, MAX_WINDOW_BITS));
            d.reset(false);
            if let Some(h) = self.history.as_deref().filter(|h| !h.is_empty()) {
                d.set_dictionary(h).map_err(|_| InflateError::Corrupt)?;
            }
            inflate_bounded(d, compressed, max)
        })?;
        if let Some(h) = &mut self.history {
            remember(h, &out, self.window);
        }
        Ok(out)
    }
}

/// Appends `data` to the window `h`, keeping its last `window` bytes.
fn remember(h: &mut Vec<u8>, data: &[u8], window: usize) {
    if data.len() >= window {
        h.clear();
        h.extend_from_slice(&data[data.len() - window..]);
    } else {
        let drop = (h.len() + data.len()).saturating_sub(window);
        h.drain(..drop);
        h.extend_from_slice(data);
    }
    if h.capacity() > window * 2 {
        h.shrink_to(window);
    }
}

/// Inflates `compressed` + the sync-flush tail with `d`, producing at most `max` bytes.
fn inflate_bounded(
    d: &mut Decompress,
    compressed: &[u8],
    max: usize,
) -> Result<Vec<u8>, InflateError> {
    let mut out: Vec<u8> = Vec::with_capacity((compressed.len() * 4).clamp(64, max + 1));
    for input in [compressed, &TAIL[..]] {
        let start_in = d.total_in();
        loop {
            let consumed = (d.total_in() - start_in) as usize;
            if consumed == input.len() && out.len() < out.capacity() {
                break;
            }
            if out.len() == out.capacity() {
                if out.len() > max {
                    return Err(InflateError::TooLarge);
                }
                // Grow, but never past max + 1 (one byte over is how "too large" is seen).
                let room = out.capacity().max(1024).min(max + 1 - out.len());
                out.reserve_exact(room);
            }
            let before = (d.total_in(), out.len());
            match d.decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync) {
                // A final block (RFC 7692 section 7.2.3.3): the rest, if any, is the tail.
                Ok(Status::StreamEnd) => {
                    return check_len(out, max);
                }
                Ok(_) => {}
                Err(_) => return Err(InflateError::Corrupt),
            }
            if (d.total_in(), out.len()) == before && out.len() < out.capacity() {
                if consumed == input.len() {
                    // All input was in and the output had filled its room exactly: the
                    // extra room was not needed.
                    break;
                }
                // No progress with input and room left: not a stream zlib can go on with.
                return Err(InflateError::Corrupt);
            }
        }
    }
    check_len(out, max)
}

fn check_len(out: Vec<u8>, max: usize) -> Result<Vec<u8>, InflateError> {
    if out.len() > max {
        Err(InflateError::TooLarge)
    } else {
        Ok(out)
    }
}

/// Up to `n` first bytes of a compressed payload of ours (no context takeover): enough to read
/// a delivery's head (`type`, `topic`, `seqNo`, `messageId`) when the slow-consumer ladder
/// walks a connection's queued frames. `None` when it is not a valid stream.
pub fn inflate_prefix(compressed: &[u8], n: usize) -> Option<Vec<u8>> {
    INFLATER.with(|cell| {
        let mut cell = cell.borrow_mut();
        let d =
            cell.get_or_insert_with(|| Decompress::new_with_window_bits(false, MAX_WINDOW_BITS));
        d.reset(false);
        let mut out = Vec::with_capacity(n);
        match d.decompress_vec(compressed, &mut out, FlushDecompress::Sync) {
            Ok(_) => Some(out),
            Err(_) => None,
        }
    })
}

#[cfg(test)]
mod tests;
