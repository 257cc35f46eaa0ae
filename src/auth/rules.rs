//! Topic rules: [`TopicPattern`] (an exact name, `prices.*` or `*`), [`Access`] (read or
//! write), and [`Grants`], the rules an identity holds.
//!
//! Lives here: parsing and matching one rule, and the union of rule sets (duplicates skipped,
//! `*` kept first). May touch: [`GrantsConfig`] (the rules as written). May not: know about
//! tokens, keys, identities or the protocol; it is pure data and matching.
//!
//! Read next: `identity.rs`, who holds [`Grants`] and how a refusal is reported.

use std::fmt;
use std::str::FromStr;

use super::GrantsConfig;

/// One topic rule: an exact name, a prefix wildcard `prices.*`, or `*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicPattern(PatternKind);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PatternKind {
    /// `*`: every topic.
    All,
    /// `prices.*`, stored as `prices.` (with the dot): topics that start with it and are longer.
    Prefix(Box<str>),
    /// A topic name compared byte for byte.
    Exact(Box<str>),
}

impl TopicPattern {
    /// The rule that matches every topic.
    pub fn all() -> Self {
        TopicPattern(PatternKind::All)
    }

    /// Parses `*`, `name.*` or an exact name. Refuses an empty rule, a `*` anywhere but as the
    /// whole rule or a final `.*` (`a.*.b`, `*x`, `a*`), and `.*` with nothing before the dot.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty topic rule".to_owned());
        }
        if s == "*" {
            return Ok(TopicPattern(PatternKind::All));
        }
        let (body, is_prefix) = match s.strip_suffix(".*") {
            Some(body) => (body, true),
            None => (s, false),
        };
        if body.contains('*') {
            return Err(format!(
                "topic rule {s:?}: `*` may only be the whole rule or a final `.*`"
            ));
        }
        if body.bytes().any(|b| b.is_ascii_control()) {
            return Err(format!(
                "topic rule {s:?} must not contain control characters"
            ));
        }
        if is_prefix {
            if body.is_empty() {
                return Err(format!(
                    "topic rule {s:?}: nothing before `.*` (use `*` for every topic)"
                ));
            }
            // Keep the dot: `prices.*` must not match `pricesX`.
            Ok(TopicPattern(PatternKind::Prefix(
                s[..s.len() - 1].to_owned().into_boxed_str(),
            )))
        } else {
            Ok(TopicPattern(PatternKind::Exact(
                s.to_owned().into_boxed_str(),
            )))
        }
    }

    /// Whether `topic` falls under this rule. O(length of the rule).
    pub fn matches(&self, topic: &str) -> bool {
        match &self.0 {
            PatternKind::All => true,
            PatternKind::Prefix(prefix) => {
                topic.len() > prefix.len() && topic.starts_with(&**prefix)
            }
            PatternKind::Exact(name) => topic == &**name,
        }
    }
}

impl FromStr for TopicPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        TopicPattern::parse(s)
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            PatternKind::All => f.write_str("*"),
            PatternKind::Prefix(prefix) => write!(f, "{prefix}*"),
            PatternKind::Exact(name) => f.write_str(name),
        }
    }
}

/// Which right a check asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `subscribe`, `replay`, `resume`: receiving a topic's messages.
    Read,
    /// `publish` (WebSocket or HTTP).
    Write,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Read => "read",
            Access::Write => "write",
        })
    }
}

/// What an identity may do: the topics it may read and those it may write.
///
/// Checks are a linear scan of the rules (an identity has a handful); `*` is kept first when
/// present, so full access answers at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Rules for `subscribe`, `replay` and `resume`.
    pub read: Vec<TopicPattern>,
    /// Rules for `publish`.
    pub write: Vec<TopicPattern>,
}

impl Grants {
    /// Read and write everything (`mode = "none"`).
    pub fn full() -> Self {
        Grants {
            read: vec![TopicPattern::all()],
            write: vec![TopicPattern::all()],
        }
    }

    /// Whether these grants allow reading `topic`.
    pub fn can_read(&self, topic: &str) -> bool {
        self.read.iter().any(|p| p.matches(topic))
    }

