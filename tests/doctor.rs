//! `subsocket doctor` as a user runs it: the built binary, its output format and exit codes;
//! and the gateway's startup checks, which only log. The decisions themselves are unit-tested
//! in `src/doctor/` against hand-made hosts; here the host is the real one, so the tests
//! only assert what holds on any host (an absurd target fails, the exit code agrees with the
//! report).

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use subsocket_testkit::process::Scratch;

fn subsocket() -> Command {
    Command::new(env!("CARGO_BIN_EXE_subsocket"))
}

fn run(args: &[&str]) -> Output {
    subsocket()
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("the subsocket binary runs")
}

/// A config file in a fresh temp directory, removed with it when dropped.
struct TempConfig {
    _dir: Scratch,
    path: PathBuf,
}

impl TempConfig {
    fn new(name: &str, toml: &str) -> TempConfig {
        let dir = Scratch::new(&format!("doctor-{name}"));
        let path = dir.file("subsocket.toml", toml);
        TempConfig { _dir: dir, path }
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

/// Checks the text format: a header, a memory line, one `status  name  found; need ...` line
/// per check (details and fixes indented under non-ok ones), and the count line. Returns the
/// (status, name) pairs.
fn parse_text(stdout: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("subsocket doctor: "), "{stdout}");
    assert!(lines[1].starts_with("memory: "), "{stdout}");
    let mut checks = Vec::new();
    let last = lines.last().unwrap();
    for line in &lines[2..lines.len() - 1] {
        if line.starts_with("        + ") || line.starts_with("      ") {
            continue;
        }
        let status = line[..4].trim().to_string();
        assert!(
            ["ok", "warn", "fail"].contains(&status.as_str()),
            "bad status in {line:?}\n{stdout}"
        );
        assert!(line.contains("; need "), "{line:?}");
        let name = line[6..36].trim().to_string();
        checks.push((status, name));
    }
    let count = |s: &str| checks.iter().filter(|(st, _)| st == s).count();
    assert!(
        last.starts_with(&format!(
            "{} ok, {} warn, {} fail: ",
            count("ok"),
            count("warn"),
            count("fail")
        )),
        "count line {last:?} disagrees with the checks\n{stdout}"
    );
    checks
}

#[test]
fn doctor_prints_one_line_per_check_and_exits_nonzero_only_on_a_failure() {
    let out = run(&[
        "doctor",
        "--cores",
        "1",
        "--connections",
        "100",
        "--subscriptions",
        "1000",
    ]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.starts_with("subsocket doctor: 100 connections, 1,000 subscriptions on 1 cores"),
        "{stdout}"
    );
    let checks = parse_text(&stdout);
    for name in [
        "cores",
        "config limits",
        "io_uring",
        "nofile",
        "fs.nr_open",
        "fs.file-max",
        "memlock",
        "memory",
        "net.core.somaxconn",
        "net.ipv4.tcp_mem",
    ] {
        assert!(
            checks.iter().any(|(_, n)| n == name),
            "no {name} check\n{stdout}"
        );
    }
    let failed = checks.iter().any(|(s, _)| s == "fail");
    assert_eq!(out.status.code(), Some(i32::from(failed)), "{stdout}");
    // Every non-ok check says how to fix it, on the line after its detail.
    let lines: Vec<&str> = stdout.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("fail") {
            assert!(
                lines[i + 2].starts_with("      fix: "),
                "{line} has no fix\n{stdout}"
            );
        }
    }
}

#[test]
fn an_absurd_target_fails_with_fixes_and_exit_status_one() {
    let out = run(&[
        "doctor",
        "--connections",
        "1000000000000",
        "--subscriptions",
        "1000000000000",
    ]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let checks = parse_text(&stdout);
    for name in ["memory", "nofile", "fs.nr_open", "config limits"] {
        assert!(
            checks.iter().any(|(s, n)| s == "fail" && n == name),
            "{name} should fail\n{stdout}"
        );
    }
    assert!(
        stdout.contains("      fix: sysctl -w fs.nr_open="),
        "{stdout}"
    );
    assert!(
        stdout.contains("this host cannot serve the targets"),
        "{stdout}"
    );
}

#[test]
fn json_output_is_one_document_with_a_verdict_per_check() {
    let out = run(&["doctor", "--json", "--connections", "1000000000000"]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert_eq!(v["targets"]["connections"], 1_000_000_000_000u64);
    assert!(v["memory"]["steady_bytes"].as_u64().unwrap() > 1 << 40);
    let checks = v["checks"].as_array().unwrap();
    assert!(checks.len() >= 10);
    for c in checks {
        let status = c["status"].as_str().unwrap();
        assert!(["ok", "warn", "fail"].contains(&status), "{c}");
        assert_eq!(
            c["fix"].is_null(),
            status == "ok",
            "a fix exactly when not ok: {c}"
        );
        assert!(c["name"].is_string() && c["found"].is_string() && c["need"].is_string());
    }
    let memory = checks.iter().find(|c| c["name"] == "memory").unwrap();
    assert_eq!(memory["status"], "fail");
}

#[test]
fn doctor_reads_the_config_file_given_before_or_after_the_command() {
    let cfg = TempConfig::new("limits", "cores = 1\nmax_conns_per_core = 10\n");
    for args in [
        vec![
            "doctor",
            "--config",
            cfg.path(),
            "--connections",
            "100",
            "--subscriptions",
            "1",
        ],
        vec![
            "--config",
            cfg.path(),
            "doctor",
            "--connections",
            "100",
            "--subscriptions",
            "1",
        ],
    ] {
        let out = run(&args);
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}\n{stdout}");
        assert!(stdout.contains("fail  config limits"), "{stdout}");
        assert!(
            stdout.contains("      fix: max_conns_per_core = 100 in the config file"),
            "{stdout}"
        );
    }
}

#[test]
fn usage_errors_exit_two() {
    let out = run(&["doctor", "--connections", "many"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["doctor", "--frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("doctor"));
}

/// Without a command the binary serves exactly as before, and logs the host checks' warnings
/// at startup. A backlog above any host's somaxconn makes sure there is one to log.
#[test]
fn the_gateway_logs_host_warnings_at_startup_and_still_serves() {
    let cfg = TempConfig::new("startup", "backlog = 2000000000\n");
    let mut child = subsocket()
        .args([
            "--config",
            cfg.path(),
            "--bind",
            "127.0.0.1:0",
            "--cores",
            "1",
        ])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(
        first.starts_with("subsocket listening on ws://127.0.0.1:"),
        "{first:?}"
    );
    // SAFETY: kill(2) on the pid of a child we spawned and have not waited for yet.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "exit {status:?}\n{stderr}");
    assert!(
        stderr.contains("host check warn net.core.somaxconn: "),
        "no startup warning for the backlog:\n{stderr}"
    );
    assert!(stderr.contains("details: subsocket doctor"), "{stderr}");
}
