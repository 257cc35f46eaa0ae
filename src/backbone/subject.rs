//! Topic names <-> NATS subjects: the documented, reversible mapping (docs/cluster.md).
//!
//! A topic's dots stay token separators, so `prices.BTC` is `<prefix>.in.prices.BTC` and an
//! operator can use NATS wildcards over the tree (`<prefix>.out.prices.>`). Inside a token every
//! byte that a subject cannot hold, or that would change its meaning, is written `%XX` (upper-case
//! hex): whitespace and control bytes, `*`, `>`, `%` itself, and every non-ASCII byte (tools and
//! NATS accounts handle ASCII subjects best). An empty token (a leading, trailing or doubled dot)
//! is written as a lone `%`, which no escape produces, so the mapping stays reversible.
//!
//! Pure: no I/O, no NATS client.

/// Appends the subject tokens of `topic` to `out` (no leading dot).
pub fn push_topic_tokens(out: &mut String, topic: &str) {
    for (i, token) in topic.split('.').enumerate() {
        if i > 0 {
            out.push('.');
        }
        if token.is_empty() {
            out.push('%');
            continue;
        }
        for &b in token.as_bytes() {
            if kept(b) {
                out.push(b as char);
            } else {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Bytes a token holds as they are (everything else is `%XX`).
fn kept(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'*' | b'>' | b'%' | b'.')
}

/// `<prefix>.<tokens of topic>`.
pub fn subject(prefix: &str, topic: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 1 + topic.len() + 8);
    s.push_str(prefix);
    s.push('.');
    push_topic_tokens(&mut s, topic);
    s
}

/// The topic of `subject` under `prefix` (`None` when it is not one of ours or not a valid
/// escape).
pub fn topic_of(prefix: &str, subject: &str) -> Option<String> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    let mut out: Vec<u8> = Vec::with_capacity(rest.len());
    for (i, token) in rest.split('.').enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        if token == "%" {
            continue;
        }
        if token.is_empty() {
            return None; // not a valid subject token
        }
        let b = token.as_bytes();
        let mut j = 0;
        while j < b.len() {
            if b[j] == b'%' {
                let hi = hex_val(*b.get(j + 1)?)?;
                let lo = hex_val(*b.get(j + 2)?)?;
                let v = hi << 4 | lo;
                // Strict: only what `push_topic_tokens` escapes may be escaped (so one topic
                // has exactly one subject, and back).
                if kept(v) || v == b'.' {
                    return None;
                }
                out.push(v);
                j += 3;
            } else if kept(b[j]) {
                out.push(b[j]);
                j += 1;
            } else {
                return None;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Whether `s` is a valid NATS subject of literal tokens (no wildcards): non-empty tokens of
/// printable ASCII without `*`, `>` or whitespace.
pub fn is_literal_subject(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_topics_keep_their_dots() {
        assert_eq!(subject("ss.in", "prices.BTC"), "ss.in.prices.BTC");
        assert_eq!(subject("ss.in", "a"), "ss.in.a");
    }

    #[test]
    fn what_subjects_cannot_hold_is_escaped() {
        assert_eq!(subject("p", "a b"), "p.a%20b");
        assert_eq!(subject("p", "prices.*"), "p.prices.%2A");
        assert_eq!(subject("p", "x>y%"), "p.x%3Ey%25");
        assert_eq!(subject("p", ".a..b."), "p.%.a.%.b.%");
        assert_eq!(subject("p", "ü"), "p.%C3%BC");
        assert_eq!(subject("p", ""), "p.%");
    }

    #[test]
    fn foreign_or_broken_subjects_have_no_topic() {
        assert_eq!(topic_of("p", "q.a"), None);
        assert_eq!(topic_of("p", "p.a%2"), None);
        assert_eq!(topic_of("p", "p.a%zz"), None);
        assert_eq!(topic_of("p", "p.%C3"), None, "not UTF-8");
        assert_eq!(topic_of("p", "p.%41"), None, "'A' is never escaped");
        assert_eq!(
            topic_of("p", "p.%2E"),
            None,
            "a dot is a separator, never escaped"
        );
        assert_eq!(topic_of("p", "p.a*"), None, "a raw wildcard");
    }

    proptest! {
        #[test]
        fn the_mapping_is_reversible_and_valid(topic in "\\PC{0,40}|[a-z.*> %]{0,20}") {
            let s = subject("ss.out", &topic);
            prop_assert!(is_literal_subject(&s), "{s}");
            prop_assert_eq!(topic_of("ss.out", &s), Some(topic.clone()));
        }

        #[test]
        fn different_topics_never_share_a_subject(a in "[a-c.%*]{0,6}", b in "[a-c.%*]{0,6}") {
            prop_assume!(a != b);
            prop_assert_ne!(subject("p", &a), subject("p", &b));
        }
    }
}
