//! Traffic from outside the node: NodePorts, LoadBalancer IPs and external IPs, and load balancer source ranges.

use super::*;

#[test]
fn nodeport_loadbalancer_and_external_ip_from_outside_are_masqueraded() {
    if !e2e_enabled() {
        return;
    }
    let c = Cluster::start(&[]);
    let client = &c.topo.client;
    for target in [
        "172.18.0.2:30001",
        "172.18.0.2:30002",
        "192.168.122.111:80",
        "192.168.122.200:80",
    ] {
        assert_all_backends(&c.hist(client, target, 60, Proto::Tcp), target);
    }
    assert_all_backends(
        &c.hist(client, "192.168.122.200:53", 60, Proto::Udp),
        "external IP udp",
    );
    // External traffic is masqueraded: backends never see the client's address.
    let peers: Vec<SocketAddr> = c._servers.iter().flat_map(|s| s.accepted_peers()).collect();
    assert!(!peers.is_empty());
    assert!(
        peers.iter().all(|p| p.ip().to_string() != "172.18.0.10"),
        "external traffic must be masqueraded, backends saw {peers:?}"
    );
    // A node port on an address that is not a node port address does not answer.
    let r = tcp_request(
        client,
        addr("192.168.122.111:30001"),
        Duration::from_millis(500),
    );
    assert!(
        r.is_err(),
        "node ports listen only on the node's primary IP, got {r:?}"
    );
}

#[test]
fn load_balancer_source_ranges_filter_only_the_load_balancer_ip() {
    if !e2e_enabled() {
        return;
    }
    let mut c = Cluster::start(&[]);
    let syncs = c.daemon.count(SYNC_DONE);
    c.manifests
        .write("fw.yaml", &firewalled_service("10.0.0.0/8"))
        .expect("write");
    c.daemon
        .wait_for(SYNC_DONE, syncs + 1, Duration::from_secs(5))
        .expect("sync");
    // The client (172.18.0.10) is outside 10.0.0.0/8: dropped before DNAT (a timeout).
    let r = tcp_request(
        &c.topo.client,
        addr("192.168.122.130:80"),
        Duration::from_millis(500),
    );
    assert!(
        matches!(r, Err(RequestError::Timeout)),
        "filtered LB IP: {r:?}"
    );
    // The node port is not filtered, and pods (inside 10.0.0.0/8) reach the LB IP.
    assert_eq!(
        c.hist(&c.topo.client, "172.18.0.2:30003", 5, Proto::Tcp),
        BTreeMap::from([("222".to_string(), 5)])
    );
    assert_eq!(
        c.hist(&c.topo.pods[0], "192.168.122.130:80", 5, Proto::Tcp),
        BTreeMap::from([("222".to_string(), 5)])
    );
    // Allow the client's network: it gets through.
    c.edit("fw.yaml", |_| {
        firewalled_service("10.0.0.0/8, 172.18.0.0/24")
    });
    assert_eq!(
        c.hist(&c.topo.client, "192.168.122.130:80", 5, Proto::Tcp),
        BTreeMap::from([("222".to_string(), 5)])
    );
    // Overlapping ranges (and, with the node inside a range, a range that contains the
    // load balancer IP itself) are one interval set's elements: they used to make the
    // kernel refuse every sync. Each edit must sync, and the client still gets through.
    for ranges in [
        "10.0.0.0/8, 10.1.0.0/16, 172.18.0.0/24, 172.18.0.10/32",
        "172.18.0.0/16, 192.168.122.0/24",
    ] {
        c.edit("fw.yaml", |_| firewalled_service(ranges));
        assert_eq!(
            c.hist(&c.topo.client, "192.168.122.130:80", 3, Proto::Tcp),
            BTreeMap::from([("222".to_string(), 3)]),
            "{ranges}"
        );
    }
    // 0.0.0.0/0 means no filtering at all.
    c.edit("fw.yaml", |_| firewalled_service("0.0.0.0/0"));
    assert_eq!(
        c.hist(&c.topo.client, "192.168.122.130:80", 5, Proto::Tcp),
        BTreeMap::from([("222".to_string(), 5)])
    );
    // Back to a range without the client: dropped again.
    c.edit("fw.yaml", |_| firewalled_service("192.0.2.0/24"));
    let r = tcp_request(
        &c.topo.client,
        addr("192.168.122.130:80"),
        Duration::from_millis(500),
    );
    assert!(
        matches!(r, Err(RequestError::Timeout)),
        "filtered again: {r:?}"
    );
}
