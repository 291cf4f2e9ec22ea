//! kube-proxy's metrics (same names, types, labels and buckets as its nftables mode), Rudder's
//! own under `rudder_`, and the metrics and health servers.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder, exponential_buckets,
};
use rudder_controller::health::ProxyHealth;
use rudder_controller::{LoopEvent, SyncKind};
use rudder_model::IpFamily;

use crate::http::{Handler, Response, handler, handler_sync};

/// Every metric Rudder exports.
pub struct Metrics {
    registry: Registry,
    sync_duration: HistogramVec,
    sync_full_duration: HistogramVec,
    sync_partial_duration: HistogramVec,
    last_timestamp: prometheus::GaugeVec,
    last_queued_timestamp: prometheus::GaugeVec,
    network_programming: HistogramVec,
    endpoint_changes_pending: IntGauge,
    endpoint_changes_total: IntCounter,
    service_changes_pending: IntGauge,
    service_changes_total: IntCounter,
    sync_failures: IntCounterVec,
    cleanup_failures: IntCounterVec,
    no_local_endpoints: prometheus::IntGaugeVec,
    healthz_total: IntCounterVec,
    livez_total: IntCounterVec,
    conntrack_duration: HistogramVec,
    conntrack_deleted: IntCounterVec,
    rudder_compile: HistogramVec,
    rudder_elements: IntCounterVec,
    rudder_bytes: IntCounter,
    rudder_objects: IntCounter,
    rudder_drift: IntCounter,
    rudder_quarantined: IntGauge,
    rudder_monitor_lost: IntCounter,
    rudder_dry_runs: IntCounter,
    rudder_syncs: IntCounterVec,
    rudder_invalid: IntCounterVec,
    status: std::sync::Mutex<Status>,
}

/// What `/status` (and `rudder status`) reports.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// When the daemon started (seconds since the epoch).
    pub started: f64,
    /// The daemon's PID.
    #[serde(default)]
    pub pid: u32,
    /// Its tables' name (what its lock is named after).
    #[serde(default)]
    pub table: String,
    /// The proxy mode (`nftables`, `ipvs`), as `/proxyMode` reports it.
    #[serde(default)]
    pub mode: String,
    /// Services known at the last successful sync.
    pub services: usize,
    /// Successful full syncs.
    pub full_syncs: u64,
    /// Successful partial syncs.
    pub partial_syncs: u64,
    /// Failed syncs.
    pub failed_syncs: u64,
    /// Failed syncs since the last success.
    pub consecutive_failures: u64,
    /// The last successful sync.
    pub last_sync: Option<LastSync>,
    /// When the last sync failed (seconds since the epoch).
    pub last_failure: Option<f64>,
    /// Service ports with a Local policy and no local endpoints, over all families.
    pub no_local_endpoints: u64,
    /// Changes seen but not programmed yet (services + endpoint slices).
    pub pending_changes: i64,
    /// Input files being skipped now (manifest mode), each keeping its last good content.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_input: Vec<SkippedInput>,
    /// Services held back because the kernel refused their rules, after the last sync.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<QuarantinedService>,
}

/// A service whose rules the kernel refused, held back and retried.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuarantinedService {
    /// `namespace/name`.
    pub service: String,
    /// The kernel's error.
    pub reason: String,
}

pub use rudder_sources::follow::SkippedInput;

/// The last successful sync.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastSync {
    /// `full` or `partial`.
    pub kind: String,
    /// When it ended (seconds since the epoch).
    pub at: f64,
    /// Services recompiled.
    pub services_changed: usize,
    /// Elements added and deleted.
    pub elements_added: usize,
    /// Elements deleted.
    pub elements_deleted: usize,
    /// Transaction size.
    pub bytes: usize,
    /// Compile time, milliseconds.
    pub compile_ms: f64,
    /// Kernel time, milliseconds.
    pub apply_ms: f64,
}

fn family_label(f: IpFamily) -> &'static str {
    match f {
        IpFamily::V4 => "IPv4",
        IpFamily::V6 => "IPv6",
    }
}

/// Seconds since the epoch.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// kube-proxy's network programming buckets: 0.25, 0.5, 1–59 by 1, 60–115 by 5, 120–300 by 30.
fn programming_buckets() -> Vec<f64> {
    let mut b = vec![0.25, 0.5];
    b.extend((1..60).map(f64::from));
    b.extend((60..120).step_by(5).map(f64::from));
    b.extend((120..=300).step_by(30).map(f64::from));
    b
}

