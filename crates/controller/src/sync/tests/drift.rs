//! Drift: notices from the dataplane and periodic checks are repaired and counted.

use super::*;

/// An in-memory kernel the test can change behind the loop's back.
#[derive(Clone, Default)]
struct Shared(std::sync::Arc<std::sync::Mutex<Ruleset>>);

impl Dataplane for Shared {
    fn apply(&mut self, tx: &Transaction) -> Result<usize, DataplaneError> {
        Dataplane::apply(&mut *self.0.lock().unwrap(), tx)
    }

    fn shape(&mut self, table: &rudder_nft::TableRef) -> Option<Result<Shape, DataplaneError>> {
        Dataplane::shape(&mut *self.0.lock().unwrap(), table)
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
