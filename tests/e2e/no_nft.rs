//! End-to-end: Rudder on a node without the `nft` program (issue 11, item 4). The daemon,
//! `rudder status`, `rudder explain --live` and `rudder cleanup` run in a mount namespace in
//! which every `nft` binary is covered by an empty, non-executable file and `PATH` holds no
//! directory at all; the test itself (outside that mount namespace) uses `nft` only to look
//! and to tamper. It proves traffic, a change, drift repaired (writing only the repair),
//! periodic full resyncs that write nothing, session affinity learned by the packet path
//! surviving those resyncs, and cleanup.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rudder_e2e::{Daemon, Netns, Proto, TempDir, Topology, e2e_enabled, nft, serve_pod};

const NAMES: [&str; 3] = ["111", "222", "333"];
const SYNC_DONE: &str = "sync done";
const DRIFT: &str = "rudder_drift_repairs_total";

/// Covers each `nft` with the empty file `$1`, checks that none is left, empties `PATH`, and
/// runs the rest of the arguments.
const HIDE_NFT: &str = r#"empty="$1"; shift
for p in /usr/sbin/nft /usr/bin/nft /usr/local/sbin/nft /usr/local/bin/nft /sbin/nft /bin/nft; do
  if [ -e "$p" ]; then mount --bind "$empty" "$p" || exit 96; fi
done
if command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || [ -x /usr/bin/nft ]; then
  echo "an nft program is still there" >&2; exit 97
fi
PATH=/nonexistent
export PATH
exec "$@""#;

fn rudder_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rudder"))
}

/// `program args` in `ns`, in a mount namespace of its own without `nft` (see [`HIDE_NFT`]).
fn without_nft(ns: &Netns, empty: &Path, program: &Path, args: &[&str]) -> Command {
    let mut cmd = ns.command("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        HIDE_NFT,
        "sh",
    ])
    .arg(empty)
    .arg(program)
    .args(args);
    cmd
}

fn run(mut cmd: Command) -> Output {
    cmd.output().expect("run")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test socket address")
}

fn hist(topo: &Topology, to: &str, n: usize) -> BTreeMap<String, usize> {
    rudder_e2e::client::histogram_with_timeout(
        &topo.client,
        addr(to),
        n,
        Proto::Tcp,
        Duration::from_millis(500),
    )
}

/// `nft list ...` in the node namespace (outside the daemon's mount namespace).
fn list(ns: &Netns, what: &[&str]) -> String {
    let mut args = vec!["nft", "list"];
    args.extend_from_slice(what);
    ns.exec(&args)
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn within(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn plain(name: &str, ip: &str, pod: usize) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: 80}}]
endpoints: [{{addresses: [10.244.{}.2], nodeName: node-1}}]
"#,
        pod + 1
    )
}

const STICKY: &str = r#"apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: default}
spec: {clusterIP: 10.96.80.80, sessionAffinity: ClientIP, ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: sticky-1, namespace: default, labels: {kubernetes.io/service-name: sticky}}
addressType: IPv4
ports: [{name: http, port: 80}]
endpoints: [{addresses: [10.244.1.2], nodeName: node-1}, {addresses: [10.244.2.2], nodeName: node-1}, {addresses: [10.244.3.2], nodeName: node-1}]
"#;

