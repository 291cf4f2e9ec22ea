//! `cargo xtask bench-refusals [SERVICES] [ENDPOINTS]`: what a refused service and the
//! table monitor cost, against a real kernel in a throwaway namespace.
//!
//! The sync loop runs on the netlink writer with N services × M endpoints plus one offender,
//! whose element in `service-ips` every transaction also adds a second time with another
//! verdict, so that the kernel refuses any transaction holding it (`File exists`); the
//! kernel's answers, the dry runs and the bisection are real:
//! - the first full sync with the conflict present, against the same full sync without it;
//! - a later full sync that knows the offender;
//! - a partial sync that adds the offender with nine other new services;
//! - a full sync with a change monitor subscribed, against one without (the kernel formats a
//!   notification for every object of a subscribed transaction), and whether the monitor
//!   lost notifications or mistook Rudder's writes for someone else's.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rudder_compiler::{Compiler, Config, NodeContext, NodePortIps};
use rudder_controller::Change;
use rudder_controller::{
    Dataplane, DataplaneError, Failure, LoopConfig, NodeContextFn, SyncLoop, SyncReport,
};
use rudder_e2e::Netns;
use rudder_model::{
    Endpoint, EndpointPort, EndpointSlice, IpFamily, Protocol, Service, ServiceKey, ServicePort,
};
use rudder_nft::{Family, Name, TableRef, Transaction};
use rudder_nft_backend::{NftBackend, Notice};

use crate::install_deps;

/// The kernel through the netlink writer, as the daemon drives it, with the offender's
/// element doubled in every transaction.
struct Kernel(NftBackend);

/// The offender's ClusterIP.
const OFFENDER: u32 = 0x0a61_0002;

fn poison(tx: &Transaction) -> Transaction {
    use rudder_nft::{Atom, Key, Op, Verdict};
    let offender = Atom::Ipv4(std::net::Ipv4Addr::from(OFFENDER));
    let mut out = Transaction::new();
    for op in tx.ops() {
        out.push(op.clone());
        if let Op::AddElements(t, set, elems) = op
            && set.as_str() == "service-ips"
        {
            let clash: Vec<_> = elems
                .iter()
                .filter(|(k, _)| k.atoms().first() == Some(&offender))
                .map(|(k, _)| (k.clone(), Some(Key::verdict(Verdict::Drop))))
                .collect();
            if !clash.is_empty() {
                out.push(Op::AddElements(t.clone(), set.clone(), clash));
            }
        }
    }
    out
}

impl Dataplane for Kernel {
    fn apply(&mut self, tx: &Transaction) -> Result<usize, DataplaneError> {
        Ok(self.0.apply(&poison(tx))?.bytes)
    }

    fn supports_dry_runs(&self) -> bool {
        true
    }

    fn check(&mut self, tx: &Transaction) -> Option<Result<(), DataplaneError>> {
        Some(
            self.0
                .check(&poison(tx))
                .map_err(|e| Box::new(e) as DataplaneError),
        )
    }

    fn classify(&self, error: &DataplaneError) -> Failure {
        match error.downcast_ref::<rudder_nft_backend::Error>() {
            Some(e) if e.is_not_found() => Failure::NotFound,
            Some(e) if NftBackend::is_refusal(e) => Failure::Refused,
            _ => Failure::Other,
        }
    }
}

fn ip(v: u32) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::from(v))
}

fn svc(i: usize) -> Service {
    let mut s = Service::new(
        ServiceKey::new("bench", &format!("svc-{i:06}")),
        vec![ip(0x0a60_0000 + i as u32)],
    );
    s.ports = vec![ServicePort::new("http", Protocol::Tcp, 80)];
    s
}

fn slice(name: &str, i: usize, eps: usize) -> EndpointSlice {
    let endpoints = (0..eps)
        .map(|e| Endpoint::new(ip(0x0a00_0000 + (i as u32) * 64 + e as u32 + 1)).on_node("node-1"))
        .collect();
    let ports = vec![EndpointPort {
        name: "http".into(),
        protocol: Protocol::Tcp,
        port: 8080,
    }];
    EndpointSlice::new(
        "bench",
        &format!("{name}-1"),
        name,
        IpFamily::V4,
        ports,
        endpoints,
    )
}

