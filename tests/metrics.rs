//! Message counts, rates and durability figures in the management API, and
//! the Prometheus endpoints (`/metrics`, `/metrics/per-object`): traffic
//! over AMQP (lapin), then the numbers read over HTTP. The broker samples
//! rates every 100 ms here (`[management] sample_interval_ms`) so waiting
//! for a sample takes a moment; every wait is a wait for a condition.

mod common;

use common::mgmt::{http, GUEST};
use common::Broker;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions};
use lapin::BasicProperties;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const DEFAULT_CONFIG: &str = include_str!("../conf/broker.toml");

/// A broker sampling rates every 100 ms (and its config file, kept alive).
fn fast_sampling_broker() -> (Broker, tempfile::NamedTempFile) {
    let text = DEFAULT_CONFIG.replace("sample_interval_ms = 5000", "sample_interval_ms = 100");
    assert_ne!(
        text, DEFAULT_CONFIG,
        "conf/broker.toml sets sample_interval_ms"
    );
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    let path = file.path().to_str().unwrap().to_string();
    (Broker::start_with_args(&["--config", &path]), file)
}

fn get_json(addr: SocketAddr, path: &str) -> Value {
    let a = http(addr, "GET", path, GUEST, None);
    assert_eq!(a.status, 200, "{path}: {}", a.body);
    a.json()
}

/// Poll `path` until `done` holds (15 s at most), returning the last answer.
fn wait_json(addr: SocketAddr, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = get_json(addr, path);
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: last answer {v:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn n(v: &Value, path: &str) -> f64 {
    let mut cur = v;
    for k in path.split('.') {
        cur = &cur[k];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v:#}"))
}

/// Traffic on one connection: 20 persistent confirmed publishes to a
/// durable queue, 3 unroutable ones to amq.direct, one get-no-ack, one
/// get-with-ack (acked), one get on the emptied queue after purging it.
/// Returns the connection and channel (left open: their counts are read
/// while they live) and the queue's name.
async fn traffic(uri: &str, prefix: &str) -> (lapin::Connection, lapin::Channel, String) {
    let conn = common::connect_uri(uri).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    common::confirm_select(&ch).await;
    let queue = common::declare_durable_queue(&ch, prefix, Default::default()).await;
    let queue = queue.as_str();
    let persistent = BasicProperties::default().with_delivery_mode(2);
    for _ in 0..20 {
        common::publish_confirmed(&ch, "", queue, &[7u8; 1500], persistent.clone()).await;
    }
    for _ in 0..3 {
        common::publish_confirmed(&ch, "amq.direct", "nowhere", b"lost", Default::default()).await;
    }
    let got = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(got.is_some());
    let got = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("a message");
    got.ack(BasicAckOptions::default()).await.unwrap();
    ch.queue_purge(queue.into(), Default::default())
        .await
        .unwrap();
    let empty = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(empty.is_none());
    (conn, ch, queue.to_string())
}

#[test]
fn message_stats_count_every_kind_and_rates_follow_samples() {
    let (mut b, _cfg) = fast_sampling_broker();
    if b.is_external() {
        return; // Hopper's sampling interval and store figures
    }
    let m = b.mgmt_addr();
    let uri = b.uri();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_conn, _ch, queue) = rt.block_on(traffic(&uri, "metrics-counts"));

    // Counts are live; rates appear once a sample has seen the traffic.
    let o = wait_json(m, "/api/overview", "overview rates", |o| {
        o["message_stats"]["publish"] == 23 && n(o, "message_stats.publish_details.rate") > 0.0
    });
    let s = &o["message_stats"];
    assert_eq!(s["confirm"], 23, "{s:#}");
    assert_eq!(s["drop_unroutable"], 3);
    assert_eq!(s["get_no_ack"], 1, "{s:#}");
    assert_eq!(s["get"], 1);
    assert_eq!(s["get_empty"], 1);
    assert_eq!(s["deliver_get"], 2);
    assert_eq!(s["ack"], 1);
    let store = &o["store_stats"];
    assert!(n(store, "fsyncs") >= 1.0, "{store:#}");
    assert!(store["confirm_latency_us"].is_object(), "{store:#}");
    assert!(store["paged_out_bytes"].is_number(), "{store:#}");
    assert_eq!(
        o["churn_rates"]["queue_created"], 1,
        "{:#}",
        o["churn_rates"]
    );

    let qj = get_json(m, &format!("/api/queues/%2F/{queue}"));
    let qs = &qj["message_stats"];
    assert_eq!(qs["publish"], 20, "{qs:#}");
    assert_eq!(qs["get_no_ack"], 1, "{qs:#}");
    assert_eq!(qs["get"], 1);
    assert_eq!(qs["get_empty"], 1);
    assert_eq!(qs["deliver_get"], 2);
    assert_eq!(qs["ack"], 1);
    assert!(qs["publish_details"]["rate"].is_number());

    let x = get_json(m, "/api/exchanges/%2F/amq.direct");
    assert_eq!(x["message_stats"]["publish_in"], 3, "{x:#}");
    assert_eq!(x["message_stats"]["publish_out"], 0);
    let d = get_json(m, "/api/exchanges/%2F/amq.default");
    assert!(n(&d, "message_stats.publish_out") >= 20.0, "{d:#}");

    let chans = get_json(m, "/api/channels");
    let ch = chans
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["message_stats"]["publish"] == 23)
        .unwrap_or_else(|| panic!("no channel with 23 publishes: {chans:#}"));
    assert_eq!(ch["message_stats"]["confirm"], 23);
    let conns = get_json(m, "/api/connections");
    let c = conns
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["message_stats"]["publish"] == 23)
        .unwrap_or_else(|| panic!("no connection with 23 publishes: {conns:#}"));
    assert!(n(c, "recv_oct") > 20.0 * 1500.0, "{c:#}");
    assert!(n(c, "send_oct") > 0.0 && n(c, "recv_cnt") > 0.0 && n(c, "send_cnt") > 0.0);

    // With no traffic the next samples bring the rates back to zero.
    wait_json(m, "/api/overview", "rates back to zero", |o| {
        n(o, "message_stats.publish_details.rate") == 0.0 && o["message_stats"]["publish"] == 23
    });
}

