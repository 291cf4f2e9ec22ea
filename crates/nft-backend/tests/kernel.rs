//! The backend against a real kernel, inside a throwaway network namespace: what it applies
//! is what it reads back, failed transactions change nothing, and cleanup deletes only
//! Rudder's tables.

use std::collections::BTreeSet;

use rudder_compiler::{Compiler, Config, NodeContext, NodePortIps};
use rudder_e2e::{Netns, e2e_enabled, nft};
use rudder_model::{
    Endpoint, EndpointPort, EndpointSlice, IpFamily, Protocol, ProxyState, Service, ServiceKey,
    ServicePort, ServiceType,
};
use rudder_nft::{Family, Key, Name, Ruleset, TableRef, Transaction};
use rudder_nft_backend::NftBackend;

fn service(name: &str, ips: &[&str]) -> Service {
    let mut svc = Service::new(
        ServiceKey::new("ns", name),
        ips.iter().map(|s| s.parse().expect("test IP")).collect(),
    );
    svc.service_type = ServiceType::NodePort;
    svc.external_ips = vec!["192.0.2.1".parse().expect("test IP")];
    svc.ports = vec![ServicePort {
        node_port: Some(30053),
        ..ServicePort::new("p", Protocol::Udp, 53)
    }];
    svc
}

fn slice(name: &str, family: IpFamily, addrs: &[&str]) -> EndpointSlice {
    let endpoints = addrs
        .iter()
        .map(|a| Endpoint::new(a.parse().expect("test IP")).on_node("n1"))
        .collect();
    let ports = vec![EndpointPort {
        name: "p".into(),
        protocol: Protocol::Udp,
        port: 5353,
    }];
    EndpointSlice::new(
        "ns",
        &format!("{name}-{family}"),
        name,
        family,
        ports,
        endpoints,
    )
}

/// Elements of a ruleset in the listing's `set: element` form.
fn element_lines(rs: &Ruleset, table: &TableRef) -> Vec<String> {
    let mut out = Vec::new();
    for (name, set) in &rs.tables[table].sets {
        for (k, v) in &set.elements {
            out.push(match v {
                Some(v) => format!("{name}: {k} : {v}"),
                None => format!("{name}: {k}"),
            });
        }
    }
    out.sort();
    out
}

#[test]
fn applies_reads_back_fails_atomically_and_cleans_up_only_its_tables() {
    if !e2e_enabled() {
        return;
    }
    let ns = Netns::new("backend").expect("netns");
    nft::load(&ns, "add table inet keep-me\nadd chain inet keep-me c\n").expect("foreign table");
    ns.enter(|| {
        let backend = NftBackend::new();
        backend.check_version().expect("nft version");
        let node = NodeContext::new(
            "n1".into(),
            NodePortIps::Only(vec!["172.18.0.2".parse().unwrap()]),
        );
        let mut c = Compiler::new(&[IpFamily::V4, IpFamily::V6], Config::default(), node);
        let mut st = ProxyState::new();
        st.replace_all(
            vec![service("dns", &["10.96.0.10", "fd00::10"])],
            vec![
                slice("dns", IpFamily::V4, &["10.0.0.1", "10.0.0.2"]),
                slice("dns", IpFamily::V6, &["fd00:1::1"]),
            ],
        );
        st.take_dirty();
        let v4 = TableRef::new(Family::Ip, Name::new("rudder").unwrap());
        let v6 = TableRef::new(Family::Ip6, Name::new("rudder").unwrap());

        // Full sync: what the kernel lists is what the compiler wanted.
        let applied = backend.apply(&c.full(&st)).expect("full apply");
        assert!(applied.bytes > 0);
        for t in [&v4, &v6] {
            let listing = backend.list_table(t).expect("list").expect("table exists");
            assert_eq!(
                listing.element_lines(),
                element_lines(&c.ruleset().unwrap(), t),
                "{t}"
            );
            assert_eq!(
                listing.chains.len(),
                c.ruleset().unwrap().tables[t].chains.len()
            );
        }

        // Partial sync.
        st.upsert_slice(slice(
            "dns",
            IpFamily::V4,
            &["10.0.0.1", "10.0.0.3", "10.0.0.4"],
        ));
        let dirty: BTreeSet<ServiceKey> = st.take_dirty();
        let tx = c.update(&st, &dirty);
        assert!(!tx.is_empty());
        backend.apply(&tx).expect("partial apply");
        let listing = backend.list_table(&v4).unwrap().unwrap();
        assert_eq!(
            listing.element_lines(),
            element_lines(&c.ruleset().unwrap(), &v4)
        );
        assert!(
            listing.sets["cluster-endpoints-3"]
                .elements
                .iter()
                .any(|e| e.contains("10.0.0.4"))
        );

        // A transaction that fails half-way changes nothing.
        let before = backend.list_table(&v4).unwrap();
        let mut bad = Transaction::new();
        let ips = Name::new("cluster-ips").unwrap();
        bad.add_elements(
            &v4,
            &ips,
            vec![(
                Key::new([rudder_nft::Atom::Ipv4("10.96.9.9".parse().unwrap())]),
                None,
            )],
        );
        bad.delete_elements(
            &v4,
            &ips,
            vec![Key::new([rudder_nft::Atom::Ipv4(
                "10.96.7.7".parse().unwrap(),
            )])],
        );
        let err = backend
            .apply(&bad)
            .expect_err("deleting a missing element fails");
        assert!(err.is_not_found(), "{err}");
        assert_eq!(
            backend.list_table(&v4).unwrap(),
            before,
            "failed transaction left the table unchanged"
        );

        // Cleanup deletes both of Rudder's tables and nothing else; a second one is a no-op.
        let deleted = backend
            .delete_tables(&[v4.clone(), v6.clone()])
            .expect("cleanup");
        assert_eq!(deleted, vec![v4.clone(), v6.clone()]);
        assert!(backend.list_table(&v4).unwrap().is_none());
        assert!(
            backend
                .delete_tables(&[v4.clone(), v6.clone()])
                .unwrap()
                .is_empty()
        );
    })
    .expect("enter netns");
    let rest = nft::list_ruleset(&ns).expect("list");
    assert!(rest.contains("table inet keep-me"), "{rest}");
    assert!(!rest.contains("rudder"), "{rest}");
}

