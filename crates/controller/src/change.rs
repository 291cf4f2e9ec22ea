//! What sources tell the sync loop, already converted to the model.
//!
//! Sources convert Kubernetes objects as they arrive (logging what they skip), so the loop
//! and any buffered list hold only the compact model types, never whole API objects.

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use rudder_model::{EndpointSlice, Node, Rejected, Service, ServiceKey, SliceKey, k8s};
use tracing::{debug, warn};

/// One change reported by a source (the API watchers or the manifest reader).
#[derive(Debug, Clone)]
pub enum Change {
    /// A Service was created or updated.
    ServiceApplied(Box<Service>),
    /// A Service was deleted, or stopped being one Rudder programs.
    ServiceDeleted(ServiceKey),
    /// A complete list of Services (initial list or re-list): anything not in it is gone.
    ServicesListed(Vec<Service>),
    /// An EndpointSlice was created or updated.
    SliceApplied(Box<EndpointSlice>),
    /// An EndpointSlice was deleted, or stopped being usable.
    SliceDeleted(SliceKey),
    /// A complete list of EndpointSlices.
    SlicesListed(Vec<EndpointSlice>),
    /// This node's Node object was created or updated.
    NodeApplied(Box<Node>),
    /// This node's Node object was deleted.
    NodeDeleted,
    /// The cluster's service CIDRs changed (the union of every ServiceCIDR object).
    ServiceCidrs(Vec<rudder_model::Cidr>),
    /// Everything at once (a manifest reload): Services, EndpointSlices and this node's Node.
    Snapshot {
        /// Every Service.
        services: Vec<Service>,
        /// Every EndpointSlice.
        slices: Vec<EndpointSlice>,
        /// This node's Node, if present.
        node: Option<Box<Node>>,
        /// The service CIDRs of every ServiceCIDR object.
        service_cidrs: Vec<rudder_model::Cidr>,
    },
}

/// The CIDRs of a ServiceCIDR object (`spec.cidrs`), without the invalid or refused ones,
/// which are logged and counted (see [`rudder_model::k8s::service_cidr`]).
pub fn service_cidrs(s: &k8s_openapi::api::networking::v1::ServiceCIDR) -> Vec<rudder_model::Cidr> {
    let (cidrs, problems) = k8s::service_cidr(s);
    log_problems(&problems);
    cidrs
}

/// Called for every skipped piece of invalid input (the binary counts them in a metric).
type ProblemHook = Box<dyn Fn(&rudder_model::Problem) + Send + Sync>;

static ON_PROBLEM: std::sync::OnceLock<ProblemHook> = std::sync::OnceLock::new();

/// Registers the function called for every skipped piece of invalid input, after it is
/// logged. Only the first registration counts.
pub fn on_problem(hook: ProblemHook) {
    let _ = ON_PROBLEM.set(hook);
}

/// Logs every problem and passes it to the [`on_problem`] hook (which counts it). For
/// problems found outside the conversions here: the compiler's, the manifest reader's.
pub fn report_problems(problems: &[rudder_model::Problem]) {
    log_problems(problems);
}

fn log_problems(problems: &[rudder_model::Problem]) {
    for p in problems {
        warn!(reason = p.reason.label(), "skipped invalid input: {p}");
        if let Some(hook) = ON_PROBLEM.get() {
            hook(p);
        }
    }
}

/// Converts a Service, logging problems; `None` when it is ignored or invalid.
pub fn service(s: &core::Service) -> Option<Service> {
    match k8s::service(s) {
        Ok((svc, problems)) => {
            log_problems(&problems);
            Some(svc)
        }
        Err(Rejected::Ignored(why)) => {
            debug!(namespace = ?s.metadata.namespace, name = ?s.metadata.name, "ignoring service: {why}");
            None
        }
        Err(Rejected::Invalid(p)) => {
            log_problems(&[p]);
            None
        }
    }
}

/// Converts an EndpointSlice, logging problems; `None` when it is ignored or invalid.
pub fn slice(s: &discovery::EndpointSlice) -> Option<EndpointSlice> {
    match k8s::endpoint_slice(s) {
        Ok((slice, problems)) => {
            log_problems(&problems);
            Some(slice)
        }
        Err(Rejected::Ignored(_)) => None,
        Err(Rejected::Invalid(p)) => {
            log_problems(&[p]);
            None
        }
    }
}

/// Converts a Node, logging problems.
pub fn node(n: &core::Node) -> Node {
    let (node, problems) = k8s::node(n);
    log_problems(&problems);
    node
}

/// The change for a Service that was created or updated. An object that cannot be used
/// (invalid, or now labelled for another proxy) becomes a deletion, so its old rules go.
pub fn service_applied(s: &core::Service) -> Option<Change> {
    match service(s) {
        Some(svc) => Some(Change::ServiceApplied(Box::new(svc))),
        None => service_key(s).map(Change::ServiceDeleted),
    }
}

/// The change for a deleted Service.
pub fn service_deleted(s: &core::Service) -> Option<Change> {
    service_key(s).map(Change::ServiceDeleted)
}

/// The change for an EndpointSlice that was created or updated (or became unusable).
pub fn slice_applied(s: &discovery::EndpointSlice) -> Option<Change> {
    match slice(s) {
        Some(sl) => Some(Change::SliceApplied(Box::new(sl))),
        None => slice_key(s).map(Change::SliceDeleted),
    }
}

/// The change for a deleted EndpointSlice.
pub fn slice_deleted(s: &discovery::EndpointSlice) -> Option<Change> {
    slice_key(s).map(Change::SliceDeleted)
}

fn service_key(s: &core::Service) -> Option<ServiceKey> {
    match (&s.metadata.namespace, &s.metadata.name) {
        (Some(ns), Some(n)) => Some(ServiceKey::new(ns, n)),
        _ => None,
    }
}

fn slice_key(s: &discovery::EndpointSlice) -> Option<SliceKey> {
    match (&s.metadata.namespace, &s.metadata.name) {
        (Some(ns), Some(n)) => Some(SliceKey {
            namespace: ns.clone(),
            name: n.clone(),
        }),
        _ => None,
    }
}
