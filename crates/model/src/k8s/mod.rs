//! Conversion from `k8s-openapi` objects to the model.
//!
//! Each function returns the converted object plus the problems found in fields that were
//! dropped, or [`Rejected`] when the whole object is ignored or unusable. Nothing here panics
//! on any input.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::{
    ANNOTATION_TRIGGER_TIME, AddressField, Cidr, DEFAULT_AFFINITY_TIMEOUT_SECS, Endpoint,
    EndpointPort, EndpointSlice, Ignored, IpFamily, LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME,
    LABEL_ZONE, MAX_AFFINITY_TIMEOUT_SECS, MAX_ENDPOINTS_PER_SLICE, Node, ObjectKind, Problem,
    Protocol, Reason, Rejected, Service, ServiceKey, ServicePort, ServiceType, SliceKey, SpecialIp,
    StrictError, TargetPort, TrafficPolicy, parse_ip_strict,
};

/// Why a strictly parsed value is not used: `invalid` for what does not parse at all, or
/// [`Reason::NonStandardIp`] for a form KEP-4858 refuses.
fn not_strict(
    e: StrictError,
    raw: &str,
    field: &'static str,
    invalid: fn(String) -> Reason,
) -> Reason {
    match e {
        StrictError::Invalid => invalid(raw.to_owned()),
        StrictError::NonStandard { form, canonical } => {
            Reason::NonStandardIp(Box::new(crate::NonStandardValue {
                field,
                value: raw.to_owned(),
                form,
                canonical,
            }))
        }
    }
}

/// An IP address of an API field, parsed as the API server's strict validation does.
fn strict_ip(
    raw: &str,
    field: &'static str,
    invalid: fn(String) -> Reason,
) -> Result<IpAddr, Reason> {
    parse_ip_strict(raw).map_err(|e| not_strict(e, raw, field, invalid))
}

/// A CIDR of a legacy subnet field (`loadBalancerSourceRanges`, `podCIDRs`), parsed as the
/// API server's strict validation does (`IsValidCIDRForLegacyField`): no leading zeros, no
/// IPv4-mapped address, no bits set beyond the prefix length.
fn strict_cidr(
    raw: &str,
    field: &'static str,
    invalid: fn(String) -> Reason,
) -> Result<Cidr, Reason> {
    Cidr::parse_strict(raw).map_err(|e| not_strict(e, raw, field, invalid))
}

/// A CIDR of a field introduced with strict validation (ServiceCIDR `spec.cidrs`), parsed as
/// the API server does (`IsValidCIDR`): [`strict_cidr`], and in canonical form.
fn canonical_cidr(
    raw: &str,
    field: &'static str,
    invalid: fn(String) -> Reason,
) -> Result<Cidr, Reason> {
    Cidr::parse_canonical(raw).map_err(|e| not_strict(e, raw, field, invalid))
}

fn port_u16(v: i64) -> Option<u16> {
    u16::try_from(v).ok().filter(|p| *p != 0)
}

