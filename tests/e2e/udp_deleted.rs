//! The UDP flows of a deleted service are deleted with it (kubernetes#141371): a client that
//! keeps sending from one port keeps one conntrack entry, DNATed to the old endpoint, for as
//! long as it sends, unless Rudder deletes it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rudder_e2e::{Daemon, EchoServers, Netns, TempDir, Topology, e2e_enabled, serve_pod};

const SYNC_DONE: &str = "sync done";

fn rudder_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rudder"))
}

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/nginx")
}

/// One datagram from a fixed local port (so every call is the same conntrack flow), and the
/// answer.
fn udp_from_fixed_port(ns: &Netns, local_port: u16, to: &str) -> Result<String, String> {
    let to: SocketAddr = to.parse().map_err(|e| format!("{e}"))?;
    ns.enter(|| {
        let s = std::net::UdpSocket::bind(("0.0.0.0", local_port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_millis(700)))
            .map_err(|e| e.to_string())?;
        s.send_to(b"ping", to).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        let (n, _) = s.recv_from(&mut buf).map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
    })
    .map_err(|e| e.to_string())?
}

const DNS: &str = r#"apiVersion: v1
kind: Service
metadata: {name: dns, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.100.170
  ports: [{name: dns, port: 53, protocol: UDP, nodePort: 30054}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-1, namespace: default, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
ports: [{name: dns, port: 5353, protocol: UDP}]
endpoints: [{addresses: [10.244.1.2], nodeName: node-1}]
"#;

#[test]
fn the_udp_flows_of_a_deleted_service_are_deleted() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new().expect("topology");
    let _servers: Vec<EchoServers> = ["111", "222", "333"]
        .iter()
        .enumerate()
        .map(|(i, n)| serve_pod(&topo.pods[i], n, &[5353]).expect("echo servers"))
        .collect();
    let manifests = TempDir::new("udp-deleted").expect("temp dir");
    let node = std::fs::read_to_string(example_dir().join("node.yaml")).expect("node.yaml");
    manifests.write("node.yaml", &node).expect("write");
    manifests.write("dns.yaml", DNS).expect("write");
    let dir = manifests.path().display().to_string();
    let mut daemon = Daemon::start(
        &rudder_bin(),
        &topo.node,
        &[
            "run",
            "--manifests",
            &dir,
            "--hostname-override",
            "node-1",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--iptables-min-sync-period",
            "100ms",
            "--manifests-poll-interval",
            "50ms",
        ],
    )
    .expect("start");
    daemon
        .wait_for(SYNC_DONE, 1, Duration::from_secs(20))
        .expect("first sync");
    // Two flows that keep their source port: a pod to the ClusterIP, the client to the node
    // port.
    for _ in 0..3 {
        assert_eq!(
            udp_from_fixed_port(&topo.pods[2], 40054, "10.96.100.170:53"),
            Ok("111".to_string())
        );
        assert_eq!(
            udp_from_fixed_port(&topo.client, 40055, "172.18.0.2:30054"),
            Ok("111".to_string())
        );
    }
    // The service goes. Without the cleanup both flows would keep reaching 10.244.1.2
    // through their old DNAT for as long as their clients keep sending.
    let syncs = daemon.count(SYNC_DONE);
    std::fs::remove_file(manifests.path().join("dns.yaml")).expect("delete the service");
    daemon
        .wait_for(SYNC_DONE, syncs + 1, Duration::from_secs(10))
        .expect("sync after the deletion");
    daemon
        .wait_for(
            "deleted stale UDP conntrack entries",
            1,
            Duration::from_secs(5),
        )
        .expect("cleanup");
    let pod = udp_from_fixed_port(&topo.pods[2], 40054, "10.96.100.170:53");
    assert!(
        pod.is_err(),
        "the ClusterIP flow still reaches the old endpoint: {pod:?}"
    );
    let client = udp_from_fixed_port(&topo.client, 40055, "172.18.0.2:30054");
    assert!(
        client.is_err(),
        "the node port flow still reaches the old endpoint: {client:?}"
    );
}