#[test]
fn totals_keep_what_closed_channels_counted() {
    let mut b = Broker::start();
    if b.is_external() {
        return; // RabbitMQ's overview lags by its 5 s stats interval
    }
    let m = b.mgmt_addr();
    let uri = b.uri();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let conn = common::connect_uri(&uri).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        let q = common::declare_queue(&ch, "metrics-closed").await;
        for _ in 0..4 {
            ch.basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                b"x",
                Default::default(),
            )
            .await
            .unwrap();
        }
        ch.close(200, "bye".into()).await.unwrap();
        conn.close(200, "bye".into()).await.unwrap();
    });
    let o = wait_json(m, "/api/overview", "connection gone", |o| {
        o["object_totals"]["connections"] == 0
    });
    assert_eq!(o["message_stats"]["publish"], 4, "{:#}", o["message_stats"]);
    assert_eq!(o["churn_rates"]["channel_closed"], 1);
    assert_eq!(o["churn_rates"]["connection_closed"], 1);
}

/// A raw GET, optionally asking for gzip: (status, headers lowercased, body).
fn get_raw(addr: SocketAddr, path: &str, gzip: bool) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let enc = if gzip {
        "Accept-Encoding: gzip\r\n"
    } else {
        ""
    };
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{enc}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head, raw[split + 4..].to_vec())
}

fn scrape(addr: SocketAddr, path: &str) -> String {
    let (status, head, body) = get_raw(addr, path, false);
    assert_eq!(status, 200, "{path}: {head}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    String::from_utf8(body).unwrap()
}

/// The value of the sample line that starts with `series` (name and labels).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
        .parse()
        .unwrap()
}

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

