//! Endpoint changes and endpoint selection: manifest edits, terminating endpoints, topology hints, `ipMode: Proxy`.

use super::*;

#[test]
fn endpoint_changes_in_the_manifest_are_applied_without_disturbing_others() {
    if !e2e_enabled() {
        return;
    }
    let mut c = Cluster::start(&[]);
    let pod = &c.topo.pods[1];
    assert_all_backends(&c.hist(pod, "10.96.100.100:80", 60, Proto::Tcp), "before");
    // Remove backend 333 from the IPv4 slice of nginx-service only.
    c.edit("nginx.yaml", |text| {
        text.replacen(
            "- addresses: [10.244.3.2]\n  conditions: {ready: true}\n  nodeName: node-1\n",
            "",
            1,
        )
    });
    let after = c.hist(&c.topo.pods[1], "10.96.100.100:80", 60, Proto::Tcp);
    assert_eq!(
        after.keys().map(String::as_str).collect::<Vec<_>>(),
        vec!["111", "222"],
        "after removal: {after:?}"
    );
    // The same backend behind other services is untouched.
    assert_all_backends(
        &c.hist(&c.topo.pods[1], "10.96.100.101:80", 60, Proto::Tcp),
        "nginx-nodeport unchanged",
    );
    // The change was partial.
    assert!(
        c.daemon
            .log()
            .lines()
            .any(|l| l.contains(SYNC_DONE) && l.contains("partial")),
        "{}",
        c.daemon.log()
    );

    // Mark 222 not ready: only 111 is left.
    c.edit("nginx.yaml", |text| {
        text.replacen(
            "- addresses: [10.244.2.2]\n  conditions: {ready: true}",
            "- addresses: [10.244.2.2]\n  conditions: {ready: false}",
            1,
        )
    });
    let only = c.hist(&c.topo.pods[1], "10.96.100.100:80", 20, Proto::Tcp);
    assert_eq!(only, BTreeMap::from([("111".to_string(), 20)]));

    // A file caught half-written keeps the rules it had.
    let syncs = c.daemon.count(SYNC_DONE);
    c.manifests
        .write("nginx.yaml", "apiVersion: v1\nkind: [unterminated")
        .expect("write");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        c.daemon.count(SYNC_DONE),
        syncs,
        "a broken file must not trigger a sync"
    );
    assert!(
        c.daemon.log().contains("nginx.yaml"),
        "the broken file is named in the log"
    );
    let still = c.hist(&c.topo.pods[1], "10.96.100.100:80", 10, Proto::Tcp);
    assert_eq!(still, BTreeMap::from([("111".to_string(), 10)]));

    // Deleting the file removes its services: the ClusterIP stops answering.
    let syncs = c.daemon.count(SYNC_DONE);
    std::fs::remove_file(c.manifests.path().join("nginx.yaml")).expect("remove");
    c.daemon
        .wait_for(SYNC_DONE, syncs + 1, Duration::from_secs(5))
        .expect("sync after delete");
    let gone = tcp_request(
        &c.topo.pods[1],
        addr("10.96.100.100:80"),
        Duration::from_millis(500),
    );
    assert!(gone.is_err(), "deleted service still answers: {gone:?}");
    // Other files' services still work.
    let db = c.hist(&c.topo.pods[0], "10.96.100.110:5432", 5, Proto::Tcp);
    assert_eq!(db, BTreeMap::from([("222".to_string(), 5)]));
}

fn conditions_service(eps: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: cond, namespace: default}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.100.170
  ports: [{{name: http, port: 80, nodePort: 30006}}]
status: {{loadBalancer: {{ingress: [{{ip: 192.168.122.170, ipMode: Proxy}}, {{ip: 192.168.122.171}}]}}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: cond-1, namespace: default, labels: {{kubernetes.io/service-name: cond}}}}
addressType: IPv4
ports: [{{name: http, port: 80}}]
endpoints:
{eps}
"#
    )
}

