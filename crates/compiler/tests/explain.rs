//! `explain`: the report follows the same decisions as the compiled rules.

mod common;

use std::net::IpAddr;

use common::*;
use rudder_compiler::explain::{Explanation, Frontend, Query, Verdict, Via, explain};
use rudder_compiler::{Config, NodeContext};
use rudder_model::{Cidr, IpFamily, Protocol, ProxyState, ServiceType, TrafficPolicy};

const POD_CIDR: &str = "10.244.0.0/16";

fn node_a() -> NodeContext {
    let mut n = local(node("node-a", &["192.0.2.1"]), &[POD_CIDR]);
    n.ips = vec![ip("192.0.2.1")];
    n
}

/// `ns/web`: ClusterIP 10.96.0.1:80, node port 30080, LB IP 198.51.100.1; endpoints
/// 10.244.1.2 (node-a) and 10.244.2.2 (node-b), both ready, on port 8080.
fn web(f: impl FnOnce(&mut rudder_model::Service)) -> ProxyState {
    let mut s = service("ns", "web", &["10.96.0.1"]);
    s.service_type = ServiceType::LoadBalancer;
    s.load_balancer_ips = vec![ip("198.51.100.1")];
    s.ports = vec![port("http", Protocol::Tcp, 80, Some(30080))];
    f(&mut s);
    let sl = slice(
        "ns",
        "web-1",
        "web",
        IpFamily::V4,
        &[("http", Protocol::Tcp, 8080)],
        vec![
            endpoint("10.244.1.2", true, "node-a"),
            endpoint("10.244.2.2", true, "node-b"),
        ],
    );
    state(vec![s], vec![sl])
}

fn ask(st: &ProxyState, to: &str, port: u16, from: Option<&str>, via: Option<Via>) -> Explanation {
    explain(
        st,
        &Config::default(),
        &node_a(),
        &Query {
            to: ip(to),
            port,
            protocol: Protocol::Tcp,
            from: from.map(ip),
            via,
        },
    )
}

fn addrs(e: &Explanation) -> Vec<IpAddr> {
    e.candidates.iter().map(|c| c.address).collect()
}

#[test]
fn cluster_ip_from_a_pod_and_from_outside() {
    let st = web(|_| {});
    let e = ask(&st, "10.96.0.1", 80, Some("10.244.1.9"), None);
    assert_eq!(e.via, Via::Pod);
    assert_eq!(
        e.matched,
        Some(("ns/web:http/tcp".into(), Frontend::ClusterIp))
    );
    assert_eq!(addrs(&e), vec![ip("10.244.1.2"), ip("10.244.2.2")]);
    assert_eq!(e.masquerade.as_ref().map(|m| m.0), Some(false));
    assert_eq!(e.verdict, Verdict::Dnat);
    let text = e.to_string();
    assert!(
        text.contains("each chosen with probability 1/2 (50.0%)"),
        "{text}"
    );
    assert!(text.contains("10.244.1.2:8080"), "{text}");

    let e = ask(&st, "10.96.0.1", 80, Some("203.0.113.7"), None);
    assert_eq!(e.via, Via::External);
    assert_eq!(e.masquerade.as_ref().map(|m| m.0), Some(true));
    // The pod that is an endpoint itself: hairpin.
    let e = ask(&st, "10.96.0.1", 80, Some("10.244.1.2"), None);
    assert!(e.hairpin.is_some());
}

#[test]
fn internal_local_without_local_endpoints_drops() {
    let st = web(|s| s.internal_traffic_policy = TrafficPolicy::Local);
    let e = ask(&st, "10.96.0.1", 80, Some("10.244.1.9"), None);
    assert_eq!(addrs(&e), vec![ip("10.244.1.2")], "only node-a's endpoint");
    // The same from node-b's point of view would have only 10.244.2.2; with no endpoint on
    // this node the packet is dropped.
    let mut s2 = web(|s| s.internal_traffic_policy = TrafficPolicy::Local);
    s2.upsert_slice(slice(
        "ns",
        "web-1",
        "web",
        IpFamily::V4,
        &[("http", Protocol::Tcp, 8080)],
        vec![endpoint("10.244.2.2", true, "node-b")],
    ));
    let e = ask(&s2, "10.96.0.1", 80, Some("10.244.1.9"), None);
    assert!(matches!(e.verdict, Verdict::Drop(_)), "{e}");
}

#[test]
fn external_local_keeps_the_source_and_short_circuits_pods_and_the_node() {
    let st = web(|s| {
        s.external_traffic_policy = TrafficPolicy::Local;
        s.health_check_node_port = Some(32000);
    });
    // From outside to the node port: local endpoints only, source kept.
    let e = ask(&st, "192.0.2.1", 30080, Some("203.0.113.7"), None);
    assert_eq!(e.matched.as_ref().map(|m| m.1), Some(Frontend::NodePort));
    assert_eq!(addrs(&e), vec![ip("10.244.1.2")]);
    assert_eq!(e.masquerade.as_ref().map(|m| m.0), Some(false));
    assert!(e.policy.iter().any(|p| p.contains("32000")), "{e}");
    // From a pod: all endpoints, not masqueraded.
    let e = ask(&st, "198.51.100.1", 80, Some("10.244.1.9"), None);
    assert_eq!(
        e.matched.as_ref().map(|m| m.1),
        Some(Frontend::LoadBalancerIp)
    );
    assert_eq!(addrs(&e).len(), 2);
    assert_eq!(e.masquerade.as_ref().map(|m| m.0), Some(false));
    // From the node itself: all endpoints, masqueraded.
    let e = ask(&st, "198.51.100.1", 80, None, Some(Via::Node));
    assert_eq!(addrs(&e).len(), 2);
    assert_eq!(e.masquerade.as_ref().map(|m| m.0), Some(true));
    // externalTrafficPolicy: Cluster masquerades everything external.
    let st = web(|_| {});
    let e = ask(&st, "192.0.2.1", 30080, Some("203.0.113.7"), None);
    assert_eq!(addrs(&e).len(), 2);
    assert_eq!(e.masquerade.as_ref().map(|m| m.0), Some(true));
}

