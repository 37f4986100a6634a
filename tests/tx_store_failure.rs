//! A transaction whose store write fails is never committed: the broker
//! closes the connection with 541 INTERNAL_ERROR through the connection's
//! own close path (close handshake, unacked deliveries back to their
//! queues), and the store carries on once the fault is gone. In process: the
//! test serves a real TCP socket with `connection::serve` over a broker whose
//! RocksDB store has its fail points, so the fault lands exactly on the
//! commit's write.

#![cfg(feature = "rocks")]

use hopper::broker::Broker;
use hopper::config::Config;
use hopper::store::rocks::RocksStore;
use hopper::store::Store;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::sync::Arc;
use std::time::Duration;

async fn serve(broker: Arc<Broker>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, peer)) = listener.accept().await {
            tokio::spawn(hopper::connection::serve(sock, peer, broker.clone()));
        }
    });
    addr
}

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// basic.get from `txq` until a message comes (bounded).
async fn get_one(ch: &lapin::Channel, what: &str) -> lapin::message::BasicGetMessage {
    within(what, async {
        loop {
            if let Some(m) = ch
                .basic_get("txq".into(), BasicGetOptions::default())
                .await
                .unwrap()
            {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_write_fails_closes_the_connection_with_541() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RocksStore::open(dir.path()).unwrap());
    let broker = Broker::new(
        Config::default_config().unwrap(),
        store.clone() as Arc<dyn Store>,
    )
    .unwrap();
    let addr = serve(broker.clone()).await;
    let uri = format!("amqp://guest:guest@{addr}/%2f");

    let conn = within(
        "connect",
        Connection::connect(&uri, ConnectionProperties::default()),
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("txq".into(), durable, FieldTable::default())
        .await
        .unwrap();
    // A delivery this connection holds unacked when it is closed.
    ch.basic_publish(
        "".into(),
        "txq".into(),
        BasicPublishOptions::default(),
        b"held",
        persistent(),
    )
    .await
    .unwrap();
    let ch2 = conn.create_channel().await.unwrap();
    ch2.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let held = get_one(&ch2, "basic.get").await;
    assert_eq!(held.delivery.data, b"held");

    ch.tx_select().await.unwrap();
    ch.basic_publish(
        "".into(),
        "txq".into(),
        BasicPublishOptions::default(),
        b"in the transaction",
        persistent(),
    )
    .await
    .unwrap();
    store.fail_points.fail_next_writes(1);
    let err = within("tx.commit", ch.tx_commit())
        .await
        .expect_err("a commit whose write failed must not succeed");
    let text = format!("{err:?}");
    assert!(
        text.contains("541") || text.contains("INTERNAL_ERROR"),
        "expected 541 INTERNAL_ERROR, got {text}"
    );
    within("connection closed", async {
        while conn.status().connected() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    drop(held);

    // The store resumes; the unacked delivery is back, marked redelivered,
    // and the transaction's message was never committed.
    let conn = within(
        "reconnect",
        Connection::connect(&uri, ConnectionProperties::default()),
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let back = get_one(&ch, "the held message comes back").await;
    assert_eq!(back.delivery.data, b"held");
    assert!(back.delivery.redelivered);
    back.delivery.ack(BasicAckOptions::default()).await.unwrap();
    let more = ch
        .basic_get("txq".into(), BasicGetOptions::default())
        .await
        .unwrap();
    assert!(
        more.is_none(),
        "the failed transaction's message must not be there: {:?}",
        more.map(|m| m.delivery.data)
    );
}
