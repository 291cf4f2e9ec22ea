//! End-to-end tests of services that collide (issue 10): kernel object names that two services
//! could share, and frontends two services claim. The real `rudder` binary programs a real
//! kernel in a throwaway node namespace, and real TCP connections from pods and an external
//! client show which backend each frontend reaches.
//!
//! Topology (see `rudder_e2e::topo`): node `172.18.0.2`; pods `10.244.{1,2,3}.2` answering
//! `111`, `222`, `333`; a client at `172.18.0.10` that routes everything through the node.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rudder_e2e::{Daemon, EchoServers, Proto, TempDir, Topology, e2e_enabled, serve_pod};

const NAMES: [&str; 3] = ["111", "222", "333"];
const SYNC_DONE: &str = "sync done";

fn rudder_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rudder"))
}

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/nginx")
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test socket address")
}

/// The example's node (`node-1`) and three pods serving 111/222/333, the files `extra` as the
/// only manifests besides the Node, and `rudder run` on them.
struct Cluster {
    daemon: Daemon,
    manifests: TempDir,
    _servers: Vec<EchoServers>,
    topo: Topology,
}

impl Cluster {
    fn start(extra: &[(&str, &str)]) -> Cluster {
        let topo = Topology::new().expect("topology");
        let servers: Vec<EchoServers> = (0..3)
            .map(|i| serve_pod(&topo.pods[i], NAMES[i], &[80]).expect("echo servers"))
            .collect();
        let manifests = TempDir::new("manifests").expect("temp dir");
        let node = std::fs::read_to_string(example_dir().join("node.yaml")).expect("node.yaml");
        manifests.write("node.yaml", &node).expect("copy manifest");
        for (name, text) in extra {
            manifests.write(name, text).expect("write manifest");
        }
        let dir = manifests.path().display().to_string();
        let args = [
            "run",
            "--manifests",
            &dir,
            "--hostname-override",
            "node-1",
            "--cluster-cidr",
            "10.244.0.0/16,fd00:10:244::/56",
            "--iptables-min-sync-period",
            "100ms",
            "--manifests-poll-interval",
            "50ms",
        ];
        let mut daemon = Daemon::start(&rudder_bin(), &topo.node, &args).expect("start rudder");
        daemon
            .wait_for(SYNC_DONE, 1, Duration::from_secs(20))
            .expect("first sync");
        Cluster {
            daemon,
            manifests,
            _servers: servers,
            topo,
        }
    }

    fn hist(
        &self,
        from: &rudder_e2e::Netns,
        to: &str,
        n: usize,
        proto: Proto,
    ) -> BTreeMap<String, usize> {
        rudder_e2e::client::histogram_with_timeout(from, addr(to), n, proto, Duration::from_secs(2))
    }

    /// Replaces (or, with `None`, removes) a manifest and waits for the sync it causes.
    fn put(&mut self, file: &str, content: Option<&str>) {
        let syncs = self.daemon.count(SYNC_DONE);
        match content {
            Some(text) => {
                self.manifests.write(file, text).expect("write manifest");
            }
            None => std::fs::remove_file(self.manifests.path().join(file)).expect("remove"),
        }
        self.daemon
            .wait_for(SYNC_DONE, syncs + 1, Duration::from_secs(5))
            .expect("re-sync after the change");
    }
}

fn only(backend: &str, n: usize) -> BTreeMap<String, usize> {
    BTreeMap::from([(backend.to_owned(), n)])
}

/// A ClientIP-affinity service `namespace/name` on `cluster_ip:80` whose only endpoint is `ep`.
fn sticky(namespace: &str, name: &str, cluster_ip: &str, ep: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: "{name}", namespace: "{namespace}"}}
spec:
  clusterIP: {cluster_ip}
  sessionAffinity: ClientIP
  ports: [{{name: http, port: 80}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: slice
  namespace: "{namespace}"
  labels: {{kubernetes.io/service-name: "{name}"}}
addressType: IPv4
ports: [{{name: http, port: 80}}]
endpoints: [{{addresses: [{ep}], nodeName: node-1}}]
"#
    )
}

/// Namespace `x` with service `y/z`, and namespace `x/y` with service `z`: joined with `/`
/// their identities read the same, and a hash of that text gave both the same affinity chains
/// (traffic for one then reached the other's backend).
#[test]
fn affinity_services_whose_names_join_alike_each_reach_only_their_own_backend() {
    if !e2e_enabled() {
        return;
    }
    let c = Cluster::start(&[
        ("a.yaml", &sticky("x", "y/z", "10.96.120.1", "10.244.1.2")),
        ("b.yaml", &sticky("x/y", "z", "10.96.120.2", "10.244.2.2")),
    ]);
    // Many new connections from two clients each: every one reaches the service's own backend.
    for from in [&c.topo.pods[2], &c.topo.client] {
        assert_eq!(
            c.hist(from, "10.96.120.1:80", 20, Proto::Tcp),
            only("111", 20)
        );
        assert_eq!(
            c.hist(from, "10.96.120.2:80", 20, Proto::Tcp),
            only("222", 20)
        );
    }
    let ruleset = rudder_e2e::nft::list_ruleset(&c.topo.node).expect("ruleset");
    assert!(
        !ruleset.contains("y/z") && !ruleset.contains("x/y"),
        "input text in the ruleset:\n{ruleset}"
    );
    assert!(
        !c.daemon.log().contains("object_name_collision"),
        "{}",
        c.daemon.log()
    );
}

