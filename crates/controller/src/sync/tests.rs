//! Sync loop tests against the in-memory kernel model.

use std::time::Duration;

use rudder_compiler::{Compiler, Config, NodeContext, NodePortIps};
use rudder_model::IpFamily;
use rudder_nft::Ruleset;
use serde_json::json;
use tokio::sync::mpsc;

use super::*;

fn node_of(n: &k8s_openapi::api::core::v1::Node) -> Node {
    rudder_model::k8s::node(n).0
}
use crate::nftables::MAX_DRY_RUNS;
use rudder_nft::Transaction;

fn svc(name: &str, ip: &str) -> Box<rudder_model::Service> {
    let k: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "metadata": {"namespace": "ns", "name": name},
        "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]}
    }))
    .unwrap();
    Box::new(rudder_model::k8s::service(&k).unwrap().0)
}

fn slice(name: &str, svc: &str, ips: &[&str]) -> Box<rudder_model::EndpointSlice> {
    let eps: Vec<_> = ips.iter().map(|ip| json!({"addresses": [ip]})).collect();
    let k: k8s_openapi::api::discovery::v1::EndpointSlice = serde_json::from_value(json!({
        "metadata": {"namespace": "ns", "name": name, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}], "endpoints": eps
    }))
    .unwrap();
    Box::new(rudder_model::k8s::endpoint_slice(&k).unwrap().0)
}

fn new_loop(config: LoopConfig) -> SyncLoop<NftMode<Ruleset>> {
    let node = NodeContext::new("n1".into(), NodePortIps::Only(vec![]));
    let compiler = Compiler::new(&[IpFamily::V4], Config::default(), node.clone());
    let ctx: NodeContextFn = Box::new(move |n: Option<&Node>| {
        NodeContext::new(
            "n1".into(),
            NodePortIps::Only(n.map(|n| n.addresses.clone()).unwrap_or_default()),
        )
    });
    SyncLoop::new(compiler, Ruleset::new(), ctx, config)
}