/// A service whose rules the kernel refuses (see [`poison`]).
fn offender() -> Service {
    let mut s = Service::new(ServiceKey::new("bench", "offender"), vec![ip(OFFENDER)]);
    s.ports = vec![ServicePort::new("http", Protocol::Tcp, 80)];
    s
}

fn new_loop(full_every_sync: bool) -> SyncLoop<rudder_controller::NftMode<Kernel>> {
    let node = NodeContext::new("node-1".into(), NodePortIps::Only(vec![ip(0xac12_0002)]));
    let compiler = Compiler::new(&[IpFamily::V4], Config::default(), node.clone());
    let ctx: NodeContextFn = Box::new(move |_| node.clone());
    let config = LoopConfig {
        min_sync_period: Duration::ZERO,
        node_wait: Duration::ZERO,
        full_sync_period: if full_every_sync {
            Duration::ZERO
        } else {
            Duration::from_secs(3600)
        },
        ..LoopConfig::default()
    };
    SyncLoop::new(compiler, Kernel(NftBackend::new()), ctx, config)
}

fn snapshot(services: Vec<Service>, slices: Vec<EndpointSlice>) -> Change {
    Change::Snapshot {
        services,
        slices,
        node: None,
        service_cidrs: Vec::new(),
    }
}

/// One sync, timed.
fn timed(
    l: &mut SyncLoop<rudder_controller::NftMode<Kernel>>,
) -> anyhow::Result<(SyncReport, Duration)> {
    let t = Instant::now();
    let r = l
        .sync()
        .context("nothing to sync")?
        .map_err(|e| anyhow::anyhow!("sync failed: {e}"))?;
    Ok((r, t.elapsed()))
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

pub fn bench_refusals(args: &[String]) -> anyhow::Result<()> {
    if !rudder_e2e::root::is_root() {
        bail!("kernel benchmarks program nftables in a network namespace and must run as root");
    }
    install_deps()?;
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let eps: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let services: Vec<Service> = (0..n).map(svc).collect();
    let mut slices: Vec<EndpointSlice> = (0..n)
        .map(|i| slice(&format!("svc-{i:06}"), i, eps))
        .collect();
    slices.push(slice("offender", n + 1, eps));
    let mut rows: Vec<(String, String)> = Vec::new();

    // Baseline and first full sync with the conflict, in fresh namespaces.
    let ns = Netns::new("benchref").context("netns")?;
    let (base, base_t) = ns.enter(|| {
        let mut l = new_loop(false);
        l.apply_change(snapshot(services.clone(), slices.clone()));
        timed(&mut l)
    })??;
    rows.push((
        format!("first full sync, {n} services, nothing refused"),
        format!("{} ({} dry runs)", ms(base_t), base.dry_runs),
    ));
    drop(ns);
    let ns = Netns::new("benchref").context("netns")?;
    let mut all = services.clone();
    all.push(offender());
    let (first, first_t, next, next_t) = ns.enter(|| -> anyhow::Result<_> {
        let mut l = new_loop(true);
        l.apply_change(snapshot(all.clone(), slices.clone()));
        let (first, first_t) = timed(&mut l)?;
        let (next, next_t) = timed(&mut l)?;
        Ok((first, first_t, next, next_t))
    })??;
    rows.push((
        format!("first full sync, {} services, one refused", n + 1),
        format!(
            "{} ({} dry runs, {} held back)",
            ms(first_t),
            first.dry_runs,
            first.quarantined.len()
        ),
    ));
    rows.push((
        "next full sync, the offender known".into(),
        format!(
            "{} ({} dry runs, {} held back)",
            ms(next_t),
            next.dry_runs,
            next.quarantined.len()
        ),
    ));
    drop(ns);

    // A partial sync adding the offender and nine other services.
    let ns = Netns::new("benchref").context("netns")?;
    let (partial, partial_t, plain_t) = ns.enter(|| -> anyhow::Result<_> {
        let mut l = new_loop(false);
        l.apply_change(snapshot(services.clone(), slices.clone()));
        timed(&mut l)?;
        // Without a refusal first: nine new services.
        for i in 0..9 {
            l.apply_change(Change::ServiceApplied(Box::new(svc(n + 100 + i))));
        }
        let (_, plain_t) = timed(&mut l)?;
        for i in 0..9 {
            l.apply_change(Change::ServiceApplied(Box::new(svc(n + 200 + i))));
        }
        l.apply_change(Change::ServiceApplied(Box::new(offender())));
        let (partial, partial_t) = timed(&mut l)?;
        Ok((partial, partial_t, plain_t))
    })??;
    rows.push(("partial sync adding 9 services".into(), ms(plain_t)));
    rows.push((
        "partial sync adding 9 services and the offender".into(),
        format!(
            "{} ({} dry runs, {} held back)",
            ms(partial_t),
            partial.dry_runs,
            partial.quarantined.len()
        ),
    ));
    drop(ns);

    // The monitor's cost on a full sync, and what it saw of Rudder's own writes.
    let ns = Netns::new("benchref").context("netns")?;
    let changed = Arc::new(AtomicUsize::new(0));
    let lost = Arc::new(AtomicUsize::new(0));
    let (without_t, with_t) = ns.enter(|| -> anyhow::Result<_> {
        let mut l = new_loop(true);
        l.apply_change(snapshot(services.clone(), slices.clone()));
        timed(&mut l)?;
        let (_, without_t) = timed(&mut l)?;
        let table = TableRef::new(Family::Ip, Name::new("rudder").context("name")?);
        let (c, lo) = (changed.clone(), lost.clone());
        // Through the loop's own backend, as the daemon does: it knows the writer's port id,
        // so Rudder's commits must not be reported.
        let monitor = l.dataplane().0.monitor(vec![table], move |notice| {
            match notice {
                Notice::Changed { .. } => c.fetch_add(1, Ordering::Relaxed),
                Notice::Lost => lo.fetch_add(1, Ordering::Relaxed),
            };
            true
        })?;
        let (_, with_t) = timed(&mut l)?;
        std::thread::sleep(Duration::from_millis(500));
        drop(monitor);
        Ok((without_t, with_t))
    })??;
    rows.push((
        "full resync, nobody subscribed to notifications".into(),
        ms(without_t),
    ));
    rows.push((
        "full resync, a monitor subscribed".into(),
        format!(
            "{} (notices: {} changes, {} lost)",
            ms(with_t),
            changed.load(Ordering::Relaxed),
            lost.load(Ordering::Relaxed)
        ),
    ));
    // What one dry run of a full sync costs the kernel, against applying it.
    let ns = Netns::new("benchref").context("netns")?;
    let dry: Vec<(String, Duration)> = ns.enter(|| -> anyhow::Result<_> {
        let node = NodeContext::new("node-1".into(), NodePortIps::Only(vec![ip(0xac12_0002)]));
        let mut c = Compiler::new(&[IpFamily::V4], Config::default(), node);
        let mut st = rudder_model::ProxyState::new();
        st.replace_all(services.clone(), slices.clone());
        let b = NftBackend::new();
        let tx = c.full(&st);
        let mut out = Vec::new();
        let mut time = |what: &str, f: &mut dyn FnMut() -> anyhow::Result<()>| {
            let t = Instant::now();
            let r = f();
            out.push((what.to_owned(), t.elapsed()));
            r
        };
        time("dry run of the full sync, no tables yet", &mut || {
            Ok(b.check(&tx)?)
        })?;
        time("apply the full sync, no tables yet", &mut || {
            Ok(b.apply(&tx).map(|_| ())?)
        })?;
        time("dry run of the full sync replacing the tables", &mut || {
            Ok(b.check(&tx)?)
        })?;
        time("apply the full sync replacing the tables", &mut || {
            Ok(b.apply(&tx).map(|_| ())?)
        })?;
        Ok(out)
    })??;
    for (what, d) in dry {
        rows.push((what, ms(d)));
    }
    drop(ns);
    println!(
        "Refused services and the table monitor: {n} services × {eps} endpoints, IPv4, netlink writer\n"
    );
    println!("| measurement | result |\n|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
    Ok(())
}
