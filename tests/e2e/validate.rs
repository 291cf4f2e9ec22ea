//! End-to-end tests of input validation (issue 10): input that must not hurt the node is
//! refused, reported and counted, and the node keeps working. Each test runs the real
//! `rudder` binary in a throwaway network namespace (see `rudder_e2e`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rudder_e2e::{Daemon, EchoServers, Proto, TempDir, Topology, e2e_enabled, nft, serve_pod};

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

/// The example cluster (a node, three pods serving 111/222/333) with a copy of the example
/// manifests plus `extra` files, and `rudder run` on it.
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
            .map(|i| serve_pod(&topo.pods[i], NAMES[i], &[80, 5353]).expect("echo servers"))
            .collect();
        let manifests = TempDir::new("manifests").expect("temp dir");
        for f in ["node.yaml", "nginx.yaml"] {
            let text = std::fs::read_to_string(example_dir().join(f)).expect("example manifest");
            manifests.write(f, &text).expect("copy manifest");
        }
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

    fn metrics(&self) -> String {
        let (code, _, body) =
            http_get(&self.topo.node, "127.0.0.1:10249", "/metrics").expect("metrics answer");
        assert_eq!(code, 200);
        body
    }

    /// `rudder compile` of the same manifests, as the daemon reads them.
    fn compile(&self) -> (bool, String, String) {
        let out = std::process::Command::new(rudder_bin())
            .args(["compile", "--manifests"])
            .arg(self.manifests.path())
            .args([
                "--hostname-override",
                "node-1",
                "--cluster-cidr",
                "10.244.0.0/16,fd00:10:244::/56",
            ])
            .output()
            .expect("run compile");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// A plain HTTP GET of `path` from inside `ns`: status code, headers and body.
fn http_get(ns: &rudder_e2e::Netns, to: &str, path: &str) -> Result<(u16, String, String), String> {
    use std::io::{Read, Write};
    let to: SocketAddr = to.parse().map_err(|e| format!("{e}"))?;
    ns.enter(|| {
        let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(1))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: node\r\n\r\n").as_bytes())
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        let (head, body) = out.split_once("\r\n\r\n").ok_or("no header end")?;
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or("no status")?;
        Ok((code, head.to_owned(), body.to_owned()))
    })
    .map_err(|e| e.to_string())?
}

/// The value of one sample of the Prometheus text `text`.
fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

fn skipped(reason: &str) -> String {
    format!("rudder_invalid_input_skipped_total{{reason=\"{reason}\"}}")
}

/// Services and ServiceCIDRs that, programmed as written, would cut the node off: a
/// loopback ClusterIP on Rudder's own metrics port, the node's address as a ClusterIP and as
/// an external IP on the health port, a link-local external IP, an affinity timeout the
/// kernel cannot take, and ServiceCIDRs covering everything, the node, and the pods.
const DANGEROUS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: loopback, namespace: default}
spec: {clusterIP: 127.0.0.1, ports: [{name: http, port: 10249}]}
---
apiVersion: v1
kind: Service
metadata: {name: on-node, namespace: default}
spec: {clusterIP: 172.18.0.2, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: steal, namespace: default}
spec:
  clusterIP: 10.96.70.1
  externalIPs: [172.18.0.2, 169.254.169.254]
  ports: [{name: http, port: 10256, targetPort: 80}]
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 2147483647}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: steal-1, namespace: default, labels: {kubernetes.io/service-name: steal}}
addressType: IPv4
ports: [{name: http, port: 80}]
endpoints: [{addresses: [10.244.1.2], nodeName: node-1}]
---
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: everything}
spec: {cidrs: [0.0.0.0/0, "::/0"]}
---
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: node-and-pods}
spec: {cidrs: [172.18.0.0/16]}
---
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: pods}
spec: {cidrs: [10.244.0.0/20]}
---
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: kubernetes}
spec: {cidrs: [10.96.0.0/16]}
"#;

