//! The sync loop: change tracking, the initial-list gate, and kube-proxy's timing rules.

use std::future::Future;
use std::time::Duration;

use rudder_compiler::{Compiler, NodeContext};
use std::collections::{BTreeMap, BTreeSet};

use rudder_model::{IpFamily, Node, ProxyState, ServiceKey};
use rudder_nft::Transaction;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::change::Change;
use crate::conntrack::{Conntrack, has_udp, stale_udp_flows};
use crate::health::{ProxyHealth, ServiceHealth};
use std::sync::Arc;

/// An error from the dataplane, boxed so any backend fits.
pub type DataplaneError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why the dataplane did not apply a transaction, as far as the loop cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// It refused the transaction for what it contains: some service's rules may be at
    /// fault, and the loop looks for them.
    Refused,
    /// An object the transaction changes does not exist: the kernel's tables are not what
    /// Rudder programmed (deleted or changed behind its back), and only a full sync helps.
    NotFound,
    /// Anything else (the dataplane could not be reached): retried later.
    Other,
}

/// Where transactions go: the kernel in the binary, an in-memory ruleset in tests.
pub trait Dataplane: Send {
    /// Applies `tx` atomically; returns the number of bytes sent, when that means anything.
    fn apply(&mut self, tx: &Transaction) -> Result<usize, DataplaneError>;

    /// Validates `tx` completely, as [`Dataplane::apply`] would, without applying it (a dry
    /// run); `None` when the dataplane cannot. The loop uses dry runs to find the services
    /// whose rules are refused, so without them one refused service fails every sync.
    fn check(&mut self, _tx: &Transaction) -> Option<Result<(), DataplaneError>> {
        None
    }

    /// Whether [`Dataplane::check`] makes dry runs (returns `Some`).
    fn supports_dry_runs(&self) -> bool {
        false
    }

    /// What kind of failure `error` (from [`Dataplane::apply`] or [`Dataplane::check`]) is.
    fn classify(&self, _error: &DataplaneError) -> Failure {
        Failure::Refused
    }

    /// The shape of `table` as the dataplane holds it (see [`Shape`]), for drift detection
    /// before periodic full resyncs; `None` when the dataplane cannot tell.
    fn shape(&mut self, _table: &rudder_nft::TableRef) -> Option<Result<Shape, DataplaneError>> {
        None
    }
}

/// A table's shape: rules per chain (`chain NAME`) and elements per static set or map
/// (`set NAME`; sets the packet path updates are left out). Differences between the shape
/// Rudder programmed and the kernel's are drift: changes made behind Rudder's back.
pub type Shape = std::collections::BTreeMap<String, usize>;

/// The shape of a table as Rudder programmed it.
pub fn expected_shape(table: &rudder_nft::Table) -> Shape {
    let mut s = Shape::new();
    for (name, chain) in &table.chains {
        s.insert(format!("chain {name}"), chain.rules.len());
    }
    for (name, set) in &table.sets {
        let dynamic = set.decl.flags.iter().any(|f| {
            matches!(
                f,
                rudder_nft::SetFlag::Dynamic | rudder_nft::SetFlag::Timeout
            )
        }) || set.decl.timeout_secs.is_some();
        if !dynamic {
            s.insert(format!("set {name}"), set.elements.len());
        }
    }
    s
}

/// What differs between two shapes, for the log (at most a few entries).
pub fn shape_diff(expected: &Shape, actual: &Shape) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in expected {
        match actual.get(k) {
            None => out.push(format!("{k} missing")),
            Some(a) if a != v => out.push(format!("{k}: {a} instead of {v}")),
            Some(_) => {}
        }
    }
    // Extra chains are drift; extra sets may be the dynamic ones the expectation leaves out.
    for k in actual.keys() {
        if k.starts_with("chain ") && !expected.contains_key(k) {
            out.push(format!("{k} unexpected"));
        }
    }
    out
}

