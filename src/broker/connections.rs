//! The registry of open AMQP connections, for the management API: each
//! connection registers itself once its handshake is done (user, vhost,
//! client properties, when) and leaves when it ends; the API lists them and
//! can ask one to close (the connection then sends 320 CONNECTION_FORCED
//! itself). Channels are seen through `ChannelView`, which the channel layer
//! implements (this module never names it). Nothing on the publish path
//! reads the registry. A channel's message counts are folded into its
//! connection's (and the broker's) retired totals when it leaves, so totals
//! never go down.

use amq_protocol::types::FieldTable;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::Broker;
use crate::stats::{IoCounters, MsgCounts};

/// A channel as the management API shows it, read when asked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelSnapshot {
    pub number: u16,
    /// basic.qos global=false: per consumer.
    pub prefetch_count: u16,
    /// basic.qos global=true: shared by the channel's consumers.
    pub global_prefetch_count: u16,
    pub confirm: bool,
    pub consumer_count: usize,
    pub unacked: usize,
    pub unconfirmed: usize,
    pub counts: MsgCounts,
}

/// An open channel, as the registry sees it.
pub trait ChannelView: Send + Sync + std::fmt::Debug {
    fn snapshot(&self) -> ChannelSnapshot;
    /// Its message counts so far (cheaper than a snapshot).
    fn counters(&self) -> MsgCounts;
}

/// What the management API shows about a connection.
#[derive(Debug)]
pub struct ConnectionInfo {
    pub id: u64,
    /// RabbitMQ's form: "PEER -> LISTENER".
    pub name: String,
    pub peer: SocketAddr,
    pub user: String,
    pub vhost: String,
    pub client_properties: FieldTable,
    /// ms since the Unix epoch.
    pub connected_at: u64,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat: u16,
    /// Open channels (updated by the connection after each read burst).
    pub channels: AtomicUsize,
    /// The open channels (replaced by the connection when they change).
    channel_views: Mutex<Vec<Arc<dyn ChannelView>>>,
    close: tokio::sync::Notify,
    reason: Mutex<Option<String>>,
    /// Socket counts, written by the connection's reader and writer tasks.
    pub io: Arc<IoCounters>,
    /// What its closed channels counted.
    retired: Mutex<MsgCounts>,
}

/// What a connection tells the registry about itself.
#[derive(Debug)]
pub struct NewConnection {
    pub id: u64,
    pub peer: SocketAddr,
    pub user: String,
    pub vhost: String,
    pub client_properties: FieldTable,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat: u16,
    pub io: Arc<IoCounters>,
}

impl ConnectionInfo {
    /// Ask the connection to close with 320 CONNECTION_FORCED and `reason`.
    pub fn request_close(&self, reason: String) {
        *self.reason.lock() = Some(reason);
        // notify_one keeps a permit if the connection is not waiting yet.
        self.close.notify_one();
    }

    /// Resolves with the reason once a close was requested.
    pub async fn close_requested(&self) -> String {
        self.close.notified().await;
        self.reason
            .lock()
            .clone()
            .unwrap_or_else(|| "Closed via management plugin".to_string())
    }

    pub fn channel_count(&self) -> usize {
        self.channels.load(Ordering::Relaxed)
    }

    /// Replace the list of open channels; channels that left have their
    /// counts folded into this connection's and the broker's totals.
    pub fn set_channels(&self, broker: &Broker, views: Vec<Arc<dyn ChannelView>>) {
        self.channels.store(views.len(), Ordering::Relaxed);
        let mut total = broker.stats.retired_lock();
        let mut current = self.channel_views.lock();
        let mut gone = MsgCounts::default();
        let mut closed = 0;
        for old in current.iter() {
            if !views.iter().any(|v| same_view(v, old)) {
                gone += old.counters();
                closed += 1;
            }
        }
        let opened = views
            .iter()
            .filter(|v| !current.iter().any(|old| same_view(v, old)))
            .count();
        if closed > 0 {
            *self.retired.lock() += gone;
            *total += gone;
        }
        broker.stats.channels_closed.add_shared(closed);
        broker.stats.channels_opened.add_shared(opened as u64);
        *current = views;
    }

