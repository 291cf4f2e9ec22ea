//! Reading tables back over netlink dumps, against a real kernel in throwaway network
//! namespaces: what Rudder writes (by netlink or by `nft`) reads back as exactly the table it
//! meant, for every rule and set shape the compiler emits; changes made behind its back
//! (an element's value, a rule replaced in place, chains and sets added) read back as
//! differences; elements the packet path (or anyone) adds to dynamic sets are read too.

use std::collections::BTreeSet;
use std::time::Instant;

use rudder_compiler::{Compiler, Config, LocalDetector};
use rudder_e2e::{Netns, e2e_enabled, nft};
use rudder_model::{IpFamily, Protocol, ServiceKey, ServiceType};
use rudder_nft::{Family, Name, Table, TableRef};
use rudder_nft_backend::{NftBackend, WriteMode};

mod shapes;
use shapes::*;

#[path = "../../compiler/benches/common/mod.rs"]
mod bench;

/// `f` run in `ns`.
fn at<R: Send>(ns: &Netns, f: impl FnOnce() -> R + Send) -> R {
    ns.enter(f).expect("enter the namespace")
}

fn tables() -> [TableRef; 2] {
    let n = Name::new("rudder").expect("test value");
    [
        TableRef::new(Family::Ip, n.clone()),
        TableRef::new(Family::Ip6, n),
    ]
}

/// Reads `t` back in `ns` with the compiler's view as the expectation.
fn read(ns: &Netns, b: &NftBackend, c: &Compiler, t: &TableRef) -> (Table, Table) {
    let expected = c.ruleset().expect("ruleset").tables[t].clone();
    let got = at(ns, || b.read_table(t, Some(&expected)))
        .expect("read")
        .expect("table exists");
    (got, expected)
}

fn assert_reads_back(ns: &Netns, b: &NftBackend, c: &Compiler, what: &str) {
    for t in &tables() {
        let (got, expected) = read(ns, b, c, t);
        for (name, chain) in &expected.chains {
            assert_eq!(
                got.chains.get(name),
                Some(chain),
                "{what}: {t} chain {name}"
            );
        }
        for (name, set) in &expected.sets {
            assert_eq!(got.sets.get(name), Some(set), "{what}: {t} set {name}");
        }
        assert_eq!(got, expected, "{what}: {t}");
    }
}

/// Every shape, both writers, every local-detection mode; full and incremental syncs.
#[test]
fn what_rudder_writes_reads_back_exactly() {
    if !e2e_enabled() {
        return;
    }
    let detectors = [
        LocalDetector::Cidrs(vec![
            "10.244.0.0/16".parse().expect("cidr"),
            "10.245.0.0/16".parse().expect("cidr"),
            "fd00:244::/56".parse().expect("cidr"),
        ]),
        LocalDetector::Bridge(rudder_nft::IfaceName::new("cbr0").expect("iface")),
        LocalDetector::InterfacePrefix(rudder_nft::IfaceName::new("veth*").expect("iface")),
        LocalDetector::None,
    ];
    for mode in [WriteMode::Netlink, WriteMode::Program] {
        for (i, detector) in detectors.iter().enumerate() {
            let ns = Netns::new("dump").expect("netns");
            let b = NftBackend::new().write_mode(mode);
            let config = Config {
                masquerade_all: i == 3,
                localhost_node_ports: match i {
                    1 => vec![IpFamily::V4, IpFamily::V6],
                    2 => vec![IpFamily::V4],
                    _ => Vec::new(),
                },
                localhost_gate: i == 1 || i == 2,
                ..Config::default()
            };
            let mut c = Compiler::new(
                &[IpFamily::V4, IpFamily::V6],
                config,
                node(detector.clone()),
            );
            let mut st = everything();
            at(&ns, || b.apply(&c.full(&st))).expect("full");
            assert_reads_back(&ns, &b, &c, &format!("{mode:?} full {i}"));
            st.remove_service(&ServiceKey::new("ns", "open"));
            st.upsert_slice(eps(
                "lb",
                IpFamily::V4,
                Protocol::Tcp,
                &[("10.244.1.2", "n1"), ("10.244.3.9", "n3")],
            ));
            let dirty: BTreeSet<ServiceKey> = st.take_dirty();
            at(&ns, || b.apply(&c.update(&st, &dirty))).expect("update");
            assert_reads_back(&ns, &b, &c, &format!("{mode:?} update {i}"));
        }
    }
}

