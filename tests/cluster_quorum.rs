//! Quorum queues replicated on a cluster of `hopper` processes on loopback:
//! messages published, counted, got and purged through any node; a publish
//! without a majority nacked at the confirm timeout; a node outside the
//! group served through the leader; messages and snapshots larger than a
//! link frame.

mod common;

use common::cluster::{channel, durable, Cluster, SLOW};
use common::{quorum_args, within_for};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use std::time::{Duration, Instant};

/// A quorum queue's messages through any node: declared through node 1 and
/// published at once through node 3 (a declare-ok means it exists on every
/// live node: the publish is routed, not returned), confirmed, then counted,
/// got and purged through node 2, a follower or the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queue_messages_publish_get_and_purge_through_any_node() {
    let c = Cluster::start();
    {
        let (_c, ch) = within_for(SLOW, "node 1 up", channel(&c.nodes[0])).await;
        within_for(
            SLOW,
            "the quorum queue declared",
            ch.queue_declare("q.msgs".into(), durable(), quorum_args(&[])),
        )
        .await
        .expect("declare through node 1");
    }
    let (_p, publisher) = channel(&c.nodes[2]).await;
    common::confirm_select(&publisher).await;
    for i in 0..50 {
        let confirm = within_for(
            SLOW,
            "basic.publish",
            publisher.basic_publish(
                "".into(),
                "q.msgs".into(),
                lapin::options::BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                format!("m{i}").as_bytes(),
                lapin::BasicProperties::default(),
            ),
        )
        .await
        .expect("publish through node 3");
        // Confirmed only once a majority of the group has it: give the
        // group's first election (2-4 s) the time it takes.
        let confirmation = within_for(SLOW, "publisher confirm", confirm)
            .await
            .expect("confirm");
        assert!(
            matches!(confirmation, lapin::Confirmation::Ack(None)),
            "message {i}: expected an ack without a return, got {confirmation:?}"
        );
    }
    let (_g, getter) = channel(&c.nodes[1]).await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let q = getter
        .queue_declare("q.msgs".into(), passive, FieldTable::default())
        .await
        .expect("passive declare through node 2");
    assert_eq!(q.message_count(), 50, "every node counts the whole queue");
    for i in 0..10 {
        let m = common::get(&getter, "q.msgs", false)
            .await
            .unwrap_or_else(|| panic!("message {i} through node 2"));
        assert_eq!(m.delivery.data, format!("m{i}").as_bytes(), "in order");
        m.delivery
            .ack(lapin::options::BasicAckOptions::default())
            .await
            .expect("ack through node 2");
    }
    let purged = getter
        .queue_purge("q.msgs".into(), Default::default())
        .await
        .expect("purge through node 2");
    assert_eq!(purged, 40);
    within_for(SLOW, "every node sees the queue empty", async {
        loop {
            let mut counts = Vec::new();
            for node in &c.nodes {
                let (_c, ch) = channel(node).await;
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                };
                let q = ch
                    .queue_declare("q.msgs".into(), passive, FieldTable::default())
                    .await
                    .expect("passive declare");
                counts.push(q.message_count());
            }
            if counts.iter().all(|n| *n == 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// A publish to a quorum queue whose group has lost its majority is nacked
/// once `confirm_timeout_ms` has passed, never confirmed or left hanging; the
/// queue takes publishes again once a majority is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_without_a_majority_is_nacked_after_the_confirm_timeout() {
    let mut c = Cluster::start_with("confirm_timeout_ms = 1500\n");
    {
        let (_c, ch) = within_for(SLOW, "node 1 up", channel(&c.nodes[0])).await;
        within_for(
            SLOW,
            "the quorum queue declared",
            ch.queue_declare("q.minority".into(), durable(), quorum_args(&[])),
        )
        .await
        .expect("declare");
        common::confirm_select(&ch).await;
        // The group's first election (2-4 s) may take longer than this
        // short confirm timeout: publish until one is confirmed.
        within_for(
            SLOW,
            "a first confirm",
            publish_until_acked(&ch, "q.minority", b"with a majority"),
        )
        .await;
    }
    c.nodes[1].kill9();
    c.nodes[2].kill9();
    let (_c, ch) = channel(&c.nodes[0]).await;
    common::confirm_select(&ch).await;
    let sent = Instant::now();
    let outcome = confirmed(&ch, "q.minority", b"alone", SLOW).await;
    assert!(outcome.is_nack(), "expected a nack, got {outcome:?}");
    assert!(
        sent.elapsed() >= Duration::from_millis(1500),
        "nacked before the confirm timeout: {:?}",
        sent.elapsed()
    );
    c.nodes[1].start_again();
    within_for(
        SLOW,
        "a confirm once a majority is back",
        publish_until_acked(&ch, "q.minority", b"majority again"),
    )
    .await;
}

/// Publish `body` to `queue` until a publish is confirmed (nacks while the
/// group has no leader or no majority).
async fn publish_until_acked(ch: &lapin::Channel, queue: &str, body: &[u8]) {
    while !confirmed(ch, queue, body, SLOW).await.is_ack() {}
}

/// Publish `body` to `queue` through the default exchange and wait up to
/// `wait` for its confirm (an ack or a nack).
async fn confirmed(
    ch: &lapin::Channel,
    queue: &str,
    body: &[u8],
    wait: Duration,
) -> lapin::Confirmation {
    let confirm = ch
        .basic_publish(
            "".into(),
            queue.into(),
            Default::default(),
            body,
            lapin::BasicProperties::default(),
        )
        .await
        .expect("publish");
    within_for(wait, "the confirm", confirm)
        .await
        .expect("confirm")
}

/// On four nodes a quorum queue declared without a size gets three members
/// (RabbitMQ's default), and the fourth node, which holds no replica, still
/// publishes with confirms, consumes, gets and acks through the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_outside_the_group_publishes_and_consumes_through_the_leader() {
    use futures::StreamExt;
    let mut c = Cluster::start_n(4, "");
    {
        let (_c, ch) = within_for(SLOW, "node 1 up", channel(&c.nodes[0])).await;
        within_for(
            SLOW,
            "the quorum queue declared",
            ch.queue_declare("q.outside".into(), durable(), quorum_args(&[])),
        )
        .await
        .expect("declare through node 1");
    }
    let (_p, publisher) = within_for(SLOW, "node 4 up", channel(&c.nodes[3])).await;
    common::confirm_select(&publisher).await;
    for i in 0..30 {
        let confirm = publisher
            .basic_publish(
                "".into(),
                "q.outside".into(),
                Default::default(),
                format!("m{i}").as_bytes(),
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish through node 4");
        let outcome = within_for(SLOW, "publisher confirm", confirm)
            .await
            .expect("confirm");
        assert!(outcome.is_ack(), "message {i}: {outcome:?}");
    }
    let addr = c.nodes[3].mgmt_addr();
    let info = common::mgmt::http(
        addr,
        "GET",
        "/api/queues/%2f/q.outside",
        Some(("guest", "guest")),
        None,
    )
    .json();
    let members: Vec<String> = info["members"]
        .as_array()
        .unwrap_or_else(|| panic!("members in {info}"))
        .iter()
        .filter_map(|m| m.as_str().map(str::to_string))
        .collect();
    assert_eq!(members.len(), 3, "three members by default: {info}");
    assert!(
        !members.iter().any(|m| m.ends_with("@4")),
        "node 4 is not a member: {members:?}"
    );
    assert_eq!(info["messages"], 30, "{info}");

    let (_g, getter) = channel(&c.nodes[3]).await;
    let first = common::get(&getter, "q.outside", false)
        .await
        .expect("basic.get through node 4");
    assert_eq!(first.delivery.data, b"m0");
    // Like RabbitMQ, every node counts what no consumer holds.
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    for (i, node) in [(3, "node 4"), (1, "node 2"), (0, "node 1")] {
        let (_x, ch) = channel(&c.nodes[i]).await;
        let q = ch
            .queue_declare("q.outside".into(), passive, FieldTable::default())
            .await
            .unwrap_or_else(|e| panic!("passive declare through {node}: {e}"));
        assert_eq!(q.message_count(), 29, "one of 30 unacked, through {node}");
    }
    first
        .delivery
        .ack(Default::default())
        .await
        .expect("ack the got message");
    getter.basic_qos(10, Default::default()).await.expect("qos");
    let mut consumer = getter
        .basic_consume(
            "q.outside".into(),
            "outside".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume through node 4");
    for i in 1..30 {
        let d = within_for(SLOW, "a delivery through node 4", consumer.next())
            .await
            .expect("a delivery")
            .expect("not an error");
        assert_eq!(d.data, format!("m{i}").as_bytes(), "in order");
        d.ack(Default::default()).await.expect("ack");
    }
    let (_q, counter) = channel(&c.nodes[1]).await;
    within_for(SLOW, "the acks settled on the group", async {
        loop {
            let q = counter
                .queue_declare(
                    "q.outside".into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("passive declare through node 2");
            if q.message_count() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

/// A message larger than one link frame used to hold (64 MiB) reaches a
/// majority and is confirmed, and the queue keeps working after it (the
/// leader used to retry the oversized append forever: the group was wedged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_replicates_a_message_larger_than_a_link_frame() {
    let c = Cluster::start();
    let (_c, ch) = within_for(SLOW, "node 1 up", channel(&c.nodes[0])).await;
    within_for(
        SLOW,
        "the quorum queue declared",
        ch.queue_declare("q.large".into(), durable(), quorum_args(&[])),
    )
    .await
    .expect("declare");
    common::confirm_select(&ch).await;
    let large = vec![7u8; 70 * 1024 * 1024];
    for (what, body) in [("70 MiB", &large[..]), ("small", &b"after"[..])] {
        let outcome = confirmed(&ch, "q.large", body, Duration::from_secs(90)).await;
        assert!(outcome.is_ack(), "{what}: {outcome:?}");
    }
    let (_g, getter) = channel(&c.nodes[1]).await;
    let first = within_for(
        SLOW,
        "get the large one",
        common::get(&getter, "q.large", true),
    )
    .await
    .expect("the large message");
    assert_eq!(first.delivery.data.len(), large.len());
    let second = common::get(&getter, "q.large", true)
        .await
        .expect("the small message");
    assert_eq!(second.delivery.data, b"after");
}

/// A member down while the queue's log moved on past what the leader keeps
/// catches up from a snapshot of 70 MiB, sent in chunks (it used to go as
/// one link frame, at most 64 MiB: the member never caught up), and is then
/// needed for the majority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_far_behind_catches_up_from_a_snapshot_in_chunks() {
    use futures::StreamExt;
    const N: usize = 2100;
    let mut c = Cluster::start();
    let (_c, ch) = within_for(SLOW, "node 1 up", channel(&c.nodes[0])).await;
    within_for(
        SLOW,
        "the quorum queue declared",
        ch.queue_declare("q.behind".into(), durable(), quorum_args(&[])),
    )
    .await
    .expect("declare");
    common::confirm_select(&ch).await;
    let publish = |i: usize| {
        let ch = ch.clone();
        async move {
            let mut body = vec![b'.'; 34 * 1024];
            body[..8].copy_from_slice(&(i as u64).to_be_bytes());
            confirmed(&ch, "q.behind", &body, SLOW).await
        }
    };
    assert!(publish(0).await.is_ack(), "with every member up");
    c.nodes[2].kill9();
    // One message per log entry (each waits for its confirm): the log moves
    // past two snapshots (every 1,024 entries, 256 kept behind), so the
    // entries node 3 lacks are purged whatever the timing of the first.
    for i in 1..N {
        let outcome = publish(i).await;
        assert!(
            outcome.is_ack(),
            "message {i} with two members: {outcome:?}"
        );
    }
    c.nodes[2].start_again();
    within_for(Duration::from_secs(60), "node 3's snapshot", async {
        while !c.nodes[2]
            .log()
            .contains("quorum queue caught up from a snapshot")
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    c.nodes[1].kill9();
    let outcome = publish(N).await;
    assert!(outcome.is_ack(), "node 3 makes the majority: {outcome:?}");

    let (_q, counter) = channel(&c.nodes[2]).await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = counter
        .queue_declare("q.behind".into(), passive, FieldTable::default())
        .await
        .expect("passive declare through node 3");
    assert_eq!(q.message_count() as usize, N + 1);
    let mut consumer = ch
        .basic_consume(
            "q.behind".into(),
            "all".into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    for i in 0..=N {
        let d = within_for(SLOW, "a delivery", consumer.next())
            .await
            .expect("a delivery")
            .expect("not an error");
        let got = u64::from_be_bytes(d.data[..8].try_into().expect("8 bytes"));
        assert_eq!(got, i as u64, "in order");
    }
}

/// Every member killed -9 at once and started again: the confirmed
/// messages that were not acked are all there (the unacked ones too), the
/// acked ones are gone, and the queue takes publishes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_cluster_killed_at_once_keeps_every_unacked_confirmed_message() {
    use futures::StreamExt;
    let mut c = Cluster::start();
    {
        let (_c, ch) = within_for(SLOW, "node 1 up", channel(&c.nodes[0])).await;
        within_for(
            SLOW,
            "the quorum queue declared",
            ch.queue_declare("q.all".into(), durable(), quorum_args(&[])),
        )
        .await
        .expect("declare");
    }
    let (_p, publisher) = channel(&c.nodes[1]).await;
    common::confirm_select(&publisher).await;
    let mut confirms = Vec::new();
    for i in 0u32..300 {
        let confirm = publisher
            .basic_publish(
                "".into(),
                "q.all".into(),
                Default::default(),
                &i.to_be_bytes(),
                lapin::BasicProperties::default(),
            )
            .await
            .expect("publish");
        confirms.push(confirm);
    }
    for (i, confirm) in confirms.into_iter().enumerate() {
        let outcome = within_for(SLOW, "a confirm", confirm)
            .await
            .expect("confirm");
        assert!(outcome.is_ack(), "message {i}: {outcome:?}");
    }
    // Through node 3: ack the first 100, hold the next 50 unacked.
    let (_g, getter) = channel(&c.nodes[2]).await;
    for i in 0u32..150 {
        let m = within_for(SLOW, "a get", common::get(&getter, "q.all", false))
            .await
            .unwrap_or_else(|| panic!("message {i}"));
        assert_eq!(m.delivery.data, i.to_be_bytes());
        if i < 100 {
            m.delivery.ack(Default::default()).await.expect("ack");
        }
    }
    // The acks are settled through the log before the crash.
    let (_x, counter) = channel(&c.nodes[0]).await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    within_for(SLOW, "150 ready", async {
        loop {
            let q = counter
                .queue_declare("q.all".into(), passive, FieldTable::default())
                .await
                .expect("passive declare");
            if q.message_count() == 150 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    for n in &mut c.nodes {
        n.kill9();
    }
    for n in &mut c.nodes {
        n.start_again();
    }
    let (_c, ch) = within_for(SLOW, "node 2 back", channel(&c.nodes[1])).await;
    ch.basic_qos(500, Default::default()).await.expect("qos");
    let mut consumer = within_for(
        SLOW,
        "a consumer after the restart",
        ch.basic_consume(
            "q.all".into(),
            "after".into(),
            Default::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("consume");
    let mut got = Vec::new();
    while got.len() < 200 {
        let Ok(next) = tokio::time::timeout(SLOW, consumer.next()).await else {
            panic!("{} of 200 delivered after the restart: {got:?}", got.len());
        };
        let d = next.expect("a delivery").expect("not an error");
        let i = u32::from_be_bytes(d.data[..4].try_into().expect("4 bytes"));
        if i < 150 {
            assert!(d.redelivered, "message {i} was delivered before the crash");
        }
        got.push(i);
        d.ack(Default::default()).await.expect("ack");
    }
    got.sort_unstable();
    assert_eq!(
        got,
        (100..300).collect::<Vec<u32>>(),
        "the unacked and the ready, once each"
    );
    common::confirm_select(&ch).await;
    let outcome = confirmed(&ch, "q.all", b"after", SLOW).await;
    assert!(outcome.is_ack(), "{outcome:?}");
}
