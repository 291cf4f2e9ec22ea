//! Rudder's normalized view of the cluster: what a node proxy needs to know, and nothing else.
//!
//! This crate owns the domain types ([`Service`], [`ServicePort`], [`EndpointSlice`],
//! [`Endpoint`], [`Node`]), their construction from the Kubernetes API types of
//! `k8s-openapi` (module [`k8s`]), and [`ProxyState`]: the current Services and
//! EndpointSlices, with change tracking that records which services an update touched.
//!
//! Invalid input never panics and never poisons unrelated objects: a bad field is dropped
//! (or the object skipped) with a typed [`Problem`] that callers log and count; objects a node
//! proxy must ignore (headless, ExternalName, other proxies' services, FQDN slices) are reported
//! as [`Ignored`].
//!
//! What it must not do: I/O of any kind, talk to the API server, or know about nftables.
//!
//! ```
//! use rudder_model::{k8s, ProxyState};
//! let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
//!     "metadata": {"namespace": "default", "name": "web"},
//!     "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "protocol": "TCP"}]}
//! })).unwrap();
//! let (service, problems) = k8s::service(&svc).unwrap();
//! assert!(problems.is_empty());
//! let mut state = ProxyState::new();
//! assert!(state.upsert_service(service));
//! assert_eq!(state.take_dirty().len(), 1);
//! ```

#![deny(missing_docs)]

mod cidr;
mod endpoint;
pub mod k8s;
mod problem;
mod service;
mod special;
mod state;

use std::fmt;
use std::net::IpAddr;

pub use cidr::{Cidr, CidrError, NonStandardIp, StrictError, parse_ip, parse_ip_strict};
pub use endpoint::{Endpoint, EndpointPort, EndpointSlice, SliceKey};
pub use problem::{
    AddressField, ConflictRule, Frontend, FrontendKind, Ignored, NonStandardValue, ObjectKind,
    Problem, Reason, Rejected,
};
pub use service::{
    Service, ServiceKey, ServicePort, ServicePortName, ServiceType, TargetPort, TrafficPolicy,
};
pub use special::{SpecialIp, escape_controls, is_unsafe_char, push_escaped, service_cidr_refusal};
pub use state::{ProxyState, ResolvedEndpoint};

/// A prefix of a ServiceCIDR object, with the object's name: what the compiler later refuses
/// of the prefix (it covers the node, or the pod network) is reported on the object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedCidr {
    /// The prefix.
    pub cidr: Cidr,
    /// The ServiceCIDR object it comes from.
    pub object: String,
}

/// Label that names the service an EndpointSlice belongs to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Label that hands a service to another proxy; services that carry it are ignored.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Label set on EndpointSlices of headless services.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// The node label that holds the node's zone.
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// EndpointSlice annotation with the time of the change that caused the last update.
pub const ANNOTATION_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// Most endpoints one EndpointSlice may hold (the API server's own limit).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 1000;
/// Default ClientIP session affinity timeout, in seconds (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECS: u32 = 10800;
/// Longest ClientIP session affinity timeout the API server accepts, in seconds (1 day,
/// `MaxClientIPServiceAffinitySeconds`).
pub const MAX_AFFINITY_TIMEOUT_SECS: u32 = 86400;
/// Shortest IPv4 ServiceCIDR prefix Rudder programs: anything broader is refused (see
/// docs/semantics.md).
pub const MIN_SERVICE_CIDR_PREFIX_V4: u8 = 8;
/// Shortest IPv6 ServiceCIDR prefix Rudder programs.
pub const MIN_SERVICE_CIDR_PREFIX_V6: u8 = 64;
/// The `reason` label of input that could not be read as an object at all (a field of the
/// wrong type, a document without `kind`).
pub const MALFORMED_DOCUMENT: &str = "malformed_document";

/// An IP family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    /// The family of an address.
    pub fn of(addr: &IpAddr) -> IpFamily {
        if addr.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

/// A transport protocol a Service port can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// Parses the Kubernetes spelling (`TCP`, `UDP`, `SCTP`); an absent protocol means TCP.
    pub fn parse(s: Option<&str>) -> Option<Protocol> {
        match s {
            None | Some("TCP") => Some(Protocol::Tcp),
            Some("UDP") => Some(Protocol::Udp),
            Some("SCTP") => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// Lower-case name, as in `tcp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The node Rudder runs on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    /// Node name.
    pub name: String,
    /// Primary addresses: the first InternalIP of each family, or else the first ExternalIP.
    pub addresses: Vec<IpAddr>,
    /// `topology.kubernetes.io/zone` label.
    pub zone: Option<String>,
    /// `spec.podCIDRs`.
    pub pod_cidrs: Vec<Cidr>,
    /// The Node is being deleted (`metadata.deletionTimestamp` is set).
    pub deleting: bool,
    /// The Node has the `ToBeDeletedByClusterAutoscaler` taint.
    pub to_be_deleted: bool,
}

impl Node {
    /// The primary address of a family.
    pub fn address(&self, family: IpFamily) -> Option<IpAddr> {
        self.addresses
            .iter()
            .copied()
            .find(|a| IpFamily::of(a) == family)
    }
}

/// A UDP conntrack flow: where its first packet went, and where replies come from (after
/// DNAT, the endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UdpFlow {
    /// Source of the original direction.
    pub orig_src: std::net::SocketAddr,
    /// Destination of the original direction (a service frontend, for proxied flows).
    pub orig_dst: std::net::SocketAddr,
    /// Source of the reply direction (the endpoint, for DNATed flows).
    pub reply_src: std::net::SocketAddr,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_protocols_read_and_print_as_kubernetes_writes_them() {
        assert_eq!(IpFamily::V4.to_string(), "IPv4");
        assert_eq!(IpFamily::V6.to_string(), "IPv6");
        assert_eq!(Protocol::parse(None), Some(Protocol::Tcp));
        assert_eq!(Protocol::parse(Some("TCP")), Some(Protocol::Tcp));
        assert_eq!(Protocol::parse(Some("UDP")), Some(Protocol::Udp));
        assert_eq!(Protocol::parse(Some("SCTP")), Some(Protocol::Sctp));
        assert_eq!(Protocol::parse(Some("tcp")), None);
        assert_eq!(Protocol::Sctp.to_string(), "sctp");
    }

    #[test]
    fn a_nodes_address_is_the_first_of_its_family() {
        let node = Node {
            addresses: vec![
                "fd00::2".parse().unwrap(),
                "172.18.0.2".parse().unwrap(),
                "172.18.0.3".parse().unwrap(),
            ],
            ..Node::default()
        };
        assert_eq!(
            node.address(IpFamily::V4),
            Some("172.18.0.2".parse().unwrap())
        );
        assert_eq!(node.address(IpFamily::V6), Some("fd00::2".parse().unwrap()));
        assert_eq!(Node::default().address(IpFamily::V4), None);
    }
}
