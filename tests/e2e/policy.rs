//! End-to-end tests of traffic policies on two nodes, each running the real `rudder`
//! binary: `externalTrafficPolicy: Local` (source IP preserved, only local endpoints, drop
//! without them, short-circuit for pods and the node itself) and `internalTrafficPolicy:
//! Local`, against `Cluster` for contrast. Real TCP connections prove every point.
//!
//! Topology (`rudder_e2e::TwoNodes`): node-0 `172.18.0.2` with pod-0 `10.244.1.2` and pod-1
//! `10.244.1.3`; node-1 `172.18.0.3` with pod-2 `10.244.2.2` and pod-3 `10.244.2.3`; an
//! external client `172.18.0.10` on the same LAN.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rudder_e2e::client::histogram_with_timeout;
use rudder_e2e::{Daemon, EchoServers, Netns, Proto, TempDir, TwoNodes, e2e_enabled, serve_pod};

const SYNC_DONE: &str = "sync done";

fn rudder_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rudder"))
}

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-0}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-1}
status: {addresses: [{type: InternalIP, address: 172.18.0.3}]}
---
# externalTrafficPolicy: Local, one endpoint on each node.
apiVersion: v1
kind: Service
metadata: {name: etp-local, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.50
  externalTrafficPolicy: Local
  ports: [{name: http, port: 80, nodePort: 30050}]
status: {loadBalancer: {ingress: [{ip: 192.168.122.50}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: etp-local-1, namespace: default, labels: {kubernetes.io/service-name: etp-local}}
addressType: IPv4
ports: [{name: http, port: 80}]
endpoints:
- {addresses: [10.244.1.2], nodeName: node-0}
- {addresses: [10.244.2.2], nodeName: node-1}
---
# externalTrafficPolicy: Local, its only endpoint on node-1.
apiVersion: v1
kind: Service
metadata: {name: etp-remote, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.51
  externalTrafficPolicy: Local
  ports: [{name: http, port: 80, nodePort: 30051}]
status: {loadBalancer: {ingress: [{ip: 192.168.122.51}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: etp-remote-1, namespace: default, labels: {kubernetes.io/service-name: etp-remote}}
addressType: IPv4
ports: [{name: http, port: 80}]
endpoints:
- {addresses: [10.244.2.3], nodeName: node-1}
---
# externalTrafficPolicy: Cluster, for contrast.
apiVersion: v1
kind: Service
metadata: {name: etp-cluster, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.0.52
  ports: [{name: http, port: 80, nodePort: 30052}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: etp-cluster-1, namespace: default, labels: {kubernetes.io/service-name: etp-cluster}}
addressType: IPv4
ports: [{name: http, port: 80}]
endpoints:
- {addresses: [10.244.1.2], nodeName: node-0}
- {addresses: [10.244.2.2], nodeName: node-1}
---
# internalTrafficPolicy: Local, its only endpoint on node-0.
apiVersion: v1
kind: Service
metadata: {name: itp-local, namespace: default}
spec:
  clusterIP: 10.96.0.60
  internalTrafficPolicy: Local
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: itp-local-1, namespace: default, labels: {kubernetes.io/service-name: itp-local}}
addressType: IPv4
ports: [{name: http, port: 80}]
endpoints:
- {addresses: [10.244.1.3], nodeName: node-0}
"#;

struct Cluster {
    _daemons: Vec<Daemon>,
    servers: Vec<EchoServers>,
    _manifests: TempDir,
    c: TwoNodes,
}

impl Cluster {
    /// Both nodes run Rudder on the same manifests; `detect` picks the local-traffic mode.
    fn start(detect: &[&str]) -> Cluster {
        let c = TwoNodes::new().expect("two nodes");
        let servers = (0..4)
            .map(|i| serve_pod(&c.pods[i], &format!("pod-{i}"), &[80]).expect("echo"))
            .collect();
        let manifests = TempDir::new("policy").expect("temp dir");
        manifests
            .write("cluster.yaml", MANIFESTS)
            .expect("manifests");
        let dir = manifests.path().display().to_string();
        let daemons = (0..2)
            .map(|n| {
                let name = format!("node-{n}");
                let mut args = vec!["run", "--manifests", &dir, "--hostname-override", &name];
                args.extend_from_slice(detect);
                let mut d = Daemon::start(&rudder_bin(), &c.nodes[n], &args).expect("start rudder");
                d.wait_for(SYNC_DONE, 1, Duration::from_secs(20))
                    .expect("first sync");
                d
            })
            .collect();
        c.client_route_via("192.168.122.0/24", 0)
            .expect("client route");
        Cluster {
            _daemons: daemons,
            servers,
            _manifests: manifests,
            c,
        }
    }

    fn hist(&self, from: &Netns, to: &str, n: usize) -> BTreeMap<String, usize> {
        histogram_with_timeout(
            from,
            to.parse::<SocketAddr>().expect("address"),
            n,
            Proto::Tcp,
            Duration::from_millis(700),
        )
    }

    fn clear(&self) {
        for s in &self.servers {
            s.clear_peers();
        }
    }

    /// The client addresses a pod's server saw.
    fn peers(&self, pod: usize) -> Vec<String> {
        self.servers[pod]
            .accepted_peers()
            .iter()
            .map(|p| p.ip().to_string())
            .collect()
    }
}

fn only(name: &str, n: usize) -> BTreeMap<String, usize> {
    BTreeMap::from([(name.to_string(), n)])
}

#[test]
fn external_traffic_policy_local_keeps_the_source_and_uses_only_local_endpoints() {
    if !e2e_enabled() {
        return;
    }
    let k = Cluster::start(&["--cluster-cidr", "10.244.0.0/16"]);
    let client = &k.c.client;
    // Through node-0, only node-0's endpoint answers, and it sees the real client address.
    k.clear();
    assert_eq!(k.hist(client, "172.18.0.2:30050", 10), only("pod-0", 10));
    assert_eq!(k.hist(client, "192.168.122.50:80", 10), only("pod-0", 10));
    assert!(
        k.peers(0).iter().all(|p| p == "172.18.0.10"),
        "source not preserved: {:?}",
        k.peers(0)
    );
    // Through node-1, only node-1's endpoint.
    k.clear();
    assert_eq!(k.hist(client, "172.18.0.3:30050", 10), only("pod-2", 10));
    assert!(
        k.peers(2).iter().all(|p| p == "172.18.0.10"),
        "{:?}",
        k.peers(2)
    );
    // With Cluster policy both endpoints answer and the source is masqueraded.
    k.clear();
    let h = k.hist(client, "172.18.0.2:30052", 40);
    assert_eq!(
        h.keys().map(String::as_str).collect::<Vec<_>>(),
        ["pod-0", "pod-2"],
        "{h:?}"
    );
    assert!(
        k.peers(0)
            .iter()
            .chain(k.peers(2).iter())
            .all(|p| p != "172.18.0.10"),
        "Cluster policy must masquerade"
    );
}

#[test]
fn external_traffic_policy_local_without_local_endpoints_drops_but_short_circuits() {
    if !e2e_enabled() {
        return;
    }
    let k = Cluster::start(&["--cluster-cidr", "10.244.0.0/16"]);
    // node-0 has no endpoint of etp-remote: external traffic through it is dropped (a
    // timeout, not a refusal)...
    let h = k.hist(&k.c.client, "172.18.0.2:30051", 3);
    assert_eq!(
        h,
        BTreeMap::from([("<timeout>".to_string(), 3)]),
        "NodePort on a node without local endpoints"
    );
    let h = k.hist(&k.c.client, "192.168.122.51:80", 3);
    assert_eq!(
        h,
        BTreeMap::from([("<timeout>".to_string(), 3)]),
        "LB IP on a node without local endpoints"
    );
    // ... through node-1 it works ...
    assert_eq!(k.hist(&k.c.client, "172.18.0.3:30051", 5), only("pod-3", 5));
    // ... and pods and the node itself reach the external IP anyway (short-circuit).
    assert_eq!(
        k.hist(&k.c.pods[0], "192.168.122.51:80", 5),
        only("pod-3", 5)
    );
    assert_eq!(
        k.hist(&k.c.nodes[0], "192.168.122.51:80", 5),
        only("pod-3", 5)
    );
    assert_eq!(
        k.hist(&k.c.nodes[0], "172.18.0.2:30051", 5),
        only("pod-3", 5)
    );
}

#[test]
fn pod_short_circuit_works_with_bridge_interface_detection() {
    if !e2e_enabled() {
        return;
    }
    let k = Cluster::start(&[
        "--detect-local-mode",
        "BridgeInterface",
        "--pod-bridge-interface",
        "cbr0",
    ]);
    // Pods on node-0 reach etp-local's LB IP through node-0's rules: all endpoints,
    // cluster-wide, not only the local one.
    let h = k.hist(&k.c.pods[1], "192.168.122.50:80", 40);
    assert_eq!(
        h.keys().map(String::as_str).collect::<Vec<_>>(),
        ["pod-0", "pod-2"],
        "{h:?}"
    );
    assert_eq!(
        k.hist(&k.c.pods[1], "192.168.122.51:80", 5),
        only("pod-3", 5)
    );
}

#[test]
fn internal_traffic_policy_local_uses_only_this_nodes_endpoints() {
    if !e2e_enabled() {
        return;
    }
    let k = Cluster::start(&["--cluster-cidr", "10.244.0.0/16"]);
    // From node-0's pods: the local endpoint.
    assert_eq!(k.hist(&k.c.pods[0], "10.96.0.60:80", 10), only("pod-1", 10));
    // From node-1's pods: no local endpoint, endpoints elsewhere: dropped (timeout).
    assert_eq!(
        k.hist(&k.c.pods[2], "10.96.0.60:80", 3),
        BTreeMap::from([("<timeout>".to_string(), 3)])
    );
    // A ClusterIP with Cluster policy from node-1 still reaches both nodes' endpoints.
    let h = k.hist(&k.c.pods[3], "10.96.0.52:80", 40);
    assert_eq!(
        h.keys().map(String::as_str).collect::<Vec<_>>(),
        ["pod-0", "pod-2"],
        "{h:?}"
    );
}

const MANIFESTS_V6: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-0}
status: {addresses: [{type: InternalIP, address: "fc00:f853:ccd:e793::2"}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-1}
status: {addresses: [{type: InternalIP, address: "fc00:f853:ccd:e793::3"}]}
---
apiVersion: v1
kind: Service
metadata: {name: etp-local6, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: "fd00:10:96::50"
  clusterIPs: ["fd00:10:96::50"]
  ipFamilies: [IPv6]
  externalTrafficPolicy: Local
  ports: [{name: http, port: 80, nodePort: 30060}]
status: {loadBalancer: {ingress: [{ip: "fd00:ff::50"}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: etp-local6-1, namespace: default, labels: {kubernetes.io/service-name: etp-local6}}
addressType: IPv6
ports: [{name: http, port: 80}]
endpoints:
- {addresses: ["fd00:10:244:1::2"], nodeName: node-0}
- {addresses: ["fd00:10:244:2::2"], nodeName: node-1}
---
apiVersion: v1
kind: Service
metadata: {name: itp-local6, namespace: default}
spec:
  clusterIP: "fd00:10:96::60"
  clusterIPs: ["fd00:10:96::60"]
  ipFamilies: [IPv6]
  internalTrafficPolicy: Local
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: itp-local6-1, namespace: default, labels: {kubernetes.io/service-name: itp-local6}}
addressType: IPv6
ports: [{name: http, port: 80}]
endpoints:
- {addresses: ["fd00:10:244:1::3"], nodeName: node-0}
"#;

#[test]
fn traffic_policies_work_the_same_over_ipv6() {
    if !e2e_enabled() {
        return;
    }
    let c = TwoNodes::new().expect("two nodes");
    let servers: Vec<EchoServers> = (0..4)
        .map(|i| serve_pod(&c.pods[i], &format!("pod-{i}"), &[80]).expect("echo"))
        .collect();
    let manifests = TempDir::new("policy6").expect("temp dir");
    manifests
        .write("cluster.yaml", MANIFESTS_V6)
        .expect("manifests");
    let dir = manifests.path().display().to_string();
    let _daemons: Vec<Daemon> = (0..2)
        .map(|n| {
            let name = format!("node-{n}");
            let args = [
                "run",
                "--manifests",
                &dir,
                "--hostname-override",
                &name,
                "--cluster-cidr",
                "10.244.0.0/16,fd00:10:244::/56",
            ];
            let mut d = Daemon::start(&rudder_bin(), &c.nodes[n], &args).expect("start rudder");
            d.wait_for(SYNC_DONE, 1, Duration::from_secs(20))
                .expect("first sync");
            d
        })
        .collect();
    c.client_route_via("fd00:ff::/64", 0).expect("client route");
    let hist = |from: &Netns, to: &str, n| {
        histogram_with_timeout(
            from,
            to.parse::<SocketAddr>().expect("address"),
            n,
            Proto::Tcp,
            Duration::from_millis(700),
        )
    };
    // externalTrafficPolicy: Local through node-0: only node-0's endpoint, client source kept.
    assert_eq!(
        hist(&c.client, "[fc00:f853:ccd:e793::2]:30060", 10),
        only("pod-0", 10)
    );
    assert_eq!(hist(&c.client, "[fd00:ff::50]:80", 10), only("pod-0", 10));
    let peers: Vec<String> = servers[0]
        .accepted_peers()
        .iter()
        .map(|p| p.ip().to_string())
        .collect();
    assert!(
        !peers.is_empty() && peers.iter().all(|p| p == "fc00:f853:ccd:e793::10"),
        "source not preserved: {peers:?}"
    );
    // Through node-1: node-1's endpoint.
    assert_eq!(
        hist(&c.client, "[fc00:f853:ccd:e793::3]:30060", 10),
        only("pod-2", 10)
    );
    // internalTrafficPolicy: Local.
    assert_eq!(
        hist(&c.pods[0], "[fd00:10:96::60]:80", 10),
        only("pod-1", 10)
    );
    assert_eq!(
        hist(&c.pods[2], "[fd00:10:96::60]:80", 3),
        BTreeMap::from([("<timeout>".to_string(), 3)])
    );
}
