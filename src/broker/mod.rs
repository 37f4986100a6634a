//! Shared broker state: vhosts with their exchanges, queues and bindings, the
//! store, and id counters. Recovery at boot rebuilds it from the store.

mod arguments;
pub mod connections;
pub mod deadletter;
pub mod disk;
pub mod policy;
pub mod publish;
pub mod queue_type;
pub mod stats;
pub mod users;
pub mod vhost;

use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::Config;
use crate::store::{Store, StoreError};
pub use vhost::VHost;

/// Where a direct reply-to reply goes: the requester's channel (which
/// implements this, so the broker never names a channel).
pub trait ReplyTarget: Send + Sync {
    /// Deliver a reply to the reply consumer; false when it is gone.
    fn deliver_reply(&self, routing_key: &str, raw_properties: &[u8], body: &[u8]) -> bool;
}

#[derive(Debug)]
pub struct Broker {
    pub config: Config,
    /// Users, password hashes and permissions, from the config.
    pub access: crate::auth::Access,
    pub vhosts: DashMap<String, Arc<VHost>>,
    pub store: Arc<dyn Store>,
    /// Direct reply-to: routing token → the channel whose consumer gets replies.
    pub reply_channels: DashMap<String, std::sync::Weak<dyn ReplyTarget>>,
    next_conn_id: AtomicU64,
    next_msg_id: AtomicU64,
    /// Flips to true when the broker shuts down: connections close with 320.
    shutdown: tokio::sync::watch::Sender<bool>,
    /// Connections still being served.
    live_connections: std::sync::atomic::AtomicUsize,
    /// Open connections per user.
    user_connections: DashMap<String, usize>,
    /// Open connections by id, for the management API (`connections`).
    pub connections: DashMap<u64, Arc<connections::ConnectionInfo>>,
    /// The bound listeners (protocol as RabbitMQ names it, address), set by
    /// whoever binds them; the management API reports them.
    listeners: parking_lot::Mutex<Vec<(&'static str, std::net::SocketAddr)>>,
    /// Which resource alarms are on.
    alarms: parking_lot::Mutex<Alarms>,
    /// True while any resource alarm is on: publishers are blocked.
    alarm: tokio::sync::watch::Sender<bool>,
    /// Dead letters whose bodies must be read back from the store.
    pub(crate) dead_letter_lane: deadletter::Lane,
    /// Counts that outlive channels and connections, and churn.
    pub stats: stats::BrokerStats,
    /// The cluster's handle when `[cluster]` is configured, set once by
    /// `cluster::start`; the broker never looks inside (`cluster::of` does).
    pub cluster: std::sync::OnceLock<Arc<dyn std::any::Any + Send + Sync>>,
}

/// The resource alarms. Publishers are blocked while either is on and
/// unblocked only when neither is.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Alarms {
    /// Queues hold more message bytes than `limits.memory_high_watermark`.
    pub memory: bool,
    /// The data directory's filesystem has less free than `limits.disk_free_limit`.
    pub disk: bool,
    /// The store's writes fail (a full disk whatever the limit, an I/O
    /// error) until it resumes: a disk alarm too, as far as clients can tell.
    pub store: bool,
}

impl Alarms {
    pub fn any(&self) -> bool {
        self.memory || self.disk || self.store
    }

    /// The reason sent in connection.blocked (RabbitMQ's wording).
    pub fn reason(&self) -> &'static str {
        match (self.memory, self.disk || self.store) {
            (true, true) => "low on memory & disk",
            (false, true) => "low on disk",
            _ => "low on memory",
        }
    }
}

impl Broker {
    /// Build the broker: the configured vhosts, then everything the store kept.
    pub fn new(config: Config, store: Arc<dyn Store>) -> Result<Arc<Broker>, StoreError> {
        let vhosts = DashMap::new();
        for name in &config.vhosts {
            vhosts.insert(
                name.clone(),
                Arc::new(VHost::new(name.clone(), store.clone())),
            );
        }
        let recovered = store.recover()?;
        let broker = Arc::new(Broker {
            access: crate::auth::Access::new(&config),
            config,
            vhosts,
            next_msg_id: AtomicU64::new(store.max_message_id() + 1),
            store,
            reply_channels: DashMap::new(),
            shutdown: tokio::sync::watch::channel(false).0,
            live_connections: std::sync::atomic::AtomicUsize::new(0),
            user_connections: DashMap::new(),
            connections: DashMap::new(),
            listeners: parking_lot::Mutex::new(Vec::new()),
            alarms: parking_lot::Mutex::new(Alarms::default()),
            alarm: tokio::sync::watch::channel(false).0,
            stats: Default::default(),
            next_conn_id: AtomicU64::new(1),
            dead_letter_lane: deadletter::Lane::default(),
            cluster: std::sync::OnceLock::new(),
        });
        broker.restore(recovered);
        Ok(broker)
    }

    fn restore(self: &Arc<Self>, rec: crate::store::Recovered) {
        let vhost = |name: &str| -> Arc<VHost> {
            self.vhosts
                .entry(name.to_string())
                .or_insert_with(|| Arc::new(VHost::new(name.to_string(), self.store.clone())))
                .clone()
        };
        for x in rec.exchanges {
            vhost(&x.vhost).restore_exchange(x);
        }
        let mut queues = 0usize;
        let mut messages = 0usize;
        for (q, msgs) in rec.queues {
            queues += 1;
            messages += msgs.len();
            vhost(&q.vhost).restore_queue(q, msgs);
        }
        for b in rec.bindings {
            vhost(&b.vhost).restore_binding(b);
        }
        let now = crate::queue::now_ms();
        for d in rec.dedup {
            if let Some(x) = vhost(&d.vhost).exchanges.get(&d.exchange) {
                if let Some(cache) = &x.dedup {
                    cache.restore(d.key, d.expires_at, now);
                }
            }
        }
        if queues > 0 {
            tracing::info!(queues, messages, "recovered durable queues");
        }
        self.restore_objects(rec.objects);
    }