/// Converts a Service.
///
/// Ignored: headless services, ExternalName services, services without a ClusterIP, and
/// services labelled `service.kubernetes.io/service-proxy-name`. Invalid ClusterIPs, and
/// ClusterIPs in a [special range](SpecialIp), reject the service; invalid or special external
/// IPs and ingress IPs, invalid source ranges and ports are dropped one by one; an affinity
/// timeout outside 1–86400 s is replaced by the default.
pub fn service(svc: &core::Service) -> Result<(Service, Vec<Problem>), Rejected> {
    let meta = &svc.metadata;
    let (namespace, name) = match (&meta.namespace, &meta.name) {
        (Some(ns), Some(n)) if !ns.is_empty() && !n.is_empty() => (ns.clone(), n.clone()),
        _ => {
            return Err(Rejected::Invalid(Problem {
                kind: ObjectKind::Service,
                namespace: meta.namespace.clone().unwrap_or_default(),
                name: meta.name.clone().unwrap_or_default(),
                reason: Reason::MissingName,
            }));
        }
    };
    if let Some(proxy) = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SERVICE_PROXY_NAME))
    {
        return Err(Ignored::OtherProxy(proxy.clone()).into());
    }
    let problem = |reason: Reason| Problem {
        kind: ObjectKind::Service,
        namespace: namespace.clone(),
        name: name.clone(),
        reason,
    };
    let spec = svc.spec.clone().unwrap_or_default();
    let service_type = match spec.type_.as_deref() {
        Some("ExternalName") => return Err(Ignored::ExternalName.into()),
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        _ => ServiceType::ClusterIp,
    };

    // ClusterIPs: `clusterIPs` when set, else `clusterIP`.
    let raw_ips: Vec<String> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.clone(),
        (_, Some(ip)) if !ip.is_empty() => vec![ip.clone()],
        _ => vec![],
    };
    if raw_ips.iter().any(|ip| ip == "None") {
        return Err(Ignored::Headless.into());
    }
    if raw_ips.is_empty() {
        return Err(Ignored::NoClusterIp.into());
    }
    let mut cluster_ips = Vec::new();
    for raw in &raw_ips {
        let ip = strict_ip(raw, "clusterIP", Reason::InvalidClusterIp).map_err(problem)?;
        if let Some(kind) = SpecialIp::of(&ip) {
            return Err(problem(Reason::SpecialAddress {
                field: AddressField::ClusterIp,
                address: ip,
                kind,
            })
            .into());
        }
        if cluster_ips
            .iter()
            .all(|c: &IpAddr| IpFamily::of(c) != IpFamily::of(&ip))
        {
            cluster_ips.push(ip);
        }
    }

    let mut problems = Vec::new();
    let mut external_ips = Vec::new();
    for raw in spec.external_ips.iter().flatten() {
        match strict_ip(raw, "externalIPs", Reason::InvalidExternalIp) {
            Ok(ip) => match SpecialIp::of(&ip) {
                Some(kind) => problems.push(problem(Reason::SpecialAddress {
                    field: AddressField::ExternalIp,
                    address: ip,
                    kind,
                })),
                None if !external_ips.contains(&ip) => external_ips.push(ip),
                None => {}
            },
            Err(r) => problems.push(problem(r)),
        }
    }

    let mut load_balancer_ips = Vec::new();
    if service_type == ServiceType::LoadBalancer {
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref());
        for ing in ingress.into_iter().flatten() {
            // Only VIP mode is programmed: `ipMode: Proxy` means the load balancer itself
            // delivers traffic to the node, not to the VIP.
            if ing.ip_mode.as_deref().is_some_and(|m| m != "VIP") {
                continue;
            }
            if let Some(raw) = &ing.ip {
                if raw.is_empty() {
                    continue;
                }
                match strict_ip(raw, "load balancer ingress IP", Reason::InvalidIngressIp) {
                    Ok(ip) => match SpecialIp::of(&ip) {
                        Some(kind) => problems.push(problem(Reason::SpecialAddress {
                            field: AddressField::IngressIp,
                            address: ip,
                            kind,
                        })),
                        None if !load_balancer_ips.contains(&ip) => load_balancer_ips.push(ip),
                        None => {}
                    },
                    Err(r) => problems.push(problem(r)),
                }
            }
        }
    }

    let mut load_balancer_source_ranges = Vec::new();
    if service_type == ServiceType::LoadBalancer {
        let mut refused = false;
        for raw in spec.load_balancer_source_ranges.iter().flatten() {
            // Entries may be comma-separated and padded with spaces (as kube-proxy accepts).
            for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                match strict_cidr(
                    part,
                    "loadBalancerSourceRanges entry (the load balancer IPs are not programmed)",
                    Reason::InvalidSourceRange,
                ) {
                    Ok(c) => load_balancer_source_ranges.push(c),
                    Err(r) => {
                        refused |= matches!(r, Reason::NonStandardIp(_));
                        problems.push(problem(r));
                    }
                }
            }
        }
        // Dropping a range someone meant to allow would narrow the filter, but dropping the
        // last one would open the load balancer to everyone: a refused range closes it.
        if refused {
            load_balancer_ips.clear();
            load_balancer_source_ranges.clear();
        }
    }

    let mut ports = Vec::new();
    let mut seen = BTreeSet::new();
    for p in spec.ports.iter().flatten() {
        let pname = p.name.clone().unwrap_or_default();
        let Some(protocol) = Protocol::parse(p.protocol.as_deref()) else {
            problems.push(problem(Reason::UnknownProtocol {
                name: pname,
                protocol: p.protocol.clone().unwrap_or_default(),
            }));
            continue;
        };
        let Some(port) = port_u16(i64::from(p.port)) else {
            problems.push(problem(Reason::InvalidPort {
                name: pname,
                value: i64::from(p.port),
            }));
            continue;
        };
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(np) => match port_u16(i64::from(np)) {
                Some(np) if service_type != ServiceType::ClusterIp => Some(np),
                Some(_) => None,
                None => {
                    problems.push(problem(Reason::InvalidNodePort {
                        name: pname,
                        value: i64::from(np),
                    }));
                    continue;
                }
            },
        };
        if !seen.insert((pname.clone(), protocol)) {
            problems.push(problem(Reason::DuplicatePort(pname)));
            continue;
        }
        let target_port = match &p.target_port {
            Some(IntOrString::Int(i)) => port_u16(i64::from(*i)).map(TargetPort::Number),
            Some(IntOrString::String(s)) => Some(TargetPort::Name(s.clone())),
            None => None,
        };
        ports.push(ServicePort {
            name: pname,
            protocol,
            port,
            node_port,
            target_port,
        });
    }

    let policy = |v: &Option<String>| match v.as_deref() {
        Some("Local") => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    };
    let health_check_node_port = match spec.health_check_node_port {
        None | Some(0) => None,
        Some(v) => match port_u16(i64::from(v)) {
            Some(p) => Some(p),
            None => {
                problems.push(problem(Reason::InvalidHealthCheckNodePort(i64::from(v))));
                None
            }
        },
    };
    // The API server requires 1–86400 s (`validateClientIPAffinityConfig`) and defaults an
    // absent timeout to 10800 s. Outside that range the object could not exist in a cluster:
    // use the default, as if the field had been left out, and say so.
    let session_affinity_timeout =
        (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            let raw = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match raw.map(|t| (t, u32::try_from(t))) {
                None => DEFAULT_AFFINITY_TIMEOUT_SECS,
                Some((_, Ok(t))) if (1..=MAX_AFFINITY_TIMEOUT_SECS).contains(&t) => t,
                Some((t, _)) => {
                    problems.push(problem(Reason::InvalidAffinityTimeout(i64::from(t))));
                    DEFAULT_AFFINITY_TIMEOUT_SECS
                }
            }
        });

    Ok((
        Service {
            key: ServiceKey { namespace, name },
            service_type,
            cluster_ips,
            external_ips,
            load_balancer_ips,
            load_balancer_source_ranges,
            external_traffic_policy: policy(&spec.external_traffic_policy),
            internal_traffic_policy: policy(&spec.internal_traffic_policy),
            health_check_node_port,
            session_affinity_timeout,
            ports,
            creation_timestamp: meta.creation_timestamp.as_ref().map(|t| t.0.as_second()),
        },
        problems,
    ))
}

