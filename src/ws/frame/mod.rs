//! RFC 6455 frame codec: decodes frames into whole messages and encodes server (and test/load
//! client) frames.
//!
//! What lives here: header encoding ([`server_header`], [`write_server_frame`],
//! [`write_client_frame`]), close payloads ([`close_payload`], the `CLOSE_*` codes) and the
//! [`Decoder`], which enforces every framing rule of RFC 6455 section 5 and assembles fragmented
//! messages.
//!
//! What may not: this module never touches a socket, glommio or anything async. It sees bytes the
//! caller already read and answers with how many it consumed; "need more bytes" is a state
//! (`Ok(None)`), not an error. It never writes replies either: answering a Ping or a Close is the
//! caller's obligation.
//!
//! Invariants:
//! - The only extension is permessage-deflate (RFC 7692, [`super::deflate`]): RSV1 marks the
//!   first frame of a compressed message, and only when the upgrade negotiated it (the decoder
//!   was given an [`Inflater`]); RSV2 and RSV3 must always be 0.
//! - The message size limit is checked from the header alone, before the payload arrives, so a
//!   peer cannot make us buffer more than `max_message_bytes` plus one header.
//! - Text is validated as UTF-8 incrementally, one fragment at a time, failing as soon as an
//!   invalid sequence is seen (a compressed message: once inflated).
//! - A compressed message inflates to at most `max_message_bytes`: one that would inflate
//!   further fails with 1009 without its inflated size ever being allocated.

use super::deflate::{InflateError, Inflater};
use std::fmt;

/// The RSV1 bit of a frame's first byte: "this message is compressed" under permessage-deflate.
pub const RSV1: u8 = 0x40;

/// Longest header a server frame can have: 2 bytes + 8-byte extended length, no mask.
pub const MAX_SERVER_HEADER_BYTES: usize = 10;

/// Longest payload a control frame (Close, Ping, Pong) may carry (RFC 6455 section 5.5).
const MAX_CONTROL_PAYLOAD_BYTES: usize = 125;

/// 1000: the purpose of the connection was fulfilled.
pub const CLOSE_NORMAL: u16 = 1000;
/// 1001: the server is shutting down (or the client navigating away).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// 1002: the peer broke the WebSocket protocol.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// 1003: a kind of data we do not accept (e.g. binary where only text is understood).
pub const CLOSE_UNSUPPORTED: u16 = 1003;
/// 1007: payload data inconsistent with the message type (invalid UTF-8 in text).
pub const CLOSE_INVALID_PAYLOAD: u16 = 1007;
/// 1008: a policy of ours was violated (generic).
pub const CLOSE_POLICY: u16 = 1008;
/// 1009: a message too big for us to process.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// 1011: an unexpected condition inside the server.
pub const CLOSE_INTERNAL: u16 = 1011;
/// 1013 Try Again Later (IANA registry): the server is at a limit for now.
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// Frame opcodes defined by RFC 6455 section 5.2; 3-7 and 11-15 are reserved and rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    /// Continues the fragmented message in progress.
    Continuation = 0,
    /// First (or only) frame of a UTF-8 text message.
    Text = 1,
    /// First (or only) frame of a binary message.
    Binary = 2,
    /// Closing handshake.
    Close = 8,
    /// Keep-alive request; the receiver owes a Pong with the same payload.
    Ping = 9,
    /// Keep-alive answer (or unsolicited heartbeat).
    Pong = 10,
}

impl OpCode {
    /// Maps the low nibble of the first header byte to an opcode, `None` for reserved values.
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0 => Self::Continuation,
            1 => Self::Text,
            2 => Self::Binary,
            8 => Self::Close,
            9 => Self::Ping,
            10 => Self::Pong,
            _ => return None,
        })
    }

    /// Close, Ping and Pong: may come between fragments, must not be fragmented, <= 125 bytes.
    fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// Writes a server frame header (FIN set, unmasked) for `payload_len` into `buf`, returns its
/// length (2, 4 or 10).
pub fn server_header(
    opcode: OpCode,
    payload_len: usize,
    buf: &mut [u8; MAX_SERVER_HEADER_BYTES],
) -> usize {
    buf[0] = 0x80 | opcode as u8;
    write_length(&mut buf[1..], payload_len, 0)
}

