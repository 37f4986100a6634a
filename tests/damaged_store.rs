//! Torn and damaged store files after a crash: a torn write-ahead log tail
//! recovers to the last synced write with everything confirmed; a damaged
//! table file or MANIFEST makes the broker refuse to start, naming the file
//! and the way out, and `hopper check-store` says the same.

mod common;

use common::*;
use lapin::options::BasicAckOptions;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

fn body(i: usize, size: usize) -> Vec<u8> {
    let mut b = vec![(i % 251) as u8; size];
    b[..8].copy_from_slice(&(i as u64).to_be_bytes());
    b
}

/// Files in `dir` whose names end with `ext`, largest number (newest) last.
fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read data dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(ext))
        .collect();
    v.sort();
    v
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Publish `n` persistent messages of `size` bytes to a new durable queue,
/// each confirmed.
async fn fill(broker: &Broker, n: usize, size: usize) -> String {
    let (conn, ch) = connect_channel(broker).await;
    let q = declare_durable_queue(&ch, "damage", FieldTable::default()).await;
    confirm_select(&ch).await;
    for i in 0..n {
        let c = publish_confirmed(&ch, "", &q, &body(i, size), persistent()).await;
        assert!(c.is_ack(), "publish {i} nacked");
    }
    let _ = conn.close(200, "bye".into()).await;
    q
}

/// Run the broker binary with `args` until it exits; (success, stdout, stderr).
fn run_hopper(args: &[&str], dir: &Path) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hopper"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hopper");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "hopper {args:?} kept running on a damaged store: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The broker refuses `dir` naming `file`, and `check-store` agrees.
fn expect_refused_naming(dir: &Path, file: &Path) {
    let name = file
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let (ok, stdout, stderr) =
        run_hopper(&["--listen", "127.0.0.1:0", "--metrics-listen", "off"], dir);
    assert!(!ok, "the broker started on a damaged store");
    assert!(!stdout.contains("listening"), "it listened: {stdout}");
    assert!(stderr.contains(&name), "the error names {name}: {stderr}");
    assert!(
        stderr.contains("damaged") && stderr.contains("docs/OPERATIONS.md"),
        "the error says what to do: {stderr}"
    );
    let (ok, _, stderr) = run_hopper(&["check-store"], dir);
    assert!(!ok, "check-store passed a damaged store");
    assert!(stderr.contains(&name), "check-store names {name}: {stderr}");
}

/// Overwrite `len` bytes of `file` at `at` with a pattern unlike the data.
fn scribble(file: &Path, at: u64, len: usize) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .expect("open for damage");
    f.seek(SeekFrom::Start(at)).expect("seek");
    let junk: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ 0xA5)
        .collect();
    f.write_all(&junk).expect("damage");
    f.sync_all().expect("sync");
}