/// Converts an EndpointSlice.
///
/// Ignored: FQDN slices. Rejected: slices without the `kubernetes.io/service-name` label, of
/// an unknown address type, or with more than [`MAX_ENDPOINTS_PER_SLICE`] endpoints. Bad
/// endpoints and ports are dropped one by one.
pub fn endpoint_slice(
    slice: &discovery::EndpointSlice,
) -> Result<(EndpointSlice, Vec<Problem>), Rejected> {
    let meta = &slice.metadata;
    let (namespace, name) = match (&meta.namespace, &meta.name) {
        (Some(ns), Some(n)) if !ns.is_empty() && !n.is_empty() => (ns.clone(), n.clone()),
        _ => {
            return Err(Rejected::Invalid(Problem {
                kind: ObjectKind::EndpointSlice,
                namespace: meta.namespace.clone().unwrap_or_default(),
                name: meta.name.clone().unwrap_or_default(),
                reason: Reason::MissingName,
            }));
        }
    };
    let problem = |reason: Reason| Problem {
        kind: ObjectKind::EndpointSlice,
        namespace: namespace.clone(),
        name: name.clone(),
        reason,
    };
    let family = match slice.address_type.as_str() {
        "IPv4" => IpFamily::V4,
        "IPv6" => IpFamily::V6,
        "FQDN" => return Err(Ignored::Fqdn.into()),
        other => return Err(problem(Reason::UnknownAddressType(other.to_owned())).into()),
    };
    let service_name = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SERVICE_NAME))
        .filter(|s| !s.is_empty())
        .ok_or_else(|| problem(Reason::MissingServiceNameLabel))?;
    // Optional since Kubernetes 1.36 (absent: no endpoints).
    let slice_endpoints = slice.endpoints.as_deref().unwrap_or_default();
    if slice_endpoints.len() > MAX_ENDPOINTS_PER_SLICE {
        return Err(problem(Reason::TooManyEndpoints(slice_endpoints.len())).into());
    }

    let mut problems = Vec::new();
    let mut ports = Vec::new();
    for p in slice.ports.iter().flatten() {
        let pname = p.name.clone().unwrap_or_default();
        let Some(protocol) = Protocol::parse(p.protocol.as_deref()) else {
            problems.push(problem(Reason::UnknownProtocol {
                name: pname,
                protocol: p.protocol.clone().unwrap_or_default(),
            }));
            continue;
        };
        // A port without a number is skipped silently, like kube-proxy does: it happens
        // while the controller cannot resolve a named target port.
        let Some(raw) = p.port else { continue };
        let Some(port) = port_u16(i64::from(raw)) else {
            if raw != 0 {
                problems.push(problem(Reason::InvalidPort {
                    name: pname,
                    value: i64::from(raw),
                }));
            }
            continue;
        };
        ports.push(EndpointPort {
            name: pname,
            protocol,
            port,
        });
    }

    let mut endpoints = Vec::new();
    for ep in slice_endpoints {
        let Some(raw) = ep.addresses.first() else {
            problems.push(problem(Reason::NoAddress));
            continue;
        };
        let address = match strict_ip(raw, "endpoint address", Reason::InvalidAddress) {
            Ok(a) => a,
            Err(r) => {
                problems.push(problem(r));
                continue;
            }
        };
        if IpFamily::of(&address) != family {
            problems.push(problem(Reason::AddressFamilyMismatch {
                address: raw.clone(),
                family,
            }));
            continue;
        }
        let cond = ep.conditions.clone().unwrap_or_default();
        let hints = ep.hints.as_ref();
        endpoints.push(Endpoint {
            address,
            ready: cond.ready.unwrap_or(true),
            serving: cond.serving.unwrap_or(true),
            terminating: cond.terminating.unwrap_or(false),
            node_name: ep.node_name.clone(),
            zone: ep.zone.clone(),
            zone_hints: hints
                .and_then(|h| h.for_zones.as_ref())
                .map(|z| z.iter().map(|z| z.name.clone()).collect()),
            node_hints: hints
                .and_then(|h| h.for_nodes.as_ref())
                .map(|n| n.iter().map(|n| n.name.clone()).collect()),
        });
    }
    let trigger_time = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_TRIGGER_TIME))
        .cloned();
    Ok((
        EndpointSlice {
            key: SliceKey {
                namespace: namespace.clone(),
                name: name.clone(),
            },
            service: ServiceKey {
                namespace,
                name: service_name.clone(),
            },
            family,
            ports,
            endpoints,
            trigger_time,
        },
        problems,
    ))
}