#[test]
fn dangerous_service_addresses_and_service_cidrs_never_cut_off_the_node() {
    if !e2e_enabled() {
        return;
    }
    let c = Cluster::start(&[("dangerous.yaml", DANGEROUS)]);
    // Rudder's own loopback metrics port still answers, and says what it refused.
    let text = c.metrics();
    for reason in [
        "special_cluster_ip",
        "special_external_ip",
        "cluster_ip_is_node_ip",
        "external_ip_is_node_ip",
        "invalid_affinity_timeout",
        "service_cidr_too_broad",
        "service_cidr_covers_node",
        "service_cidr_overlaps_pod_network",
    ] {
        assert!(
            metric(&text, &skipped(reason)) >= Some(1.0),
            "{reason} not counted:\n{text}"
        );
    }
    // The node's health port, from outside, is the node's (not the `steal` service's pod).
    let (code, _, body) = http_get(&c.topo.client, "172.18.0.2:10256", "/healthz")
        .expect("the node's own health port answers");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("lastUpdated"), "{body}");
    // Everything else still works: the example's services, and the valid part of `steal`.
    let all = c.hist(&c.topo.pods[0], "10.96.100.100:80", 30, Proto::Tcp);
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(
        c.hist(&c.topo.pods[1], "10.96.70.1:10256", 3, Proto::Tcp),
        BTreeMap::from([("111".to_string(), 3)])
    );
    let ruleset = nft::list_ruleset(&c.topo.node).expect("ruleset");
    for absent in [
        "0.0.0.0/0",
        "::/0",
        "172.18.0.0/16",
        "10.244.0.0/20",
        "127.0.0.1",
        "169.254.169.254",
        "172.18.0.2 . tcp",
    ] {
        assert!(!ruleset.contains(absent), "{absent} programmed:\n{ruleset}");
    }
    assert!(ruleset.contains("ip daddr 10.96.0.0/16 drop"), "{ruleset}");
    assert!(ruleset.contains("timeout 3h"), "{ruleset}");
    let log = c.daemon.log();
    assert!(
        log.contains("Service default/on-node: clusterIP 172.18.0.2 is an address of this node"),
        "{log}"
    );

    // `rudder compile` refuses the same things, says so, and its output loads.
    let (ok, compiled, stderr) = c.compile();
    assert!(ok, "{stderr}");
    for said in [
        "Service default/loopback: clusterIP 127.0.0.1 is loopback",
        "Service default/on-node: clusterIP 172.18.0.2 is an address of this node",
        "Service default/steal: externalIP 172.18.0.2 is an address of this node",
        "timeoutSeconds 2147483647 is outside 1-86400",
        "ServiceCIDR everything: 0.0.0.0/0 is broader than /8",
        "ServiceCIDR: 172.18.0.0/16 contains this node's address 172.18.0.2",
        "ServiceCIDR: 10.244.0.0/20 overlaps the pod network 10.244.0.0/16",
    ] {
        assert!(stderr.contains(said), "stderr lacks {said:?}:\n{stderr}");
    }
    for absent in ["0.0.0.0/0", "172.18.0.2 . tcp", "127.0.0.1", "2147483647"] {
        assert!(!compiled.contains(absent), "{absent} compiled:\n{compiled}");
    }
    assert!(compiled.contains("timeout 10800s"), "{compiled}");
    let fresh = rudder_e2e::Netns::new("validate").expect("netns");
    nft::load(&fresh, &compiled).expect("compiled output loads");
}

/// A Service whose name and namespace carry a newline, a carriage return and escape codes,
/// and that is invalid (so that Rudder logs its name): the forged text after the newline
/// looks like a log line of its own.
const FORGED: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: "evil\n2026-01-01T00:00:00.000000Z  INFO rudder: all services healthy\x1b[2J\r"
  namespace: "ns\x1b[31m\u009b1m"
spec: {clusterIP: 10.96.80.1, ports: [{name: a, port: 80}, {name: b, port: 70000}]}
"#;

fn assert_no_raw_controls(text: &str, what: &str) {
    let bad: Vec<char> = text
        .chars()
        .filter(|c| *c != '\n' && (c.is_control() || ('\u{2028}'..='\u{202e}').contains(c)))
        .collect();
    assert!(bad.is_empty(), "{what} has raw controls {bad:?}:\n{text}");
}

#[test]
fn names_with_newlines_and_escape_codes_cannot_forge_log_lines() {
    // `rudder compile` needs no privileges: its messages and its output.
    let dir = TempDir::new("forged").expect("temp dir");
    dir.write("forged.yaml", FORGED).expect("write");
    let out = std::process::Command::new(rudder_bin())
        .args(["compile", "--manifests"])
        .arg(dir.path())
        .args(["--hostname-override", "node-1", "--node-ip", "172.18.0.2"])
        .output()
        .expect("run compile");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stderr}");
    assert_no_raw_controls(&stderr, "compile's stderr");
    assert_no_raw_controls(&stdout, "compile's output");
    let forged: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("all services healthy"))
        .collect();
    assert_eq!(forged.len(), 1, "{stderr}");
    assert!(
        forged[0].starts_with(
            "rudder: skipping invalid input: Service ns\\u{1b}[31m\\u{9b}1m/evil\\n2026-01-01"
        ),
        "{stderr}"
    );
    assert!(stdout.contains("10.96.80.1 . tcp . 80"), "{stdout}");

    // `rudder run`: the daemon's log has the same single, visibly escaped line.
    if !e2e_enabled() {
        return;
    }
    let c = Cluster::start(&[("forged.yaml", FORGED)]);
    let log = c.daemon.log();
    assert_no_raw_controls(&log, "the daemon's log");
    let forged: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("all services healthy"))
        .collect();
    assert_eq!(forged.len(), 1, "{log}");
    assert!(
        forged[0].contains(" WARN ")
            && forged[0].contains("skipped invalid input: Service ns")
            && forged[0]
                .contains("/evil\\n2026-01-01T00:00:00.000000Z  INFO rudder: all services healthy")
            && forged[0].contains("reason=\"invalid_port\""),
        "{log}"
    );
}

