//! Broker-wide counts for the management API and Prometheus that outlive
//! the objects that made them: what closed channels counted (folded in once,
//! when a channel leaves the registry), and churn (connections, channels,
//! queues opened and closed). Live objects are summed when someone reads;
//! nothing here is touched per message.

use parking_lot::Mutex;

use crate::stats::{Counter, IoCounts, MsgCounts};

#[derive(Debug, Default)]
pub struct BrokerStats {
    /// Counts of channels that have closed.
    retired: Mutex<MsgCounts>,
    /// Socket counts of connections that have closed.
    retired_io: Mutex<IoCounts>,
    pub connections_opened: Counter,
    pub connections_closed: Counter,
    pub channels_opened: Counter,
    pub channels_closed: Counter,
    /// Logins over AMQP and HTTP (the management API), as RabbitMQ's
    /// `auth_attempts` by protocol.
    pub auth_amqp_succeeded: Counter,
    pub auth_amqp_failed: Counter,
    pub auth_http_succeeded: Counter,
    pub auth_http_failed: Counter,
}

/// Queue churn of one vhost (declares are rare: shared adds).
#[derive(Debug, Default)]
pub struct QueueChurn {
    pub declared: Counter,
    pub created: Counter,
    pub deleted: Counter,
}

impl BrokerStats {
    /// What closed channels counted. Held while channels retire into it and
    /// while live channels are summed onto it, so a reader counts each
    /// channel once (totals never dip: Prometheus would see a reset).
    pub fn retired_lock(&self) -> parking_lot::MutexGuard<'_, MsgCounts> {
        self.retired.lock()
    }

    pub fn retire_io(&self, io: IoCounts) {
        *self.retired_io.lock() += io;
    }

    pub fn retired_io(&self) -> IoCounts {
        *self.retired_io.lock()
    }
}