/// A dry run (`NftBackend::check`) validates a transaction in the kernel exactly as applying
/// it would, for both writers, and changes nothing: a good transaction passes and leaves the
/// table as it was, a bad one fails with the error `apply` gives, and a refused element
/// (same key, another value) is refused by the dry run too.
#[test]
fn dry_runs_validate_in_the_kernel_and_change_nothing() {
    if !e2e_enabled() {
        return;
    }
    for mode in [
        rudder_nft_backend::WriteMode::Netlink,
        rudder_nft_backend::WriteMode::Program,
    ] {
        let ns = Netns::new("dryrun").expect("netns");
        ns.enter(|| {
            let backend = NftBackend::new().write_mode(mode);
            let node = NodeContext::new("n1".into(), NodePortIps::Only(vec![]));
            let mut c = Compiler::new(&[IpFamily::V4], Config::default(), node);
            let mut st = ProxyState::new();
            st.replace_all(
                vec![service("dns", &["10.96.0.10"])],
                vec![slice("dns", IpFamily::V4, &["10.0.0.1"])],
            );
            st.take_dirty();
            let v4 = TableRef::new(Family::Ip, Name::new("rudder").unwrap());
            let full = c.full(&st);
            // A dry run of the first full sync creates nothing.
            backend.check(&full).expect("full sync passes a dry run");
            assert!(backend.list_table(&v4).unwrap().is_none(), "{mode:?}");
            backend.apply(&full).expect("full apply");
            let before = backend.list_table(&v4).unwrap();

            // A good change passes and changes nothing.
            st.upsert_service(service("dns2", &["10.96.0.11"]));
            let dirty = st.take_dirty();
            let tx = c.update(&st, &dirty);
            backend.check(&tx).expect("good change passes");
            assert_eq!(backend.list_table(&v4).unwrap(), before, "{mode:?}");

            // An element that exists with another value is refused (`File exists`), as
            // `apply` refuses it.
            let ports = Name::new("service-ips").unwrap();
            let set = &c.ruleset().unwrap().tables[&v4].sets[&ports];
            let (key, value) = set.elements.iter().next().expect("an element");
            let drop = rudder_nft::Key::verdict(rudder_nft::Verdict::Drop);
            let other = if value.as_ref() == Some(&drop) {
                rudder_nft::Key::verdict(rudder_nft::Verdict::Accept)
            } else {
                drop
            };
            let mut clash = Transaction::new();
            clash.add_elements(&v4, &ports, vec![(key.clone(), Some(other))]);
            let checked = backend
                .check(&clash)
                .expect_err("clash refused by the dry run");
            let applied = backend.apply(&clash).expect_err("clash refused");
            assert!(NftBackend::is_refusal(&checked), "{checked}");
            assert!(NftBackend::is_refusal(&applied), "{applied}");
            assert_eq!(backend.list_table(&v4).unwrap(), before, "{mode:?}");
        })
        .expect("enter netns");
    }
}

