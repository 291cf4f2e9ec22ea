//! What goes wrong with input: [`Problem`]s and their [`Reason`]s, the objects and fields
//! they concern, and why an object is [`Ignored`] or [`Rejected`].

use super::*;

/// Which kind of object a [`Problem`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    /// A Service.
    Service,
    /// An EndpointSlice.
    EndpointSlice,
    /// A Node.
    Node,
    /// A ServiceCIDR (`networking.k8s.io/v1`).
    ServiceCidr,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Service => "Service",
            ObjectKind::EndpointSlice => "EndpointSlice",
            ObjectKind::Node => "Node",
            ObjectKind::ServiceCidr => "ServiceCIDR",
        })
    }
}

/// Which address field of a Service a [`Reason`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddressField {
    /// `spec.clusterIP` / `spec.clusterIPs`.
    ClusterIp,
    /// `spec.externalIPs`.
    ExternalIp,
    /// `status.loadBalancer.ingress[].ip`.
    IngressIp,
}

impl fmt::Display for AddressField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressField::ClusterIp => "clusterIP",
            AddressField::ExternalIp => "externalIP",
            AddressField::IngressIp => "load balancer ingress IP",
        })
    }
}

/// The kinds of frontend a service port has, in their order of precedence when two service
/// ports claim the same one: a ClusterIP (allocated by the API server) before a load balancer
/// ingress IP (written by a controller into the status), before an external IP (written by
/// whoever may edit the Service). Node ports only meet other node ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    /// The ClusterIP of the port's family.
    ClusterIp,
    /// A load balancer ingress IP.
    IngressIp,
    /// An external IP.
    ExternalIp,
    /// The node port.
    NodePort,
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrontendKind::ClusterIp => "clusterIP",
            FrontendKind::IngressIp => "load balancer ingress IP",
            FrontendKind::ExternalIp => "externalIP",
            FrontendKind::NodePort => "nodePort",
        })
    }
}

/// Where the traffic of a service port arrives: an address with protocol and port, or a node
/// port (on every node-port address, without an address of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    /// The address (`None` for a node port).
    pub address: Option<IpAddr>,
    /// The protocol.
    pub protocol: Protocol,
    /// The port (the node port for a node port).
    pub port: u16,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            Some(IpAddr::V4(a)) => write!(f, "{a}:{}/{}", self.port, self.protocol),
            Some(IpAddr::V6(a)) => write!(f, "[{a}]:{}/{}", self.port, self.protocol),
            None => write!(f, "{}/{}", self.port, self.protocol),
        }
    }
}

/// Which rule decided a [`Reason::FrontendConflict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConflictRule {
    /// The winner's kind of frontend takes precedence ([`FrontendKind`]'s order).
    Precedence,
    /// Same kind: the winner's Service is older (`metadata.creationTimestamp`; a Service
    /// without one counts as newer than any with one).
    Older,
    /// Same kind and creation time (or neither has one): the winner comes first by namespace,
    /// name, then port name.
    Order,
}

impl fmt::Display for ConflictRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConflictRule::Precedence => {
                "a clusterIP comes before load balancer IPs, and those before externalIPs"
            }
            ConflictRule::Older => "its Service is older",
            ConflictRule::Order => "same creation time, it comes first by namespace/name/port",
        })
    }
}

