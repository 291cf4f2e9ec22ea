//! Random cluster states for property tests (proptest strategies), shared with the netlink
//! backend's differential test.

use std::collections::BTreeSet;

use proptest::prelude::*;
use rudder_model::{Endpoint, EndpointSlice, IpFamily, Protocol, Service, ServiceType};

use super::*;

pub const NAMES: &[&str] = &["a", "b", "c", "d", "e"];

pub fn arb_protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        Just(Protocol::Tcp),
        Just(Protocol::Udp),
        Just(Protocol::Sctp)
    ]
}

pub fn arb_service(idx: usize) -> impl Strategy<Value = (Service, Vec<EndpointSlice>)> {
    // Small pools so that ClusterIPs, node ports and external IPs collide between services,
    // and external and load balancer IPs sometimes are other services' ClusterIPs.
    let ports = prop::collection::vec(
        (
            0..2usize,
            arb_protocol(),
            1u16..4,
            prop::option::of(30000u16..30003),
        ),
        1..3,
    );
    let eps = prop::collection::vec((0u8..6, any::<bool>(), 0..2usize, any::<bool>()), 0..6);
    (
        0u8..4,
        any::<bool>(),
        prop::option::of(0u8..5),
        ports,
        eps,
        any::<bool>(),
        (0u8..4, 0u8..4, prop::option::of(1u32..3)),
        prop::option::of(0i64..3),
    )
        .prop_map(
            move |(cip, v6, ext, ports, eps, split, (policy, lb, affinity), created)| {
                let ns = "ns";
                let name = NAMES[idx];
                let mut ips = vec![format!("10.96.0.{cip}")];
                if v6 {
                    ips.push(format!("fd00::{cip}"));
                }
                let ip_refs: Vec<&str> = ips.iter().map(String::as_str).collect();
                let mut svc = service(ns, name, &ip_refs);
                // Traffic policies: none, internal Local, external Local, both.
                if policy & 1 != 0 {
                    svc.internal_traffic_policy = rudder_model::TrafficPolicy::Local;
                }
                if policy & 2 != 0 {
                    svc.external_traffic_policy = rudder_model::TrafficPolicy::Local;
                }
                // No LB IP, its own, or another service's ClusterIP.
                match lb {
                    0 => {}
                    1 | 2 => svc.load_balancer_ips = vec![ip(&format!("198.51.100.{cip}"))],
                    _ => svc.load_balancer_ips = vec![ip(&format!("10.96.0.{}", (cip + 1) % 4))],
                }
                svc.creation_timestamp = created;
                svc.session_affinity_timeout = affinity.map(|t| t * 100);
                svc.service_type = ServiceType::NodePort;
                // External IPs 192.0.2.0-2, or the ClusterIPs 10.96.0.0-1.
                if let Some(e) = ext {
                    svc.external_ips = vec![if e < 3 {
                        ip(&format!("192.0.2.{e}"))
                    } else {
                        ip(&format!("10.96.0.{}", e - 3))
                    }];
                }
                let mut seen = BTreeSet::new();
                for (pname, proto, p, np) in ports {
                    let pn = ["http", "dns"][pname];
                    if seen.insert((pn, proto)) {
                        svc.ports.push(port(pn, proto, 80 + p, np));
                    }
                }
                let slice_ports: Vec<(&str, Protocol, u16)> = svc
                    .ports
                    .iter()
                    .map(|p| {
                        (
                            if p.name == "http" { "http" } else { "dns" },
                            p.protocol,
                            8000 + p.port,
                        )
                    })
                    .collect();
                let mk = |ep: &(u8, bool, usize, bool), fam: IpFamily| -> Endpoint {
                    let addr = match fam {
                        IpFamily::V4 => format!("10.244.{}.{}", idx, ep.0),
                        IpFamily::V6 => format!("fd00:10:244:{}::{}", idx, ep.0),
                    };
                    let mut e = endpoint(&addr, ep.1, ["node-a", "node-b"][ep.2]);
                    e.terminating = ep.3;
                    e.serving = ep.1 || ep.3;
                    e
                };
                let (first, second): (Vec<_>, Vec<_>) = eps
                    .iter()
                    .enumerate()
                    .partition(|(i, _)| !split || i % 2 == 0);
                let mut slices = vec![slice(
                    ns,
                    &format!("{name}-1"),
                    name,
                    IpFamily::V4,
                    &slice_ports,
                    first.iter().map(|(_, e)| mk(e, IpFamily::V4)).collect(),
                )];
                slices.push(slice(
                    ns,
                    &format!("{name}-2"),
                    name,
                    IpFamily::V4,
                    &slice_ports,
                    second.iter().map(|(_, e)| mk(e, IpFamily::V4)).collect(),
                ));
                slices.push(slice(
                    ns,
                    &format!("{name}-6"),
                    name,
                    IpFamily::V6,
                    &slice_ports,
                    eps.iter().map(|e| mk(e, IpFamily::V6)).collect(),
                ));
                (svc, slices)
            },
        )
}

pub fn arb_state() -> impl Strategy<Value = (Vec<Service>, Vec<EndpointSlice>)> {
    (
        arb_service(0),
        arb_service(1),
        arb_service(2),
        arb_service(3),
        arb_service(4),
        prop::collection::vec(any::<bool>(), 5),
    )
        .prop_map(|(a, b, c, d, e, keep)| {
            let mut services = Vec::new();
            let mut slices = Vec::new();
            for ((svc, sl), k) in [a, b, c, d, e].into_iter().zip(keep) {
                if k {
                    services.push(svc);
                }
                slices.extend(sl);
            }
            (services, slices)
        })
}
