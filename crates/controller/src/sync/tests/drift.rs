//! Drift: notices from the dataplane and periodic checks are repaired and counted.

use super::*;

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
