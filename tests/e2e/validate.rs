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
