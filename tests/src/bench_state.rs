//! The synthetic cluster the benchmarks program: N services × M endpoints, in the model's
//! types.
//!
//! The one generator of benchmark states: `cargo xtask bench` uses it from here, the compiler's
//! and the netlink encoder's criterion benchmarks through `crates/compiler/benches/common`,
//! which includes this file by path (so that they do not build the test kit's dependencies).
//! It depends on nothing but `rudder-model`.
//!
//! Service `i` is `bench/svc-{i}` with ClusterIP `10.96.0.0 + i` and port `http` 80/TCP; its
//! one EndpointSlice `bench/svc-{i}-x` holds M endpoints at `10.0.0.0 + 64·i + e + shift + 1`
//! (port `http` 8080/TCP), so up to 63 endpoints per service never overlap another service's,
//! spread over the shape's nodes in turn. The benchmarks compile for `node-0`: the endpoints
//! there are local (and need hairpin entries).

use std::net::{IpAddr, Ipv4Addr};

use rudder_model::{
    Endpoint, EndpointPort, EndpointSlice, IpFamily, Protocol, ProxyState, Service, ServiceKey,
    ServicePort, ServiceType,
};

/// Services in the criterion benchmarks' state.
pub const SERVICES: usize = 10_000;
/// Endpoints per service in the criterion benchmarks' state.
pub const ENDPOINTS: usize = 10;

/// The size and kind of a benchmark state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Number of services.
    pub services: usize,
    /// Endpoints per service (one EndpointSlice each).
    pub endpoints: usize,
    /// Every service is of type NodePort, and every fourth one has a node port (`30000 + i/4`,
    /// for as long as the node port range lasts); otherwise every service is a ClusterIP.
    pub node_ports: bool,
    /// Nodes the endpoints are spread over: endpoint `e` of service `i` is on
    /// `node-{(i·M + e) mod nodes}`.
    pub nodes: usize,
}

impl Shape {
    /// The criterion benchmarks' state: [`SERVICES`] × [`ENDPOINTS`], with node ports, the
    /// endpoints on 5 nodes (two of each service's ten on `node-0`).
    pub const CRITERION: Shape = Shape {
        services: SERVICES,
        endpoints: ENDPOINTS,
        node_ports: true,
        nodes: 5,
    };

    /// `cargo xtask bench`'s state: `services` × `endpoints` ClusterIP services, the endpoints
    /// on 100 nodes.
    pub fn cluster_ips(services: usize, endpoints: usize) -> Shape {
        Shape {
            services,
            endpoints,
            node_ports: false,
            nodes: 100,
        }
    }
}

/// Service `i`.
// `i % 4 == 0`: this file also builds in the compiler's benchmarks, whose MSRV (1.85) predates
// `is_multiple_of`.
#[allow(clippy::manual_is_multiple_of)]
pub fn service(shape: &Shape, i: usize) -> Service {
    let mut svc = Service::new(
        ServiceKey::new("bench", &format!("svc-{i}")),
        vec![IpAddr::V4(Ipv4Addr::from(0x0a60_0000u32 + i as u32))],
    );
    let mut port = ServicePort::new("http", Protocol::Tcp, 80);
    if shape.node_ports {
        svc.service_type = ServiceType::NodePort;
        // Every fourth service also has a node port.
        port.node_port = (i % 4 == 0 && i / 4 < 2768).then(|| 30000 + (i / 4) as u16);
    }
    svc.ports = vec![port];
    svc
}

/// The address of endpoint `e` of service `i`.
pub fn endpoint_ip(i: usize, e: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(
        0x0a00_0000u32 + (i as u32) * 64 + e as u32 + 1,
    ))
}

/// Service `i`'s EndpointSlice, its endpoints' addresses moved up by `shift` (a change of
/// `shift` endpoints: the first ones go, as many new ones come).
pub fn slice(shape: &Shape, i: usize, shift: usize) -> EndpointSlice {
    let eps = shape.endpoints;
    let endpoints = (0..eps)
        .map(|e| {
            Endpoint::new(endpoint_ip(i, e + shift))
                .on_node(&format!("node-{}", (i * eps + e) % shape.nodes))
        })
        .collect();
    let ports = vec![EndpointPort {
        name: "http".into(),
        protocol: Protocol::Tcp,
        port: 8080,
    }];
    EndpointSlice::new(
        "bench",
        &format!("svc-{i}-x"),
        &format!("svc-{i}"),
        IpFamily::V4,
        ports,
        endpoints,
    )
}

/// The whole state, with nothing left dirty.
pub fn state(shape: &Shape) -> ProxyState {
    let mut st = ProxyState::new();
    st.replace_all(
        (0..shape.services).map(|i| service(shape, i)).collect(),
        (0..shape.services).map(|i| slice(shape, i, 0)).collect(),
    );
    st.take_dirty();
    st
}