/// A second Node named `node-1`, in a file read before the example's `node.yaml`, with an
/// address the node does not have. The later one (`node.yaml`, 172.18.0.2) is the node.
const EARLIER_NODE: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-1}
status: {addresses: [{type: InternalIP, address: 172.18.0.99}]}
"#;

#[test]
fn compile_and_run_pick_the_same_one_of_two_nodes_with_the_same_name() {
    if !e2e_enabled() {
        return;
    }
    let c = Cluster::start(&[("a-node.yaml", EARLIER_NODE)]);
    // Node ports listen on the later Node's address: real connections from outside.
    let hist = c.hist(&c.topo.client, "172.18.0.2:30001", 30, Proto::Tcp);
    assert_eq!(hist.len(), 3, "{hist:?}");
    let running = nft::list_ruleset(&c.topo.node).expect("ruleset");
    assert!(!running.contains("172.18.0.99"), "{running}");
    // `rudder compile` of the same files programs exactly the same.
    let (ok, compiled, stderr) = c.compile();
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("Node node-1: duplicate object: a later one with the same name is used"),
        "{stderr}"
    );
    let fresh = rudder_e2e::Netns::new("validate").expect("netns");
    nft::load(&fresh, &compiled).expect("compiled output loads");
    assert_eq!(nft::list_ruleset(&fresh).expect("ruleset"), running);
    assert!(metric(&c.metrics(), &skipped("duplicate_object")) >= Some(1.0));
}

#[test]
fn documents_with_fields_of_the_wrong_type_are_logged_and_counted() {
    if !e2e_enabled() {
        return;
    }
    let mut c = Cluster::start(&[]);
    let malformed = skipped("malformed_document");
    assert_eq!(metric(&c.metrics(), &malformed), None);
    let syncs = c.daemon.count(SYNC_DONE);
    let bad = |port: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: bad, namespace: default}}\nspec: {{clusterIP: 10.96.90.1, ports: [{{name: http, port: {port}}}]}}\n"
        )
    };
    let text = [bad("\"http\""), bad("80.5"), bad("true")].join("---\n");
    c.manifests.write("bad.yaml", &text).expect("write");
    // A valid change in the same read, so that there is a sync to wait for.
    c.manifests
        .write(
            "ok.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: ok, namespace: default}\nspec: {clusterIP: 10.96.90.2, ports: [{name: http, port: 80}]}\n",
        )
        .expect("write");
    c.daemon
        .wait_for(SYNC_DONE, syncs + 1, Duration::from_secs(5))
        .expect("sync");
    assert_eq!(metric(&c.metrics(), &malformed), Some(3.0));
    let log = c.daemon.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("bad.yaml") && l.contains("reason=\"malformed_document\""))
        .collect();
    assert_eq!(lines.len(), 3, "{log}");
    assert!(lines[0].contains("invalid Service"), "{log}");
    // Everything else is programmed.
    let ruleset = nft::list_ruleset(&c.topo.node).expect("ruleset");
    assert!(ruleset.contains("10.96.90.2"), "{ruleset}");
    assert!(!ruleset.contains("10.96.90.1"), "{ruleset}");
}

