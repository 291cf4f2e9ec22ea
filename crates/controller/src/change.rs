//! What sources tell the sync loop.

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// One change reported by a source (the API watchers or the manifest reader).
#[derive(Debug, Clone)]
pub enum Change {
    /// A Service was created or updated.
    ServiceApplied(Box<Service>),
    /// A Service was deleted.
    ServiceDeleted(Box<Service>),
    /// A complete list of Services (initial list or re-list): anything not in it is gone.
    ServicesListed(Vec<Service>),
    /// An EndpointSlice was created or updated.
    SliceApplied(Box<EndpointSlice>),
    /// An EndpointSlice was deleted.
    SliceDeleted(Box<EndpointSlice>),
    /// A complete list of EndpointSlices.
    SlicesListed(Vec<EndpointSlice>),
    /// This node's Node object was created or updated.
    NodeApplied(Box<Node>),
    /// This node's Node object was deleted.
    NodeDeleted,
    /// Everything at once (a manifest reload): Services, EndpointSlices and this node's Node.
    Snapshot {
        /// Every Service.
        services: Vec<Service>,
        /// Every EndpointSlice.
        slices: Vec<EndpointSlice>,
        /// This node's Node, if present.
        node: Option<Box<Node>>,
    },
}