fn elements(rs: &Ruleset, set: &str) -> Vec<String> {
    rs.tables
        .values()
        .flat_map(|t| t.sets.iter())
        .filter(|(n, _)| n.as_str() == set)
        .flat_map(|(_, s)| s.elements.keys().map(|k| k.to_string()))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn nothing_is_programmed_before_both_lists() {
    let mut l = new_loop(LoopConfig {
        node_wait: Duration::ZERO,
        ..LoopConfig::default()
    });
    l.apply_change(Change::ServicesListed(vec![*svc("a", "10.96.0.1")]));
    assert!(l.sync().is_none(), "slices not listed yet");
    assert!(l.dataplane().tables.is_empty());
    l.apply_change(Change::SlicesListed(vec![]));
    let report = l.sync().expect("sync runs").expect("sync succeeds");
    assert_eq!(report.kind, SyncKind::Full);
    assert_eq!(elements(l.dataplane(), "cluster-ips"), vec!["10.96.0.1"]);
    // Nothing changed: nothing to do.
    assert!(l.sync().is_none());
}

#[tokio::test(start_paused = true)]
async fn an_empty_cluster_is_programmed_and_the_node_wait_is_bounded() {
    let mut l = new_loop(LoopConfig {
        node_wait: Duration::from_secs(30),
        ..LoopConfig::default()
    });
    l.apply_change(Change::ServicesListed(vec![]));
    l.apply_change(Change::SlicesListed(vec![]));
    assert!(l.sync().is_none(), "waits for the Node");
    tokio::time::advance(Duration::from_secs(31)).await;
    assert!(l.sync().expect("runs after the wait").is_ok());
    assert!(
        !l.dataplane().tables.is_empty(),
        "empty cluster still gets the skeleton"
    );
}

#[tokio::test(start_paused = true)]
async fn bursts_coalesce_and_relists_converge() {
    let config = LoopConfig {
        min_sync_period: Duration::from_secs(1),
        node_wait: Duration::ZERO,
        ..LoopConfig::default()
    };
    let l = new_loop(config);
    let (tx, rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(l.run(rx, async move {
        let _ = stop_rx.await;
    }));
    tx.send(Change::ServicesListed(vec![
        *svc("a", "10.96.0.1"),
        *svc("b", "10.96.0.2"),
    ]))
    .unwrap();
    tx.send(Change::SlicesListed(vec![*slice(
        "a-1",
        "a",
        &["10.0.0.1"],
    )]))
    .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    // 200 changes to one slice within the min sync period.
    for i in 0..200 {
        tx.send(Change::SliceApplied(slice(
            "a-1",
            "a",
            &[&format!("10.0.1.{}", i % 250)],
        )))
        .unwrap();
    }
    // A re-list that no longer has service b and has a new slice for it... and b deleted.
    tx.send(Change::ServicesListed(vec![*svc("a", "10.96.0.1")]))
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop_tx.send(()).unwrap();
    let l = handle.await.unwrap();
    let (syncs, failures) = l.counts();
    assert_eq!(failures, 0);
    assert!(syncs <= 3, "200 changes coalesced into {syncs} syncs");
    assert_eq!(elements(l.dataplane(), "cluster-ips"), vec!["10.96.0.1"]);
    let eps: Vec<String> = l
        .dataplane()
        .tables
        .values()
        .flat_map(|t| t.sets.values())
        .flat_map(|s| s.elements.values().flatten().map(|v| v.to_string()))
        .filter(|v| v.starts_with("10.0."))
        .collect();
    assert_eq!(
        eps,
        vec!["10.0.1.199 . 8080"],
        "ends with exactly the last endpoint"
    );
}

/// A dataplane that fails while `fail` is set.
struct Flaky {
    inner: Ruleset,
    fail: bool,
}

impl Dataplane for Flaky {
    fn apply(&mut self, tx: &Transaction) -> Result<usize, DataplaneError> {
        if self.fail {
            return Err("kernel said no".into());
        }
        Dataplane::apply(&mut self.inner, tx)
    }
}

#[tokio::test(start_paused = true)]
async fn failures_are_retried_after_the_sync_period_with_a_full_sync() {
    let node = NodeContext::new("n1".into(), NodePortIps::Only(vec![]));
    let compiler = Compiler::new(&[IpFamily::V4], Config::default(), node.clone());
    let ctx: NodeContextFn = Box::new(move |_| node.clone());
    let config = LoopConfig {
        sync_period: Duration::from_secs(30),
        min_sync_period: Duration::ZERO,
        node_wait: Duration::ZERO,
        ..LoopConfig::default()
    };
    let mut l = SyncLoop::new(
        compiler,
        Flaky {
            inner: Ruleset::new(),
            fail: false,
        },
        ctx,
        config,
    );
    l.apply_change(Change::ServicesListed(vec![*svc("a", "10.96.0.1")]));
    l.apply_change(Change::SlicesListed(vec![]));
    assert!(l.sync().unwrap().is_ok());
    l.dataplane_mut().fail = true;
    l.apply_change(Change::ServiceApplied(svc("b", "10.96.0.2")));
    assert!(l.sync().unwrap().is_err());
    let now = Instant::now();
    assert_eq!(
        l.next_sync_at(now),
        Some(now + Duration::from_secs(30)),
        "retry after syncPeriod"
    );
    l.dataplane_mut().fail = false;
    tokio::time::advance(Duration::from_secs(30)).await;
    let report = l.sync().unwrap().unwrap();
    assert_eq!(
        report.kind,
        SyncKind::Full,
        "after a failure the next sync is full"
    );
    let mut ips = elements(&l.dataplane().inner, "cluster-ips");
    ips.sort();
    assert_eq!(ips, vec!["10.96.0.1", "10.96.0.2"]);
}

#[tokio::test(start_paused = true)]
async fn periodic_full_resync_and_node_changes() {
    let config = LoopConfig {
        full_sync_period: Duration::from_secs(3600),
        min_sync_period: Duration::ZERO,
        node_wait: Duration::ZERO,
        ..LoopConfig::default()
    };
    let mut l = new_loop(config);
    l.apply_change(Change::ServicesListed(vec![]));
    l.apply_change(Change::SlicesListed(vec![]));
    assert_eq!(l.sync().unwrap().unwrap().kind, SyncKind::Full);
    assert!(l.sync().is_none());
    tokio::time::advance(Duration::from_secs(3601)).await;
    assert_eq!(
        l.sync().unwrap().unwrap().kind,
        SyncKind::Full,
        "hourly full resync"
    );
    let node: Box<Node> = Box::new(node_of(
        &serde_json::from_value(json!({"metadata": {"name": "n1"}, "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"}]}}))
            .unwrap(),
    ));
    l.apply_change(Change::NodeApplied(node.clone()));
    assert_eq!(
        l.sync().unwrap().unwrap().kind,
        SyncKind::Full,
        "new node IPs need a full sync"
    );
    assert_eq!(elements(l.dataplane(), "nodeport-ips"), vec!["172.18.0.2"]);
    l.apply_change(Change::NodeApplied(node));
    assert!(l.sync().is_none(), "same node: nothing to do");
}

#[tokio::test(start_paused = true)]
async fn a_zone_label_change_forces_a_full_sync() {
    let node = NodeContext::new("n1".into(), NodePortIps::Only(vec![]));
    let compiler = Compiler::new(&[IpFamily::V4], Config::default(), node);
    let ctx: NodeContextFn = Box::new(|n: Option<&Node>| {
        let mut c = NodeContext::new("n1".into(), NodePortIps::Only(vec![]));
        c.zone = n.and_then(|n| n.zone.clone());
        c
    });
    let config = LoopConfig {
        min_sync_period: Duration::ZERO,
        node_wait: Duration::ZERO,
        ..LoopConfig::default()
    };
    let mut l = SyncLoop::new(compiler, Ruleset::new(), ctx, config);
    l.apply_change(Change::ServicesListed(vec![*svc("a", "10.96.0.1")]));
    l.apply_change(Change::SlicesListed(vec![]));
    let zoned = |zone: &str| {
        Box::new(node_of(
            &serde_json::from_value(json!({"metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": zone}}})).unwrap(),
        ))
    };
    l.apply_change(Change::NodeApplied(zoned("zone-a")));
    assert_eq!(l.sync().unwrap().unwrap().kind, SyncKind::Full);
    l.apply_change(Change::NodeApplied(zoned("zone-a")));
    assert!(l.sync().is_none(), "same zone: nothing to do");
    l.apply_change(Change::NodeApplied(zoned("zone-b")));
    assert_eq!(
        l.sync().unwrap().unwrap().kind,
        SyncKind::Full,
        "zone change: full sync"
    );
}

