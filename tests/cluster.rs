//! A three-node cluster on loopback: three `hopper` processes, each with its
//! own data dir and a `[cluster]` config. The meta group forms, definitions
//! declared through any node appear on the others, conflicting concurrent
//! declares get one ok and one 406, the meta leader's kill -9 elects a new
//! leader and declares keep working through the survivors, a restarted node
//! catches up, and every node's restart keeps the definitions. Also: bad
//! `[cluster]` sections stop the broker with a clear error.

mod common;

use common::cluster::{channel, durable, Cluster, CONF, SLOW};
use common::{connect_uri, quorum_args, within_for, Broker};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::ExchangeKind;
use std::time::{Duration, Instant};

async fn declare_exchange(node: &Broker, name: &str) -> lapin::Result<()> {
    let (_c, ch) = channel(node).await;
    let opts = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    ch.exchange_declare(
        name.into(),
        ExchangeKind::Topic,
        opts,
        FieldTable::default(),
    )
    .await
}

/// Whether `node` has the exchange and the quorum queue (passive declares).
async fn has(node: &Broker, exchange: &str, queue: &str) -> bool {
    let Ok(conn) = connect_uri(&node.uri()).await else {
        return false;
    };
    let passive_x = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    let passive_q = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let Ok(ch) = conn.create_channel().await else {
        return false;
    };
    if ch
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            passive_x,
            FieldTable::default(),
        )
        .await
        .is_err()
    {
        return false;
    }
    let Ok(ch) = conn.create_channel().await else {
        return false;
    };
    ch.queue_declare(queue.into(), passive_q, FieldTable::default())
        .await
        .is_ok()
}

