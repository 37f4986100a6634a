//! The RocksDB store's writing threads: the committer, which owns every
//! write and groups whatever is pending into one `WriteBatch` (synced when
//! it holds a persistent publish), and the confirmer, which runs the written
//! batches' completions off the committer. Never reads for a caller (the
//! reader thread does) and never names the broker.

use parking_lot::Mutex;
use rocksdb::{WriteBatch, WriteOptions, DB};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;

use super::super::codec;
use super::super::failpoint::FailPoints;
use super::super::health::{self, Recovery};
use super::super::{Completion, StoreError};
use super::{
    cf, check, io, remove_in_batch, DefinitionOp, Op, Refs, Stats, CF_DEDUP, CF_INDEX, CF_MESSAGES,
    CF_RAFT, MAX_BATCH_OPS,
};
use crate::batch::Batch;

/// A written batch's completions and whether the write succeeded.
pub(super) type Done = (Vec<Completion>, bool);

/// Runs the completions of written batches, in write order, off the
/// committer thread: the committer only writes (and starts the next fsync
/// while confirms of the last one go out), and everything the completions
/// do (mark messages stored, kick queues, flush confirms, settle
/// deduplication keys) runs here. Batches that completed meanwhile run
/// together: each channel flushes one `multiple=true` ack for all of them.
pub(super) fn confirmer(rx: mpsc::Receiver<Done>) {
    while let Ok(first) = rx.recv() {
        let mut batch = Batch::new();
        let mut next = Some(first);
        while let Some((completions, ok)) = next.take() {
            for done in completions {
                done(ok, &mut batch);
            }
            next = rx.try_recv().ok();
        }
        batch.finish();
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn committer(
    db: Arc<DB>,
    rx: mpsc::Receiver<Op>,
    done_tx: mpsc::Sender<Done>,
    refs: Arc<Mutex<Refs>>,
    stats: Arc<Stats>,
    fail_points: Arc<FailPoints>,
    mut recovery: Recovery,
    mut mark: check::Mark,
) {
    let mut synced = WriteOptions::default();
    synced.set_sync(true);
    let unsynced = WriteOptions::default();
    while let Some(first) = health::next_op(&rx, &mut recovery, || check::resume(&db)) {
        let mut next = Some(first);
        let mut batch = WriteBatch::default();
        let mut completions: Vec<Completion> = Vec::new();
        let mut persisted = 0u64;
        let mut submitted: Vec<std::time::Instant> = Vec::new();
        let mut raft_sync = false;
        let mut ops = 0usize;
        let mut result: Result<(), StoreError> = Ok(());
        let mut definition: Option<(DefinitionOp, mpsc::SyncSender<Result<(), StoreError>>)> = None;
        while let Some(op) = next.take() {
            ops += 1;
            match op {
                Op::Persist {
                    msg,
                    queues,
                    dedup,
                    done,
                    at,
                } => {
                    submitted.push(at);
                    let r = (|| -> Result<(), StoreError> {
                        if let Some(d) = &dedup {
                            // Same batch as the message: never a key without it.
                            batch.put_cf(
                                cf(&db, CF_DEDUP)?,
                                codec::dedup_key(&d.vhost, &d.exchange, &d.key),
                                d.expires_at.to_be_bytes(),
                            );
                        }
                        let value = codec::encode_message(
                            &msg.exchange,
                            &msg.routing_key,
                            &msg.raw_properties,
                            queues.len() as u32,
                            &msg.body,
                        );
                        batch.put_cf(cf(&db, CF_MESSAGES)?, msg.id.to_be_bytes(), value);
                        for (q, meta) in &queues {
                            batch.put_cf(
                                cf(&db, CF_INDEX)?,
                                codec::index_key(q, msg.id),
                                codec::index_value(*meta),
                            );
                        }
                        Ok(())
                    })();
                    if let Err(e) = r {
                        result = Err(e);
                    }
                    if queues.len() > 1 {
                        refs.lock().insert(msg.id, queues.len() as u32);
                    }
                    persisted += 1;
                    completions.push(done);
                }
                Op::Raft { write, done } => {
                    match cf(&db, CF_RAFT) {
                        Ok(c) => {
                            for (from, to) in write.delete_ranges {
                                batch.delete_range_cf(c, from, to);
                            }
                            for k in write.deletes {
                                batch.delete_cf(c, k);
                            }
                            for (k, v) in write.puts {
                                batch.put_cf(c, k, v);
                            }
                        }
                        Err(e) => result = Err(e),
                    }
                    raft_sync |= write.sync;
                    completions.push(done);
                }
                Op::Remove { queue, msg_id } => {
                    if let Err(e) =
                        remove_in_batch(&db, &mut refs.lock(), &mut batch, &queue, msg_id)
                    {
                        tracing::error!(error = %e, "store removal failed");
                    }
                }
                Op::ForgetDedup { key } => match cf(&db, CF_DEDUP) {
                    Ok(c) => batch.delete_cf(c, key),
                    Err(e) => tracing::error!(error = %e, "dedup write failed"),
                },
                Op::Barrier(done) => completions.push(done),
                Op::Definition { op, reply } => {
                    // Written after what came before it, on its own.
                    definition = Some((op, reply));
                    break;
                }
            }
            if ops >= MAX_BATCH_OPS {
                break;
            }
            next = rx.try_recv().ok();
        }
        let wrote = !batch.is_empty();
        if wrote {
            let opts = if persisted > 0 || raft_sync {
                &synced
            } else {
                &unsynced
            };
            if result.is_ok() && fail_points.before_write() {
                result = Err(StoreError::Io("injected write failure (fail point)".into()));
            }
            if result.is_ok() {
                result = db.write_opt(batch, opts).map_err(io);
            }
            if persisted > 0 {
                stats.synced_writes.fetch_add(1, Ordering::Relaxed);
                stats
                    .persisted_messages
                    .fetch_add(persisted, Ordering::Relaxed);
                stats.figures.synced(persisted, &submitted);
            }
        }
        let ok = result.is_ok();
        if wrote || result.is_err() {
            recovery.write_result(std::time::Instant::now(), &result, completions.len());
        }
        if ok && (persisted > 0 || raft_sync) {
            mark.after_synced_write(&db);
        }
        if !completions.is_empty() {
            if let Err(mpsc::SendError((completions, ok))) = done_tx.send((completions, ok)) {
                // No confirmer (never: it ends after the committer): run them here.
                crate::batch::run(|b| completions.into_iter().for_each(|done| done(ok, b)));
            }
        }
        if let Some((op, reply)) = definition {
            let mut batch = WriteBatch::default();
            let r = op(&db, &mut refs.lock(), &mut batch)
                .and_then(|_| db.write_opt(batch, &synced).map_err(io));
            recovery.write_result(std::time::Instant::now(), &r, 0);
            let _ = reply.send(r);
        }
    }
    mark.at_close(&db);
}