/// Writes the 7-bit length (ORed with `mask_bit`) and any extended length into `out`, which must
/// hold at least 9 bytes. Returns the header length counting the first byte (2, 4 or 10).
/// Always uses the minimal encoding, as RFC 6455 section 5.2 requires.
fn write_length(out: &mut [u8], payload_len: usize, mask_bit: u8) -> usize {
    if payload_len < 126 {
        out[0] = mask_bit | payload_len as u8;
        2
    } else if payload_len <= usize::from(u16::MAX) {
        out[0] = mask_bit | 126;
        out[1..3].copy_from_slice(&(payload_len as u16).to_be_bytes());
        4
    } else {
        out[0] = mask_bit | 127;
        out[1..9].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    }
}

/// The header length (2, 4 or 10) of a server frame that starts `frame` (unmasked, as
/// [`server_header`] writes them).
pub fn header_len(frame: &[u8]) -> usize {
    match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    }
}

/// Length (header and payload) of the unmasked server frame at the start of `b`, once its
/// header is all there.
pub fn server_frame_len(b: &[u8]) -> Option<usize> {
    let payload = match *b.get(1)? & 0x7f {
        126 => u16::from_be_bytes(b.get(2..4)?.try_into().ok()?) as usize,
        127 => u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize,
        n => n as usize,
    };
    Some(header_len(b) + payload)
}

/// Appends one complete server frame (FIN, unmasked) to `out`.
pub fn write_server_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let mut head = [0u8; MAX_SERVER_HEADER_BYTES];
    let head_len = server_header(opcode, payload.len(), &mut head);
    out.reserve(head_len + payload.len());
    out.extend_from_slice(&head[..head_len]);
    out.extend_from_slice(payload);
}

/// Close-frame payload: 2-byte big-endian code + UTF-8 reason (reason truncated so the payload
/// stays <= 125 bytes, at a char boundary).
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let max_reason = MAX_CONTROL_PAYLOAD_BYTES - 2;
    let mut end = reason.len().min(max_reason);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}

/// Appends one client frame (masked with `mask`, FIN as given) — used by tests and the load
/// generator.
pub fn write_client_frame(
    out: &mut Vec<u8>,
    opcode: OpCode,
    payload: &[u8],
    mask: [u8; 4],
    fin: bool,
) {
    let mut head = [0u8; MAX_SERVER_HEADER_BYTES + 4];
    head[0] = if fin { 0x80 } else { 0 } | opcode as u8;
    let len_end = write_length(&mut head[1..], payload.len(), 0x80);
    head[len_end..len_end + 4].copy_from_slice(&mask);
    let head_len = len_end + 4;
    out.reserve(head_len + payload.len());
    out.extend_from_slice(&head[..head_len]);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
}

/// XORs `data` with the 4-byte `mask`, starting at mask byte 0 (RFC 6455 section 5.3).
/// Masking and unmasking are the same operation. O(n), 8 bytes per step.
fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // 8 is a multiple of 4, so the remainder starts again at mask byte 0.
    for (byte, m) in chunks.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *byte ^= m;
    }
}

/// Whether a received close code may appear on the wire (RFC 6455 section 7.4 and the IANA
/// registry): 1004, 1005, 1006 and 1015 are reserved for local use, 1016-2999 are unassigned,
/// 3000-4999 belong to libraries and applications.
fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// One complete message (or control frame) decoded from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A complete text message; the bytes are already validated UTF-8.
    Text(Vec<u8>),
    /// A complete binary message.
    Binary(Vec<u8>),
    /// The caller owes a Pong with this payload.
    Ping(Vec<u8>),
    /// Answer to a Ping of ours (or an unsolicited heartbeat).
    Pong(Vec<u8>),
    /// The peer started (or answered) the closing handshake. `code` is `None` for an empty
    /// payload; a code, when present, is one of the valid ones.
    Close {
        /// Status code, already checked to be one a peer may send.
        code: Option<u16>,
        /// Reason text, already validated UTF-8.
        reason: String,
    },
}

/// Which side of the connection the decoder sits on; decides the masking rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Decodes client frames: they MUST be masked.
    Server,
    /// Decodes server frames: they must NOT be masked.
    Client,
}

