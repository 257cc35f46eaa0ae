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
//! - No extension is ever negotiated, so every RSV bit must be 0.
//! - The message size limit is checked from the header alone, before the payload arrives, so a
//!   peer cannot make us buffer more than `max_message_bytes` plus one header.
//! - Text is validated as UTF-8 incrementally, one fragment at a time, failing as soon as an
//!   invalid sequence is seen.

use std::fmt;

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
    /// RSV1-3 set although no extension was negotiated.
    ReservedBitsNotZero,
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
            Self::InvalidUtf8 => CLOSE_INVALID_PAYLOAD,
            _ => CLOSE_PROTOCOL_ERROR,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReservedBitsNotZero => f.write_str("reserved bits set without an extension"),
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
}

/// A frame header read from the front of a buffer; every field is raw, not yet validated
/// beyond what `parse_header` says.
struct Header {
    fin: bool,
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
        }
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
        if b0 & 0x70 != 0 {
            return Err(FrameError::ReservedBitsNotZero);
        }
        let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(FrameError::UnknownOpcode(b0 & 0x0F))?;
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
            other => other,
        };
        let start = self.assembled.len();
        self.assembled.extend_from_slice(payload);
        if let Some(mask) = header.mask {
            apply_mask(&mut self.assembled[start..], mask);
        }
        if kind == OpCode::Text {
            self.advance_utf8(header.fin)?;
        }
        if !header.fin {
            self.in_progress = Some(kind);
            return Ok(None);
        }
        self.in_progress = None;
        self.utf8_valid_up_to = 0;
        let data = std::mem::take(&mut self.assembled);
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
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    const BOUNDARY_LENGTHS: [usize; 8] = [0, 1, 125, 126, 127, 65535, 65536, 65537];

    fn payload_of(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn client(opcode: OpCode, payload: &[u8], fin: bool) -> Vec<u8> {
        let mut out = Vec::new();
        write_client_frame(&mut out, opcode, payload, MASK, fin);
        out
    }

    /// Decodes every frame in `buf` with a fresh server decoder.
    fn decode_all(buf: &[u8], max: usize) -> Result<Vec<Message>, FrameError> {
        let mut decoder = Decoder::new(Role::Server, max);
        let mut rest = buf;
        let mut msgs = Vec::new();
        while let Some((used, msg)) = decoder.decode(rest)? {
            assert!(used > 0 && used <= rest.len());
            rest = &rest[used..];
            msgs.extend(msg);
        }
        assert!(rest.is_empty(), "left {} bytes undecoded", rest.len());
        Ok(msgs)
    }

    fn first_error(buf: &[u8], role: Role) -> FrameError {
        let mut decoder = Decoder::new(role, 1 << 20);
        let mut rest = buf;
        loop {
            match decoder.decode(rest) {
                Ok(Some((used, _))) => rest = &rest[used..],
                Ok(None) => panic!("no error, stopped wanting more bytes"),
                Err(e) => return e,
            }
        }
    }

    fn expected_header_len(len: usize) -> usize {
        match len {
            0..=125 => 2,
            126..=65535 => 4,
            _ => 10,
        }
    }

    #[test]
    fn server_frames_round_trip_at_every_length_boundary() {
        for len in BOUNDARY_LENGTHS {
            let payload = payload_of(len);
            let mut head = [0u8; MAX_SERVER_HEADER_BYTES];
            assert_eq!(
                server_header(OpCode::Binary, len, &mut head),
                expected_header_len(len)
            );
            let mut frame = Vec::new();
            write_server_frame(&mut frame, OpCode::Binary, &payload);
            assert_eq!(frame.len(), expected_header_len(len) + len);
            let mut decoder = Decoder::new(Role::Client, 1 << 20);
            let (used, msg) = decoder.decode(&frame).unwrap().unwrap();
            assert_eq!(used, frame.len());
            assert_eq!(msg, Some(Message::Binary(payload)));
        }
    }

    #[test]
    fn client_frames_round_trip_at_every_length_boundary() {
        for len in BOUNDARY_LENGTHS {
            let payload = payload_of(len);
            let frame = client(OpCode::Binary, &payload, true);
            assert_eq!(frame.len(), expected_header_len(len) + 4 + len);
            if len > 0 {
                assert_ne!(
                    &frame[frame.len() - len..],
                    &payload[..],
                    "len {len} masked"
                );
            }
            let msgs = decode_all(&frame, 1 << 20).unwrap();
            assert_eq!(msgs, vec![Message::Binary(payload)]);
        }
    }

    #[test]
    fn text_round_trips_and_stays_text() {
        let frame = client(OpCode::Text, "héllo wörld".as_bytes(), true);
        assert_eq!(
            decode_all(&frame, 1024).unwrap(),
            vec![Message::Text("héllo wörld".as_bytes().to_vec())]
        );
    }

    #[test]
    fn masking_is_correct_for_every_remainder_length() {
        for len in 0..40 {
            let payload = payload_of(len);
            let mut data = payload.clone();
            apply_mask(&mut data, MASK);
            for (i, byte) in data.iter().enumerate() {
                assert_eq!(*byte, payload[i] ^ MASK[i % 4]);
            }
        }
    }

    #[test]
    fn fragments_assemble_with_an_interleaved_ping() {
        let mut buf = client(OpCode::Text, b"hel", false);
        buf.extend(client(OpCode::Ping, b"are you there", true));
        buf.extend(client(OpCode::Continuation, b"lo ", false));
        buf.extend(client(OpCode::Pong, b"", true));
        buf.extend(client(OpCode::Continuation, b"world", true));
        buf.extend(client(OpCode::Binary, &[1, 2], false));
        buf.extend(client(OpCode::Continuation, &[3], true));
        assert_eq!(
            decode_all(&buf, 1024).unwrap(),
            vec![
                Message::Ping(b"are you there".to_vec()),
                Message::Pong(Vec::new()),
                Message::Text(b"hello world".to_vec()),
                Message::Binary(vec![1, 2, 3]),
            ]
        );
    }

    #[test]
    fn non_final_fragment_yields_no_message() {
        let frame = client(OpCode::Binary, b"abc", false);
        let mut decoder = Decoder::new(Role::Server, 1024);
        assert_eq!(decoder.decode(&frame), Ok(Some((frame.len(), None))));
    }

    #[test]
    fn close_frames_decode_code_and_reason() {
        let frame = client(OpCode::Close, &close_payload(CLOSE_GOING_AWAY, "bye"), true);
        assert_eq!(
            decode_all(&frame, 1024).unwrap(),
            vec![Message::Close {
                code: Some(1001),
                reason: "bye".into()
            }]
        );
        let empty = client(OpCode::Close, b"", true);
        assert_eq!(
            decode_all(&empty, 1024).unwrap(),
            vec![Message::Close {
                code: None,
                reason: String::new()
            }]
        );
        for code in [1000, 1003, 1007, 1011, 1014, 3000, 4999] {
            let frame = client(OpCode::Close, &close_payload(code, ""), true);
            assert!(decode_all(&frame, 1024).is_ok(), "code {code}");
        }
    }

    #[test]
    fn close_payload_truncates_reason_at_a_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes
        let payload = close_payload(CLOSE_NORMAL, &reason);
        assert!(payload.len() <= 125);
        assert_eq!(payload.len(), 2 + 122);
        assert_eq!(&payload[..2], &1000u16.to_be_bytes());
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
        assert_eq!(close_payload(CLOSE_POLICY, "x"), vec![0x03, 0xf0, b'x']);
    }

    #[test]
    fn every_frame_error_is_triggered_with_its_close_code() {
        let mut reserved = client(OpCode::Text, b"a", true);
        reserved[0] |= 0x40;
        let mut opcode3 = client(OpCode::Text, b"a", true);
        opcode3[0] = 0x83;
        let mut opcode11 = client(OpCode::Text, b"a", true);
        opcode11[0] = 0x8B;
        let mut unmasked = Vec::new();
        write_server_frame(&mut unmasked, OpCode::Text, b"a");
        let masked_to_client = client(OpCode::Text, b"a", true);
        let mut interrupted = client(OpCode::Text, b"a", false);
        interrupted.extend(client(OpCode::Binary, b"b", true));
        let mut bad_reason = close_payload(CLOSE_NORMAL, "");
        bad_reason.push(0xff);
        // 16-bit length form holding 5.
        let non_minimal16 = [0x82, 0x80 | 126, 0, 5, 0, 0, 0, 0, 1, 2, 3, 4, 5];
        // 64-bit length form holding 200.
        let mut non_minimal64 = vec![0x82, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 200, 0, 0, 0, 0];
        non_minimal64.extend([0u8; 200]);
        let high_bit = [0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0];

        let cases: Vec<(Vec<u8>, Role, FrameError, u16)> = vec![
            (
                reserved,
                Role::Server,
                FrameError::ReservedBitsNotZero,
                1002,
            ),
            (opcode3, Role::Server, FrameError::UnknownOpcode(3), 1002),
            (opcode11, Role::Server, FrameError::UnknownOpcode(11), 1002),
            (
                client(OpCode::Ping, b"", false),
                Role::Server,
                FrameError::ControlFrameFragmented,
                1002,
            ),
            (
                client(OpCode::Ping, &[0; 126], true),
                Role::Server,
                FrameError::ControlFrameTooLarge,
                1002,
            ),
            (
                unmasked,
                Role::Server,
                FrameError::UnmaskedClientFrame,
                1002,
            ),
            (
                masked_to_client,
                Role::Client,
                FrameError::MaskedServerFrame,
                1002,
            ),
            (
                client(OpCode::Binary, &[0; 2000], true),
                Role::Server,
                FrameError::MessageTooLarge,
                1009,
            ),
            (
                client(OpCode::Continuation, b"a", true),
                Role::Server,
                FrameError::UnexpectedContinuation,
                1002,
            ),
            (
                interrupted,
                Role::Server,
                FrameError::ExpectedContinuation,
                1002,
            ),
            (
                client(OpCode::Text, &[0xc3, 0x28], true),
                Role::Server,
                FrameError::InvalidUtf8,
                1007,
            ),
            (
                client(OpCode::Close, &bad_reason, true),
                Role::Server,
                FrameError::InvalidUtf8,
                1007,
            ),
            (
                client(OpCode::Close, &close_payload(1005, ""), true),
                Role::Server,
                FrameError::InvalidCloseCode(1005),
                1002,
            ),
            (
                client(OpCode::Close, &[0x03], true),
                Role::Server,
                FrameError::ClosePayloadTooShort,
                1002,
            ),
            (
                non_minimal16.to_vec(),
                Role::Server,
                FrameError::NonMinimalLength,
                1002,
            ),
            (
                non_minimal64,
                Role::Server,
                FrameError::NonMinimalLength,
                1002,
            ),
            (
                high_bit.to_vec(),
                Role::Server,
                FrameError::LengthHighBitSet,
                1002,
            ),
        ];
        for (bytes, role, expected, code) in cases {
            let mut decoder = Decoder::new(role, 1024);
            let mut rest = &bytes[..];
            let err = loop {
                match decoder.decode(rest) {
                    Ok(Some((used, _))) => rest = &rest[used..],
                    Ok(None) => panic!("{expected:?}: wanted more bytes"),
                    Err(e) => break e,
                }
            };
            assert_eq!(err, expected);
            assert_eq!(err.close_code(), code, "{expected:?}");
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn invalid_close_codes_are_rejected() {
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            let frame = client(OpCode::Close, &close_payload(code, ""), true);
            assert_eq!(
                first_error(&frame, Role::Server),
                FrameError::InvalidCloseCode(code)
            );
        }
    }

    #[test]
    fn invalid_utf8_in_first_fragment_fails_before_the_final_fragment() {
        let first = client(OpCode::Text, &[b'o', b'k', 0xff], false);
        let mut decoder = Decoder::new(Role::Server, 1024);
        assert_eq!(decoder.decode(&first), Err(FrameError::InvalidUtf8));
        // A surrogate (ED A0) is invalid as soon as its second byte is seen.
        let surrogate = client(OpCode::Text, &[0xed, 0xa0], false);
        let mut decoder = Decoder::new(Role::Server, 1024);
        assert_eq!(decoder.decode(&surrogate), Err(FrameError::InvalidUtf8));
    }

    #[test]
    fn char_split_across_fragments_is_accepted() {
        let euro = "€".as_bytes(); // E2 82 AC
        let mut buf = client(OpCode::Text, &euro[..1], false);
        buf.extend(client(OpCode::Continuation, &euro[1..2], false));
        buf.extend(client(OpCode::Continuation, &euro[2..], true));
        assert_eq!(
            decode_all(&buf, 1024).unwrap(),
            vec![Message::Text(euro.to_vec())]
        );
    }

    #[test]
    fn char_cut_off_by_the_final_fragment_is_invalid() {
        let euro = "€".as_bytes();
        let mut buf = client(OpCode::Text, b"a", false);
        buf.extend(client(OpCode::Continuation, &euro[..2], true));
        assert_eq!(first_error(&buf, Role::Server), FrameError::InvalidUtf8);
    }

    #[test]
    fn frame_fed_one_byte_at_a_time_needs_more_until_complete() {
        for len in [0, 5, 200, 70_000] {
            let payload = payload_of(len);
            let frame = client(OpCode::Binary, &payload, true);
            let mut decoder = Decoder::new(Role::Server, 1 << 20);
            for end in 0..frame.len() {
                assert_eq!(
                    decoder.decode(&frame[..end]),
                    Ok(None),
                    "len {len} end {end}"
                );
            }
            assert_eq!(
                decoder.decode(&frame),
                Ok(Some((frame.len(), Some(Message::Binary(payload)))))
            );
        }
    }

    #[test]
    fn message_too_large_is_detected_from_the_header_alone() {
        let frame = client(OpCode::Binary, &payload_of(70_000), true);
        let mut decoder = Decoder::new(Role::Server, 65_536);
        assert_eq!(
            decoder.decode(&frame[..10]),
            Err(FrameError::MessageTooLarge)
        );
    }

    #[test]
    fn message_too_large_counts_earlier_fragments() {
        let mut buf = client(OpCode::Binary, &[0; 600], false);
        buf.extend(client(OpCode::Continuation, &[0; 600], true));
        let mut decoder = Decoder::new(Role::Server, 1000);
        let (used, msg) = decoder.decode(&buf).unwrap().unwrap();
        assert_eq!(msg, None);
        // Only the next frame's 4-byte header is offered: enough to refuse it.
        assert_eq!(
            decoder.decode(&buf[used..used + 4]),
            Err(FrameError::MessageTooLarge)
        );
        // Exactly at the limit is fine.
        let mut ok = client(OpCode::Binary, &[0; 500], false);
        ok.extend(client(OpCode::Continuation, &[0; 500], true));
        assert_eq!(
            decode_all(&ok, 1000).unwrap(),
            vec![Message::Binary(vec![0; 1000])]
        );
    }

    #[test]
    fn bytes_wanted_reports_the_rest_of_the_frame_once_the_header_is_known() {
        let frame = client(OpCode::Binary, &payload_of(1000), true);
        let decoder = Decoder::new(Role::Server, 1 << 20);
        assert_eq!(decoder.bytes_wanted(&frame[..1]), 0);
        assert_eq!(decoder.bytes_wanted(&frame[..3]), 0);
        assert_eq!(decoder.bytes_wanted(&frame[..4]), 1004);
        assert_eq!(decoder.bytes_wanted(&frame[..100]), 908);
        assert_eq!(decoder.bytes_wanted(&frame), 0);
    }

    /// One message of the property test: its kind, its payload and where to cut it into frames.
    #[derive(Debug, Clone)]
    struct Plan {
        message: Message,
        cuts: Vec<usize>,
        mask: [u8; 4],
        ping_between: bool,
    }

    fn plan() -> impl Strategy<Value = Plan> {
        let message = prop_oneof![
            ".{0,80}".prop_map(|s: String| Message::Text(s.into_bytes())),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Message::Binary),
        ];
        (
            message,
            proptest::collection::vec(any::<usize>(), 0..5),
            any::<[u8; 4]>(),
            any::<bool>(),
        )
            .prop_map(|(message, cuts, mask, ping_between)| Plan {
                message,
                cuts,
                mask,
                ping_between,
            })
    }

    proptest! {
        #[test]
        fn arbitrarily_fragmented_messages_decode_to_the_same_messages(
            plans in proptest::collection::vec(plan(), 0..8),
            chunk in 1usize..64,
        ) {
            let mut wire = Vec::new();
            let mut expected = Vec::new();
            for plan in &plans {
                let (opcode, data) = match &plan.message {
                    Message::Text(d) => (OpCode::Text, d),
                    Message::Binary(d) => (OpCode::Binary, d),
                    _ => unreachable!("plans only hold data messages"),
                };
                let mut cuts: Vec<usize> = plan.cuts.iter().map(|c| c % (data.len() + 1)).collect();
                cuts.sort_unstable();
                cuts.push(data.len());
                let mut start = 0;
                for (i, &end) in cuts.iter().enumerate() {
                    let op = if i == 0 { opcode } else { OpCode::Continuation };
                    let fin = i == cuts.len() - 1;
                    write_client_frame(&mut wire, op, &data[start..end], plan.mask, fin);
                    if plan.ping_between && !fin {
                        write_client_frame(&mut wire, OpCode::Ping, b"p", plan.mask, true);
                        expected.push(Message::Ping(b"p".to_vec()));
                    }
                    start = end;
                }
                expected.push(plan.message.clone());
            }
            // Whole buffer at once.
            prop_assert_eq!(&decode_all(&wire, 1 << 16).unwrap(), &expected);
            // Arriving in chunks of `chunk` bytes, as from a socket.
            let mut decoder = Decoder::new(Role::Server, 1 << 16);
            let mut got = Vec::new();
            let mut pending: Vec<u8> = Vec::new();
            for piece in wire.chunks(chunk) {
                pending.extend_from_slice(piece);
                while let Some((used, msg)) = decoder.decode(&pending).unwrap() {
                    pending.drain(..used);
                    got.extend(msg);
                }
            }
            prop_assert!(pending.is_empty());
            prop_assert_eq!(got, expected);
        }
    }
}