impl Dataplane for rudder_nft::Ruleset {
    fn apply(&mut self, tx: &Transaction) -> Result<usize, DataplaneError> {
        rudder_nft::Ruleset::apply(self, tx).map_err(|e| Box::new(e) as DataplaneError)?;
        Ok(0)
    }

    fn supports_dry_runs(&self) -> bool {
        true
    }

    fn check(&mut self, tx: &Transaction) -> Option<Result<(), DataplaneError>> {
        let mut copy = self.clone();
        Some(
            rudder_nft::Ruleset::apply(&mut copy, tx)
                .map(|_| ())
                .map_err(|e| Box::new(e) as DataplaneError),
        )
    }

    fn classify(&self, error: &DataplaneError) -> Failure {
        match error.downcast_ref::<rudder_nft::ApplyError>() {
            Some(e) if e.is_not_found() => Failure::NotFound,
            _ => Failure::Refused,
        }
    }

    fn shape(&mut self, table: &rudder_nft::TableRef) -> Option<Result<Shape, DataplaneError>> {
        Some(Ok(self
            .tables
            .get(table)
            .map(expected_shape)
            .unwrap_or_default()))
    }
}

/// Computes the compiler's node context from this node's Node object (or its absence). The
/// binary supplies it, because it depends on flags and on the local interfaces.
pub type NodeContextFn = Box<dyn Fn(Option<&Node>) -> NodeContext + Send>;

/// Timing of the loop (kube-proxy's names in parentheses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopConfig {
    /// Minimum time from the end of one sync to the start of the next (`minSyncPeriod`):
    /// changes arriving meanwhile coalesce into one sync.
    pub min_sync_period: Duration,
    /// Retry interval after a failed sync (`syncPeriod`).
    pub sync_period: Duration,
    /// Interval of full resyncs, which also repair rules changed behind Rudder's back.
    pub full_sync_period: Duration,
    /// How long to wait for this node's Node object (for the node IPs) before the first
    /// sync goes ahead without it.
    pub node_wait: Duration,
}

impl Default for LoopConfig {
    fn default() -> LoopConfig {
        LoopConfig {
            min_sync_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(30),
            full_sync_period: Duration::from_secs(3600),
            node_wait: Duration::from_secs(30),
        }
    }
}

/// Full or partial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncKind {
    /// The tables were replaced atomically with a complete compile.
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
    /// [`SyncLoop::quarantined`]), after the sync.
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
        families: Vec<rudder_model::IpFamily>,
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
        families: Vec<rudder_model::IpFamily>,
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
        family: rudder_model::IpFamily,
        /// Entries deleted.
        deleted: usize,
        /// Time spent.
        duration: Duration,
    },
}

/// Receives [`LoopEvent`]s.
pub type Observer = Box<dyn FnMut(&LoopEvent) + Send>;

/// What a successful sync programmed, for observers that follow it with something of their
/// own outside the kernel's rules (the localhost node port proxy follows the endpoints).
pub struct Synced<'a> {
    /// The state the sync programmed.
    pub state: &'a ProxyState,
    /// The node context it was programmed for.
    pub node: &'a NodeContext,
    /// Whether a service was refused as a whole (it has no rules, so nothing may follow it).
    pub refused: &'a dyn Fn(&rudder_model::Service) -> bool,
}