    /// Whether these grants allow writing `topic`.
    pub fn can_write(&self, topic: &str) -> bool {
        self.write.iter().any(|p| p.matches(topic))
    }

    /// Whether these grants allow `access` to `topic`.
    pub fn allows(&self, access: Access, topic: &str) -> bool {
        match access {
            Access::Read => self.can_read(topic),
            Access::Write => self.can_write(topic),
        }
    }

    /// Parses a config entry; `context` (e.g. `auth.roles.admin`) prefixes error messages.
    pub fn from_config(cfg: &GrantsConfig, context: &str) -> Result<Self, String> {
        let parse = |rules: &[String], field: &str| -> Result<Vec<TopicPattern>, String> {
            let mut out = Vec::with_capacity(rules.len());
            for rule in rules {
                let pattern =
                    TopicPattern::parse(rule).map_err(|e| format!("{context}.{field}: {e}"))?;
                push_unique(&mut out, pattern);
            }
            Ok(out)
        };
        Ok(Grants {
            read: parse(&cfg.read, "read")?,
            write: parse(&cfg.write, "write")?,
        })
    }

    /// Adds `other`'s rules to these (a union), skipping duplicates.
    pub fn extend(&mut self, other: &Grants) {
        for p in &other.read {
            push_unique(&mut self.read, p.clone());
        }
        for p in &other.write {
            push_unique(&mut self.write, p.clone());
        }
    }
}

/// Appends `p` unless already present; `*` goes first so a full grant matches on the first try.
pub(super) fn push_unique(rules: &mut Vec<TopicPattern>, p: TopicPattern) {
    if rules.contains(&p) {
        return;
    }
    if p.0 == PatternKind::All {
        rules.insert(0, p);
    } else {
        rules.push(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> TopicPattern {
        TopicPattern::parse(s).expect("valid pattern")
    }

    // --- patterns ------------------------------------------------------------------------------

    #[test]
    fn prefix_wildcard_matches_only_below_the_dot() {
        let rule = p("prices.*");
        assert!(rule.matches("prices.BTC"));
        assert!(rule.matches("prices.BTC.usd"));
        assert!(!rule.matches("prices"));
        assert!(!rule.matches("prices."));
        assert!(!rule.matches("pricesX"));
        assert!(!rule.matches("pricesX.BTC"));
        assert!(!rule.matches("other.prices.BTC"));
        assert_eq!(rule.to_string(), "prices.*");
    }

    #[test]
    fn star_matches_everything_and_exact_matches_itself() {
        assert!(p("*").matches("anything"));
        assert!(p("*").matches("a.b.c"));
        let exact = p("orders.42");
        assert!(exact.matches("orders.42"));
        assert!(!exact.matches("orders.420"));
        assert!(!exact.matches("orders.4"));
        assert_eq!(exact.to_string(), "orders.42");
        assert!(p("a.b.*").matches("a.b.c"));
        assert!(!p("a.b.*").matches("a.bc"));
    }

    #[test]
    fn misplaced_stars_and_empty_rules_are_refused() {
        for bad in [
            "", "a.*.b", "*x", "x*", "a*.b", "*.*", ".*", "**", "a.**", "a\u{1}b",
        ] {
            assert!(
                TopicPattern::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn grants_union_keeps_star_first_and_skips_duplicates() {
        let mut g = Grants::from_config(
            &GrantsConfig {
                read: vec!["a".into(), "a".into(), "b.*".into()],
                write: vec![],
            },
            "t",
        )
        .unwrap();
        assert_eq!(g.read, vec![p("a"), p("b.*")]);
        g.extend(&Grants::full());
        assert_eq!(g.read, vec![p("*"), p("a"), p("b.*")]);
        assert!(g.can_write("z"));
        let err = Grants::from_config(
            &GrantsConfig {
                read: vec![],
                write: vec!["a.*.b".into()],
            },
            "auth.roles.x",
        )
        .unwrap_err();
        assert!(err.starts_with("auth.roles.x.write: "), "{err}");
    }
}
