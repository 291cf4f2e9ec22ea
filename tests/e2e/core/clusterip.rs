//! ClusterIPs from pods: every backend over TCP and UDP, services without endpoints, ServiceCIDRs.

use super::*;

#[test]
fn clusterip_from_a_pod_reaches_all_backends_over_tcp_and_udp() {
    if !e2e_enabled() {
        return;
    }
    let c = Cluster::start(&[]);
    let pod = &c.topo.pods[1];
    assert_all_backends(
        &c.hist(pod, "10.96.100.100:80", 60, Proto::Tcp),
        "ClusterIP tcp",
    );
    assert_all_backends(
        &c.hist(pod, "10.96.100.100:53", 60, Proto::Udp),
        "ClusterIP udp (53 -> 5353)",
    );
    // Named target port through a selectorless service with a hand-written slice.
    // (From pod 111: the hand-written endpoint has no nodeName, so it is not local and gets no
    // hairpin masquerade, exactly like kube-proxy.)
    let db = c.hist(&c.topo.pods[0], "10.96.100.110:5432", 10, Proto::Tcp);
    assert_eq!(
        db,
        BTreeMap::from([("222".to_string(), 10)]),
        "selectorless service"
    );
    // From the node itself (nat output hook).
    assert_all_backends(
        &c.hist(&c.topo.node, "10.96.100.100:80", 60, Proto::Tcp),
        "ClusterIP from the node",
    );
}

#[test]
fn services_without_endpoints_refuse_connections_at_once() {
    if !e2e_enabled() {
        return;
    }
    let c = Cluster::start(&[]);
    for (from, what) in [
        (&c.topo.pods[0], "pod"),
        (&c.topo.node, "node"),
        (&c.topo.client, "client"),
    ] {
        for _ in 0..5 {
            let start = Instant::now();
            let r = tcp_request(from, addr("10.96.100.120:80"), Duration::from_secs(3));
            assert!(
                matches!(r, Err(RequestError::Refused)),
                "{what}: expected refused, got {r:?}"
            );
            assert!(
                start.elapsed() < Duration::from_millis(500),
                "{what}: refusal took {:?}",
                start.elapsed()
            );
        }
    }
    // An unused port on a valid ClusterIP is rejected too (cluster-ips-check).
    let r = tcp_request(
        &c.topo.pods[0],
        addr("10.96.100.100:81"),
        Duration::from_secs(3),
    );
    assert!(
        matches!(r, Err(RequestError::Refused)),
        "unused ClusterIP port: {r:?}"
    );
    // UDP gets an ICMP port unreachable.
    let r = request(
        &c.topo.pods[0],
        addr("10.96.100.120:80"),
        Proto::Udp,
        Duration::from_secs(3),
    );
    assert!(
        matches!(r, Err(RequestError::Refused)),
        "udp without endpoints: {r:?}"
    );
}

#[test]
fn service_cidrs_drop_traffic_to_unallocated_cluster_ips() {
    if !e2e_enabled() {
        return;
    }
    let mut c = Cluster::start(&[]);
    // Something outside the node answers on an address inside 10.96.0.0/16 (reached over
    // the node's default route), so "dropped" is distinguishable from "no route".
    c.topo
        .client
        .exec(&["ip", "addr", "add", "10.96.200.200/32", "dev", "lo"])
        .expect("address");
    let _outside = serve_pod(&c.topo.client, "outside", &[80]).expect("server");
    assert_eq!(
        c.hist(&c.topo.pods[0], "10.96.200.200:80", 3, Proto::Tcp),
        BTreeMap::from([("outside".to_string(), 3)])
    );
    let syncs = c.daemon.count(SYNC_DONE);
    c.manifests
        .write(
            "cidr.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {name: kubernetes}\nspec: {cidrs: [10.96.0.0/16]}\n",
        )
        .expect("write");
    c.daemon
        .wait_for(SYNC_DONE, syncs + 1, Duration::from_secs(5))
        .expect("sync");
    // Now an unallocated address of the service range is dropped...
    let r = tcp_request(
        &c.topo.pods[0],
        addr("10.96.200.200:80"),
        Duration::from_millis(500),
    );
    assert!(
        matches!(r, Err(RequestError::Timeout)),
        "unallocated ClusterIP: {r:?}"
    );
    // ... an unused port of an allocated one is still refused, and services still work.
    let r = tcp_request(
        &c.topo.pods[0],
        addr("10.96.100.100:81"),
        Duration::from_millis(500),
    );
    assert!(matches!(r, Err(RequestError::Refused)), "{r:?}");
    assert_all_backends(
        &c.hist(&c.topo.pods[0], "10.96.100.100:80", 30, Proto::Tcp),
        "ClusterIP with ServiceCIDR",
    );
    // Removing the ServiceCIDR lifts the drop.
    std::fs::remove_file(c.manifests.path().join("cidr.yaml")).expect("remove");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while c.hist(&c.topo.pods[0], "10.96.200.200:80", 1, Proto::Tcp)
        != BTreeMap::from([("outside".to_string(), 1)])
    {
        assert!(std::time::Instant::now() < deadline, "drop not lifted");
        std::thread::sleep(Duration::from_millis(100));
    }
}
