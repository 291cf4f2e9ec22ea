//! Smoke tests of the end-to-end harness itself: topology wiring, echo servers, clients,
//! nftables inside the node namespace, and cleanup.
//!
//! They need root; set `RUDDER_E2E_SKIP=1` to skip them elsewhere.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use rudder_e2e::client::{self, Proto, RequestError};
use rudder_e2e::{EchoServers, Netns, Topology, nft, serve_pod};

const PORT: u16 = 8080;
const TIMEOUT: Duration = Duration::from_secs(2);

fn topology_with_servers() -> (Topology, Vec<EchoServers>) {
    let topo = Topology::new().expect("create topology");
    let servers = topo
        .pods
        .iter()
        .enumerate()
        .map(|(i, ns)| serve_pod(ns, &topo.pod_name(i), &[PORT]).expect("start echo servers"))
        .collect();
    (topo, servers)
}

fn netns_list() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("run ip netns list");
    assert!(out.status.success(), "ip netns list failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn root_ruleset() -> String {
    let out = Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .expect("run nft list ruleset in the root namespace");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn listed(list: &str, ns: &str) -> bool {
    list.lines()
        .any(|line| line.split_whitespace().next() == Some(ns))
}

#[test]
fn client_reaches_every_pod_directly_over_both_families_and_protocols() {
    if !rudder_e2e::e2e_enabled() {
        return;
    }
    let (topo, servers) = topology_with_servers();
    for (i, server) in servers.iter().enumerate() {
        let want = topo.pod_name(i);
        let addrs = [
            SocketAddr::new(IpAddr::V4(topo.pod_ipv4(i)), PORT),
            SocketAddr::new(IpAddr::V6(topo.pod_ipv6(i)), PORT),
        ];
        for addr in addrs {
            let tcp = client::tcp_request(&topo.client, addr, TIMEOUT);
            assert_eq!(
                tcp.as_deref().ok(),
                Some(want.as_str()),
                "tcp {addr}: {tcp:?}"
            );
            let udp = client::udp_request(&topo.client, addr, TIMEOUT);
            assert_eq!(
                udp.as_deref().ok(),
                Some(want.as_str()),
                "udp {addr}: {udp:?}"
            );
        }
        // Routed, not NATed: the pod sees the client's own addresses.
        let want_peers = [
            IpAddr::V4(topo.client_ipv4()),
            IpAddr::V6(topo.client_ipv6()),
        ];
        let peers: Vec<IpAddr> = server.accepted_peers().iter().map(|p| p.ip()).collect();
        assert_eq!(peers, want_peers, "tcp peers of {want}");
        let udp_peers: Vec<IpAddr> = server.udp_peers().iter().map(|p| p.ip()).collect();
        assert_eq!(udp_peers, want_peers, "udp peers of {want}");
    }
    // Pod to pod works through the node as well.
    let addr = SocketAddr::new(IpAddr::V6(topo.pod_ipv6(2)), PORT);
    let answer = client::tcp_request(&topo.pods[0], addr, TIMEOUT).expect("pod-0 -> pod-2");
    assert_eq!(answer, "pod-2");
    assert_eq!(
        servers[2].accepted_peers().last().map(SocketAddr::ip),
        Some(IpAddr::V6(topo.pod_ipv6(0)))
    );
}

#[test]
fn dnat_in_node_namespace_reaches_pod_zero_through_a_vip() {
    if !rudder_e2e::e2e_enabled() {
        return;
    }
    let (topo, servers) = topology_with_servers();
    let vip4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)), 80);
    let vip6 = SocketAddr::new(
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 1)),
        80,
    );

    // Without rules the VIP is unroutable from the node.
    let before = client::tcp_request(&topo.client, vip4, Duration::from_millis(500));
    assert!(
        before.is_err(),
        "VIP answered before any rule was loaded: {before:?}"
    );

    let ruleset = format!(
        "table ip smoke {{
            chain prerouting {{
                type nat hook prerouting priority dstnat; policy accept;
                ip daddr 10.96.0.1 tcp dport 80 dnat to {pod4}:{PORT}
                ip daddr 10.96.0.1 udp dport 80 dnat to {pod4}:{PORT}
            }}
        }}
        table ip6 smoke6 {{
            chain prerouting {{
                type nat hook prerouting priority dstnat; policy accept;
                ip6 daddr fd00:10:96::1 tcp dport 80 dnat to [{pod6}]:{PORT}
            }}
        }}",
        pod4 = topo.pod_ipv4(0),
        pod6 = topo.pod_ipv6(0),
    );
    nft::load(&topo.node, &ruleset).expect("load DNAT ruleset in node namespace");
    let listed = nft::list_ruleset(&topo.node).expect("list node ruleset");
    assert!(listed.contains("table ip smoke"), "node ruleset: {listed}");
    assert!(
        !root_ruleset().contains("smoke"),
        "the smoke tables leaked into the root namespace"
    );

    assert_eq!(
        client::histogram(&topo.client, vip4, 5, Proto::Tcp),
        BTreeMap::from([("pod-0".to_owned(), 5)])
    );
    assert_eq!(
        client::histogram(&topo.client, vip4, 5, Proto::Udp),
        BTreeMap::from([("pod-0".to_owned(), 5)])
    );
    assert_eq!(
        client::tcp_request(&topo.client, vip6, TIMEOUT).expect("v6 VIP"),
        "pod-0"
    );
    // DNAT only: the pod sees the client's addresses, and the other pods saw nothing.
    assert!(
        servers[0]
            .accepted_peers()
            .iter()
            .all(|p| p.ip() == IpAddr::V4(topo.client_ipv4())
                || p.ip() == IpAddr::V6(topo.client_ipv6())),
        "{:?}",
        servers[0].accepted_peers()
    );
    assert_eq!(servers[0].accepted_peers().len(), 6);
    assert!(servers[1].accepted_peers().is_empty());
    assert!(servers[2].accepted_peers().is_empty());

    nft::flush_ruleset(&topo.node).expect("flush node ruleset");
    let after = client::tcp_request(&topo.client, vip4, Duration::from_millis(500));
    assert!(
        after.is_err(),
        "VIP still answered after flushing: {after:?}"
    );
}