/// kill -9 while unsynced writes (acks) were at the log's tail, then tear
/// that tail and append garbage: the broker starts, every confirmed message
/// that was not acked is there, and the torn acks at most come back as
/// redeliveries.
#[tokio::test]
async fn torn_log_tail_recovers_everything_confirmed() {
    let mut broker = Broker::start();
    skip_if_external!(broker);
    let dir = broker.data_dir().expect("data dir").to_path_buf();
    let n = 200;
    let q = fill(&broker, n, 1024).await;
    let log = files(&dir, ".log").pop().expect("a write-ahead log");
    let synced = size(&log);
    // Acks of the first half: removals, written without a sync.
    let (conn, ch) = connect_channel(&broker).await;
    for _ in 0..n / 2 {
        let m = get(&ch, &q, false).await.expect("message");
        within("ack", m.delivery.acker.ack(BasicAckOptions::default()))
            .await
            .expect("ack");
    }
    within("the acks reach the log", async {
        while size(&log) <= synced {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    broker.kill9();
    drop(conn);
    let end = size(&log);
    assert!(end > synced, "acks were written after the confirms");
    // Tear the unsynced tail in the middle, then garbage where it stopped.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .expect("open log");
    f.set_len(synced + (end - synced) / 2).expect("truncate");
    drop(f);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .expect("open log");
        let junk: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        f.write_all(&junk).expect("garbage");
    }
    broker.start_again();
    let (conn, ch) = connect_channel(&broker).await;
    let mut seen = std::collections::BTreeSet::new();
    while let Some(m) = get(&ch, &q, true).await {
        let d = &m.delivery.data;
        let i = u64::from_be_bytes(d[..8].try_into().expect("8 bytes")) as usize;
        assert_eq!(d[..], body(i, 1024)[..], "body {i} damaged");
        assert!(seen.insert(i), "message {i} twice");
    }
    for i in n / 2..n {
        assert!(seen.contains(&i), "confirmed message {i} lost");
    }
    let _ = conn.close(200, "bye".into()).await;
}

/// Stored messages, then a restart so RocksDB writes them to a table file,
/// then a clean stop: the data directory of a stopped broker whose messages
/// live in .sst files.
async fn stopped_store_with_tables(n: usize, size: usize) -> (Broker, PathBuf, String) {
    let mut broker = Broker::start();
    let q = fill(&broker, n, size).await;
    // Recovery at boot flushes the replayed log into table files.
    broker.restart();
    // Connected: the broker is serving (and handles SIGTERM).
    let (conn, _ch) = connect_channel(&broker).await;
    let _ = conn.close(200, "bye".into()).await;
    assert!(broker.terminate(), "clean shutdown");
    let dir = broker.data_dir().expect("data dir").to_path_buf();
    (broker, dir, q)
}

#[tokio::test]
async fn damaged_table_file_refuses_to_start_naming_it() {
    if std::env::var(EXTERNAL_ENV).is_ok_and(|v| !v.trim().is_empty()) {
        return;
    }
    let (_broker, dir, _) = stopped_store_with_tables(60, 4096).await;
    let sst = files(&dir, ".sst")
        .into_iter()
        .max_by_key(|p| size(p))
        .expect("a table file");
    assert!(size(&sst) > 200_000, "the messages' table: {}", size(&sst));
    // A data block in the middle: RocksDB notices only when it reads it.
    scribble(&sst, size(&sst) / 3, 512);
    expect_refused_naming(&dir, &sst);
}

#[tokio::test]
async fn damaged_manifest_refuses_to_start_naming_it() {
    if std::env::var(EXTERNAL_ENV).is_ok_and(|v| !v.trim().is_empty()) {
        return;
    }
    let (mut broker, dir, q) = stopped_store_with_tables(20, 1024).await;
    let tables = files(&dir, ".sst");
    let manifest = files(&dir, "")
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("MANIFEST-"))
        })
        .max()
        .expect("a MANIFEST");
    scribble(&manifest, size(&manifest) / 2, 64);
    expect_refused_naming(&dir, &manifest);
    // Refusing deleted nothing: the repair finds every table file again.
    assert_eq!(files(&dir, ".sst"), tables, "table files kept");
    let (ok, stdout, stderr) = run_hopper(&["check-store", "--repair"], &dir);
    assert!(ok, "repair failed: {stderr}");
    assert!(stdout.contains("reads back whole"), "{stdout}");
    broker.start_again();
    let (conn, ch) = connect_channel(&broker).await;
    assert_eq!(message_count(&ch, &q).await, 20, "every message salvaged");
    let _ = conn.close(200, "bye".into()).await;
}

/// A sound store passes `check-store`, which reports what it read.
#[tokio::test]
async fn check_store_passes_a_sound_store() {
    if std::env::var(EXTERNAL_ENV).is_ok_and(|v| !v.trim().is_empty()) {
        return;
    }
    let (_broker, dir, _) = stopped_store_with_tables(20, 1024).await;
    let (ok, stdout, stderr) = run_hopper(&["check-store"], &dir);
    assert!(ok, "check-store failed: {stderr}");
    assert!(stdout.contains("reads back whole"), "{stdout}");
    assert!(stdout.contains("messages"), "{stdout}");
}
