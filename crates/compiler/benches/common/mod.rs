//! The benchmark state: N services × M endpoints, shared by the compiler's and the netlink
//! encoder's benchmarks.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};

use rudder_model::{
    Endpoint, EndpointPort, EndpointSlice, IpFamily, Protocol, ProxyState, Service, ServiceKey,
    ServicePort, ServiceType,
};

pub const SERVICES: usize = 10_000;
pub const ENDPOINTS: usize = 10;

pub fn service(i: usize) -> Service {
    let mut svc = Service::new(
        ServiceKey::new("bench", &format!("svc-{i}")),
        vec![IpAddr::V4(Ipv4Addr::from(0x0a60_0000u32 + i as u32))],
    );
    svc.service_type = ServiceType::NodePort;
    // Every fourth service also has a node port.
    let node_port = (i % 4 == 0 && i / 4 < 2768).then(|| 30000 + (i / 4) as u16);
    svc.ports = vec![ServicePort {
        node_port,
        ..ServicePort::new("http", Protocol::Tcp, 80)
    }];
    svc
}

pub fn slice(i: usize, shift: u32) -> EndpointSlice {
    let endpoints = (0..ENDPOINTS as u32)
        .map(|e| {
            Endpoint::new(IpAddr::V4(Ipv4Addr::from(
                0x0a00_0000u32 + (i as u32) * 64 + e + shift + 1,
            )))
            .on_node(&format!("node-{}", e % 5))
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

pub fn state() -> ProxyState {
    let mut st = ProxyState::new();
    st.replace_all(
        (0..SERVICES).map(service).collect(),
        (0..SERVICES).map(|i| slice(i, 0)).collect(),
    );
    st.take_dirty();
    st
}