#[test]
fn closed_port_is_refused_quickly() {
    if !rudder_e2e::e2e_enabled() {
        return;
    }
    let (topo, _servers) = topology_with_servers();
    let closed = [
        SocketAddr::new(IpAddr::V4(topo.pod_ipv4(1)), 9),
        SocketAddr::new(IpAddr::V6(topo.pod_ipv6(1)), 9),
    ];
    for addr in closed {
        for proto in [Proto::Tcp, Proto::Udp] {
            let start = Instant::now();
            let result = client::request(&topo.client, addr, proto, Duration::from_secs(3));
            let elapsed = start.elapsed();
            assert!(
                matches!(result, Err(RequestError::Refused)),
                "{proto} {addr}: expected Refused, got {result:?}"
            );
            assert!(
                elapsed < Duration::from_secs(1),
                "{proto} {addr}: took {elapsed:?}"
            );
        }
    }
    // Histograms count failures under their own key.
    assert_eq!(
        client::histogram(&topo.client, closed[0], 3, Proto::Tcp),
        BTreeMap::from([("<refused>".to_owned(), 3)])
    );
}

#[test]
fn namespaces_are_removed_on_drop_and_on_panic() {
    if !rudder_e2e::e2e_enabled() {
        return;
    }
    let topo = Topology::new().expect("create topology");
    let names: Vec<String> = topo.all().map(|ns| ns.name().to_owned()).collect();
    assert_eq!(names.len(), 5);
    let list = netns_list();
    for name in &names {
        assert!(
            listed(&list, name),
            "{name} missing from ip netns list:\n{list}"
        );
    }
    drop(topo);
    let list = netns_list();
    for name in &names {
        assert!(!listed(&list, name), "{name} survived drop:\n{list}");
    }

    // Cleanup also happens while unwinding from a failed test.
    let (tx, rx) = std::sync::mpsc::channel();
    let panicked = std::thread::spawn(move || {
        let ns = Netns::new("rdr-panic").expect("create namespace");
        tx.send(ns.name().to_owned()).expect("send name");
        panic!("deliberate panic with a live namespace");
    })
    .join();
    assert!(panicked.is_err());
    let name = rx.recv().expect("namespace name");
    assert!(!listed(&netns_list(), &name), "{name} survived a panic");
}

#[test]
fn netns_helpers_run_inside_the_namespace() {
    if !rudder_e2e::e2e_enabled() {
        return;
    }
    let ns = Netns::new("rdr-helpers").expect("create namespace");
    let out = ns.exec(&["ip", "-o", "link", "show"]).expect("ip link");
    let links = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        links.lines().count(),
        1,
        "a fresh namespace has only lo: {links}"
    );
    assert!(links.contains("lo:") && links.contains("UP"), "{links}");

    ns.sysctl("net.ipv4.ip_forward", "1").expect("sysctl");
    let out = ns
        .exec(&["cat", "/proc/sys/net/ipv4/ip_forward"])
        .expect("read sysctl");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");

    let err = ns.exec(&["false"]).expect_err("false must fail");
    assert!(err.to_string().contains("false"), "{err}");

    // Sockets created by `enter` live in the namespace and can be used across `enter` calls.
    let listener = ns
        .enter(|| std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .expect("enter")
        .expect("bind in namespace");
    let addr = listener.local_addr().expect("local addr");
    let inside = ns
        .enter(|| std::net::TcpStream::connect_timeout(&addr, TIMEOUT).map(|_| ()))
        .expect("enter");
    assert!(inside.is_ok(), "connect inside the namespace: {inside:?}");
    let by_command = ns.command("true").status().expect("spawn command");
    assert!(by_command.success());
}
