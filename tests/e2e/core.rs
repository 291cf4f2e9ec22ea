//! End-to-end tests of the core slice: the real `rudder` binary programs a real kernel in a
//! throwaway node namespace, and real TCP/UDP connections from pods and an external client
//! prove the rules.
//!
//! Topology (see `rudder_e2e::topo`): node `172.18.0.2` / `fc00:f853:ccd:e793::2`; pods
//! `10.244.{1,2,3}.2` / `fd00:10:244:{1,2,3}::2` answering `111`, `222`, `333`; a client at
//! `172.18.0.10`. The manifests are `examples/nginx`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rudder_e2e::client::{histogram_with_timeout, request};
use rudder_e2e::{
    Daemon, EchoServers, Proto, RequestError, TempDir, Topology, e2e_enabled, nft, serve_pod,
    tcp_request,
};

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

#[test]
fn clusterip_from_a_pod_reaches_all_backends_over_tcp_and_udp() {
    if !e2e_enabled() {
        return;
    }
    let c = Cluster::start(&[]);
    let pod = &c.topo.pods[1];
    assert_all_backends(
        &c.hist(pod, "10.96.100.100:80", 60, Proto::Tcp),
        "ClusterIP tcp",
    );
    assert_all_backends(
        &c.hist(pod, "10.96.100.100:53", 60, Proto::Udp),
        "ClusterIP udp (53 -> 5353)",
    );
    // Named target port through a selectorless service with a hand-written slice.
    // (From pod 111: the hand-written endpoint has no nodeName, so it is not local and gets no
    // hairpin masquerade, exactly like kube-proxy.)
    let db = c.hist(&c.topo.pods[0], "10.96.100.110:5432", 10, Proto::Tcp);
    assert_eq!(
        db,
        BTreeMap::from([("222".to_string(), 10)]),
        "selectorless service"
    );
    // From the node itself (nat output hook).
    assert_all_backends(
        &c.hist(&c.topo.node, "10.96.100.100:80", 60, Proto::Tcp),
        "ClusterIP from the node",
    );
}

#[test]
fn nodeport_loadbalancer_and_external_ip_from_outside_are_masqueraded() {
    if !e2e_enabled() {
        return;
    }
    let c = Cluster::start(&[]);
    let client = &c.topo.client;
    for target in [
        "172.18.0.2:30001",
        "172.18.0.2:30002",
        "192.168.122.111:80",
        "192.168.122.200:80",
    ] {
        assert_all_backends(&c.hist(client, target, 60, Proto::Tcp), target);
    }
    assert_all_backends(
        &c.hist(client, "192.168.122.200:53", 60, Proto::Udp),
        "external IP udp",
    );
    // External traffic is masqueraded: backends never see the client's address.
    let peers: Vec<SocketAddr> = c._servers.iter().flat_map(|s| s.accepted_peers()).collect();
    assert!(!peers.is_empty());
    assert!(
        peers.iter().all(|p| p.ip().to_string() != "172.18.0.10"),
        "external traffic must be masqueraded, backends saw {peers:?}"
    );
    // A node port on an address that is not a node port address does not answer.
    let r = tcp_request(
        client,
        addr("192.168.122.111:30001"),
        Duration::from_millis(500),
    );
    assert!(
        r.is_err(),
        "node ports listen only on the node's primary IP, got {r:?}"
    );
}

#[test]
fn traffic_from_pods_keeps_its_source_and_hairpin_is_masqueraded() {
    if !e2e_enabled() {
        return;
    }
    let c = Cluster::start(&[]);
    let pod0 = &c.topo.pods[0];
    for s in &c._servers {
        s.clear_peers();
    }
    let hist = c.hist(pod0, "10.96.100.100:80", 60, Proto::Tcp);
    assert_all_backends(&hist, "pod 111 to its own service");
    // Pod-to-service traffic to other pods keeps the pod's address (no masquerade inside the
    // cluster CIDR) ...
    for s in &c._servers[1..] {
        let peers = s.accepted_peers();
        assert!(
            peers.iter().all(|p| p.ip().to_string() == "10.244.1.2"),
            "{} saw {peers:?}",
            s.name()
        );
    }
    // ... but a pod reaching itself through the service is masqueraded (hairpin), or the
    // reply would never find its way back.
    let own = c._servers[0].accepted_peers();
    assert!(!own.is_empty(), "hairpin connections reached the pod");
    assert!(
        own.iter().all(|p| p.ip().to_string() != "10.244.1.2"),
        "hairpin must be masqueraded, saw {own:?}"
    );
}

#[test]
fn services_without_endpoints_refuse_connections_at_once() {
    if !e2e_enabled() {
        return;
    }
    let c = Cluster::start(&[]);
    for (from, what) in [
        (&c.topo.pods[0], "pod"),
        (&c.topo.node, "node"),
        (&c.topo.client, "client"),
    ] {
        for _ in 0..5 {
            let start = Instant::now();
            let r = tcp_request(from, addr("10.96.100.120:80"), Duration::from_secs(3));
            assert!(
                matches!(r, Err(RequestError::Refused)),
                "{what}: expected refused, got {r:?}"
            );
            assert!(
                start.elapsed() < Duration::from_millis(500),
                "{what}: refusal took {:?}",
                start.elapsed()
            );
        }
    }
    // An unused port on a valid ClusterIP is rejected too (cluster-ips-check).
    let r = tcp_request(
        &c.topo.pods[0],
        addr("10.96.100.100:81"),
        Duration::from_secs(3),
    );
    assert!(
        matches!(r, Err(RequestError::Refused)),
        "unused ClusterIP port: {r:?}"
    );
    // UDP gets an ICMP port unreachable.
    let r = request(
        &c.topo.pods[0],
        addr("10.96.100.120:80"),
        Proto::Udp,
        Duration::from_secs(3),
    );
    assert!(
        matches!(r, Err(RequestError::Refused)),
        "udp without endpoints: {r:?}"
    );
}

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

