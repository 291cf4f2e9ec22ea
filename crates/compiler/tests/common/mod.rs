//! Builders for compiler tests.
#![allow(dead_code)]

pub mod arb;

use std::net::IpAddr;

use rudder_compiler::{Compiler, Config, LocalDetector, NodeContext, NodePortIps};
use rudder_model::{
    Endpoint, EndpointPort, EndpointSlice, IpFamily, Protocol, ProxyState, Service, ServiceKey,
    ServicePort,
};

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

pub fn service(ns: &str, name: &str, cluster_ips: &[&str]) -> Service {
    Service::new(
        ServiceKey::new(ns, name),
        cluster_ips.iter().map(|s| ip(s)).collect(),
    )
}

pub fn port(name: &str, protocol: Protocol, port: u16, node_port: Option<u16>) -> ServicePort {
    ServicePort {
        node_port,
        ..ServicePort::new(name, protocol, port)
    }
}

pub fn endpoint(addr: &str, ready: bool, node: &str) -> Endpoint {
    Endpoint {
        ready,
        serving: ready,
        ..Endpoint::new(ip(addr)).on_node(node)
    }
}

pub fn slice(
    ns: &str,
    name: &str,
    svc: &str,
    family: IpFamily,
    ports: &[(&str, Protocol, u16)],
    eps: Vec<Endpoint>,
) -> EndpointSlice {
    let ports = ports
        .iter()
        .map(|(n, p, port)| EndpointPort {
            name: (*n).into(),
            protocol: *p,
            port: *port,
        })
        .collect();
    EndpointSlice::new(ns, name, svc, family, ports, eps)
}

pub fn node(name: &str, ips: &[&str]) -> NodeContext {
    NodeContext::new(
        name.into(),
        NodePortIps::Only(ips.iter().map(|s| ip(s)).collect()),
    )
}

/// The same node, recognising pod traffic by these CIDRs (`--cluster-cidr`).
pub fn local(mut node: NodeContext, cidrs: &[&str]) -> NodeContext {
    node.local_detector = LocalDetector::Cidrs(
        cidrs
            .iter()
            .map(|c| c.parse().expect("test CIDR"))
            .collect(),
    );
    node
}

pub fn compiler(node_ctx: NodeContext, config: Config) -> Compiler {
    Compiler::new(&[IpFamily::V4, IpFamily::V6], config, node_ctx)
}

pub fn state(services: Vec<Service>, slices: Vec<EndpointSlice>) -> ProxyState {
    let mut st = ProxyState::new();
    st.replace_all(services, slices);
    st.take_dirty();
    st
}