#[tokio::test(start_paused = true)]
async fn a_service_refused_for_its_cluster_ip_gets_no_rules_and_no_health_check_server() {
    let config = LoopConfig {
        min_sync_period: Duration::ZERO,
        node_wait: Duration::ZERO,
        ..LoopConfig::default()
    };
    let mut l = new_loop(config);
    let lb = |name: &str, ip: &str, hc: u16| {
        let k: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
            "metadata": {"namespace": "ns", "name": name},
            "spec": {"type": "LoadBalancer", "clusterIP": ip, "externalTrafficPolicy": "Local",
                     "healthCheckNodePort": hc, "ports": [{"name": "http", "port": 80, "nodePort": 30000 + hc % 1000}]}
        }))
        .unwrap();
        rudder_model::k8s::service(&k).unwrap().0
    };
    l.apply_change(Change::ServicesListed(vec![
        lb("ok", "10.96.0.1", 32001),
        lb("own", "172.18.0.2", 32002),
    ]));
    l.apply_change(Change::SlicesListed(vec![]));
    let node: Box<Node> = Box::new(node_of(
        &serde_json::from_value(json!({"metadata": {"name": "n1"}, "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"}]}}))
            .unwrap(),
    ));
    l.apply_change(Change::NodeApplied(node));
    let health = l.service_health();
    assert_eq!(l.sync().unwrap().unwrap().kind, SyncKind::Full);
    assert_eq!(elements(l.dataplane(), "cluster-ips"), vec!["10.96.0.1"]);
    let ports: Vec<u16> = health.borrow().ports.keys().copied().collect();
    assert_eq!(ports, vec![32001]);
}

// === The kernel refuses some services ===

/// Addresses the fake kernel refuses in `cluster-ips`, and pairs it refuses together.
#[derive(Default)]
struct Poison {
    ips: std::collections::BTreeSet<String>,
    pairs: Vec<(String, String)>,
    /// Refuse everything (as a kernel that refuses the tables themselves).
    all: bool,
}

type SharedPoison = std::sync::Arc<std::sync::Mutex<Poison>>;

/// A dataplane that refuses, like a kernel, any transaction after which the ruleset would
/// hold a poisoned ClusterIP; counts its dry runs and applies.
struct Picky {
    inner: Ruleset,
    poison: SharedPoison,
    dry_runs: usize,
    applies: usize,
}

impl Picky {
    fn attempt(&self, tx: &Transaction) -> Result<Ruleset, DataplaneError> {
        let mut next = self.inner.clone();
        rudder_nft::Ruleset::apply(&mut next, tx).map_err(|e| Box::new(e) as DataplaneError)?;
        let p = self.poison.lock().unwrap();
        if p.all {
            return Err("operation 0: table ip rudder: Operation not permitted".into());
        }
        let ips = elements(&next, "cluster-ips");
        if let Some(ip) = ips.iter().find(|ip| p.ips.contains(*ip)) {
            return Err(format!("add element cluster-ips {{ {ip} }}: File exists").into());
        }
        if let Some((a, b)) = p
            .pairs
            .iter()
            .find(|(a, b)| ips.contains(a) && ips.contains(b))
        {
            return Err(format!("{b} conflicts with {a}: File exists").into());
        }
        Ok(next)
    }
}

impl Dataplane for Picky {
    fn apply(&mut self, tx: &Transaction) -> Result<usize, DataplaneError> {
        self.applies += 1;
        self.inner = self.attempt(tx)?;
        Ok(0)
    }

    fn supports_dry_runs(&self) -> bool {
        true
    }

    fn check(&mut self, tx: &Transaction) -> Option<Result<(), DataplaneError>> {
        self.dry_runs += 1;
        Some(self.attempt(tx).map(|_| ()))
    }

    fn classify(&self, error: &DataplaneError) -> Failure {
        Dataplane::classify(&self.inner, error)
    }
}

fn picky_loop(poison: &SharedPoison) -> SyncLoop<NftMode<Picky>> {
    let node = NodeContext::new("n1".into(), NodePortIps::Only(vec![]));
    let compiler = Compiler::new(&[IpFamily::V4], Config::default(), node.clone());
    let ctx: NodeContextFn = Box::new(move |_| node.clone());
    let config = LoopConfig {
        min_sync_period: Duration::ZERO,
        sync_period: Duration::from_secs(30),
        node_wait: Duration::ZERO,
        ..LoopConfig::default()
    };
    let dp = Picky {
        inner: Ruleset::new(),
        poison: poison.clone(),
        dry_runs: 0,
        applies: 0,
    };
    SyncLoop::new(compiler, dp, ctx, config)
}

fn services(n: u32) -> Vec<rudder_model::Service> {
    (0..n)
        .map(|i| {
            *svc(
                &format!("s{i:04}"),
                &format!("10.96.{}.{}", 1 + i / 200, 1 + i % 200),
            )
        })
        .collect()
}

