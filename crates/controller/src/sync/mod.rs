//! The sync loop: change tracking, the initial-list gate, and kube-proxy's timing rules.

use std::future::Future;
use std::time::Duration;

use rudder_compiler::{Compiler, NodeContext};
use rudder_model::{IpFamily, Node, ProxyState};
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

/// Where transactions go: the kernel in the binary, an in-memory ruleset in tests.
pub trait Dataplane: Send {
    /// Applies `tx` atomically; returns the number of bytes sent, when that means anything.
    fn apply(&mut self, tx: &Transaction) -> Result<usize, DataplaneError>;

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
    /// Before a periodic full resync, the kernel's tables differed from what Rudder had
    /// programmed; the resync repairs them.
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

/// Seconds since the epoch of an RFC 3339 UTC timestamp (`2026-01-02T03:04:05Z`, optional
/// fraction), as Kubernetes writes them.
pub fn parse_rfc3339(ts: &str) -> Option<f64> {
    let ts = ts.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    if d.len() != 3 || t.len() != 3 {
        return None;
    }
    let (y, m, day) = (d[0], d[1], d[2]);
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let frac: f64 = format!("0.{frac}").parse().ok()?;
    Some((days * 86400 + t[0] * 3600 + t[1] * 60 + t[2]) as f64 + frac)
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
    service_cidrs: Vec<rudder_model::Cidr>,
    observer: Option<Observer>,
    /// Trigger times (seconds since the epoch) of EndpointSlice changes not yet programmed.
    trigger_times: Vec<f64>,
    /// Questions from `rudder explain --live`.
    explain_rx: Option<UnboundedReceiver<ExplainRequest>>,
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

    /// Reports loop events to `observer`.
    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
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
        let Some(ct) = self.conntrack.as_mut() else {
            return;
        };
        for family in self.compiler.families() {
            let flows = match ct.udp_flows(family) {
                Ok(f) => f,
                Err(e) => {
                    warn!(%family, "cannot list conntrack entries: {e}");
                    continue;
                }
            };
            let stale = stale_udp_flows(&self.state, family, &flows, &node_addrs);
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
            service_cidrs: Vec::new(),
            observer: None,
            trigger_times: Vec::new(),
            explain_rx: None,
        }
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
        self.needs_full || !self.state.dirty().is_empty() || self.full_due(now)
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
            // Nothing changed: wake up for the periodic full resync.
            self.last_full
                .map(|t| (t + self.config.full_sync_period).max(earliest))
        }
    }

    /// Compares the kernel's tables with what Rudder programmed (by shape: rules per chain,
    /// elements per static set) and reports drift.
    fn check_drift(&mut self) {
        let Ok(expected) = self.compiler.ruleset() else {
            return;
        };
        let mut differences = Vec::new();
        for (table_ref, table) in &expected.tables {
            match self.dataplane.shape(table_ref) {
                None => return,
                Some(Err(e)) => {
                    warn!("cannot read {table_ref} to check for drift: {e}");
                    return;
                }
                Some(Ok(actual)) => {
                    for d in shape_diff(&expected_shape(table), &actual) {
                        differences.push(format!("{table_ref}: {d}"));
                    }
                }
            }
        }
        if differences.is_empty() {
            debug!("no drift before the periodic full resync");
            return;
        }
        warn!(
            total = differences.len(),
            first = ?differences.iter().take(5).collect::<Vec<_>>(),
            "drift: the kernel's rules were changed behind Rudder's back; the full resync repairs them"
        );
        differences.truncate(20);
        self.emit(LoopEvent::Drift { differences });
    }

    /// Syncs now if the gate is open and something is pending, regardless of timing.
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
        let dirty = self.state.take_dirty();
        let udp_changed = full || has_udp(&self.state, &dirty);
        let tx = if full {
            self.compiler.full(&self.state)
        } else {
            self.compiler.update(&self.state, &dirty)
        };
        let compile = t0.elapsed();
        // What the compiler refused (service addresses that are the node's own, service CIDRs
        // covering the node): logged and counted like invalid input.
        crate::change::report_problems(&self.compiler.take_problems());
        let stats = tx.stats();
        let t1 = Instant::now();
        let result = self.dataplane.apply(&tx);
        let apply = t1.elapsed();
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
                // Services the compiler refused as a whole get no health check server.
                let compiler = &self.compiler;
                let sh =
                    ServiceHealth::compute(&self.state, &self.current_ctx.name, addresses, |s| {
                        compiler.refuses(s)
                    });
                self.service_health.send_if_modified(|cur| {
                    let changed = *cur != sh;
                    *cur = sh;
                    changed
                });
                if full {
                    self.needs_full = false;
                    self.last_full = self.last_sync_end;
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
                self.retry_at = Some(Instant::now() + self.config.sync_period);
                warn!(kind = kind_name, retry_in = ?self.config.sync_period, "sync failed: {e}");
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
        loop {
            // Take everything already queued, so a burst becomes one sync.
            while let Ok(c) = changes.try_recv() {
                self.apply_change(c);
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
                _ = tokio::time::sleep_until(next.unwrap_or(now + Duration::from_secs(3600))) => {}
            }
        }
        self
    }
}

#[cfg(test)]
mod tests;