/// The monitor sees what others change in Rudder's tables, within its debounce, and not
/// what this backend writes (through either writer), nor other tables, nor dry runs.
#[test]
fn the_monitor_reports_changes_by_others_only() {
    if !e2e_enabled() {
        return;
    }
    use rudder_nft_backend::{Notice, WriteMode};
    use std::time::{Duration, Instant};
    let ns = Netns::new("monitor").expect("netns");
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Notice)>();
    let v4 = TableRef::new(Family::Ip, Name::new("rudder").unwrap());
    let (backend, _monitor, mut c, mut st) = ns
        .enter(|| {
            let backend = NftBackend::new();
            let monitor = backend
                .monitor(vec![v4.clone()], move |n| {
                    tx.send((Instant::now(), n)).is_ok()
                })
                .expect("monitor");
            let node = NodeContext::new("n1".into(), NodePortIps::Only(vec![]));
            let c = Compiler::new(&[IpFamily::V4], Config::default(), node);
            let mut st = ProxyState::new();
            st.replace_all(
                vec![service("dns", &["10.96.0.10"])],
                vec![slice("dns", IpFamily::V4, &["10.0.0.1"])],
            );
            st.take_dirty();
            (backend, monitor, c, st)
        })
        .expect("enter netns");
    let quiet = |what: &str| {
        if let Ok((_, n)) = rx.recv_timeout(Duration::from_millis(600)) {
            panic!("{what}: unexpected {n:?}");
        }
    };
    // Rudder's own writes, through both writers, and its dry runs: nothing.
    ns.enter(|| {
        backend.apply(&c.full(&st)).expect("full");
        for i in 0..20 {
            st.upsert_service(service(&format!("s{i}"), &[&format!("10.96.1.{i}")]));
            let dirty = st.take_dirty();
            let tx = c.update(&st, &dirty);
            backend.check(&tx).expect("dry run");
            backend.apply(&tx).expect("partial");
        }
        let program = backend.clone().write_mode(WriteMode::Program);
        st.upsert_service(service("by-nft", &["10.96.2.1"]));
        let dirty = st.take_dirty();
        program.apply(&c.update(&st, &dirty)).expect("nft writer");
        // Large transactions are written with the monitor out of the notification group:
        // nothing is reported either, through both writers.
        for i in 0..600 {
            st.upsert_service(service(
                &format!("big{i}"),
                &[&format!("10.97.{}.{}", i / 250, i % 250 + 1)],
            ));
        }
        st.take_dirty();
        let full = c.full(&st);
        assert!(full.stats().elements_added > rudder_nft_backend::monitor::PAUSE_ABOVE);
        backend.apply(&full).expect("large full sync");
        program
            .apply(&c.full(&st))
            .expect("large full sync through nft");
    })
    .expect("enter netns");
    quiet("Rudder's own writes");
    nft::load(&ns, "add table inet other\nadd chain inet other c\n").expect("other table");
    quiet("another table");

    // Someone adds a rule to a chain of Rudder's.
    let t0 = Instant::now();
    nft::load(&ns, "add rule ip rudder services counter\n").expect("foreign rule");
    let (at, n) = rx.recv_timeout(Duration::from_secs(2)).expect("reported");
    assert!(at - t0 < Duration::from_millis(500), "{:?}", at - t0);
    assert_eq!(
        n,
        Notice::Changed {
            changes: vec!["rule added to chain ip rudder services".into()],
            deleted: vec![],
        }
    );
    // A burst: the chain flushed and an element replaced by another verdict, in separate
    // commands, reported together.
    let services = ns
        .exec(&["nft", "list", "map", "ip", "rudder", "service-ips"])
        .unwrap();
    assert!(String::from_utf8_lossy(&services.stdout).contains("10.96.0.10"));
    for cmd in [
        "flush chain ip rudder services",
        "delete element ip rudder service-ips { 10.96.0.10 . udp . 53 }",
        "add element ip rudder service-ips { 10.96.0.10 . udp . 53 : drop }",
    ] {
        ns.exec(&["nft", cmd]).expect(cmd);
    }
    let (_, n) = rx.recv_timeout(Duration::from_secs(2)).expect("reported");
    let Notice::Changed { changes, deleted } = n else {
        panic!("{n:?}");
    };
    assert!(deleted.is_empty());
    assert!(
        changes.contains(&"element added to set ip rudder service-ips".to_owned())
            && changes.contains(&"element deleted from set ip rudder service-ips".to_owned())
            && changes
                .iter()
                .any(|c| c.starts_with("rule deleted from chain ip rudder services")),
        "{changes:?}"
    );
    quiet("one notice per burst");
    // The table deleted.
    ns.exec(&["nft", "delete table ip rudder"]).expect("delete");
    let (_, n) = rx.recv_timeout(Duration::from_secs(2)).expect("reported");
    let Notice::Changed { changes, deleted } = n else {
        panic!("{n:?}");
    };
    assert_eq!(deleted, vec![v4.clone()]);
    assert_eq!(changes[0], "table ip rudder deleted");
}
