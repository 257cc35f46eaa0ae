use super::*;
use crate::ws::frame::{self, Decoder, FrameError, Message, Role};

fn cfg() -> DeflateConfig {
    DeflateConfig::default()
}

fn ticks(n: usize) -> Vec<u8> {
    let mut s = String::from("[");
    let mut i = 0u64;
    while s.len() < n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            r#"{{"symbol":"BTC-USD","bid":{}.{:02},"ask":{}.{:02},"ts":{}}}"#,
            64000 + i * 7 % 13,
            i * 31 % 100,
            64001 + i * 7 % 13,
            i * 17 % 100,
            1_765_100_000_000u64 + i * 137
        ));
        i += 1;
    }
    s.push(']');
    s.into_bytes()
}

/// Inflates a server frame the way a client does (RFC 7692 section 7.2.2).
fn client_inflate(frame_bytes: &[u8]) -> Vec<u8> {
    let mut d = Decoder::new(Role::Client, 1 << 24);
    d.set_inflater(Inflater::no_context());
    match d.decode(frame_bytes).unwrap() {
        Some((used, Some(Message::Text(t)))) => {
            assert_eq!(used, frame_bytes.len());
            t
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_plain_offer_is_accepted_with_server_no_context_takeover() {
    let n = negotiate("permessage-deflate", &cfg()).unwrap();
    assert_eq!(
        n.response_value(),
        "permessage-deflate; server_no_context_takeover"
    );
    assert!(!n.client_no_context_takeover);
    assert_eq!((n.client_window_bits, n.server_window_bits), (15, 15));
    // What Chromium sends.
    let n = negotiate("permessage-deflate; client_max_window_bits", &cfg()).unwrap();
    assert_eq!(
        n.response_value(),
        "permessage-deflate; server_no_context_takeover"
    );
    assert_eq!(n.client_window_bits, 15);
}

#[test]
fn offered_parameters_are_answered() {
    let n = negotiate(
        "permessage-deflate; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=9",
        &cfg(),
    )
    .unwrap();
    assert_eq!(
        n.response_value(),
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=9"
    );
    assert_eq!((n.client_window_bits, n.server_window_bits), (9, 10));
    // Quoted values are tokens too.
    let n = negotiate(r#"permessage-deflate; server_max_window_bits="12""#, &cfg()).unwrap();
    assert_eq!(n.server_window_bits, 12);
}

#[test]
fn the_configuration_limits_what_clients_may_do() {
    let c = DeflateConfig {
        client_context_takeover: false,
        client_max_window_bits: 10,
        ..cfg()
    };
    let n = negotiate("permessage-deflate; client_max_window_bits", &c).unwrap();
    assert!(n.client_no_context_takeover);
    assert_eq!(
        n.response_value(),
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=10"
    );
    // Without the client's client_max_window_bits the server may not name one.
    let n = negotiate("permessage-deflate", &c).unwrap();
    assert_eq!(n.client_window_bits, 15);
    let off = DeflateConfig {
        enabled: false,
        ..cfg()
    };
    assert_eq!(negotiate("permessage-deflate", &off), None);
}

#[test]
fn bad_offers_are_declined_and_the_next_one_is_tried() {
    for bad in [
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=010",
        "permessage-deflate; client_max_window_bits=x",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_no_context_takeover=1",
        "permessage-deflate; mystery",
        r#"permessage-deflate; server_max_window_bits="10"#,
        "x-webkit-deflate-frame",
        "",
    ] {
        assert_eq!(negotiate(bad, &cfg()), None, "{bad}");
    }
    let n = negotiate(
        "permessage-deflate; server_max_window_bits=99, permessage-deflate; client_no_context_takeover",
        &cfg(),
    )
    .unwrap();
    assert!(n.client_no_context_takeover);
    assert_eq!(n.server_window_bits, 15);
}

#[test]
fn a_compressed_frame_inflates_to_the_message_and_is_smaller() {
    for len in [300, 1024, 16 * 1024, 200 * 1024] {
        let msg = ticks(len);
        let f = compress_frame(OpCode::Text, &msg, 3, 15).expect("JSON shrinks");
        assert_eq!(f[0], 0x80 | RSV1_BIT | 1, "FIN, RSV1, text");
        assert!(
            f.len() * 2 < msg.len() && (len < 1024 || f.len() * 3 < msg.len()),
            "{} -> {}",
            msg.len(),
            f.len()
        );
        assert_eq!(client_inflate(&f), msg);
    }
}

const RSV1_BIT: u8 = frame::RSV1;

#[test]
fn what_does_not_shrink_is_not_compressed() {
    assert_eq!(compress_frame(OpCode::Text, b"{}", 3, 15), None);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..2000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    assert_eq!(compress_frame(OpCode::Binary, &noise, 3, 15), None);
}

#[test]
fn each_frame_stands_alone_whatever_came_before() {
    // No context takeover: the second frame must not refer to the first.
    let a = ticks(2000);
    let f1 = compress_frame(OpCode::Text, &a, 3, 15).unwrap();
    let f2 = compress_frame(OpCode::Text, &a, 3, 15).unwrap();
    assert_eq!(f1, f2, "the same message compresses to the same bytes");
    assert_eq!(client_inflate(&f2), a);
    // Another level or window gets its own compressor.
    let f3 = compress_frame(OpCode::Text, &a, 9, 10).unwrap();
    assert_eq!(client_inflate(&f3), a);
}

#[test]
fn a_narrow_window_takes_only_messages_that_fit_it() {
    assert!(Negotiated::takes_compressed(15, 1 << 20));
    assert!(Negotiated::takes_compressed(10, 1024));
    assert!(!Negotiated::takes_compressed(10, 1025));
}

fn client_message(payload: &[u8], rsv1: bool, fin: bool, op: OpCode) -> Vec<u8> {
    let mut out = Vec::new();
    frame::write_client_frame(&mut out, op, payload, [1, 2, 3, 4], fin);
    if rsv1 {
        out[0] |= RSV1_BIT;
    }
    out
}

fn server_decoder(max: usize, takeover: bool) -> Decoder {
    let mut d = Decoder::new(Role::Server, max);
    let offer = if takeover {
        "permessage-deflate"
    } else {
        "permessage-deflate; client_no_context_takeover"
    };
    d.set_inflater(Inflater::new(&negotiate(offer, &cfg()).unwrap()));
    d
}

fn decode_all(d: &mut Decoder, mut buf: &[u8]) -> Result<Vec<Message>, FrameError> {
    let mut out = Vec::new();
    while let Some((used, m)) = d.decode(buf)? {
        buf = &buf[used..];
        out.extend(m);
    }
    Ok(out)
}

#[test]
fn the_server_inflates_compressed_messages_with_and_without_context_takeover() {
    let text = br#"{"type":"subscribe","topic":"prices.BTC"}"#;
    // Without context takeover: every message on its own.
    let mut d = server_decoder(1 << 16, false);
    let body = compress_message(text, 6, 15).unwrap();
    let wire = [
        client_message(&body, true, true, OpCode::Text),
        client_message(&body, true, true, OpCode::Text),
    ]
    .concat();
    assert_eq!(
        decode_all(&mut d, &wire).unwrap(),
        vec![Message::Text(text.to_vec()), Message::Text(text.to_vec())]
    );
    assert_eq!(d.inflater_bytes(), 0);

    // With context takeover: the client's second message refers back into its first.
    let mut c = Compress::new_with_window_bits(Compression::new(6), false, 15);
    let mut m1 = Vec::with_capacity(256);
    c.compress_vec(text, &mut m1, FlushCompress::Sync).unwrap();
    let mut m2 = Vec::with_capacity(256);
    c.compress_vec(text, &mut m2, FlushCompress::Sync).unwrap();
    m1.truncate(m1.len() - 4);
    m2.truncate(m2.len() - 4);
    assert!(m2.len() < m1.len(), "the second refers to the first");
    let mut d = server_decoder(1 << 16, true);
    let wire = [
        client_message(&m1, true, true, OpCode::Text),
        client_message(b"plain", false, true, OpCode::Text),
        client_message(&m2, true, true, OpCode::Text),
    ]
    .concat();
    assert_eq!(
        decode_all(&mut d, &wire).unwrap(),
        vec![
            Message::Text(text.to_vec()),
            Message::Text(b"plain".to_vec()),
            Message::Text(text.to_vec())
        ]
    );
    assert!(d.inflater_bytes() >= 2 * text.len() && d.inflater_bytes() < 1024);
}

#[test]
fn a_fragmented_compressed_message_has_rsv1_on_its_first_frame_only() {
    let msg = ticks(3000);
    let body = compress_message(&msg, 3, 15).unwrap();
    let (a, b) = body.split_at(body.len() / 2);
    let mut d = server_decoder(1 << 16, false);
    let wire = [
        client_message(a, true, false, OpCode::Text),
        client_message(b"", false, true, OpCode::Ping),
        client_message(b, false, true, OpCode::Continuation),
    ]
    .concat();
    let got = decode_all(&mut d, &wire).unwrap();
    assert_eq!(got, vec![Message::Ping(vec![]), Message::Text(msg)]);
    // RSV1 on a continuation or a control frame is a protocol error.
    let mut d = server_decoder(1 << 16, false);
    let wire = [
        client_message(a, true, false, OpCode::Text),
        client_message(b, true, true, OpCode::Continuation),
    ]
    .concat();
    assert_eq!(
        decode_all(&mut d, &wire),
        Err(FrameError::ReservedBitsNotZero)
    );
    let mut d = server_decoder(1 << 16, false);
    assert_eq!(
        decode_all(&mut d, &client_message(b"", true, true, OpCode::Ping)),
        Err(FrameError::ReservedBitsNotZero)
    );
    // Without the extension RSV1 is refused as before.
    let mut d = Decoder::new(Role::Server, 1 << 16);
    assert_eq!(
        decode_all(&mut d, &client_message(&body, true, true, OpCode::Text)),
        Err(FrameError::ReservedBitsNotZero)
    );
}

#[test]
fn a_small_frame_that_inflates_past_the_limit_is_refused_with_1009() {
    // 10 MB of zeros compress to ~10 KB; the limit is 64 KiB.
    let bomb = compress_message(&vec![b' '; 10_000_000], 9, 15).unwrap();
    assert!(bomb.len() < 20_000, "{}", bomb.len());
    let mut d = server_decoder(64 * 1024, false);
    let err = decode_all(&mut d, &client_message(&bomb, true, true, OpCode::Text)).unwrap_err();
    assert_eq!(err, FrameError::MessageTooLarge);
    assert_eq!(err.close_code(), frame::CLOSE_TOO_BIG);
    // Exactly at the limit is fine.
    let at = compress_message(&vec![b' '; 64 * 1024], 9, 15).unwrap();
    let mut d = server_decoder(64 * 1024, false);
    assert!(matches!(
        decode_all(&mut d, &client_message(&at, true, true, OpCode::Text)).unwrap()[..],
        [Message::Text(ref t)] if t.len() == 64 * 1024
    ));
    // The bounded inflater never grew past the limit.
    let mut inf = Inflater::no_context();
    assert_eq!(inf.inflate(&bomb, 1000), Err(InflateError::TooLarge));
}

#[test]
fn every_output_size_inflates_whatever_room_the_first_guess_gave() {
    // The inflater's first guess at the output size is 4x the input: messages that inflate to
    // exactly that (or one byte either side) must not be mistaken for a stuck stream.
    let mut inf = Inflater::no_context();
    for len in 1..3000usize {
        let msg: Vec<u8> = ticks(len)[..len].to_vec();
        let body = compress_message(&msg, 6, 15).unwrap();
        assert_eq!(
            inf.inflate(&body, 1 << 20).as_deref(),
            Ok(&msg[..]),
            "len {len}"
        );
    }
}

#[test]
fn corrupt_data_and_bad_utf8_are_refused() {
    let mut d = server_decoder(1 << 16, false);
    let err = decode_all(
        &mut d,
        &client_message(&[0xff, 0xff, 0xff], true, true, OpCode::Text),
    )
    .unwrap_err();
    assert_eq!(err, FrameError::BadCompressedData);
    assert_eq!(err.close_code(), frame::CLOSE_INVALID_PAYLOAD);
    let body = compress_message(&[b'a', 0xff, 0xfe, b'b'], 3, 15).unwrap();
    let mut d = server_decoder(1 << 16, false);
    assert_eq!(
        decode_all(&mut d, &client_message(&body, true, true, OpCode::Text)),
        Err(FrameError::InvalidUtf8)
    );
    // The same bytes as binary are fine.
    let mut d = server_decoder(1 << 16, false);
    assert_eq!(
        decode_all(&mut d, &client_message(&body, true, true, OpCode::Binary)).unwrap(),
        vec![Message::Binary(vec![b'a', 0xff, 0xfe, b'b'])]
    );
}

#[test]
fn a_final_block_from_the_client_is_accepted() {
    // RFC 7692 section 7.2.3.3: a sender may end with BFINAL=1 instead of a sync flush.
    let msg = br#"{"type":"ping"}"#;
    let mut c = Compress::new_with_window_bits(Compression::new(6), false, 15);
    let mut body = Vec::with_capacity(256);
    c.compress_vec(msg, &mut body, FlushCompress::Finish)
        .unwrap();
    let mut d = server_decoder(1 << 16, false);
    assert_eq!(
        decode_all(&mut d, &client_message(&body, true, true, OpCode::Text)).unwrap(),
        vec![Message::Text(msg.to_vec())]
    );
}

#[test]
fn the_window_keeps_only_the_last_bytes() {
    let mut h = Vec::new();
    remember(&mut h, b"abcdef", 4);
    assert_eq!(h, b"cdef");
    remember(&mut h, b"gh", 4);
    assert_eq!(h, b"efgh");
    remember(&mut h, b"i", 4);
    assert_eq!(h, b"fghi");
}

#[test]
fn the_head_of_a_queued_frame_can_be_read_back() {
    let msg = [
        br#"{"type":"message","topic":"t","seqNo":7,"messageId":"m","data":"#.as_slice(),
        &ticks(4000),
        b"}",
    ]
    .concat();
    let f = compress_frame(OpCode::Text, &msg, 3, 15).unwrap();
    let payload = &f[frame::header_len(&f)..];
    let head = inflate_prefix(payload, 100).unwrap();
    assert_eq!(head, msg[..100]);
}