/// A rule of RFC 6455 the peer broke. The caller closes the connection with
/// [`FrameError::close_code`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// RSV1-3 set although no extension was negotiated (or RSV1 where permessage-deflate
    /// does not allow it: a control or continuation frame).
    ReservedBitsNotZero,
    /// A compressed message that is not a valid DEFLATE stream.
    BadCompressedData,
    /// Opcode 3-7 or 11-15.
    UnknownOpcode(u8),
    /// A Close, Ping or Pong without FIN.
    ControlFrameFragmented,
    /// A Close, Ping or Pong with more than 125 bytes of payload.
    ControlFrameTooLarge,
    /// A frame from a client without the mask bit.
    UnmaskedClientFrame,
    /// A frame from a server with the mask bit.
    MaskedServerFrame,
    /// The message (all fragments together) would exceed `max_message_bytes`.
    MessageTooLarge,
    /// A continuation frame with no fragmented message in progress.
    UnexpectedContinuation,
    /// A new Text or Binary frame while a fragmented message is still in progress.
    ExpectedContinuation,
    /// Text (or a close reason) that is not valid UTF-8.
    InvalidUtf8,
    /// A close code that may not be sent on the wire.
    InvalidCloseCode(u16),
    /// A Close payload of exactly 1 byte (a code needs 2).
    ClosePayloadTooShort,
    /// A length encoded in more bytes than needed (16-bit form for < 126, 64-bit form for
    /// < 65536).
    NonMinimalLength,
    /// A 64-bit length with its most significant bit set.
    LengthHighBitSet,
}