/// Why (part of) an object was skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Reason {
    /// The object has no name or namespace.
    #[error("object has no name or namespace")]
    MissingName,
    /// A ClusterIP does not parse.
    #[error("invalid clusterIP {0:?}")]
    InvalidClusterIp(String),
    /// An external IP does not parse.
    #[error("invalid externalIP {0:?}")]
    InvalidExternalIp(String),
    /// A load balancer ingress IP does not parse.
    #[error("invalid load balancer ingress IP {0:?}")]
    InvalidIngressIp(String),
    /// A `loadBalancerSourceRanges` entry does not parse.
    #[error("invalid loadBalancerSourceRanges entry {0:?}")]
    InvalidSourceRange(String),
    /// A port number is outside 1–65535.
    #[error("port {name:?}: invalid port number {value}")]
    InvalidPort {
        /// Port name.
        name: String,
        /// The value found.
        value: i64,
    },
    /// A node port is outside 1–65535.
    #[error("port {name:?}: invalid nodePort {value}")]
    InvalidNodePort {
        /// Port name.
        name: String,
        /// The value found.
        value: i64,
    },
    /// The health check node port is outside 1–65535.
    #[error("invalid healthCheckNodePort {0}")]
    InvalidHealthCheckNodePort(i64),
    /// A protocol other than TCP, UDP or SCTP.
    #[error("port {name:?}: unknown protocol {protocol:?}")]
    UnknownProtocol {
        /// Port name.
        name: String,
        /// The protocol found.
        protocol: String,
    },
    /// Two ports with the same name and protocol.
    #[error("duplicate port {0:?}")]
    DuplicatePort(String),
    /// An EndpointSlice without the `kubernetes.io/service-name` label.
    #[error("EndpointSlice has no kubernetes.io/service-name label")]
    MissingServiceNameLabel,
    /// An address type other than IPv4, IPv6 or FQDN.
    #[error("unknown addressType {0:?}")]
    UnknownAddressType(String),
    /// An endpoint address that does not parse.
    #[error("invalid endpoint address {0:?}")]
    InvalidAddress(String),
    /// An endpoint address of the other family than the slice's addressType.
    #[error("endpoint address {address} does not match addressType {family}")]
    AddressFamilyMismatch {
        /// The address.
        address: String,
        /// The slice's family.
        family: IpFamily,
    },
    /// An endpoint without addresses.
    #[error("endpoint without addresses")]
    NoAddress,
    /// More endpoints than one slice may hold.
    #[error("{0} endpoints in one slice, the limit is {MAX_ENDPOINTS_PER_SLICE}")]
    TooManyEndpoints(usize),
    /// A node address or pod CIDR that does not parse.
    #[error("invalid node address or podCIDR {0:?}")]
    InvalidNodeAddress(String),
    /// A service address in a range that must never be programmed (loopback, link-local,
    /// multicast, ...). A refused ClusterIP refuses the whole service.
    #[error("{field} {address} is {kind}: refused")]
    SpecialAddress {
        /// Which field.
        field: AddressField,
        /// The address.
        address: IpAddr,
        /// Which range.
        kind: SpecialIp,
    },
    /// A service address that is one of this node's own addresses (checked when compiling,
    /// against the node IPs and node-port addresses). A ClusterIP refuses the whole service;
    /// an external or load balancer IP only that frontend.
    #[error("{field} {address} is an address of this node: refused")]
    NodeAddress {
        /// Which field.
        field: AddressField,
        /// The address.
        address: IpAddr,
    },
    /// `sessionAffinityConfig.clientIP.timeoutSeconds` outside 1–86400 (the API server
    /// refuses it); the default is used instead.
    #[error(
        "sessionAffinityConfig.clientIP.timeoutSeconds {0} is outside 1-{MAX_AFFINITY_TIMEOUT_SECS}: using the default {DEFAULT_AFFINITY_TIMEOUT_SECS}"
    )]
    InvalidAffinityTimeout(i64),
    /// A ServiceCIDR entry that does not parse.
    #[error("invalid ServiceCIDR entry {0:?}")]
    InvalidServiceCidr(String),
    /// A ServiceCIDR broader than Rudder programs (`/0`, a default route).
    #[error("{cidr} is broader than /{min}: refused")]
    ServiceCidrTooBroad {
        /// The prefix.
        cidr: Cidr,
        /// The shortest prefix accepted for its family.
        min: u8,
    },
    /// A ServiceCIDR that overlaps a special range (its drop rule would catch loopback,
    /// link-local or multicast traffic).
    #[error("{cidr} overlaps the {kind} range: refused")]
    ServiceCidrSpecial {
        /// The prefix.
        cidr: Cidr,
        /// The range.
        kind: SpecialIp,
    },
    /// A ServiceCIDR that contains one of this node's addresses.
    #[error("{cidr} contains this node's address {address}: refused")]
    ServiceCidrCoversNode {
        /// The prefix.
        cidr: Cidr,
        /// The node address.
        address: IpAddr,
    },
    /// A ServiceCIDR that overlaps the pod network (`--cluster-cidr`, or the Node's
    /// podCIDRs).
    #[error("{cidr} overlaps the pod network {pods}: refused")]
    ServiceCidrOverlapsPods {
        /// The prefix.
        cidr: Cidr,
        /// The pod network prefix.
        pods: Cidr,
    },
    /// An IP address or CIDR in a form the API server's strict IP validation refuses
    /// (KEP-4858: IPv4 with leading zeros, IPv4-mapped IPv6); the value is not used, as if it
    /// were invalid.
    #[error("{0}")]
    NonStandardIp(Box<NonStandardValue>),
    /// The input could not be read as an object at all (a field of the wrong type).
    #[error("malformed object: {0}")]
    Malformed(String),
    /// Another object with the same kind and name came later in the input; the later one is
    /// used.
    #[error("duplicate object: a later one with the same name is used")]
    Duplicate,
    /// Another service port claims the same frontend and keeps it (checked when compiling):
    /// this port loses that frontend entirely (every set and map element keyed by it), and
    /// takes it over when the winner goes away.
    #[error(
        "port {port:?}: {kind} {frontend} is also the {winner_kind} of {winner}, which keeps it ({rule}): not programmed for this service"
    )]
    FrontendConflict {
        /// The losing port's name.
        port: String,
        /// What the frontend is to the losing port.
        kind: FrontendKind,
        /// The frontend.
        frontend: Frontend,
        /// The service port that keeps it (boxed: it would make every `Reason` large).
        winner: Box<ServicePortName>,
        /// What the frontend is to the winner.
        winner_kind: FrontendKind,
        /// Why the winner keeps it.
        rule: ConflictRule,
    },
    /// The kernel objects of this port (session affinity chains and sets, named by a hash of
    /// the port's identity) would have the same names as another port's, which keeps them
    /// (checked when compiling; with a 128-bit hash this does not happen by chance): the port
    /// is not programmed at all.
    #[error(
        "port {port:?}: its session affinity objects would have the same names as those of {winner}, which keeps them: the port is not programmed"
    )]
    ObjectNameCollision {
        /// The refused port's name.
        port: String,
        /// The service port that keeps the names (boxed: it would make every `Reason` large).
        winner: Box<ServicePortName>,
    },
    /// The kernel refused the service's rules (the transaction that holds them fails while
    /// everything else applies): the service is held back and tried again later. The text is
    /// the kernel's error, naming the refused operation.
    #[error("the kernel refused its rules, held back and retried later: {0}")]
    KernelRefused(String),
}