fn poisoned(ips: &[&str]) -> SharedPoison {
    std::sync::Arc::new(std::sync::Mutex::new(Poison {
        ips: ips.iter().map(|s| s.to_string()).collect(),
        ..Poison::default()
    }))
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn quarantined_names<D: Dataplane>(l: &SyncLoop<NftMode<D>>) -> Vec<String> {
    l.quarantined().keys().map(|k| k.name.clone()).collect()
}

fn log2_ceil(n: usize) -> usize {
    (usize::BITS - (n.max(1) - 1).leading_zeros()) as usize
}

#[tokio::test(start_paused = true)]
async fn a_refused_service_at_the_first_full_sync_is_held_back_and_the_rest_programmed() {
    let poison = poisoned(&["10.96.0.66"]);
    let mut l = picky_loop(&poison);
    let mut list = services(100);
    list.push(*svc("bad", "10.96.0.66"));
    l.apply_change(Change::ServicesListed(list));
    l.apply_change(Change::SlicesListed(vec![]));
    let report = l
        .sync()
        .expect("sync runs")
        .expect("everything else is applied");
    assert_eq!(report.kind, SyncKind::Full);
    assert_eq!(quarantined_names(&l), ["bad"]);
    assert!(l.quarantined().values().all(|r| r.contains("File exists")));
    assert_eq!(report.quarantined.len(), 1);
    let ips = elements(&l.dataplane().inner, "cluster-ips");
    assert_eq!(ips.len(), 100);
    assert!(!ips.contains(&"10.96.0.66".to_owned()));
    // The failed apply, the final apply; the baseline and about log2(101) dry runs.
    assert_eq!(l.dataplane().applies, 2);
    assert_eq!(report.dry_runs, l.dataplane().dry_runs);
    assert!(
        report.dry_runs <= 2 + 2 * log2_ceil(101),
        "{} dry runs",
        report.dry_runs
    );
    let (syncs, failures) = l.counts();
    assert_eq!((syncs, failures), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_refused_service_in_a_partial_sync_is_held_back_and_the_rest_of_the_change_applied() {
    let poison = poisoned(&["10.96.0.66"]);
    let mut l = picky_loop(&poison);
    l.apply_change(Change::ServicesListed(services(50)));
    l.apply_change(Change::SlicesListed(vec![]));
    assert_eq!(l.sync().unwrap().unwrap().kind, SyncKind::Full);
    // One change: three good services, one bad one, and an endpoint for an old one.
    for (n, ip) in [
        ("new1", "10.96.9.1"),
        ("bad", "10.96.0.66"),
        ("new2", "10.96.9.2"),
    ] {
        l.apply_change(Change::ServiceApplied(svc(n, ip)));
    }
    l.apply_change(Change::SliceApplied(slice(
        "s0003-1",
        "s0003",
        &["10.0.0.3"],
    )));
    l.apply_change(Change::ServiceApplied(svc("new3", "10.96.9.3")));
    let report = l.sync().unwrap().expect("the rest is applied");
    assert_eq!(report.kind, SyncKind::Partial);
    assert_eq!(quarantined_names(&l), ["bad"]);
    let ips = elements(&l.dataplane().inner, "cluster-ips");
    assert_eq!(ips.len(), 53);
    for ip in ["10.96.9.1", "10.96.9.2", "10.96.9.3"] {
        assert!(ips.contains(&ip.to_owned()), "{ip}");
    }
    let eps: Vec<String> = l
        .dataplane()
        .inner
        .tables
        .values()
        .flat_map(|t| t.sets.values())
        .flat_map(|s| s.elements.values().flatten().map(|v| v.to_string()))
        .collect();
    assert!(eps.contains(&"10.0.0.3 . 8080".to_owned()), "{eps:?}");
    assert!(
        report.dry_runs <= 1 + 2 * log2_ceil(5),
        "{}",
        report.dry_runs
    );
    // The kernel holds exactly what the compiler believes: the next change applies.
    l.apply_change(Change::ServiceDeleted(ServiceKey::new("ns", "new2")));
    let report = l.sync().unwrap().expect("a later change applies");
    assert_eq!(report.dry_runs, 0);
    assert_eq!(elements(&l.dataplane().inner, "cluster-ips").len(), 52);
}

#[tokio::test(start_paused = true)]
async fn a_held_back_service_is_retried_when_it_changes_and_every_sync_period() {
    let poison = poisoned(&["10.96.0.66"]);
    let mut l = picky_loop(&poison);
    let mut list = services(10);
    list.push(*svc("bad", "10.96.0.66"));
    list.push(*svc("worse", "10.96.0.67"));
    poison.lock().unwrap().ips.insert("10.96.0.67".into());
    l.apply_change(Change::ServicesListed(list));
    l.apply_change(Change::SlicesListed(vec![]));
    l.sync().unwrap().unwrap();
    assert_eq!(quarantined_names(&l), ["bad", "worse"]);
    // Nothing changes: the next try is one sync period later.
    assert!(l.sync().is_none());
    let now = Instant::now();
    assert_eq!(l.next_sync_at(now), Some(now + Duration::from_secs(30)));
    // The service changes (to an address the kernel takes): tried at once, programmed.
    l.apply_change(Change::ServiceApplied(svc("worse", "10.96.0.68")));
    let report = l.sync().unwrap().unwrap();
    assert_eq!(report.kind, SyncKind::Partial);
    assert_eq!(quarantined_names(&l), ["bad"]);
    assert!(elements(&l.dataplane().inner, "cluster-ips").contains(&"10.96.0.68".to_owned()));
    // The cause goes away: at the retry, it is programmed.
    poison.lock().unwrap().ips.clear();
    tokio::time::advance(Duration::from_secs(30)).await;
    let report = l.sync().expect("retry is due").unwrap();
    assert_eq!(report.kind, SyncKind::Partial);
    assert_eq!(report.dry_runs, 1, "tried in a dry run first, then applied");
    assert!(l.quarantined().is_empty());
    assert!(elements(&l.dataplane().inner, "cluster-ips").contains(&"10.96.0.66".to_owned()));
    assert!(l.sync().is_none(), "nothing left to retry");
}

#[tokio::test(start_paused = true)]
async fn a_known_offender_costs_two_dry_runs_at_the_next_full_sync() {
    let poison = poisoned(&["10.96.0.66"]);
    let mut l = picky_loop(&poison);
    let mut list = services(1000);
    list.push(*svc("bad", "10.96.0.66"));
    l.apply_change(Change::ServicesListed(list));
    l.apply_change(Change::SlicesListed(vec![]));
    let first = l.sync().unwrap().unwrap();
    assert!(
        first.dry_runs <= 2 + 2 * log2_ceil(1001),
        "{} dry runs at the first sync",
        first.dry_runs
    );
    tokio::time::advance(Duration::from_secs(3601)).await;
    let report = l.sync().unwrap().unwrap();
    assert_eq!(report.kind, SyncKind::Full);
    // Everything but the suspect, then the suspect, in dry runs; then one apply (no failed
    // attempt first).
    let applies = l.dataplane().applies;
    assert_eq!(report.dry_runs, 2);
    assert_eq!(quarantined_names(&l), ["bad"]);
    assert_eq!(elements(&l.dataplane().inner, "cluster-ips").len(), 1000);
    assert_eq!(applies, 3, "two at the first sync, one now");
}

#[tokio::test(start_paused = true)]
async fn of_two_services_that_conflict_the_later_one_is_held_back() {
    let poison = poisoned(&[]);
    poison
        .lock()
        .unwrap()
        .pairs
        .push(("10.96.1.21".into(), "10.96.1.71".into()));
    let mut l = picky_loop(&poison);
    l.apply_change(Change::ServicesListed(services(100)));
    l.apply_change(Change::SlicesListed(vec![]));
    l.sync().unwrap().unwrap();
    assert_eq!(quarantined_names(&l), ["s0070"]);
    let ips = elements(&l.dataplane().inner, "cluster-ips");
    assert!(ips.contains(&"10.96.1.21".to_owned()));
    assert_eq!(ips.len(), 99);
}

#[tokio::test(start_paused = true)]
async fn when_the_tables_themselves_are_refused_no_service_is_held_back() {
    let poison = poisoned(&[]);
    poison.lock().unwrap().all = true;
    let mut l = picky_loop(&poison);
    l.apply_change(Change::ServicesListed(services(100)));
    l.apply_change(Change::SlicesListed(vec![]));
    assert!(l.sync().unwrap().is_err());
    assert!(l.quarantined().is_empty());
    assert_eq!(
        l.dataplane().dry_runs,
        2,
        "everything, then the tables alone, in dry runs"
    );
    let now = Instant::now();
    assert_eq!(l.next_sync_at(now), Some(now + Duration::from_secs(30)));
}

#[tokio::test(start_paused = true)]
async fn when_the_tables_are_refused_a_known_offender_stays_the_only_one_held_back() {
    let poison = poisoned(&["10.96.0.66"]);
    let mut l = picky_loop(&poison);
    let mut list = services(100);
    list.push(*svc("bad", "10.96.0.66"));
    l.apply_change(Change::ServicesListed(list));
    l.apply_change(Change::SlicesListed(vec![]));
    l.sync().unwrap().unwrap();
    assert_eq!(quarantined_names(&l), ["bad"]);
    poison.lock().unwrap().all = true;
    tokio::time::advance(Duration::from_secs(3601)).await;
    let before = l.dataplane().dry_runs;
    assert!(l.sync().unwrap().is_err(), "nothing can be applied");
    assert_eq!(quarantined_names(&l), ["bad"], "nobody else is blamed");
    assert_eq!(
        l.dataplane().dry_runs - before,
        2,
        "the others, then the tables alone"
    );
}

#[tokio::test(start_paused = true)]
async fn many_refused_services_are_found_within_the_budget_over_several_syncs() {
    let bad: Vec<String> = (0..1000u32)
        .step_by(17)
        .map(|i| format!("10.96.{}.{}", 1 + i / 200, 1 + i % 200))
        .collect();
    let poison = poisoned(&bad.iter().map(String::as_str).collect::<Vec<_>>());
    let mut l = picky_loop(&poison);
    l.apply_change(Change::ServicesListed(services(1000)));
    l.apply_change(Change::SlicesListed(vec![]));
    let mut rounds = 0;
    while let Some(r) = l.sync() {
        let report = r.expect("each sync applies what it decided on");
        assert!(report.dry_runs <= MAX_DRY_RUNS, "{}", report.dry_runs);
        rounds += 1;
        assert!(rounds < 50, "converges");
    }
    assert!(rounds > 1, "more than one sync's budget");
    assert_eq!(l.quarantined().len(), bad.len());
    let ips = sorted(elements(&l.dataplane().inner, "cluster-ips"));
    assert_eq!(ips.len(), 1000 - bad.len());
    assert!(ips.iter().all(|ip| !bad.contains(ip)));
}

/// A dataplane whose tables someone else changes.
#[tokio::test(start_paused = true)]
async fn a_partial_sync_that_misses_an_object_is_followed_at_once_by_a_full_sync() {
    let poison = poisoned(&[]);
    let mut l = picky_loop(&poison);
    l.config.min_sync_period = Duration::from_secs(1);
    l.apply_change(Change::ServicesListed(services(3)));
    l.apply_change(Change::SlicesListed(vec![]));
    l.sync().unwrap().unwrap();
    // Someone deletes the cluster-ips set's elements behind Rudder's back; then a service
    // is deleted, whose element the partial sync deletes.
    for t in l.dataplane_mut().inner.tables.values_mut() {
        if let Some(s) = t
            .sets
            .values_mut()
            .find(|s| s.decl.name.as_str() == "cluster-ips")
        {
            s.elements.clear();
        }
    }
    l.apply_change(Change::ServiceDeleted(ServiceKey::new("ns", "s0001")));
    assert!(l.sync().unwrap().is_err());
    assert_eq!(
        l.dataplane().dry_runs,
        0,
        "no search: the tables are not what Rudder wrote"
    );
    let now = Instant::now();
    assert_eq!(
        l.next_sync_at(now),
        Some(now + Duration::from_secs(1)),
        "the full sync comes after the minimum sync period, not the retry period"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    let report = l.sync().unwrap().unwrap();
    assert_eq!(report.kind, SyncKind::Full);
    assert_eq!(elements(&l.dataplane().inner, "cluster-ips").len(), 2);
}

// === Drift ===

/// An in-memory kernel the test can change behind the loop's back.
#[derive(Clone, Default)]
struct Shared(
    std::sync::Arc<std::sync::Mutex<Ruleset>>,
    /// Every transaction applied: operations, elements added, elements deleted.
    std::sync::Arc<std::sync::Mutex<Vec<(usize, usize, usize)>>>,
);

impl Dataplane for Shared {
    fn apply(&mut self, tx: &Transaction) -> Result<usize, DataplaneError> {
        let s = tx.stats();
        self.1
            .lock()
            .unwrap()
            .push((s.objects, s.elements_added, s.elements_deleted));
        Dataplane::apply(&mut *self.0.lock().unwrap(), tx)
    }

    fn read(
        &mut self,
        table: &rudder_nft::TableRef,
        expected: Option<&rudder_nft::Table>,
    ) -> Option<Result<Option<rudder_nft::Table>, DataplaneError>> {
        Dataplane::read(&mut *self.0.lock().unwrap(), table, expected)
    }
}

impl Shared {
    fn cluster_ips(&self) -> Vec<String> {
        sorted(elements(&self.0.lock().unwrap(), "cluster-ips"))
    }

    /// Deletes every element of `cluster-ips`, as someone else might.
    fn tamper(&self) {
        for t in self.0.lock().unwrap().tables.values_mut() {
            for s in t.sets.values_mut() {
                if s.decl.name.as_str() == "cluster-ips" {
                    s.elements.clear();
                }
            }
        }
    }
}

fn shared_loop(
    kernel: &Shared,
    min_sync: Duration,
) -> (
    SyncLoop<NftMode<Shared>>,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let node = NodeContext::new("n1".into(), NodePortIps::Only(vec![]));
    let compiler = Compiler::new(&[IpFamily::V4], Config::default(), node.clone());
    let ctx: NodeContextFn = Box::new(move |_| node.clone());
    let config = LoopConfig {
        min_sync_period: min_sync,
        node_wait: Duration::ZERO,
        ..LoopConfig::default()
    };
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = events.clone();
    let l =
        SyncLoop::new(compiler, kernel.clone(), ctx, config).with_observer(Box::new(move |e| {
            if let LoopEvent::Drift { differences } = e {
                seen.lock().unwrap().push(differences.join("; "));
            }
        }));
    (l, events)
}

#[tokio::test(start_paused = true)]
async fn drift_notices_are_repaired_at_once_and_counted_once() {
    let kernel = Shared::default();
    let (l, events) = shared_loop(&kernel, Duration::from_secs(1));
    let health = l.proxy_health();
    let (tx, rx) = mpsc::unbounded_channel();
    let (drift_tx, drift_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(l.with_drift(drift_rx).run(rx, async move {
        let _ = stop_rx.await;
    }));
    // Before the first sync: nothing to repair.
    drift_tx.send(DriftNotice::Lost).unwrap();
    tx.send(Change::ServicesListed(services(3))).unwrap();
    tx.send(Change::SlicesListed(vec![])).unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let all = kernel.cluster_ips();
    assert_eq!(all.len(), 3);
    assert!(events.lock().unwrap().is_empty());

    // A burst of notices about one change: repaired within the minimum sync period, once.
    kernel.tamper();
    let t0 = Instant::now();
    for _ in 0..5 {
        drift_tx
            .send(DriftNotice::Changed {
                changes: vec!["element deleted from set ip rudder cluster-ips (×3)".into()],
                tables_missing: true,
            })
            .unwrap();
    }
    while kernel.cluster_ips() != all {
        assert!(t0.elapsed() < Duration::from_secs(2), "repaired");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(health.healthy(), "repaired");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        events.lock().unwrap().len(),
        1,
        "{:?}",
        events.lock().unwrap()
    );

    // Lost notices: the loop compares the tables, finds the drift and repairs it.
    kernel.tamper();
    drift_tx.send(DriftNotice::Lost).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(kernel.cluster_ips(), all);
    assert_eq!(events.lock().unwrap().len(), 2);
    // Lost notices but nothing changed: no repair.
    drift_tx.send(DriftNotice::Lost).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(events.lock().unwrap().len(), 2);

    stop_tx.send(()).unwrap();
    let l = handle.await.unwrap();
    let (syncs, failures) = l.counts();
    assert_eq!((syncs, failures), (3, 0), "the first sync and two repairs");
}

#[tokio::test(start_paused = true)]
async fn a_periodic_resync_that_finds_drift_counts_one_repair() {
    let kernel = Shared::default();
    let (mut l, events) = shared_loop(&kernel, Duration::ZERO);
    l.apply_change(Change::ServicesListed(services(3)));
    l.apply_change(Change::SlicesListed(vec![]));
    l.sync().unwrap().unwrap();
    tokio::time::advance(Duration::from_secs(3601)).await;
    assert_eq!(l.sync().unwrap().unwrap().kind, SyncKind::Full);
    assert!(events.lock().unwrap().is_empty(), "nothing changed");
    kernel.tamper();
    tokio::time::advance(Duration::from_secs(3601)).await;
    assert_eq!(l.sync().unwrap().unwrap().kind, SyncKind::Full);
    assert_eq!(events.lock().unwrap().len(), 1);
    assert!(
        events.lock().unwrap()[0].contains("set cluster-ips: 0 instead of 3"),
        "{:?}",
        events.lock().unwrap()
    );
    assert_eq!(kernel.cluster_ips().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn health_is_bad_while_a_table_is_known_missing() {
    let kernel = Shared::default();
    let (mut l, events) = shared_loop(&kernel, Duration::ZERO);
    let health = l.proxy_health();
    l.apply_change(Change::ServicesListed(services(3)));
    l.apply_change(Change::SlicesListed(vec![]));
    l.sync().unwrap().unwrap();
    assert!(health.healthy());
    kernel.0.lock().unwrap().tables.clear();
    l.drift_observed(DriftNotice::Changed {
        changes: vec!["table ip rudder deleted".into()],
        tables_missing: true,
    });
    assert!(!health.healthy(), "a table is known missing");
    assert!(health.tables_missing());
    let report = l.sync().expect("repair runs").unwrap();
    assert_eq!(report.kind, SyncKind::Full);
    assert!(health.healthy());
    assert_eq!(kernel.cluster_ips().len(), 3);
    assert_eq!(
        *events.lock().unwrap(),
        vec!["table ip rudder deleted".to_owned()]
    );
}

#[tokio::test(start_paused = true)]
async fn synced_observers_do_not_see_services_the_kernel_refused() {
    // A service held back because the kernel refused its rules has no rules, so nothing
    // that follows the synced state (the localhost node port listeners) may follow it.
    let poison = poisoned(&["10.96.0.66"]);
    let seen: std::sync::Arc<std::sync::Mutex<Vec<Vec<String>>>> = Default::default();
    let seen2 = seen.clone();
    let mut l = picky_loop(&poison).with_synced_observer(Box::new(move |s| {
        let mut kept: Vec<String> = s
            .state
            .services()
            .filter(|svc| !(s.refused)(svc))
            .map(|svc| svc.key.name.clone())
            .collect();
        kept.sort();
        seen2.lock().unwrap().push(kept);
    }));
    l.apply_change(Change::ServicesListed(vec![
        *svc("good", "10.96.0.65"),
        *svc("bad", "10.96.0.66"),
    ]));
    l.apply_change(Change::SlicesListed(vec![]));
    l.sync().expect("runs").expect("the rest is applied");
    assert!(l.quarantined().contains_key(&ServiceKey::new("ns", "bad")));
    assert_eq!(*seen.lock().unwrap(), vec![vec!["good".to_string()]]);
}

#[test]
fn service_cidr_problems_are_named_after_every_object_that_holds_the_prefix() {
    let mut l = new_loop(LoopConfig::default());
    let c = |s: &str| s.parse::<rudder_model::Cidr>().unwrap();
    let named = |cidr: &str, object: &str| rudder_model::NamedCidr {
        cidr: c(cidr),
        object: object.into(),
    };
    l.apply_change(Change::ServiceCidrs(vec![
        named("10.0.0.0/24", "b"),
        named("10.0.0.0/24", "a"),
        named("10.96.0.0/16", "kubernetes"),
    ]));
    let problem = |cidr: &str| rudder_model::Problem {
        kind: rudder_model::ObjectKind::ServiceCidr,
        namespace: String::new(),
        name: String::new(),
        reason: rudder_model::Reason::ServiceCidrCoversNode {
            cidr: c(cidr),
            address: "10.0.0.5".parse().unwrap(),
        },
    };
    let out = l.named(vec![problem("10.0.0.0/24"), problem("10.1.0.0/24")]);
    let names: Vec<&str> = out.iter().map(|p| p.name.as_str()).collect();
    // One problem per object holding the prefix; a prefix no object holds stays unnamed.
    assert_eq!(names, ["a", "b", ""]);
    assert!(
        out.iter()
            .all(|p| p.reason.label() == "service_cidr_covers_node")
    );
}

fn sticky(name: &str, ip: &str) -> rudder_model::Service {
    let k: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "metadata": {"namespace": "ns", "name": name},
        "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}],
                 "sessionAffinity": "ClientIP"}
    }))
    .unwrap();
    rudder_model::k8s::service(&k).unwrap().0
}

/// Full resyncs after the first repair by difference: one with no drift writes nothing, one
/// with drift writes only the repair, and elements the packet path learned in affinity sets
/// survive both.
#[tokio::test(start_paused = true)]
async fn full_resyncs_write_only_the_difference_and_keep_learned_affinity() {
    let kernel = Shared::default();
    let (mut l, events) = shared_loop(&kernel, Duration::ZERO);
    let mut list = services(3);
    list.push(sticky("sticky", "10.96.9.9"));
    l.apply_change(Change::ServicesListed(list));
    l.apply_change(Change::SlicesListed(vec![
        *slice("s0000-a", "s0000", &["10.0.0.1", "10.0.0.2"]),
        *slice("sticky-a", "sticky", &["10.0.1.1", "10.0.1.2"]),
    ]));
    l.sync().unwrap().unwrap();
    let first = kernel.1.lock().unwrap().clone();
    assert_eq!(first.len(), 1);
    assert!(
        first[0].1 > 0,
        "the first sync replaces the tables: {first:?}"
    );
    // The packet path learns a client in one of the affinity sets.
    let learned = {
        let mut rs = kernel.0.lock().unwrap();
        let table = rs.tables.values_mut().next().unwrap();
        let set = table
            .sets
            .values_mut()
            .find(|s| crate::nftables::updated_by_packets(&s.decl))
            .expect("an affinity set");
        let key = rudder_nft::Key::new(vec![rudder_nft::Atom::Ipv4("192.0.2.7".parse().unwrap())]);
        set.elements.insert(key, None);
        set.decl.name.clone()
    };
    let learned_count = |k: &Shared| {
        let rs = k.0.lock().unwrap();
        rs.tables.values().next().unwrap().sets[&learned]
            .elements
            .len()
    };

    // No drift: the periodic full resync writes nothing.
    tokio::time::advance(Duration::from_secs(3601)).await;
    let report = l.sync().unwrap().unwrap();
    assert_eq!(report.kind, SyncKind::Full);
    let after = kernel.1.lock().unwrap().clone();
    assert!(
        after[1..].iter().all(|w| *w == (0, 0, 0)),
        "a resync without drift writes nothing: {after:?}"
    );
    assert!(events.lock().unwrap().is_empty());
    assert_eq!(learned_count(&kernel), 1, "the learned client survives");

    // Drift: one element's value changed behind Rudder's back (same count).
    {
        let mut rs = kernel.0.lock().unwrap();
        let table = rs.tables.values_mut().next().unwrap();
        let set = table
            .sets
            .values_mut()
            .find(|s| s.decl.name.as_str() == "service-ips")
            .expect("service-ips");
        let v = set.elements.values_mut().next().unwrap();
        *v = Some(rudder_nft::Key::verdict(rudder_nft::Verdict::Drop));
    }
    let before = kernel.1.lock().unwrap().len();
    tokio::time::advance(Duration::from_secs(3601)).await;
    assert_eq!(l.sync().unwrap().unwrap().kind, SyncKind::Full);
    let writes: Vec<_> = kernel.1.lock().unwrap()[before..].to_vec();
    assert_eq!(
        writes
            .iter()
            .filter(|w| **w != (0, 0, 0))
            .collect::<Vec<_>>(),
        vec![&(0, 1, 1)],
        "only the changed element is rewritten"
    );
    let seen = events.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].contains("set service-ips: element"), "{seen:?}");
    assert!(seen[0].contains("drop instead of goto"), "{seen:?}");
    assert_eq!(
        learned_count(&kernel),
        1,
        "the learned client survives a repair"
    );

    // A rule edited in place, a chain and a set added: found, and repaired.
    {
        let mut rs = kernel.0.lock().unwrap();
        let table = rs.tables.values_mut().next().unwrap();
        let chain = table
            .chains
            .values_mut()
            .find(|c| !c.rules.is_empty())
            .unwrap();
        chain.rules[0] =
            rudder_nft::Rule::new(vec![rudder_nft::Stmt::Verdict(rudder_nft::Verdict::Drop)]);
        let extra = rudder_nft::Name::new("extra").unwrap();
        table.chains.insert(
            extra.clone(),
            rudder_nft::Chain {
                decl: rudder_nft::ChainDecl::regular(extra.clone()),
                rules: vec![],
            },
        );
    }
    tokio::time::advance(Duration::from_secs(3601)).await;
    l.sync().unwrap().unwrap();
    let seen = events.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert!(seen[1].contains("rule 0 is `drop` instead of"), "{seen:?}");
    assert!(seen[1].contains("chain extra unexpected"), "{seen:?}");
    let expected = l.mode().compiler().ruleset().unwrap();
    let mut held = kernel.0.lock().unwrap().clone();
    for t in held.tables.values_mut() {
        t.sets.get_mut(&learned).unwrap().elements.clear();
    }
    assert_eq!(held, expected, "repaired");
}