/// A durable queue past its 8 MiB in memory pages persistent messages out
/// (keeping the 256 at its head):
/// `store_stats.paged_out_bytes` and the Prometheus gauges follow, and go
/// back to zero once the messages are read back and taken.
#[test]
fn paged_out_bytes_follow_paging_both_ways() {
    let mut b = Broker::start();
    if b.is_external() {
        return;
    }
    let (m, p) = (b.mgmt_addr(), b.metrics_addr());
    let uri = b.uri();
    let rt = tokio::runtime::Runtime::new().unwrap();
    const N: usize = 400;
    const SIZE: usize = 32 * 1024;
    let body = vec![b'p'; SIZE];
    let (_conn, ch, queue) = rt.block_on(async {
        let conn = common::connect_uri(&uri).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        common::confirm_select(&ch).await;
        let q = common::declare_durable_queue(&ch, "metrics-paged", Default::default()).await;
        let persistent = BasicProperties::default().with_delivery_mode(2);
        for _ in 0..N {
            common::publish_confirmed(&ch, "", &q, &body, persistent.clone()).await;
        }
        (conn, ch, q)
    });
    let o = wait_json(m, "/api/overview", "messages paged out", |o| {
        n(o, "store_stats.paged_out_bytes") > 0.0
    });
    let paged = n(&o, "store_stats.paged_out_bytes");
    assert_eq!(paged % SIZE as f64, 0.0, "whole bodies: {paged}");
    let text = scrape(p, "/metrics/per-object");
    assert_eq!(
        value(
            &text,
            &format!("rabbitmq_queue_messages_paged_out_bytes{{vhost=\"/\",queue=\"{queue}\"}}")
        ),
        paged
    );
    assert_eq!(
        value(&scrape(p, "/metrics"), "hopper_paged_out_bytes"),
        paged
    );
    rt.block_on(async {
        for _ in 0..N {
            let got = ch
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap();
            assert!(got.is_some());
        }
    });
    let o = get_json(m, "/api/overview");
    assert_eq!(
        n(&o, "store_stats.paged_out_bytes"),
        0.0,
        "{:#}",
        o["store_stats"]
    );
}

/// A client that opens a channel, publishes and closes it in one write:
/// the broker sees it all in one read burst, and its publish still counts
/// (and the channel in the churn), while the connection stays open.
#[test]
fn a_channel_opened_and_closed_in_one_burst_still_counts() {
    use common::raw::{self, RawClient};
    use lapin::protocol::{channel as pch, AMQPClass};
    let mut b = Broker::start();
    if b.is_external() {
        return;
    }
    let m = b.mgmt_addr();
    let addr = b.addr();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _client = rt.block_on(async {
        let mut c = RawClient::open(addr).await;
        let mut burst = raw::method_frame(1, &raw::channel_open());
        burst.extend(raw::method_frame(
            1,
            &raw::basic_publish("amq.direct", "nowhere"),
        ));
        burst.extend(raw::header_frame(1, 3));
        burst.extend(raw::body_frame(1, b"abc"));
        burst.extend(raw::method_frame(
            1,
            &AMQPClass::Channel(pch::AMQPMethod::Close(pch::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            })),
        ));
        c.send(&burst).await;
        match c.expect_method(1).await {
            AMQPClass::Channel(pch::AMQPMethod::OpenOk(_)) => {}
            other => panic!("expected channel.open-ok, got {other:?}"),
        }
        match c.expect_method(1).await {
            AMQPClass::Channel(pch::AMQPMethod::CloseOk(_)) => {}
            other => panic!("expected channel.close-ok, got {other:?}"),
        }
        c
    });
    // The registry hears of the close at the end of the broker's read burst,
    // which may be just after close-ok went out.
    let o = wait_json(m, "/api/overview", "the closed channel's publish", |o| {
        o["message_stats"]["publish"] == 1
    });
    assert_eq!(o["object_totals"]["connections"], 1, "{o:#}");
    assert_eq!(o["message_stats"]["drop_unroutable"], 1);
    assert_eq!(
        o["churn_rates"]["channel_created"], 1,
        "{:#}",
        o["churn_rates"]
    );
    assert_eq!(o["churn_rates"]["channel_closed"], 1);
    let x = get_json(m, "/api/exchanges/%2F/amq.direct");
    assert_eq!(x["message_stats"]["publish_in"], 1);
}