    /// Ask every connection to close (320 CONNECTION_FORCED) and wait up to
    /// `grace` for them to finish, so their pending work reaches the store.
    pub async fn close_connections(&self, grace: std::time::Duration) {
        self.shutdown.send_replace(true);
        let deadline = tokio::time::Instant::now() + grace;
        while self.live_connections.load(Ordering::Acquire) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub fn shutdown_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn connection_started(&self) {
        self.live_connections.fetch_add(1, Ordering::AcqRel);
    }

    pub fn alarm(&self) -> tokio::sync::watch::Receiver<bool> {
        self.alarm.subscribe()
    }

    /// Re-evaluate the memory alarm from what the queues hold now.
    pub fn check_memory(&self) {
        let limit = self.config.limits.memory_high_watermark;
        if limit == 0 {
            return;
        }
        let used: usize = self
            .vhosts
            .iter()
            .map(|v| v.queues.iter().map(|q| q.memory()).sum::<usize>())
            .sum();
        let on = used > limit;
        self.set_alarm(|a| {
            if a.memory != on {
                if on {
                    tracing::warn!(used, limit, "memory alarm: blocking publishers");
                } else {
                    tracing::info!(used, limit, "memory alarm cleared");
                }
            }
            a.memory = on;
        });
    }

    /// Re-evaluate the disk alarm from a reading of the free bytes on the
    /// data directory's filesystem (see `disk::watch`).
    pub fn check_disk(&self, free: u64) {
        let limit = self.config.limits.disk_free_limit;
        let on = limit > 0 && free < limit;
        self.set_alarm(|a| {
            if a.disk != on {
                if on {
                    tracing::warn!(
                        free,
                        limit,
                        "disk alarm: free disk space below disk_free_limit, blocking publishers"
                    );
                } else {
                    tracing::info!(free, limit, "disk alarm cleared");
                }
            }
            a.disk = on;
        });
    }

    /// The store says whether its writes fail (see `disk::watch`): publishers
    /// are blocked from its first failed write until it has resumed.
    pub fn set_store_failing(&self, failing: bool) {
        self.set_alarm(|a| {
            if a.store != failing {
                if failing {
                    tracing::warn!("disk alarm: store writes fail, blocking publishers");
                } else {
                    tracing::info!("disk alarm cleared: the store resumed");
                }
            }
            a.store = failing;
        });
    }

    /// The alarms in force now.
    pub fn alarms(&self) -> Alarms {
        *self.alarms.lock()
    }

    /// Change one alarm and publish whether any is on (publishers wake on a
    /// change of that only, so one alarm clearing while the other holds
    /// keeps them blocked).
    fn set_alarm(&self, update: impl FnOnce(&mut Alarms)) {
        let mut alarms = self.alarms.lock();
        let was = alarms.any();
        update(&mut alarms);
        let any = alarms.any();
        if any != was {
            if !any {
                tracing::info!("all resource alarms cleared: unblocking publishers");
            }
            self.alarm.send_replace(any);
        }
    }

    /// Record a bound listener: "amqp", "amqp/ssl" or "http".
    pub fn add_listener(&self, protocol: &'static str, addr: std::net::SocketAddr) {
        self.listeners.lock().push((protocol, addr));
    }

    pub fn listeners(&self) -> Vec<(&'static str, std::net::SocketAddr)> {
        self.listeners.lock().clone()
    }

    pub fn live_connection_count(&self) -> usize {
        self.live_connections.load(Ordering::Acquire)
    }

    /// Count a user's open connection; false when over their limit.
    pub fn user_connected(&self, user: &str) -> bool {
        let max = self.config.limits.max_connections_per_user;
        let mut n = self.user_connections.entry(user.to_string()).or_insert(0);
        if max > 0 && *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    pub fn user_disconnected(&self, user: &str) {
        if let Some(mut n) = self.user_connections.get_mut(user) {
            *n = n.saturating_sub(1);
        }
    }

    pub fn connection_ended(&self) {
        self.live_connections.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.get(name).map(|v| v.clone())
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Continue message ids from `base`: a cluster node gives ids unique in
    /// the cluster (its store also holds other nodes' ids, above or below).
    pub fn reseed_message_ids(&self, base: u64) {
        self.next_msg_id.store(base, Ordering::Relaxed);
    }

    pub fn next_message_id(&self) -> u64 {
        self.next_msg_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Check a user's password for an AMQP login (counted as RabbitMQ's `auth_attempts{protocol="amqp091"}`).
    pub fn authenticate(
        &self,
        user: &str,
        password: &str,
    ) -> Result<(), crate::auth::LoginFailure> {
        let r = self.access.authenticate(user, password.as_bytes());
        let s = &self.stats;
        match r {
            Ok(()) => s.auth_amqp_succeeded.add_shared(1),
            Err(_) => s.auth_amqp_failed.add_shared(1),
        }
        r
    }

    /// A management API login (`auth_attempts{protocol="http"}`).
    pub fn authenticate_http(
        &self,
        user: &str,
        password: &str,
    ) -> Result<(), crate::auth::LoginFailure> {
        let r = self.access.authenticate(user, password.as_bytes());
        let s = &self.stats;
        match r {
            Ok(()) => s.auth_http_succeeded.add_shared(1),
            Err(_) => s.auth_http_failed.add_shared(1),
        }
        r
    }

    pub fn may_open_vhost(&self, user: &str, vhost: &str) -> bool {
        self.access.may_open_vhost(user, vhost)
    }
}