/// Receives a [`Synced`] after every successful sync.
pub type SyncedObserver = Box<dyn FnMut(&Synced<'_>) + Send>;

/// Seconds since the epoch of an RFC 3339 UTC timestamp (`2026-01-02T03:04:05Z`, optional
/// fraction), as Kubernetes writes them.
pub fn parse_rfc3339(ts: &str) -> Option<f64> {
    let t: jiff::Timestamp = ts.parse().ok()?;
    Some(t.as_duration().as_secs_f64())
}

/// The loop. Feed it [`Change`]s with [`SyncLoop::apply_change`] or run it on a channel
/// with [`SyncLoop::run`].
pub struct SyncLoop<D> {
    state: ProxyState,
    compiler: Compiler,
    dataplane: D,
    node_context: NodeContextFn,
    config: LoopConfig,
    node: Option<Node>,
    node_seen: bool,
    current_ctx: NodeContext,
    services_listed: bool,
    slices_listed: bool,
    needs_full: bool,
    last_full: Option<Instant>,
    last_sync_end: Option<Instant>,
    retry_at: Option<Instant>,
    started: Instant,
    syncs: u64,
    failures: u64,
    health: Arc<ProxyHealth>,
    service_health: tokio::sync::watch::Sender<ServiceHealth>,
    conntrack: Option<Box<dyn Conntrack>>,
    /// UDP frontends services lost since the last conntrack cleanup.
    withdrawn_udp: crate::withdrawn::Withdrawn,
    service_cidrs: Vec<rudder_model::Cidr>,
    observer: Option<Observer>,
    synced_observers: Vec<SyncedObserver>,
    /// Trigger times (seconds since the epoch) of EndpointSlice changes not yet programmed.
    trigger_times: Vec<f64>,
    /// Questions from `rudder explain --live`.
    explain_rx: Option<UnboundedReceiver<ExplainRequest>>,
    /// Services whose rules the kernel refused, with the kernel's error: compiled as absent
    /// until they are tried again (see [`SyncLoop::quarantined`]).
    quarantine: BTreeMap<ServiceKey, String>,
    /// When the quarantined services are tried again.
    quarantine_retry_at: Option<Instant>,
    /// What the dataplane's change monitor reports ([`SyncLoop::with_drift`]).
    drift_rx: Option<UnboundedReceiver<DriftNotice>>,
    /// Drift seen and not repaired yet: what changed, and when it was first seen.
    pending_drift: Option<(Vec<String>, Instant)>,
    /// The monitor lost notifications: the tables must be compared with what Rudder wrote.
    verify_pending: bool,
}

/// A question for the running loop: what happens to this packet, given the loop's current
/// state? The answer goes to `reply`.
#[derive(Debug)]
pub struct ExplainRequest {
    /// The packet.
    pub query: rudder_compiler::explain::Query,
    /// Where the answer goes.
    pub reply: std::sync::mpsc::SyncSender<rudder_compiler::explain::Explanation>,
}

/// The next drift notice, or never when there is no (more) channel.
async fn next_drift(rx: &mut Option<UnboundedReceiver<DriftNotice>>) -> Option<DriftNotice> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// The next question, or never when there is no (more) channel.
async fn next_request(
    rx: &mut Option<UnboundedReceiver<ExplainRequest>>,
) -> Option<ExplainRequest> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

impl<D: Dataplane> SyncLoop<D> {
    /// Answers `explain` questions arriving on `rx` between syncs.
    pub fn with_explain(mut self, rx: UnboundedReceiver<ExplainRequest>) -> Self {
        self.explain_rx = Some(rx);
        self
    }

    /// Repairs Rudder's tables when the dataplane's change monitor, sending on `rx`, reports
    /// that someone else changed them (see [`DriftNotice`]).
    pub fn with_drift(mut self, rx: UnboundedReceiver<DriftNotice>) -> Self {
        self.drift_rx = Some(rx);
        self
    }

    /// Reports loop events to `observer`.
    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Shows `observer` what every successful sync programmed (see [`Synced`]).
    pub fn with_synced_observer(mut self, observer: SyncedObserver) -> Self {
        self.synced_observers.push(observer);
        self
    }

    fn notify_synced(&mut self) {
        // Services the compiler refused as a whole, and those the kernel refused (held
        // back), have no rules: nothing may follow them (as for health check servers).
        let compiler = &self.compiler;
        let quarantine = &self.quarantine;
        let refused =
            |s: &rudder_model::Service| compiler.refuses(s) || quarantine.contains_key(&s.key);
        let synced = Synced {
            state: &self.state,
            node: &self.current_ctx,
            refused: &refused,
        };
        for o in &mut self.synced_observers {
            o(&synced);
        }
    }

    fn emit(&mut self, event: LoopEvent) {
        if let Some(o) = self.observer.as_mut() {
            o(&event);
        }
    }

    /// Cleans stale UDP conntrack entries through `conntrack` after syncs that changed UDP
    /// services.
    pub fn with_conntrack(mut self, conntrack: Box<dyn Conntrack>) -> Self {
        self.conntrack = Some(conntrack);
        self
    }

    fn clean_conntrack(&mut self) {
        let mut events = Vec::new();
        let node_addrs = rudder_compiler::guard::node_addresses(self.compiler.node());
        let withdrawn = std::mem::take(&mut self.withdrawn_udp);
        let Some(ct) = self.conntrack.as_mut() else {
            return;
        };
        let mut retry_withdrawn = false;
        for family in self.compiler.families() {
            let flows = match ct.udp_flows(family) {
                Ok(f) => f,
                Err(e) => {
                    warn!(%family, "cannot list conntrack entries: {e}");
                    retry_withdrawn = true;
                    continue;
                }
            };
            let mut stale = stale_udp_flows(&self.state, family, &flows, &node_addrs);
            // The flows of frontends that went away with their service (kubernetes#141371).
            stale.extend(withdrawn.stale_flows(&self.state, family, &flows));
            stale.sort();
            stale.dedup();
            if stale.is_empty() {
                continue;
            }
            let t0 = Instant::now();
            match ct.delete(&stale) {
                Ok(n) => {
                    info!(%family, deleted = n, "deleted stale UDP conntrack entries");
                    events.push(LoopEvent::Conntrack {
                        family,
                        deleted: n,
                        duration: t0.elapsed(),
                    });
                }
                Err(e) => warn!(%family, "cannot delete stale conntrack entries: {e}"),
            }
        }
        if retry_withdrawn {
            // Tried again after the next sync.
            self.withdrawn_udp = withdrawn;
        }
        for e in events {
            self.emit(e);
        }
    }

    /// The proxy's health, for health servers.
    pub fn proxy_health(&self) -> Arc<ProxyHealth> {
        self.health.clone()
    }

    /// The health-check node port servers that should run, updated after every successful
    /// sync.
    pub fn service_health(&self) -> tokio::sync::watch::Receiver<ServiceHealth> {
        self.service_health.subscribe()
    }

    /// A loop that programs `dataplane` through `compiler`. Nothing is synced before both
    /// Services and EndpointSlices have been listed once.
    pub fn new(
        compiler: Compiler,
        dataplane: D,
        node_context: NodeContextFn,
        config: LoopConfig,
    ) -> SyncLoop<D> {
        let current_ctx = compiler.node().clone();
        SyncLoop {
            state: ProxyState::new(),
            compiler,
            dataplane,
            node_context,
            config,
            node: None,
            node_seen: false,
            current_ctx,
            services_listed: false,
            slices_listed: false,
            needs_full: true,
            last_full: None,
            last_sync_end: None,
            retry_at: None,
            started: Instant::now(),
            syncs: 0,
            failures: 0,
            health: ProxyHealth::new(config.sync_period * 2),
            service_health: tokio::sync::watch::Sender::new(ServiceHealth::default()),
            conntrack: None,
            withdrawn_udp: Default::default(),
            service_cidrs: Vec::new(),
            observer: None,
            synced_observers: Vec::new(),
            trigger_times: Vec::new(),
            explain_rx: None,
            quarantine: BTreeMap::new(),
            quarantine_retry_at: None,
            drift_rx: None,
            pending_drift: None,
            verify_pending: false,
        }
    }

    /// The services held back because the kernel refused their rules, with its error. They
    /// are compiled as if they did not exist, so that nothing else is held up, and tried
    /// again at every full sync, whenever they change, and every `sync_period`.
    pub fn quarantined(&self) -> &BTreeMap<ServiceKey, String> {
        &self.quarantine
    }

    /// The current proxy state.
    pub fn state(&self) -> &ProxyState {
        &self.state
    }

    /// The dataplane.
    pub fn dataplane(&self) -> &D {
        &self.dataplane
    }

    /// Number of sync attempts and of failed ones.
    pub fn counts(&self) -> (u64, u64) {
        (self.syncs, self.failures)
    }

    /// Whether Services and EndpointSlices have both been listed (the first sync may run).
    pub fn lists_done(&self) -> bool {
        self.services_listed && self.slices_listed
    }

    /// Applies one change to the state.
    pub fn apply_change(&mut self, change: Change) {
        if let Change::SliceApplied(s) = &change {
            if let Some(t) = s.trigger_time.as_deref().and_then(parse_rfc3339) {
                self.trigger_times.push(t);
            }
        }
        let (s0, e0) = self.state.change_counts();
        self.apply_change_inner(change);
        let (s1, e1) = self.state.change_counts();
        if (s1, e1) != (s0, e0) {
            self.emit(LoopEvent::Changed {
                services: s1 - s0,
                endpoints: e1 - e0,
            });
        }
        if !self.state.dirty().is_empty() || self.needs_full {
            self.health.queued();
        }
    }

    fn apply_change_inner(&mut self, change: Change) {
        match change {
            Change::ServiceApplied(s) => {
                self.withdrawn_udp
                    .note(self.state.service(&s.key), Some(&s));
                self.state.upsert_service(*s);
            }
            Change::ServiceDeleted(key) => {
                self.withdrawn_udp.note(self.state.service(&key), None);
                self.state.remove_service(&key);
            }
            Change::ServicesListed(list) => {
                self.withdrawn_udp
                    .note_replaced(self.state.services(), &list);
                self.state.replace_services(list);
                self.services_listed = true;
            }
            Change::SliceApplied(s) => {
                self.state.upsert_slice(*s);
            }
            Change::SliceDeleted(key) => {
                self.state.remove_slice(&key);
            }
            Change::SlicesListed(list) => {
                self.state.replace_slices(list);
                self.slices_listed = true;
            }
            Change::NodeApplied(n) => self.set_node(Some(*n)),
            Change::NodeDeleted => self.set_node(None),
            Change::ServiceCidrs(cidrs) => {
                self.service_cidrs = cidrs;
                self.refresh_context();
            }
            Change::Snapshot {
                services,
                slices,
                node,
                service_cidrs,
            } => {
                self.withdrawn_udp
                    .note_replaced(self.state.services(), &services);
                self.state.replace_services(services);
                self.state.replace_slices(slices);
                self.services_listed = true;
                self.slices_listed = true;
                self.service_cidrs = service_cidrs;
                self.set_node(node.map(|n| *n));
                // A snapshot source has no separate node stream to wait for.
                self.node_seen = true;
            }
        }
    }

    fn set_node(&mut self, node: Option<Node>) {
        self.health.set_node_eligible(
            node.as_ref()
                .is_some_and(|n| !n.deleting && !n.to_be_deleted),
        );
        self.node_seen = self.node_seen || node.is_some();
        self.node = node;
        self.refresh_context();
    }

    /// Recomputes the compiler's context (node and service CIDRs); a change means a full
    /// sync.
    fn refresh_context(&mut self) {
        let mut ctx = (self.node_context)(self.node.as_ref());
        let mut cidrs = self.service_cidrs.clone();
        cidrs.sort();
        cidrs.dedup();
        ctx.service_cidrs = cidrs;
        if ctx != self.current_ctx {
            info!(node_port_ips = ?ctx.node_port_ips, "node context changed: next sync is a full one");
            self.compiler
                .reconfigure(self.compiler.config().clone(), ctx.clone());
            self.current_ctx = ctx;
            self.needs_full = true;
        }
    }

    fn gate_open(&self, now: Instant) -> bool {
        self.lists_done() && (self.node_seen || now >= self.started + self.config.node_wait)
    }

    fn full_due(&self, now: Instant) -> bool {
        self.last_full
            .is_none_or(|t| now >= t + self.config.full_sync_period)
    }

    /// Whether a sync has work to do (ignoring timing).
    pub fn pending(&self, now: Instant) -> bool {
        self.needs_full
            || !self.state.dirty().is_empty()
            || self.full_due(now)
            || self.quarantine_retry_due(now)
    }

    fn quarantine_retry_due(&self, now: Instant) -> bool {
        self.quarantine_retry_at.is_some_and(|t| now >= t)
    }

    /// The earliest time the next sync may start, or `None` if nothing is pending.
    fn next_sync_at(&self, now: Instant) -> Option<Instant> {
        if !self.lists_done() {
            return None;
        }
        if !self.gate_open(now) {
            return Some(self.started + self.config.node_wait);
        }
        let earliest = self
            .last_sync_end
            .map(|t| t + self.config.min_sync_period)
            .into_iter()
            .chain(self.retry_at)
            .max()
            .unwrap_or(now);
        if self.needs_full || !self.state.dirty().is_empty() {
            Some(earliest.max(now))
        } else {
            // Nothing changed: wake up for the periodic full resync, or to try quarantined
            // services again.
            self.last_full
                .map(|t| t + self.config.full_sync_period)
                .into_iter()
                .chain(self.quarantine_retry_at)
                .min()
                .map(|t| t.max(earliest))
        }
    }

    /// Syncs now if the gate is open and something is pending, regardless of timing.
    ///
    /// When the dataplane refuses the transaction, the services at fault are looked for with
    /// dry runs ([`isolate`]), held back ([`SyncLoop::quarantined`]), and everything else is
    /// applied: the sync succeeds unless nothing at all can be applied.
    pub fn sync(&mut self) -> Option<Result<SyncReport, DataplaneError>> {
        let now = Instant::now();
        if !self.gate_open(now) || !self.pending(now) {
            return None;
        }
        let full = self.needs_full || self.full_due(now);
        if full && !self.needs_full && self.last_full.is_some() {
            // A periodic resync (not the first sync, whose kernel state Rudder did not write
            // in this run): first see whether anything changed behind our back.
            self.check_drift();
        }
        let t0 = Instant::now();
        let mut dirty = self.state.take_dirty();
        // Quarantined services are tried again: all of them by a full sync or when their
        // retry is due, the ones that changed otherwise.
        let periodic_retry = !full && self.quarantine_retry_due(now);
        let retry_all = full || periodic_retry;
        let suspects: BTreeSet<ServiceKey> = self
            .quarantine
            .keys()
            .filter(|k| retry_all || dirty.contains(*k))
            .cloned()
            .collect();
        let previous = std::mem::take(&mut self.quarantine);
        self.quarantine = previous
            .iter()
            .filter(|(k, _)| !suspects.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Suspects tried again only because their retry is due (they did not change).
        let unchanged: BTreeSet<ServiceKey> = suspects
            .iter()
            .filter(|k| !dirty.contains(*k))
            .cloned()
            .collect();
        if !full {
            dirty.extend(suspects.iter().cloned());
        }
        self.quarantine_retry_at = None;
        self.compiler
            .set_excluded(self.quarantine.keys().cloned().collect());
        let udp_changed = full || has_udp(&self.state, &dirty) || !self.withdrawn_udp.is_empty();
        let (tx, undo) = if full {
            (self.compiler.full(&self.state), None)
        } else {
            let (tx, undo) = self.compiler.update_undoable(&self.state, &dirty);
            (tx, Some(undo))
        };
        let mut compile = t0.elapsed();
        let mut stats = tx.stats();
        let t1 = Instant::now();
        // Services held back are tried in dry runs first: applying them with everything
        // else would most likely be refused again.
        let probe_first = !suspects.is_empty() && self.dataplane.supports_dry_runs();
        let mut result = if probe_first {
            Err(DataplaneError::from(
                "services held back are tried in dry runs first",
            ))
        } else {
            self.dataplane.apply(&tx)
        };
        let mut dry_runs = 0;
        let mut isolation_compile = Duration::ZERO;
        let mut not_found = false;
        if let Err(e) = &result {
            let failure = if probe_first {
                Failure::Refused
            } else {
                self.dataplane.classify(e)
            };
            match failure {
                // A partial sync that misses an object: the kernel's tables are not what
                // Rudder programmed. Only a full sync can repair them, and it runs at once.
                Failure::NotFound if !full => not_found = true,
                Failure::Other => {}
                Failure::Refused | Failure::NotFound => {
                    let reason = e.to_string();
                    if let Some(r) =
                        self.isolate_refused(full, undo, &dirty, &suspects, periodic_retry, &reason)
                    {
                        dry_runs = r.dry_runs;
                        stats = r.stats;
                        compile += r.compile;
                        isolation_compile = r.compile;
                        result = r.result;
                        // The services found refused, reported unless it is only a periodic
                        // retry of a service that did not change and is still refused (the
                        // error may name another operation: the transaction differs).
                        let problems: Vec<rudder_model::Problem> = r
                            .refused
                            .iter()
                            .filter(|k| {
                                !(periodic_retry
                                    && unchanged.contains(*k)
                                    && previous.contains_key(*k))
                            })
                            .filter_map(|k| {
                                Some(rudder_model::Problem {
                                    kind: rudder_model::ObjectKind::Service,
                                    namespace: k.namespace.clone(),
                                    name: k.name.clone(),
                                    reason: rudder_model::Reason::KernelRefused(
                                        self.quarantine.get(k)?.clone(),
                                    ),
                                })
                            })
                            .collect();
                        crate::change::report_problems(&problems);
                    }
                }
            }
        }
        // What the compiler refused (service addresses that are the node's own, service CIDRs
        // covering the node): logged and counted like invalid input.
        crate::change::report_problems(&self.compiler.take_problems());
        if !self.quarantine.is_empty() {
            self.quarantine_retry_at = Some(Instant::now() + self.config.sync_period);
        }
        let apply = t1.elapsed().saturating_sub(isolation_compile);
        self.syncs += 1;
        self.last_sync_end = Some(Instant::now());
        let kind = if full {
            SyncKind::Full
        } else {
            SyncKind::Partial
        };
        let kind_name = if full { "full" } else { "partial" };
        Some(match result {
            Ok(bytes) => {
                self.retry_at = None;
                self.health.updated();
                if udp_changed {
                    self.clean_conntrack();
                }
                let addresses = match &self.current_ctx.node_port_ips {
                    rudder_compiler::NodePortIps::All => Vec::new(),
                    rudder_compiler::NodePortIps::Only(ips) => ips.clone(),
                };
                // Services the compiler refused as a whole, and those the kernel refused, get
                // no health check server.
                let compiler = &self.compiler;
                let quarantine = &self.quarantine;
                let sh =
                    ServiceHealth::compute(&self.state, &self.current_ctx.name, addresses, |s| {
                        compiler.refuses(s) || quarantine.contains_key(&s.key)
                    });
                self.service_health.send_if_modified(|cur| {
                    let changed = *cur != sh;
                    *cur = sh;
                    changed
                });
                self.notify_synced();
                if full {
                    self.needs_full = false;
                    self.last_full = self.last_sync_end;
                    self.drift_repaired();
                }
                let report = SyncReport {
                    kind,
                    services: if full {
                        self.state.service_count()
                    } else {
                        dirty.len()
                    },
                    objects: stats.objects,
                    elements_added: stats.elements_added,
                    elements_deleted: stats.elements_deleted,
                    bytes,
                    compile,
                    apply,
                    no_local_endpoints: self.compiler.no_local_endpoints(),
                    services_total: self.state.service_count(),
                    quarantined: self
                        .quarantine
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    dry_runs,
                };
                info!(
                    kind = kind_name,
                    services_changed = report.services,
                    objects = report.objects,
                    elements_added = report.elements_added,
                    elements_deleted = report.elements_deleted,
                    bytes = report.bytes,
                    compile_ms = compile.as_secs_f64() * 1e3,
                    apply_ms = apply.as_secs_f64() * 1e3,
                    quarantined = report.quarantined.len(),
                    "sync done"
                );
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                let programming_seconds = std::mem::take(&mut self.trigger_times)
                    .into_iter()
                    .map(|t| (now - t).max(0.0))
                    .collect();
                let families = self.compiler.families();
                self.emit(LoopEvent::Synced {
                    report: report.clone(),
                    families,
                    programming_seconds,
                });
                Ok(report)
            }
            Err(e) => {
                let families = self.compiler.families();
                self.emit(LoopEvent::Failed { kind, families });
                // The compiler has moved on but the kernel has not (transactions are atomic):
                // the next sync replaces the tables completely.
                self.failures += 1;
                self.needs_full = true;
                // The quarantine of a failed sync is void: the full sync decides again.
                self.quarantine = previous;
                self.quarantine_retry_at = None;
                if not_found {
                    self.retry_at = None;
                    warn!(
                        kind = kind_name,
                        "sync failed, an object is missing (Rudder's tables were changed behind its back): a full sync repairs them now: {e}"
                    );
                } else {
                    self.retry_at = Some(Instant::now() + self.config.sync_period);
                    warn!(kind = kind_name, retry_in = ?self.config.sync_period, "sync failed: {e}");
                }
                Err(e)
            }
        })
    }

    /// Runs until `shutdown` completes: applies changes as they arrive and syncs by the
    /// timing rules. Rules stay in place when it returns.
    pub async fn run(
        mut self,
        mut changes: UnboundedReceiver<Change>,
        shutdown: impl Future<Output = ()>,
    ) -> Self {
        tokio::pin!(shutdown);
        let mut open = true;
        let mut explain_rx = self.explain_rx.take();
        let mut drift_rx = self.drift_rx.take();
        loop {
            // Take everything already queued, so a burst becomes one sync.
            while let Ok(c) = changes.try_recv() {
                self.apply_change(c);
            }
            if let Some(rx) = drift_rx.as_mut() {
                while let Ok(d) = rx.try_recv() {
                    self.drift_observed(d);
                }
            }
            if self.verify_pending {
                self.verify_tables();
            }
            let now = Instant::now();
            let next = self.next_sync_at(now);
            if next.is_some_and(|t| t <= now) {
                let _ = self.sync();
                continue;
            }
            tokio::select! {
                _ = &mut shutdown => break,
                c = changes.recv(), if open => match c {
                    Some(c) => self.apply_change(c),
                    None => {
                        debug!("all sources stopped");
                        open = false;
                    }
                },
                q = next_request(&mut explain_rx) => match q {
                    Some(req) => {
                        let e = rudder_compiler::explain::explain(
                            &self.state,
                            self.compiler.config(),
                            self.compiler.node(),
                            &req.query,
                        );
                        let _ = req.reply.try_send(e);
                    }
                    None => explain_rx = None,
                },
                d = next_drift(&mut drift_rx) => match d {
                    Some(d) => self.drift_observed(d),
                    None => drift_rx = None,
                },
                _ = tokio::time::sleep_until(next.unwrap_or(now + Duration::from_secs(3600))) => {}
            }
        }
        self
    }
}

mod drift;
mod isolate;
mod quarantine;

pub use drift::DriftNotice;

pub use isolate::{Isolation, isolate};
pub use quarantine::MAX_DRY_RUNS;

#[cfg(test)]
mod tests;