    /// Channels closed since the registry last heard: their counts join the
    /// retired totals now, also those of a channel opened and closed within
    /// one read burst (which `set_channels` never saw). Call before
    /// `set_channels` with the channels still open.
    pub fn retire_channels(&self, broker: &Broker, closed: Vec<Arc<dyn ChannelView>>) {
        let mut total = broker.stats.retired_lock();
        let mut current = self.channel_views.lock();
        let mut gone = MsgCounts::default();
        for c in &closed {
            gone += c.counters();
            let before = current.len();
            current.retain(|v| !same_view(v, c));
            if current.len() == before {
                // Never registered: opened within the same burst.
                broker.stats.channels_opened.add_shared(1);
            }
        }
        broker.stats.channels_closed.add_shared(closed.len() as u64);
        self.channels.store(current.len(), Ordering::Relaxed);
        *self.retired.lock() += gone;
        *total += gone;
    }

    /// This connection's message counts: closed channels plus open ones.
    pub fn counters(&self) -> MsgCounts {
        let views = self.channel_views.lock();
        let mut m = *self.retired.lock();
        for v in views.iter() {
            m += v.counters();
        }
        m
    }

    /// Counts of the open channels only.
    fn live_counters(&self) -> MsgCounts {
        let mut m = MsgCounts::default();
        for v in self.channel_views.lock().iter() {
            m += v.counters();
        }
        m
    }

    /// The open channels now, by number.
    pub fn channel_snapshots(&self) -> Vec<ChannelSnapshot> {
        let views = self.channel_views.lock().clone();
        let mut v: Vec<ChannelSnapshot> = views.iter().map(|c| c.snapshot()).collect();
        v.sort_by_key(|c| c.number);
        v
    }
}

impl Broker {
    /// Register an open connection; it must call `unregister_connection` when it ends.
    pub fn register_connection(&self, c: NewConnection) -> Arc<ConnectionInfo> {
        let info = Arc::new(ConnectionInfo {
            id: c.id,
            name: format!("{} -> {}", c.peer, self.amqp_address()),
            peer: c.peer,
            user: c.user,
            vhost: c.vhost,
            client_properties: c.client_properties,
            connected_at: crate::queue::now_ms(),
            frame_max: c.frame_max,
            channel_max: c.channel_max,
            heartbeat: c.heartbeat,
            channels: AtomicUsize::new(0),
            channel_views: Mutex::new(Vec::new()),
            close: tokio::sync::Notify::new(),
            reason: Mutex::new(None),
            io: c.io,
            retired: Mutex::new(MsgCounts::default()),
        });
        self.connections.insert(c.id, info.clone());
        self.stats.connections_opened.add_shared(1);
        info
    }

    /// The plain AMQP listener's bound address (the config's until bound).
    fn amqp_address(&self) -> String {
        self.listeners()
            .iter()
            .find(|(p, _)| *p == "amqp")
            .map(|(_, a)| a.to_string())
            .unwrap_or_else(|| self.config.listen.clone())
    }

    pub fn unregister_connection(&self, id: u64) {
        let mut total = self.stats.retired_lock();
        if let Some((_, info)) = self.connections.remove(&id) {
            let views = std::mem::take(&mut *info.channel_views.lock());
            for v in &views {
                *total += v.counters();
            }
            drop(total);
            self.stats.retire_io(info.io.snapshot());
            self.stats.channels_closed.add_shared(views.len() as u64);
            self.stats.connections_closed.add_shared(1);
        }
    }

    /// Message counts of the whole broker: closed channels and open ones.
    pub fn message_totals(&self) -> MsgCounts {
        let total = self.stats.retired_lock();
        let mut m = *total;
        for c in self.connections.iter() {
            m += c.live_counters();
        }
        drop(total);
        m
    }

    /// The open connections, oldest first.
    pub fn connection_list(&self) -> Vec<Arc<ConnectionInfo>> {
        let mut v: Vec<_> = self.connections.iter().map(|c| c.clone()).collect();
        v.sort_by_key(|c| c.id);
        v
    }
}

fn same_view(a: &Arc<dyn ChannelView>, b: &Arc<dyn ChannelView>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}
