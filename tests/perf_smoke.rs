//! Smoke test of the `perf` load tool against a broker: it runs for about a
//! second, exits 0 and reports non-zero, consistent counts. No timing
//! thresholds: figures depend on the machine.

mod common;

use common::Broker;
use serde_json::Value;
use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Run the perf binary; kill it if it has not finished in 120 s.
fn perf(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_perf"))
        .args(args)
        .arg("--quiet")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn perf");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().expect("wait for perf").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = child.wait().expect("reap perf");
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    Output {
        status,
        stdout,
        stderr,
    }
}

fn json_report(args: &[&str]) -> Value {
    let out = perf(args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "perf {args:?} failed: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("perf printed no JSON object ({e}): {stdout}\nstderr: {stderr}"))
}

fn count(r: &Value, key: &str) -> u64 {
    r[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no count {key:?} in {r}"))
}

fn float(r: &Value, key: &str) -> f64 {
    r[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no number {key:?} in {r}"))
}

#[test]
fn transient_autoack_run_reports_rates_and_latency() {
    let broker = Broker::start();
    let uri = broker.uri();
    let q = common::unique("perf-smoke");
    let r = json_report(&[
        "--uri",
        &uri,
        "--queue",
        &q,
        "--duration",
        "1",
        "--autoack",
        "--size",
        "256",
        "--json",
    ]);
    assert_eq!(r["mode"], "run");
    let (published, consumed) = (count(&r, "published"), count(&r, "consumed"));
    assert!(published > 0, "{r}");
    assert!(consumed > 0, "{r}");
    assert!(consumed <= published, "{r}");
    assert_eq!(count(&r, "confirmed"), 0, "{r}");
    assert!(float(&r, "publish_rate") > 0.0, "{r}");
    assert!(float(&r, "consume_rate") > 0.0, "{r}");
    let e2e = &r["latency"]["end_to_end"];
    assert!(e2e["count"].as_u64().unwrap() > 0, "{r}");
    assert!(e2e["p50_us"].as_u64().unwrap() <= e2e["p99_us"].as_u64().unwrap());
    assert!(e2e["p99_us"].as_u64().unwrap() <= e2e["max_us"].as_u64().unwrap());
}

#[test]
fn persistent_confirmed_run_counts_confirms() {
    let broker = Broker::start();
    let uri = broker.uri();
    let q = common::unique("perf-smoke");
    let r = json_report(&[
        "--uri",
        &uri,
        "--queue",
        &q,
        "--duration",
        "1",
        "--persistent",
        "--confirm",
        "50",
        "--prefetch",
        "50",
        "--ack-every",
        "10",
        "--producers",
        "2",
        "--json",
    ]);
    let (published, confirmed, consumed) = (
        count(&r, "published"),
        count(&r, "confirmed"),
        count(&r, "consumed"),
    );
    assert!(confirmed > 0, "{r}");
    assert!(consumed > 0, "{r}");
    assert!(confirmed <= published, "{r}");
    assert!(consumed <= published, "{r}");
    assert_eq!(count(&r, "nacked"), 0, "{r}");
    assert!(float(&r, "confirm_rate") > 0.0, "{r}");
    let c = &r["latency"]["confirm"];
    assert!(c["count"].as_u64().unwrap() > 0, "{r}");
}

#[test]
fn backlog_publishes_then_drains_every_message() {
    let broker = Broker::start();
    let uri = broker.uri();
    let q = common::unique("perf-smoke");
    let r = json_report(&[
        "--uri",
        &uri,
        "--queue",
        &q,
        "--backlog",
        "3000",
        "--persistent",
        "--confirm",
        "100",
        "--prefetch",
        "100",
        "--producers",
        "2",
        "--json",
    ]);
    let b = &r["backlog"];
    assert_eq!(b["published"], 3000, "{r}");
    assert_eq!(b["drained"], 3000, "{r}");
    assert_eq!(count(&r, "confirmed"), 3000, "{r}");
    assert!(b["publish_rate"].as_f64().unwrap() > 0.0, "{r}");
    assert!(b["drain_rate"].as_f64().unwrap() > 0.0, "{r}");
}

#[test]
fn fanout_delivers_a_copy_to_every_queue() {
    let broker = Broker::start();
    let uri = broker.uri();
    let q = common::unique("perf-smoke");
    let ex = common::unique("perf-smoke-fanout");
    let r = json_report(&[
        "--uri",
        &uri,
        "--queue",
        &q,
        "--exchange-type",
        "fanout",
        "--exchange",
        &ex,
        "--queues",
        "3",
        "--consumers",
        "3",
        "--backlog",
        "500",
        "--confirm",
        "100",
        "--json",
    ]);
    assert_eq!(r["backlog"]["drained"], 1500, "{r}");
}

#[cfg(target_os = "linux")]
#[test]
fn idle_connections_with_rss_of_a_process() {
    // The broker's pid is not exposed by the test harness; any live process
    // shows that sampling works, so sample this test process.
    let broker = Broker::start();
    let uri = broker.uri();
    let me = std::process::id().to_string();
    let r = json_report(&[
        "--uri",
        &uri,
        "--connections",
        "20",
        "--idle",
        "0",
        "--rss-pid",
        &me,
        "--json",
    ]);
    assert_eq!(r["idle"]["connections"], 20, "{r}");
    assert!(r["idle"]["rss_before_kb"].as_u64().unwrap() > 0, "{r}");
    assert!(
        r["rss"]["phases"][0]["peak_kb"].as_u64().unwrap() > 0,
        "{r}"
    );
}

#[test]
fn a_refusal_by_the_broker_is_an_error_exit() {
    let broker = Broker::start();
    let uri = broker.uri_with("guest", "guest", "no-such-vhost");
    let out = perf(&["--uri", &uri, "--duration", "1", "--json"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("perf: error"), "{stderr}");
    assert!(stderr.contains("no-such-vhost"), "{stderr}");
    assert!(out.stdout.is_empty());
}
