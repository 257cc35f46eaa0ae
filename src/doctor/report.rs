//! What `subsocket doctor` prints: the verdict of one check ([`Status`], [`Check`]), the whole
//! [`Report`], and its two renderings, text ([`Report::render_text`]) and JSON
//! ([`Report::to_json`]), with the number formats the checks' texts use (`1,234,567`,
//! `6.0 MiB`, `unlimited`).
//!
//! May not: read the host, or decide a verdict (a [`Check`] arrives here finished). The text
//! layout is what operators and tests/doctor.rs read: change it on purpose only.
//!
//! Read next: `mod.rs` again (`log_startup_checks`, the other consumer of the report).

use super::facts::UNLIMITED;
use super::model::{MemoryEstimate, Targets};
use serde::Serialize;
use std::fmt::Write as _;

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Meets what the targets need.
    Ok,
    /// Works, but costs latency, memory or some of the targets; not a blocker.
    Warn,
    /// A blocker: the gateway cannot start, or cannot reach the targets.
    Fail,
}

impl Status {
    pub(super) fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One check: what was found, what the targets need, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Short stable name (a sysctl key, `nofile`, `memory`, ...).
    pub name: &'static str,
    /// The verdict.
    pub status: Status,
    /// What the host has.
    pub found: String,
    /// What the targets need.
    pub need: String,
    /// Why it matters, in a sentence.
    pub detail: String,
    /// The command (or config change) that fixes it; `None` when ok.
    pub fix: Option<String>,
}

/// Everything `subsocket doctor` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Kernel release.
    pub kernel: Option<String>,
    /// What was planned for.
    pub targets: Targets,
    /// Cores the shards would run on (empty when the config cannot be resolved).
    pub cores: Vec<usize>,
    /// What the targets need in memory.
    pub memory: MemoryEstimate,
    /// Every check, in a fixed order.
    pub checks: Vec<Check>,
}

impl Report {
    /// Number of checks with this status.
    pub fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    /// Whether a check failed (the exit status of `subsocket doctor` is then 1).
    pub fn has_blocker(&self) -> bool {
        self.count(Status::Fail) > 0
    }

    /// The human-readable report: one line per check, the fix indented under it.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "subsocket doctor: {} connections, {} subscriptions on {} cores {:?} (kernel {})",
            group(self.targets.connections),
            group(self.targets.subscriptions),
            self.cores.len(),
            self.cores,
            self.kernel.as_deref().unwrap_or("?"),
        );
        let m = &self.memory;
        let _ = writeln!(
            s,
            "memory: {} steady (gateway: {} connections + {} subscriptions + {} base; kernel: {} sockets)\n        + {} of socket buffers while a broadcast to every connection drains",
            bytes(m.steady_bytes),
            bytes(m.connections_bytes),
            bytes(m.subscriptions_bytes),
            bytes(m.base_bytes),
            bytes(m.kernel_sockets_bytes),
            bytes(m.broadcast_buffers_bytes),
        );
        for c in &self.checks {
            let _ = writeln!(
                s,
                "{:<4}  {:<30} {}; need {}",
                c.status.label(),
                c.name,
                c.found,
                c.need,
            );
            if c.status != Status::Ok {
                let _ = writeln!(s, "      {}", c.detail);
            }
            if let Some(fix) = &c.fix {
                let _ = writeln!(s, "      fix: {fix}");
            }
        }
        let verdict = if self.has_blocker() {
            "this host cannot serve the targets: fix the failures"
        } else if self.count(Status::Warn) > 0 {
            "the host can serve the targets; the warnings cost latency, memory or headroom"
        } else {
            "the host can serve the targets"
        };
        let _ = writeln!(
            s,
            "{} ok, {} warn, {} fail: {verdict}",
            self.count(Status::Ok),
            self.count(Status::Warn),
            self.count(Status::Fail)
        );
        s
    }

    /// The report as pretty JSON (`subsocket doctor --json`).
    pub fn to_json(&self) -> String {
        // The report is plain strings and integers: serializing it cannot fail.
        serde_json::to_string_pretty(self).expect("report serializes")
    }
}

/// 1234567 -> "1,234,567".
pub(super) fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Bytes in the largest binary unit that keeps one decimal ("6.3 GiB").
pub(super) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

pub(super) fn limit(n: u64) -> String {
    if n == UNLIMITED {
        "unlimited".into()
    } else {
        group(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::fixtures::{cfg, good_host, million};
    use crate::doctor::run_checks;

    #[test]
    fn text_and_json_carry_every_check() {
        let mut h = good_host();
        h.nr_open = Some(1_000);
        let r = run_checks(&h, &cfg(), &million());
        let text = r.render_text();
        assert!(text.starts_with(
            "subsocket doctor: 1,000,000 connections, 10,000,000 subscriptions on 3 cores [1, 2, 3]"
        ));
        assert!(text.contains("fail  fs.nr_open"));
        assert!(text.contains("      fix: sysctl -w fs.nr_open=2097152"));
        assert!(text
            .trim_end()
            .ends_with("fail: this host cannot serve the targets: fix the failures"));
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["targets"]["connections"], 1_000_000);
        assert_eq!(v["checks"].as_array().unwrap().len(), r.checks.len());
        let nr = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "fs.nr_open")
            .unwrap();
        assert_eq!(nr["status"], "fail");
        assert_eq!(nr["fix"], "sysctl -w fs.nr_open=2097152");
    }

    #[test]
    fn numbers_are_grouped_and_bytes_keep_one_decimal() {
        assert_eq!(group(1_234_567), "1,234,567");
        assert_eq!(group(999), "999");
        assert_eq!(bytes(6 << 20), "6.0 MiB");
        assert_eq!(bytes(512), "512 B");
    }
}
