//! Fuzzes the Server-Sent Events encoding (`sse`): for any payload bytes, a delivery event is
//! one whole event (the out buffer's walker finds its end exactly at its end, never inside: a
//! payload's own line breaks never make a blank line), its `data:` lines joined give back the
//! payload with its line breaks as `\n`, and a stream of several topics that appends its own
//! id keeps it one event. Any frame converted for a stream, and any `Last-Event-ID`, never
//! panics.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use subsocket::sse::{delivery_event, event_len, parse_last_event_id, Stream};
use subsocket::ws::frame::{write_server_frame, OpCode};

fuzz_target!(|data: &[u8]| {
    let Some((&n, payload)) = data.split_first() else {
        return;
    };
    let ev = delivery_event(u64::from(n), payload);
    assert_eq!(event_len(&ev), Some(ev.len()), "{ev:?}");
    let text = String::from_utf8_lossy(&ev);
    let joined: Vec<&str> = text
        .split('\n')
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    let want = String::from_utf8_lossy(payload).replace("\r\n", "\n").replace('\r', "\n");
    assert_eq!(joined.join("\n"), want);

    let topics: Vec<Arc<str>> = (0..(n % 4) + 1).map(|i| Arc::from(format!("t{i}"))).collect();
    let mut s = Stream::new(topics, None);
    let mut out = Vec::new();
    s.push_delivery("t0", u64::from(n), &ev, |b| out.extend_from_slice(b));
    assert_eq!(event_len(&out), Some(out.len()), "{out:?}");

    for op in [OpCode::Text, OpCode::Ping, OpCode::Close, OpCode::Pong] {
        let mut f = Vec::new();
        write_server_frame(&mut f, op, payload);
        let mut conv = Vec::new();
        s.convert_frame(&f, &mut conv);
        if !conv.is_empty() {
            assert_eq!(event_len(&conv), Some(conv.len()), "{op:?}: {conv:?}");
        }
    }
    if let Ok(id) = std::str::from_utf8(payload) {
        let _ = parse_last_event_id(id, usize::from(n % 4) + 1);
    }
});
