//! EndpointSlices and their endpoints.

use super::*;

/// Namespace and name of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SliceKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for SliceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A port of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointPort {
    /// Name; matches the service port's name.
    pub name: String,
    /// Protocol.
    pub protocol: Protocol,
    /// The endpoints' port number.
    pub port: u16,
}

/// One endpoint of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// The endpoint's address (`addresses[0]`).
    pub address: IpAddr,
    /// `conditions.ready` (absent means true).
    pub ready: bool,
    /// `conditions.serving` (absent means true).
    pub serving: bool,
    /// `conditions.terminating` (absent means false).
    pub terminating: bool,
    /// `nodeName`.
    pub node_name: Option<String>,
    /// `zone`.
    pub zone: Option<String>,
    /// `hints.forZones`, if present.
    pub zone_hints: Option<Vec<String>>,
    /// `hints.forNodes`, if present.
    pub node_hints: Option<Vec<String>>,
}

impl Endpoint {
    /// A ready, serving, non-terminating endpoint without node, zone or hints.
    pub fn new(address: IpAddr) -> Endpoint {
        Endpoint {
            address,
            ready: true,
            serving: true,
            terminating: false,
            node_name: None,
            zone: None,
            zone_hints: None,
            node_hints: None,
        }
    }

    /// The same endpoint on the given node.
    pub fn on_node(mut self, node: &str) -> Endpoint {
        self.node_name = Some(node.to_owned());
        self
    }
}

/// An EndpointSlice, normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSlice {
    /// Namespace and name.
    pub key: SliceKey,
    /// The service it belongs to (from the `kubernetes.io/service-name` label).
    pub service: ServiceKey,
    /// Address family.
    pub family: IpFamily,
    /// Ports.
    pub ports: Vec<EndpointPort>,
    /// Endpoints with a valid address of the slice's family.
    pub endpoints: Vec<Endpoint>,
    /// The `endpoints.kubernetes.io/last-change-trigger-time` annotation, verbatim.
    pub trigger_time: Option<String>,
}

impl EndpointSlice {
    /// A slice `namespace/name` of `service` (in the same namespace) with the given ports and
    /// endpoints.
    pub fn new(
        namespace: &str,
        name: &str,
        service: &str,
        family: IpFamily,
        ports: Vec<EndpointPort>,
        endpoints: Vec<Endpoint>,
    ) -> EndpointSlice {
        EndpointSlice {
            key: SliceKey {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            },
            service: ServiceKey::new(namespace, service),
            family,
            ports,
            endpoints,
            trigger_time: None,
        }
    }
}
