//! Smoke tests of the two-node harness ([`TwoNodes`]): pod-to-pod routing within and across
//! nodes without NAT, an external client that reaches the nodes but not the pods, DNAT on one
//! node towards a pod on the other, and cleanup.
//!
//! They need root; set `RUDDER_E2E_SKIP=1` to skip them elsewhere.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use rudder_e2e::client::{self, Proto, RequestError};
use rudder_e2e::{EchoServers, Netns, TwoNodes, nft, serve_pod};

const PORT: u16 = 8080;
const NODE_PORT: u16 = 9000;
const TIMEOUT: Duration = Duration::from_secs(2);
/// Timeout for requests that are expected to fail.
const SHORT: Duration = Duration::from_millis(500);

fn cluster_with_servers() -> (TwoNodes, Vec<EchoServers>) {
    let cluster = TwoNodes::new().expect("create two-node cluster");
    let servers = cluster
        .pods
        .iter()
        .enumerate()
        .map(|(i, ns)| serve_pod(ns, &cluster.pod_name(i), &[PORT]).expect("start echo servers"))
        .collect();
    (cluster, servers)
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
    assert!(out.status.success(), "nft list ruleset failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn listed(list: &str, ns: &str) -> bool {
    list.lines()
        .any(|line| line.split_whitespace().next() == Some(ns))
}

fn exec_text(ns: &Netns, args: &[&str]) -> String {
    let out = ns.exec(args).expect("run command in namespace");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Both address families of pod or node addresses, as socket addresses on `port`.
fn both(v4: Ipv4Addr, v6: std::net::Ipv6Addr, port: u16) -> [SocketAddr; 2] {
    [
        SocketAddr::new(IpAddr::V4(v4), port),
        SocketAddr::new(IpAddr::V6(v6), port),
    ]
}

/// Requests `addr` over TCP and UDP from `from` and asserts that `server` answered both times
/// and saw `want_source` as the peer of both requests.
fn assert_reaches(from: &Netns, addr: SocketAddr, server: &EchoServers, want_source: IpAddr) {
    let tcp = client::tcp_request(from, addr, TIMEOUT);
    assert_eq!(
        tcp.as_deref().ok(),
        Some(server.name()),
        "tcp {} -> {addr}: {tcp:?}",
        from.name()
    );
    assert_eq!(
        server.accepted_peers().last().map(SocketAddr::ip),
        Some(want_source),
        "tcp source seen by {} for {addr}",
        server.name()
    );
    let udp = client::udp_request(from, addr, TIMEOUT);
    assert_eq!(
        udp.as_deref().ok(),
        Some(server.name()),
        "udp {} -> {addr}: {udp:?}",
        from.name()
    );
    assert_eq!(
        server.udp_peers().last().map(SocketAddr::ip),
        Some(want_source),
        "udp source seen by {} for {addr}",
        server.name()
    );
}

#[test]
fn every_pod_reaches_every_pod_on_both_nodes_without_nat() {
    if !rudder_e2e::e2e_enabled() {
        return;
    }
    let (cluster, servers) = cluster_with_servers();
    assert_eq!(
        (0..4).map(|i| cluster.pod_node(i)).collect::<Vec<_>>(),
        [0, 0, 1, 1]
    );
    for (src, from) in cluster.pods.iter().enumerate() {
        for (dst, server) in servers.iter().enumerate() {
            if src == dst {
                continue;
            }
            let [dst4, dst6] = both(cluster.pod_ipv4(dst), cluster.pod_ipv6(dst), PORT);
            assert_reaches(from, dst4, server, IpAddr::V4(cluster.pod_ipv4(src)));
            assert_reaches(from, dst6, server, IpAddr::V6(cluster.pod_ipv6(src)));
        }
    }
    // Every pod saw exactly the 3 other pods, twice each (IPv4 and IPv6), per protocol.
    for server in &servers {
        assert_eq!(server.accepted_peers().len(), 6, "{}", server.name());
        assert_eq!(server.udp_peers().len(), 6, "{}", server.name());
    }
}

#[test]
fn nodes_reach_pods_on_both_nodes() {
    if !rudder_e2e::e2e_enabled() {
        return;
    }
    let (cluster, servers) = cluster_with_servers();
    for (n, node) in cluster.nodes.iter().enumerate() {
        for (i, server) in servers.iter().enumerate() {
            let [pod4, pod6] = both(cluster.pod_ipv4(i), cluster.pod_ipv6(i), PORT);
            // A node talks to its own pods from its cbr0 address and to the other node's
            // pods from its LAN address (the route goes out of eth0).
            let (src4, src6) = if cluster.pod_node(i) == n {
                (
                    IpAddr::V4(cluster.pod_gateway_ipv4(n)),
                    IpAddr::V6(cluster.pod_gateway_ipv6(n)),
                )
            } else {
                (
                    IpAddr::V4(cluster.node_ipv4(n)),
                    IpAddr::V6(cluster.node_ipv6(n)),
                )
            };
            assert_reaches(node, pod4, server, src4);
            assert_reaches(node, pod6, server, src6);
        }
    }
}

#[test]
fn client_reaches_the_nodes_but_not_the_pods() {
    if !rudder_e2e::e2e_enabled() {
        return;
    }
    let (cluster, pod_servers) = cluster_with_servers();
    let node_servers: Vec<EchoServers> = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(n, ns)| serve_pod(ns, &format!("n{n}"), &[NODE_PORT]).expect("node servers"))
        .collect();
    let client_v4 = IpAddr::V4(cluster.client_ipv4());
    let client_v6 = IpAddr::V6(cluster.client_ipv6());
    for (n, server) in node_servers.iter().enumerate() {
        let [node4, node6] = both(cluster.node_ipv4(n), cluster.node_ipv6(n), NODE_PORT);
        assert_reaches(&cluster.client, node4, server, client_v4);
        assert_reaches(&cluster.client, node6, server, client_v6);
    }

    // No route to the pod network: an external client cannot address pods directly.
    for i in 0..cluster.pods.len() {
        for addr in both(cluster.pod_ipv4(i), cluster.pod_ipv6(i), PORT) {
            for proto in [Proto::Tcp, Proto::Udp] {
                let result = client::request(&cluster.client, addr, proto, SHORT);
                assert!(
                    matches!(result, Err(RequestError::Timeout | RequestError::Other(_))),
                    "client reached pod {i} at {proto} {addr}: {result:?}"
                );
            }
        }
    }
    for server in &pod_servers {
        assert!(server.accepted_peers().is_empty(), "{}", server.name());
        assert!(server.udp_peers().is_empty(), "{}", server.name());
    }
    let routes = exec_text(&cluster.client, &["ip", "-4", "route", "show"]);
    assert!(!routes.contains("default"), "client routes: {routes}");
    assert!(!routes.contains("10.244."), "client routes: {routes}");
    let routes6 = exec_text(&cluster.client, &["ip", "-6", "route", "show"]);
    assert!(!routes6.contains("default"), "client routes: {routes6}");
    assert!(!routes6.contains("fd00:10:244"), "client routes: {routes6}");
}

#[test]
fn dnat_on_node_one_forwards_to_a_pod_on_node_zero() {
    if !rudder_e2e::e2e_enabled() {
        return;
    }
    let root_before = root_ruleset();
    let (cluster, servers) = cluster_with_servers();
    let vip = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)), 80);

    // Without a route the client cannot even send to the VIP.
    let unrouted = client::tcp_request(&cluster.client, vip, SHORT);
    assert!(
        unrouted.is_err(),
        "VIP answered without a route: {unrouted:?}"
    );

    cluster
        .client_route_via("10.96.0.0/12", 1)
        .expect("route VIPs via node 1");
    let routes = exec_text(&cluster.client, &["ip", "-4", "route", "show"]);
    assert!(
        routes.contains("10.96.0.0/12 via 172.18.0.3"),
        "client routes: {routes}"
    );

    // DNAT only: pod-0 gets the SYN with the client's source address and answers straight to
    // the client through node 0 (asymmetric routing), so the client never sees a reply from
    // the VIP and the connection fails.
    let dnat = format!(
        "table ip smoke {{
            chain prerouting {{
                type nat hook prerouting priority -100; policy accept;
                ip daddr 10.96.0.1 tcp dport 80 dnat to {pod}:{PORT}
                ip daddr 10.96.0.1 udp dport 80 dnat to {pod}:{PORT}
            }}
        }}",
        pod = cluster.pod_ipv4(0),
    );
    nft::load(&cluster.nodes[1], &dnat).expect("load DNAT in node 1");
    let asymmetric = client::tcp_request(&cluster.client, vip, SHORT);
    assert!(
        asymmetric.is_err(),
        "VIP answered despite asymmetric routing: {asymmetric:?}"
    );
    assert_eq!(
        servers[0].accepted_peers().last().map(SocketAddr::ip),
        None,
        "the handshake cannot complete without node 1 seeing the reply"
    );

    // Masquerading on node 1 makes pod-0 answer to node 1, which un-NATs for the client.
    let masquerade = "table ip smoke {
            chain postrouting {
                type nat hook postrouting priority 100; policy accept;
                ct status dnat ip daddr 10.244.0.0/16 masquerade
            }
        }";
    nft::load(&cluster.nodes[1], masquerade).expect("load masquerade in node 1");
    let node1 = IpAddr::V4(cluster.node_ipv4(1));
    for proto in [Proto::Tcp, Proto::Udp] {
        assert_eq!(
            client::histogram(&cluster.client, vip, 5, proto),
            BTreeMap::from([("pod-0".to_owned(), 5)]),
            "{proto} via node 1"
        );
    }
    for peer in servers[0]
        .accepted_peers()
        .iter()
        .chain(&servers[0].udp_peers())
    {
        assert_eq!(peer.ip(), node1, "pod-0 sees node 1's LAN address");
    }
    assert_eq!(servers[0].accepted_peers().len(), 5);
    assert_eq!(servers[0].udp_peers().len(), 5);
    for server in &servers[1..] {
        assert!(server.accepted_peers().is_empty(), "{}", server.name());
    }

    // The rules live in node 1 only: sending the VIP to node 0 gets nowhere.
    assert!(
        !nft::list_ruleset(&cluster.nodes[0])
            .expect("list node 0 ruleset")
            .contains("smoke")
    );
    cluster
        .client_route_via("10.96.0.0/12", 0)
        .expect("route VIPs via node 0");
    let via_node0 = client::tcp_request(&cluster.client, vip, SHORT);
    assert!(via_node0.is_err(), "node 0 answered the VIP: {via_node0:?}");
    cluster
        .remove_client_route("10.96.0.0/12")
        .expect("remove VIP route");

    assert_eq!(root_ruleset(), root_before, "the root ruleset changed");
    drop(servers);
    drop(cluster);
    assert_eq!(root_ruleset(), root_before, "the root ruleset changed");
}

