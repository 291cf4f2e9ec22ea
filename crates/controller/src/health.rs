//! What the health-check node port servers report, as published by the sync loop.
//!
//! kube-proxy serves, for every `type: LoadBalancer` service with `externalTrafficPolicy:
//! Local`, an HTTP endpoint on `spec.healthCheckNodePort` that load balancers probe: 200 with
//! the number of local ready endpoints when there are any (and the proxy is healthy), 503
//! otherwise. The sync loop computes the set of such services after every successful sync;
//! the binary runs the servers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rudder_model::{ProxyState, ServiceKey, ServiceType, TrafficPolicy};

/// The health-check servers that should run: node port → service and local endpoint count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceHealth {
    /// By health-check node port.
    pub ports: BTreeMap<u16, (ServiceKey, usize)>,
    /// Addresses to listen on (the node-port addresses); empty means every address.
    pub addresses: Vec<IpAddr>,
}

impl ServiceHealth {
    /// Computes it from the state for the node `node_name`: local ready endpoints are counted
    /// as distinct addresses over all of the service's slices (kube-proxy's rule; a node with
    /// only terminating endpoints reports 0).
    /// Services for which `refused` is true (the compiler refused them as a whole) get no
    /// server.
    pub fn compute(
        state: &ProxyState,
        node_name: &str,
        addresses: Vec<IpAddr>,
        refused: impl Fn(&rudder_model::Service) -> bool,
    ) -> ServiceHealth {
        let mut ports = BTreeMap::new();
        for svc in state.services().filter(|s| !refused(s)) {
            let Some(port) = svc.health_check_node_port else {
                continue;
            };
            if svc.service_type != ServiceType::LoadBalancer
                || svc.external_traffic_policy != TrafficPolicy::Local
            {
                continue;
            }
            let local: BTreeSet<IpAddr> = state
                .slices_for(&svc.key)
                .flat_map(|s| &s.endpoints)
                .filter(|e| e.ready && e.node_name.as_deref() == Some(node_name))
                .map(|e| e.address)
                .collect();
            // Two services claiming one port: the first in key order keeps it, as a
            // second listener on the same port could not start anyway.
            ports.entry(port).or_insert((svc.key.clone(), local.len()));
        }
        ServiceHealth { ports, addresses }
    }
}

/// The proxy's own health, shared between the sync loop and the HTTP servers: unhealthy when
/// a change has waited longer than the timeout (2 × `syncPeriod`) without a successful sync.
#[derive(Debug)]
pub struct ProxyHealth {
    /// Milliseconds since the epoch of the oldest change not yet programmed (0: none).
    queued_ms: AtomicU64,
    /// Milliseconds since the epoch of the last successful sync (0: never).
    updated_ms: AtomicU64,
    /// Whether the Node is eligible for traffic (seen, not being deleted, not tainted
    /// `ToBeDeletedByClusterAutoscaler`).
    node_eligible: std::sync::atomic::AtomicBool,
    /// Whether one of Rudder's tables is known to be missing (deleted behind its back) and
    /// not repaired yet.
    tables_missing: std::sync::atomic::AtomicBool,
    timeout: Duration,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl ProxyHealth {
    /// A tracker with the given timeout.
    pub fn new(timeout: Duration) -> Arc<ProxyHealth> {
        Arc::new(ProxyHealth {
            queued_ms: AtomicU64::new(0),
            updated_ms: AtomicU64::new(0),
            node_eligible: std::sync::atomic::AtomicBool::new(false),
            tables_missing: std::sync::atomic::AtomicBool::new(false),
            timeout,
        })
    }

    /// Records that a change is waiting to be programmed (keeps the oldest).
    pub fn queued(&self) {
        let _ = self
            .queued_ms
            .compare_exchange(0, now_ms(), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Records a successful sync: nothing is waiting any more.
    pub fn updated(&self) {
        self.updated_ms.store(now_ms(), Ordering::Relaxed);
        self.queued_ms.store(0, Ordering::Relaxed);
    }

    /// Whether the proxy is healthy now: no change has waited longer than the timeout, and
    /// none of Rudder's tables is known to be missing.
    pub fn healthy(&self) -> bool {
        let q = self.queued_ms.load(Ordering::Relaxed);
        !self.tables_missing()
            && (q == 0 || now_ms().saturating_sub(q) < self.timeout.as_millis() as u64)
    }

    /// Records whether one of Rudder's tables is known to be missing: set when the change
    /// monitor sees one deleted, cleared by the full sync that creates it again.
    pub fn set_tables_missing(&self, missing: bool) {
        self.tables_missing.store(missing, Ordering::Relaxed);
    }

    /// Whether one of Rudder's tables is known to be missing and not repaired yet.
    pub fn tables_missing(&self) -> bool {
        self.tables_missing.load(Ordering::Relaxed)
    }

    /// Records whether the Node is eligible (see [`ProxyHealth::node_eligible`]).
    pub fn set_node_eligible(&self, eligible: bool) {
        self.node_eligible.store(eligible, Ordering::Relaxed);
    }

    /// Whether the Node has been seen and is neither being deleted nor tainted for deletion
    /// by the cluster autoscaler (kube-proxy's `/healthz` rule).
    pub fn node_eligible(&self) -> bool {
        self.node_eligible.load(Ordering::Relaxed)
    }

    /// The time since which a change has been waiting, in milliseconds since the epoch
    /// (0: nothing waiting).
    pub fn queued_since_ms(&self) -> u64 {
        self.queued_ms.load(Ordering::Relaxed)
    }

    /// Time of the last successful sync, in milliseconds since the epoch (0: never).
    pub fn last_updated_ms(&self) -> u64 {
        self.updated_ms.load(Ordering::Relaxed)
    }
}