/// Converts a Node: its primary addresses (the first InternalIP of each family, falling back
/// to ExternalIP, as kube-proxy's `GetNodeHostIPs`), zone label and pod CIDRs.
pub fn node(node: &core::Node) -> (Node, Vec<Problem>) {
    let name = node.metadata.name.clone().unwrap_or_default();
    let problem = |reason: Reason| Problem {
        kind: ObjectKind::Node,
        namespace: String::new(),
        name: name.clone(),
        reason,
    };
    let mut problems = Vec::new();
    let mut internal = Vec::new();
    let mut external = Vec::new();
    for a in node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
    {
        let list = match a.type_.as_str() {
            "InternalIP" => &mut internal,
            "ExternalIP" => &mut external,
            _ => continue,
        };
        match strict_ip(&a.address, "node address", Reason::InvalidNodeAddress) {
            Ok(ip) => list.push(ip),
            Err(r) => problems.push(problem(r)),
        }
    }
    let mut addresses = Vec::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        let pick = internal
            .iter()
            .find(|ip| IpFamily::of(ip) == family)
            .or_else(|| external.iter().find(|ip| IpFamily::of(ip) == family));
        if let Some(ip) = pick {
            addresses.push(*ip);
        }
    }
    // Keep the family of the first listed address first, as Kubernetes treats it as primary.
    if let (Some(first), [a, b]) = (
        internal.first().or(external.first()),
        addresses.as_mut_slice(),
    ) {
        if IpFamily::of(first) == IpFamily::of(b) {
            std::mem::swap(a, b);
        }
    }
    let mut pod_cidrs = Vec::new();
    for raw in node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidrs.as_ref())
        .into_iter()
        .flatten()
    {
        match strict_cidr(raw, "podCIDR", Reason::InvalidNodeAddress) {
            Ok(c) => pod_cidrs.push(c),
            Err(r) => problems.push(problem(r)),
        }
    }
    let zone = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_ZONE))
        .cloned();
    let deleting = node.metadata.deletion_timestamp.is_some();
    let to_be_deleted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == "ToBeDeletedByClusterAutoscaler"));
    (
        Node {
            name,
            addresses,
            zone,
            pod_cidrs,
            deleting,
            to_be_deleted,
        },
        problems,
    )
}

