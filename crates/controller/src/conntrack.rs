//! Stale UDP conntrack entries (kube-proxy's `pkg/proxy/conntrack/cleanup.go`).
//!
//! UDP has no connection end, so a client that keeps sending to a service keeps its conntrack
//! entry — and its DNAT to an endpoint that may be gone — for as long as it sends. After the
//! endpoints of a UDP service change, flows whose original destination is one of the
//! service's frontends but whose replies come from an address that is no longer a serving
//! endpoint are deleted, so the next datagram is load-balanced afresh.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;

use rudder_model::{IpFamily, Protocol, ProxyState, UdpFlow};

use crate::sync::DataplaneError;

/// Access to the kernel's conntrack table.
pub trait Conntrack: Send {
    /// Every UDP flow of a family.
    fn udp_flows(&mut self, family: IpFamily) -> Result<Vec<UdpFlow>, DataplaneError>;
    /// Deletes flows; returns how many were deleted (flows already gone are not errors).
    fn delete(&mut self, flows: &[UdpFlow]) -> Result<usize, DataplaneError>;
}

/// Whether any of these services has a UDP port (only then is cleanup needed).
pub fn has_udp<'a>(
    state: &ProxyState,
    services: impl IntoIterator<Item = &'a rudder_model::ServiceKey>,
) -> bool {
    services
        .into_iter()
        .filter_map(|k| state.service(k))
        .any(|s| s.ports.iter().any(|p| p.protocol == Protocol::Udp))
}

