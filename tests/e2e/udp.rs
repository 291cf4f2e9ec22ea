//! Long-running UDP flows across restarts and full resyncs.
//!
//! kube-proxy deletes every UDP conntrack entry of every service at its first sync after a
//! restart (kubernetes#122740: each service looks like it went from zero endpoints to some), so
//! a UDP flow — a QUIC connection, a syslog or statsd stream — may jump to another backend
//! whenever kube-proxy restarts. Rudder deletes only entries whose endpoint no longer serves
//! the service: a flow to an unchanged service keeps its conntrack entry (same kernel id) and
//! its backend across `kill -9` + restart and across full resyncs, while a flow whose endpoint
//! was removed — even while Rudder was down, even when it was the last endpoint — is cleaned.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rudder_e2e::client::UdpFlow;
use rudder_e2e::conntrack::{Entry, udp_entry_from};
use rudder_e2e::{Daemon, EchoServers, RequestError, TempDir, Topology, e2e_enabled, serve_pod};

const NAMES: [&str; 3] = ["111", "222", "333"];
const SYNC_DONE: &str = "sync done";
/// The ClusterIP and node port of `dns`, a UDP service with three endpoints.
const DNS_CLUSTER_IP: &str = "10.96.100.53:53";
const DNS_NODE_PORT: &str = "172.18.0.2:30053";
/// `lone`: a UDP ClusterIP service whose only endpoint is pod-2 (`333`).
const LONE_CLUSTER_IP: &str = "10.96.100.54:53";
const PING: Duration = Duration::from_millis(700);

fn rudder_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rudder"))
}

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/nginx")
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test socket address")
}

fn pod_ip(name: &str) -> &'static str {
    match name {
        "111" => "10.244.1.2",
        "222" => "10.244.2.2",
        _ => "10.244.3.2",
    }
}

/// `dns` with the given endpoints (pod IPs), and `lone` with pod-2 unless `lone_endpoints`
/// is false (then `lone` has no EndpointSlice at all).
fn manifests(dns_endpoints: &[&str], lone_endpoints: bool) -> String {
    let eps: Vec<String> = dns_endpoints
        .iter()
        .map(|ip| format!("  - {{addresses: [{ip}], nodeName: node-1}}"))
        .collect();
    let mut text = format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: dns, namespace: default}}
spec:
  type: NodePort
  clusterIP: 10.96.100.53
  ports: [{{name: dns, port: 53, protocol: UDP, targetPort: 5353, nodePort: 30053}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: dns-1, namespace: default, labels: {{kubernetes.io/service-name: dns}}}}
addressType: IPv4
ports: [{{name: dns, port: 5353, protocol: UDP}}]
endpoints:
{}
---
apiVersion: v1
kind: Service
metadata: {{name: lone, namespace: default}}
spec:
  clusterIP: 10.96.100.54
  ports: [{{name: dns, port: 53, protocol: UDP, targetPort: 5353}}]
"#,
        eps.join("\n")
    );
    if lone_endpoints {
        text.push_str(
            r#"---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: lone-1, namespace: default, labels: {kubernetes.io/service-name: lone}}
addressType: IPv4
ports: [{name: dns, port: 5353, protocol: UDP}]
endpoints: [{addresses: [10.244.3.2], nodeName: node-1}]
"#,
        );
    }
    text
}

struct Node {
    topo: Topology,
    manifests: TempDir,
    daemon: Daemon,
    _servers: Vec<EchoServers>,
}

impl Node {
    fn start() -> Node {
        let topo = Topology::new().expect("topology");
        let servers = (0..3)
            .map(|i| serve_pod(&topo.pods[i], NAMES[i], &[5353]).expect("echo servers"))
            .collect();
        let manifests = TempDir::new("udp-manifests").expect("temp dir");
        let node = std::fs::read_to_string(example_dir().join("node.yaml")).expect("node.yaml");
        manifests.write("node.yaml", &node).expect("write");
        manifests
            .write("udp.yaml", &manifests_text_all())
            .expect("write");
        let daemon = start_daemon(&topo, &manifests);
        Node {
            topo,
            manifests,
            daemon,
            _servers: servers,
        }
    }

    /// `kill -9`, then start a new daemon (after `while_down` ran) and wait for its first sync.
    fn restart(&mut self, while_down: impl FnOnce(&Node)) {
        self.daemon.kill().expect("kill -9");
        while_down(self);
        self.daemon = start_daemon(&self.topo, &self.manifests);
    }

    fn entry(&self, flow: &UdpFlow) -> Option<Entry> {
        udp_entry_from(&self.topo.node, flow.local()).expect("conntrack -L")
    }

