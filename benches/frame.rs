//! Frame and message codecs: what building one delivery frame, writing one server frame,
//! decoding one client frame and parsing one client message cost.
//!
//! `encode_message_frame` runs once per publish (on the topic's owner core); the rest run once
//! per frame a connection sends or receives. Nothing is pinned: these measure the pure codecs on
//! whatever core runs the bench.
//!
//! Run: `cargo bench --bench frame`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use subsocket::protocol::{encode_message_frame, parse_client_msg, ClientMsg};
use subsocket::ws::frame::{
    server_header, write_client_frame, write_server_frame, Decoder, Message, OpCode, Role,
    MAX_SERVER_HEADER_BYTES,
};

/// Benchmark names are padded to this width with `_` so they line up in the output.
const NAME_WIDTH: usize = 40;
/// The payload sizes of a delivery: a small event, a typical document, a large blob (the
/// default `max_message_bytes`). They cover the 2-, 4- and 10-byte frame header forms.
const PAYLOAD_SIZES: [(usize, &str); 3] = [(64, "64B"), (1024, "1KiB"), (64 * 1024, "64KiB")];
/// Topic of the benchmark deliveries.
const TOPIC: &str = "chat.room.42";
/// A gateway-made message id (same shape as `IdGen`'s).
const MESSAGE_ID: &str = "01HZX3K4M5N6P7Q8-000000000042";
/// A typical client publish (object payload, explicit id and qos).
const PUBLISH: &str = r#"{"type":"publish","topic":"chat.room.42","messageId":"c-1700000000000-42","payload":{"user":"alice","text":"hello there, how is everyone today?","ts":1700000000000},"qos":1}"#;
/// A typical client subscribe.
const SUBSCRIBE: &str = r#"{"type":"subscribe","topic":"chat.room.42"}"#;

/// `name` padded with `_` to [`NAME_WIDTH`].
fn padded(name: &str) -> String {
    format!("{name:_<NAME_WIDTH$}")
}

/// A JSON string value of exactly `len` bytes, quotes included.
fn json_string(len: usize) -> Vec<u8> {
    assert!(len >= 2);
    let mut v = Vec::with_capacity(len);
    v.push(b'"');
    v.extend((0..len - 2).map(|i| b'a' + (i % 26) as u8));
    v.push(b'"');
    v
}

fn frame(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));

    // One delivery frame per publish: allocation, JSON envelope, header, `Bytes`.
    for (size, label) in PAYLOAD_SIZES {
        let data = json_string(size);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(padded(&format!("encode_message_frame_{label}")), |b| {
            let mut seq_no = 0u64;
            b.iter(|| {
                seq_no += 1;
                black_box(encode_message_frame(
                    black_box(TOPIC),
                    seq_no,
                    black_box(MESSAGE_ID),
                    black_box(&data),
                ))
            })
        });
    }

    // A server frame appended to a buffer that is cleared and reused, as replies are.
    for (size, label) in PAYLOAD_SIZES {
        let payload = json_string(size);
        let mut out = Vec::with_capacity(MAX_SERVER_HEADER_BYTES + size);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(
            padded(&format!("write_server_frame_reused_vec_{label}")),
            |b| {
                b.iter(|| {
                    out.clear();
                    write_server_frame(&mut out, OpCode::Text, black_box(&payload));
                    black_box(out.len())
                })
            },
        );
    }

    // The client side (load generator, tests): header, copy and mask.
    let payload = json_string(100);
    let mut client_frame = Vec::with_capacity(128);
    g.throughput(Throughput::Bytes(payload.len() as u64));
    g.bench_function(padded("write_client_frame_masked_100B"), |b| {
        b.iter(|| {
            client_frame.clear();
            write_client_frame(
                &mut client_frame,
                OpCode::Text,
                black_box(&payload),
                [0x37, 0xfa, 0x21, 0x3d],
                true,
            );
            black_box(client_frame.len())
        })
    });

    // One masked 100-byte text frame from a client: header rules, unmask, UTF-8 check, the
    // message handed out as its own `Vec`.
    let mut decoder = Decoder::new(Role::Server, 64 * 1024);
    match decoder.decode(&client_frame) {
        Ok(Some((n, Some(Message::Text(text))))) if n == client_frame.len() => {
            assert_eq!(text, payload);
        }
        other => panic!("the benchmark frame does not decode: {other:?}"),
    }
    g.bench_function(padded("decoder_masked_text_100B"), |b| {
        b.iter(|| black_box(decoder.decode(black_box(&client_frame))))
    });

    g.finish();

    // Per-call costs, no throughput line.
    let mut g = c.benchmark_group("frame_op");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    g.bench_function(padded("server_header_1KiB"), |b| {
        let mut head = [0u8; MAX_SERVER_HEADER_BYTES];
        b.iter(|| black_box(server_header(OpCode::Text, black_box(1024), &mut head)))
    });
    assert!(matches!(
        parse_client_msg(PUBLISH),
        Ok(ClientMsg::Publish { qos: 1, .. })
    ));
    g.bench_function(padded("parse_client_msg_publish"), |b| {
        b.iter(|| black_box(parse_client_msg(black_box(PUBLISH))))
    });
    assert!(matches!(
        parse_client_msg(SUBSCRIBE),
        Ok(ClientMsg::Subscribe { .. })
    ));
    g.bench_function(padded("parse_client_msg_subscribe"), |b| {
        b.iter(|| black_box(parse_client_msg(black_box(SUBSCRIBE))))
    });
    g.finish();
}

criterion_group!(benches, frame);
criterion_main!(benches);