#[test]
fn sigterm_leaves_rules_in_place_and_cleanup_restores_the_namespace() {
    if !e2e_enabled() {
        return;
    }
    let topo_only = Topology::new().expect("topology");
    // A table of someone else's, which cleanup must leave alone.
    nft::load(
        &topo_only.node,
        "add table inet other\nadd chain inet other c { type filter hook input priority 0 ; }\n",
    )
    .expect("foreign table");
    let before = nft::list_ruleset(&topo_only.node).expect("ruleset before");
    drop(topo_only);

    let mut c = Cluster::start(&[]);
    nft::load(
        &c.topo.node,
        "add table inet other\nadd chain inet other c { type filter hook input priority 0 ; }\n",
    )
    .expect("foreign table");
    assert!(
        c.daemon
            .terminate(Duration::from_secs(5))
            .expect("terminate"),
        "clean exit on SIGTERM"
    );
    // Rules survive the daemon.
    assert_all_backends(
        &c.hist(&c.topo.pods[0], "10.96.100.100:80", 30, Proto::Tcp),
        "after SIGTERM",
    );
    let out = c
        .topo
        .node
        .command(&rudder_bin().display().to_string())
        .arg("cleanup")
        .output()
        .expect("cleanup");
    assert!(
        out.status.success(),
        "cleanup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = nft::list_ruleset(&c.topo.node).expect("ruleset after");
    assert_same_text(&after, &before, "cleanup leaves exactly the foreign table");
    let r = tcp_request(
        &c.topo.pods[0],
        addr("10.96.100.100:80"),
        Duration::from_millis(300),
    );
    assert!(r.is_err(), "no rules after cleanup: {r:?}");
    // Cleanup of nothing succeeds.
    let out = c
        .topo
        .node
        .command(&rudder_bin().display().to_string())
        .arg("cleanup")
        .output()
        .expect("cleanup");
    assert!(out.status.success());
    // kube-proxy's spelling, `run --cleanup`, does the same and starts nothing.
    nft::load(
        &c.topo.node,
        "add table ip rudder\nadd chain ip rudder c\nadd table ip6 rudder\n",
    )
    .expect("leftover tables");
    let out = c
        .topo
        .node
        .command(&rudder_bin().display().to_string())
        .args(["run", "--cleanup", "--manifests", "/nonexistent"])
        .output()
        .expect("run --cleanup");
    assert!(
        out.status.success(),
        "run --cleanup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = nft::list_ruleset(&c.topo.node).expect("ruleset after --cleanup");
    assert_same_text(
        &after,
        &before,
        "--cleanup leaves exactly the foreign table",
    );
}

#[test]
fn write_config_to_writes_the_effective_config_and_exits() {
    let dir = rudder_e2e::TempDir::new("write-config").expect("tempdir");
    let input = dir.path().join("in.yaml");
    std::fs::write(
        &input,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nclusterCIDR: 10.244.0.0/16\nnftables: {syncPeriod: 1m, masqueradeAll: true}\n",
    )
    .expect("write input");
    let output = dir.path().join("out.yaml");
    // No netns: this must not touch the kernel, and it must not wait for an API server.
    let out = std::process::Command::new(rudder_bin())
        .arg("run")
        .arg("--config")
        .arg(&input)
        .args(["--iptables-min-sync-period", "3s", "--write-config-to"])
        .arg(&output)
        .output()
        .expect("run --write-config-to");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read_to_string(&output).expect("written config");
    let doc: serde_norway::Value = serde_norway::from_str(&written).expect("YAML");
    let get = |path: &[&str]| {
        let mut v = &doc;
        for k in path {
            v = &v[*k];
        }
        v.clone()
    };
    assert_eq!(
        get(&["kind"]),
        serde_norway::Value::from("KubeProxyConfiguration")
    );
    assert_eq!(
        get(&["clusterCIDR"]),
        serde_norway::Value::from("10.244.0.0/16")
    );
    assert_eq!(
        get(&["nftables", "syncPeriod"]),
        serde_norway::Value::from("1m0s")
    );
    assert_eq!(
        get(&["nftables", "minSyncPeriod"]),
        serde_norway::Value::from("3s"),
        "the flag wins"
    );
    assert_eq!(
        get(&["nftables", "masqueradeAll"]),
        serde_norway::Value::from(true)
    );
    assert_eq!(
        get(&["metricsBindAddress"]),
        serde_norway::Value::from("127.0.0.1:10249")
    );
}

#[test]
fn compile_output_loads_and_matches_what_run_programs() {
    if !e2e_enabled() {
        return;
    }
    let c = Cluster::start(&[]);
    let out = std::process::Command::new(rudder_bin())
        .args(["compile", "--manifests"])
        .arg(example_dir())
        .args([
            "--hostname-override",
            "node-1",
            "--cluster-cidr",
            "10.244.0.0/16,fd00:10:244::/56",
        ])
        .output()
        .expect("compile");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let compiled = String::from_utf8(out.stdout).expect("utf-8");
    let running = nft::list_ruleset(&c.topo.node).expect("ruleset");
    // Load the compiled text into a fresh namespace: the kernel lists the same ruleset.
    let fresh = rudder_e2e::Netns::new("compiled").expect("netns");
    nft::load(&fresh, &compiled).expect("compiled output loads");
    assert_same_text(
        &nft::list_ruleset(&fresh).expect("ruleset"),
        &running,
        "compiled vs running",
    );
    // Loading it again replaces the tables atomically instead of failing.
    nft::load(&fresh, &compiled).expect("compiled output reloads");
    assert_same_text(
        &nft::list_ruleset(&fresh).expect("ruleset"),
        &running,
        "reloaded vs running",
    );
}

/// Manifests an attacker or a broken controller could produce: odd names, nft syntax in
/// every string, invalid IPs, ports and protocols, mismatched families, an oversized slice,
/// a document of the wrong shape. The valid service still compiles, everything else is
/// reported by file and document or by object, and nothing reaches the ruleset verbatim.
#[test]
fn hostile_and_invalid_input_is_skipped_and_never_reaches_the_ruleset() {
    if !e2e_enabled() {
        return;
    }
    let dir = TempDir::new("hostile").expect("temp dir");
    let evil = r#"x\" } ; flush ruleset ; add rule ip filter input drop ; {\""#;
    let many: Vec<String> = (0..1001)
        .map(|i| format!("  - addresses: [\"10.9.{}.{}\"]", i / 250, i % 250 + 1))
        .collect();
    let text = format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: "good", namespace: default}}
spec: {{clusterIP: 10.96.50.1, ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: good-1, namespace: default, labels: {{kubernetes.io/service-name: good}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints: [{{addresses: [10.244.1.2]}}, {{addresses: ["fd00::1"]}}, {{addresses: ["10.0.0.1; flush ruleset"]}}]
---
apiVersion: v1
kind: Service
metadata:
  name: "{evil}"
  namespace: "{evil}"
  annotations: {{note: "{evil}"}}
spec: {{clusterIP: 10.96.50.2, ports: [{{name: "{evil}", port: 80, protocol: TCP}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: bad-ip, namespace: default}}
spec: {{clusterIP: "10.96.50.300", ports: [{{port: 80}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: bad-ports, namespace: default}}
spec: {{clusterIP: 10.96.50.4, ports: [{{name: a, port: 70000}}, {{name: b, port: 0}}, {{name: c, port: 53, protocol: ICMP}}, {{name: d, port: 81, nodePort: 99999}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: huge, namespace: default, labels: {{kubernetes.io/service-name: good}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
{}
---
apiVersion: v1
kind: Service
metadata: {{name: wrong-shape, namespace: default}}
spec: "this is not a spec"
"#,
        many.join("\n")
    );
    dir.write("hostile.yaml", &text).expect("write");
    let out = std::process::Command::new(rudder_bin())
        .args(["compile", "--manifests"])
        .arg(dir.path())
        .args(["--hostname-override", "node-1", "--node-ip", "172.18.0.2"])
        .output()
        .expect("run compile");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "compile must not fail on bad input: {stderr}"
    );
    let rules = String::from_utf8(out.stdout).expect("utf-8");
    // The valid service is there; the hostile one's ClusterIP too (its names are only names).
    assert!(
        rules.contains("10.96.50.1 . tcp . 80 . 0 : 10.244.1.2 . 8080"),
        "{rules}"
    );
    assert!(
        rules.contains("10.96.50.2"),
        "hostile names do not stop a valid service"
    );
    assert!(
        !rules.contains("flush") && !rules.contains("filter input"),
        "input text reached the ruleset"
    );
    assert!(
        !rules.contains("10.96.50.300") && !rules.contains("70000") && !rules.contains("99999")
    );
    for expected in [
        "hostile.yaml (document 7): invalid Service",
        "invalid clusterIP \"10.96.50.300\"",
        "invalid port number 70000",
        "unknown protocol \"ICMP\"",
        "invalid nodePort 99999",
        "does not match addressType IPv4",
        "invalid endpoint address",
        "1001 endpoints in one slice",
    ] {
        assert!(
            stderr.contains(expected),
            "stderr lacks {expected:?}:\n{stderr}"
        );
    }
    // And the kernel accepts the output.
    let ns = rudder_e2e::Netns::new("hostile").expect("netns");
    nft::load(&ns, &rules).expect("output loads");
    // --strict turns the same input into an error.
    let strict = std::process::Command::new(rudder_bin())
        .args(["compile", "--strict", "--manifests"])
        .arg(dir.path())
        .args(["--hostname-override", "node-1"])
        .output()
        .expect("run compile");
    assert!(!strict.status.success());
}

#[test]
fn masquerade_all_masquerades_pod_traffic_to_cluster_ips() {
    if !e2e_enabled() {
        return;
    }
    let c = Cluster::start(&["--masquerade-all"]);
    for s in &c._servers {
        s.clear_peers();
    }
    let hist = c.hist(&c.topo.pods[1], "10.96.100.100:80", 30, Proto::Tcp);
    assert!(!hist.keys().any(|k| k.starts_with('<')), "{hist:?}");
    let peers: Vec<SocketAddr> = c._servers.iter().flat_map(|s| s.accepted_peers()).collect();
    assert_eq!(peers.len(), 30);
    // Masqueraded to the node's address on the backend's link, never the pod's own address.
    assert!(
        peers.iter().all(|p| p.ip().to_string() != "10.244.2.2"),
        "{peers:?}"
    );
    assert!(
        peers.iter().all(|p| p.ip().to_string().ends_with(".1")),
        "{peers:?}"
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

#[test]
fn load_balancer_source_ranges_filter_only_the_load_balancer_ip() {
    if !e2e_enabled() {
        return;
    }
    let mut c = Cluster::start(&[]);
    let syncs = c.daemon.count(SYNC_DONE);
    c.manifests
        .write("fw.yaml", &firewalled_service("10.0.0.0/8"))
        .expect("write");
    c.daemon
        .wait_for(SYNC_DONE, syncs + 1, Duration::from_secs(5))
        .expect("sync");
    // The client (172.18.0.10) is outside 10.0.0.0/8: dropped before DNAT (a timeout).
    let r = tcp_request(
        &c.topo.client,
        addr("192.168.122.130:80"),
        Duration::from_millis(500),
    );
    assert!(
        matches!(r, Err(RequestError::Timeout)),
        "filtered LB IP: {r:?}"
    );
    // The node port is not filtered, and pods (inside 10.0.0.0/8) reach the LB IP.
    assert_eq!(
        c.hist(&c.topo.client, "172.18.0.2:30003", 5, Proto::Tcp),
        BTreeMap::from([("222".to_string(), 5)])
    );
    assert_eq!(
        c.hist(&c.topo.pods[0], "192.168.122.130:80", 5, Proto::Tcp),
        BTreeMap::from([("222".to_string(), 5)])
    );
    // Allow the client's network: it gets through.
    c.edit("fw.yaml", |_| {
        firewalled_service("10.0.0.0/8, 172.18.0.0/24")
    });
    assert_eq!(
        c.hist(&c.topo.client, "192.168.122.130:80", 5, Proto::Tcp),
        BTreeMap::from([("222".to_string(), 5)])
    );
    // Overlapping ranges (and, with the node inside a range, a range that contains the
    // load balancer IP itself) are one interval set's elements: they used to make the
    // kernel refuse every sync. Each edit must sync, and the client still gets through.
    for ranges in [
        "10.0.0.0/8, 10.1.0.0/16, 172.18.0.0/24, 172.18.0.10/32",
        "172.18.0.0/16, 192.168.122.0/24",
    ] {
        c.edit("fw.yaml", |_| firewalled_service(ranges));
        assert_eq!(
            c.hist(&c.topo.client, "192.168.122.130:80", 3, Proto::Tcp),
            BTreeMap::from([("222".to_string(), 3)]),
            "{ranges}"
        );
    }
    // 0.0.0.0/0 means no filtering at all.
    c.edit("fw.yaml", |_| firewalled_service("0.0.0.0/0"));
    assert_eq!(
        c.hist(&c.topo.client, "192.168.122.130:80", 5, Proto::Tcp),
        BTreeMap::from([("222".to_string(), 5)])
    );
    // Back to a range without the client: dropped again.
    c.edit("fw.yaml", |_| firewalled_service("192.0.2.0/24"));
    let r = tcp_request(
        &c.topo.client,
        addr("192.168.122.130:80"),
        Duration::from_millis(500),
    );
    assert!(
        matches!(r, Err(RequestError::Timeout)),
        "filtered again: {r:?}"
    );
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

#[test]
fn client_ip_session_affinity_sticks_expires_and_moves() {
    if !e2e_enabled() {
        return;
    }
    let mut c = Cluster::start(&[]);
    let syncs = c.daemon.count(SYNC_DONE);
    c.manifests
        .write(
            "sticky.yaml",
            &sticky_service(&["10.244.1.2", "10.244.2.2", "10.244.3.2"]),
        )
        .expect("write");
    c.daemon
        .wait_for(SYNC_DONE, syncs + 1, Duration::from_secs(5))
        .expect("sync");
    // Many new connections from one client all land on the same endpoint.
    let first = c.hist(&c.topo.pods[0], "10.96.100.140:80", 20, Proto::Tcp);
    assert_eq!(
        first.len(),
        1,
        "one client sticks to one endpoint: {first:?}"
    );
    let chosen = first.keys().next().cloned().expect("an answer");
    assert!(NAMES.contains(&chosen.as_str()), "{first:?}");
    // Another client sticks too (possibly elsewhere).
    let other = c.hist(&c.topo.client, "10.96.100.140:80", 10, Proto::Tcp);
    assert_eq!(other.len(), 1, "{other:?}");
    // After the 2 s timeout without connections the choice is free again: over a few
    // expiries the client sees more than one endpoint (all the same: probability (1/3)^5).
    let mut seen = std::collections::BTreeSet::from([chosen.clone()]);
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(2300));
        let h = c.hist(&c.topo.pods[0], "10.96.100.140:80", 3, Proto::Tcp);
        assert_eq!(h.len(), 1, "still sticky within the timeout: {h:?}");
        seen.extend(h.into_keys());
    }
    assert!(seen.len() > 1, "affinity never expired: {seen:?}");
    // Removing the endpoint the client sticks to moves it to another one.
    let now = c.hist(&c.topo.pods[0], "10.96.100.140:80", 1, Proto::Tcp);
    let stuck = now.keys().next().cloned().expect("answer");
    let remaining: Vec<&str> = ["10.244.1.2", "10.244.2.2", "10.244.3.2"]
        .into_iter()
        .zip(NAMES)
        .filter(|(_, n)| *n != stuck)
        .map(|(ip, _)| ip)
        .collect();
    c.edit("sticky.yaml", |_| sticky_service(&remaining));
    let moved = c.hist(&c.topo.pods[0], "10.96.100.140:80", 10, Proto::Tcp);
    assert_eq!(moved.len(), 1, "sticky again after the move: {moved:?}");
    assert!(
        !moved.contains_key(&stuck),
        "client still sent to the removed endpoint {stuck}: {moved:?}"
    );
}

fn health_checked_service(hc_port: u16, policy: &str, node: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: hc, namespace: default}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.100.150
  externalTrafficPolicy: {policy}
  healthCheckNodePort: {hc_port}
  ports: [{{name: http, port: 80, nodePort: 30004}}]
status: {{loadBalancer: {{ingress: [{{ip: 192.168.122.150}}]}}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: hc-1, namespace: default, labels: {{kubernetes.io/service-name: hc}}}}
addressType: IPv4
ports: [{{name: http, port: 80}}]
endpoints:
- {{addresses: [10.244.1.2], nodeName: {node}}}
- {{addresses: [10.244.2.2], nodeName: {node}}}
- {{addresses: [10.244.3.2], nodeName: other-node, conditions: {{ready: true}}}}
"#
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

#[test]
fn health_check_node_ports_follow_services() {
    if !e2e_enabled() {
        return;
    }
    let mut c = Cluster::start(&[]);
    let syncs = c.daemon.count(SYNC_DONE);
    c.manifests
        .write("hc.yaml", &health_checked_service(32100, "Local", "node-1"))
        .expect("write");
    c.daemon
        .wait_for(SYNC_DONE, syncs + 1, Duration::from_secs(5))
        .expect("sync");
    let probe = |c: &Cluster, port: u16| {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match http_get(&c.topo.client, &format!("172.18.0.2:{port}")) {
                Ok(r) => return Ok(r),
                Err(e) if std::time::Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    };
    // Two local ready endpoints (the third is on another node): 200, weight 2.
    let (code, head, body) = probe(&c, 32100).expect("health check answers");
    assert_eq!(code, 200, "{head}\n{body}");
    assert!(
        head.contains("X-Load-Balancing-Endpoint-Weight: 2"),
        "{head}"
    );
    assert!(
        head.contains("Content-Type: application/json")
            && head.contains("X-Content-Type-Options: nosniff")
    );
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(
        json,
        serde_json::json!({"service": {"namespace": "default", "name": "hc"}, "localEndpoints": 2, "serviceProxyHealthy": true})
    );
    // No local endpoint any more: 503 with 0.
    c.edit("hc.yaml", |_| {
        health_checked_service(32100, "Local", "node-9")
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (code, _, body) = probe(&c, 32100).expect("still answers");
        if code == 503 {
            assert!(body.contains("\"localEndpoints\":0"), "{body}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never went 503: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The port moves.
    c.edit("hc.yaml", |_| {
        health_checked_service(32101, "Local", "node-1")
    });
    assert_eq!(probe(&c, 32101).expect("new port").0, 200);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        http_get(&c.topo.client, "172.18.0.2:32100").is_err(),
        "old port still served"
    );
    // externalTrafficPolicy: Cluster: no health check server.
    c.edit("hc.yaml", |_| {
        health_checked_service(32101, "Cluster", "node-1")
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        http_get(&c.topo.client, "172.18.0.2:32101").is_err(),
        "Cluster policy still served"
    );
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
fn service_cidrs_drop_traffic_to_unallocated_cluster_ips() {
    if !e2e_enabled() {
        return;
    }
    let mut c = Cluster::start(&[]);
    // Something outside the node answers on an address inside 10.96.0.0/16 (reached over
    // the node's default route), so "dropped" is distinguishable from "no route".
    c.topo
        .client
        .exec(&["ip", "addr", "add", "10.96.200.200/32", "dev", "lo"])
        .expect("address");
    let _outside = serve_pod(&c.topo.client, "outside", &[80]).expect("server");
    assert_eq!(
        c.hist(&c.topo.pods[0], "10.96.200.200:80", 3, Proto::Tcp),
        BTreeMap::from([("outside".to_string(), 3)])
    );
    let syncs = c.daemon.count(SYNC_DONE);
    c.manifests
        .write(
            "cidr.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {name: kubernetes}\nspec: {cidrs: [10.96.0.0/16]}\n",
        )
        .expect("write");
    c.daemon
        .wait_for(SYNC_DONE, syncs + 1, Duration::from_secs(5))
        .expect("sync");
    // Now an unallocated address of the service range is dropped...
    let r = tcp_request(
        &c.topo.pods[0],
        addr("10.96.200.200:80"),
        Duration::from_millis(500),
    );
    assert!(
        matches!(r, Err(RequestError::Timeout)),
        "unallocated ClusterIP: {r:?}"
    );
    // ... an unused port of an allocated one is still refused, and services still work.
    let r = tcp_request(
        &c.topo.pods[0],
        addr("10.96.100.100:81"),
        Duration::from_millis(500),
    );
    assert!(matches!(r, Err(RequestError::Refused)), "{r:?}");
    assert_all_backends(
        &c.hist(&c.topo.pods[0], "10.96.100.100:80", 30, Proto::Tcp),
        "ClusterIP with ServiceCIDR",
    );
    // Removing the ServiceCIDR lifts the drop.
    std::fs::remove_file(c.manifests.path().join("cidr.yaml")).expect("remove");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while c.hist(&c.topo.pods[0], "10.96.200.200:80", 1, Proto::Tcp)
        != BTreeMap::from([("outside".to_string(), 1)])
    {
        assert!(std::time::Instant::now() < deadline, "drop not lifted");
        std::thread::sleep(Duration::from_millis(100));
    }
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

#[test]
fn node_cidr_and_interface_prefix_detection_masquerade_only_off_cluster_traffic() {
    if !e2e_enabled() {
        return;
    }
    for mode in [
        &["--detect-local-mode", "NodeCIDR"][..],
        &[
            "--detect-local-mode",
            "InterfaceNamePrefix",
            "--pod-interface-name-prefix",
            "vpod",
        ][..],
    ] {
        let mut c = Cluster::start(mode);
        // NodeCIDR mode takes the pod CIDRs from the Node object.
        let syncs = c.daemon.count(SYNC_DONE);
        c.manifests
            .write(
                "node.yaml",
                "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\nspec: {podCIDRs: [10.244.0.0/16]}\n\
                 status: {addresses: [{type: InternalIP, address: 172.18.0.2}]}\n",
            )
            .expect("node");
        c.daemon
            .wait_for(SYNC_DONE, syncs + 1, Duration::from_secs(5))
            .expect("sync");
        let peers = |c: &Cluster| -> Vec<String> {
            c._servers
                .iter()
                .flat_map(|s| s.accepted_peers())
                .map(|p| p.ip().to_string())
                .collect()
        };
        // Pod traffic to a ClusterIP keeps its source (backends other than the pod itself).
        for s in &c._servers {
            s.clear_peers();
        }
        let h = c.hist(&c.topo.pods[1], "10.96.100.101:80", 30, Proto::Tcp);
        assert!(!h.keys().any(|k| k.starts_with('<')), "{mode:?}: {h:?}");
        let from_pod: Vec<String> = peers(&c)
            .into_iter()
            .filter(|p| p != "10.244.2.1")
            .collect();
        assert!(
            !from_pod.is_empty() && from_pod.iter().all(|p| p == "10.244.2.2"),
            "{mode:?}: pod source changed: {from_pod:?}"
        );
        // Traffic from outside the cluster to a ClusterIP is masqueraded.
        for s in &c._servers {
            s.clear_peers();
        }
        let h = c.hist(&c.topo.client, "10.96.100.101:80", 10, Proto::Tcp);
        assert!(!h.keys().any(|k| k.starts_with('<')), "{mode:?}: {h:?}");
        let from_client = peers(&c);
        assert!(!from_client.is_empty(), "{mode:?}");
        assert!(
            from_client.iter().all(|p| p != "172.18.0.10"),
            "{mode:?}: off-cluster traffic not masqueraded: {from_client:?}"
        );
    }
}

#[test]
fn health_check_reports_an_unhealthy_proxy() {
    if !e2e_enabled() {
        return;
    }
    // An nft that starts failing when a marker file exists; writes go through it with
    // `--nft-writer nft`.
    let dir = TempDir::new("nftwrap").expect("temp dir");
    let marker = dir.path().join("fail");
    let script = format!(
        "#!/bin/sh\n[ -e {} ] && {{ echo injected failure >&2; exit 1; }}\nexec nft \"$@\"\n",
        marker.display()
    );
    let wrapper = dir.write("nft", &script).expect("wrapper");
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&wrapper)
        .status()
        .expect("chmod");
    let wrapper = wrapper.display().to_string();
    let mut c = Cluster::start(&[
        "--iptables-sync-period",
        "1s",
        "--nft-writer",
        "nft",
        "--nft-path",
        &wrapper,
    ]);
    let syncs = c.daemon.count(SYNC_DONE);
    c.manifests
        .write("hc.yaml", &health_checked_service(32102, "Local", "node-1"))
        .expect("write");
    c.daemon
        .wait_for(SYNC_DONE, syncs + 1, Duration::from_secs(5))
        .expect("sync");
    let (code, _, body) = http_get(&c.topo.client, "172.18.0.2:32102").expect("health check");
    assert_eq!(code, 200, "{body}");
    // `rudder status` asks the daemon: all well.
    let (ok, text) = rudder_status(&c, false);
    assert!(ok, "{text}");
    assert!(text.contains("last failure:        never"), "{text}");
    assert!(text.contains("last sync:           partial"), "{text}");
    let (_, json) = rudder_status(&c, true);
    let st: serde_json::Value = serde_json::from_str(&json).expect("status JSON");
    let services = st["services"].as_u64().expect("services");
    assert!(services >= 4, "{json}");
    assert!(st["fullSyncs"].as_u64() >= Some(1), "{json}");
    assert_eq!(st["lastSync"]["servicesChanged"], 1, "{json}");
    // Syncs start failing; a change is queued and never programmed.
    std::fs::write(&marker, "").expect("marker");
    c.edit_unsynced("hc.yaml", |_| {
        health_checked_service(32102, "Local", "node-1").replace("10.244.3.2", "10.244.3.3")
    });
    c.daemon
        .wait_for("sync failed", 1, Duration::from_secs(5))
        .expect("sync fails");
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    loop {
        let (code, _, body) = http_get(&c.topo.client, "172.18.0.2:32102").expect("still answers");
        if code == 503 {
            assert!(body.contains("\"serviceProxyHealthy\":false"), "{body}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never reported unhealthy: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, text) = rudder_status(&c, false);
    assert!(!ok, "status must fail while syncs fail:\n{text}");
    assert!(text.contains("in a row"), "{text}");
    // Programming works again: healthy again after the retry.
    std::fs::remove_file(&marker).expect("remove marker");
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    while http_get(&c.topo.client, "172.18.0.2:32102").map(|r| r.0) != Ok(200) {
        assert!(std::time::Instant::now() < deadline, "never healthy again");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The status turns good with the first successful sync after the failures.
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    let text = loop {
        let (ok, text) = rudder_status(&c, false);
        if ok {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(text.contains("last failure:        "), "{text}");
    assert!(!text.contains("last failure:        never"), "{text}");
    assert!(
        text.contains(&format!("services:            {services}\n")),
        "{text}"
    );
}

/// `rudder status` run on the node: (exit success, stdout).
fn rudder_status(c: &Cluster, json: bool) -> (bool, String) {
    let mut cmd = c.topo.node.command(&rudder_bin().display().to_string());
    cmd.arg("status");
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("rudder status");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
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

#[test]
fn metrics_and_health_endpoints_behave_like_kube_proxy() {
    if !e2e_enabled() {
        return;
    }
    let mut c = Cluster::start(&[]);
    // The metrics server listens on 127.0.0.1:10249 inside the node.
    let (code, _, text) =
        http_get_path(&c.topo.node, "127.0.0.1:10249", "/metrics").expect("metrics");
    assert_eq!(code, 200);
    for (name, kind) in [
        ("kubeproxy_sync_proxy_rules_duration_seconds", "histogram"),
        (
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "histogram",
        ),
        (
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "histogram",
        ),
        ("kubeproxy_sync_proxy_rules_last_timestamp_seconds", "gauge"),
        (
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "gauge",
        ),
        (
            "kubeproxy_network_programming_duration_seconds",
            "histogram",
        ),
        (
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            "gauge",
        ),
        (
            "kubeproxy_sync_proxy_rules_endpoint_changes_total",
            "counter",
        ),
        (
            "kubeproxy_sync_proxy_rules_service_changes_pending",
            "gauge",
        ),
        (
            "kubeproxy_sync_proxy_rules_service_changes_total",
            "counter",
        ),
        (
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
            "counter",
        ),
        (
            "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total",
            "counter",
        ),
        (
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "gauge",
        ),
        ("rudder_sync_objects_total", "counter"),
        ("rudder_sync_transaction_bytes_total", "counter"),
        ("rudder_sync_compile_duration_seconds", "histogram"),
        ("kubeproxy_proxy_healthz_total", "counter"),
        ("kubeproxy_proxy_livez_total", "counter"),
        (
            "kubeproxy_conntrack_reconciler_sync_duration_seconds",
            "histogram",
        ),
        (
            "kubeproxy_conntrack_reconciler_deleted_entries_total",
            "counter",
        ),
        ("process_resident_memory_bytes", "gauge"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}")),
            "missing {name} ({kind}):\n{text}"
        );
    }
    assert!(text.contains("kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0.001\"}"), "{text}");
    assert!(
        text.contains("le=\"16.384\""),
        "exponential buckets up to 16.384 s"
    );
    // Label sets, per family (the node has both).
    for family in ["IPv4", "IPv6"] {
        for series in [
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family=\"F\",le=\"0.001\"}",
            "kubeproxy_sync_partial_proxy_rules_duration_seconds_count{ip_family=\"F\"}",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"F\"}",
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family=\"F\"}",
            "kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"F\",le=\"0.25\"}",
            "kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"F\",le=\"300\"}",
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family=\"F\"}",
            "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total{ip_family=\"F\"}",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"F\",traffic_policy=\"internal\"}",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"F\",traffic_policy=\"external\"}",
            "kubeproxy_conntrack_reconciler_sync_duration_seconds_count{ip_family=\"F\"}",
            "kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=\"F\"}",
        ] {
            let series = series.replace('F', family);
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{series} "))),
                "missing series {series}:\n{text}"
            );
        }
    }
    for series in [
        "kubeproxy_sync_proxy_rules_endpoint_changes_total",
        "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
        "kubeproxy_sync_proxy_rules_service_changes_total",
        "kubeproxy_sync_proxy_rules_service_changes_pending",
        "kubeproxy_proxy_healthz_total{code=\"200\"}",
        "kubeproxy_proxy_livez_total{code=\"503\"}",
        "rudder_syncs_total{kind=\"full\",result=\"success\"}",
        "rudder_sync_elements_total{op=\"add\"}",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{series} "))),
            "missing series {series}:\n{text}"
        );
    }
    assert_eq!(
        http_get_path(&c.topo.node, "127.0.0.1:10249", "/proxyMode")
            .expect("proxyMode")
            .2,
        "nftables"
    );
    assert_eq!(
        http_get_path(&c.topo.node, "127.0.0.1:10249", "/healthz")
            .expect("healthz")
            .2,
        "ok"
    );
    // Values move with syncs.
    let before =
        metric(&text, "kubeproxy_sync_proxy_rules_endpoint_changes_total").expect("counter");
    c.edit("nginx.yaml", |t| {
        t.replacen(
            "- addresses: [10.244.3.2]\n  conditions: {ready: true}",
            "- addresses: [10.244.3.2]\n  conditions: {ready: false}",
            1,
        )
    });
    let (_, _, text) = http_get_path(&c.topo.node, "127.0.0.1:10249", "/metrics").expect("metrics");
    assert!(
        metric(&text, "kubeproxy_sync_proxy_rules_endpoint_changes_total").expect("counter")
            > before,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "kubeproxy_sync_partial_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}"
        )
        .expect("count")
            >= 1.0
    );
    assert_eq!(
        metric(&text, "kubeproxy_sync_proxy_rules_endpoint_changes_pending"),
        Some(0.0)
    );
    // A service with `Local` policies whose only endpoint is on another node counts in
    // no_local_endpoints, per policy and family; it goes back to zero when the endpoint moves here.
    const NO_LOCAL_INTERNAL: &str = "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"IPv4\",traffic_policy=\"internal\"}";
    const NO_LOCAL_EXTERNAL: &str = "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"IPv4\",traffic_policy=\"external\"}";
    assert_eq!(metric(&text, NO_LOCAL_INTERNAL), Some(0.0), "{text}");
    assert_eq!(metric(&text, NO_LOCAL_EXTERNAL), Some(0.0), "{text}");
    let local_svc = |node: &str| {
        format!(
            "apiVersion: v1
kind: Service
metadata: {{name: local-only, namespace: default}}
spec:
  type: NodePort
  clusterIP: 10.96.60.1
  internalTrafficPolicy: Local
  externalTrafficPolicy: Local
  ports: [{{name: http, port: 80, nodePort: 30060}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: local-only-1, namespace: default, labels: {{kubernetes.io/service-name: local-only}}}}
addressType: IPv4
ports: [{{name: http, port: 80}}]
endpoints: [{{addresses: [10.244.1.2], nodeName: {node}}}]
"
        )
    };
    let syncs = c.daemon.count(SYNC_DONE);
    c.manifests
        .write("local-only.yaml", &local_svc("other-node"))
        .expect("write");
    c.daemon
        .wait_for(SYNC_DONE, syncs + 1, Duration::from_secs(5))
        .expect("sync after the new manifest");
    let (_, _, text) = http_get_path(&c.topo.node, "127.0.0.1:10249", "/metrics").expect("metrics");
    assert_eq!(metric(&text, NO_LOCAL_INTERNAL), Some(1.0), "{text}");
    assert_eq!(metric(&text, NO_LOCAL_EXTERNAL), Some(1.0), "{text}");
    c.edit("local-only.yaml", |_| local_svc("node-1"));
    let (_, _, text) = http_get_path(&c.topo.node, "127.0.0.1:10249", "/metrics").expect("metrics");
    assert_eq!(metric(&text, NO_LOCAL_INTERNAL), Some(0.0), "{text}");
    assert_eq!(metric(&text, NO_LOCAL_EXTERNAL), Some(0.0), "{text}");
    // Invalid input is counted by reason.
    const INVALID_PORT: &str = "rudder_invalid_input_skipped_total{reason=\"invalid_port\"}";
    assert_eq!(metric(&text, INVALID_PORT), None, "{text}");
    let syncs = c.daemon.count(SYNC_DONE);
    c.manifests
        .write(
            "bad.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: bad-port, namespace: default}\nspec: {clusterIP: 10.96.61.1, ports: [{name: a, port: 80}, {name: b, port: 70000}]}\n",
        )
        .expect("write");
    c.daemon
        .wait_for(SYNC_DONE, syncs + 1, Duration::from_secs(5))
        .expect("sync after the bad manifest");
    let (_, _, text) = http_get_path(&c.topo.node, "127.0.0.1:10249", "/metrics").expect("metrics");
    assert!(metric(&text, INVALID_PORT) >= Some(1.0), "{text}");
    // Health server on 0.0.0.0:10256, reachable from outside the node.
    let (code, head, body) =
        http_get_path(&c.topo.client, "172.18.0.2:10256", "/healthz").expect("healthz");
    assert_eq!(code, 200, "{head}\n{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["healthy"], true);
    assert_eq!(json["nodeEligible"], true);
    assert!(
        json["status"]["IPv4"]["healthy"].as_bool() == Some(true)
            && json["lastUpdated"].is_string(),
        "{json}"
    );
    let (code, _, body) =
        http_get_path(&c.topo.client, "172.18.0.2:10256", "/livez").expect("livez");
    assert_eq!(code, 200);
    assert!(!body.contains("nodeEligible"), "{body}");
    // A node being deleted is not eligible: /healthz 503, /livez still 200.
    c.edit_unsynced("node.yaml", |t| {
        t.replace(
            "  name: node-1\n",
            "  name: node-1\n  deletionTimestamp: \"2026-01-01T00:00:00Z\"\n",
        )
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let (code, body) = loop {
        let (code, _, body) =
            http_get_path(&c.topo.client, "172.18.0.2:10256", "/healthz").expect("healthz");
        if code == 503 || std::time::Instant::now() >= deadline {
            break (code, body);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"nodeEligible\":false"), "{body}");
    assert_eq!(
        http_get_path(&c.topo.client, "172.18.0.2:10256", "/livez")
            .expect("livez")
            .0,
        200
    );
    let (_, _, text) = http_get_path(&c.topo.node, "127.0.0.1:10249", "/metrics").expect("metrics");
    assert!(
        metric(&text, "kubeproxy_proxy_healthz_total{code=\"503\"}").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(metric(&text, "kubeproxy_proxy_healthz_total{code=\"200\"}").unwrap_or(0.0) >= 1.0);
}

#[test]
fn an_invalid_config_file_exits_with_code_1_and_names_the_field() {
    let dir = TempDir::new("config").expect("temp dir");
    let path = dir
        .write(
            "kube-proxy.yaml",
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nnftables: {masqueradeBit: 99}\n",
        )
        .expect("write");
    let out = std::process::Command::new(rudder_bin())
        .args(["run", "--manifests", "/nonexistent", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("masqueradeBit"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `rudder explain` with the daemon's flags on the cluster's manifests.
fn explain(c: &Cluster, to: &str, from: &str) -> String {
    let out = std::process::Command::new(rudder_bin())
        .arg("explain")
        .arg("--manifests")
        .arg(c.manifests.path())
        .args([
            "--hostname-override",
            "node-1",
            "--cluster-cidr",
            "10.244.0.0/16,fd00:10:244::/56",
            "--to",
            to,
            "--from",
            from,
        ])
        .output()
        .expect("rudder explain");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The backends named by an explanation's endpoint lines (`  10.244.N.2:PORT ...`).
fn explained_backends(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|a| a.parse::<SocketAddr>().ok())
        .filter_map(|a| match a.ip() {
            std::net::IpAddr::V4(v4) => NAMES.get(usize::from(v4.octets()[2]).wrapping_sub(1)),
            std::net::IpAddr::V6(_) => None,
        })
        .map(|s| (*s).to_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn explain_predicts_where_packets_go() {
    if !e2e_enabled() {
        return;
    }
    let mut c = Cluster::start(&[]);
    // Make pod-2's endpoint not ready: both the kernel and the explanation must leave it out.
    c.edit("nginx.yaml", |t| {
        t.replacen(
            "- addresses: [10.244.3.2]\n  conditions: {ready: true}",
            "- addresses: [10.244.3.2]\n  conditions: {ready: false}",
            1,
        )
    });
    let client_ip = "172.18.0.10";
    for (to, from_pod, expect_masq, expected) in [
        (
            "10.96.100.100:80",
            true,
            "masquerade:  no",
            &["111", "222"][..],
        ),
        (
            "172.18.0.2:30001",
            false,
            "masquerade:  yes",
            &["111", "222", "333"][..],
        ),
    ] {
        let (ns, from) = if from_pod {
            (&c.topo.pods[0], "10.244.1.2")
        } else {
            (&c.topo.client, client_ip)
        };
        let text = explain(&c, to, from);
        let predicted = explained_backends(&text);
        assert!(text.contains("verdict:     DNAT"), "{text}");
        assert!(text.contains(expect_masq), "{text}");
        let observed: Vec<String> = c
            .hist(ns, to, 30, Proto::Tcp)
            .into_keys()
            .collect::<Vec<_>>();
        assert_eq!(predicted, observed, "{to} from {from}:\n{text}");
        assert_eq!(predicted, expected, "{text}");
    }
    // Live, from the running daemon: the same answer as from the same manifests offline.
    for (to, from) in [
        ("10.96.100.100:80", "10.244.1.2"),
        ("172.18.0.2:30001", client_ip),
        ("[fd00:10:96::100]:53/udp", "fd00:10:244:1::2"),
        ("10.96.100.100:81", "10.244.1.2"),
    ] {
        let out = c
            .topo
            .node
            .command(&rudder_bin().display().to_string())
            .args(["explain", "--live", "--to", to, "--from", from])
            .output()
            .expect("explain --live");
        let live = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(live, explain(&c, to, from), "{to} from {from}");
    }
    // A port the ClusterIP does not have: explained as rejected, and the kernel rejects it.
    let text = explain(&c, "10.96.100.100:81", "10.244.1.2");
    assert!(text.contains("verdict:     rejected"), "{text}");
    let r = tcp_request(
        &c.topo.pods[0],
        addr("10.96.100.100:81"),
        Duration::from_millis(500),
    );
    assert!(
        matches!(r, Err(RequestError::Refused)),
        "expected a reject, got {r:?}"
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

#[test]
fn periodic_full_resyncs_detect_and_repair_drift() {
    if !e2e_enabled() {
        return;
    }
    const FULL: &str = "kind=\"full\"";
    // Without the table monitor, which would repair the tampering below at once (that is
    // tested in reliability.rs): here the periodic resync must find it.
    let mut c = Cluster::start(&["--full-sync-period", "2s", "--watch-tables=false"]);
    // Interval sets (source ranges) and sets the packet path fills (affinity) must not look
    // like drift.
    c.manifests
        .write("fw.yaml", &firewalled_service("10.0.0.0/8, 172.18.0.0/24"))
        .expect("write");
    c.manifests
        .write(
            "sticky.yaml",
            &sticky_service(&["10.244.1.2", "10.244.2.2", "10.244.3.2"]),
        )
        .expect("write");
    let fulls = c.daemon.count(FULL);
    c.daemon
        .wait_for(FULL, fulls + 1, Duration::from_secs(10))
        .expect("a periodic full resync");
    let sticky = c.hist(&c.topo.pods[0], "10.96.100.140:80", 5, Proto::Tcp);
    assert_eq!(sticky.len(), 1, "affinity in use: {sticky:?}");
    // A periodic resync over untouched rules finds no drift.
    let fulls = c.daemon.count(FULL);
    c.daemon
        .wait_for(FULL, fulls + 1, Duration::from_secs(10))
        .expect("a periodic full resync");
    let drift = |c: &Cluster| {
        let (_, _, text) =
            http_get_path(&c.topo.node, "127.0.0.1:10249", "/metrics").expect("metrics");
        metric(&text, "rudder_drift_repairs_total")
    };
    assert_eq!(drift(&c), Some(0.0), "false drift:\n{}", c.daemon.log());
    assert!(!c.daemon.log().contains("drift:"), "{}", c.daemon.log());
    // Someone empties a map behind Rudder's back: the ClusterIP stops working...
    nft::load(&c.topo.node, "flush map ip rudder service-ips\n").expect("tamper");
    let r = tcp_request(
        &c.topo.pods[0],
        addr("10.96.100.100:80"),
        Duration::from_millis(300),
    );
    assert!(r.is_err(), "the tampering had no effect: {r:?}");
    // ...until the next periodic resync notices and repairs it.
    let fulls = c.daemon.count(FULL);
    c.daemon
        .wait_for(FULL, fulls + 1, Duration::from_secs(10))
        .expect("the next full resync");
    assert_eq!(drift(&c), Some(1.0), "{}", c.daemon.log());
    assert!(
        c.daemon.log().contains("set service-ips"),
        "the log names what drifted:\n{}",
        c.daemon.log()
    );
    assert_all_backends(
        &c.hist(&c.topo.pods[0], "10.96.100.100:80", 30, Proto::Tcp),
        "after the repair",
    );
}
