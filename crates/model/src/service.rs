//! Services: keys, ports, types, traffic policies.

use super::*;

/// Namespace and name of a Service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ServiceKey {
    /// The key `namespace/name`.
    pub fn new(namespace: &str, name: &str) -> ServiceKey {
        ServiceKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Identity of one port of one Service: `namespace/name:port` plus protocol.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    /// The service.
    pub service: ServiceKey,
    /// The port's name (empty for a single unnamed port).
    pub port: String,
    /// The port's protocol.
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port.is_empty() {
            write!(f, "{}/{}", self.service, self.protocol)
        } else {
            write!(f, "{}:{}/{}", self.service, self.port, self.protocol)
        }
    }
}

/// `spec.type` of the Services Rudder programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceType {
    /// `ClusterIP`.
    ClusterIp,
    /// `NodePort`.
    NodePort,
    /// `LoadBalancer`.
    LoadBalancer,
}

/// `externalTrafficPolicy` / `internalTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum TrafficPolicy {
    /// Use endpoints on every node.
    #[default]
    Cluster,
    /// Use only endpoints on this node.
    Local,
}

/// The target of a service port, as written in the Service (informational: endpoints carry
/// the resolved port numbers).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// A named container port.
    Name(String),
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePort {
    /// Port name (may be empty).
    pub name: String,
    /// Protocol.
    pub protocol: Protocol,
    /// The service port.
    pub port: u16,
    /// The node port, for NodePort and LoadBalancer services.
    pub node_port: Option<u16>,
    /// The target port.
    pub target_port: Option<TargetPort>,
}

impl ServicePort {
    /// A port without node port or target port.
    pub fn new(name: &str, protocol: Protocol, port: u16) -> ServicePort {
        ServicePort {
            name: name.to_owned(),
            protocol,
            port,
            node_port: None,
            target_port: None,
        }
    }
}

/// A Service, normalized: only what a node proxy uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Namespace and name.
    pub key: ServiceKey,
    /// Type.
    pub service_type: ServiceType,
    /// ClusterIPs, at most one per family.
    pub cluster_ips: Vec<IpAddr>,
    /// External IPs.
    pub external_ips: Vec<IpAddr>,
    /// LoadBalancer ingress IPs in VIP mode (`ipMode: Proxy` entries are left out).
    pub load_balancer_ips: Vec<IpAddr>,
    /// `loadBalancerSourceRanges`; empty means no filtering.
    pub load_balancer_source_ranges: Vec<Cidr>,
    /// `externalTrafficPolicy`.
    pub external_traffic_policy: TrafficPolicy,
    /// `internalTrafficPolicy`.
    pub internal_traffic_policy: TrafficPolicy,
    /// `healthCheckNodePort` (LoadBalancer with `externalTrafficPolicy: Local`).
    pub health_check_node_port: Option<u16>,
    /// ClientIP session affinity timeout in seconds, if affinity is on.
    pub session_affinity_timeout: Option<u32>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// `metadata.creationTimestamp`, in whole seconds since the Unix epoch (`None` when absent,
    /// as in most manifest files). Decides which of two services claiming the same frontend
    /// keeps it: the older one (see `docs/semantics.md`).
    pub creation_timestamp: Option<i64>,
}

impl Service {
    /// A `ClusterIP` service with the given ClusterIPs, `Cluster` traffic policies, no
    /// external addresses, no affinity and no ports (fill in the fields you need).
    pub fn new(key: ServiceKey, cluster_ips: Vec<IpAddr>) -> Service {
        Service {
            key,
            service_type: ServiceType::ClusterIp,
            cluster_ips,
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            load_balancer_source_ranges: Vec::new(),
            external_traffic_policy: TrafficPolicy::Cluster,
            internal_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: None,
            session_affinity_timeout: None,
            ports: Vec::new(),
            creation_timestamp: None,
        }
    }

    /// The ClusterIP of a family, if the service has one.
    pub fn cluster_ip(&self, family: IpFamily) -> Option<IpAddr> {
        self.cluster_ips
            .iter()
            .copied()
            .find(|ip| IpFamily::of(ip) == family)
    }

    /// The identity of one of this service's ports.
    pub fn port_name(&self, port: &ServicePort) -> ServicePortName {
        ServicePortName {
            service: self.key.clone(),
            port: port.name.clone(),
            protocol: port.protocol,
        }
    }

    /// Whether traffic from outside the cluster can reach the service (external IPs, load
    /// balancer IPs or node ports).
    pub fn externally_accessible(&self) -> bool {
        !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
            || self.ports.iter().any(|p| p.node_port.is_some())
    }
}
