//! Masquerading: pod traffic keeps its source, hairpin, `--masquerade-all`, local-traffic detection by node CIDR and interface prefix.

use super::*;

#[test]
fn traffic_from_pods_keeps_its_source_and_hairpin_is_masqueraded() {
    if !e2e_enabled() {
        return;
    }
    let c = Cluster::start(&[]);
    let pod0 = &c.topo.pods[0];
    for s in &c._servers {
        s.clear_peers();
    }
    let hist = c.hist(pod0, "10.96.100.100:80", 60, Proto::Tcp);
    assert_all_backends(&hist, "pod 111 to its own service");
    // Pod-to-service traffic to other pods keeps the pod's address (no masquerade inside the
    // cluster CIDR) ...
    for s in &c._servers[1..] {
        let peers = s.accepted_peers();
        assert!(
            peers.iter().all(|p| p.ip().to_string() == "10.244.1.2"),
            "{} saw {peers:?}",
            s.name()
        );
    }
    // ... but a pod reaching itself through the service is masqueraded (hairpin), or the
    // reply would never find its way back.
    let own = c._servers[0].accepted_peers();
    assert!(!own.is_empty(), "hairpin connections reached the pod");
    assert!(
        own.iter().all(|p| p.ip().to_string() != "10.244.1.2"),
        "hairpin must be masqueraded, saw {own:?}"
    );
}

#[test]
fn masquerade_all_masquerades_pod_traffic_to_cluster_ips() {
    if !e2e_enabled() {
        return;
    }
    let c = Cluster::start(&["--masquerade-all"]);
    for s in &c._servers {
        s.clear_peers();
    }
    let hist = c.hist(&c.topo.pods[1], "10.96.100.100:80", 30, Proto::Tcp);
    assert!(!hist.keys().any(|k| k.starts_with('<')), "{hist:?}");
    let peers: Vec<SocketAddr> = c._servers.iter().flat_map(|s| s.accepted_peers()).collect();
    assert_eq!(peers.len(), 30);
    // Masqueraded to the node's address on the backend's link, never the pod's own address.
    assert!(
        peers.iter().all(|p| p.ip().to_string() != "10.244.2.2"),
        "{peers:?}"
    );
    assert!(
        peers.iter().all(|p| p.ip().to_string().ends_with(".1")),
        "{peers:?}"
    );
}

#[test]
fn node_cidr_and_interface_prefix_detection_masquerade_only_off_cluster_traffic() {
    if !e2e_enabled() {
        return;
    }
    for mode in [
        &["--detect-local-mode", "NodeCIDR"][..],
        &[
            "--detect-local-mode",
            "InterfaceNamePrefix",
            "--pod-interface-name-prefix",
            "vpod",
        ][..],
    ] {
        let mut c = Cluster::start(mode);
        // NodeCIDR mode takes the pod CIDRs from the Node object.
        let syncs = c.daemon.count(SYNC_DONE);
        c.manifests
            .write(
                "node.yaml",
                "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\nspec: {podCIDRs: [10.244.0.0/16]}\n\
                 status: {addresses: [{type: InternalIP, address: 172.18.0.2}]}\n",
            )
            .expect("node");
        c.daemon
            .wait_for(SYNC_DONE, syncs + 1, Duration::from_secs(5))
            .expect("sync");
        let peers = |c: &Cluster| -> Vec<String> {
            c._servers
                .iter()
                .flat_map(|s| s.accepted_peers())
                .map(|p| p.ip().to_string())
                .collect()
        };
        // Pod traffic to a ClusterIP keeps its source (backends other than the pod itself).
        for s in &c._servers {
            s.clear_peers();
        }
        let h = c.hist(&c.topo.pods[1], "10.96.100.101:80", 30, Proto::Tcp);
        assert!(!h.keys().any(|k| k.starts_with('<')), "{mode:?}: {h:?}");
        let from_pod: Vec<String> = peers(&c)
            .into_iter()
            .filter(|p| p != "10.244.2.1")
            .collect();
        assert!(
            !from_pod.is_empty() && from_pod.iter().all(|p| p == "10.244.2.2"),
            "{mode:?}: pod source changed: {from_pod:?}"
        );
        // Traffic from outside the cluster to a ClusterIP is masqueraded.
        for s in &c._servers {
            s.clear_peers();
        }
        let h = c.hist(&c.topo.client, "10.96.100.101:80", 10, Proto::Tcp);
        assert!(!h.keys().any(|k| k.starts_with('<')), "{mode:?}: {h:?}");
        let from_client = peers(&c);
        assert!(!from_client.is_empty(), "{mode:?}");
        assert!(
            from_client.iter().all(|p| p != "172.18.0.10"),
            "{mode:?}: off-cluster traffic not masqueraded: {from_client:?}"
        );
    }
}
