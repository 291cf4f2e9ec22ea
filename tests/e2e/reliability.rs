//! End-to-end tests of Rudder's reliability against the kernel (issue 10, items 1 and 7): a
//! service whose rules the kernel refuses is held back while everything else is programmed,
//! and tables changed behind Rudder's back are repaired at once. Each test runs the real
//! `rudder` binary in throwaway network namespaces (see `rudder_e2e`) with real connections.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rudder_e2e::{Daemon, EchoServers, Proto, TempDir, Topology, e2e_enabled, nft, serve_pod};

// Items 1 and 7 of issue 10: the kernel's refusals stay with the service that causes them,
// and Rudder's tables are repaired when others change them.

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
/// manifests plus `extra` files, and `rudder run` on it with `flags`.
struct Cluster {
    daemon: Daemon,
    manifests: TempDir,
    _servers: Vec<EchoServers>,
    topo: Topology,
}

impl Cluster {
    fn start(extra: &[(&str, &str)], flags: &[&str]) -> Cluster {
        let topo = Topology::new().expect("topology");
        let servers: Vec<EchoServers> = (0..3)
            .map(|i| serve_pod(&topo.pods[i], NAMES[i], &[80]).expect("echo servers"))
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
        let mut args = vec![
            "run",
            "--manifests",
            &dir,
            "--hostname-override",
            "node-1",
            "--cluster-cidr",
            "10.244.0.0/16,fd00:10:244::/56",
            "--manifests-poll-interval",
            "50ms",
        ];
        args.extend_from_slice(flags);
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

    /// Answers of `n` TCP connections from the client to `to`.
    fn hist(&self, to: &str, n: usize) -> BTreeMap<String, usize> {
        rudder_e2e::client::histogram_with_timeout(
            &self.topo.client,
            addr(to),
            n,
            Proto::Tcp,
            Duration::from_millis(500),
        )
    }

    /// Polls until `n` connections to `to` are all answered by `name`, or fails after
    /// `timeout` with the last answers and the log.
    fn wait_answer(&self, to: &str, name: &str, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let h = self.hist(to, 3);
            if h == BTreeMap::from([(name.to_owned(), 3)]) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "{to} does not answer {name} after {timeout:?}: {h:?}\n{}",
                self.daemon.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn get(&self, path: &str) -> String {
        let (code, body) =
            http_get(&self.topo.node, "127.0.0.1:10249", path).expect("metrics answer");
        assert_eq!(code, 200, "{path}: {body}");
        body
    }

    fn metric(&self, name_and_labels: &str) -> f64 {
        metric(&self.get("/metrics"), name_and_labels).unwrap_or(0.0)
    }

    /// Polls `/metrics` until `name_and_labels` satisfies `ok`.
    fn wait_metric(&self, name_and_labels: &str, ok: impl Fn(f64) -> bool, timeout: Duration) {
        let start = Instant::now();
        loop {
            let v = self.metric(name_and_labels);
            if ok(v) {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "{name_and_labels} = {v} after {timeout:?}\n{}",
                self.daemon.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A plain HTTP GET of `path` from inside `ns`: status code and body.
fn http_get(ns: &rudder_e2e::Netns, to: &str, path: &str) -> Result<(u16, String), String> {
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
        Ok((code, body.to_owned()))
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

const KERNEL_REFUSED: &str = "rudder_invalid_input_skipped_total{reason=\"kernel_refused\"}";
const QUARANTINED: &str = "rudder_quarantined_services";

/// A ClusterIP service `name` on `ip`:80 with pod `pod` (0–2) as its endpoint.
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

// === A refused service at the first full sync, against the real kernel ===

/// The kernel through the netlink writer, as `rudder run` drives it, except that every
/// transaction (applied or dry run) that adds `poisoned`'s element to `service-ips` also
/// adds it a second time with another verdict, while `active`: the kernel refuses such a
/// transaction (`File exists`), as it would refuse a service's rules for a reason the
/// compiler does not know. Since the frontend conflicts are resolved by the compiler, no
/// input is known that makes the kernel refuse a complete ruleset in fresh tables, so this
/// is how the first full sync meets a refusal here; the kernel's answers, the dry runs and
/// the bisection are real.
struct Poisoned {
    backend: rudder_nft_backend::NftBackend,
    poisoned: std::net::Ipv4Addr,
    active: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Poisoned {
    fn poison(&self, tx: &rudder_nft::Transaction) -> rudder_nft::Transaction {
        use rudder_nft::{Atom, Op, Verdict};
        let mut out = rudder_nft::Transaction::new();
        for op in tx.ops() {
            out.push(op.clone());
            if !self.active.load(std::sync::atomic::Ordering::Relaxed) {
                continue;
            }
            if let Op::AddElements(t, set, elems) = op
                && set.as_str() == "service-ips"
            {
                let clash: Vec<_> = elems
                    .iter()
                    .filter(|(k, _)| k.atoms().first() == Some(&Atom::Ipv4(self.poisoned)))
                    .map(|(k, _)| (k.clone(), Some(rudder_nft::Key::verdict(Verdict::Drop))))
                    .collect();
                if !clash.is_empty() {
                    out.push(Op::AddElements(t.clone(), set.clone(), clash));
                }
            }
        }
        out
    }
}

impl rudder_controller::Dataplane for Poisoned {
    fn apply(
        &mut self,
        tx: &rudder_nft::Transaction,
    ) -> Result<usize, rudder_controller::DataplaneError> {
        Ok(self.backend.apply(&self.poison(tx))?.bytes)
    }

    fn supports_dry_runs(&self) -> bool {
        true
    }

    fn check(
        &mut self,
        tx: &rudder_nft::Transaction,
    ) -> Option<Result<(), rudder_controller::DataplaneError>> {
        Some(self.backend.check(&self.poison(tx)).map_err(Into::into))
    }

    fn classify(&self, e: &rudder_controller::DataplaneError) -> rudder_controller::Failure {
        use rudder_controller::Failure;
        match e.downcast_ref::<rudder_nft_backend::Error>() {
            Some(e) if e.is_not_found() => Failure::NotFound,
            Some(e) if rudder_nft_backend::NftBackend::is_refusal(e) => Failure::Refused,
            _ => Failure::Other,
        }
    }
}

/// With a service the kernel refuses present from the start, the first (full) sync programs
/// every other service, which answers real connections, and holds the refused one back; its
/// next retry, once the kernel takes it, programs it.
#[test]
fn the_first_full_sync_holds_back_a_refused_service_and_programs_the_rest() {
    if !e2e_enabled() {
        return;
    }
    use rudder_controller::{Change, LoopConfig, NodeContextFn, SyncLoop};
    let topo = Topology::new().expect("topology");
    let _servers: Vec<EchoServers> = (0..3)
        .map(|i| serve_pod(&topo.pods[i], NAMES[i], &[80]).expect("echo servers"))
        .collect();
    let mut objects: Vec<serde_norway::Value> = Vec::new();
    for (i, name) in ["a", "b", "bad", "c", "d"].iter().enumerate() {
        for doc in plain(name, &format!("10.96.80.{}", i + 1), i % 3).split("---\n") {
            objects.push(serde_norway::from_str(doc).expect("yaml"));
        }
    }
    let (mut services, mut slices) = (Vec::new(), Vec::new());
    for o in objects {
        let json = serde_json::to_value(&o).expect("json");
        if o["kind"] == "Service" {
            let s: k8s_openapi::api::core::v1::Service =
                serde_json::from_value(json).expect("service");
            services.extend(rudder_sources::convert::service(&s));
        } else {
            let s: k8s_openapi::api::discovery::v1::EndpointSlice =
                serde_json::from_value(json).expect("slice");
            slices.extend(rudder_sources::convert::slice(&s));
        }
    }
    let node = rudder_compiler::NodeContext::new(
        "node-1".into(),
        rudder_compiler::NodePortIps::Only(vec!["172.18.0.2".parse().unwrap()]),
    );
    let compiler = rudder_compiler::Compiler::new(
        &[rudder_model::IpFamily::V4],
        rudder_compiler::Config::default(),
        node.clone(),
    );
    let ctx: NodeContextFn = Box::new(move |_| node.clone());
    let active = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let dataplane = Poisoned {
        backend: rudder_nft_backend::NftBackend::new(),
        poisoned: "10.96.80.3".parse().unwrap(),
        active: active.clone(),
    };
    let config = LoopConfig {
        min_sync_period: Duration::ZERO,
        sync_period: Duration::from_millis(200),
        node_wait: Duration::ZERO,
        ..LoopConfig::default()
    };
    let mut l = SyncLoop::new(compiler, dataplane, ctx, config);
    l.apply_change(Change::Snapshot {
        services,
        slices,
        node: None,
        service_cidrs: Vec::new(),
    });
    let report = topo
        .node
        .enter(|| l.sync())
        .expect("enter")
        .expect("a sync")
        .expect("everything else is applied");
    assert_eq!(report.kind, rudder_controller::SyncKind::Full);
    let held: Vec<String> = report
        .quarantined
        .iter()
        .map(|(k, _)| k.to_string())
        .collect();
    assert_eq!(held, ["default/bad"]);
    assert!(
        report.quarantined[0].1.contains("File exists"),
        "{:?}",
        report.quarantined
    );
    assert!(
        report.dry_runs >= 2 && report.dry_runs <= 8,
        "{} dry runs",
        report.dry_runs
    );
    let client = |to: &str| {
        rudder_e2e::client::histogram_with_timeout(
            &topo.client,
            addr(to),
            3,
            Proto::Tcp,
            Duration::from_millis(500),
        )
    };
    for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
        let i = if i >= 2 { i + 1 } else { i };
        let to = format!("10.96.80.{}:80", i + 1);
        assert_eq!(
            client(&to),
            BTreeMap::from([(NAMES[i % 3].to_owned(), 3)]),
            "{name} answers"
        );
    }
    assert_eq!(
        client("10.96.80.3:80"),
        BTreeMap::from([("<timeout>".to_owned(), 3)]),
        "held back"
    );
    // Still refused at its retry; then the kernel takes it, and the retry programs it.
    std::thread::sleep(Duration::from_millis(250));
    let report = topo.node.enter(|| l.sync()).unwrap().unwrap().unwrap();
    assert_eq!(report.quarantined.len(), 1);
    active.store(false, std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(250));
    let report = topo.node.enter(|| l.sync()).unwrap().unwrap().unwrap();
    assert!(report.quarantined.is_empty(), "{:?}", report.quarantined);
    assert_eq!(
        client("10.96.80.3:80"),
        BTreeMap::from([(NAMES[2].to_owned(), 3)])
    );
}

/// A service added while the kernel refuses its rules (its element exists in Rudder's map
/// with another verdict, put there behind Rudder's back) is held back, and the rest of the
/// same change is applied; once the foreign element is gone, it is programmed.
#[test]
fn a_service_the_kernel_refuses_when_added_is_held_back_and_the_rest_applied() {
    if !e2e_enabled() {
        return;
    }
    // Tampering is repaired at once when Rudder watches its tables: here the foreign
    // element must stay, so that the kernel refuses the new service's element.
    let mut c = Cluster::start(
        &[],
        &[
            "--iptables-sync-period",
            "2s",
            "--iptables-min-sync-period",
            "100ms",
            "--watch-tables=false",
        ],
    );
    nft::load(
        &c.topo.node,
        "add element ip rudder service-ips { 10.96.60.1 . tcp . 80 : drop }\n",
    )
    .expect("foreign element");
    let syncs = c.daemon.count(SYNC_DONE);
    let both = format!(
        "{}---\n{}",
        plain("late", "10.96.60.1", 2),
        plain("late-ok", "10.96.60.2", 1)
    );
    c.manifests.write("late.yaml", &both).expect("write");
    c.daemon
        .wait_for(SYNC_DONE, syncs + 1, Duration::from_secs(5))
        .expect("sync");
    let log = c.daemon.log();
    assert!(
        log.lines().any(|l| l.contains("kernel_refused")
            && l.contains("default/late")
            && l.contains("File exists")),
        "{log}"
    );
    // The rest of the change, and everything that was there, work.
    c.wait_answer("10.96.60.2:80", "222", Duration::from_secs(2));
    assert_eq!(
        c.hist("10.96.100.100:80", 30).len(),
        3,
        "all three backends"
    );
    assert_eq!(c.metric(QUARANTINED), 1.0);
    let counted = c.metric(KERNEL_REFUSED);
    assert!(counted >= 1.0);
    let status = c.get("/status");
    assert!(
        status.contains("\"quarantined\"") && status.contains("default/late"),
        "{status}"
    );
    // Retried every sync period while the cause stays, without being counted again.
    let syncs = c.daemon.count(SYNC_DONE);
    c.daemon
        .wait_for(SYNC_DONE, syncs + 2, Duration::from_secs(10))
        .expect("retries");
    assert_eq!(
        c.metric(KERNEL_REFUSED),
        counted,
        "a retry is not a new refusal"
    );
    assert_eq!(c.metric(QUARANTINED), 1.0);
    c.wait_answer("10.96.60.2:80", "222", Duration::from_secs(1));
    // The foreign element goes: at its next retry, the service is programmed.
    nft::load(
        &c.topo.node,
        "delete element ip rudder service-ips { 10.96.60.1 . tcp . 80 }\n",
    )
    .expect("remove the foreign element");
    c.wait_answer("10.96.60.1:80", "333", Duration::from_secs(10));
    c.wait_metric(QUARANTINED, |v| v == 0.0, Duration::from_secs(5));
    c.wait_answer("10.96.60.2:80", "222", Duration::from_secs(1));
    assert!(!c.get("/status").contains("\"quarantined\""));
}

const DRIFT: &str = "rudder_drift_repairs_total";

/// Whether a tampered part of the tables is as Rudder programmed it again.
type Repaired<'a> = Box<dyn Fn(&Cluster) -> bool + 'a>;

/// Polls `check` until it holds, for at most `timeout`; returns how long it took.
fn within(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check() {
            return start.elapsed();
        }
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `nft list ...` inside the node namespace, or the empty string when it fails.
fn list(c: &Cluster, what: &[&str]) -> String {
    let mut args = vec!["nft", "list"];
    args.extend_from_slice(what);
    c.topo
        .node
        .exec(&args)
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Normal changes through the daemon: `n` services added and removed again, each change
/// waited for.
fn churn(c: &mut Cluster, n: usize) {
    for i in 0..n {
        let syncs = c.daemon.count(SYNC_DONE);
        if i % 2 == 0 {
            let ip = format!("10.96.70.{}", i + 1);
            c.manifests
                .write("churn.yaml", &plain("churn", &ip, i % 3))
                .expect("write");
        } else {
            c.manifests.write("churn.yaml", "").expect("write");
        }
        c.daemon
            .wait_for(SYNC_DONE, syncs + 1, Duration::from_secs(5))
            .expect("sync");
    }
}

/// Rudder repairs its tables within about a second of someone else deleting one, flushing a
/// chain, changing a map element's verdict or adding a rule to a chain of Rudder's; each
/// repair is counted once, traffic works afterwards, and Rudder's own syncs are never
/// counted.
#[test]
fn tables_changed_behind_rudders_back_are_repaired_within_a_second() {
    if !e2e_enabled() {
        return;
    }
    // Default timing: the minimum sync period is one second.
    let mut c = Cluster::start(&[], &[]);
    let log = c.daemon.log();
    assert!(log.contains("watching Rudder's tables"), "{log}");
    churn(&mut c, 10);
    assert_eq!(c.metric(DRIFT), 0.0, "Rudder's own syncs are not drift");
    assert_eq!(c.hist("10.96.100.100:80", 30).len(), 3);

    let services_rule =
        |c: &Cluster| list(c, &["chain", "ip", "rudder", "services"]).contains("@service-ips");
    let element = "10.96.100.100 . tcp . 80 : goto cluster-3";
    let tampering: [(&str, &str, Repaired<'_>); 4] = [
        (
            "delete the table",
            "delete table ip rudder",
            Box::new(|c: &Cluster| services_rule(c)),
        ),
        (
            "flush a chain",
            "flush chain ip rudder services",
            Box::new(|c: &Cluster| services_rule(c)),
        ),
        (
            "change a verdict",
            "delete element ip rudder service-ips { 10.96.100.100 . tcp . 80 }\nadd element ip rudder service-ips { 10.96.100.100 . tcp . 80 : drop }",
            Box::new(move |c: &Cluster| {
                list(c, &["map", "ip", "rudder", "service-ips"]).contains(element)
            }),
        ),
        (
            "add a rule",
            "insert rule ip rudder services ip daddr 10.96.100.100 drop",
            Box::new(|c: &Cluster| {
                let l = list(c, &["chain", "ip", "rudder", "services"]);
                l.contains("@service-ips") && !l.contains("ip daddr 10.96.100.100 drop")
            }),
        ),
    ];
    let mut latencies = Vec::new();
    for (i, (what, script, repaired)) in tampering.iter().enumerate() {
        // Well after the last sync: the minimum sync period does not delay the repair.
        std::thread::sleep(Duration::from_millis(1100));
        assert!(repaired(&c), "{what}: in place before");
        // From before the change (the `nft` process's own time is included).
        let t0 = Instant::now();
        nft::load(&c.topo.node, &format!("{script}\n")).expect(what);
        within(Duration::from_secs(3), what, || repaired(&c));
        let t = t0.elapsed();
        latencies.push((*what, t));
        c.wait_metric(DRIFT, |v| v == (i + 1) as f64, Duration::from_secs(2));
        assert_eq!(c.hist("10.96.100.100:80", 30).len(), 3, "{what}: traffic");
        assert!(
            t < Duration::from_millis(1000),
            "{what}: repaired after {t:?}\n{}",
            c.daemon.log()
        );
    }
    eprintln!("repair latencies: {latencies:?}");
    let log = c.daemon.log();
    assert!(log.contains("drift repaired"), "{log}");
    assert!(log.contains("table ip rudder deleted"), "{log}");
    // More normal changes afterwards: still only the four repairs.
    churn(&mut c, 6);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.metric(DRIFT), 4.0);
}

/// With `--nft-writer nft`, Rudder's writes are `nft` processes: their commits are known as
/// Rudder's too, and a change by someone else is still repaired.
#[test]
fn with_the_nft_writer_own_changes_are_not_drift_and_tampering_is_repaired() {
    if !e2e_enabled() {
        return;
    }
    let mut c = Cluster::start(
        &[],
        &["--nft-writer", "nft", "--iptables-min-sync-period", "100ms"],
    );
    churn(&mut c, 6);
    assert_eq!(
        c.metric(DRIFT),
        0.0,
        "Rudder's own nft processes are not drift"
    );
    nft::load(&c.topo.node, "flush chain ip rudder services\n").expect("tamper");
    within(Duration::from_secs(3), "repair", || {
        list(&c, &["chain", "ip", "rudder", "services"]).contains("@service-ips")
    });
    c.wait_metric(DRIFT, |v| v == 1.0, Duration::from_secs(2));
    assert_eq!(c.hist("10.96.100.100:80", 30).len(), 3);
}

/// Without the table monitor, a partial sync that meets a table deleted behind Rudder's back
/// (`No such file or directory`) is followed at once by a full sync that recreates it, not by
/// a retry a sync period later: the new service and the old ones answer within seconds.
#[test]
fn a_partial_sync_missing_a_table_is_followed_by_a_full_sync_at_once() {
    if !e2e_enabled() {
        return;
    }
    let c = Cluster::start(
        &[],
        &[
            "--watch-tables=false",
            "--iptables-min-sync-period",
            "100ms",
        ],
    );
    assert_eq!(c.hist("10.96.100.100:80", 30).len(), 3, "before");
    nft::load(&c.topo.node, "delete table ip rudder\n").expect("delete the table");
    assert!(!list(&c, &["tables"]).contains("ip rudder"), "deleted");
    let syncs = c.daemon.count(SYNC_DONE);
    let t0 = Instant::now();
    c.manifests
        .write("late.yaml", &plain("late", "10.96.70.200", 0))
        .expect("write");
    let took = c.wait_answer("10.96.70.200:80", "111", Duration::from_secs(10));
    // Well under the 30 s a retry would wait.
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "{took:?}\n{}",
        c.daemon.log()
    );
    assert_eq!(c.hist("10.96.100.100:80", 30).len(), 3, "the example again");
    let log = c.daemon.log();
    // The partial sync met the missing table, and a full sync followed.
    assert!(
        log.contains("sync failed, an object is missing"),
        "the partial sync did not fail: the test did not test anything\n{log}"
    );
    let after: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(SYNC_DONE))
        .skip(syncs)
        .collect();
    assert!(
        after.iter().any(|l| l.contains("kind=\"full\"")),
        "a full sync followed: {after:?}\n{log}"
    );
    eprintln!("the new service answered {took:?} after its file was written");
}
