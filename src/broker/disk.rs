//! The disk alarm's watcher: every second, how many bytes are free on the
//! filesystem holding `data_dir`, fed to `Broker::check_disk`; and, at once,
//! every change of the store's health (a failed write, the store resumed),
//! fed to `Broker::set_store_failing`, whatever `disk_free_limit` says. The
//! reading is a `statvfs` call (blocking, so it runs on the blocking pool,
//! never on the async workers); `watch_with` takes any source, so tests can
//! drive the alarm with fake readings.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::Broker;

/// How often free space is looked at (RabbitMQ: about every 10 s at most;
/// a second costs one syscall and catches a fast-filling disk sooner).
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Bytes available to unprivileged writers on the filesystem holding `path`
/// (what `df` shows as available: blocks reserved for root do not count).
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Watch the data directory's filesystem and the store's health until the
/// task is dropped (free space only when `limits.disk_free_limit` is not 0).
pub async fn watch(broker: Arc<Broker>) {
    watch_with(broker, free_bytes).await
}

/// `watch` with another source of free-space readings.
pub async fn watch_with<F>(broker: Arc<Broker>, source: F)
where
    F: Fn(&Path) -> std::io::Result<u64> + Send + Sync + 'static,
{
    let measure = broker.config.limits.disk_free_limit > 0;
    let mut health = broker.store.health();
    // A store that cannot fail has dropped its sender: nothing to follow.
    let mut follow_store = health.has_changed().is_ok();
    if follow_store {
        let failing = health.borrow_and_update().is_failing();
        broker.set_store_failing(failing);
    }
    if !measure && !follow_store {
        return;
    }
    let source = Arc::new(source);
    let dir: PathBuf = broker.config.data_dir.clone();
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Warn once per run of failures, not every second.
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick(), if measure => {}
            changed = health.changed(), if follow_store => {
                match changed {
                    Ok(()) => {
                        let failing = health.borrow_and_update().is_failing();
                        broker.set_store_failing(failing);
                    }
                    // The store shut down.
                    Err(_) if measure => follow_store = false,
                    Err(_) => return,
                }
                continue;
            }
            else => return,
        }
        let (source, dir2) = (source.clone(), dir.clone());
        match tokio::task::spawn_blocking(move || source(&dir2)).await {
            Ok(Ok(free)) => {
                failing = false;
                broker.check_disk(free);
            }
            // The alarm keeps its last state: an unreadable filesystem says
            // nothing about free space.
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot read free disk space");
                    failing = true;
                }
            }
            Err(e) => tracing::error!(error = %e, "free disk space check failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::message::Message;
    use crate::store::health::Health;
    use crate::store::{
        BindingDef, Completion, DedupDef, ExchangeDef, IndexMeta, NullStore, QueueDef, QueueKey,
        Recovered, Store, StoreError,
    };
    use std::sync::atomic::{AtomicU64, Ordering};

    fn broker(disk_free_limit: u64, memory_high_watermark: usize) -> Arc<Broker> {
        let mut config = Config::default_config().expect("default config");
        config.limits.disk_free_limit = disk_free_limit;
        config.limits.memory_high_watermark = memory_high_watermark;
        config.data_dir = std::env::temp_dir();
        Broker::new(config, Arc::new(NullStore)).expect("broker")
    }

    #[test]
    fn real_free_space_is_readable() {
        let free = free_bytes(&std::env::temp_dir()).expect("statvfs");
        assert!(free > 0);
    }

    #[test]
    fn disk_alarm_sets_below_the_limit_and_clears_above() {
        let b = broker(1000, 0);
        let alarm = b.alarm();
        b.check_disk(5000);
        assert!(!*alarm.borrow());
        b.check_disk(999);
        assert!(*alarm.borrow());
        assert_eq!(b.alarms().reason(), "low on disk");
        b.check_disk(1000);
        assert!(!*alarm.borrow());
        assert_eq!(b.alarms(), Default::default());
    }

    #[test]
    fn zero_limit_never_alarms() {
        let b = broker(0, 0);
        b.check_disk(0);
        assert!(!*b.alarm().borrow());
    }

    #[test]
    fn alarms_combine_until_both_clear() {
        let b = broker(1000, 0);
        let alarm = b.alarm();
        b.check_disk(1);
        // The memory alarm as check_memory sets it.
        b.set_alarm(|a| a.memory = true);
        assert_eq!(
            b.alarms(),
            crate::broker::Alarms {
                memory: true,
                disk: true,
                store: false,
            }
        );
        assert_eq!(b.alarms().reason(), "low on memory & disk");
        b.check_disk(5000);
        assert!(*alarm.borrow(), "memory alarm still on: still blocked");
        assert_eq!(b.alarms().reason(), "low on memory");
        b.check_disk(1);
        b.set_alarm(|a| a.memory = false);
        assert!(*alarm.borrow(), "disk alarm still on: still blocked");
        b.check_disk(5000);
        assert!(!*alarm.borrow());
    }

    #[tokio::test(start_paused = true)]
    async fn watcher_follows_the_source() {
        let b = broker(1000, 0);
        let free = Arc::new(AtomicU64::new(5000));
        let reading = free.clone();
        let task = tokio::spawn(watch_with(b.clone(), move |_: &Path| {
            Ok(reading.load(Ordering::SeqCst))
        }));
        let mut alarm = b.alarm();
        free.store(10, Ordering::SeqCst);
        alarm.changed().await.expect("alarm set");
        assert!(*alarm.borrow_and_update());
        free.store(2000, Ordering::SeqCst);
        alarm.changed().await.expect("alarm cleared");
        assert!(!*alarm.borrow_and_update());
        task.abort();
    }

    /// A store whose health the test sets; keeps nothing otherwise.
    #[derive(Debug)]
    struct FlakyStore(tokio::sync::watch::Receiver<Health>);

    impl Store for FlakyStore {
        fn put_exchange(&self, d: &ExchangeDef) -> Result<(), StoreError> {
            NullStore.put_exchange(d)
        }
        fn delete_exchange(&self, v: &str, n: &str) -> Result<(), StoreError> {
            NullStore.delete_exchange(v, n)
        }
        fn put_queue(&self, d: &QueueDef) -> Result<(), StoreError> {
            NullStore.put_queue(d)
        }
        fn delete_queue(&self, k: &QueueKey) -> Result<(), StoreError> {
            NullStore.delete_queue(k)
        }
        fn put_binding(&self, d: &BindingDef) -> Result<(), StoreError> {
            NullStore.put_binding(d)
        }
        fn delete_binding(&self, d: &BindingDef) -> Result<(), StoreError> {
            NullStore.delete_binding(d)
        }
        fn persist(
            &self,
            m: Arc<Message>,
            q: Vec<(QueueKey, IndexMeta)>,
            d: Option<DedupDef>,
            done: Completion,
        ) {
            NullStore.persist(m, q, d, done)
        }
        fn remove(&self, q: &QueueKey, id: u64) {
            NullStore.remove(q, id)
        }
        fn load(&self, ids: &[u64]) -> Result<Vec<Option<Arc<Message>>>, StoreError> {
            NullStore.load(ids)
        }
        fn recover(&self) -> Result<Recovered, StoreError> {
            NullStore.recover()
        }
        fn max_message_id(&self) -> u64 {
            0
        }
        fn health(&self) -> tokio::sync::watch::Receiver<Health> {
            self.0.clone()
        }
    }

    /// A failed store write blocks publishers at once, with no free-space
    /// limit configured and no tick of the free-space clock, and its
    /// recovery unblocks them.
    #[tokio::test(start_paused = true)]
    async fn store_failure_raises_the_disk_alarm_without_a_limit() {
        let (health, reader) = tokio::sync::watch::channel(Health::Ok);
        let mut config = Config::default_config().expect("default config");
        config.limits.disk_free_limit = 0;
        let b = Broker::new(config, Arc::new(FlakyStore(reader))).expect("broker");
        let task = tokio::spawn(watch_with(b.clone(), |_: &Path| -> std::io::Result<u64> {
            panic!("free space is not measured with disk_free_limit = 0")
        }));
        let mut alarm = b.alarm();
        health.send_replace(Health::Failing("IO error: No space left on device".into()));
        alarm.changed().await.expect("alarm set");
        assert!(*alarm.borrow_and_update());
        assert_eq!(b.alarms().reason(), "low on disk");
        assert!(b.alarms().store && !b.alarms().disk);
        health.send_replace(Health::Ok);
        alarm.changed().await.expect("alarm cleared");
        assert!(!*alarm.borrow_and_update());
        assert_eq!(b.alarms(), Default::default());
        // The store going away ends a watcher that has nothing else to watch.
        drop(health);
        tokio::time::timeout(std::time::Duration::from_secs(1), task)
            .await
            .expect("watcher ended")
            .expect("no panic");
    }
}
