//! What sources tell the sync loop, already converted to the model, and where skipped
//! input is reported.
//!
//! Sources (`rudder-sources`) convert Kubernetes objects as they arrive (logging what they
//! skip), so the loop and any buffered list hold only the compact model types, never whole
//! API objects.

use rudder_model::{EndpointSlice, Node, Service, ServiceKey, SliceKey};
use tracing::warn;

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
    ServiceCidrs(Vec<rudder_model::NamedCidr>),
    /// Everything at once (a manifest reload): Services, EndpointSlices and this node's Node.
    Snapshot {
        /// Every Service.
        services: Vec<Service>,
        /// Every EndpointSlice.
        slices: Vec<EndpointSlice>,
        /// This node's Node, if present.
        node: Option<Box<Node>>,
        /// The service CIDRs of every ServiceCIDR object.
        service_cidrs: Vec<rudder_model::NamedCidr>,
    },
}

/// Called for every skipped piece of invalid input (the binary counts them in a metric).
type ProblemHook = Box<dyn Fn(&rudder_model::Problem) + Send + Sync>;

static ON_PROBLEM: std::sync::OnceLock<ProblemHook> = std::sync::OnceLock::new();

/// Registers the function called for every skipped piece of invalid input, after it is
/// logged. Only the first registration counts.
pub fn on_problem(hook: ProblemHook) {
    let _ = ON_PROBLEM.set(hook);
}

/// Logs every problem and passes it to the [`on_problem`] hook (which counts it, and in API
/// mode records an Event): the sources' conversions, the compiler's refusals, the kernel's.
pub fn report_problems(problems: &[rudder_model::Problem]) {
    for p in problems {
        warn!(reason = p.reason.label(), "skipped invalid input: {p}");
        if let Some(hook) = ON_PROBLEM.get() {
            hook(p);
        }
    }
}
