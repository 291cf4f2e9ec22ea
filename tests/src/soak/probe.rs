//! The steady probe: real TCP connections, one after the other, to services that never change,
//! and long-running UDP flows to them, counted; every failure is recorded with its time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::client::{UdpFlow, tcp_in_current_ns};

/// How long a TCP connect (and then each read) or a UDP answer may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between two probes of one target.
const TCP_PAUSE: Duration = Duration::from_millis(15);
/// Pause between two datagrams of one UDP flow.
const UDP_PAUSE: Duration = Duration::from_millis(100);

/// Probes sent to one target and how many failed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Count {
    /// Probes sent (TCP connections, or UDP datagrams).
    pub sent: usize,
    /// Probes that failed: refused, timed out, answered by something else, or (UDP) answered
    /// by another backend than the flow's first answer.
    pub failed: usize,
    /// The backend of a UDP flow (its first answer).
    pub backend: Option<String>,
}

/// One failed probe.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Time since the soak started.
    pub at: Duration,
    /// The target's label.
    pub target: String,
    /// What went wrong.
    pub error: String,
}

/// Counts and failures of every probe, shared by the probe threads.
#[derive(Debug)]
pub struct ProbeLog {
    start: Instant,
    inner: Mutex<(BTreeMap<String, Count>, Vec<Failure>)>,
}

/// At most this many failures are kept (all are counted).
const MAX_FAILURES: usize = 200;

impl ProbeLog {
    /// An empty log whose failure times count from `start`.
    pub fn new(start: Instant) -> ProbeLog {
        ProbeLog {
            start,
            inner: Mutex::new((BTreeMap::new(), Vec::new())),
        }
    }

    pub(crate) fn record(&self, target: &str, result: Result<Option<String>, String>) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (counts, failures) = &mut *inner;
        let count = counts.entry(target.to_owned()).or_default();
        count.sent += 1;
        match result {
            Ok(Some(backend)) => {
                count.backend.get_or_insert(backend);
            }
            Ok(None) => {}
            Err(error) => {
                count.failed += 1;
                if failures.len() < MAX_FAILURES {
                    failures.push(Failure {
                        at: self.start.elapsed(),
                        target: target.to_owned(),
                        error,
                    });
                }
            }
        }
    }

    /// Per target: probes sent and failed.
    pub fn counts(&self) -> BTreeMap<String, Count> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }

    /// How many probes failed so far, over all targets.
    pub fn failed(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.0.values().map(|c| c.failed).sum()
    }

    /// The recorded failures, oldest first.
    pub fn failures(&self) -> Vec<Failure> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .clone()
    }
}

/// Connects to `addr` over and over until `stop`, from the namespace the calling thread is in;
/// an answer must be one of `backends`.
pub fn tcp_probe(
    stop: &AtomicBool,
    log: &ProbeLog,
    label: &str,
    addr: SocketAddr,
    backends: &[&str],
) {
    while !stop.load(Ordering::SeqCst) {
        let result = match tcp_in_current_ns(addr, PROBE_TIMEOUT) {
            Ok(answer) if backends.contains(&answer.as_str()) => Ok(None),
            Ok(answer) => Err(format!("answered {answer:?}, not a backend of the service")),
            Err(e) => Err(e.to_string()),
        };
        log.record(label, result);
        std::thread::sleep(TCP_PAUSE);
    }
}

/// Keeps sending on every flow until `stop`: each datagram must be answered, by the same
/// backend as the flow's first datagram (its conntrack entry, and with it its DNAT, must
/// survive restarts and full resyncs).
pub fn udp_flows(stop: &AtomicBool, log: &ProbeLog, flows: &[(String, UdpFlow)]) {
    let mut first: Vec<Option<String>> = vec![None; flows.len()];
    while !stop.load(Ordering::SeqCst) {
        for ((label, flow), first) in flows.iter().zip(first.iter_mut()) {
            let result = match flow.ping(PROBE_TIMEOUT) {
                Ok(answer) => match first.replace(answer.clone()) {
                    None => Ok(Some(answer)),
                    Some(before) if before == answer => Ok(None),
                    // Counted once per switch: later datagrams compare with the new backend.
                    Some(before) => Err(format!("answered by {answer}, before by {before}")),
                },
                Err(e) => Err(e.to_string()),
            };
            log.record(label, result);
        }
        std::thread::sleep(UDP_PAUSE);
    }
}
