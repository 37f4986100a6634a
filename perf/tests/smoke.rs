//! Smoke test of the `perf` load tool against a broker: it runs for about a
//! second, exits 0 and reports non-zero, consistent counts. No timing
//! thresholds: figures depend on the machine.
//!
//! The broker is the `hopper` binary of this workspace, started on a free
//! port with a fresh data directory. `perf` does not depend on `hopper` (that
//! would compile RocksDB into the tool), so cargo does not build it for this
//! test: `cargo test` at the root or with `--workspace` builds it alongside,
//! because the broker's own integration tests need it. Elsewhere set
//! `HOPPER_BIN`, or `HOPPER_TEST_EXTERNAL_URI` to run against an external
//! broker such as RabbitMQ.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A broker under test: a `hopper` child process, or an external broker.
struct Broker {
    child: Option<Child>,
    /// `host:port` of the AMQP listener.
    addr: String,
    /// The percent-encoded vhost path of `uri()`.
    vhost_path: String,
    /// The spawned broker's stderr, shown when a test fails.
    log_path: Option<PathBuf>,
    _data_dir: Option<tempfile::TempDir>,
}

impl Broker {
    fn start() -> Broker {
        if let Ok(uri) = std::env::var("HOPPER_TEST_EXTERNAL_URI") {
            if !uri.trim().is_empty() {
                let rest = uri.trim().strip_prefix("amqp://").unwrap_or_else(|| {
                    panic!("HOPPER_TEST_EXTERNAL_URI must start with amqp://: {uri}")
                });
                let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
                let (addr, vhost) = rest.split_once('/').unwrap_or((rest, "%2f"));
                return Broker {
                    child: None,
                    addr: addr.to_string(),
                    vhost_path: vhost.to_string(),
                    log_path: None,
                    _data_dir: None,
                };
            }
        }
        let bin = hopper_bin();
        let data_dir = tempfile::Builder::new()
            .prefix("perf-smoke-")
            .tempdir()
            .expect("create temp data dir");
        let log_path = data_dir.path().join("hopper.log");
        let log = std::fs::File::create(&log_path).expect("create the broker's log file");
        let mut child = Command::new(&bin)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(["--management-listen", "off", "--metrics-listen", "off"])
            .arg("--data-dir")
            .arg(data_dir.path().join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            // Keep draining stdout after the first line so the broker can
            // never block on a full pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let _ = tx.send(line);
            }
        });
        let mut broker = Broker {
            child: Some(child),
            addr: String::new(),
            vhost_path: "%2f".to_string(),
            log_path: Some(log_path),
            _data_dir: Some(data_dir),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while broker.addr.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("hopper listening on ") {
                        broker.addr = addr.trim().to_string();
                    }
                }
                // Dropping the broker kills the child.
                Err(_) => panic!(
                    "{} printed no 'hopper listening on ADDR' within 30 s",
                    bin.display()
                ),
            }
        }
        broker
    }

    /// `amqp://guest:guest@HOST:PORT/VHOST`
    fn uri(&self) -> String {
        self.uri_with("guest", "guest", &self.vhost_path)
    }

    /// A URI with the given credentials and (percent-encoded) vhost path.
    fn uri_with(&self, user: &str, pass: &str, vhost_path: &str) -> String {
        format!("amqp://{user}:{pass}@{}/{vhost_path}", self.addr)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            if let Some(log) = self
                .log_path
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok())
            {
                let tail = log.char_indices().rev().nth(6000).map_or(0, |(i, _)| i);
                eprintln!("---- hopper stderr (tail) ----\n{}", &log[tail..]);
            }
        }
    }
}

/// The broker binary: `HOPPER_BIN`, else `hopper` in the target directory
/// this test was built into (`target/debug/deps/smoke-HASH` -> `target/debug/hopper`).
fn hopper_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("HOPPER_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("path of the test binary");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in <target>/<profile>/deps");
    let bin = profile_dir.join(format!("hopper{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "no broker binary at {}: run `cargo test --workspace` (or `cargo build --bin hopper` \
         first), or set HOPPER_BIN or HOPPER_TEST_EXTERNAL_URI",
        bin.display()
    );
    bin
}

/// A queue or exchange name unique across tests and runs, so tests can share
/// an external broker.
fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "perf-smoke.{prefix}.{:x}.{:x}.{n}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff
    )
}

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
    let q = unique("perf-smoke");
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
    let q = unique("perf-smoke");
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
    let q = unique("perf-smoke");
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
    let q = unique("perf-smoke");
    let ex = unique("perf-smoke-fanout");
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
