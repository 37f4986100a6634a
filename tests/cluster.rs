//! A three-node cluster on loopback: three `hopper` processes, each with its
//! own data dir and a `[cluster]` config. The meta group forms, definitions
//! declared through any node appear on the others, conflicting concurrent
//! declares get one ok and one 406, the meta leader's kill -9 elects a new
//! leader and declares keep working through the survivors, a restarted node
//! catches up, and every node's restart keeps the definitions. Also: bad
//! `[cluster]` sections stop the broker with a clear error.

mod common;

use common::{connect_uri, within_for, Broker};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ExchangeKind};
use std::time::{Duration, Instant};

const CONF: &str = include_str!("../conf/broker.toml");
/// Waits that include an election (2-4 s timeouts) or a process start.
const SLOW: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

struct Cluster {
    nodes: Vec<Broker>,
    _conf: tempfile::TempDir,
}

fn cluster_section(id: u8, ports: &[u16], secret: Option<&std::path::Path>) -> String {
    let peers: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{{ id = {}, addr = \"127.0.0.1:{p}\" }}", i + 1))
        .collect();
    let mut s = format!(
        "\n[cluster]\nnode_id = {id}\nlisten = \"127.0.0.1:{}\"\npeers = [ {} ]\n",
        ports[id as usize - 1],
        peers.join(", ")
    );
    if let Some(p) = secret {
        s.push_str(&format!("secret_file = \"{}\"\n", p.display()));
    }
    s
}

impl Cluster {
    fn start() -> Cluster {
        Cluster::start_with("")
    }

    /// Three nodes whose `[cluster]` sections end with `extra` lines.
    fn start_with(extra: &str) -> Cluster {
        Cluster::start_n(3, extra)
    }

    /// `n` nodes whose `[cluster]` sections end with `extra` lines.
    fn start_n(n: u8, extra: &str) -> Cluster {
        let conf = tempfile::tempdir().unwrap();
        let secret = conf.path().join("secret");
        std::fs::write(&secret, "correct horse battery staple\n").unwrap();
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let nodes = (1..=n)
            .map(|id| {
                let path = conf.path().join(format!("node{id}.toml"));
                std::fs::write(
                    &path,
                    format!(
                        "{CONF}{}{extra}",
                        cluster_section(id, &ports, Some(&secret))
                    ),
                )
                .unwrap();
                Broker::start_with_args(&["--config", path.to_str().unwrap()])
            })
            .collect();
        Cluster { nodes, _conf: conf }
    }

    /// The meta group's leader as the last "meta group leader" line of any
    /// running node's log names it (openraft's view on that node).
    fn leader_seen_by(&self, i: usize) -> Option<u8> {
        let log = self.nodes[i].log();
        let line = log.lines().rfind(|l| l.contains("meta group leader"))?;
        let at = line.find("leader=hopper@")? + "leader=hopper@".len();
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    }
}

async fn channel(node: &Broker) -> (Connection, Channel) {
    let conn = connect_uri(&node.uri()).await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    (conn, ch)
}

fn quorum_args(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    for (k, v) in extra {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

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
        let ok = within_for(SLOW, "a first confirm", async {
            let confirm = ch
                .basic_publish(
                    "".into(),
                    "q.minority".into(),
                    Default::default(),
                    b"with a majority",
                    lapin::BasicProperties::default(),
                )
                .await
                .expect("publish");
            confirm.await.expect("confirm")
        })
        .await;
        assert!(ok.is_ack(), "{ok:?}");
    }
    c.nodes[1].kill9();
    c.nodes[2].kill9();
    let (_c, ch) = channel(&c.nodes[0]).await;
    common::confirm_select(&ch).await;
    let sent = Instant::now();
    let confirm = ch
        .basic_publish(
            "".into(),
            "q.minority".into(),
            Default::default(),
            b"alone",
            lapin::BasicProperties::default(),
        )
        .await
        .expect("publish to the minority");
    let outcome = within_for(SLOW, "the minority's answer", confirm)
        .await
        .expect("confirm");
    assert!(outcome.is_nack(), "expected a nack, got {outcome:?}");
    assert!(
        sent.elapsed() >= Duration::from_millis(1500),
        "nacked before the confirm timeout: {:?}",
        sent.elapsed()
    );
    c.nodes[1].start_again();
    let ok = within_for(SLOW, "a confirm once a majority is back", async {
        loop {
            let confirm = ch
                .basic_publish(
                    "".into(),
                    "q.minority".into(),
                    Default::default(),
                    b"majority again",
                    lapin::BasicProperties::default(),
                )
                .await
                .expect("publish");
            let outcome = confirm.await.expect("confirm");
            if outcome.is_ack() {
                break outcome;
            }
        }
    })
    .await;
    assert!(ok.is_ack());
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
