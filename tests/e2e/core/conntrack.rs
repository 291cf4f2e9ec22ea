//! Conntrack: stale UDP entries deleted when endpoints change, conntrack sysctls set in the node's namespace.

use super::*;

fn udp_service(endpoint: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: dns, namespace: default}}
spec:
  clusterIP: 10.96.100.160
  ports: [{{name: dns, port: 53, protocol: UDP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: dns-1, namespace: default, labels: {{kubernetes.io/service-name: dns}}}}
addressType: IPv4
ports: [{{name: dns, port: 5353, protocol: UDP}}]
endpoints: [{{addresses: [{endpoint}], nodeName: node-1}}]
"#
    )
}

#[test]
fn stale_udp_conntrack_entries_are_deleted_when_endpoints_change() {
    if !e2e_enabled() {
        return;
    }
    let mut c = Cluster::start(&[]);
    let syncs = c.daemon.count(SYNC_DONE);
    c.manifests
        .write("dns.yaml", &udp_service("10.244.1.2"))
        .expect("write");
    c.daemon
        .wait_for(SYNC_DONE, syncs + 1, Duration::from_secs(5))
        .expect("sync");
    // A client keeps one UDP flow to the service (same source port every time).
    for _ in 0..3 {
        assert_eq!(
            udp_from_fixed_port(&c.topo.pods[2], 40053, "10.96.100.160:53"),
            Ok("111".to_string())
        );
    }
    // The endpoint changes: without cleanup the flow would stay DNATed to 10.244.1.2.
    c.edit("dns.yaml", |_| udp_service("10.244.2.2"));
    assert_eq!(
        udp_from_fixed_port(&c.topo.pods[2], 40053, "10.96.100.160:53"),
        Ok("222".to_string()),
        "{}",
        c.daemon.log()
    );
    assert!(
        c.daemon
            .log()
            .contains("deleted stale UDP conntrack entries")
    );
}

#[test]
fn conntrack_sysctls_are_set_in_the_nodes_namespace_only() {
    if !e2e_enabled() {
        return;
    }
    let read_root = |f: &str| std::fs::read_to_string(f).unwrap_or_default();
    let root_before = (
        read_root("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established"),
        read_root("/proc/sys/net/netfilter/nf_conntrack_max"),
        read_root("/sys/module/nf_conntrack/parameters/hashsize"),
    );
    let c = Cluster::start(&[
        "--conntrack-tcp-timeout-established",
        "2h",
        "--conntrack-tcp-timeout-close-wait",
        "90s",
        "--conntrack-udp-timeout",
        "45s",
        "--conntrack-tcp-be-liberal",
    ]);
    let read_node = |name: &str| {
        let out = c
            .topo
            .node
            .command("cat")
            .arg(format!("/proc/sys/net/netfilter/{name}"))
            .output()
            .expect("cat");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(read_node("nf_conntrack_tcp_timeout_established"), "7200");
    assert_eq!(read_node("nf_conntrack_tcp_timeout_close_wait"), "90");
    assert_eq!(read_node("nf_conntrack_udp_timeout"), "45");
    assert_eq!(read_node("nf_conntrack_tcp_be_liberal"), "1");
    // The host's namespace is untouched (nf_conntrack_max cannot be raised from a child
    // namespace, and the hash size is only changed after it).
    let root_after = (
        read_root("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established"),
        read_root("/proc/sys/net/netfilter/nf_conntrack_max"),
        read_root("/sys/module/nf_conntrack/parameters/hashsize"),
    );
    assert_eq!(root_before, root_after);
    let log = c.daemon.log();
    assert!(
        log.contains("nf_conntrack_tcp_timeout_established")
            && log.contains("set conntrack sysctl"),
        "{log}"
    );
}