/// The flows to delete among `flows` (of one family): for every UDP service port with at
/// least one serving endpoint, flows to its ClusterIP, external IPs or load balancer IPs on
/// the service port, or to any address on its node port, whose reply source is not a serving
/// endpoint. Traffic policies, topology and terminating state are deliberately ignored, as in
/// kube-proxy: any serving endpoint is a legitimate destination.
///
/// What the compiler refuses because it is one of the node's addresses (`node_addrs`, see
/// `rudder_compiler::guard`) is no frontend: a service with such a ClusterIP is left out
/// entirely, an external or load balancer IP that is one is not a frontend. Flows to the
/// node's own services on those addresses are the node's, not stale.
pub fn stale_udp_flows(
    state: &ProxyState,
    family: IpFamily,
    flows: &[UdpFlow],
    node_addrs: &[std::net::IpAddr],
) -> Vec<UdpFlow> {
    let mut frontends: HashSet<SocketAddr> = HashSet::new();
    let mut node_ports: HashSet<u16> = HashSet::new();
    // Frontend (or node port) → serving endpoints of its service port.
    let mut serving_by_frontend: std::collections::HashMap<SocketAddr, BTreeSet<SocketAddr>> =
        Default::default();
    let mut serving_by_node_port: std::collections::HashMap<u16, BTreeSet<SocketAddr>> =
        Default::default();
    let services = state
        .services()
        .filter(|s| rudder_compiler::guard::refused_cluster_ip(s, node_addrs).is_none());
    for svc in services {
        for port in svc.ports.iter().filter(|p| p.protocol == Protocol::Udp) {
            let serving: BTreeSet<SocketAddr> = state
                .endpoints_for(svc, port, family)
                .iter()
                .filter(|e| e.endpoint.serving)
                .map(|e| SocketAddr::new(e.endpoint.address, e.port))
                .collect();
            if serving.is_empty() {
                continue;
            }
            let ips = svc.cluster_ip(family).into_iter().chain(
                svc.external_ips
                    .iter()
                    .chain(&svc.load_balancer_ips)
                    .copied()
                    .filter(|ip| IpFamily::of(ip) == family && !node_addrs.contains(ip)),
            );
            for ip in ips {
                let fe = SocketAddr::new(ip, port.port);
                frontends.insert(fe);
                serving_by_frontend
                    .entry(fe)
                    .or_default()
                    .extend(serving.iter().copied());
            }
            if let Some(np) = port.node_port {
                node_ports.insert(np);
                serving_by_node_port
                    .entry(np)
                    .or_default()
                    .extend(serving.iter().copied());
            }
        }
    }
    flows
        .iter()
        .filter(|f| {
            let by_frontend = serving_by_frontend
                .get(&f.orig_dst)
                .map(|s| !s.contains(&f.reply_src));
            let by_node_port = (!frontends.contains(&f.orig_dst))
                .then(|| {
                    serving_by_node_port
                        .get(&f.orig_dst.port())
                        .map(|s| !s.contains(&f.reply_src))
                })
                .flatten();
            by_frontend.or(by_node_port).unwrap_or(false)
        })
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rudder_model::{
        Endpoint, EndpointPort, EndpointSlice, Service, ServiceKey, ServicePort, ServiceType,
    };

    fn flow(src: &str, dst: &str, reply: &str) -> UdpFlow {
        UdpFlow {
            orig_src: src.parse().unwrap(),
            orig_dst: dst.parse().unwrap(),
            reply_src: reply.parse().unwrap(),
        }
    }

    #[test]
    fn selects_flows_whose_endpoint_is_gone() {
        let mut svc = Service::new(
            ServiceKey::new("ns", "dns"),
            vec!["10.96.0.10".parse().unwrap()],
        );
        svc.service_type = ServiceType::NodePort;
        svc.load_balancer_ips = vec!["192.0.2.10".parse().unwrap()];
        svc.ports = vec![ServicePort {
            node_port: Some(30053),
            ..ServicePort::new("dns", Protocol::Udp, 53)
        }];
        let mut tcp = Service::new(
            ServiceKey::new("ns", "web"),
            vec!["10.96.0.11".parse().unwrap()],
        );
        tcp.ports = vec![ServicePort::new("http", Protocol::Tcp, 80)];
        let ports = vec![EndpointPort {
            name: "dns".into(),
            protocol: Protocol::Udp,
            port: 5353,
        }];
        let mut terminating = Endpoint::new("10.0.0.3".parse().unwrap());
        terminating.ready = false;
        terminating.terminating = true;
        let slice = EndpointSlice::new(
            "ns",
            "dns-1",
            "dns",
            IpFamily::V4,
            ports,
            vec![Endpoint::new("10.0.0.1".parse().unwrap()), terminating],
        );
        let mut st = ProxyState::new();
        st.replace_all(vec![svc, tcp], vec![slice]);
        let flows = vec![
            flow("10.1.0.1:4000", "10.96.0.10:53", "10.0.0.1:5353"), // live endpoint: keep
            flow("10.1.0.1:4001", "10.96.0.10:53", "10.0.0.2:5353"), // gone: delete
            flow("10.1.0.1:4002", "10.96.0.10:53", "10.0.0.3:5353"), // serving (terminating): keep
            flow("10.1.0.1:4003", "192.0.2.10:53", "10.0.0.9:5353"), // LB IP, gone: delete
            flow("10.1.0.1:4004", "172.18.0.2:30053", "10.0.0.9:5353"), // node port, gone: delete
            flow("10.1.0.1:4005", "10.96.0.11:80", "10.0.0.9:80"),   // not a UDP service: keep
            flow("10.1.0.1:4006", "8.8.8.8:53", "8.8.8.8:53"),       // not a service: keep
        ];
        let stale = stale_udp_flows(&st, IpFamily::V4, &flows, &[]);
        let ports: Vec<u16> = stale.iter().map(|f| f.orig_src.port()).collect();
        assert_eq!(ports, vec![4001, 4003, 4004]);
        // When the LB IP is the node's own address, the compiler refuses that frontend: flows
        // to it are the node's (a DNS server on the node), not stale.
        let node = ["192.0.2.10".parse().unwrap()];
        let stale = stale_udp_flows(&st, IpFamily::V4, &flows, &node);
        let ports: Vec<u16> = stale.iter().map(|f| f.orig_src.port()).collect();
        assert_eq!(ports, vec![4001, 4004]);
        // When the ClusterIP is, the whole service is refused: nothing of it is stale.
        let node = ["10.96.0.10".parse().unwrap()];
        assert!(stale_udp_flows(&st, IpFamily::V4, &flows, &node).is_empty());
        assert!(has_udp(&st, [&ServiceKey::new("ns", "dns")]));
        assert!(!has_udp(&st, [&ServiceKey::new("ns", "web")]));
    }
}