#[test]
fn source_ranges_affinity_and_fallbacks() {
    let st = web(|s| {
        s.load_balancer_source_ranges = vec!["203.0.113.0/24".parse::<Cidr>().expect("cidr")];
        s.session_affinity_timeout = Some(600);
    });
    let e = ask(&st, "198.51.100.1", 80, Some("198.18.0.1"), None);
    assert!(matches!(e.verdict, Verdict::Drop(_)), "{e}");
    let e = ask(&st, "198.51.100.1", 80, Some("203.0.113.9"), None);
    assert_eq!(e.verdict, Verdict::Dnat);
    assert!(
        e.affinity.as_deref().is_some_and(|a| a.contains("600")),
        "{e}"
    );
    // Source ranges do not apply to the ClusterIP.
    let e = ask(&st, "10.96.0.1", 80, Some("198.18.0.1"), None);
    assert_eq!(e.verdict, Verdict::Dnat);

    // Only terminating endpoints left: they are used, and the report says so.
    let mut st = web(|_| {});
    let mut term = endpoint("10.244.1.2", false, "node-a");
    term.serving = true;
    term.terminating = true;
    st.upsert_slice(slice(
        "ns",
        "web-1",
        "web",
        IpFamily::V4,
        &[("http", Protocol::Tcp, 8080)],
        vec![term],
    ));
    let e = ask(&st, "10.96.0.1", 80, Some("10.244.1.9"), None);
    assert_eq!(addrs(&e), vec![ip("10.244.1.2")]);
    assert!(e.policy.iter().any(|p| p.contains("terminating")), "{e}");
}

#[test]
fn unmatched_packets() {
    let st = web(|_| {});
    // No endpoints at all: rejected.
    let mut empty = web(|_| {});
    empty.upsert_slice(slice(
        "ns",
        "web-1",
        "web",
        IpFamily::V4,
        &[("http", Protocol::Tcp, 8080)],
        vec![],
    ));
    assert!(matches!(
        ask(&empty, "10.96.0.1", 80, None, None).verdict,
        Verdict::Reject(_)
    ));
    // A ClusterIP's missing port: rejected.
    assert!(matches!(
        ask(&st, "10.96.0.1", 81, None, None).verdict,
        Verdict::Reject(_)
    ));
    // Another protocol on the same port is another port.
    let e = explain(
        &st,
        &Config::default(),
        &node_a(),
        &Query {
            to: ip("10.96.0.1"),
            port: 80,
            protocol: Protocol::Udp,
            from: None,
            via: None,
        },
    );
    assert!(matches!(e.verdict, Verdict::Reject(_)), "{e}");
    // Not a service address: untouched, or dropped inside a service CIDR.
    assert!(matches!(
        ask(&st, "10.96.0.2", 80, None, None).verdict,
        Verdict::NotAService(_)
    ));
    let mut n = node_a();
    n.service_cidrs = vec!["10.96.0.0/16".parse().expect("cidr")];
    let e = explain(
        &st,
        &Config::default(),
        &n,
        &Query {
            to: ip("10.96.0.2"),
            port: 80,
            protocol: Protocol::Tcp,
            from: None,
            via: None,
        },
    );
    assert!(matches!(e.verdict, Verdict::Drop(_)), "{e}");
    // A node port on an address that is not a node-port address: untouched.
    assert!(matches!(
        ask(&st, "192.0.2.99", 30080, None, None).verdict,
        Verdict::NotAService(_)
    ));
}

#[test]
fn names_from_input_cannot_add_lines_or_escape_codes_to_the_report() {
    let evil = "x\nverdict:     DNAT\u{1b}[2J\u{9b}31m";
    let mut s = service(evil, evil, &["10.96.0.1"]);
    s.ports = vec![port(evil, Protocol::Tcp, 80, None)];
    let sl = slice(
        evil,
        "web-1",
        evil,
        IpFamily::V4,
        &[(evil, Protocol::Tcp, 8080)],
        vec![endpoint("10.244.2.2", true, evil)],
    );
    let st = state(vec![s], vec![sl]);
    let e = ask(&st, "10.96.0.1", 80, Some("10.244.1.2"), None);
    assert!(e.matched.is_some(), "{e:?}");
    let text = e.to_string();
    assert!(
        !text
            .chars()
            .any(|c| c != '\n' && rudder_model::is_unsafe_char(c)),
        "{text:?}"
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("verdict:")).count(),
        1,
        "{text}"
    );
    assert!(
        text.contains("x\\nverdict:     DNAT\\u{1b}[2J\\u{9b}31m"),
        "{text}"
    );
}