fn metric(ns: &Netns, name: &str) -> f64 {
    let out = ns
        .exec(&["curl", "-s", "http://127.0.0.1:10249/metrics"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The `sync done` lines of kind `full`.
fn full_syncs(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(SYNC_DONE) && l.contains("kind=\"full\""))
        .map(str::to_owned)
        .collect()
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or("")
}

#[test]
fn rudder_runs_repairs_and_cleans_up_without_nft() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new().expect("topology");
    let _servers: Vec<_> = (0..3)
        .map(|i| serve_pod(&topo.pods[i], NAMES[i], &[80]).expect("echo servers"))
        .collect();
    let hidden = TempDir::new("no-nft").expect("temp dir");
    let empty = hidden.write("nft", "").expect("empty file");
    // The mount namespace really has no nft: running it fails, `sh` finds none.
    let probe = run(without_nft(
        &topo.node,
        &empty,
        Path::new("/bin/sh"),
        &["-c", "/usr/sbin/nft --version || exit 42"],
    ));
    assert_eq!(probe.status.code(), Some(42), "{}", text(&probe));

    let manifests = TempDir::new("manifests").expect("temp dir");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/nginx");
    for f in ["node.yaml", "nginx.yaml"] {
        let t = std::fs::read_to_string(example.join(f)).expect("example manifest");
        manifests.write(f, &t).expect("copy");
    }
    manifests.write("sticky.yaml", STICKY).expect("write");
    let dir = manifests.path().display().to_string();
    let args = [
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        HIDE_NFT,
        "sh",
        &empty.display().to_string(),
        &rudder_bin().display().to_string(),
        "run",
        "--manifests",
        &dir,
        "--hostname-override",
        "node-1",
        "--cluster-cidr",
        "10.244.0.0/16,fd00:10:244::/56",
        "--manifests-poll-interval",
        "50ms",
        "--iptables-min-sync-period",
        "100ms",
        "--full-sync-period",
        "2s",
    ]
    .map(str::to_owned);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut daemon =
        Daemon::start(Path::new("/usr/bin/unshare"), &topo.node, &args).expect("start rudder");
    daemon
        .wait_for(SYNC_DONE, 1, Duration::from_secs(20))
        .expect("first sync");
    let log = daemon.log();
    assert!(!log.contains("checking the nft program"), "{log}");

    // Traffic through a ClusterIP.
    assert_eq!(
        hist(&topo, "10.96.100.100:80", 30).len(),
        3,
        "{}",
        daemon.log()
    );

    // Session affinity, learned by the packet path: one backend for this client.
    let sticky = hist(&topo, "10.96.80.80:80", 10);
    assert_eq!(sticky.len(), 1, "{sticky:?}");
    let client = topo.client_ipv4().to_string();
    assert!(
        list(&topo.node, &["table", "ip", "rudder"]).contains(&client),
        "the client is in an affinity set"
    );

    // Periodic full resyncs without drift: nothing written, the affinity entry kept.
    let fulls = full_syncs(&daemon.log()).len();
    daemon
        .wait_for("kind=\"full\"", fulls + 2, Duration::from_secs(10))
        .expect("two periodic full resyncs");
    let log = daemon.log();
    let resyncs = full_syncs(&log)[fulls..].to_vec();
    for l in &resyncs {
        assert_eq!(
            field(l, "bytes"),
            "0",
            "a resync without drift writes nothing: {l}"
        );
    }
    assert!(
        list(&topo.node, &["table", "ip", "rudder"]).contains(&client),
        "the learned client survives the full resyncs"
    );
    assert_eq!(
        hist(&topo, "10.96.80.80:80", 10),
        sticky,
        "still the same backend"
    );
    assert_eq!(metric(&topo.node, DRIFT), 0.0);

    // A change.
    manifests
        .write("late.yaml", &plain("late", "10.96.70.200", 0))
        .expect("write");
    within(Duration::from_secs(10), "the new service answers", || {
        hist(&topo, "10.96.70.200:80", 3) == BTreeMap::from([("111".to_owned(), 3)])
    });

    // Drift, by `nft` outside the daemon's mount namespace: a verdict changed in place.
    let map = list(&topo.node, &["map", "ip", "rudder", "service-ips"]);
    let element = map
        .split([',', '{', '}'])
        .map(str::trim)
        .find(|e| e.starts_with("10.96.100.100 . tcp . 80 :"))
        .expect("the example's element")
        .to_owned();
    let before = full_syncs(&daemon.log()).len();
    nft::load(
        &topo.node,
        "delete element ip rudder service-ips { 10.96.100.100 . tcp . 80 }\nadd element ip rudder service-ips { 10.96.100.100 . tcp . 80 : drop }\n",
    )
    .expect("tamper");
    within(Duration::from_secs(5), "repaired", || {
        list(&topo.node, &["map", "ip", "rudder", "service-ips"]).contains(&element)
    });
    within(Duration::from_secs(5), "counted", || {
        metric(&topo.node, DRIFT) == 1.0
    });
    assert_eq!(hist(&topo, "10.96.100.100:80", 30).len(), 3);
    let log = daemon.log();
    assert!(log.contains("drift repaired"), "{log}");
    let repair = full_syncs(&log)
        .into_iter()
        .skip(before)
        .find(|l| field(l, "bytes") != "0")
        .expect("the repair");
    assert_eq!(
        (
            field(&repair, "elements_added"),
            field(&repair, "elements_deleted")
        ),
        ("1", "1"),
        "only the repair is written: {repair}"
    );

    eprintln!("full resyncs without drift: {resyncs:?}\nthe repair: {repair}");

    // status and explain --live, without nft either.
    let status = run(without_nft(&topo.node, &empty, &rudder_bin(), &["status"]));
    assert!(status.status.success(), "{}", text(&status));
    let explain = run(without_nft(
        &topo.node,
        &empty,
        &rudder_bin(),
        &[
            "explain",
            "--live",
            "--to",
            "10.96.100.100:80",
            "--from",
            "10.244.1.2",
        ],
    ));
    assert!(explain.status.success(), "{}", text(&explain));
    assert!(text(&explain).contains("10.244."), "{}", text(&explain));

    // Cleanup.
    assert!(daemon.terminate(Duration::from_secs(5)).expect("terminate"));
    assert!(list(&topo.node, &["tables"]).contains("rudder"));
    let cleanup = run(without_nft(&topo.node, &empty, &rudder_bin(), &["cleanup"]));
    assert!(cleanup.status.success(), "{}", text(&cleanup));
    assert!(
        !list(&topo.node, &["tables"]).contains("rudder"),
        "{}",
        list(&topo.node, &["tables"])
    );
}