/// Converts a ServiceCIDR (`networking.k8s.io/v1`): its `spec.cidrs`, without the entries
/// that do not parse, are broader than /8 (IPv4) or /64 (IPv6), or overlap a
/// [special range](SpecialIp), each reported as a problem. The checks that need the node's
/// context (node addresses, the pod network) are the compiler's.
pub fn service_cidr(s: &networking::ServiceCIDR) -> (Vec<Cidr>, Vec<Problem>) {
    let name = s.metadata.name.clone().unwrap_or_default();
    let problem = |reason: Reason| Problem {
        kind: ObjectKind::ServiceCidr,
        namespace: String::new(),
        name: name.clone(),
        reason,
    };
    let mut cidrs = Vec::new();
    let mut problems = Vec::new();
    for raw in s
        .spec
        .as_ref()
        .and_then(|sp| sp.cidrs.as_ref())
        .into_iter()
        .flatten()
    {
        let cidr = match canonical_cidr(raw, "ServiceCIDR entry", Reason::InvalidServiceCidr) {
            Ok(c) => c,
            Err(r) => {
                problems.push(problem(r));
                continue;
            }
        };
        match crate::service_cidr_refusal(&cidr) {
            Some(reason) => problems.push(problem(reason)),
            None => cidrs.push(cidr),
        }
    }
    (cidrs, problems)
}

#[cfg(test)]
mod tests;
