//! The sync loop: change tracking, the initial-list gate, kube-proxy's timing rules, full
//! and partial syncs, the services held back after a refusal, health and events — over a
//! [`ProxyMode`], which does what depends on the kernel.
//!
//! # The thread it runs on
//!
//! The loop is one task ([`SyncLoop::run`]) that owns the state, the mode and the observers:
//! changes, `explain` questions and drift notices arrive on channels, and are taken one at a
//! time between syncs, so nothing is shared and nothing is locked. A sync is synchronous CPU
//! and netlink work (compile, encode, one `sendmsg`, dry runs when the kernel refuses): the
//! binary gives the loop a thread of its own (a current-thread runtime, see
//! `crates/rudder/src/run.rs`) so that a long full sync never stalls the API watchers, the
//! metrics and health servers or the localhost proxy, which run on the other runtime. The
//! loop never waits on the network while it holds a change: sources buffer in the channel.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rudder_compiler::{Compiler, NodeContext};
use rudder_model::{Node, ProxyState, ServiceKey};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::change::Change;
use crate::conntrack::{Conntrack, ConntrackCleaner};
use crate::health::{ProxyHealth, ServiceHealth};
use crate::mode::{DataplaneError, Failure, ProxyMode, Scope, SyncRequest};
use crate::nftables::{Dataplane, NftMode};
use crate::observer::{
    HealthPublisher, LoopEvent, Observer, SyncKind, SyncObserver, SyncReport, Synced,
    SyncedObserver,
};

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

/// Seconds since the epoch of an RFC 3339 UTC timestamp (`2026-01-02T03:04:05Z`, optional
/// fraction), as Kubernetes writes them.
pub fn parse_rfc3339(ts: &str) -> Option<f64> {
    let t: jiff::Timestamp = ts.parse().ok()?;
    Some(t.as_duration().as_secs_f64())
}

/// The loop. Feed it [`Change`]s with [`SyncLoop::apply_change`] or run it on a channel
/// with [`SyncLoop::run`].
pub struct SyncLoop<M> {
    state: ProxyState,
    mode: M,
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
    service_health: tokio::sync::watch::Receiver<ServiceHealth>,
    service_cidrs: Vec<rudder_model::NamedCidr>,
    observer: Option<Observer>,
    /// The work that follows syncs (health check servers, conntrack cleanup, the localhost
    /// proxy), in the order it was added.
    observers: Vec<Box<dyn SyncObserver>>,
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
    pub reply: tokio::sync::oneshot::Sender<rudder_compiler::explain::Explanation>,
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

impl<D: Dataplane> SyncLoop<NftMode<D>> {
    /// A loop in the nftables mode: it programs `dataplane` through `compiler`.
    pub fn new(
        compiler: Compiler,
        dataplane: D,
        node_context: NodeContextFn,
        config: LoopConfig,
    ) -> SyncLoop<NftMode<D>> {
        SyncLoop::with_mode(NftMode::new(compiler, dataplane), node_context, config)
    }

    /// The nftables dataplane.
    pub fn dataplane(&self) -> &D {
        self.mode.dataplane()
    }

    /// The nftables dataplane, to change it (tests tamper with it).
    pub fn dataplane_mut(&mut self) -> &mut D {
        self.mode.dataplane_mut()
    }
}

impl<M: ProxyMode> SyncLoop<M> {
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
    pub fn with_synced_observer(self, observer: SyncedObserver) -> Self {
        self.with_sync_observer(Box::new(observer))
    }

    /// Adds work that follows the loop: it sees every change and every successful sync.
    pub fn with_sync_observer(mut self, observer: Box<dyn SyncObserver>) -> Self {
        self.observers.push(observer);
        self
    }

    /// Runs the observers after a successful sync of `changed` services (all of them when
    /// `full`).
    fn notify_synced(&mut self, full: bool, changed: &BTreeSet<ServiceKey>) {
        // Services the mode refused as a whole, and those the kernel refused (held back),
        // have no rules: nothing may follow them (health check servers, the localhost proxy).
        let mode = &self.mode;
        let quarantine = &self.quarantine;
        let refused =
            |s: &rudder_model::Service| mode.refuses(s) || quarantine.contains_key(&s.key);
        let families = mode.families();
        let synced = Synced {
            state: &self.state,
            node: &self.current_ctx,
            refused: &refused,
            full,
            changed,
            families: &families,
        };
        let mut events = Vec::new();
        for o in &mut self.observers {
            o.synced(&synced, &mut events);
        }
        for e in events {
            self.emit(e);
        }
    }

    fn emit(&mut self, event: LoopEvent) {
        if let Some(o) = self.observer.as_mut() {
            o(&event);
        }
    }

    /// Cleans stale UDP conntrack entries through `conntrack` after syncs that changed UDP
    /// services (a [`ConntrackCleaner`] observer).
    pub fn with_conntrack(self, conntrack: Box<dyn Conntrack>) -> Self {
        self.with_sync_observer(Box::new(ConntrackCleaner::new(conntrack)))
    }

    /// The proxy's health, for health servers.
    pub fn proxy_health(&self) -> Arc<ProxyHealth> {
        self.health.clone()
    }

    /// The health-check node port servers that should run, updated after every successful
    /// sync.
    pub fn service_health(&self) -> tokio::sync::watch::Receiver<ServiceHealth> {
        self.service_health.clone()
    }

