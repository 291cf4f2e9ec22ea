//! Builders for compiler tests.
#![allow(dead_code)]

use std::net::IpAddr;

use rudder_compiler::{Compiler, Config, NodeContext, NodePortIps};
use rudder_model::{
    Endpoint, EndpointPort, EndpointSlice, IpFamily, Protocol, ProxyState, Service, ServiceKey,
    ServicePort, ServiceType, SliceKey, TrafficPolicy,
};

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

pub fn service(ns: &str, name: &str, cluster_ips: &[&str]) -> Service {
    Service {
        key: ServiceKey::new(ns, name),
        service_type: ServiceType::ClusterIp,
        cluster_ips: cluster_ips.iter().map(|s| ip(s)).collect(),
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
        external_traffic_policy: TrafficPolicy::Cluster,
        internal_traffic_policy: TrafficPolicy::Cluster,
        health_check_node_port: None,
        session_affinity_timeout: None,
        ports: vec![],
    }
}

pub fn port(name: &str, protocol: Protocol, port: u16, node_port: Option<u16>) -> ServicePort {
    ServicePort {
        name: name.into(),
        protocol,
        port,
        node_port,
        target_port: None,
    }
}

pub fn endpoint(addr: &str, ready: bool, node: &str) -> Endpoint {
    Endpoint {
        address: ip(addr),
        ready,
        serving: ready,
        terminating: false,
        node_name: Some(node.into()),
        zone: None,
        zone_hints: None,
        node_hints: None,
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
    EndpointSlice {
        key: SliceKey {
            namespace: ns.into(),
            name: name.into(),
        },
        service: ServiceKey::new(ns, svc),
        family,
        ports: ports
            .iter()
            .map(|(n, p, port)| EndpointPort {
                name: (*n).into(),
                protocol: *p,
                port: *port,
            })
            .collect(),
        endpoints: eps,
        trigger_time: None,
    }
}

pub fn node(name: &str, ips: &[&str]) -> NodeContext {
    NodeContext {
        name: name.into(),
        node_port_ips: NodePortIps::Only(ips.iter().map(|s| ip(s)).collect()),
    }
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
