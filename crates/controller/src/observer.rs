//! What the sync loop tells the rest of the daemon, and the work that follows a sync.
//!
//! The loop itself only changes the state and asks its proxy mode to program it. Everything
//! that follows a sync — cleaning stale UDP conntrack entries, publishing which health check
//! servers should run, moving the localhost node port proxy, metrics — hangs off the loop as
//! an observer: a [`SyncObserver`] sees every change before the state takes it and every
//! successful sync after it; an [`Observer`] receives [`LoopEvent`]s.

use std::collections::BTreeSet;
use std::time::Duration;

use rudder_compiler::NodeContext;
use rudder_model::{IpFamily, ProxyState, Service, ServiceKey};

use crate::change::Change;
use crate::health::ServiceHealth;

/// Full or partial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncKind {
    /// The whole state was programmed.
    Full,
    /// Only changed services were recompiled and their elements updated.
    Partial,
}

/// What one sync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Full or partial.
    pub kind: SyncKind,
    /// Services recompiled.
    pub services: usize,
    /// Operations on tables, chains, sets and rules.
    pub objects: usize,
    /// Elements added.
    pub elements_added: usize,
    /// Elements deleted.
    pub elements_deleted: usize,
    /// Bytes sent to the dataplane.
    pub bytes: usize,
    /// Time spent compiling.
    pub compile: Duration,
    /// Time spent applying.
    pub apply: Duration,
    /// Per family, service ports with endpoints but none local under a `Local` policy:
    /// `(family, internal, external)`.
    pub no_local_endpoints: Vec<(IpFamily, u64, u64)>,
    /// Services known after the sync (the whole state, not only the changed ones).
    pub services_total: usize,
    /// Services held back because the kernel refused their rules (see
    /// [`crate::SyncLoop::quarantined`]), after the sync.
    pub quarantined: Vec<(ServiceKey, String)>,
    /// Dry runs made to find the refused services (0 when the kernel took everything).
    pub dry_runs: usize,
}

/// What the loop tells observers (the binary turns these into metrics).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum LoopEvent {
    /// A change made a service or its endpoints differ; `endpoints` tells which kind.
    Changed {
        /// Service changes.
        services: u64,
        /// EndpointSlice changes.
        endpoints: u64,
    },
    /// A sync succeeded.
    Synced {
        /// What it did.
        report: SyncReport,
        /// Families programmed.
        families: Vec<IpFamily>,
        /// For each EndpointSlice change programmed by this sync that carried an
        /// `endpoints.kubernetes.io/last-change-trigger-time`, the seconds from that time to
        /// now.
        programming_seconds: Vec<f64>,
    },
    /// A sync failed.
    Failed {
        /// Full or partial.
        kind: SyncKind,
        /// Families it was for.
        families: Vec<IpFamily>,
    },
    /// Rudder's tables had been changed behind its back (seen in the kernel's change
    /// notifications, or found before a periodic full resync), and a full sync repaired them.
    Drift {
        /// What differed (a few entries).
        differences: Vec<String>,
    },
    /// Stale conntrack entries were cleaned.
    Conntrack {
        /// Family.
        family: IpFamily,
        /// Entries deleted.
        deleted: usize,
        /// Time spent.
        duration: Duration,
    },
}

/// Receives [`LoopEvent`]s.
pub type Observer = Box<dyn FnMut(&LoopEvent) + Send>;

/// What a successful sync programmed, for the work that follows it.
pub struct Synced<'a> {
    /// The state the sync programmed.
    pub state: &'a ProxyState,
    /// The node context it was programmed for.
    pub node: &'a NodeContext,
    /// Whether a service was refused as a whole (it has no rules, so nothing may follow it).
    pub refused: &'a dyn Fn(&Service) -> bool,
    /// Whether it was a full sync.
    pub full: bool,
    /// The services a partial sync recompiled (empty for a full sync: all of them).
    pub changed: &'a BTreeSet<ServiceKey>,
    /// The families programmed.
    pub families: &'a [IpFamily],
}

/// Work that follows the loop.
pub trait SyncObserver: Send {
    /// Sees `change` before `state` takes it (so it sees what was there before).
    fn change(&mut self, _state: &ProxyState, _change: &Change) {}

    /// Follows a successful sync; events it pushes on `events` go to the loop's
    /// [`Observer`].
    fn synced(&mut self, synced: &Synced<'_>, events: &mut Vec<LoopEvent>);
}

/// A closure that follows every successful sync (see [`crate::SyncLoop::with_synced_observer`]).
pub type SyncedObserver = Box<dyn FnMut(&Synced<'_>) + Send>;

impl SyncObserver for SyncedObserver {
    fn synced(&mut self, synced: &Synced<'_>, _events: &mut Vec<LoopEvent>) {
        self(synced)
    }
}

/// Publishes the health check node port servers that should run after each sync (the
/// binary's health servers follow the channel).
pub struct HealthPublisher {
    tx: tokio::sync::watch::Sender<ServiceHealth>,
}

impl HealthPublisher {
    /// A publisher, and the receiving end of its channel.
    pub fn new() -> (HealthPublisher, tokio::sync::watch::Receiver<ServiceHealth>) {
        let (tx, rx) = tokio::sync::watch::channel(ServiceHealth::default());
        (HealthPublisher { tx }, rx)
    }
}

impl SyncObserver for HealthPublisher {
    fn synced(&mut self, synced: &Synced<'_>, _events: &mut Vec<LoopEvent>) {
        let addresses = match &synced.node.node_port_ips {
            rudder_compiler::NodePortIps::All => Vec::new(),
            rudder_compiler::NodePortIps::Only(ips) => ips.clone(),
        };
        // Services refused as a whole, and those the kernel refused, get no health check
        // server.
        let sh = ServiceHealth::compute(synced.state, &synced.node.name, addresses, |s| {
            (synced.refused)(s)
        });
        self.tx.send_if_modified(|cur| {
            let changed = *cur != sh;
            *cur = sh;
            changed
        });
    }
}
