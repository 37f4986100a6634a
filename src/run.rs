//! The broker as one library call: `run(config, shutdown)` opens and checks
//! the store, builds the broker, starts the cluster node (`[cluster]`),
//! binds every listener (AMQP, amqps, management, Prometheus), starts the background tasks (sweeper, disk alarm) and serves
//! until `shutdown` completes; then it closes every client with 320, waits
//! for them (5 s at most) and syncs the store's last batch. The binary
//! (`main.rs`) and the in-process test harness (`tests/common/inproc.rs`) both
//! start the broker here, so what the tests run is what ships.
//!
//! This module wires; it never parses arguments, sets up logging or prints to
//! stdout (the caller reports the addresses it gets back), and it serves no
//! frames itself.

use anyhow::Context;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::config::Config;
use crate::server::Listener;
use crate::store::Store;

/// How long connections get to finish after the 320 at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A broker serving in the background of the current runtime.
pub struct Running {
    /// The broker itself (for in-process callers: tests, tools).
    pub broker: Arc<Broker>,
    /// The plain AMQP listener's address (port 0 resolved).
    pub amqp: SocketAddr,
    /// The amqps listener's address, when the config has `[tls]`.
    pub amqps: Option<SocketAddr>,
    /// The management API's address, unless it is `off`.
    pub management: Option<SocketAddr>,
    /// The Prometheus listener's address, unless it is `off`.
    pub metrics: Option<SocketAddr>,
    task: JoinHandle<()>,
}

impl Running {
    /// Wait until the broker has stopped: `shutdown` completed, clients
    /// closed, store synced.
    pub async fn stopped(self) -> anyhow::Result<()> {
        self.task.await.context("the broker task failed")
    }
}

/// Open the store in `config.data_dir`, verify it, and run the broker on it
/// until `shutdown` completes (see the module docs). Returns once every
/// listener is bound, with their addresses.
#[cfg(feature = "rocks")]
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Running> {
    // Certificate and key problems stop the broker before it touches the store.
    let tls = tls_acceptor(&config)?;
    let rocks = crate::store::rocks::RocksStore::open(&config.data_dir)
        .with_context(|| format!("opening data directory {}", config.data_dir.display()))?;
    // Every record read back before anything is served: a damaged file
    // stops the broker here instead of surfacing when a consumer reaches it.
    let verified = rocks
        .verify()
        .with_context(|| format!("checking data directory {}", config.data_dir.display()))?;
    tracing::info!(
        table_files = verified.table_files,
        ms = verified.millis,
        "store read back and verified"
    );
    start(config, tls, Arc::new(rocks), shutdown).await
}

/// `run` on a store the caller opened (e.g. `store::NullStore`).
pub async fn run_with_store(
    config: Config,
    store: Arc<dyn Store>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Running> {
    let tls = tls_acceptor(&config)?;
    start(config, tls, store, shutdown).await
}

type TlsSetup = Option<(String, tokio_rustls::TlsAcceptor)>;

fn tls_acceptor(config: &Config) -> anyhow::Result<TlsSetup> {
    Ok(match &config.tls {
        Some(t) => Some((t.listen.clone(), crate::tls::acceptor(t)?)),
        None => None,
    })
}

async fn start(
    config: Config,
    tls: TlsSetup,
    store: Arc<dyn Store>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Running> {
    let listen = config.listen.clone();
    let management_listen = config.management.address().map(str::to_string);
    let metrics_listen = config.prometheus.address().map(str::to_string);
    let load_definitions = config.load_definitions.clone();
    let broker = Broker::new(config, store).context("recovering the store")?;
    if let Some(path) = load_definitions {
        crate::http::definitions::load_file(&broker, &path)
            .with_context(|| format!("loading definitions from {}", path.display()))?;
    }
    // `[cluster]`: the link and the meta group; nothing without the section.
    let cluster = crate::cluster::start(&broker, broker.shutdown_signal())
        .await
        .context("starting the cluster")?;

    // Every listener is bound here, before anything is served.
    let (tcp, amqp) = bind(&listen, "").await?;
    tracing::info!(addr = %amqp, "listening");
    broker.add_listener("amqp", amqp);
    let mut listeners = vec![Listener::plain(tcp)];
    let mut amqps = None;
    if let Some((tls_listen, acceptor)) = tls {
        let (tcp, a) = bind(&tls_listen, " (tls.listen)").await?;
        tracing::info!(addr = %a, "listening (amqps)");
        broker.add_listener("amqp/ssl", a);
        amqps = Some(a);
        listeners.push(Listener::tls(tcp, acceptor));
    }
    let mut management = None;
    let mut http_listener = None;
    if let Some(m) = &management_listen {
        let (tcp, a) = bind(m, " (management.listen)").await?;
        tracing::info!(addr = %a, "management API listening");
        broker.add_listener("http", a);
        management = Some(a);
        http_listener = Some(tcp);
    }
    let metrics_server = match &metrics_listen {
        Some(m) => Some(
            crate::http::metrics::start(m, &broker)
                .await
                .with_context(|| format!("binding {m} (prometheus.listen)"))?,
        ),
        None => None,
    };
    let metrics = metrics_server.as_ref().map(|(a, _)| *a);

    let http = http_listener.map(|tcp| {
        tokio::spawn(crate::http::serve(
            tcp,
            broker.clone(),
            broker.shutdown_signal(),
        ))
    });
    let sweeper = tokio::spawn(crate::broker::deadletter::sweeper(broker.clone()));
    let disk_watch = tokio::spawn(crate::broker::disk::watch(broker.clone()));
    let task = {
        let broker = broker.clone();
        tokio::spawn(async move {
            crate::server::run(listeners, broker.clone(), shutdown).await;
            // Leadership handed over before this node's Raft stops.
            if let Some(node) = cluster {
                node.stop().await;
            }
            // Stop accepting (done), close clients with 320, let their pending
            // work reach the store, then finish and sync every store write.
            broker.close_connections(SHUTDOWN_GRACE).await;
            sweeper.abort();
            disk_watch.abort();
            if let Some(h) = http {
                h.abort();
            }
            if let Some((_, h)) = metrics_server {
                h.abort();
            }
            broker.store.shutdown();
        })
    };
    Ok(Running {
        broker,
        amqp,
        amqps,
        management,
        metrics,
        task,
    })
}

/// Bind `addr`; `what` names the config key in the error (" (tls.listen)").
async fn bind(addr: &str, what: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let tcp = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}{what}"))?;
    let local = tcp.local_addr()?;
    Ok((tcp, local))
}