/// The IPVS mode's nftables part: every shape, both writers, every local-detection mode;
/// the first sync's replacement and the element changes of a partial one read back as the
/// table the compiler meant.
#[test]
fn the_ipvs_modes_table_reads_back_exactly() {
    if !e2e_enabled() {
        return;
    }
    use rudder_ipvs_compiler::{IpvsCompiler, Options, table::TableConfig};
    let detectors = [
        LocalDetector::Cidrs(vec![
            "10.244.0.0/16".parse().expect("cidr"),
            "fd00:244::/56".parse().expect("cidr"),
        ]),
        LocalDetector::InterfacePrefix(rudder_nft::IfaceName::new("veth*").expect("iface")),
        LocalDetector::None,
    ];
    for mode in [WriteMode::Netlink, WriteMode::Program] {
        for (i, detector) in detectors.iter().enumerate() {
            let ns = Netns::new("ipvs-dump").expect("netns");
            let b = NftBackend::new().write_mode(mode);
            let options = Options {
                table: TableConfig {
                    masquerade_all: i == 1,
                    ..TableConfig::default()
                },
                ..Options::default()
            };
            let mut ctx = node(detector.clone());
            if i == 2 {
                ctx.node_port_ips = rudder_compiler::NodePortIps::All;
            }
            let mut c = IpvsCompiler::new(&[IpFamily::V4, IpFamily::V6], options, ctx);
            let mut st = everything();
            c.full(&st);
            let mut tx = rudder_nft::Transaction::new();
            for t in c.tables() {
                tx.push(rudder_nft::Op::AddTable(t.clone()));
                tx.push(rudder_nft::Op::DeleteTable(t));
            }
            tx.extend(c.create_transaction());
            at(&ns, || b.apply(&tx)).expect("the IPVS mode's table applies");
            let check = |c: &IpvsCompiler, what: &str| {
                let expected = c.ruleset().expect("ruleset");
                for t in c.tables() {
                    let want = &expected.tables[&t];
                    let got = at(&ns, || b.read_table(&t, Some(want)))
                        .expect("read")
                        .expect("table exists");
                    for (name, set) in &want.sets {
                        assert_eq!(got.sets.get(name), Some(set), "{what}: {t} set {name}");
                    }
                    assert_eq!(&got, want, "{what}: {t}");
                }
            };
            check(&c, &format!("{mode:?} full {i}"));
            assert!(
                c.elements().count() > 20,
                "the shapes fill the sets: {}",
                c.elements().count()
            );
            st.remove_service(&ServiceKey::new("ns", "open"));
            st.upsert_slice(eps(
                "lb",
                IpFamily::V4,
                Protocol::Tcp,
                &[("10.244.1.2", "n1"), ("10.244.3.9", "n3")],
            ));
            let dirty: BTreeSet<ServiceKey> = st.take_dirty();
            c.update(&st, &dirty);
            let tx = c.take_table_changes();
            assert!(!tx.is_empty(), "the update changes elements");
            at(&ns, || b.apply(&tx)).expect("the element changes apply");
            check(&c, &format!("{mode:?} update {i}"));
        }
    }
}

/// The handle of the first rule of `chain` (`nft -a list chain`).
fn first_handle(ns: &Netns, chain: &str) -> String {
    let out = ns
        .exec(&["nft", "-a", "list", "chain", "ip", "rudder", chain])
        .expect("list chain");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.split("# handle ").nth(1).filter(|_| !l.contains('{')))
        .expect("a rule")
        .trim()
        .to_owned()
}

