use super::*;
use crate::ws::frame::{write_server_frame, OpCode};

fn frame(op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    write_server_frame(&mut f, op, payload);
    f
}

const MSG: &[u8] = br#"{"type":"message","topic":"a","seqNo":7,"messageId":"m-7","data":{"px":1}}"#;

#[test]
fn a_delivery_is_one_event_with_its_seq_as_id() {
    let ev = delivery_event(7, MSG);
    let mut want = b"id: 7\ndata: ".to_vec();
    want.extend_from_slice(MSG);
    want.extend_from_slice(b"\n\n");
    assert_eq!(ev, want);
    assert_eq!(event_len(&ev), Some(ev.len()));
    assert_eq!(event_json(&ev), MSG);
}

#[test]
fn line_breaks_in_a_payload_become_data_lines_and_never_a_blank_line() {
    let json = b"{\"type\":\"message\",\"topic\":\"a\",\"seqNo\":1,\"data\":{\r\n\"x\":\n\n1\r}}";
    let ev = delivery_event(1, json);
    let text = std::str::from_utf8(&ev).unwrap();
    assert_eq!(
        text,
        "id: 1\ndata: {\"type\":\"message\",\"topic\":\"a\",\"seqNo\":1,\"data\":{\ndata: \"x\":\ndata: \ndata: 1\ndata: }}\n\n"
    );
    assert_eq!(
        event_len(&ev),
        Some(ev.len()),
        "the only blank line is the last"
    );
    // What EventSource hands the page: the data lines joined by \n, still the same JSON value.
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    let joined = data.join("\n");
    let a: serde_json::Value = serde_json::from_str(&joined).unwrap();
    let b: serde_json::Value = serde_json::from_slice(json).unwrap();
    assert_eq!(a, b);
}

#[test]
fn one_topic_streams_take_the_shared_event_as_it_is() {
    let mut s = Stream::new(vec![Arc::from("a")], None);
    let ev = delivery_event(7, MSG);
    let mut out = Vec::new();
    s.push_delivery("a", 7, &ev, |b| out.extend_from_slice(b));
    assert_eq!(out, ev);
    assert_eq!(s.cursor(), "7");
}

#[test]
fn several_topic_streams_add_their_cursor_as_the_last_id() {
    let mut s = Stream::new(vec![Arc::from("a"), Arc::from("b")], Some(vec![3, 9]));
    let ev = delivery_event(7, MSG);
    let mut out = Vec::new();
    s.push_delivery("a", 7, &ev, |b| out.extend_from_slice(b));
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(text.starts_with("id: 7\ndata: "), "{text}");
    assert!(text.ends_with("}\nid: 7.9\n\n"), "{text}");
    assert_eq!(event_len(&out), Some(out.len()));
    assert_eq!(s.cursor(), "7.9");
}

#[test]
fn other_frames_become_named_events_heartbeats_or_nothing() {
    let mut s = Stream::new(vec![Arc::from("a")], None);
    let mut out = Vec::new();
    s.convert_frame(
        &frame(OpCode::Text, br#"{"type":"subscribed","topic":"a"}"#),
        &mut out,
    );
    assert_eq!(
        out,
        b"event: subscribed\ndata: {\"type\":\"subscribed\",\"topic\":\"a\"}\n\n"
    );
    out.clear();
    s.convert_frame(&frame(OpCode::Ping, b""), &mut out);
    assert_eq!(out, HEARTBEAT);
    out.clear();
    s.convert_frame(&frame(OpCode::Pong, b"x"), &mut out);
    assert!(out.is_empty());
    let mut close = 1001u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"shutting down");
    s.convert_frame(&frame(OpCode::Close, &close), &mut out);
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(text.starts_with("event: close\ndata: "), "{text}");
    let v: serde_json::Value = serde_json::from_str(
        event_json(&out)
            .iter()
            .map(|&b| b as char)
            .collect::<String>()
            .as_str(),
    )
    .unwrap();
    assert_eq!(v["code"], 1001);
    assert_eq!(v["reason"], "shutting down");
}

#[test]
fn a_replayed_delivery_frame_is_rebuilt_and_moves_the_cursor() {
    let mut s = Stream::new(vec![Arc::from("a"), Arc::from("b")], None);
    let mut out = Vec::new();
    s.convert_frame(&frame(OpCode::Text, MSG), &mut out);
    assert!(String::from_utf8(out).unwrap().ends_with("\nid: 7.0\n\n"));
    assert_eq!(s.cursor(), "7.0");
}

#[test]
fn last_event_ids_are_checked_against_the_topics() {
    assert_eq!(parse_last_event_id("", 2), Ok(None));
    assert_eq!(parse_last_event_id(" 5 ", 1), Ok(Some(vec![5])));
    assert_eq!(parse_last_event_id("5.0.12", 3), Ok(Some(vec![5, 0, 12])));
    assert!(parse_last_event_id("5.1", 1).is_err());
    assert!(parse_last_event_id("5", 2).is_err());
    assert!(parse_last_event_id("a.1", 2).is_err());
    assert!(parse_last_event_id("-1", 1).is_err());
}

#[test]
fn the_response_head_is_an_event_stream() {
    let h = String::from_utf8(response_head(2000, None)).unwrap();
    assert!(h.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(h.contains("Content-Type: text/event-stream"));
    assert!(h.ends_with("\r\n\r\nretry: 2000\n: subsocket event stream\n\n"));
}