/// `zz-old` (created 2020) owns ClusterIP 10.96.121.1:80 and node port 30121, backend 111.
/// `aa-new` (created 2024, so by name alone it would come first) repeats that ClusterIP as an
/// external IP and that node port, and has frontends of its own: ClusterIP 10.96.121.2:80
/// and load balancer IP 192.168.122.121:80, backend 222.
const CONTESTED: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: zz-old, namespace: default, creationTimestamp: "2020-01-01T00:00:00Z"}
spec:
  type: NodePort
  clusterIP: 10.96.121.1
  ports: [{name: http, port: 80, nodePort: 30121}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: zz-old-1, namespace: default, labels: {kubernetes.io/service-name: zz-old}}
addressType: IPv4
ports: [{name: http, port: 80}]
endpoints: [{addresses: [10.244.1.2], nodeName: node-1}]
"#;

const CONTENDER: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: aa-new, namespace: default, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  type: LoadBalancer
  clusterIP: 10.96.121.2
  externalIPs: [10.96.121.1]
  ports: [{name: http, port: 80, nodePort: 30121}]
status: {loadBalancer: {ingress: [{ip: 192.168.122.121}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: aa-new-1, namespace: default, labels: {kubernetes.io/service-name: aa-new}}
addressType: IPv4
ports: [{name: http, port: 80}]
endpoints: [{addresses: [10.244.2.2], nodeName: node-1}]
"#;

/// Rudder's metrics, fetched with a plain HTTP GET from inside the node namespace.
fn metrics(c: &Cluster) -> String {
    use std::io::{Read, Write};
    c.topo
        .node
        .enter(|| {
            let to = addr("127.0.0.1:10249");
            let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(1))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok::<String, std::io::Error>(out)
        })
        .expect("enter the node namespace")
        .expect("metrics answer")
}

/// The value of `rudder_invalid_input_skipped_total{reason="frontend_conflict"}`.
fn conflicts_counted(c: &Cluster) -> f64 {
    let text = metrics(c);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("rudder_invalid_input_skipped_total{reason=\"frontend_conflict\"} ")
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_contested_frontend_goes_to_the_winner_and_the_loser_keeps_the_rest() {
    if !e2e_enabled() {
        return;
    }
    let mut c = Cluster::start(&[("old.yaml", CONTESTED), ("new.yaml", CONTENDER)]);
    // The contested ClusterIP and node port reach the older service's backend only.
    assert_eq!(
        c.hist(&c.topo.pods[2], "10.96.121.1:80", 20, Proto::Tcp),
        only("111", 20)
    );
    assert_eq!(
        c.hist(&c.topo.client, "10.96.121.1:80", 20, Proto::Tcp),
        only("111", 20)
    );
    assert_eq!(
        c.hist(&c.topo.client, "172.18.0.2:30121", 20, Proto::Tcp),
        only("111", 20)
    );
    // The loser's other frontends work.
    assert_eq!(
        c.hist(&c.topo.pods[2], "10.96.121.2:80", 20, Proto::Tcp),
        only("222", 20)
    );
    assert_eq!(
        c.hist(&c.topo.client, "192.168.122.121:80", 20, Proto::Tcp),
        only("222", 20)
    );
    // Reported: logged naming the winner, counted once per conflict (the external IP and the
    // node port), and not again at the next syncs.
    let log = c.daemon.log();
    for said in [
        "Service default/aa-new: port \"http\": externalIP 10.96.121.1:80/tcp is also the clusterIP of default/zz-old:http/tcp, which keeps it",
        "Service default/aa-new: port \"http\": nodePort 30121/tcp is also the nodePort of default/zz-old:http/tcp, which keeps it (its Service is older)",
    ] {
        assert!(log.contains(said), "log lacks {said:?}:\n{log}");
    }
    assert_eq!(conflicts_counted(&c), 2.0, "{}", metrics(&c));
    c.put(
        "unrelated.yaml",
        Some(
            "apiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: default}\n\
             spec: {clusterIP: 10.96.121.9, ports: [{name: http, port: 80}]}\n",
        ),
    );
    assert_eq!(conflicts_counted(&c), 2.0, "{}", metrics(&c));

    // The winner goes away: the loser takes both frontends over.
    c.put("old.yaml", None);
    assert_eq!(
        c.hist(&c.topo.pods[2], "10.96.121.1:80", 20, Proto::Tcp),
        only("222", 20)
    );
    assert_eq!(
        c.hist(&c.topo.client, "172.18.0.2:30121", 20, Proto::Tcp),
        only("222", 20)
    );
    assert_eq!(
        c.hist(&c.topo.pods[2], "10.96.121.2:80", 20, Proto::Tcp),
        only("222", 20)
    );

    // It comes back: it wins again, and the conflicts are reported again.
    c.put("old.yaml", Some(CONTESTED));
    assert_eq!(
        c.hist(&c.topo.pods[2], "10.96.121.1:80", 20, Proto::Tcp),
        only("111", 20)
    );
    assert_eq!(
        c.hist(&c.topo.client, "172.18.0.2:30121", 20, Proto::Tcp),
        only("111", 20)
    );
    assert_eq!(conflicts_counted(&c), 4.0, "{}", metrics(&c));
}