/// A value of [`Reason::NonStandardIp`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{field} {value:?} is {form}, which the API server's strict IP validation refuses: use {canonical:?}"
)]
pub struct NonStandardValue {
    /// Which field.
    pub field: &'static str,
    /// The value as written.
    pub value: String,
    /// Its form.
    pub form: NonStandardIp,
    /// What to write instead.
    pub canonical: String,
}

impl Reason {
    /// The ServiceCIDR prefix a ServiceCIDR refusal is about.
    pub fn service_cidr(&self) -> Option<Cidr> {
        match self {
            Reason::ServiceCidrTooBroad { cidr, .. }
            | Reason::ServiceCidrSpecial { cidr, .. }
            | Reason::ServiceCidrCoversNode { cidr, .. }
            | Reason::ServiceCidrOverlapsPods { cidr, .. } => Some(*cidr),
            _ => None,
        }
    }

    /// A short, stable label for metrics (`invalid_port`, `unknown_protocol`, ...).
    pub fn label(&self) -> &'static str {
        match self {
            Reason::MissingName => "missing_name",
            Reason::InvalidClusterIp(_) => "invalid_cluster_ip",
            Reason::InvalidExternalIp(_) => "invalid_external_ip",
            Reason::InvalidIngressIp(_) => "invalid_ingress_ip",
            Reason::InvalidSourceRange(_) => "invalid_source_range",
            Reason::InvalidPort { .. } => "invalid_port",
            Reason::InvalidNodePort { .. } => "invalid_node_port",
            Reason::InvalidHealthCheckNodePort(_) => "invalid_health_check_node_port",
            Reason::UnknownProtocol { .. } => "unknown_protocol",
            Reason::DuplicatePort(_) => "duplicate_port",
            Reason::MissingServiceNameLabel => "missing_service_name_label",
            Reason::UnknownAddressType(_) => "unknown_address_type",
            Reason::InvalidAddress(_) => "invalid_address",
            Reason::AddressFamilyMismatch { .. } => "address_family_mismatch",
            Reason::NoAddress => "no_address",
            Reason::TooManyEndpoints(_) => "too_many_endpoints",
            Reason::InvalidNodeAddress(_) => "invalid_node_address",
            Reason::SpecialAddress { field, .. } => match field {
                AddressField::ClusterIp => "special_cluster_ip",
                AddressField::ExternalIp => "special_external_ip",
                AddressField::IngressIp => "special_ingress_ip",
            },
            Reason::NodeAddress { field, .. } => match field {
                AddressField::ClusterIp => "cluster_ip_is_node_ip",
                AddressField::ExternalIp => "external_ip_is_node_ip",
                AddressField::IngressIp => "ingress_ip_is_node_ip",
            },
            Reason::InvalidAffinityTimeout(_) => "invalid_affinity_timeout",
            Reason::InvalidServiceCidr(_) => "invalid_service_cidr",
            Reason::ServiceCidrTooBroad { .. } => "service_cidr_too_broad",
            Reason::ServiceCidrSpecial { .. } => "service_cidr_special",
            Reason::ServiceCidrCoversNode { .. } => "service_cidr_covers_node",
            Reason::ServiceCidrOverlapsPods { .. } => "service_cidr_overlaps_pod_network",
            Reason::NonStandardIp(_) => "non_standard_ip",
            Reason::Malformed(_) => MALFORMED_DOCUMENT,
            Reason::Duplicate => "duplicate_object",
            Reason::FrontendConflict { .. } => "frontend_conflict",
            Reason::ObjectNameCollision { .. } => "object_name_collision",
            Reason::KernelRefused(_) => "kernel_refused",
        }
    }
}