impl FrameError {
    /// The close code to send the peer: 1009 for an oversized message, 1007 for invalid UTF-8,
    /// 1002 (protocol error) for everything else.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::MessageTooLarge => CLOSE_TOO_BIG,
            Self::InvalidUtf8 | Self::BadCompressedData => CLOSE_INVALID_PAYLOAD,
            _ => CLOSE_PROTOCOL_ERROR,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReservedBitsNotZero => f.write_str("reserved bits set without an extension"),
            Self::BadCompressedData => f.write_str("compressed message is not valid DEFLATE"),
            Self::UnknownOpcode(op) => write!(f, "reserved opcode {op}"),
            Self::ControlFrameFragmented => f.write_str("control frame without FIN"),
            Self::ControlFrameTooLarge => f.write_str("control frame payload over 125 bytes"),
            Self::UnmaskedClientFrame => f.write_str("client frame not masked"),
            Self::MaskedServerFrame => f.write_str("server frame masked"),
            Self::MessageTooLarge => f.write_str("message exceeds the size limit"),
            Self::UnexpectedContinuation => {
                f.write_str("continuation frame without a message in progress")
            }
            Self::ExpectedContinuation => {
                f.write_str("new data frame while a fragmented message is in progress")
            }
            Self::InvalidUtf8 => f.write_str("invalid UTF-8 in text"),
            Self::InvalidCloseCode(code) => write!(f, "invalid close code {code}"),
            Self::ClosePayloadTooShort => f.write_str("close payload of 1 byte"),
            Self::NonMinimalLength => f.write_str("payload length not minimally encoded"),
            Self::LengthHighBitSet => f.write_str("64-bit payload length with the top bit set"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Decodes a stream of frames into messages, one frame per call, keeping the state of a
/// fragmented message between calls. One per connection; not shared.
#[derive(Debug)]
pub struct Decoder {
    /// Decides whether frames must or must not be masked.
    role: Role,
    /// Limit on a whole message (all fragments), checked from each frame's header.
    max_message_bytes: usize,
    /// Text or Binary while a fragmented message is in progress; `None` between messages.
    in_progress: Option<OpCode>,
    /// Unmasked payload of the message in progress. Handed out (taken) when the message
    /// completes, so it is empty between messages.
    assembled: Vec<u8>,
    /// For text: `assembled[..utf8_valid_up_to]` is known to be complete, valid UTF-8; what
    /// follows (at most 3 bytes) is the start of a sequence cut at a fragment boundary.
    utf8_valid_up_to: usize,
    /// The message in progress is compressed (its first frame had RSV1).
    compressed: bool,
    /// permessage-deflate was negotiated: compressed messages are inflated with it.
    inflater: Option<Box<Inflater>>,
}

/// A frame header read from the front of a buffer; every field is raw, not yet validated
/// beyond what `parse_header` says.
struct Header {
    fin: bool,
    /// RSV1 on a Text/Binary frame under permessage-deflate.
    compressed: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    payload_len: u64,
    header_len: usize,
}

impl Decoder {
    /// A decoder for one connection on side `role`, refusing messages over `max_message_bytes`.
    pub fn new(role: Role, max_message_bytes: usize) -> Self {
        Self {
            role,
            max_message_bytes,
            in_progress: None,
            assembled: Vec::new(),
            utf8_valid_up_to: 0,
            compressed: false,
            inflater: None,
        }
    }

    /// Accepts compressed messages from now on (permessage-deflate was negotiated), inflated
    /// with `inflater`.
    pub fn set_inflater(&mut self, inflater: Inflater) {
        self.inflater = Some(Box::new(inflater));
    }

    /// What the inflater keeps for this connection's inbound context (0 without one).
    pub fn inflater_bytes(&self) -> usize {
        self.inflater.as_ref().map_or(0, |i| i.kept_bytes())
    }

    /// Decodes at most ONE frame from the front of `buf`.
    ///
    /// - `Ok(None)`: more bytes are needed (nothing consumed; the caller reads more and calls
    ///   again with the longer buffer).
    /// - `Ok(Some((consumed, msg)))`: one frame of `consumed` bytes was taken; `msg` is `Some`
    ///   when it completed a message or was a control frame, `None` for a non-final fragment.
    /// - `Err(e)`: the peer broke the protocol; the caller closes with `e.close_code()`. The
    ///   decoder must not be used afterwards.
    ///
    /// Every rule that can be judged from the bytes present is judged before asking for more,
    /// so an oversized message fails when its header arrives.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(usize, Option<Message>)>, FrameError> {
        let Some(header) = self.parse_header(buf)? else {
            return Ok(None);
        };
        // `parse_header` refused any length that does not fit the limit, so it fits a usize.
        let payload_len = header.payload_len as usize;
        let frame_len = header.header_len + payload_len;
        if buf.len() < frame_len {
            return Ok(None);
        }
        let payload = &buf[header.header_len..frame_len];
        let msg = if header.opcode.is_control() {
            let mut data = payload.to_vec();
            if let Some(mask) = header.mask {
                apply_mask(&mut data, mask);
            }
            Some(control_message(header.opcode, data)?)
        } else {
            self.data_frame(&header, payload)?
        };
        Ok(Some((frame_len, msg)))
    }

    /// Bytes the decoder still needs before it can make progress, when known (header parsed but
    /// payload incomplete); lets the caller reserve buffer space. Returns 0 when unknown
    /// (header incomplete) or when a whole frame is already present.
    pub fn bytes_wanted(&self, buf: &[u8]) -> usize {
        let Some((payload_len, len_bytes)) = raw_length(buf) else {
            return 0;
        };
        let mask_bytes = if buf[1] & 0x80 != 0 { 4 } else { 0 };
        let payload_len = usize::try_from(payload_len).unwrap_or(usize::MAX);
        payload_len
            .saturating_add(2 + len_bytes + mask_bytes)
            .saturating_sub(buf.len())
    }

    /// Reads and validates the header at the front of `buf`, `Ok(None)` if it is incomplete.
    /// Rules are checked in the order their bytes arrive, so a bad first two bytes fail at once.
    fn parse_header(&self, buf: &[u8]) -> Result<Option<Header>, FrameError> {
        let [b0, b1, ..] = *buf else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        if b0 & 0x30 != 0 {
            return Err(FrameError::ReservedBitsNotZero);
        }
        let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(FrameError::UnknownOpcode(b0 & 0x0F))?;
        let compressed = b0 & RSV1 != 0;
        if compressed
            && (self.inflater.is_none() || !matches!(opcode, OpCode::Text | OpCode::Binary))
        {
            return Err(FrameError::ReservedBitsNotZero);
        }
        let masked = b1 & 0x80 != 0;
        match (self.role, masked) {
            (Role::Server, false) => return Err(FrameError::UnmaskedClientFrame),
            (Role::Client, true) => return Err(FrameError::MaskedServerFrame),
            _ => {}
        }
        if opcode.is_control() {
            if !fin {
                return Err(FrameError::ControlFrameFragmented);
            }
            if usize::from(b1 & 0x7F) > MAX_CONTROL_PAYLOAD_BYTES {
                return Err(FrameError::ControlFrameTooLarge);
            }
        } else {
            match (opcode, self.in_progress) {
                (OpCode::Continuation, None) => return Err(FrameError::UnexpectedContinuation),
                (OpCode::Text | OpCode::Binary, Some(_)) => {
                    return Err(FrameError::ExpectedContinuation)
                }
                _ => {}
            }
        }
        let Some((payload_len, len_bytes)) = raw_length(buf) else {
            return Ok(None);
        };
        match len_bytes {
            2 if payload_len < 126 => return Err(FrameError::NonMinimalLength),
            8 if payload_len >> 63 != 0 => return Err(FrameError::LengthHighBitSet),
            8 if payload_len <= u64::from(u16::MAX) => return Err(FrameError::NonMinimalLength),
            _ => {}
        }
        if !opcode.is_control() {
            let assembled = self.assembled.len() as u64;
            if payload_len.saturating_add(assembled) > self.max_message_bytes as u64 {
                return Err(FrameError::MessageTooLarge);
            }
        }
        let len_end = 2 + len_bytes;
        let mask = if masked {
            let Some(key) = buf.get(len_end..len_end + 4) else {
                return Ok(None);
            };
            Some([key[0], key[1], key[2], key[3]])
        } else {
            None
        };
        Ok(Some(Header {
            fin,
            compressed,
            opcode,
            mask,
            payload_len,
            header_len: len_end + if masked { 4 } else { 0 },
        }))
    }

    /// Appends a Text/Binary/Continuation payload to the message in progress, validating text
    /// as it goes; returns the message when this frame had FIN.
    fn data_frame(
        &mut self,
        header: &Header,
        payload: &[u8],
    ) -> Result<Option<Message>, FrameError> {
        let kind = match header.opcode {
            OpCode::Continuation => self.in_progress.ok_or(FrameError::UnexpectedContinuation)?,
            other => {
                self.compressed = header.compressed;
                other
            }
        };
        let start = self.assembled.len();
        self.assembled.extend_from_slice(payload);
        if let Some(mask) = header.mask {
            apply_mask(&mut self.assembled[start..], mask);
        }
        if kind == OpCode::Text && !self.compressed {
            self.advance_utf8(header.fin)?;
        }
        if !header.fin {
            self.in_progress = Some(kind);
            return Ok(None);
        }
        self.in_progress = None;
        self.utf8_valid_up_to = 0;
        let mut data = std::mem::take(&mut self.assembled);
        if self.compressed {
            self.compressed = false;
            let inflater = self.inflater.as_mut().expect("RSV1 is refused without one");
            data = inflater
                .inflate(&data, self.max_message_bytes)
                .map_err(|e| match e {
                    InflateError::TooLarge => FrameError::MessageTooLarge,
                    InflateError::Corrupt => FrameError::BadCompressedData,
                })?;
            if kind == OpCode::Text && std::str::from_utf8(&data).is_err() {
                return Err(FrameError::InvalidUtf8);
            }
        }
        Ok(Some(if kind == OpCode::Text {
            Message::Text(data)
        } else {
            Message::Binary(data)
        }))
    }

    /// Validates the text bytes appended since the last call. An invalid sequence fails at
    /// once; a sequence cut at the end is fine unless this is the final fragment.
    /// O(new bytes + 3): only the unchecked tail is looked at.
    fn advance_utf8(&mut self, is_final: bool) -> Result<(), FrameError> {
        let tail = &self.assembled[self.utf8_valid_up_to..];
        match std::str::from_utf8(tail) {
            Ok(_) => self.utf8_valid_up_to = self.assembled.len(),
            Err(e) => {
                if e.error_len().is_some() || is_final {
                    return Err(FrameError::InvalidUtf8);
                }
                self.utf8_valid_up_to += e.valid_up_to();
            }
        }
        Ok(())
    }
}

/// Reads the payload length from a header prefix: `(length, extended length bytes 0/2/8)`, or
/// `None` when the bytes holding it have not all arrived. Validates nothing.
fn raw_length(buf: &[u8]) -> Option<(u64, usize)> {
    let len7 = buf.get(1)? & 0x7F;
    match len7 {
        126 => {
            let bytes = buf.get(2..4)?;
            Some((u64::from(u16::from_be_bytes([bytes[0], bytes[1]])), 2))
        }
        127 => {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(buf.get(2..10)?);
            Some((u64::from_be_bytes(bytes), 8))
        }
        n => Some((u64::from(n), 0)),
    }
}

/// Builds the message of a complete, unmasked control frame, checking a Close payload.
fn control_message(opcode: OpCode, data: Vec<u8>) -> Result<Message, FrameError> {
    Ok(match opcode {
        OpCode::Ping => Message::Ping(data),
        OpCode::Pong => Message::Pong(data),
        _ => match *data.as_slice() {
            [] => Message::Close {
                code: None,
                reason: String::new(),
            },
            [_] => return Err(FrameError::ClosePayloadTooShort),
            [hi, lo, ref reason @ ..] => {
                let code = u16::from_be_bytes([hi, lo]);
                if !is_valid_close_code(code) {
                    return Err(FrameError::InvalidCloseCode(code));
                }
                let reason = std::str::from_utf8(reason).map_err(|_| FrameError::InvalidUtf8)?;
                Message::Close {
                    code: Some(code),
                    reason: reason.to_owned(),
                }
            }
        },
    })
}

#[cfg(test)]
mod tests;