/// Against an API server: an object that does not deserialize (which a real API server
/// never serves, but a proxy or a broken aggregated API could) is logged and counted; the
/// watch goes on, and the rules stay.
#[test]
fn malformed_objects_from_the_api_server_are_counted_and_the_watch_goes_on() {
    use rudder_fake_apiserver::{Config, FakeApiServer};
    use serde_json::json;
    if !e2e_enabled() {
        return;
    }
    const TOKEN: &str = "rudder-e2e-token";
    let topo = Topology::new().expect("topology");
    let _servers: Vec<EchoServers> = (0..3)
        .map(|i| serve_pod(&topo.pods[i], NAMES[i], &[80]).expect("echo servers"))
        .collect();
    let listener = topo
        .client
        .enter(|| std::net::TcpListener::bind("172.18.0.10:6443"))
        .expect("enter client netns")
        .expect("bind API server");
    let api = FakeApiServer::start(listener, Config::default().with_token(TOKEN)).expect("API");
    fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).expect("object")
    }
    api.apply_node(obj(json!({
        "metadata": {"name": "node-1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"}]}
    })));
    let svc = |name: &str, ip: &str| {
        json!({
            "metadata": {"namespace": "default", "name": name},
            "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
        })
    };
    let slice = |svc: &str, ip: &str| {
        json!({
            "metadata": {"namespace": "default", "name": format!("{svc}-1"),
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "nodeName": "node-1"}]
        })
    };
    api.apply_service(obj(svc("first", "10.96.91.1")));
    api.apply_endpoint_slice(obj(slice("first", "10.244.1.2")));
    let kubeconfig = TempDir::new("kubeconfig").expect("temp dir");
    kubeconfig
        .write("kubeconfig", &api.kubeconfig(Some(TOKEN)))
        .expect("kubeconfig");
    let path = kubeconfig.path().join("kubeconfig").display().to_string();
    let args = [
        "run",
        "--kubeconfig",
        &path,
        "--hostname-override",
        "node-1",
        "--iptables-min-sync-period",
        "100ms",
    ];
    let mut daemon = Daemon::start(&rudder_bin(), &topo.node, &args).expect("start rudder");
    daemon
        .wait_for(SYNC_DONE, 1, Duration::from_secs(20))
        .expect("first sync");
    let hist = |to: &str| {
        rudder_e2e::client::histogram_with_timeout(
            &topo.pods[1],
            addr(to),
            3,
            Proto::Tcp,
            Duration::from_secs(2),
        )
    };
    assert_eq!(
        hist("10.96.91.1:80"),
        BTreeMap::from([("111".to_string(), 3)])
    );
    // A Service whose port is a string arrives in a watch event: skipped and counted.
    let mut bad = svc("bad", "10.96.91.9");
    bad["spec"]["ports"][0]["port"] = json!("http");
    api.apply_raw_service(bad);
    daemon
        .wait_for("reason=\"malformed_document\"", 1, Duration::from_secs(10))
        .expect("the malformed object is reported");
    let metrics = || {
        http_get(&topo.node, "127.0.0.1:10249", "/metrics")
            .expect("metrics")
            .2
    };
    assert!(metric(&metrics(), &skipped("malformed_document")) >= Some(1.0));
    // The watch goes on: a later, valid Service is programmed; the first still works.
    let syncs = daemon.count(SYNC_DONE);
    api.apply_service(obj(svc("second", "10.96.91.2")));
    api.apply_endpoint_slice(obj(slice("second", "10.244.2.2")));
    daemon
        .wait_for(SYNC_DONE, syncs + 1, Duration::from_secs(10))
        .expect("sync after the valid service");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while hist("10.96.91.2:80") != BTreeMap::from([("222".to_string(), 3)]) {
        assert!(
            std::time::Instant::now() < deadline,
            "second service not programmed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        hist("10.96.91.1:80"),
        BTreeMap::from([("111".to_string(), 3)])
    );
    let log = daemon.log();
    assert!(
        log.contains(
            "skipped invalid input: Service: malformed object: a watch event that does not deserialize (skipped)"
        ),
        "{log}"
    );

    // A re-list that contains it fails as a whole (kube-rs reads a list page at once): it is
    // counted at every attempt, and the rules stay as they are until the object is fixed.
    let before = metric(&metrics(), &skipped("malformed_document")).unwrap_or(0.0);
    api.refuse_connections_for(Duration::from_secs(1));
    api.apply_service(obj(svc("filler", "10.96.91.8")));
    api.compact();
    daemon
        .wait_for("in a list (the list is retried", 1, Duration::from_secs(10))
        .expect("the failed re-list is reported");
    assert!(metric(&metrics(), &skipped("malformed_document")) > Some(before));
    assert_eq!(
        hist("10.96.91.1:80"),
        BTreeMap::from([("111".to_string(), 3)])
    );
    assert_eq!(
        hist("10.96.91.2:80"),
        BTreeMap::from([("222".to_string(), 3)])
    );
    // Fixed: the next attempt lists, and changes flow again.
    api.delete_service("default", "bad");
    api.apply_service(obj(svc("third", "10.96.91.3")));
    api.apply_endpoint_slice(obj(slice("third", "10.244.3.2")));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while hist("10.96.91.3:80") != BTreeMap::from([("333".to_string(), 3)]) {
        assert!(
            std::time::Instant::now() < deadline,
            "third service not programmed:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
