//! States and node contexts with every rule shape the compiler emits, shared by the
//! kernel tests of the backend.

#![allow(dead_code)]

use rudder_compiler::{LocalDetector, NodeContext, NodePortIps};
use rudder_model::{
    Endpoint, EndpointPort, EndpointSlice, IpFamily, Protocol, ProxyState, Service, ServiceKey,
    ServicePort, ServiceType, TrafficPolicy,
};

pub fn ip(s: &str) -> std::net::IpAddr {
    s.parse().expect("test IP")
}

pub fn svc(name: &str, ips: &[&str], ty: ServiceType, ports: Vec<ServicePort>) -> Service {
    let mut s = Service::new(
        ServiceKey::new("ns", name),
        ips.iter().map(|a| ip(a)).collect(),
    );
    s.service_type = ty;
    s.ports = ports;
    s
}

pub fn port(p: Protocol, n: u16, node_port: Option<u16>) -> ServicePort {
    ServicePort {
        node_port,
        ..ServicePort::new("p", p, n)
    }
}

pub fn eps(name: &str, fam: IpFamily, proto: Protocol, addrs: &[(&str, &str)]) -> EndpointSlice {
    let endpoints = addrs
        .iter()
        .map(|(a, node)| Endpoint::new(ip(a)).on_node(node))
        .collect();
    let ports = vec![EndpointPort {
        name: "p".into(),
        protocol: proto,
        port: 8080,
    }];
    EndpointSlice::new("ns", &format!("{name}-{fam}"), name, fam, ports, endpoints)
}

/// One state with every shape: all service types, all protocols, both families, eTP/iTP
/// Local, source ranges (including an open one and IPv6), affinity, no endpoints.
pub fn everything() -> ProxyState {
    use IpFamily::{V4, V6};
    let mut services = Vec::new();
    let mut slices = Vec::new();
    let mut lb = svc(
        "lb",
        &["10.96.0.10", "fd00:96::10"],
        ServiceType::LoadBalancer,
        vec![port(Protocol::Tcp, 80, Some(30080))],
    );
    lb.load_balancer_ips = vec![ip("192.168.122.10"), ip("fd00:122::10")];
    lb.external_ips = vec![ip("203.0.113.10")];
    lb.load_balancer_source_ranges = vec![
        "10.0.0.0/8".parse().expect("cidr"),
        "172.18.0.0/24".parse().expect("cidr"),
        "fd00:1::/64".parse().expect("cidr"),
    ];
    services.push(lb);
    slices.push(eps(
        "lb",
        V4,
        Protocol::Tcp,
        &[("10.244.1.2", "n1"), ("10.244.2.2", "n2")],
    ));
    slices.push(eps("lb", V6, Protocol::Tcp, &[("fd00:244:1::2", "n1")]));

    let mut open = svc(
        "open",
        &["10.96.0.11"],
        ServiceType::LoadBalancer,
        vec![port(Protocol::Udp, 53, Some(30053))],
    );
    open.load_balancer_ips = vec![ip("192.168.122.11")];
    open.load_balancer_source_ranges = vec!["0.0.0.0/0".parse().expect("cidr")];
    services.push(open);
    slices.push(eps("open", V4, Protocol::Udp, &[("10.244.1.3", "n1")]));

    let mut local = svc(
        "local",
        &["10.96.0.12", "fd00:96::12"],
        ServiceType::NodePort,
        vec![port(Protocol::Tcp, 443, Some(30443))],
    );
    local.external_traffic_policy = TrafficPolicy::Local;
    local.health_check_node_port = Some(32000);
    services.push(local);
    slices.push(eps(
        "local",
        V4,
        Protocol::Tcp,
        &[("10.244.1.4", "n1"), ("10.244.2.4", "n2")],
    ));
    slices.push(eps("local", V6, Protocol::Tcp, &[("fd00:244:2::4", "n2")]));

    let mut itp = svc(
        "itp",
        &["10.96.0.13"],
        ServiceType::ClusterIp,
        vec![port(Protocol::Sctp, 9999, None)],
    );
    itp.internal_traffic_policy = TrafficPolicy::Local;
    services.push(itp);
    slices.push(eps("itp", V4, Protocol::Sctp, &[("10.244.2.5", "n2")]));

    let mut sticky = svc(
        "sticky",
        &["10.96.0.14", "fd00:96::14"],
        ServiceType::NodePort,
        vec![port(Protocol::Tcp, 8000, Some(30800))],
    );
    sticky.session_affinity_timeout = Some(600);
    services.push(sticky);
    slices.push(eps(
        "sticky",
        V4,
        Protocol::Tcp,
        &[
            ("10.244.1.6", "n1"),
            ("10.244.2.6", "n2"),
            ("10.244.3.6", "n3"),
        ],
    ));
    slices.push(eps("sticky", V6, Protocol::Tcp, &[("fd00:244:1::6", "n1")]));

    services.push(svc(
        "empty",
        &["10.96.0.15", "fd00:96::15"],
        ServiceType::NodePort,
        vec![port(Protocol::Tcp, 81, Some(30081))],
    ));

    let mut st = ProxyState::new();
    st.replace_all(services, slices);
    st.take_dirty();
    st
}

pub fn node(detector: LocalDetector) -> NodeContext {
    let mut n = NodeContext::new(
        "n1".into(),
        NodePortIps::Only(vec![ip("172.18.0.2"), ip("fc00::2")]),
    );
    n.ips = vec![ip("172.18.0.2"), ip("fc00::2")];
    n.local_detector = detector;
    n.service_cidrs = vec![
        "10.96.0.0/12".parse().expect("cidr"),
        "10.100.0.0/16".parse().expect("cidr"),
        "172.30.0.0/16".parse().expect("cidr"),
        "fd00:96::/108".parse().expect("cidr"),
    ];
    n
}
