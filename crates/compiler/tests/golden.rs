//! Golden rulesets for each service shape. Run with `RUDDER_BLESS=1` to rewrite the files in
//! `tests/golden/` after an intended change, then review the diff.

mod common;

use common::*;
use rudder_compiler::{Config, NodeContext, NodePortIps};
use rudder_model::{IpFamily, Protocol, ServiceType};

fn check(name: &str, actual: &str) {
    let path = format!("{}/tests/golden/{name}.nft", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("RUDDER_BLESS").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if expected != actual {
        let mut msg = format!("golden mismatch for {name} (RUDDER_BLESS=1 rewrites it):\n");
        for (i, (e, a)) in expected.lines().zip(actual.lines()).enumerate() {
            if e != a {
                msg.push_str(&format!(
                    "first difference at line {}:\n- {e}\n+ {a}\n",
                    i + 1
                ));
                break;
            }
        }
        msg.push_str(&format!(
            "expected {} lines, got {}\n",
            expected.lines().count(),
            actual.lines().count()
        ));
        panic!("{msg}");
    }
}

fn render(
    st: &rudder_model::ProxyState,
    node_ctx: NodeContext,
    config: Config,
    families: &[IpFamily],
) -> String {
    let mut c = rudder_compiler::Compiler::new(families, config, node_ctx);
    c.full(st);
    let rs = c.ruleset().expect("compiled ruleset applies");
    rs.render()
}

#[test]
fn empty_cluster_is_just_the_skeleton() {
    let st = state(vec![], vec![]);
    let out = render(
        &st,
        node("node-a", &["172.18.0.2"]),
        Config::default(),
        &[IpFamily::V4],
    );
    check("empty", &out);
}

#[test]
fn clusterip_nodeport_loadbalancer_and_external_ip() {
    let mut svc = service("default", "nginx-service", &["10.96.100.100"]);
    svc.service_type = ServiceType::LoadBalancer;
    svc.ports = vec![port("http", Protocol::Tcp, 80, Some(30001))];
    svc.load_balancer_ips = vec![ip("192.168.122.111")];
    svc.external_ips = vec![ip("203.0.113.7")];
    let sl = slice(
        "default",
        "nginx-service-abc",
        "nginx-service",
        IpFamily::V4,
        &[("http", Protocol::Tcp, 8080)],
        vec![
            endpoint("10.244.1.2", true, "node-a"),
            endpoint("10.244.2.2", true, "node-b"),
            endpoint("10.244.3.2", true, "node-b"),
            endpoint("10.244.3.3", false, "node-b"),
        ],
    );
    let st = state(vec![svc], vec![sl]);
    let config = Config::default();
    let out = render(
        &st,
        local(node("node-a", &["172.18.0.2"]), &["10.244.0.0/16"]),
        config,
        &[IpFamily::V4],
    );
    check("loadbalancer", &out);
}

#[test]
fn no_endpoints_reject_and_multi_slice_udp_sctp() {
    let mut empty = service("ns", "empty", &["10.96.0.5"]);
    empty.service_type = ServiceType::NodePort;
    empty.ports = vec![port("", Protocol::Tcp, 80, Some(30080))];
    let mut multi = service("ns", "multi", &["10.96.0.6"]);
    multi.ports = vec![
        port("dns", Protocol::Udp, 53, None),
        port("sctp", Protocol::Sctp, 9999, None),
    ];
    let s1 = slice(
        "ns",
        "multi-1",
        "multi",
        IpFamily::V4,
        &[("dns", Protocol::Udp, 5353)],
        vec![endpoint("10.244.1.5", true, "node-a")],
    );
    let s2 = slice(
        "ns",
        "multi-2",
        "multi",
        IpFamily::V4,
        &[("dns", Protocol::Udp, 5353), ("sctp", Protocol::Sctp, 9999)],
        vec![endpoint("10.244.2.5", true, "node-b")],
    );
    let st = state(vec![empty, multi], vec![s1, s2]);
    let config = Config {
        masquerade_all: true,
        ..Config::default()
    };
    let node_all = NodeContext::new("node-a".into(), NodePortIps::All);
    let out = render(&st, node_all, config, &[IpFamily::V4]);
    check("reject-multislice", &out);
}

#[test]
fn dual_stack_service() {
    let mut svc = service("ns", "dual", &["10.96.0.9", "fd00:10:96::9"]);
    svc.service_type = ServiceType::NodePort;
    svc.ports = vec![port("web", Protocol::Tcp, 443, Some(30443))];
    let v4 = slice(
        "ns",
        "dual-v4",
        "dual",
        IpFamily::V4,
        &[("web", Protocol::Tcp, 8443)],
        vec![endpoint("10.244.1.9", true, "node-a")],
    );
    let v6 = slice(
        "ns",
        "dual-v6",
        "dual",
        IpFamily::V6,
        &[("web", Protocol::Tcp, 8443)],
        vec![
            endpoint("fd00:10:244:1::9", true, "node-a"),
            endpoint("fd00:10:244:2::9", true, "node-b"),
        ],
    );
    let st = state(vec![svc], vec![v4, v6]);
    let config = Config::default();
    let out = render(
        &st,
        {
            let mut n = local(
                node("node-a", &["172.18.0.2", "fc00::2"]),
                &["10.244.0.0/16", "fd00:10:244::/56"],
            );
            n.service_cidrs = vec![
                "10.96.0.0/12".parse().unwrap(),
                "fd00:10:96::/112".parse().unwrap(),
            ];
            n
        },
        config,
        &[IpFamily::V4, IpFamily::V6],
    );
    check("dual-stack", &out);
}

/// externalTrafficPolicy: Local on a LoadBalancer: one endpoint on this node, one elsewhere;
/// and a second such service with no endpoint on this node (drop, but short-circuits remain).
#[test]
fn external_traffic_policy_local() {
    let mk = |name: &str, ip: &str, lb: &str, np: u16| {
        let mut s = service("ns", name, &[ip]);
        s.service_type = ServiceType::LoadBalancer;
        s.external_traffic_policy = rudder_model::TrafficPolicy::Local;
        s.load_balancer_ips = vec![common::ip(lb)];
        s.ports = vec![port("http", Protocol::Tcp, 80, Some(np))];
        s
    };
    let a = mk("local-a", "10.96.0.20", "192.168.122.20", 30020);
    let b = mk("local-b", "10.96.0.21", "192.168.122.21", 30021);
    let sa = slice(
        "ns",
        "local-a-1",
        "local-a",
        IpFamily::V4,
        &[("http", Protocol::Tcp, 8080)],
        vec![
            endpoint("10.244.1.2", true, "node-a"),
            endpoint("10.244.2.2", true, "node-b"),
        ],
    );
    let sb = slice(
        "ns",
        "local-b-1",
        "local-b",
        IpFamily::V4,
        &[("http", Protocol::Tcp, 8080)],
        vec![endpoint("10.244.2.3", true, "node-b")],
    );
    let st = state(vec![a, b], vec![sa, sb]);
    let out = render(
        &st,
        local(node("node-a", &["172.18.0.2"]), &["10.244.0.0/16"]),
        Config::default(),
        &[IpFamily::V4],
    );
    check("external-local", &out);
}

/// internalTrafficPolicy: Local, with and without a local endpoint; topology hints; and pod
/// traffic recognised by bridge interface.
#[test]
fn internal_traffic_policy_local_topology_and_bridge_detection() {
    let mut a = service("ns", "itp", &["10.96.0.30"]);
    a.internal_traffic_policy = rudder_model::TrafficPolicy::Local;
    a.ports = vec![port("http", Protocol::Tcp, 80, None)];
    let mut b = service("ns", "itp-none", &["10.96.0.31"]);
    b.internal_traffic_policy = rudder_model::TrafficPolicy::Local;
    b.ports = vec![port("http", Protocol::Tcp, 80, None)];
    let mut c = service("ns", "zoned", &["10.96.0.32"]);
    c.ports = vec![port("http", Protocol::Tcp, 80, None)];
    let sa = slice(
        "ns",
        "itp-1",
        "itp",
        IpFamily::V4,
        &[("http", Protocol::Tcp, 8080)],
        vec![
            endpoint("10.244.1.5", true, "node-a"),
            endpoint("10.244.2.5", true, "node-b"),
        ],
    );
    let sb = slice(
        "ns",
        "itp-none-1",
        "itp-none",
        IpFamily::V4,
        &[("http", Protocol::Tcp, 8080)],
        vec![endpoint("10.244.2.6", true, "node-b")],
    );
    let zoned = |addr: &str, node: &str, zone: &str| {
        let mut e = endpoint(addr, true, node);
        e.zone_hints = Some(vec![zone.to_string()]);
        e
    };
    let sc = slice(
        "ns",
        "zoned-1",
        "zoned",
        IpFamily::V4,
        &[("http", Protocol::Tcp, 8080)],
        vec![
            zoned("10.244.1.7", "node-a", "zone-a"),
            zoned("10.244.2.7", "node-b", "zone-b"),
            zoned("10.244.3.7", "node-c", "zone-a"),
        ],
    );
    let st = state(vec![a, b, c], vec![sa, sb, sc]);
    let mut n = node("node-a", &["172.18.0.2"]);
    n.zone = Some("zone-a".into());
    n.local_detector =
        rudder_compiler::LocalDetector::Bridge(rudder_nft::IfaceName::new("cbr0").unwrap());
    let out = render(&st, n, Config::default(), &[IpFamily::V4]);
    check("internal-local-topology", &out);
}

/// loadBalancerSourceRanges: the LB IP is filtered (node port and external IP are not); a
/// range containing the node IP also allows the LB IPs; `0.0.0.0/0` means no filtering.
#[test]
fn load_balancer_source_ranges() {
    let mk = |name: &str, ip: &str, lb: &str, np: u16, ranges: &[&str]| {
        let mut s = service("ns", name, &[ip]);
        s.service_type = ServiceType::LoadBalancer;
        s.load_balancer_ips = vec![common::ip(lb)];
        s.external_ips = vec![common::ip("203.0.113.9")];
        s.load_balancer_source_ranges = ranges.iter().map(|r| r.parse().unwrap()).collect();
        s.ports = vec![port("http", Protocol::Tcp, 80, Some(np))];
        s
    };
    let a = mk(
        "fw",
        "10.96.0.40",
        "192.168.122.40",
        30040,
        &["10.0.0.0/8", "172.18.0.0/24"],
    );
    let b = mk(
        "open",
        "10.96.0.41",
        "192.168.122.41",
        30041,
        &["0.0.0.0/0"],
    );
    let eps = |svc: &str| {
        slice(
            "ns",
            &format!("{svc}-1"),
            svc,
            IpFamily::V4,
            &[("http", Protocol::Tcp, 8080)],
            vec![endpoint("10.244.1.2", true, "node-a")],
        )
    };
    let st = state(vec![a, b], vec![eps("fw"), eps("open")]);
    let mut n = node("node-a", &["172.18.0.2"]);
    n.ips = vec![common::ip("172.18.0.2")];
    let out = render(&st, n, Config::default(), &[IpFamily::V4]);
    check("source-ranges", &out);
}

/// ClientIP session affinity: per-port chains with per-endpoint timeout sets, shared by the
/// ClusterIP, the node port and the load balancer IP.
#[test]
fn session_affinity() {
    let mut s = service("ns", "sticky", &["10.96.0.70"]);
    s.service_type = ServiceType::LoadBalancer;
    s.load_balancer_ips = vec![common::ip("192.168.122.70")];
    s.session_affinity_timeout = Some(10800);
    s.ports = vec![port("http", Protocol::Tcp, 80, Some(30070))];
    let sl = slice(
        "ns",
        "sticky-1",
        "sticky",
        IpFamily::V4,
        &[("http", Protocol::Tcp, 8080)],
        vec![
            endpoint("10.244.1.2", true, "node-a"),
            endpoint("10.244.2.2", true, "node-b"),
        ],
    );
    let st = state(vec![s], vec![sl]);
    let out = render(
        &st,
        local(node("node-a", &["172.18.0.2"]), &["10.244.0.0/16"]),
        Config::default(),
        &[IpFamily::V4],
    );
    check("affinity", &out);
}

/// The `firewall-allow` elements of the compiled ruleset, rendered (`key`), in order.
fn firewall_allow(c: &rudder_compiler::Compiler) -> Vec<String> {
    let rs = c.ruleset().expect("compiled ruleset applies");
    rs.tables
        .values()
        .flat_map(|t| t.sets.get(&rudder_compiler::SetId::FirewallAllow.name()))
        .flat_map(|s| s.elements.keys().map(|k| k.to_string()))
        .collect()
}

/// Overlapping `loadBalancerSourceRanges`, and ranges that contain the load balancer IP that
/// is added when the node is inside a range, would be overlapping elements of one interval
/// set, which the kernel refuses (the whole batch, every service with it). They are reduced
/// to the minimal disjoint prefixes covering the same sources, in both families.
#[test]
fn overlapping_source_ranges_become_disjoint_prefixes() {
    let mut s = service("ns", "fw", &["10.96.0.40", "fd00::40"]);
    s.service_type = ServiceType::LoadBalancer;
    s.load_balancer_ips = vec![common::ip("192.168.122.40"), common::ip("2001:db8::40")];
    s.load_balancer_source_ranges = [
        "10.1.0.0/16",
        "10.0.0.0/8",
        "10.0.0.1/32",
        "172.18.0.0/24",
        "192.168.122.0/24",
        "fd00:1::/32",
        "fd00::/8",
        "2001:db8::/64",
    ]
    .iter()
    .map(|r| r.parse().unwrap())
    .collect();
    s.ports = vec![port("http", Protocol::Tcp, 80, None)];
    let eps = |family, addr| {
        slice(
            "ns",
            &format!("fw-{family:?}"),
            "fw",
            family,
            &[("http", Protocol::Tcp, 8080)],
            vec![endpoint(addr, true, "node-a")],
        )
    };
    let slices = vec![
        eps(IpFamily::V4, "10.244.1.2"),
        eps(IpFamily::V6, "fd00:244::2"),
    ];
    let st = state(vec![s], slices);
    let mut n = node("node-a", &["172.18.0.2"]);
    n.ips = vec![common::ip("172.18.0.2"), common::ip("fd00::2")];
    let mut c = rudder_compiler::Compiler::new(&[IpFamily::V4, IpFamily::V6], Config::default(), n);
    c.full(&st);
    assert_eq!(
        firewall_allow(&c),
        [
            "192.168.122.40 . tcp . 80 . 10.0.0.0/8",
            "192.168.122.40 . tcp . 80 . 172.18.0.0/24",
            "192.168.122.40 . tcp . 80 . 192.168.122.0/24",
            "2001:db8::40 . tcp . 80 . 2001:db8::/64",
            "2001:db8::40 . tcp . 80 . fd00::/8",
        ]
    );
}

#[test]
fn localhost_node_ports_reject_what_the_proxy_does_not_serve() {
    // A TCP and a UDP node port (both with endpoints) and a UDP node port without endpoints,
    // with the gate on and the localhost proxy on for IPv4 only: new UDP/SCTP flows to
    // 127.0.0.0/8 on those ports are rejected in nat-output, TCP goes to the proxy; IPv6,
    // where the gate is on without the proxy, rejects every protocol on ::1 (kube-proxy
    // 1.37).
    let mut svc = service("ns", "mixed", &["10.96.0.7", "fd00:10:96::7"]);
    svc.service_type = ServiceType::NodePort;
    svc.ports = vec![
        port("web", Protocol::Tcp, 80, Some(30080)),
        port("dns", Protocol::Udp, 53, Some(30053)),
    ];
    let mut quiet = service("ns", "quiet", &["10.96.0.8"]);
    quiet.service_type = ServiceType::NodePort;
    quiet.ports = vec![port("dns", Protocol::Udp, 53, Some(30054))];
    let v4 = slice(
        "ns",
        "mixed-v4",
        "mixed",
        IpFamily::V4,
        &[("web", Protocol::Tcp, 8080), ("dns", Protocol::Udp, 5353)],
        vec![endpoint("10.244.1.7", true, "node-a")],
    );
    let st = state(vec![svc, quiet], vec![v4]);
    let render_with = |localhost_node_ports: Vec<IpFamily>, localhost_gate: bool| {
        render(
            &st,
            node("node-a", &["172.18.0.2", "fc00::2"]),
            Config {
                localhost_node_ports,
                localhost_gate,
                ..Config::default()
            },
            &[IpFamily::V4, IpFamily::V6],
        )
    };
    let loopback_rules = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.contains("nat-output") && l.contains("daddr"))
            .map(|l| {
                let family = if l.starts_with("add rule ip6 ") {
                    "ip6"
                } else {
                    "ip"
                };
                let what = if l.contains("meta l4proto != tcp") {
                    "not tcp"
                } else {
                    "every protocol"
                };
                // A plain set: kernels before 6.x refuse a lookup without a verdict in a
                // verdict map (EINVAL on 6.1).
                let set = if l.contains("@node-ports ") {
                    "node-ports"
                } else {
                    "another set"
                };
                format!("{family} {what} {set}")
            })
            .collect()
    };
    let out = render_with(vec![IpFamily::V4], true);
    assert_eq!(
        loopback_rules(&out),
        ["ip not tcp node-ports", "ip6 every protocol node-ports"]
    );
    assert_eq!(out.matches("localhost node ports are TCP only").count(), 1);
    assert_eq!(out.matches("no localhost node port proxy").count(), 1);
    // Every node port is in the set, the ones without endpoints too.
    assert!(
        out.contains("add element ip rudder node-ports { tcp . 30080, udp . 30053, udp . 30054 }"),
        "{out}"
    );
    check("localhost-nodeports", &out);
    // The gate on and the proxy nowhere (`--nodeport-addresses primary`, the default): every
    // protocol is rejected on loopback node ports in both families.
    assert_eq!(
        loopback_rules(&render_with(vec![], true)),
        [
            "ip every protocol node-ports",
            "ip6 every protocol node-ports"
        ]
    );
    // The gate off: loopback traffic is left alone.
    assert!(loopback_rules(&render_with(vec![], false)).is_empty());
}
