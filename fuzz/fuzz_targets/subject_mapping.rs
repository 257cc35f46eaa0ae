//! Fuzzes the cluster's topic <-> NATS subject mapping (`backbone::subject`): for any UTF-8
//! topic the subject is a valid literal NATS subject (non-empty tokens of printable ASCII, no
//! wildcard) and maps back to the same topic; for any string, `topic_of` never panics, and what
//! it accepts maps back to that very subject (the mapping is one-to-one both ways).

#![no_main]

use libfuzzer_sys::fuzz_target;
use subsocket::backbone::subject::{is_literal_subject, subject, topic_of};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let s = subject("ss.out", text);
    assert!(is_literal_subject(&s), "{text:?} -> {s:?}");
    assert_eq!(topic_of("ss.out", &s).as_deref(), Some(text), "{s:?}");
    if let Some(t) = topic_of("ss.out", text) {
        assert_eq!(subject("ss.out", &t), text, "{text:?} decodes to {t:?}");
    }
});