async fn wait_until_has(node: &Broker, exchange: &str, queue: &str, what: &str) {
    within_for(SLOW, what, async {
        while !has(node, exchange, queue).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_definitions_through_failover_and_restarts() {
    let mut c = Cluster::start();

    // Forms: every node sees a leader, the same one.
    within_for(SLOW, "a meta group leader on every node", async {
        loop {
            let seen: Vec<_> = (0..3).map(|i| c.leader_seen_by(i)).collect();
            if seen[0].is_some() && seen.iter().all(|s| *s == seen[0]) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    // Declares through three different nodes, visible on all.
    declare_exchange(&c.nodes[0], "x.repl")
        .await
        .expect("exchange through node 1");
    {
        let (_c, ch) = channel(&c.nodes[1]).await;
        let args = quorum_args(&[("x-max-length", AMQPValue::LongInt(10))]);
        ch.queue_declare("q.repl".into(), durable(), args)
            .await
            .expect("quorum queue through node 2");
    }
    {
        let (_c, ch) = channel(&c.nodes[2]).await;
        ch.queue_bind(
            "q.repl".into(),
            "x.repl".into(),
            "a.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind through node 3");
    }
    let bound = Instant::now();
    for i in 0..3 {
        wait_until_has(&c.nodes[i], "x.repl", "q.repl", "definitions on every node").await;
    }
    eprintln!(
        "definitions visible on every node {:?} after the last declare-ok",
        bound.elapsed()
    );
    // A redeclare with other arguments on another node is refused (406),
    // as the local equivalence check would.
    {
        let (_c, ch) = channel(&c.nodes[2]).await;
        let args = quorum_args(&[("x-max-length", AMQPValue::LongInt(11))]);
        common::assert_code(
            ch.queue_declare("q.repl".into(), durable(), args).await,
            406,
        );
    }

    // Two nodes declare the same name with different arguments at once:
    // exactly one declare-ok, one 406.
    let (n0, n1) = (&c.nodes[0], &c.nodes[1]);
    let race = |node: &Broker, len: i32| {
        let uri = node.uri();
        async move {
            let conn = connect_uri(&uri).await.expect("connect");
            let ch = conn.create_channel().await.expect("channel");
            let args = quorum_args(&[("x-max-length", AMQPValue::LongInt(len))]);
            ch.queue_declare("q.race".into(), durable(), args)
                .await
                .map(drop)
        }
    };
    let (a, b) = tokio::join!(race(n0, 1), race(n1, 2));
    let codes: Vec<Option<u16>> = [&a, &b]
        .iter()
        .map(|r| r.as_ref().err().and_then(common::reply_code))
        .collect();
    assert!(
        (a.is_ok() && codes[1] == Some(406)) || (b.is_ok() && codes[0] == Some(406)),
        "one ok and one 406 expected, got {a:?} / {b:?}"
    );

    // kill -9 of the meta leader: a new leader, and declares work through the survivors.
    let leader = c.leader_seen_by(0).expect("leader") as usize - 1;
    c.nodes[leader].kill9();
    let killed_at = Instant::now();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    within_for(SLOW, "a new leader among the survivors", async {
        loop {
            let seen: Vec<_> = survivors.iter().map(|i| c.leader_seen_by(*i)).collect();
            if seen[0].is_some_and(|l| l as usize - 1 != leader) && seen[0] == seen[1] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    eprintln!(
        "meta leader failover: new leader seen {:?} after kill -9",
        killed_at.elapsed()
    );
    declare_exchange(&c.nodes[survivors[0]], "x.after")
        .await
        .expect("declare after failover");
    {
        let (_c, ch) = channel(&c.nodes[survivors[1]]).await;
        ch.queue_declare("q.after".into(), durable(), quorum_args(&[]))
            .await
            .expect("quorum declare after failover");
    }
    for i in &survivors {
        wait_until_has(
            &c.nodes[*i],
            "x.after",
            "q.after",
            "post-failover definitions on the survivors",
        )
        .await;
    }

    // The killed node comes back and catches up.
    c.nodes[leader].start_again();
    wait_until_has(
        &c.nodes[leader],
        "x.after",
        "q.after",
        "the restarted node catching up",
    )
    .await;

    // A transient exchange lives as long as the cluster, as in RabbitMQ.
    {
        let (_c, ch) = channel(&c.nodes[0]).await;
        ch.exchange_declare(
            "x.transient".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("transient exchange");
    }
    for i in 0..3 {
        wait_until_has(
            &c.nodes[i],
            "x.transient",
            "q.repl",
            "the transient exchange on every node",
        )
        .await;
    }
    // Every node restarted: definitions stay.
    for i in 0..3 {
        c.nodes[i].restart();
    }
    for i in 0..3 {
        wait_until_has(
            &c.nodes[i],
            "x.repl",
            "q.repl",
            "definitions after restarting every node",
        )
        .await;
        wait_until_has(
            &c.nodes[i],
            "x.after",
            "q.after",
            "definitions after restarting every node",
        )
        .await;
        wait_until_has(
            &c.nodes[i],
            "x.transient",
            "q.repl",
            "the transient exchange after restarts",
        )
        .await;
    }
    // And the cluster takes declares again.
    declare_exchange(&c.nodes[2], "x.last")
        .await
        .expect("declare after the full restart");
    for i in 0..3 {
        wait_until_has(
            &c.nodes[i],
            "x.last",
            "q.repl",
            "a declare after the full restart",
        )
        .await;
    }

    // SIGTERM of the leader hands leadership over before the node stops.
    let leader = within_for(SLOW, "a leader after the full restart", async {
        loop {
            let seen: Vec<_> = (0..3).map(|i| c.leader_seen_by(i)).collect();
            if seen[0].is_some() && seen.iter().all(|s| *s == seen[0]) {
                break seen[0].unwrap_or(1) as usize - 1;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let stopping = Instant::now();
    assert!(c.nodes[leader].terminate(), "SIGTERM exits cleanly");
    assert!(c.nodes[leader]
        .log()
        .contains("handing over meta group leadership"));
    let other = (leader + 1) % 3;
    within_for(SLOW, "the new leader after SIGTERM", async {
        while c
            .leader_seen_by(other)
            .is_none_or(|l| l as usize - 1 == leader)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    eprintln!(
        "meta leader handover on SIGTERM: new leader seen {:?} after the signal",
        stopping.elapsed()
    );
    declare_exchange(&c.nodes[other], "x.handover")
        .await
        .expect("declare after the handover");
}

fn start_fails(section: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, format!("{CONF}{section}")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hopper"))
        .args([
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--management-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "hopper started with {section}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_cluster_sections_stop_the_broker_with_a_reason() {
    let err = start_fails(
        "\n[cluster]\nnode_id = 1\nlisten = \"127.0.0.1:1\"\npeers = [ { id = 1, addr = \"a:1\" }, { id = 1, addr = \"b:1\" } ]\n",
    );
    assert!(err.contains("id 1 is listed twice"), "{err}");
    let err = start_fails(
        "\n[cluster]\nnode_id = 3\nlisten = \"127.0.0.1:1\"\npeers = [ { id = 1, addr = \"a:1\" }, { id = 2, addr = \"b:1\" } ]\n",
    );
    assert!(err.contains("must list this node"), "{err}");
    // A listen address another socket holds.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    let err = start_fails(&format!(
        "\n[cluster]\nnode_id = 1\nlisten = \"{addr}\"\npeers = [ {{ id = 1, addr = \"{addr}\" }} ]\n"
    ));
    assert!(
        err.contains(&format!("cannot listen on cluster.listen {addr}")),
        "{err}"
    );
}
