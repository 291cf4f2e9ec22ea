//! The initial-list gate, coalescing, retries, periodic full syncs, node changes and what the
//! compiler refuses.

use super::*;

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
