//! Unit and property tests of the protocol module: parsing, encoding, and the round trip.

use super::*;
use crate::ws::frame::write_server_frame;
use crate::ws::frame::OpCode;
use std::borrow::Cow;

/// Decodes one unmasked FIN text frame by hand: returns its payload as text and the bytes
/// consumed.
fn decode_text_frame(frame: &[u8]) -> (&str, usize) {
    assert_eq!(frame[0], 0x81, "FIN + text opcode");
    assert_eq!(frame[1] & 0x80, 0, "server frames are unmasked");
    let (len, head) = match frame[1] & 0x7f {
        126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
        127 => (
            u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let text = std::str::from_utf8(&frame[head..head + len]).unwrap();
    (text, head + len)
}

/// The JSON of the single frame in `out`, checking nothing else is there.
fn only_frame(out: &[u8]) -> &str {
    let (text, used) = decode_text_frame(out);
    assert_eq!(used, out.len(), "exactly one frame");
    text
}

fn parse_ok(text: &str) -> ClientMsg<'_> {
    parse_client_msg(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn parse_err(text: &str) -> ProtoError {
    match parse_client_msg(text) {
        Ok(msg) => panic!("{text} parsed as {msg:?}"),
        Err(e) => {
            assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
            e
        }
    }
}

// The point is to inspect the `Cow` variant, which a `&str` would hide.
#[allow(clippy::ptr_arg)]
fn is_borrowed(s: &Cow<'_, str>) -> bool {
    matches!(s, Cow::Borrowed(_))
}

// ----- parsing: every message type -------------------------------------------------------

#[test]
fn setup_parses_token_and_topics() {
    let ClientMsg::Setup { token, topics } =
        parse_ok(r#"{"type":"setup","token":"tok","topics":["a","b"]}"#)
    else {
        panic!()
    };
    assert_eq!(token.as_deref(), Some("tok"));
    assert_eq!(topics, ["a", "b"]);
    assert!(topics.iter().all(is_borrowed));
}

#[test]
fn setup_without_token_or_topics_parses_empty() {
    let ClientMsg::Setup { token, topics } = parse_ok(r#"{"type":"setup"}"#) else {
        panic!()
    };
    assert!(token.is_none() && topics.is_empty());
    let ClientMsg::Setup { token, topics } =
        parse_ok(r#"{"type":"setup","token":null,"topics":null}"#)
    else {
        panic!()
    };
    assert!(token.is_none() && topics.is_empty());
}

#[test]
fn subscribe_single_topic_borrows_from_the_text() {
    let ClientMsg::Subscribe {
        topics, from_seq, ..
    } = parse_ok(r#"{"type":"subscribe","topic":"prices.btc"}"#)
    else {
        panic!()
    };
    assert_eq!(topics, Topics::One(Cow::Borrowed("prices.btc")));
    assert!(is_borrowed(&topics.as_slice()[0]));
    assert!(!topics.is_batch());
    assert_eq!(from_seq, None);
}

#[test]
fn subscribe_batch_with_from_seq_parses() {
    let ClientMsg::Subscribe {
        topics, from_seq, ..
    } = parse_ok(r#" { "type" : "subscribe", "topics" : ["a", "b", "c"], "fromSeq": 17 } "#)
    else {
        panic!()
    };
    assert!(topics.is_batch());
    assert_eq!(topics.as_slice(), ["a", "b", "c"]);
    assert_eq!(from_seq, Some(17));
}

#[test]
fn unsubscribe_single_and_batch_parse() {
    let ClientMsg::Unsubscribe { topics } = parse_ok(r#"{"type":"unsubscribe","topic":"a"}"#)
    else {
        panic!()
    };
    assert_eq!(topics, Topics::One("a".into()));
    let ClientMsg::Unsubscribe { topics } =
        parse_ok(r#"{"type":"unsubscribe","topics":["a","b"]}"#)
    else {
        panic!()
    };
    assert_eq!(topics, Topics::Many(vec!["a".into(), "b".into()]));
}

#[test]
fn publish_with_message_id_and_qos_1_parses() {
    let ClientMsg::Publish {
        topic,
        message_id,
        payload,
        qos,
    } = parse_ok(r#"{"type":"publish","topic":"t","messageId":"m-1","payload":{"a":1},"qos":1}"#)
    else {
        panic!()
    };
    assert_eq!(topic, "t");
    assert_eq!(message_id.as_deref(), Some("m-1"));
    assert_eq!(payload.get(), r#"{"a":1}"#);
    assert_eq!(qos, 1);
}

#[test]
fn publish_without_message_id_defaults_to_qos_0() {
    let ClientMsg::Publish {
        message_id, qos, ..
    } = parse_ok(r#"{"type":"publish","topic":"t","payload":1}"#)
    else {
        panic!()
    };
    assert_eq!(message_id, None);
    assert_eq!(qos, 0);
    let ClientMsg::Publish { qos, .. } =
        parse_ok(r#"{"type":"publish","topic":"t","payload":1,"qos":0}"#)
    else {
        panic!()
    };
    assert_eq!(qos, 0);
}

#[test]
fn publish_payload_is_kept_byte_for_byte() {
    let payloads = [
        r#"{ "b" : [1, 2 ,3],"a":{"x" :null} }"#,
        r#"[ 1,"two" , {"three":3.0e0} ]"#,
        r#""a \"quoted\" \\ string \u00e9 é \n""#,
        "-12.50e+3",
        "0",
        "null",
        "true",
        "false",
        r#"{"deep":[[[[{"k":"v"}]]]],"uni":"\ud83d\ude00 😀"}"#,
    ];
    for p in payloads {
        let text = format!("{{\"type\":\"publish\",\"topic\":\"t\",\"payload\":  {p}  ,\"x\":1}}");
        let ClientMsg::Publish { payload, .. } = parse_ok(&text) else {
            panic!()
        };
        assert_eq!(payload.get(), p);
    }
}

#[test]
fn escaped_topic_names_are_unescaped_and_owned() {
    let ClientMsg::Subscribe { topics, .. } =
        parse_ok(r#"{"type":"subscribe","topic":"a\"b\\c\u00e9\/d"}"#)
    else {
        panic!()
    };
    let Topics::One(topic) = topics else { panic!() };
    assert_eq!(topic, "a\"b\\cé/d");
    assert!(!is_borrowed(&topic));
    let ClientMsg::Subscribe { topics, .. } =
        parse_ok(r#"{"type":"subscribe","topics":["plain","esc\u0041ped"]}"#)
    else {
        panic!()
    };
    assert_eq!(topics.as_slice(), ["plain", "escAped"]);
    assert!(is_borrowed(&topics.as_slice()[0]));
}

#[test]
fn escaped_field_names_are_recognized() {
    let msg = parse_ok(r#"{"\u0074ype":"sub\u0073cribe","\u0074opic":"a"}"#);
    assert!(matches!(msg, ClientMsg::Subscribe { .. }));
}

#[test]
fn ack_parses_by_message_id_or_topic_and_seq_no() {
    let ClientMsg::Ack {
        message_id,
        topic,
        seq_no,
    } = parse_ok(r#"{"type":"ack","messageId":"m"}"#)
    else {
        panic!()
    };
    assert_eq!(
        (message_id.as_deref(), topic, seq_no),
        (Some("m"), None, None)
    );
    let ClientMsg::Ack {
        message_id,
        topic,
        seq_no,
    } = parse_ok(r#"{"type":"ack","topic":"t","seqNo":9}"#)
    else {
        panic!()
    };
    assert_eq!(
        (message_id, topic.as_deref(), seq_no),
        (None, Some("t"), Some(9))
    );
}

#[test]
fn replay_parses() {
    let ClientMsg::Replay { topic, from_seq } =
        parse_ok(r#"{"type":"replay","topic":"t","fromSeq":18446744073709551615}"#)
    else {
        panic!()
    };
    assert_eq!((&*topic, from_seq), ("t", u64::MAX));
}

#[test]
fn resume_parses_last_seq_per_topic_in_order() {
    let ClientMsg::Resume {
        session_id,
        last_seq_per_topic,
    } = parse_ok(
        r#"{"type":"resume","sessionId":"s-1","lastSeqPerTopic":{"b":2,"a":1,"\u00e9":0}}"#,
    )
    else {
        panic!()
    };
    assert_eq!(session_id, "s-1");
    assert_eq!(
        last_seq_per_topic,
        [("b".into(), 2), ("a".into(), 1), ("é".into(), 0)]
    );
    let ClientMsg::Resume {
        last_seq_per_topic, ..
    } = parse_ok(r#"{"type":"resume","sessionId":"s"}"#)
    else {
        panic!()
    };
    assert!(last_seq_per_topic.is_empty());
}

#[test]
fn ping_parses_and_unknown_fields_are_ignored() {
    let msg = parse_ok(r#"{"extra":{"nested":[1,2]},"type":"ping","more":null}"#);
    assert!(matches!(msg, ClientMsg::Ping));
    assert_eq!(msg.kind(), "ping");
}

// ----- parsing: every error case -----------------------------------------------------------

#[test]
fn malformed_json_is_bad_request() {
    for text in [
        "",
        "{",
        "nope",
        r#"{"type":"ping",}"#,
        r#"{"type":"ping"} x"#,
        "{'a':1}",
    ] {
        let e = parse_err(text);
        assert!(e.message.starts_with("malformed JSON: "), "{text}: {e}");
    }
}

#[test]
fn json_that_is_not_an_object_is_bad_request() {
    for text in ["[1,2]", r#""ping""#, "42", "null", " true "] {
        assert_eq!(parse_err(text).message, "message must be a JSON object");
    }
}

#[test]
fn missing_or_non_string_type_is_bad_request_naming_the_topic() {
    let e = parse_err(r#"{"topic":"t","messageId":"m"}"#);
    assert_eq!(e.message, "missing field 'type'");
    assert_eq!(e.topic.as_deref(), Some("t"));
    assert_eq!(e.message_id.as_deref(), Some("m"));
    let e = parse_err(r#"{"type":3,"topic":"t"}"#);
    assert_eq!(e.message, "field 'type' must be a string");
    assert_eq!(e.topic.as_deref(), Some("t"));
}

#[test]
fn unknown_type_is_named_in_the_error() {
    assert_eq!(parse_err(r#"{"type":"x"}"#).message, "unknown type 'x'");
    let long = "y".repeat(500);
    let e = parse_err(&format!(r#"{{"type":"{long}"}}"#));
    assert!(e.message.len() < 100, "echo is truncated: {}", e.message);
}

#[test]
fn subscribe_needs_exactly_one_of_topic_and_topics() {
    assert_eq!(
        parse_err(r#"{"type":"subscribe"}"#).message,
        "missing field 'topic' (or 'topics')"
    );
    let e = parse_err(r#"{"type":"subscribe","topic":"a","topics":["b"]}"#);
    assert_eq!(e.message, "use either 'topic' or 'topics', not both");
    assert_eq!(e.topic.as_deref(), Some("a"));
    assert_eq!(
        parse_err(r#"{"type":"unsubscribe","topics":[]}"#).message,
        "field 'topics' must not be empty"
    );
    assert_eq!(
        parse_err(r#"{"type":"subscribe","topics":["a",1]}"#).message,
        "field 'topics' must be an array of strings"
    );
    assert_eq!(
        parse_err(r#"{"type":"subscribe","topics":"a"}"#).message,
        "field 'topics' must be an array of strings"
    );
    assert_eq!(
        parse_err(r#"{"type":"subscribe","topic":["a"]}"#).message,
        "field 'topic' must be a string"
    );
    let e = parse_err(r#"{"type":"subscribe","topic":"a","fromSeq":-1}"#);
    assert_eq!(e.message, "field 'fromSeq' must be a non-negative integer");
    assert_eq!(e.topic.as_deref(), Some("a"));
}

#[test]
fn publish_errors_name_the_topic_and_message_id() {
    let e = parse_err(r#"{"type":"publish","topic":"t","messageId":"m"}"#);
    assert_eq!(e.message, "missing field 'payload'");
    assert_eq!(
        (e.topic.as_deref(), e.message_id.as_deref()),
        (Some("t"), Some("m"))
    );
    for qos in ["2", "-1", "1.5", r#""1""#, "true"] {
        let e = parse_err(&format!(
            r#"{{"type":"publish","topic":"t","messageId":"m","payload":1,"qos":{qos}}}"#
        ));
        assert_eq!(e.message, "field 'qos' must be 0 or 1", "qos {qos}");
        assert_eq!(
            (e.topic.as_deref(), e.message_id.as_deref()),
            (Some("t"), Some("m"))
        );
    }
    let e = parse_err(r#"{"type":"publish","messageId":"m","payload":1}"#);
    assert_eq!(e.message, "missing field 'topic'");
    assert_eq!(e.message_id.as_deref(), Some("m"));
    assert_eq!(
        parse_err(r#"{"type":"publish","topic":null,"payload":1}"#).message,
        "field 'topic' must be a string"
    );
}

#[test]
fn message_id_must_be_a_short_non_empty_string() {
    let ok = "m".repeat(MAX_MESSAGE_ID_BYTES);
    let text = format!(r#"{{"type":"publish","topic":"t","messageId":"{ok}","payload":1}}"#);
    assert!(matches!(parse_ok(&text), ClientMsg::Publish { .. }));
    let long = "m".repeat(MAX_MESSAGE_ID_BYTES + 1);
    let e = parse_err(&format!(
        r#"{{"type":"publish","topic":"t","messageId":"{long}","payload":1}}"#
    ));
    assert_eq!(e.message, "field 'messageId' is longer than 128 bytes");
    assert_eq!(e.topic.as_deref(), Some("t"));
    assert_eq!(e.message_id, None, "an over-long id is not echoed");
    assert_eq!(
        parse_err(r#"{"type":"publish","topic":"t","messageId":"","payload":1}"#).message,
        "field 'messageId' must not be empty"
    );
    assert_eq!(
        parse_err(r#"{"type":"publish","topic":"t","messageId":7,"payload":1}"#).message,
        "field 'messageId' must be a string"
    );
    assert_eq!(
        parse_err(&format!(r#"{{"type":"ack","messageId":"{long}"}}"#)).message,
        "field 'messageId' is longer than 128 bytes"
    );
}

#[test]
fn ack_without_message_id_or_topic_and_seq_no_is_bad_request() {
    for text in [
        r#"{"type":"ack"}"#,
        r#"{"type":"ack","topic":"t"}"#,
        r#"{"type":"ack","seqNo":3}"#,
    ] {
        assert_eq!(
            parse_err(text).message,
            "ack needs 'messageId' (or 'topic' with 'seqNo')"
        );
    }
    assert_eq!(
        parse_err(r#"{"type":"ack","messageId":"m","seqNo":"3"}"#).message,
        "field 'seqNo' must be a non-negative integer"
    );
}

#[test]
fn replay_needs_topic_and_from_seq() {
    assert_eq!(
        parse_err(r#"{"type":"replay","fromSeq":1}"#).message,
        "missing field 'topic'"
    );
    let e = parse_err(r#"{"type":"replay","topic":"t"}"#);
    assert_eq!(e.message, "missing field 'fromSeq'");
    assert_eq!(e.topic.as_deref(), Some("t"));
    assert_eq!(
        parse_err(r#"{"type":"replay","topic":"t","fromSeq":null}"#).message,
        "field 'fromSeq' must be a non-negative integer"
    );
    assert_eq!(
        parse_err(r#"{"type":"replay","topic":"t","fromSeq":18446744073709551616}"#).message,
        "field 'fromSeq' must be a non-negative integer"
    );
}

#[test]
fn resume_errors_name_the_rule() {
    assert_eq!(
        parse_err(r#"{"type":"resume"}"#).message,
        "missing field 'sessionId'"
    );
    assert_eq!(
        parse_err(r#"{"type":"resume","sessionId":""}"#).message,
        "field 'sessionId' must not be empty"
    );
    for bad in [r#"[1]"#, r#"{"a":-1}"#, r#"{"a":"1"}"#, "3"] {
        assert_eq!(
            parse_err(&format!(
                r#"{{"type":"resume","sessionId":"s","lastSeqPerTopic":{bad}}}"#
            ))
            .message,
            "field 'lastSeqPerTopic' must be an object of topic -> seqNo (a non-negative integer)"
        );
    }
    assert_eq!(
        parse_err(r#"{"type":"resume","sessionId":"s","lastSeqPerTopic":{"a":1,"\u0061":2}}"#)
            .message,
        "topic 'a' given twice in 'lastSeqPerTopic'"
    );
}

#[test]
fn a_known_field_given_twice_is_bad_request() {
    let e = parse_err(r#"{"type":"subscribe","topic":"a","topic":"b"}"#);
    assert_eq!(e.message, "field 'topic' given more than once");
    // Unknown fields may repeat: they are ignored.
    assert!(matches!(
        parse_ok(r#"{"type":"ping","x":1,"x":2}"#),
        ClientMsg::Ping
    ));
}

#[test]
fn validate_topic_rejects_empty_long_and_control_characters() {
    assert!(validate_topic("prices.btc", 16).is_ok());
    assert!(validate_topic("é", 2).is_ok());
    let e = validate_topic("", 16).unwrap_err();
    assert_eq!(e.message, "topic must not be empty");
    let e = validate_topic("abcdef", 5).unwrap_err();
    assert_eq!(
        (e.code, &*e.message),
        (ErrorCode::BadRequest, "topic is longer than 5 bytes")
    );
    assert_eq!(e.topic.as_deref(), Some("abcdef"));
    for t in ["a\nb", "\0", "x\u{7f}", "tab\there"] {
        let e = validate_topic(t, 64).unwrap_err();
        assert_eq!(e.message, "topic must not contain control characters");
        assert_eq!(e.topic.as_deref(), Some(t));
    }
}

#[test]
fn error_codes_have_their_wire_words() {
    let all = [
        (ErrorCode::BadRequest, "BAD_REQUEST"),
        (ErrorCode::Unauthorized, "UNAUTHORIZED"),
        (ErrorCode::Forbidden, "FORBIDDEN"),
        (ErrorCode::TooLarge, "TOO_LARGE"),
        (ErrorCode::LimitExceeded, "LIMIT_EXCEEDED"),
        (ErrorCode::RateLimited, "RATE_LIMITED"),
        (ErrorCode::SessionExpired, "SESSION_EXPIRED"),
        (ErrorCode::ReplayUnavailable, "REPLAY_UNAVAILABLE"),
        (ErrorCode::SingleTopic, "SINGLE_TOPIC"),
        (ErrorCode::SlowConsumer, "SLOW_CONSUMER"),
        (ErrorCode::Internal, "INTERNAL_ERROR"),
        (ErrorCode::BackboneUnavailable, "BACKBONE_UNAVAILABLE"),
    ];
    for (code, word) in all {
        assert_eq!(code.as_str(), word);
    }
}

// ----- encoders: exact bytes ---------------------------------------------------------------

#[test]
fn control_encoders_write_exact_json_in_one_text_frame() {
    type Encoder = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(Encoder, &str)> = vec![
        (
            Box::new(|o| encode_ready(o, "s-1")),
            r#"{"type":"ready","sessionId":"s-1"}"#,
        ),
        (
            Box::new(|o| encode_resumed(o, "s-\"2\"")),
            r#"{"type":"resumed","sessionId":"s-\"2\""}"#,
        ),
        (Box::new(encode_pong), r#"{"type":"pong"}"#),
        (
            Box::new(|o| encode_subscribed(o, &["a"], false)),
            r#"{"type":"subscribed","topic":"a"}"#,
        ),
        (
            Box::new(|o| encode_subscribed(o, &["a", "b"], true)),
            r#"{"type":"subscribed","topics":["a","b"]}"#,
        ),
        (
            Box::new(|o| encode_subscribed(o, &["a"], true)),
            r#"{"type":"subscribed","topics":["a"]}"#,
        ),
        (
            Box::new(|o| encode_unsubscribed(o, &["q\"\\é\n"], false)),
            r#"{"type":"unsubscribed","topic":"q\"\\é\n"}"#,
        ),
        (
            Box::new(|o| encode_unsubscribed(o, &["a", "b"], true)),
            r#"{"type":"unsubscribed","topics":["a","b"]}"#,
        ),
        (
            Box::new(|o| encode_ack(o, "m-1", AckStatus::Ok, Some(42))),
            r#"{"type":"ack","messageId":"m-1","status":"ok","seqNo":42}"#,
        ),
        (
            Box::new(|o| encode_ack(o, "m", AckStatus::Duplicate, None)),
            r#"{"type":"ack","messageId":"m","status":"duplicate"}"#,
        ),
        (
            Box::new(|o| encode_error(o, &ProtoError::new(ErrorCode::SessionExpired, "gone"))),
            r#"{"type":"error","code":"SESSION_EXPIRED","message":"gone"}"#,
        ),
        (
            Box::new(|o| {
                encode_error(
                    o,
                    &ProtoError::new(ErrorCode::Forbidden, "no \"write\"")
                        .with_topic("t\\1")
                        .with_message_id("m\u{1}"),
                )
            }),
            r#"{"type":"error","code":"FORBIDDEN","message":"no \"write\"","topic":"t\\1","messageId":"m\u0001"}"#,
        ),
    ];
    for (encode, expected) in cases {
        let mut out = b"prefix".to_vec();
        encode(&mut out);
        assert_eq!(&out[..6], b"prefix", "appends after existing bytes");
        assert_eq!(only_frame(&out[6..]), expected);
        // The same bytes the frame module would produce from the JSON.
        let mut reference = Vec::new();
        write_server_frame(&mut reference, OpCode::Text, expected.as_bytes());
        assert_eq!(&out[6..], reference);
    }
}

#[test]
fn control_frames_over_125_bytes_get_an_extended_header() {
    let long = "s".repeat(300);
    let mut out = Vec::new();
    encode_ready(&mut out, &long);
    assert_eq!(out[1], 126);
    assert_eq!(
        only_frame(&out),
        format!(r#"{{"type":"ready","sessionId":"{long}"}}"#)
    );
}

#[test]
fn encoders_append_consecutive_frames() {
    let mut out = Vec::new();
    encode_pong(&mut out);
    encode_ack(&mut out, "m", AckStatus::Ok, Some(1));
    let (first, used) = decode_text_frame(&out);
    assert_eq!(first, r#"{"type":"pong"}"#);
    assert_eq!(
        only_frame(&out[used..]),
        r#"{"type":"ack","messageId":"m","status":"ok","seqNo":1}"#
    );
}

#[test]
fn message_frame_is_exact_and_keeps_data_byte_for_byte() {
    let frame = encode_message_frame("pr\"ic\\es.é", 42, "m-1", br#"{ "a" : [1, 2] }"#);
    assert_eq!(
        only_frame(&frame),
        r#"{"type":"message","topic":"pr\"ic\\es.é","seqNo":42,"messageId":"m-1","data":{ "a" : [1, 2] }}"#
    );
    let frame = encode_message_frame("t", u64::MAX, "id", b"null");
    assert_eq!(
        only_frame(&frame),
        r#"{"type":"message","topic":"t","seqNo":18446744073709551615,"messageId":"id","data":null}"#
    );
    let frame = encode_message_frame("t", 0, "id", b"0");
    assert!(only_frame(&frame).contains(r#""seqNo":0,"#));
}

#[test]
fn delivery_head_reads_back_topic_and_seq_no() {
    for (topic, seq) in [("pr\"ic\\es.é", 42u64), ("t", u64::MAX), ("a.b", 0)] {
        let frame = encode_message_frame(topic, seq, "m", b"1");
        let payload = only_frame(&frame);
        let head = delivery_head(payload.as_bytes()).unwrap();
        assert_eq!(
            (head.topic.as_str(), head.seq_no, head.qos1),
            (topic, seq, false)
        );
    }
    let signed = encode_message_frame_with(
        "s",
        7,
        "m",
        &FrameExtras {
            qos1: true,
            signature: Some(("k", "ab")),
        },
        b"{}",
    );
    assert_eq!(
        delivery_head(only_frame(&signed).as_bytes()),
        Some(DeliveryHead {
            topic: "s".into(),
            seq_no: 7,
            qos1: true
        })
    );
    let data_says_qos = encode_message_frame("t", 1, "m", br#"{"qos":1}"#);
    assert!(
        !delivery_head(only_frame(&data_says_qos).as_bytes())
            .unwrap()
            .qos1
    );
    for other in [
        &br#"{"type":"error","code":"X","message":"m"}"#[..],
        br#"{"type":"message","topic":"t","seqNo":,"#,
        br#"{"type":"message","topic":"t"#,
        b"",
    ] {
        assert_eq!(
            delivery_head(other),
            None,
            "{}",
            String::from_utf8_lossy(other)
        );
    }
}

#[test]
fn an_error_names_a_dropped_range() {
    let e = ProtoError::new(ErrorCode::SlowConsumer, "m")
        .with_topic("t")
        .with_range(5, 9);
    let mut out = Vec::new();
    encode_error(&mut out, &e);
    assert_eq!(
        only_frame(&out),
        r#"{"type":"error","code":"SLOW_CONSUMER","message":"m","topic":"t","fromSeq":5,"toSeq":9}"#
    );
}

#[test]
fn message_frame_headers_are_correct_at_length_boundaries() {
    let fixed = only_frame(&encode_message_frame("t", 1, "m", br#""""#)).len();
    for (json_len, head) in [
        (125usize, vec![0x81, 125]),
        (126, vec![0x81, 126, 0, 126]),
        (65535, vec![0x81, 126, 0xff, 0xff]),
        (65536, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        (65537, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 1]),
    ] {
        let data = format!("\"{}\"", "x".repeat(json_len - fixed));
        let frame = encode_message_frame("t", 1, "m", data.as_bytes());
        assert_eq!(frame.len(), head.len() + json_len, "json length {json_len}");
        assert_eq!(&frame[..head.len()], &head[..], "json length {json_len}");
        let text = only_frame(&frame);
        assert!(text.ends_with(&format!(r#""data":{data}}}"#)));
        let mut reference = Vec::new();
        write_server_frame(&mut reference, OpCode::Text, text.as_bytes());
        assert_eq!(&frame[..], &reference[..]);
    }
}

#[test]
fn a_parsed_publish_round_trips_into_a_delivery() {
    let text =
        r#"{"type":"publish","topic":"a\u0022b","messageId":"m","payload":[ 1 , {"x":"\n"} ]}"#;
    let ClientMsg::Publish {
        topic,
        message_id,
        payload,
        ..
    } = parse_ok(text)
    else {
        panic!()
    };
    let frame = encode_message_frame(
        &topic,
        7,
        message_id.as_deref().unwrap(),
        payload.get().as_bytes(),
    );
    let json = only_frame(&frame);
    let value: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(value["topic"], "a\"b");
    assert_eq!(value["seqNo"], 7);
    assert!(json.ends_with(r#""data":[ 1 , {"x":"\n"} ]}"#));
}

#[test]
fn parse_delivery_reads_back_an_encoded_message_frame() {
    let frame = encode_message_frame("t\"é", 3, "m", br#"{ "k" : null }"#);
    let d = parse_delivery(only_frame(&frame)).unwrap();
    assert_eq!((&*d.topic, d.seq_no, &*d.message_id), ("t\"é", 3, "m"));
    assert_eq!(d.data.get(), r#"{ "k" : null }"#);
    assert!(parse_delivery(r#"{"type":"ack","messageId":"m"}"#).is_err());
    assert!(parse_delivery("[]").is_err());
}

#[test]
fn publish_result_json_is_exact() {
    assert_eq!(
        publish_result_json(5, "m\"1", AckStatus::Ok),
        br#"{"seqNo":5,"messageId":"m\"1","status":"ok"}"#
    );
    assert_eq!(
        publish_result_json(0, "m", AckStatus::Duplicate),
        br#"{"seqNo":0,"messageId":"m","status":"duplicate"}"#
    );
}

#[test]
fn subscribe_with_latest_parses_and_excludes_from_seq() {
    let ClientMsg::Subscribe {
        from_seq, latest, ..
    } = parse_client_msg(r#"{"type":"subscribe","topic":"px","latest":true}"#).unwrap()
    else {
        panic!("not a subscribe");
    };
    assert_eq!((from_seq, latest), (None, true));
    let ClientMsg::Subscribe { latest, .. } =
        parse_client_msg(r#"{"type":"subscribe","topic":"px","latest":null}"#).unwrap()
    else {
        panic!("not a subscribe");
    };
    assert!(!latest);
    let e = parse_client_msg(r#"{"type":"subscribe","topic":"px","latest":true,"fromSeq":3}"#)
        .unwrap_err();
    assert!(e.message.contains("exclude"), "{}", e.message);
    let e = parse_client_msg(r#"{"type":"subscribe","topic":"px","latest":1}"#).unwrap_err();
    assert!(e.message.contains("true or false"), "{}", e.message);
}