/// A problem with one object: what was skipped and why. Displayed as
/// `Kind namespace/name: reason`, `Kind name: reason` for cluster-scoped objects, and
/// `Kind: reason` when the object's name is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Kind of object.
    pub kind: ObjectKind,
    /// Its namespace (empty for nodes).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// What is wrong.
    pub reason: Reason,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.namespace.is_empty(), self.name.is_empty()) {
            (true, true) => write!(f, "{}: {}", self.kind, self.reason),
            (true, false) => write!(f, "{} {}: {}", self.kind, self.name, self.reason),
            (false, _) => write!(
                f,
                "{} {}/{}: {}",
                self.kind, self.namespace, self.name, self.reason
            ),
        }
    }
}

impl std::error::Error for Problem {}

/// Why an object is deliberately not programmed. These are not errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Ignored {
    /// `clusterIP: None`.
    #[error("headless service")]
    Headless,
    /// `type: ExternalName`.
    #[error("ExternalName service")]
    ExternalName,
    /// No ClusterIP was allocated.
    #[error("service has no clusterIP")]
    NoClusterIp,
    /// Labelled `service.kubernetes.io/service-proxy-name`.
    #[error("handled by service proxy {0:?}")]
    OtherProxy(String),
    /// An FQDN EndpointSlice.
    #[error("FQDN EndpointSlice")]
    Fqdn,
}

/// Why an object was not converted: deliberately ignored, or invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// Not for this proxy.
    #[error(transparent)]
    Ignored(#[from] Ignored),
    /// Invalid input.
    #[error(transparent)]
    Invalid(#[from] Problem),
}
