//! End-to-end tests of the core slice: the real `rudder` binary programs a real kernel in a
//! throwaway node namespace, and real TCP/UDP connections from pods and an external client
//! prove the rules.
//!
//! Topology (see `rudder_e2e::topo`): node `172.18.0.2` / `fc00:f853:ccd:e793::2`; pods
//! `10.244.{1,2,3}.2` / `fd00:10:244:{1,2,3}::2` answering `111`, `222`, `333`; a client at
//! `172.18.0.10`. The manifests are `examples/nginx`.
//!
//! One test target (`e2e_core`), one module per feature; the fixture ([`Cluster`]) and the
//! helpers more than one module uses live here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rudder_e2e::client::{histogram_with_timeout, request};
use rudder_e2e::{
    Daemon, EchoServers, Proto, RequestError, TempDir, Topology, e2e_enabled, nft, serve_pod,
    tcp_request,
};

mod affinity;
mod clusterip;
mod conntrack;
mod drift;
mod endpoints;
mod explain;
mod external;
mod health;
mod input;
mod ipv6;
mod lifecycle;
mod masquerade;
mod metrics;

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

/// A node with three pods serving the example's backends, a copy of the example manifests
/// that a test may edit, and a running `rudder run`.
struct Cluster {
    daemon: Daemon,
    manifests: TempDir,
    _servers: Vec<EchoServers>,
    topo: Topology,
}

impl Cluster {
    fn start(extra_args: &[&str]) -> Cluster {
        let topo = Topology::new().expect("topology");
        let servers: Vec<EchoServers> = (0..3)
            .map(|i| serve_pod(&topo.pods[i], NAMES[i], &[80, 5353, 5432]).expect("echo servers"))
            .collect();
        let manifests = TempDir::new("manifests").expect("temp dir");
        for f in ["node.yaml", "nginx.yaml", "others.yaml"] {
            let text = std::fs::read_to_string(example_dir().join(f)).expect("example manifest");
            manifests.write(f, &text).expect("copy manifest");
        }
        let dir = manifests.path().display().to_string();
        let mut args = vec![
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
        args.extend_from_slice(extra_args);
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
        histogram_with_timeout(from, addr(to), n, proto, Duration::from_secs(2))
    }

    /// Rewrites a manifest without waiting for a sync.
    fn edit_unsynced(&mut self, file: &str, f: impl FnOnce(String) -> String) {
        let old = std::fs::read_to_string(self.manifests.path().join(file)).expect("read manifest");
        self.manifests.write(file, &f(old)).expect("write manifest");
    }

    /// Rewrites a manifest and waits for the sync it causes.
    fn edit(&mut self, file: &str, f: impl FnOnce(String) -> String) {
        let syncs = self.daemon.count(SYNC_DONE);
        let old = std::fs::read_to_string(self.manifests.path().join(file)).expect("read manifest");
        self.manifests.write(file, &f(old)).expect("write manifest");
        self.daemon
            .wait_for(SYNC_DONE, syncs + 1, Duration::from_secs(5))
            .expect("re-sync after edit");
    }
}

/// Compares two texts and reports only the first differing lines.
fn assert_same_text(actual: &str, expected: &str, what: &str) {
    if actual == expected {
        return;
    }
    let diff: Vec<String> = actual
        .lines()
        .zip(expected.lines())
        .enumerate()
        .filter(|(_, (a, e))| a != e)
        .take(5)
        .map(|(i, (a, e))| format!("line {}:\n  got:      {a}\n  expected: {e}", i + 1))
        .collect();
    panic!(
        "{what}: texts differ ({} vs {} lines)\n{}",
        actual.lines().count(),
        expected.lines().count(),
        diff.join("\n")
    );
}

fn assert_all_backends(hist: &BTreeMap<String, usize>, what: &str) {
    let keys: Vec<&str> = hist.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        NAMES.to_vec(),
        "{what}: expected every backend and no error, got {hist:?}"
    );
}

fn firewalled_service(ranges: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: fw-lb, namespace: default}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.100.130
  loadBalancerSourceRanges: [{ranges}]
  ports: [{{name: http, port: 80, nodePort: 30003}}]
status: {{loadBalancer: {{ingress: [{{ip: 192.168.122.130}}]}}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: fw-lb-1, namespace: default, labels: {{kubernetes.io/service-name: fw-lb}}}}
addressType: IPv4
ports: [{{name: http, port: 80}}]
endpoints: [{{addresses: [10.244.2.2], nodeName: node-1}}]
"#
    )
}

fn sticky_service(endpoints: &[&str]) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|e| format!("- {{addresses: [{e}], nodeName: node-1}}"))
        .collect();
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: sticky, namespace: default}}
spec:
  clusterIP: 10.96.100.140
  sessionAffinity: ClientIP
  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 2}}}}
  ports: [{{name: http, port: 80}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: sticky-1, namespace: default, labels: {{kubernetes.io/service-name: sticky}}}}
addressType: IPv4
ports: [{{name: http, port: 80}}]
endpoints:
{}
"#,
        eps.join("\n")
    )
}

/// A plain HTTP GET from a namespace: status code, headers and body.
fn http_get(ns: &rudder_e2e::Netns, to: &str) -> Result<(u16, String, String), String> {
    http_get_path(ns, to, "/healthz")
}

/// A plain HTTP GET of `path`: status code, headers and body.
fn http_get_path(
    ns: &rudder_e2e::Netns,
    to: &str,
    path: &str,
) -> Result<(u16, String, String), String> {
    use std::io::{Read, Write};
    let to: SocketAddr = to.parse().map_err(|e| format!("{e}"))?;
    ns.enter(|| {
        let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(1))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: lb\r\n\r\n").as_bytes())
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

/// One UDP "connection": every datagram from the same client port is the same conntrack
/// flow. Returns the answer to one datagram.
fn udp_from_fixed_port(
    ns: &rudder_e2e::Netns,
    local_port: u16,
    to: &str,
) -> Result<String, String> {
    let to: SocketAddr = to.parse().map_err(|e| format!("{e}"))?;
    ns.enter(|| {
        let any = if to.is_ipv6() { "::" } else { "0.0.0.0" };
        let s = std::net::UdpSocket::bind((any, local_port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_millis(700)))
            .map_err(|e| e.to_string())?;
        s.send_to(b"ping", to).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        let (n, _) = s.recv_from(&mut buf).map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
    })
    .map_err(|e| e.to_string())?
}

/// The value of a metric line (`name{labels} value`) in Prometheus text.
fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}
