//! The Prometheus endpoints (`/metrics`, `/metrics/per-object`): RabbitMQ's
//! names, labels and types after traffic over AMQP, gzip, `promtool check
//! metrics` on both, and a real Prometheus server (Debian's `prometheus`)
//! scraping Hopper and evaluating a dashboard query joined on
//! `rabbitmq_identity_info`.

mod common;

use common::metrics::{get_raw, scrape, traffic, value};
use common::Broker;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

#[test]
fn prometheus_endpoints_use_rabbitmq_names_labels_and_gzip() {
    let mut b = Broker::start();
    if b.is_external() {
        return; // counts since this broker started, and hopper_* families
    }
    let p = b.metrics_addr();
    let uri = b.uri();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_conn, _ch, queue) = rt.block_on(traffic(&uri, "metrics-prom"));

    let refused = rt.block_on(common::connect_uri(&b.uri_with("guest", "wrong", "%2f")));
    assert!(refused.is_err(), "a wrong password is refused");
    let agg = scrape(p, "/metrics");
    assert_eq!(
        value(
            &agg,
            "rabbitmq_auth_attempts_succeeded_total{protocol=\"amqp091\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &agg,
            "rabbitmq_auth_attempts_failed_total{protocol=\"amqp091\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&agg, "rabbitmq_auth_attempts_total{protocol=\"amqp091\"}"),
        2.0
    );
    assert_eq!(
        value(
            &agg,
            "rabbitmq_global_messages_received_total{protocol=\"amqp091\"}"
        ),
        23.0
    );
    assert_eq!(
        value(
            &agg,
            "rabbitmq_global_messages_received_confirm_total{protocol=\"amqp091\"}"
        ),
        23.0
    );
    assert_eq!(
        value(
            &agg,
            "rabbitmq_global_messages_unroutable_dropped_total{protocol=\"amqp091\"}"
        ),
        3.0
    );
    assert_eq!(
        value(&agg, "rabbitmq_global_messages_delivered_get_auto_ack_total{protocol=\"amqp091\",queue_type=\"rabbit_classic_queue\"}"),
        1.0
    );
    assert_eq!(value(&agg, "rabbitmq_queues"), 1.0);
    assert_eq!(value(&agg, "rabbitmq_connections"), 1.0);
    assert_eq!(
        value(&agg, "rabbitmq_channel_messages_published_total"),
        23.0
    );
    assert!(value(&agg, "hopper_store_fsyncs_total") >= 1.0);
    assert!(value(&agg, "hopper_confirm_latency_seconds_count") >= 20.0);
    assert_eq!(
        value(
            &agg,
            "rabbitmq_message_size_bytes_count{protocol=\"amqp091\"}"
        ),
        23.0
    );
    assert_eq!(
        value(
            &agg,
            "rabbitmq_message_size_bytes_bucket{le=\"100.0\",protocol=\"amqp091\"}"
        ),
        3.0
    );
    assert_eq!(
        value(
            &agg,
            "rabbitmq_message_size_bytes_bucket{le=\"1e+06\",protocol=\"amqp091\"}"
        ),
        23.0
    );
    assert_eq!(
        value(
            &agg,
            "rabbitmq_message_size_bytes_bucket{le=\"+Inf\",protocol=\"amqp091\"}"
        ),
        23.0
    );
    let identity = agg
        .lines()
        .find(|l| l.starts_with("rabbitmq_identity_info{"))
        .expect("identity");
    for label in [
        "rabbitmq_node=",
        "rabbitmq_cluster=",
        "rabbitmq_cluster_permanent_id=",
        "rabbitmq_endpoint=\"aggregated\"",
    ] {
        assert!(identity.contains(label), "{identity}");
    }
    assert!(
        agg.contains("rabbitmq_build_info{product_name=\"Hopper\""),
        "{agg}"
    );
    assert!(!agg.contains(&queue), "aggregated output names no queue");

    let per = scrape(p, "/metrics/per-object");
    let series = |name: &str| format!("{name}{{vhost=\"/\",queue=\"{queue}\"}}");
    assert_eq!(
        value(&per, &series("rabbitmq_queue_messages_published_total")),
        20.0
    );
    assert_eq!(value(&per, &series("rabbitmq_queue_messages_ready")), 0.0);
    assert_eq!(value(&per, &series("rabbitmq_queue_get_total")), 1.0);
    assert_eq!(
        value(&per, &series("rabbitmq_queue_messages_acked_total")),
        1.0
    );
    assert_eq!(
        value(
            &per,
            "rabbitmq_exchange_messages_published_total{vhost=\"/\",exchange=\"amq.direct\"}"
        ),
        3.0
    );
    assert!(
        per.contains("rabbitmq_channel_messages_published_total{channel=\""),
        "{per}"
    );
    assert!(
        per.contains("rabbitmq_identity_info{") && per.contains("rabbitmq_endpoint=\"per-object\"")
    );

    let (status, head, body) = get_raw(p, "/metrics", true);
    assert_eq!(status, 200);
    assert!(head.contains("content-encoding: gzip"), "{head}");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut text)
        .expect("gzip body");
    assert!(text.contains("# TYPE rabbitmq_identity_info untyped"));
    assert_eq!(get_raw(p, "/nothing", false).0, 404);

    // promtool (Debian `prometheus`) lints both; CI installs it and sets
    // HOPPER_REQUIRE_PROMTOOL so that its absence fails there.
    if promtool_missing() {
        return;
    }
    for text in [&agg, &per] {
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn promtool_missing() -> bool {
    let found = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("HOPPER_REQUIRE_PROMTOOL").is_none(),
            "promtool not found (apt-get install prometheus)"
        );
        eprintln!("promtool not found: skipping the promtool checks");
    }
    !found
}

