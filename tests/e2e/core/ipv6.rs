//! IPv6: the same services, affinity, source ranges and conntrack cleanup over IPv6.

use super::*;

#[test]
fn ipv6_works_the_same() {
    if !e2e_enabled() {
        return;
    }
    let c = Cluster::start(&[]);
    let pod = &c.topo.pods[2];
    assert_all_backends(
        &c.hist(pod, "[fd00:10:96::100]:80", 60, Proto::Tcp),
        "IPv6 ClusterIP tcp",
    );
    assert_all_backends(
        &c.hist(pod, "[fd00:10:96::100]:53", 60, Proto::Udp),
        "IPv6 ClusterIP udp",
    );
    assert_all_backends(
        &c.hist(&c.topo.node, "[fd00:10:96::100]:80", 30, Proto::Tcp),
        "IPv6 from the node",
    );
    // Hairpin in IPv6 too: pod 333 reaches itself.
    assert!(
        c.hist(pod, "[fd00:10:96::100]:80", 60, Proto::Tcp)
            .contains_key("333")
    );
}

const IPV6_SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: sticky6, namespace: default}
spec:
  clusterIP: "fd00:10:96::140"
  clusterIPs: ["fd00:10:96::140"]
  ipFamilies: [IPv6]
  sessionAffinity: ClientIP
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: sticky6-1, namespace: default, labels: {kubernetes.io/service-name: sticky6}}
addressType: IPv6
ports: [{name: http, port: 80}]
endpoints:
- {addresses: ["fd00:10:244:1::2"], nodeName: node-1}
- {addresses: ["fd00:10:244:2::2"], nodeName: node-1}
- {addresses: ["fd00:10:244:3::2"], nodeName: node-1}
---
apiVersion: v1
kind: Service
metadata: {name: fw6, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: "fd00:10:96::130"
  clusterIPs: ["fd00:10:96::130"]
  ipFamilies: [IPv6]
  # Overlapping on purpose (a range inside another, one holding the LB IP itself): the
  # kernel refuses overlapping interval elements, so Rudder merges them first.
  loadBalancerSourceRanges: ["fd00:10:244::/48", "fd00:10:244:1::/64", "fd00:10:244:1::2/128", "fd00:ff::130/128"]
  ports: [{name: http, port: 80, nodePort: 30005}]
status: {loadBalancer: {ingress: [{ip: "fd00:ff::130"}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: fw6-1, namespace: default, labels: {kubernetes.io/service-name: fw6}}
addressType: IPv6
ports: [{name: http, port: 80}]
endpoints: [{addresses: ["fd00:10:244:2::2"], nodeName: node-1}]
---
apiVersion: v1
kind: Service
metadata: {name: dns6, namespace: default}
spec:
  clusterIP: "fd00:10:96::160"
  clusterIPs: ["fd00:10:96::160"]
  ipFamilies: [IPv6]
  ports: [{name: dns, port: 53, protocol: UDP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns6-1, namespace: default, labels: {kubernetes.io/service-name: dns6}}
addressType: IPv6
ports: [{name: dns, port: 5353, protocol: UDP}]
endpoints: [{addresses: ["ENDPOINT"], nodeName: node-1}]
"#;

#[test]
fn affinity_source_ranges_and_conntrack_cleanup_work_over_ipv6() {
    if !e2e_enabled() {
        return;
    }
    let mut c = Cluster::start(&[]);
    let syncs = c.daemon.count(SYNC_DONE);
    c.manifests
        .write(
            "v6.yaml",
            &IPV6_SERVICES.replace("ENDPOINT", "fd00:10:244:1::2"),
        )
        .expect("write");
    c.daemon
        .wait_for(SYNC_DONE, syncs + 1, Duration::from_secs(5))
        .expect("sync");
    // Session affinity.
    let h = c.hist(&c.topo.pods[0], "[fd00:10:96::140]:80", 20, Proto::Tcp);
    assert_eq!(h.len(), 1, "IPv6 client sticks to one endpoint: {h:?}");
    assert!(
        NAMES.contains(&h.keys().next().map(String::as_str).unwrap_or("")),
        "{h:?}"
    );
    // Source ranges: the client is outside fd00:10:244::/48, pods inside; node port unfiltered.
    let r = tcp_request(
        &c.topo.client,
        addr("[fd00:ff::130]:80"),
        Duration::from_millis(500),
    );
    assert!(
        matches!(r, Err(RequestError::Timeout)),
        "filtered IPv6 LB IP: {r:?}"
    );
    assert_eq!(
        c.hist(&c.topo.pods[0], "[fd00:ff::130]:80", 3, Proto::Tcp),
        BTreeMap::from([("222".to_string(), 3)])
    );
    assert_eq!(
        c.hist(
            &c.topo.client,
            "[fc00:f853:ccd:e793::2]:30005",
            3,
            Proto::Tcp
        ),
        BTreeMap::from([("222".to_string(), 3)])
    );
    // Stale UDP conntrack: one flow, its endpoint replaced.
    for _ in 0..2 {
        assert_eq!(
            udp_from_fixed_port(&c.topo.pods[2], 40054, "[fd00:10:96::160]:53"),
            Ok("111".to_string())
        );
    }
    c.edit("v6.yaml", |_| {
        IPV6_SERVICES.replace("ENDPOINT", "fd00:10:244:2::2")
    });
    assert_eq!(
        udp_from_fixed_port(&c.topo.pods[2], 40054, "[fd00:10:96::160]:53"),
        Ok("222".to_string())
    );
}
