//! Message counts, rates and durability figures in the management API
//! (the Prometheus endpoints are tests/prometheus.rs): traffic over AMQP
//! (lapin or raw frames), then the numbers read over HTTP. The broker samples
//! rates every 100 ms here (`[management] sample_interval_ms`) so waiting
//! for a sample takes a moment; every wait is a wait for a condition.

mod common;

use common::metrics::{get_json, n, scrape, traffic, value, wait_json};
use common::Broker;
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::BasicProperties;
use std::io::Write;

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
