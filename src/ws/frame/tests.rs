//! Unit and property tests of [`super`] (frame): kept beside the code they test, in a file of
//! their own so the module itself reads in one sitting.

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
        assert_eq!(server_frame_len(&frame), Some(frame.len()));
        assert_eq!(
            server_frame_len(&frame[..expected_header_len(len) - 1]),
            None
        );
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