#[test]
fn wiring_matches_the_documentation_and_everything_is_deleted_on_drop() {
    if !rudder_e2e::e2e_enabled() {
        return;
    }
    let root_before = root_ruleset();
    let cluster = TwoNodes::new().expect("create two-node cluster");
    let names: Vec<String> = cluster.all().map(|ns| ns.name().to_owned()).collect();
    assert_eq!(names.len(), 8);

    assert_eq!(cluster.node_name(1), "node-1");
    assert_eq!(cluster.pod_name(3), "pod-3");
    assert_eq!(cluster.pods_on_node(1), 2..4);
    let pods4: Vec<String> = (0..4).map(|i| cluster.pod_ipv4(i).to_string()).collect();
    assert_eq!(
        pods4,
        ["10.244.1.2", "10.244.1.3", "10.244.2.2", "10.244.2.3"]
    );
    let pods6: Vec<String> = (0..4).map(|i| cluster.pod_ipv6(i).to_string()).collect();
    assert_eq!(
        pods6,
        [
            "fd00:10:244:1::2",
            "fd00:10:244:1::3",
            "fd00:10:244:2::2",
            "fd00:10:244:2::3"
        ]
    );
    assert_eq!(cluster.node_ipv6(1).to_string(), "fc00:f853:ccd:e793::3");
    assert_eq!(cluster.client_ipv6().to_string(), "fc00:f853:ccd:e793::10");
    assert_eq!(cluster.pod_cidr_ipv6(1), "fd00:10:244:2::/64");

    // Node 0: LAN on eth0, pods on cbr0 (ports vpod0, vpod1), node 1's pods via node 1.
    let node0 = &cluster.nodes[0];
    let links = exec_text(node0, &["ip", "-o", "link", "show"]);
    for name in ["eth0", "cbr0", "vpod0", "vpod1"] {
        assert!(links.contains(&format!(" {name}")), "node 0 links: {links}");
    }
    let ports = exec_text(node0, &["ip", "-o", "link", "show", "master", "cbr0"]);
    assert_eq!(ports.lines().count(), 2, "cbr0 ports: {ports}");
    let routes = exec_text(node0, &["ip", "-4", "route", "show"]);
    assert!(
        routes.contains("10.244.2.0/24 via 172.18.0.3 dev eth0"),
        "{routes}"
    );
    assert!(
        routes.contains("default via 172.18.0.10 dev eth0"),
        "{routes}"
    );
    let routes6 = exec_text(&cluster.nodes[1], &["ip", "-6", "route", "show"]);
    assert!(
        routes6.contains("fd00:10:244:1::/64 via fc00:f853:ccd:e793::2 dev eth0"),
        "{routes6}"
    );
    let ports = exec_text(&cluster.lan, &["ip", "-o", "link", "show", "master", "br0"]);
    assert_eq!(ports.lines().count(), 3, "br0 ports: {ports}");

    drop(cluster);
    let list = netns_list();
    for name in &names {
        assert!(!listed(&list, name), "{name} survived drop:\n{list}");
    }
    assert_eq!(root_ruleset(), root_before, "the root ruleset changed");

    // Cleanup also happens while unwinding from a failed test.
    let (tx, rx) = std::sync::mpsc::channel();
    let panicked = std::thread::spawn(move || {
        let cluster = TwoNodes::new().expect("create two-node cluster");
        let names: Vec<String> = cluster.all().map(|ns| ns.name().to_owned()).collect();
        tx.send(names).expect("send names");
        panic!("deliberate panic with a live cluster");
    })
    .join();
    assert!(panicked.is_err());
    let names = rx.recv().expect("namespace names");
    let list = netns_list();
    for name in &names {
        assert!(!listed(&list, name), "{name} survived a panic:\n{list}");
    }
}
