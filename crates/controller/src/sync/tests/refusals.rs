//! The kernel refuses some services: they are held back, the rest is programmed.

use super::*;

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

fn poisoned(ips: &[&str]) -> SharedPoison {
    std::sync::Arc::new(std::sync::Mutex::new(Poison {
        ips: ips.iter().map(|s| s.to_string()).collect(),
        ..Poison::default()
    }))
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