#[test]
fn changes_behind_rudders_back_read_back_as_differences() {
    if !e2e_enabled() {
        return;
    }
    let ns = Netns::new("dumpdrift").expect("netns");
    let b = NftBackend::new();
    let mut c = Compiler::new(
        &[IpFamily::V4, IpFamily::V6],
        Config::default(),
        node(LocalDetector::None),
    );
    let st = everything();
    at(&ns, || b.apply(&c.full(&st))).expect("full");
    let v4 = &tables()[0];
    let (clean, expected) = read(&ns, &b, &c, v4);
    assert_eq!(clean, expected);

    // An element whose value changed: same number of elements.
    let (key, value) = expected.sets[&Name::new("service-ips").expect("test value")]
        .elements
        .iter()
        .next()
        .map(|(k, v)| (k.clone(), v.clone()))
        .expect("an element");
    nft::load(
        &ns,
        &format!(
            "delete element ip rudder service-ips {{ {key} }}\nadd element ip rudder service-ips {{ {key} : drop }}\n"
        ),
    )
    .expect("tamper");
    let (got, _) = read(&ns, &b, &c, v4);
    let set = &got.sets[&Name::new("service-ips").expect("test value")];
    assert_eq!(
        set.elements.len(),
        expected.sets[&set.decl.name].elements.len()
    );
    assert_ne!(set.elements.get(&key), Some(&value));
    assert_eq!(
        set.elements
            .get(&key)
            .and_then(|v| v.clone())
            .map(|v| v.to_string()),
        Some("drop".to_owned())
    );
    // Repaired by the difference.
    at(&ns, || {
        b.apply(&rudder_nft::diff(
            &rudder_nft::Ruleset {
                tables: [(v4.clone(), got.clone())].into(),
            },
            &rudder_nft::Ruleset {
                tables: [(v4.clone(), expected.clone())].into(),
            },
        ))
    })
    .expect("repair");
    assert_eq!(read(&ns, &b, &c, v4).0, expected, "repaired");

    // A rule replaced in place: same number of rules.
    let handle = first_handle(&ns, "services");
    nft::load(
        &ns,
        &format!("replace rule ip rudder services handle {handle} ip daddr 10.96.0.10 drop\n"),
    )
    .expect("replace");
    let (got, _) = read(&ns, &b, &c, v4);
    let services = Name::new("services").expect("test value");
    assert_eq!(
        got.chains[&services].rules.len(),
        expected.chains[&services].rules.len()
    );
    assert_ne!(got.chains[&services], expected.chains[&services]);
    assert!(rudder_nft_codec::dump::is_foreign_rule(
        &got.chains[&services].rules[0]
    ));

    // Chains and sets added, a set removed.
    nft::load(
        &ns,
        "add chain ip rudder extra\nadd set ip rudder extra-set { type ipv4_addr ; }\n",
    )
    .expect("add");
    let (got, _) = read(&ns, &b, &c, v4);
    assert!(
        got.chains
            .contains_key(&Name::new("extra").expect("test value"))
    );
    assert!(
        got.sets
            .contains_key(&Name::new("extra-set").expect("test value"))
    );

    // Elements added to a dynamic (affinity) set are read back.
    let sticky = expected
        .sets
        .values()
        .find(|s| s.decl.flags.contains(&rudder_nft::SetFlag::Dynamic))
        .expect("an affinity set");
    nft::load(
        &ns,
        &format!(
            "add element ip rudder {} {{ 192.0.2.77 }}\n",
            sticky.decl.name
        ),
    )
    .expect("learn");
    let (got, _) = read(&ns, &b, &c, v4);
    assert_eq!(got.sets[&sticky.decl.name].elements.len(), 1);

    // A deleted table reads as none.
    nft::load(&ns, "delete table ip rudder\n").expect("delete");
    assert!(at(&ns, || b.read_table(v4, None)).expect("read").is_none());
    assert!(!at(&ns, || b.table_exists(v4)).expect("exists"));
    assert!(at(&ns, || b.table_exists(&tables()[1])).expect("exists"));
}

/// Reading back 10,000 services × 10 endpoints: netlink dumps against `nft --json list
/// table` (printed; run with `--nocapture`).
#[test]
fn reading_a_large_table_back() {
    if !e2e_enabled() {
        return;
    }
    let ns = Netns::new("dumpbig").expect("netns");
    let b = NftBackend::new();
    let mut c = Compiler::new(
        &[IpFamily::V4],
        Config::default(),
        node(LocalDetector::None),
    );
    let mut st = bench::state();
    for s in st.services().cloned().collect::<Vec<_>>() {
        let mut s = s;
        s.service_type = ServiceType::NodePort;
        st.upsert_service(s);
    }
    st.take_dirty();
    at(&ns, || b.apply(&c.full(&st))).expect("full");
    let t = &tables()[0];
    let expected = c.ruleset().expect("ruleset").tables[t].clone();
    let t0 = Instant::now();
    let got = at(&ns, || b.read_table(t, Some(&expected)))
        .expect("read")
        .expect("table");
    let netlink = t0.elapsed();
    assert_eq!(got, expected);
    let t0 = Instant::now();
    let listed = at(&ns, || b.list_table(t)).expect("list").expect("table");
    let json = t0.elapsed();
    let elements: usize = got.sets.values().map(|s| s.elements.len()).sum();
    assert_eq!(listed.element_lines().len(), elements);
    eprintln!(
        "read back {elements} elements, {} rules: netlink {netlink:?}, nft --json {json:?}",
        got.chains.values().map(|c| c.rules.len()).sum::<usize>()
    );
}
