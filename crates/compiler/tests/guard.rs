//! What the compiler refuses because of the node it compiles for: service addresses that are
//! the node's own, and service CIDRs that would cover the node or the pod network.

mod common;

use common::*;
use rudder_compiler::explain::{Query, Verdict, explain};
use rudder_compiler::{Config, NodeContext};
use rudder_model::{IpFamily, Protocol, ServiceType};

/// The node: primary IPs 172.18.0.2 and fc00::2, node ports also on 192.168.9.9, pods in
/// 10.244.0.0/16.
fn the_node() -> NodeContext {
    let mut n = local(
        node("node-a", &["172.18.0.2", "fc00::2", "192.168.9.9"]),
        &["10.244.0.0/16"],
    );
    n.ips = vec![ip("172.18.0.2"), ip("fc00::2")];
    n
}

fn web_slices() -> Vec<rudder_model::EndpointSlice> {
    let mut out = Vec::new();
    for name in ["web", "dual", "lb"] {
        out.push(slice(
            "ns",
            &format!("{name}-1"),
            name,
            IpFamily::V4,
            &[("http", Protocol::Tcp, 8080)],
            vec![endpoint("10.244.1.5", true, "node-b")],
        ));
        out.push(slice(
            "ns",
            &format!("{name}-2"),
            name,
            IpFamily::V6,
            &[("http", Protocol::Tcp, 8080)],
            vec![endpoint("fd00:10:244::5", true, "node-b")],
        ));
    }
    out
}

/// The elements of a ruleset (unused classes stay until the next full sync, so chains may
/// differ between an updated ruleset and a full compile).
fn elements(rs: &rudder_nft::Ruleset) -> Vec<String> {
    rs.render()
        .lines()
        .filter(|l| l.starts_with("add element"))
        .map(str::to_owned)
        .collect()
}

fn labels(problems: &[rudder_model::Problem]) -> Vec<String> {
    problems
        .iter()
        .map(|p| format!("{}/{} {}", p.namespace, p.name, p.reason.label()))
        .collect()
}

#[test]
fn a_cluster_ip_that_is_a_node_address_refuses_the_whole_service_in_every_family() {
    let mut web = service("ns", "web", &["10.96.0.10"]);
    web.ports = vec![port("http", Protocol::Tcp, 80, None)];
    // Dual-stack, the IPv6 ClusterIP is the node's: nothing of it is programmed, in IPv4
    // either, and the problem is reported once.
    let mut dual = service("ns", "dual", &["10.96.0.11", "fc00::2"]);
    dual.service_type = ServiceType::NodePort;
    dual.ports = vec![port("http", Protocol::Tcp, 80, Some(30080))];
    let st = state(vec![web, dual], web_slices());
    let mut c = compiler(the_node(), Config::default());
    let tx = c.full(&st).render();
    assert!(tx.contains("10.96.0.10 . tcp . 80"), "{tx}");
    assert!(!tx.contains("10.96.0.11"), "{tx}");
    assert!(!tx.contains("fc00::2 . tcp"), "{tx}");
    assert!(!tx.contains("30080"), "{tx}");
    assert!(!tx.contains("cluster-ips { fc00::2"), "{tx}");
    let problems = c.take_problems();
    assert_eq!(labels(&problems), ["ns/dual cluster_ip_is_node_ip"]);
    assert_eq!(
        problems[0].to_string(),
        "Service ns/dual: clusterIP fc00::2 is an address of this node: refused"
    );
    // Taken: the next call has nothing until the next compile.
    assert!(c.take_problems().is_empty());
}

#[test]
fn external_and_load_balancer_ips_that_are_node_addresses_lose_only_that_frontend() {
    let mut lb = service("ns", "lb", &["10.96.0.20", "fd00::20"]);
    lb.service_type = ServiceType::LoadBalancer;
    lb.ports = vec![port("http", Protocol::Tcp, 80, Some(30090))];
    lb.external_ips = vec![ip("172.18.0.2"), ip("203.0.113.1"), ip("fc00::2")];
    // 192.168.9.9 is a node-port address; source ranges must not mention it either.
    lb.load_balancer_ips = vec![ip("192.168.9.9"), ip("198.51.100.7")];
    lb.load_balancer_source_ranges = vec!["10.0.0.0/8".parse().unwrap()];
    let st = state(vec![lb], web_slices());
    let mut c = compiler(the_node(), Config::default());
    let rs = {
        c.full(&st);
        c.ruleset().expect("applies").render()
    };
    for kept in [
        "10.96.0.20 . tcp . 80",
        "203.0.113.1 . tcp . 80",
        "198.51.100.7 . tcp . 80",
        "fd00::20 . tcp . 80",
        "tcp . 30090",
    ] {
        assert!(rs.contains(kept), "{kept} missing:\n{rs}");
    }
    for refused in ["172.18.0.2 . tcp", "192.168.9.9 . tcp", "fc00::2 . tcp"] {
        assert!(!rs.contains(refused), "{refused} programmed:\n{rs}");
    }
    assert_eq!(
        labels(&c.take_problems()),
        [
            "ns/lb external_ip_is_node_ip",
            "ns/lb ingress_ip_is_node_ip",
            "ns/lb external_ip_is_node_ip"
        ]
    );
}