/// A Prometheus server (Debian's `prometheus`) started by a test; killed
/// when dropped.
struct PromServer {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for PromServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PromServer {
    /// Scrape `target` every second.
    fn start(target: SocketAddr) -> PromServer {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: hopper\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        // A free port for its web API (bound and released: Prometheus
        // cannot report a port it picked itself).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        PromServer {
            child,
            addr,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Evaluate `query` now through the HTTP API; the `result` array, or
    /// None while the server is not answering yet.
    fn query(&self, query: &str) -> Option<Value> {
        let mut q = String::new();
        for b in query.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                q.push(b as char);
            } else {
                q.push_str(&format!("%{b:02X}"));
            }
        }
        let mut s = TcpStream::connect(self.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "GET /api/v1/query?query={q} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .ok()?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).ok()?;
        let (_, body) = raw.split_once("\r\n\r\n")?;
        let v: Value = serde_json::from_str(body).ok()?;
        (v["status"] == "success").then(|| v["data"]["result"].clone())
    }
}

fn prometheus_missing() -> bool {
    let found = std::process::Command::new("prometheus")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("HOPPER_REQUIRE_PROMTOOL").is_none(),
            "prometheus not found (apt-get install prometheus)"
        );
        eprintln!("prometheus not found: skipping");
    }
    !found
}

/// What RabbitMQ's Grafana dashboards do: join a broker series on
/// `rabbitmq_identity_info` by `instance` and group by the cluster label.
#[test]
fn a_prometheus_server_scrapes_hopper_and_joins_on_identity_info() {
    let mut b = Broker::start();
    if b.is_external() || prometheus_missing() {
        return;
    }
    let target = b.metrics_addr();
    let uri = b.uri();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_conn, _ch, queue) = rt.block_on(async {
        let conn = common::connect_uri(&uri).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        common::confirm_select(&ch).await;
        let q = common::declare_durable_queue(&ch, "metrics-prom-server", Default::default()).await;
        for _ in 0..5 {
            common::publish_confirmed(&ch, "", &q, b"ready", Default::default()).await;
        }
        (conn, ch, q)
    });
    let prom = PromServer::start(target);
    let query = "sum by (rabbitmq_cluster) (rabbitmq_queue_messages_ready * on(instance, job) \
                 group_left(rabbitmq_cluster, rabbitmq_node) rabbitmq_identity_info{rabbitmq_cluster=~\".+\"})";
    let deadline = Instant::now() + Duration::from_secs(60);
    let result = loop {
        if let Some(r) = prom.query(query) {
            if r.as_array().is_some_and(|a| !a.is_empty()) {
                break r;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no joined series for {queue} after 60 s; prometheus log:\n{}",
            prom.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let sample = &result[0];
    assert!(
        sample["metric"]["rabbitmq_cluster"]
            .as_str()
            .is_some_and(|c| c.starts_with("hopper@")),
        "{result:#}"
    );
    assert_eq!(sample["value"][1], "5", "{result:#}");
}