    /// A loop that programs the kernel through `mode`. Nothing is synced before both
    /// Services and EndpointSlices have been listed once.
    pub fn with_mode(mode: M, node_context: NodeContextFn, config: LoopConfig) -> SyncLoop<M> {
        let current_ctx = mode.node().clone();
        let (publisher, service_health) = HealthPublisher::new();
        SyncLoop {
            state: ProxyState::new(),
            mode,
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
            service_health,
            service_cidrs: Vec::new(),
            observer: None,
            observers: vec![Box::new(publisher)],
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

    /// The proxy mode.
    pub fn mode(&self) -> &M {
        &self.mode
    }

    /// The proxy mode, to change it (tests tamper with its dataplane).
    pub fn mode_mut(&mut self) -> &mut M {
        &mut self.mode
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
        for o in &mut self.observers {
            o.change(&self.state, &change);
        }
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
                self.state.upsert_service(*s);
            }
            Change::ServiceDeleted(key) => {
                self.state.remove_service(&key);
            }
            Change::ServicesListed(list) => {
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

    /// `problems` with the ServiceCIDR objects they concern named: the mode refuses prefixes
    /// (it knows no objects), and a problem on every object that holds the prefix lets each
    /// get its Event.
    fn named(&self, problems: Vec<rudder_model::Problem>) -> Vec<rudder_model::Problem> {
        let mut out = Vec::with_capacity(problems.len());
        for p in problems {
            let cidr = p.reason.service_cidr();
            let owners: Vec<&str> = match cidr {
                Some(c) if p.kind == rudder_model::ObjectKind::ServiceCidr && p.name.is_empty() => {
                    self.service_cidrs
                        .iter()
                        .filter(|n| n.cidr == c)
                        .map(|n| n.object.as_str())
                        .collect()
                }
                _ => Vec::new(),
            };
            if owners.is_empty() {
                out.push(p);
                continue;
            }
            let mut owners = owners;
            owners.sort_unstable();
            owners.dedup();
            for o in owners {
                out.push(rudder_model::Problem {
                    name: o.to_owned(),
                    ..p.clone()
                });
            }
        }
        out
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
        let mut cidrs: Vec<rudder_model::Cidr> =
            self.service_cidrs.iter().map(|c| c.cidr).collect();
        cidrs.sort();
        cidrs.dedup();
        ctx.service_cidrs = cidrs;
        if ctx != self.current_ctx {
            info!(node_port_ips = ?ctx.node_port_ips, "node context changed: next sync is a full one");
            self.mode.set_node(ctx.clone());
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
    /// When the kernel refuses the change, the mode looks for the services at fault (with
    /// dry runs, see [`crate::isolate`]); they are held back ([`SyncLoop::quarantined`]) and
    /// everything else is applied: the sync succeeds unless nothing at all can be applied.
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
        let held_back: BTreeSet<ServiceKey> = self.quarantine.keys().cloned().collect();
        let outcome = self.mode.sync(
            &self.state,
            SyncRequest {
                scope: if full {
                    Scope::Full
                } else {
                    Scope::Partial(&dirty)
                },
                held_back: &held_back,
                suspects: &suspects,
                periodic_retry,
            },
        );
        // The services found refused are held back, and reported unless it is only a
        // periodic retry of a service that did not change and is still refused (the error
        // may name another operation: the change differs).
        let mut problems = Vec::new();
        for (k, why) in &outcome.refused {
            self.quarantine.insert(k.clone(), why.clone());
            if !(periodic_retry && unchanged.contains(k) && previous.contains_key(k)) {
                problems.push(rudder_model::Problem {
                    kind: rudder_model::ObjectKind::Service,
                    namespace: k.namespace.clone(),
                    name: k.name.clone(),
                    reason: rudder_model::Reason::KernelRefused(why.clone()),
                });
            }
        }
        crate::change::report_problems(&problems);
        for k in &outcome.undecided {
            self.state.mark_dirty(k.clone());
        }
        // What the mode refused (service addresses that are the node's own, service CIDRs
        // covering the node): logged and counted like invalid input.
        let problems = self.mode.take_problems();
        crate::change::report_problems(&self.named(problems));
        if !self.quarantine.is_empty() {
            self.quarantine_retry_at = Some(Instant::now() + self.config.sync_period);
        }
        self.syncs += 1;
        self.last_sync_end = Some(Instant::now());
        let kind = if full {
            SyncKind::Full
        } else {
            SyncKind::Partial
        };
        let kind_name = if full { "full" } else { "partial" };
        let (compile, apply) = (outcome.compile, outcome.apply);
        Some(match outcome.result {
            Ok(bytes) => {
                self.retry_at = None;
                self.health.updated();
                let changed = if full { BTreeSet::new() } else { dirty };
                self.notify_synced(full, &changed);
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
                        changed.len()
                    },
                    objects: outcome.written.objects,
                    elements_added: outcome.written.elements_added,
                    elements_deleted: outcome.written.elements_deleted,
                    bytes,
                    compile,
                    apply,
                    no_local_endpoints: self.mode.no_local_endpoints(),
                    services_total: self.state.service_count(),
                    quarantined: self
                        .quarantine
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    dry_runs: outcome.dry_runs,
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
                let families = self.mode.families();
                self.emit(LoopEvent::Synced {
                    report: report.clone(),
                    families,
                    programming_seconds,
                });
                Ok(report)
            }
            Err((e, failure)) => {
                let families = self.mode.families();
                self.emit(LoopEvent::Failed { kind, families });
                // The mode has moved on but the kernel has not (changes are atomic): the
                // next sync programs everything.
                self.failures += 1;
                self.needs_full = true;
                // The quarantine of a failed sync is void: the full sync decides again.
                self.quarantine = previous;
                self.quarantine_retry_at = None;
                if !full && failure == Failure::NotFound {
                    // A partial sync that misses an object: the kernel's tables are not what
                    // Rudder programmed. Only a full sync repairs them, and it runs at once.
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
                        let e = self.mode.explain(&self.state, &req.query);
                        let _ = req.reply.send(e);
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

pub use drift::DriftNotice;

#[cfg(test)]
mod tests;
