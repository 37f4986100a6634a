//! Broker memory while a scenario runs: `--rss-pid PID` samples VmRSS from
//! /proc/PID/status every 100 ms and keeps the start, peak and end of each
//! named phase (publish, drain, ...), plus one sample a second as a timeline.

use anyhow::{Context, Result};
use parking_lot::Mutex;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PERIOD: Duration = Duration::from_millis(100);
/// Timeline resolution.
const TIMELINE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Serialize)]
pub struct PhaseRss {
    pub phase: String,
    pub start_kb: u64,
    pub peak_kb: u64,
    pub end_kb: u64,
    pub samples: u64,
    /// (seconds since sampling started, KiB), one a second.
    pub timeline: Vec<(f64, u64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RssReport {
    pub pid: u32,
    pub phases: Vec<PhaseRss>,
}

pub struct RssSampler {
    pid: u32,
    phases: Arc<Mutex<Phases>>,
    task: tokio::task::JoinHandle<()>,
}

struct Phases {
    started: Instant,
    last_timeline: Option<Instant>,
    list: Vec<PhaseRss>,
}

/// VmRSS of `pid` in KiB.
pub fn read_rss_kb(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_vm_rss(&text).with_context(|| format!("no VmRSS line in {path}"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

impl RssSampler {
    /// Start sampling in phase `first`; fails if the process cannot be read.
    pub fn start(pid: u32, first: &str) -> Result<RssSampler> {
        let kb = read_rss_kb(pid)?;
        let phases = Arc::new(Mutex::new(Phases {
            started: Instant::now(),
            last_timeline: None,
            list: vec![new_phase(first, kb)],
        }));
        record(&phases, kb);
        let shared = phases.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(PERIOD);
            loop {
                tick.tick().await;
                // A process that went away simply stops being sampled.
                if let Ok(kb) = read_rss_kb(pid) {
                    record(&shared, kb);
                }
            }
        });
        Ok(RssSampler { pid, phases, task })
    }

    /// Close the current phase with a fresh sample and open `name`.
    pub fn phase(&self, name: &str) {
        let kb = read_rss_kb(self.pid).ok();
        if let Some(kb) = kb {
            record(&self.phases, kb);
        }
        let mut p = self.phases.lock();
        let start = kb.or_else(|| p.list.last().map(|x| x.end_kb)).unwrap_or(0);
        p.list.push(new_phase(name, start));
        // The new phase's timeline starts with its first sample.
        p.last_timeline = None;
    }

    /// One sample now (also recorded in the current phase).
    pub fn sample(&self) -> Option<u64> {
        let kb = read_rss_kb(self.pid).ok()?;
        record(&self.phases, kb);
        Some(kb)
    }

    pub fn finish(self) -> RssReport {
        self.task.abort();
        if let Ok(kb) = read_rss_kb(self.pid) {
            record(&self.phases, kb);
        }
        RssReport {
            pid: self.pid,
            phases: self.phases.lock().list.clone(),
        }
    }
}

fn new_phase(name: &str, kb: u64) -> PhaseRss {
    PhaseRss {
        phase: name.to_string(),
        start_kb: kb,
        peak_kb: kb,
        end_kb: kb,
        samples: 0,
        timeline: Vec::new(),
    }
}

fn record(phases: &Mutex<Phases>, kb: u64) {
    let mut guard = phases.lock();
    let now = Instant::now();
    let due = guard
        .last_timeline
        .is_none_or(|t| now.duration_since(t) >= TIMELINE_EVERY);
    let at = now.duration_since(guard.started).as_secs_f64();
    if due {
        guard.last_timeline = Some(now);
    }
    if let Some(p) = guard.list.last_mut() {
        p.peak_kb = p.peak_kb.max(kb);
        p.end_kb = kb;
        p.samples += 1;
        if due {
            p.timeline.push(((at * 10.0).round() / 10.0, kb));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status() {
        let s = "Name:\thopper\nVmPeak:\t  999 kB\nVmRSS:\t   12345 kB\nThreads: 4\n";
        assert_eq!(parse_vm_rss(s), Some(12345));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
    }

    #[tokio::test]
    async fn samples_this_process_by_phase() {
        let me = std::process::id();
        let s = RssSampler::start(me, "a").unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        s.phase("b");
        let r = s.finish();
        assert_eq!(r.phases.len(), 2);
        assert_eq!(r.phases[0].phase, "a");
        assert!(r.phases[0].samples >= 2);
        assert!(r
            .phases
            .iter()
            .all(|p| p.peak_kb >= p.start_kb && p.peak_kb > 0));
        assert!(RssSampler::start(u32::MAX, "x").is_err());
    }
}