impl Metrics {
    /// Registers everything.
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let exp = exponential_buckets(0.001, 2.0, 15)?;
        let hist = |name: &str,
                    help: &str,
                    buckets: Vec<f64>,
                    labels: &[&str]|
         -> prometheus::Result<HistogramVec> {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let counter_vec =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let gauge_vec = |name: &str, help: &str| -> prometheus::Result<prometheus::GaugeVec> {
            let g = prometheus::GaugeVec::new(Opts::new(name, help), &["ip_family"])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let m = Metrics {
            sync_duration: hist(
                "kubeproxy_sync_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds",
                exp.clone(),
                &["ip_family"],
            )?,
            sync_full_duration: hist(
                "kubeproxy_sync_full_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for full resyncs",
                exp.clone(),
                &["ip_family"],
            )?,
            sync_partial_duration: hist(
                "kubeproxy_sync_partial_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for partial resyncs",
                exp.clone(),
                &["ip_family"],
            )?,
            last_timestamp: gauge_vec(
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                "The last time proxy rules were successfully synced",
            )?,
            last_queued_timestamp: gauge_vec(
                "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                "The last time a sync of proxy rules was queued",
            )?,
            network_programming: hist(
                "kubeproxy_network_programming_duration_seconds",
                "In Cluster Network Programming Latency in seconds",
                programming_buckets(),
                &["ip_family"],
            )?,
            endpoint_changes_pending: gauge(
                "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
                "Pending proxy rules Endpoint changes",
            )?,
            endpoint_changes_total: counter(
                "kubeproxy_sync_proxy_rules_endpoint_changes_total",
                "Cumulative proxy rules Endpoint changes",
            )?,
            service_changes_pending: gauge(
                "kubeproxy_sync_proxy_rules_service_changes_pending",
                "Pending proxy rules Service changes",
            )?,
            service_changes_total: counter(
                "kubeproxy_sync_proxy_rules_service_changes_total",
                "Cumulative proxy rules Service changes",
            )?,
            sync_failures: counter_vec(
                "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
                "Total number of times the nftables sync failed",
                &["ip_family"],
            )?,
            cleanup_failures: counter_vec(
                "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total",
                "Total number of times the nftables cleanup of stale objects failed",
                &["ip_family"],
            )?,
            no_local_endpoints: {
                let g = prometheus::IntGaugeVec::new(
                    Opts::new(
                        "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
                        "Number of services with a Local traffic policy and no endpoints",
                    ),
                    &["traffic_policy", "ip_family"],
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            healthz_total: counter_vec(
                "kubeproxy_proxy_healthz_total",
                "Cumulative proxy healthz HTTP status",
                &["code"],
            )?,
            livez_total: counter_vec(
                "kubeproxy_proxy_livez_total",
                "Cumulative proxy livez HTTP status",
                &["code"],
            )?,
            conntrack_duration: hist(
                "kubeproxy_conntrack_reconciler_sync_duration_seconds",
                "Time taken to clean up stale conntrack entries, in seconds",
                exp.clone(),
                &["ip_family"],
            )?,
            conntrack_deleted: counter_vec(
                "kubeproxy_conntrack_reconciler_deleted_entries_total",
                "Cumulative conntrack flows deleted by the conntrack reconciler",
                &["ip_family"],
            )?,
            rudder_compile: hist(
                "rudder_sync_compile_duration_seconds",
                "Time spent compiling rules per sync",
                exp,
                &["kind"],
            )?,
            rudder_elements: counter_vec(
                "rudder_sync_elements_total",
                "Set and map elements written by syncs, by operation",
                &["op"],
            )?,
            rudder_bytes: counter(
                "rudder_sync_transaction_bytes_total",
                "Bytes of nftables transactions applied",
            )?,
            rudder_objects: counter(
                "rudder_sync_objects_total",
                "Table, chain, set and rule operations in applied transactions",
            )?,
            rudder_drift: counter(
                "rudder_drift_repairs_total",
                "Full syncs that repaired Rudder's tables after they were changed behind its back (seen in the kernel's change notifications or before a periodic resync)",
            )?,
            rudder_monitor_lost: counter(
                "rudder_table_monitor_lost_total",
                "Times nf_tables change notifications were lost (the monitor's buffer overflowed) and the tables were compared with what Rudder programmed instead",
            )?,
            rudder_quarantined: gauge(
                "rudder_quarantined_services",
                "Services held back because the kernel refused their rules (retried every sync period, at every full sync and when they change)",
            )?,
            rudder_dry_runs: counter(
                "rudder_sync_dry_runs_total",
                "Dry runs (transactions the kernel validates and throws away) made to find the services whose rules the kernel refuses",
            )?,
            rudder_syncs: counter_vec(
                "rudder_syncs_total",
                "Sync attempts by kind and result",
                &["kind", "result"],
            )?,
            rudder_invalid: counter_vec(
                "rudder_invalid_input_skipped_total",
                "Invalid objects or fields skipped, by reason, each time they were read",
                &["reason"],
            )?,
            registry,
            status: std::sync::Mutex::new(Status {
                started: now(),
                ..Status::default()
            }),
        };
        m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(m)
    }

    /// The registry, for metrics that live with their feature (the localhost proxy's).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Creates the per-family series (at zero), so every metric is present from the start.
    pub fn init_families(&self, families: &[IpFamily]) {
        for op in ["add", "delete"] {
            let _ = self.rudder_elements.with_label_values(&[op]);
        }
        for kind in ["full", "partial"] {
            let _ = self.rudder_compile.with_label_values(&[kind]);
            for result in ["success", "failure"] {
                let _ = self.rudder_syncs.with_label_values(&[kind, result]);
            }
        }
        for code in ["200", "503"] {
            let _ = self.healthz_total.with_label_values(&[code]);
            let _ = self.livez_total.with_label_values(&[code]);
        }
        for f in families {
            let l = [family_label(*f)];
            let _ = self.sync_duration.with_label_values(&l);
            let _ = self.sync_full_duration.with_label_values(&l);
            let _ = self.sync_partial_duration.with_label_values(&l);
            let _ = self.last_timestamp.with_label_values(&l);
            let _ = self.last_queued_timestamp.with_label_values(&l);
            let _ = self.network_programming.with_label_values(&l);
            let _ = self.sync_failures.with_label_values(&l);
            let _ = self.cleanup_failures.with_label_values(&l);
            for policy in ["internal", "external"] {
                let _ = self
                    .no_local_endpoints
                    .with_label_values(&[policy, family_label(*f)]);
            }
            let _ = self.conntrack_duration.with_label_values(&l);
            let _ = self.conntrack_deleted.with_label_values(&l);
        }
    }

    /// Records a loop event.
    pub fn observe(&self, e: &LoopEvent) {
        match e {
            LoopEvent::Changed {
                services,
                endpoints,
            } => {
                self.service_changes_total.inc_by(*services);
                self.service_changes_pending.add(*services as i64);
                self.endpoint_changes_total.inc_by(*endpoints);
                self.endpoint_changes_pending.add(*endpoints as i64);
                for f in [IpFamily::V4, IpFamily::V6] {
                    self.last_queued_timestamp
                        .with_label_values(&[family_label(f)])
                        .set(now());
                }
            }
            LoopEvent::Synced {
                report,
                families,
                programming_seconds,
            } => {
                let secs = (report.compile + report.apply).as_secs_f64();
                let kind = if report.kind == SyncKind::Full {
                    "full"
                } else {
                    "partial"
                };
                for f in families {
                    let l = [family_label(*f)];
                    self.sync_duration.with_label_values(&l).observe(secs);
                    match report.kind {
                        SyncKind::Full => {
                            self.sync_full_duration.with_label_values(&l).observe(secs)
                        }
                        SyncKind::Partial => self
                            .sync_partial_duration
                            .with_label_values(&l)
                            .observe(secs),
                    }
                    self.last_timestamp.with_label_values(&l).set(now());
                    for p in programming_seconds {
                        self.network_programming.with_label_values(&l).observe(*p);
                    }
                }
                for (f, internal, external) in &report.no_local_endpoints {
                    let fam = family_label(*f);
                    let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                    self.no_local_endpoints
                        .with_label_values(&["internal", fam])
                        .set(clamp(*internal));
                    self.no_local_endpoints
                        .with_label_values(&["external", fam])
                        .set(clamp(*external));
                }
                self.endpoint_changes_pending.set(0);
                self.service_changes_pending.set(0);
                self.rudder_compile
                    .with_label_values(&[kind])
                    .observe(report.compile.as_secs_f64());
                self.rudder_elements
                    .with_label_values(&["add"])
                    .inc_by(report.elements_added as u64);
                self.rudder_elements
                    .with_label_values(&["delete"])
                    .inc_by(report.elements_deleted as u64);
                self.rudder_bytes.inc_by(report.bytes as u64);
                self.rudder_objects.inc_by(report.objects as u64);
                self.rudder_quarantined
                    .set(i64::try_from(report.quarantined.len()).unwrap_or(i64::MAX));
                self.rudder_dry_runs.inc_by(report.dry_runs as u64);
                self.rudder_syncs
                    .with_label_values(&[kind, "success"])
                    .inc();
                if let Ok(mut st) = self.status.lock() {
                    st.services = report.services_total;
                    match report.kind {
                        SyncKind::Full => st.full_syncs += 1,
                        SyncKind::Partial => st.partial_syncs += 1,
                    }
                    st.consecutive_failures = 0;
                    st.quarantined = report
                        .quarantined
                        .iter()
                        .map(|(k, why)| QuarantinedService {
                            service: k.to_string(),
                            reason: why.clone(),
                        })
                        .collect();
                    st.no_local_endpoints = report
                        .no_local_endpoints
                        .iter()
                        .map(|(_, i, e)| i + e)
                        .sum();
                    st.last_sync = Some(LastSync {
                        kind: kind.into(),
                        at: now(),
                        services_changed: report.services,
                        elements_added: report.elements_added,
                        elements_deleted: report.elements_deleted,
                        bytes: report.bytes,
                        compile_ms: report.compile.as_secs_f64() * 1e3,
                        apply_ms: report.apply.as_secs_f64() * 1e3,
                    });
                }
            }
            LoopEvent::Failed { kind, families } => {
                for f in families {
                    self.sync_failures
                        .with_label_values(&[family_label(*f)])
                        .inc();
                }
                let kind = if *kind == SyncKind::Full {
                    "full"
                } else {
                    "partial"
                };
                self.rudder_syncs
                    .with_label_values(&[kind, "failure"])
                    .inc();
                if let Ok(mut st) = self.status.lock() {
                    st.failed_syncs += 1;
                    st.consecutive_failures += 1;
                    st.last_failure = Some(now());
                }
            }
            LoopEvent::Drift { .. } => self.rudder_drift.inc(),
            LoopEvent::Conntrack {
                family,
                deleted,
                duration,
            } => {
                let l = [family_label(*family)];
                self.conntrack_duration
                    .with_label_values(&l)
                    .observe(duration.as_secs_f64());
                self.conntrack_deleted
                    .with_label_values(&l)
                    .inc_by(*deleted as u64);
            }
            _ => {}
        }
    }

    /// Counts change notifications lost by the table monitor.
    pub fn monitor_lost(&self) {
        self.rudder_monitor_lost.inc();
    }

    /// Counts one skipped piece of invalid input.
    pub fn invalid_input(&self, reason: &str) {
        self.rudder_invalid.with_label_values(&[reason]).inc();
    }

    /// Who this daemon is: its PID, its tables' name and its proxy mode.
    pub fn set_identity(&self, pid: u32, table: &str, mode: &str) {
        if let Ok(mut st) = self.status.lock() {
            st.pid = pid;
            st.table = table.to_owned();
            st.mode = mode.to_owned();
        }
    }

    /// The proxy mode (`nftables` until [`Metrics::set_identity`] says otherwise).
    pub fn mode(&self) -> String {
        self.status
            .lock()
            .ok()
            .map(|s| s.mode.clone())
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "nftables".to_owned())
    }

    /// Replaces the list of input files being skipped (see [`rudder_sources::follow::Report`]).
    pub fn set_skipped_input(&self, skipped: Vec<SkippedInput>) {
        if let Ok(mut st) = self.status.lock() {
            st.skipped_input = skipped;
        }
    }

    /// The daemon's status, for `/status`.
    pub fn status(&self) -> Status {
        let mut st = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        st.pending_changes =
            self.endpoint_changes_pending.get() + self.service_changes_pending.get();
        st
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// RFC 3339 UTC time from milliseconds since the epoch, always with milliseconds.
fn rfc3339(ms: u64) -> String {
    let t = i64::try_from(ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .unwrap_or(jiff::Timestamp::MAX);
    format!("{t:.3}")
}

/// kube-proxy's `/healthz` (with node eligibility) and `/livez` answer.
pub fn health_response(
    health: &ProxyHealth,
    families: &[IpFamily],
    with_node: bool,
    skipped_input: usize,
) -> Response {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let healthy = health.healthy();
    let eligible = health.node_eligible();
    let ok = healthy && (!with_node || eligible);
    // On success kube-proxy reports "now" as the last update, for older clients.
    let last = if ok { now_ms } else { health.last_updated_ms() };
    let mut status = serde_json::Map::new();
    for f in families {
        status.insert(
            family_label(*f).into(),
            serde_json::json!({"lastUpdated": rfc3339(last), "healthy": healthy}),
        );
    }
    let mut body = serde_json::json!({
        "lastUpdated": rfc3339(last),
        "currentTime": rfc3339(now_ms),
        "healthy": healthy,
        "status": status,
    });
    if with_node {
        body["nodeEligible"] = serde_json::Value::Bool(eligible);
    }
    // Rudder's addition: a table deleted behind Rudder's back and not repaired yet (the
    // answer is unhealthy until it is).
    if health.tables_missing() {
        body["tablesMissing"] = serde_json::Value::Bool(true);
    }
    // Rudder's addition: input files skipped (the rules of everything else are current).
    if skipped_input > 0 {
        body["skippedInputFiles"] = skipped_input.into();
    }
    let mut r = Response::new(
        if ok { 200 } else { 503 },
        "application/json",
        body.to_string(),
    );
    r.headers.push(("X-Content-Type-Options", "nosniff".into()));
    r
}

/// Handler of the health server (`--healthz-bind-address`).
pub fn health_handler(
    health: Arc<ProxyHealth>,
    metrics: Arc<Metrics>,
    families: Vec<IpFamily>,
) -> Handler {
    handler_sync(move |uri| {
        let (with_node, counter) = match uri.path() {
            "/healthz" => (true, &metrics.healthz_total),
            "/livez" => (false, &metrics.livez_total),
            _ => return Response::new(404, "text/plain", "404 page not found\n".into()),
        };
        let skipped = metrics
            .status
            .lock()
            .map(|s| s.skipped_input.len())
            .unwrap_or(0);
        let r = health_response(&health, &families, with_node, skipped);
        counter.with_label_values(&[&r.status.to_string()]).inc();
        r
    })
}

/// Handler of the metrics server (`--metrics-bind-address`).
pub fn metrics_handler(metrics: Arc<Metrics>, explain: Option<crate::explain::Live>) -> Handler {
    handler(move |uri| {
        let (metrics, explain) = (metrics.clone(), explain.clone());
        async move {
            match uri.path() {
                "/explain" => match &explain {
                    Some(live) => live.answer(&uri).await,
                    None => Response::new(404, "text/plain", "404 page not found\n".into()),
                },
                "/metrics" => Response::new(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    metrics.render(),
                ),
                "/healthz" => Response::new(200, "text/plain; charset=utf-8", "ok".into()),
                "/proxyMode" => Response::new(200, "text/plain; charset=utf-8", metrics.mode()),
                "/status" => Response::new(
                    200,
                    "application/json",
                    serde_json::to_string(&metrics.status()).unwrap_or_default(),
                ),
                _ => Response::new(404, "text/plain", "404 page not found\n".into()),
            }
        }
    })
}

impl rudder_sources::follow::Report for Metrics {
    fn invalid_input(&self, reason: &str) {
        Metrics::invalid_input(self, reason);
    }

    fn set_skipped_input(&self, skipped: Vec<SkippedInput>) {
        Metrics::set_skipped_input(self, skipped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grafana_dashboard_queries_only_exported_metrics() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/prometheus/grafana-dashboard.json"
        );
        let dash: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let m = Metrics::new().unwrap();
        m.init_families(&[IpFamily::V4, IpFamily::V6]);
        let exported = m.render();
        let mut checked = 0;
        for panel in dash["panels"].as_array().unwrap() {
            for t in panel["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if !(word.starts_with("kubeproxy_")
                        || word.starts_with("rudder_")
                        || word.starts_with("process_"))
                    {
                        continue;
                    }
                    let base = word
                        .trim_end_matches("_bucket")
                        .trim_end_matches("_count")
                        .trim_end_matches("_sum");
                    assert!(
                        exported.contains(&format!("# TYPE {base} ")),
                        "dashboard uses {word}, not exported"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked >= 10, "{checked}");
    }

    #[test]
    fn timestamps_and_buckets() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_767_323_045_123), "2026-01-02T03:04:05.123Z");
        let b = programming_buckets();
        assert_eq!(
            (b[0], b[2], b[60], b[61], *b.last().unwrap()),
            (0.25, 1.0, 59.0, 60.0, 300.0)
        );
        let m = Metrics::new().unwrap();
        let text = m.render();
        assert!(
            text.contains("# TYPE kubeproxy_sync_proxy_rules_endpoint_changes_total counter"),
            "{text}"
        );
    }
}
