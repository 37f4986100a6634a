//! Several `hopper` processes on loopback forming a cluster, each with its
//! own data dir and a `[cluster]` config (for `tests/cluster.rs` and
//! `tests/cluster_quorum.rs`), and the lapin helpers those tests share.

use super::{connect_uri, Broker};
use lapin::options::QueueDeclareOptions;
use lapin::{Channel, Connection};
use std::time::Duration;

pub const CONF: &str = include_str!("../../conf/broker.toml");
/// Waits that include an election (2-4 s timeouts) or a process start.
pub const SLOW: Duration = Duration::from_secs(20);

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub struct Cluster {
    pub nodes: Vec<Broker>,
    _conf: tempfile::TempDir,
}

pub fn cluster_section(id: u8, ports: &[u16], secret: Option<&std::path::Path>) -> String {
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
    pub fn start() -> Cluster {
        Cluster::start_with("")
    }

    /// Three nodes whose `[cluster]` sections end with `extra` lines.
    pub fn start_with(extra: &str) -> Cluster {
        Cluster::start_n(3, extra)
    }

    /// `n` nodes whose `[cluster]` sections end with `extra` lines.
    pub fn start_n(n: u8, extra: &str) -> Cluster {
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
    pub fn leader_seen_by(&self, i: usize) -> Option<u8> {
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

pub async fn channel(node: &Broker) -> (Connection, Channel) {
    let conn = connect_uri(&node.uri()).await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    (conn, ch)
}

pub fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}
