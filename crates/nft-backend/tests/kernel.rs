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
