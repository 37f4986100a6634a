//! Configured limits: each gives a clear AMQP error (or a refused socket),
//! and the broker keeps serving everyone else.

mod common;

use common::*;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use std::time::Duration;

/// Start a broker whose config is the default one with `limits` set.
fn broker_with(limits: &[(&str, &str)]) -> (Broker, tempfile::NamedTempFile) {
    let pairs: Vec<(String, String)> = limits
        .iter()
        .map(|(k, v)| (format!("{k} = 0"), format!("{k} = {v}")))
        .collect();
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    broker_with_text(&refs)
}

#[tokio::test]
async fn per_user_connection_limit_is_530() {
    if std::env::var(EXTERNAL_ENV).is_ok() {
        return;
    }
    let (broker, _cfg) = broker_with(&[("max_connections_per_user", "2")]);
    let a = connect(&broker).await;
    let b = connect(&broker).await;
    let third = connect_uri(&broker.uri()).await;
    let Err(err) = third else {
        panic!("a third connection must be refused");
    };
    assert_eq!(reply_code(&err), Some(530), "{err:?}");
    drop(b);
    let _ = a.close(200, "bye".into()).await;
    // A slot frees up when a connection closes.
    within("reconnect", async {
        loop {
            if let Ok(c) = connect_uri(&broker.uri()).await {
                let _ = c.close(200, "bye".into()).await;
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn total_connection_limit_refuses_the_socket() {
    if std::env::var(EXTERNAL_ENV).is_ok() {
        return;
    }
    let (broker, _cfg) = broker_with(&[("max_connections", "1")]);
    let a = connect(&broker).await;
    assert!(connect_uri(&broker.uri()).await.is_err());
    let _ = a.close(200, "bye".into()).await;
}

#[tokio::test]
async fn queue_limit_is_406_and_the_connection_survives() {
    if std::env::var(EXTERNAL_ENV).is_ok() {
        return;
    }
    let (broker, _cfg) = broker_with(&[("max_queues", "2")]);
    let (conn, ch) = connect_channel(&broker).await;
    let q1 = declare_queue(&ch, "lim").await;
    let _q2 = declare_queue(&ch, "lim").await;
    // Redeclaring an existing queue is fine.
    within(
        "redeclare",
        ch.queue_declare(
            q1.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("redeclare");
    let res = within(
        "third queue",
        ch.queue_declare(
            unique("lim").as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res, 406);
    assert!(
        conn.create_channel().await.is_ok(),
        "the connection must survive"
    );
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn consumers_per_channel_limit_is_530() {
    if std::env::var(EXTERNAL_ENV).is_ok() {
        return;
    }
    let (broker, _cfg) = broker_with(&[("max_consumers_per_channel", "1")]);
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "lim-consumers").await;
    let _c = consume(&ch, &q, true).await;
    let res = within(
        "second consumer",
        ch.basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res, 530);
    drop(conn);
    assert_broker_healthy(&broker).await;
}

/// Past the memory high watermark a publishing connection is no longer read
/// (its publishes wait), while consumers on other connections drain; once
/// below the mark it is unblocked and its publishes go through.
#[tokio::test]
async fn memory_alarm_blocks_publishers_until_consumers_drain() {
    if std::env::var(EXTERNAL_ENV).is_ok() {
        return;
    }
    let (broker, _cfg) = broker_with_text(&[(
        "memory_high_watermark = 1073741824",
        "memory_high_watermark = 100000",
    )]);
    let (pconn, pch) = connect_channel(&broker).await;
    let q = declare_queue(&pch, "alarm").await;
    confirm_select(&pch).await;
    let body = vec![b'x'; 1024];
    // 150 KiB against a 100 KB watermark, published without waiting: the
    // sweeper raises the alarm (within 100 ms) after some of them, at a
    // point that depends on the machine's load. Whatever was not read by
    // then waits in the socket: all of it must be confirmed after the drain.
    let mut confirms = Vec::new();
    for _ in 0..150 {
        let (pch, q, body) = (pch.clone(), q.clone(), body.clone());
        confirms.push(tokio::spawn(async move {
            pch.basic_publish(
                "".into(),
                q.as_str().into(),
                Default::default(),
                &body,
                lapin::BasicProperties::default(),
            )
            .await?
            .await
        }));
    }
    within("connection.blocked", async {
        while !pconn.status().blocked() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    // lapin honours connection.blocked: the publish itself waits.
    let (pch2, q2) = (pch.clone(), q.clone());
    let mut task = tokio::spawn(async move {
        let confirm = pch2
            .basic_publish(
                "".into(),
                q2.as_str().into(),
                Default::default(),
                b"after the alarm",
                lapin::BasicProperties::default(),
            )
            .await?;
        confirm.await
    });
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(800), &mut task)
            .await
            .is_err(),
        "a blocked publisher must not get through"
    );
    // A consumer on another connection drains the queue; the alarm clears.
    let (cconn, cch) = connect_channel(&broker).await;
    let mut drained = drain(&cch, &q).await.len();
    let confirm = within("confirm after unblock", task)
        .await
        .expect("join")
        .expect("confirm");
    assert!(confirm.is_ack());
    for c in confirms {
        let c = within("confirm of a publish made before the alarm", c)
            .await
            .expect("join")
            .expect("confirm");
        assert!(c.is_ack());
    }
    // Publishes that waited in the socket arrived after the first drain.
    drained += drain(&cch, &q).await.len();
    assert_eq!(drained, 151);
    let _ = cconn.close(200, "bye".into()).await;
    let _ = pconn.close(200, "bye".into()).await;
}

/// Like `broker_with`, replacing arbitrary text of the default config.
fn broker_with_text(replace: &[(&str, &str)]) -> (Broker, tempfile::NamedTempFile) {
    let mut text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/broker.toml"))
            .expect("read conf/broker.toml");
    for (old, new) in replace {
        assert!(text.contains(old), "{old} not in the default config");
        text = text.replace(old, new);
    }
    let file = tempfile::NamedTempFile::new().expect("temp config");
    std::fs::write(file.path(), text).expect("write config");
    let path = file.path().to_string_lossy().into_owned();
    (Broker::start_with_args(&["--config", &path]), file)
}

/// With `disk_free_limit` above any disk's size the disk alarm is on from
/// the start: a publishing connection gets connection.blocked and its
/// publishes are not processed, while a consumer on another connection
/// drains a queue filled before (in a run without the limit). The clearing
/// path is driven with fake readings in `broker::disk`'s unit tests.
#[tokio::test]
async fn disk_alarm_blocks_publishers_while_consumers_drain() {
    if std::env::var(EXTERNAL_ENV).is_ok() {
        return;
    }
    let (mut broker, cfg) =
        broker_with_text(&[("disk_free_limit = 50000000", "disk_free_limit = 0")]);
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_durable_queue(&ch, "disk-alarm", FieldTable::default()).await;
    confirm_select(&ch).await;
    for i in 0..50 {
        let props = lapin::BasicProperties::default().with_delivery_mode(2);
        let c = publish_confirmed(&ch, "", &q, format!("m{i}").as_bytes(), props).await;
        assert!(c.is_ack());
    }
    let _ = conn.close(200, "bye".into()).await;
    assert!(broker.terminate(), "clean shutdown");
    let text = std::fs::read_to_string(cfg.path()).expect("read config");
    let pib = "disk_free_limit = 1125899906842624";
    std::fs::write(cfg.path(), text.replace("disk_free_limit = 0", pib)).expect("write config");
    broker.start_again();

    let (pconn, pch) = connect_channel(&broker).await;
    // Declaring is not publishing: a connection is blocked by its first
    // publish under an alarm (which, as in RabbitMQ, is still processed).
    let q2 = declare_queue(&pch, "disk-alarm-new").await;
    confirm_select(&pch).await;
    let c = publish_confirmed(&pch, "", &q2, b"first", lapin::BasicProperties::default()).await;
    assert!(c.is_ack());
    within("connection.blocked", async {
        while !pconn.status().blocked() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let (pch2, q2b) = (pch.clone(), q2.clone());
    let mut task = tokio::spawn(async move {
        let confirm = pch2
            .basic_publish(
                "".into(),
                q2b.as_str().into(),
                Default::default(),
                b"while blocked",
                lapin::BasicProperties::default(),
            )
            .await?;
        confirm.await
    });
    // A consumer on another connection drains the old queue meanwhile.
    let (cconn, cch) = connect_channel(&broker).await;
    let drained = drain(&cch, &q).await;
    assert_eq!(drained.len(), 50);
    assert_eq!(drained[0], b"m0");
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(500), &mut task)
            .await
            .is_err(),
        "a blocked publisher must not get through"
    );
    assert_eq!(message_count(&cch, &q2).await, 1, "only the first publish");
    assert!(pconn.status().blocked());
    task.abort();
    let _ = cconn.close(200, "bye".into()).await;
    // The blocked connection is not read, so it cannot close politely.
    drop(pconn);
    assert!(broker.log().contains("disk alarm"), "alarm logged");
}

/// A consumer that stops reading its socket: once the broker's writes make no
/// progress for `write_timeout` (RabbitMQ's send_timeout), the connection is
/// closed and its unacked deliveries go back to the queue: nothing is lost
/// and nothing stays pinned to a dead client. In-process under paused time
/// (`common::inproc`): the client's "socket" is an in-memory duplex that
/// nobody reads, and the timeout is virtual.
#[test]
fn client_that_stops_reading_is_dropped_after_write_timeout() {
    if common::inproc::skip_in_external_mode() {
        return;
    }
    common::inproc::paused(async {
        let broker = common::inproc::InProc::start_with(|c| c.limits.write_timeout = 1).await;
        let mut p = broker.raw_open(0).await;
        p.open_channel(1).await;
        let q = "unread";
        p.declare(1, q, FieldTable::default()).await;
        // More than the duplex buffer and the writer's 2 MiB hold.
        const N: u32 = 400;
        let body = vec![b'x'; 64 * 1024];
        for _ in 0..N {
            p.publish(1, "", q, &body, None).await;
        }
        assert_eq!(p.count(1, q).await, N);
        let mut c = broker.raw_open(0).await;
        c.open_channel(1).await;
        c.send_method(1, &raw::basic_consume(q, "never-reads"))
            .await;
        let stalled = tokio::time::Instant::now();
        // Deliveries leave the queue for the stalled client...
        while p.count(1, q).await == N {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // ...and come back once the broker gives the client up.
        while p.count(1, q).await != N {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let elapsed = stalled.elapsed();
        assert!(
            elapsed >= Duration::from_secs(1),
            "dropped before write_timeout: {elapsed:?}"
        );
        // The client is closed: after what is buffered, it reads EOF.
        let mut s = c.into_stream();
        within_for(Duration::from_secs(20), "EOF", async {
            use tokio::io::AsyncReadExt;
            let mut sink = vec![0u8; 256 * 1024];
            while let Ok(n) = s.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        p.close().await;
        broker.stop().await;
    });
}
