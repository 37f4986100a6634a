//! Graceful shutdown: on SIGTERM the broker closes client connections with
//! 320 CONNECTION_FORCED, finishes its store writes and exits 0; nothing
//! confirmed is lost.

mod common;

use common::raw::RawClient;
use common::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;

#[tokio::test]
async fn sigterm_closes_clients_with_320_and_keeps_confirmed_messages() {
    let mut broker = Broker::start();
    if broker.is_external() {
        return;
    }
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_durable_queue(&ch, "shutdown", FieldTable::default()).await;
    confirm_select(&ch).await;
    for i in 0..50 {
        let body = format!("m{i}");
        let props = BasicProperties::default().with_delivery_mode(2);
        assert!(publish_confirmed(&ch, "", &q, body.as_bytes(), props)
            .await
            .is_ack());
    }
    let mut raw = RawClient::open(broker.addr()).await;
    let broker_task = tokio::task::spawn_blocking(move || {
        let ok = broker.terminate();
        (broker, ok)
    });
    let close = raw.read_connection_close().await;
    assert_eq!(close.code, 320, "{close:?}");
    let (mut broker, exited_ok) = broker_task.await.expect("join");
    assert!(exited_ok, "the broker must exit 0 after SIGTERM");
    drop(conn);
    broker.start_again();
    let (conn, ch) = connect_channel(&broker).await;
    let got = drain(&ch, &q).await;
    assert_eq!(
        got.len(),
        50,
        "confirmed messages lost across a graceful shutdown"
    );
    assert_eq!(got[0], b"m0");
    let _ = conn.close(200, "bye".into()).await;
}