#[test]
fn updates_report_what_the_changed_services_have_and_match_a_full_compile() {
    let mut web = service("ns", "web", &["10.96.0.10"]);
    web.service_type = ServiceType::NodePort;
    web.ports = vec![port("http", Protocol::Tcp, 80, Some(30080))];
    let mut st = state(vec![web.clone()], web_slices());
    let mut c = compiler(the_node(), Config::default());
    let mut kernel = rudder_nft::Ruleset::new();
    kernel.apply(&c.full(&st)).unwrap();
    assert!(c.take_problems().is_empty());

    // The service gains the node's address as an external IP, then as its ClusterIP.
    let mut ext = web.clone();
    ext.external_ips = vec![ip("172.18.0.2"), ip("203.0.113.9")];
    st.upsert_service(ext);
    let dirty = st.take_dirty();
    kernel.apply(&c.update(&st, &dirty)).unwrap();
    assert_eq!(
        labels(&c.take_problems()),
        ["ns/web external_ip_is_node_ip"]
    );
    let mut fresh = compiler(the_node(), Config::default());
    fresh.full(&st);
    assert_eq!(elements(&kernel), elements(&fresh.ruleset().unwrap()));

    let mut own = web.clone();
    own.cluster_ips = vec![ip("172.18.0.2")];
    st.upsert_service(own);
    let dirty = st.take_dirty();
    let tx = c.update(&st, &dirty);
    let text = tx.render();
    assert!(
        text.contains("delete element ip rudder service-nodeports { tcp . 30080 }"),
        "{text}"
    );
    kernel.apply(&tx).unwrap();
    assert_eq!(labels(&c.take_problems()), ["ns/web cluster_ip_is_node_ip"]);
    let mut fresh = compiler(the_node(), Config::default());
    fresh.full(&st);
    assert_eq!(elements(&kernel), elements(&fresh.ruleset().unwrap()));
}

#[test]
fn service_cidrs_that_cover_the_node_or_the_pods_get_no_drop_rule() {
    let mut n = the_node();
    n.service_cidrs = vec![
        "10.96.0.0/12".parse().unwrap(),
        "172.18.0.0/16".parse().unwrap(),
        "10.244.0.0/24".parse().unwrap(),
        "0.0.0.0/0".parse().unwrap(),
        "::/0".parse().unwrap(),
        "fd00:10:96::/112".parse().unwrap(),
    ];
    let mut c = compiler(n, Config::default());
    let tx = c.full(&state(vec![], vec![])).render();
    assert!(tx.contains("ip daddr 10.96.0.0/12 drop"), "{tx}");
    assert!(tx.contains("ip6 daddr fd00:10:96::/112 drop"), "{tx}");
    for refused in ["172.18.0.0/16", "10.244.0.0/24", "0.0.0.0/0", "::/0"] {
        assert!(!tx.contains(refused), "{refused}:\n{tx}");
    }
    let got: Vec<String> = c
        .take_problems()
        .iter()
        .map(|p| p.reason.label().to_owned())
        .collect();
    assert_eq!(
        got,
        [
            "service_cidr_covers_node",
            "service_cidr_overlaps_pod_network",
            "service_cidr_too_broad",
            "service_cidr_too_broad"
        ]
    );
}

#[test]
fn explain_agrees_with_the_compiler_about_refused_frontends() {
    let mut lb = service("ns", "lb", &["10.96.0.20"]);
    lb.external_ips = vec![ip("172.18.0.2")];
    lb.ports = vec![port("http", Protocol::Tcp, 80, None)];
    let mut own = service("ns", "web", &["192.168.9.9"]);
    own.ports = vec![port("http", Protocol::Tcp, 80, None)];
    let st = state(vec![lb, own], web_slices());
    let n = the_node();
    for to in ["172.18.0.2", "192.168.9.9"] {
        for port in [80, 81] {
            let q = Query {
                to: ip(to),
                port,
                protocol: Protocol::Tcp,
                from: Some(ip("203.0.113.50")),
                via: None,
            };
            let e = explain(&st, &Config::default(), &n, &q);
            assert!(
                matches!(e.verdict, Verdict::NotAService(_)),
                "{to}:{port}: {e}"
            );
        }
    }
}