#[test]
fn terminating_fallback_topology_hints_and_ip_mode_proxy() {
    if !e2e_enabled() {
        return;
    }
    let mut c = Cluster::start(&[]);
    let pod = 1;
    // One ready endpoint and two serving-terminating ones: only the ready one is used.
    let eps = "- {addresses: [10.244.1.2], nodeName: node-1}\n\
               - {addresses: [10.244.2.2], nodeName: node-1, conditions: {ready: false, serving: true, terminating: true}}\n\
               - {addresses: [10.244.3.2], nodeName: node-1, conditions: {ready: false, serving: true, terminating: true}}";
    let syncs = c.daemon.count(SYNC_DONE);
    c.manifests
        .write("cond.yaml", &conditions_service(eps))
        .expect("write");
    c.daemon
        .wait_for(SYNC_DONE, syncs + 1, Duration::from_secs(5))
        .expect("sync");
    assert_eq!(
        c.hist(&c.topo.pods[pod], "10.96.100.170:80", 10, Proto::Tcp),
        BTreeMap::from([("111".to_string(), 10)])
    );
    // The ready one starts terminating too: the serving-terminating ones take over.
    let eps = "- {addresses: [10.244.1.2], nodeName: node-1, conditions: {ready: false, serving: false, terminating: true}}\n\
               - {addresses: [10.244.2.2], nodeName: node-1, conditions: {ready: false, serving: true, terminating: true}}\n\
               - {addresses: [10.244.3.2], nodeName: node-1, conditions: {ready: false, serving: true, terminating: true}}";
    c.edit("cond.yaml", |_| conditions_service(eps));
    let h = c.hist(&c.topo.pods[pod], "10.96.100.170:80", 30, Proto::Tcp);
    assert_eq!(
        h.keys().map(String::as_str).collect::<Vec<_>>(),
        ["222", "333"],
        "{h:?}"
    );
    // Topology: every ready endpoint hinted; this node (node-1, zone-a) uses zone-a's only.
    let eps = "- {addresses: [10.244.1.2], nodeName: node-1, hints: {forZones: [{name: zone-a}]}}\n\
               - {addresses: [10.244.2.2], nodeName: node-2, hints: {forZones: [{name: zone-b}]}}\n\
               - {addresses: [10.244.3.2], nodeName: node-3, hints: {forZones: [{name: zone-a}]}}";
    c.edit("cond.yaml", |_| conditions_service(eps));
    let h = c.hist(&c.topo.pods[pod], "10.96.100.170:80", 30, Proto::Tcp);
    assert_eq!(
        h.keys().map(String::as_str).collect::<Vec<_>>(),
        ["111", "333"],
        "zone hints: {h:?}"
    );
    // Same-node hints win over zone hints.
    let eps = "- {addresses: [10.244.1.2], nodeName: node-1, hints: {forZones: [{name: zone-a}], forNodes: [{name: node-2}]}}\n\
               - {addresses: [10.244.2.2], nodeName: node-2, hints: {forZones: [{name: zone-b}], forNodes: [{name: node-1}]}}\n\
               - {addresses: [10.244.3.2], nodeName: node-3, hints: {forZones: [{name: zone-a}], forNodes: [{name: node-3}]}}";
    c.edit("cond.yaml", |_| conditions_service(eps));
    assert_eq!(
        c.hist(&c.topo.pods[pod], "10.96.100.170:80", 10, Proto::Tcp),
        BTreeMap::from([("222".to_string(), 10)])
    );
    // ipMode: Proxy ingress IPs are not programmed; VIP ones are.
    assert_eq!(
        c.hist(&c.topo.client, "192.168.122.171:80", 3, Proto::Tcp),
        BTreeMap::from([("222".to_string(), 3)])
    );
    let r = tcp_request(
        &c.topo.client,
        addr("192.168.122.170:80"),
        Duration::from_millis(500),
    );
    assert!(r.is_err(), "ipMode Proxy must not be DNATed: {r:?}");
}
