//! A quorum queue group's two batching tasks on every node: publishes
//! become `Enqueue` entries, acks and returns become `Settle` entries, each
//! proposed through `Group::propose`. Owns the batch limits; never touches
//! the queue's view or the store.

use std::sync::{Arc, Weak};

use tokio::sync::mpsc;

use super::{Group, Pending};
use crate::cluster::quorum::encode_message;
use crate::cluster::types::QueueCommand;

/// Messages in one `Enqueue` entry at most, and their bytes (a larger
/// message goes alone).
const MAX_BATCH: usize = 512;
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Enqueue batches in flight per group and node: one, so a channel's
/// messages are applied in the order they were published (batches proposed
/// side by side reach the log in any order, through the link's concurrent
/// handling on the leader or a retry after a failover), and a batch's
/// number tells a retry from a new batch. What arrives meanwhile forms the
/// next batch.
const IN_FLIGHT: usize = 1;

/// Batch publishes into `Enqueue` entries, up to `IN_FLIGHT` at a time.
pub(super) async fn proposer(group: Weak<Group>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let weight = |p: &Pending| p.0.body.len() + p.0.raw_properties.len();
    let mut carry: Option<Pending> = None;
    // Batch numbers rise across restarts too: they start at the time in
    // microseconds (one batch at a time never outruns the clock).
    let mut seq = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = weight(&first);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) if bytes + weight(&p) > MAX_BATCH_BYTES => {
                    carry = Some(p);
                    break;
                }
                Ok(p) => {
                    bytes += weight(&p);
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let Some(g) = group.upgrade() else {
            batch.extend(carry);
            crate::batch::run(|b| batch.into_iter().for_each(|(_, d)| d(false, b)));
            return;
        };
        seq += 1;
        tokio::spawn(async move {
            let msgs = batch
                .iter()
                .map(|(m, _)| (m.id, encode_message(m)))
                .collect();
            let cmd = QueueCommand::Enqueue {
                from: g.me,
                seq,
                msgs,
            };
            let result = g.propose(cmd).await;
            if let Err(e) = &result {
                tracing::warn!(queue = %g.name, error = %e, "publishes nacked");
            }
            crate::batch::run(|b| {
                for (m, done) in batch {
                    let ok = match &result {
                        Ok(r) => !r.refused.contains(&m.id),
                        Err(_) => false,
                    };
                    done(ok, b);
                }
            });
            drop(permit);
        });
    }
}

/// Propose settled and returned ids in batches.
pub(super) async fn settler(group: Weak<Group>) {
    loop {
        let Some(g) = group.upgrade() else { return };
        let waker = g.settle_wake.clone();
        let wake = waker.notified();
        let (acked, returned) = std::mem::take(&mut *g.settles.lock());
        if acked.is_empty() && returned.is_empty() {
            drop(g);
            wake.await;
            continue;
        }
        if let Err(e) = g.propose(QueueCommand::Settle { acked, returned }).await {
            // The deliveries stay held: redelivered later, never lost.
            tracing::warn!(queue = %g.name, error = %e, "settles not replicated");
        }
    }
}