    /// Waits until the daemon has logged `n` more lines containing all of `needles`.
    fn wait_lines(&mut self, needles: &[&str], n: usize) {
        let count = |d: &Daemon| {
            d.log()
                .lines()
                .filter(|l| needles.iter().all(|x| l.contains(x)))
                .count()
        };
        let target = count(&self.daemon) + n;
        let deadline = Instant::now() + Duration::from_secs(20);
        while count(&self.daemon) < target {
            assert!(
                Instant::now() < deadline,
                "no {n}× {needles:?}:\n{}",
                self.daemon.log()
            );
            assert!(
                self.daemon.exited().expect("try_wait").is_none(),
                "rudder exited:\n{}",
                self.daemon.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn manifests_text_all() -> String {
    manifests(&[pod_ip("111"), pod_ip("222"), pod_ip("333")], true)
}

fn start_daemon(topo: &Topology, manifests: &TempDir) -> Daemon {
    let dir = manifests.path().display().to_string();
    let args = [
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
        // Full resyncs every two seconds: each one recompiles every service, replaces the
        // tables and runs the conntrack cleanup over the complete state.
        "--full-sync-period",
        "2s",
    ];
    let mut daemon = Daemon::start(&rudder_bin(), &topo.node, &args).expect("start rudder");
    daemon
        .wait_for(SYNC_DONE, 1, Duration::from_secs(20))
        .expect("first sync");
    daemon
}

/// A flow, the backend that answers it, and its conntrack entry.
struct Held {
    flow: UdpFlow,
    backend: String,
    entry: Entry,
}

impl Held {
    fn open(node: &Node, local_port: u16, to: &str) -> Held {
        let local = SocketAddr::new(node.topo.client_ipv4().into(), local_port);
        let flow = UdpFlow::open(&node.topo.client, local, addr(to)).expect("UDP socket");
        let backend = flow.ping(PING).expect("first answer");
        let entry = node.entry(&flow).expect("a conntrack entry for the flow");
        Held {
            flow,
            backend,
            entry,
        }
    }

    /// The flow still reaches the same backend through the same conntrack entry.
    fn assert_kept(&self, node: &Node, when: &str) {
        for _ in 0..3 {
            assert_eq!(
                self.flow.ping(PING).map_err(|e| e.to_string()),
                Ok(self.backend.clone()),
                "{when}: flow {} → {} changed backend\n{}",
                self.flow.local(),
                self.flow.remote(),
                node.daemon.log()
            );
        }
        assert_eq!(
            node.entry(&self.flow).map(|e| e.id),
            Some(self.entry.id),
            "{when}: the conntrack entry of {} → {} was deleted\n{}",
            self.flow.local(),
            self.flow.remote(),
            node.daemon.log()
        );
    }
}

#[test]
fn udp_flows_to_unchanged_services_survive_restarts_and_full_resyncs_stale_ones_are_cleaned() {
    if !e2e_enabled() {
        return;
    }
    let mut node = Node::start();
    // Two long-running flows from the external client: through the ClusterIP and through the
    // node port. Two more, C (ClusterIP) and D (node port), on a backend that is neither of
    // theirs, to remove later.
    let a = Held::open(&node, 41000, DNS_CLUSTER_IP);
    let b = Held::open(&node, 41001, DNS_NODE_PORT);
    let third = NAMES
        .into_iter()
        .find(|n| *n != a.backend && *n != b.backend)
        .expect("three backends");
    let on_third = |ports: std::ops::Range<u16>, to: &str| {
        ports
            .map(|port| Held::open(&node, port, to))
            .find(|h| h.backend == third)
            .expect("a flow on the third backend")
    };
    let c = on_third(41100..41200, DNS_CLUSTER_IP);
    let d = on_third(41200..41300, DNS_NODE_PORT);
    // E: the only endpoint of `lone`.
    let e = Held::open(&node, 42000, LONE_CLUSTER_IP);
    assert_eq!(e.backend, "333");
    let all = [&a, &b, &c, &d, &e];

    // 1. kill -9 and restart, nothing changed meanwhile: the rules stayed in the kernel while
    //    Rudder was down, and its first (full) sync after the restart keeps every flow.
    node.restart(|node| {
        for h in all {
            h.assert_kept(node, "while rudder is down");
        }
    });
    for h in all {
        h.assert_kept(&node, "after kill -9 and restart");
    }

    // 2. Full resyncs (every two seconds): every flow is kept.
    node.wait_lines(&[SYNC_DONE, "full"], 2);
    for h in all {
        h.assert_kept(&node, "after two full resyncs");
    }

    // 3. The third endpoint is removed while Rudder is down: the first sync after the restart
    //    deletes the entries of C and D, whose next datagrams go to a remaining endpoint; A,
    //    B and E stay.
    let remaining: Vec<&str> = NAMES.iter().copied().filter(|n| *n != third).collect();
    node.restart(|node| {
        let ips: Vec<&str> = remaining.iter().map(|n| pod_ip(n)).collect();
        node.manifests
            .write("udp.yaml", &manifests(&ips, true))
            .expect("write");
    });
    for h in [&c, &d] {
        let cleaned = node.entry(&h.flow);
        assert!(
            cleaned.is_none_or(|x| x.id != h.entry.id),
            "the flow {} → {} to the removed endpoint was not cleaned at start: {cleaned:?}\n{}",
            h.flow.local(),
            h.flow.remote(),
            node.daemon.log()
        );
        let answer = h.flow.ping(PING).expect("answer after cleanup");
        assert!(
            remaining.contains(&answer.as_str()),
            "{} is now answered by {answer}, expected one of {remaining:?}",
            h.flow.remote()
        );
    }
    for h in [&a, &b, &e] {
        h.assert_kept(&node, "after restart with an endpoint removed");
    }

    // 4. `lone` loses its last endpoint while Rudder runs: E's entry is deleted, so E is
    //    rejected like any new flow instead of staying DNATed to the removed pod (which still
    //    answers here) — kube-proxy fixed this only in kubernetes#139629.
    let ips: Vec<&str> = remaining.iter().map(|n| pod_ip(n)).collect();
    node.manifests
        .write("udp.yaml", &manifests(&ips, false))
        .expect("write");
    node.wait_lines(&[SYNC_DONE], 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match e.flow.ping(PING) {
            Err(RequestError::Refused) => break,
            other => assert!(
                Instant::now() < deadline,
                "the flow to a service without endpoints still gets {other:?}: {:?}\n{}",
                node.entry(&e.flow),
                node.daemon.log()
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for h in [&a, &b] {
        h.assert_kept(&node, "after another service lost its endpoints");
    }
    assert!(
        node.daemon
            .log()
            .contains("deleted stale UDP conntrack entries")
    );
}
