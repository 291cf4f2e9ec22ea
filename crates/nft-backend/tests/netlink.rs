//! The netlink writer against `nft` itself: the same transactions, one namespace written by
//! each, must leave identical tables: the same chains, rules (compared as the kernel's
//! expression bytecode), set declarations (including the userdata `nft list` shows) and
//! elements. Covers every statement and set shape the compiler emits, full and incremental
//! syncs, and both families.

use std::collections::BTreeSet;

use proptest::prelude::*;

use rudder_compiler::{Compiler, Config, LocalDetector};
use rudder_e2e::{Netns, e2e_enabled};
use rudder_model::{IpFamily, Protocol, ServiceKey, ServiceType};
use rudder_nft::{Transaction, Verdict};
use rudder_nft_backend::{NftBackend, WriteMode};

#[path = "../../compiler/tests/common/mod.rs"]
mod common;

mod shapes;
use shapes::*;

/// `nft list table` (declarations, rules as text) with element blocks removed, and
/// `nft --debug=netlink list table` (rule bytecode, elements as bytes) with elements sorted
/// and handles dropped: two tables are the same when both agree.
fn snapshot(ns: &Netns, family: &str) -> (String, String) {
    let text = ns
        .exec(&["nft", "list", "table", family, "rudder"])
        .expect("nft list");
    assert!(
        text.status.success(),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
    let mut listing = String::new();
    let mut in_elements = false;
    for line in String::from_utf8_lossy(&text.stdout).lines() {
        if line.trim_start().starts_with("elements = {") {
            in_elements = !line.trim_end().ends_with('}');
            continue;
        }
        if in_elements {
            in_elements = !line.trim_end().ends_with('}');
            continue;
        }
        listing.push_str(line);
        listing.push('\n');
    }
    let debug = ns
        .exec(&["nft", "--debug=netlink", "list", "table", family, "rudder"])
        .expect("nft list");
    let raw = String::from_utf8_lossy(&debug.stdout).into_owned()
        + &String::from_utf8_lossy(&debug.stderr);
    // Blocks start with "<family> rudder <chain|@set> …"; sort element lines within a
    // block, strip rule handles, and number anonymous sets by order of appearance.
    let mut blocks: Vec<(String, Vec<String>)> = Vec::new();
    for line in raw.lines() {
        if line.starts_with(&format!("{family} rudder ")) {
            let head: Vec<&str> = line.split_whitespace().take(3).collect();
            blocks.push((head.join(" "), Vec::new()));
        } else if line.starts_with("table ") {
            break;
        } else if let Some((_, body)) = blocks.last_mut() {
            if !line.trim().is_empty() {
                body.push(line.to_owned());
            }
        }
    }
    let mut out = String::new();
    for (head, mut body) in blocks {
        if head.contains(" @") {
            body.sort();
        }
        out.push_str(&head);
        out.push('\n');
        for l in body {
            out.push_str(&l);
            out.push('\n');
        }
    }
    let anon = |s: &str| {
        let mut r = String::new();
        let mut rest = s;
        while let Some(i) = rest.find("__") {
            r.push_str(&rest[..i + 2]);
            rest = &rest[i + 2..];
            let skip = rest
                .find(|c: char| !c.is_ascii_alphabetic())
                .unwrap_or(rest.len());
            r.push_str(&rest[..skip]);
            rest = rest[skip..].trim_start_matches(|c: char| c.is_ascii_digit());
        }
        r.push_str(rest);
        r
    };
    (anon(&listing), anon(&out))
}

fn apply_both(a: &Netns, b: &Netns, tx: &Transaction) {
    a.enter(|| NftBackend::new().apply(tx).map(|_| ()))
        .expect("enter")
        .unwrap_or_else(|e| panic!("netlink apply: {e}\n{}", tx.render()));
    b.enter(|| {
        NftBackend::new()
            .write_mode(WriteMode::Program)
            .apply(tx)
            .map(|_| ())
    })
    .expect("enter")
    .unwrap_or_else(|e| panic!("nft apply: {e}"));
}

fn assert_same(a: &Netns, b: &Netns, what: &str, families: &[&str]) {
    for fam in families {
        let (la, da) = snapshot(a, fam);
        let (lb, db) = snapshot(b, fam);
        assert!(
            la.contains("chain services"),
            "{what}: empty listing:\n{la}"
        );
        if la != lb {
            let diff: Vec<String> = la
                .lines()
                .zip(lb.lines())
                .filter(|(x, y)| x != y)
                .take(5)
                .map(|(x, y)| format!("netlink: {x}\nnft:     {y}"))
                .collect();
            panic!("{what} ({fam}): listings differ:\n{}", diff.join("\n"));
        }
        if da != db {
            let diff: Vec<String> = da
                .lines()
                .zip(db.lines())
                .filter(|(x, y)| x != y)
                .take(5)
                .map(|(x, y)| format!("netlink: {x}\nnft:     {y}"))
                .collect();
            panic!(
                "{what} ({fam}): bytecode or elements differ:\n{}\n({} vs {} lines)",
                diff.join("\n"),
                da.lines().count(),
                db.lines().count()
            );
        }
    }
}

#[test]
fn netlink_writes_what_nft_writes() {
    if !e2e_enabled() {
        return;
    }
    let detectors = [
        LocalDetector::Cidrs(vec![
            "10.244.0.0/16".parse().expect("cidr"),
            "10.245.0.0/16".parse().expect("cidr"),
            "fd00:244::/56".parse().expect("cidr"),
        ]),
        LocalDetector::Cidrs(vec!["10.240.0.0/12".parse().expect("cidr")]),
        LocalDetector::Bridge(rudder_nft::IfaceName::new("cbr0").expect("iface")),
        LocalDetector::InterfacePrefix(rudder_nft::IfaceName::new("veth*").expect("iface")),
        LocalDetector::None,
    ];
    for (i, detector) in detectors.into_iter().enumerate() {
        let a = Netns::new("nla").expect("netns");
        let b = Netns::new("nlb").expect("netns");
        let config = Config {
            masquerade_all: i == 4,
            // Localhost node ports: lookups of the node port maps in nat-output, TCP only
            // where the proxy runs (2: both families; 3: IPv4), every protocol where the gate
            // is on without the proxy (3: IPv6).
            localhost_node_ports: match i {
                2 => vec![IpFamily::V4, IpFamily::V6],
                3 => vec![IpFamily::V4],
                _ => Vec::new(),
            },
            localhost_gate: i == 2 || i == 3,
            ..Config::default()
        };
        let mut c = Compiler::new(&[IpFamily::V4, IpFamily::V6], config, node(detector));
        let mut st = everything();
        let full = c.full(&st);
        apply_both(&a, &b, &full);
        assert_same(&a, &b, &format!("full sync {i}"), &["ip", "ip6"]);

        // Incremental: scale, move, drop a service, turn affinity off and source ranges on.
        st.upsert_slice(eps(
            "lb",
            IpFamily::V4,
            Protocol::Tcp,
            &[
                ("10.244.1.2", "n1"),
                ("10.244.3.2", "n3"),
                ("10.244.3.9", "n3"),
            ],
        ));
        st.remove_service(&ServiceKey::new("ns", "open"));
        let mut sticky = svc(
            "sticky",
            &["10.96.0.14", "fd00:96::14"],
            ServiceType::NodePort,
            vec![port(Protocol::Tcp, 8000, Some(30800))],
        );
        sticky.session_affinity_timeout = None;
        st.upsert_service(sticky);
        let dirty: BTreeSet<ServiceKey> = st.take_dirty();
        let tx = c.update(&st, &dirty);
        assert!(!tx.is_empty());
        apply_both(&a, &b, &tx);
        assert_same(&a, &b, &format!("update {i}"), &["ip", "ip6"]);

        // A second full sync over existing tables (delete and re-create in one batch).
        let again = c.full(&st);
        apply_both(&a, &b, &again);
        assert_same(&a, &b, &format!("second full sync {i}"), &["ip", "ip6"]);
    }
}

#[test]
fn refused_batches_name_the_operation_and_change_nothing() {
    if !e2e_enabled() {
        return;
    }
    let ns = Netns::new("nlerr").expect("netns");
    ns.enter(|| {
        let backend = NftBackend::new();
        let mut c = Compiler::new(
            &[IpFamily::V4],
            Config::default(),
            node(LocalDetector::None),
        );
        let st = everything();
        backend.apply(&c.full(&st)).expect("full sync");
        let t = c.tables()[0].clone();
        let before = backend.list_table(&t).expect("list");
        // A valid first half, then a jump to a chain that does not exist.
        let mut tx = Transaction::new();
        let ips = rudder_nft::Name::new("cluster-ips").expect("name");
        tx.add_elements(
            &t,
            &ips,
            vec![(
                rudder_nft::Key::new([rudder_nft::Atom::Ipv4("10.96.9.9".parse().expect("ip"))]),
                None,
            )],
        );
        let chain = rudder_nft::Name::new("services").expect("name");
        let missing = rudder_nft::Name::new("no-such-chain").expect("name");
        tx.add_rule(
            &t,
            &chain,
            rudder_nft::Rule::new(vec![rudder_nft::Stmt::Verdict(Verdict::Jump(missing))]),
        );
        let err = backend.apply(&tx).expect_err("jump to a missing chain");
        let msg = err.to_string();
        assert!(
            msg.contains("add rule ip rudder services jump no-such-chain"),
            "{msg}"
        );
        assert!(err.is_not_found(), "{msg}");
        assert_eq!(
            backend.list_table(&t).expect("list"),
            before,
            "nothing applied"
        );
    })
    .expect("enter netns");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Random states (colliding frontends, affinity, policies, terminating endpoints, both
    /// families) and a random change between two of them: both writers leave the same tables.
    #[test]
    fn random_states_and_changes_write_the_same_tables(
        (s1, l1) in common::arb::arb_state(),
        (s2, l2) in common::arb::arb_state(),
    ) {
        if !e2e_enabled() {
            return Ok(());
        }
        let a = Netns::new("pna").expect("netns");
        let b = Netns::new("pnb").expect("netns");
        let mut c = common::compiler(
            common::local(
                common::node("node-a", &["172.18.0.2", "fc00::2"]),
                &["10.244.0.0/16"],
            ),
            Config::default(),
        );
        let mut st = common::state(s1, l1);
        apply_both(&a, &b, &c.full(&st));
        assert_same(&a, &b, "random full sync", &["ip", "ip6"]);
        st.replace_all(s2, l2);
        let dirty: BTreeSet<ServiceKey> = st.take_dirty();
        let tx = c.update(&st, &dirty);
        apply_both(&a, &b, &tx);
        assert_same(&a, &b, "random update", &["ip", "ip6"]);
    }
}

/// Shapes the compiler does not emit today but the IR allows: they must still be written as
/// nft writes them (or refused), never differently.
#[test]
fn edge_shapes_match_nft() {
    use rudder_nft::{
        Atom, ChainDecl, DataType, Expr, Key, KeyType, Name, Reject, Rule, SetDecl, SetFlag, Stmt,
        TableRef,
    };
    if !e2e_enabled() {
        return;
    }
    let n = |s: &str| Name::new(s).expect("name");
    let t = TableRef::new(rudder_nft::Family::Ip, n("rudder"));
    let mut tx = Transaction::new();
    tx.add_table(t.clone());
    tx.add_chain(&t, ChainDecl::regular(n("services")));
    tx.add_chain(&t, ChainDecl::regular(n("target")));
    // A large anonymous verdict map (more elements than one netlink attribute holds).
    let choices: Vec<(Atom, Verdict)> = (0..3000u32)
        .map(|i| (Atom::Int(i), Verdict::Goto(n("target"))))
        .collect();
    tx.add_rule(
        &t,
        &n("services"),
        Rule::new(vec![Stmt::VmapAnon(Expr::Numgen(3000), choices)]),
    );
    // A large anonymous interval set of scattered /32s and some overlapping prefixes.
    let mut prefixes: Vec<Expr> = (0..4000u32)
        .map(|i| Expr::Prefix(std::net::Ipv4Addr::from(0x0a00_0000 + i * 4).into(), 32))
        .collect();
    prefixes.push(Expr::Prefix(ip("10.0.0.0"), 30));
    prefixes.push(Expr::Prefix(ip("192.168.0.0"), 16));
    prefixes.push(Expr::Prefix(ip("192.168.3.0"), 24));
    tx.add_rule(
        &t,
        &n("services"),
        Rule::new(vec![
            Stmt::Cmp(
                Expr::Saddr(rudder_nft::Family::Ip),
                rudder_nft::CmpOp::Ne,
                Expr::AnonSet(prefixes),
            ),
            Stmt::Verdict(Verdict::Accept),
        ]),
    );
    // `ct state != new`, a prefix given as a constant, a TCP reset without a TCP match.
    tx.add_rule(
        &t,
        &n("services"),
        Rule::new(vec![
            Stmt::Cmp(Expr::CtState, rudder_nft::CmpOp::Ne, Expr::Keyword("new")),
            Stmt::Cmp(
                Expr::Daddr(rudder_nft::Family::Ip),
                rudder_nft::CmpOp::Eq,
                Expr::Const(Atom::Prefix(ip("10.96.0.0"), 12)),
            ),
            Stmt::Counter,
            Stmt::Reject(Reject::TcpReset),
        ])
        .with_comment("edge shapes"),
    );
    // A single-field set of ports, a set with a default timeout but no timeout flag, and an
    // interval concatenation with an element that has no prefix.
    let ports = n("ports");
    tx.add_set(
        &t,
        SetDecl::set(ports.clone(), KeyType::types([DataType::InetService])),
    );
    let mut timed = SetDecl::set(n("timed"), KeyType::types([DataType::Ipv4Addr]));
    timed.timeout_secs = Some(60);
    timed.flags = vec![SetFlag::Dynamic];
    tx.add_set(&t, timed);
    let mut ranges = SetDecl::set(
        n("ranges"),
        KeyType::types([DataType::Ipv4Addr, DataType::InetService]),
    );
    ranges.flags = vec![SetFlag::Interval];
    tx.add_set(&t, ranges);
    tx.add_rule(
        &t,
        &n("services"),
        Rule::new(vec![
            Stmt::Lookup(Expr::ThDport, rudder_nft::CmpOp::Eq, ports.clone()),
            Stmt::Lookup(
                Expr::Concat(vec![Expr::Saddr(rudder_nft::Family::Ip), Expr::ThDport]),
                rudder_nft::CmpOp::Eq,
                n("ranges"),
            ),
            Stmt::UpdateSet(Expr::Saddr(rudder_nft::Family::Ip), n("timed")),
            Stmt::Verdict(Verdict::Return),
        ]),
    );
    tx.add_elements(
        &t,
        &ports,
        vec![
            (Key::new([Atom::Port(80)]), None),
            (Key::new([Atom::Port(8443)]), None),
        ],
    );
    tx.add_elements(
        &t,
        &n("ranges"),
        vec![
            (
                Key::new([Atom::Ipv4("10.1.2.3".parse().expect("ip")), Atom::Port(53)]),
                None,
            ),
            (
                Key::new([Atom::Prefix(ip("10.2.0.0"), 16), Atom::Port(53)]),
                None,
            ),
        ],
    );
    let a = Netns::new("nlea").expect("netns");
    let b = Netns::new("nleb").expect("netns");
    apply_both(&a, &b, &tx);
    assert_same(&a, &b, "edge shapes", &["ip"]);
    // And removing elements of each kind again.
    let mut del = Transaction::new();
    del.delete_elements(&t, &ports, vec![Key::new([Atom::Port(80)])]);
    del.delete_elements(
        &t,
        &n("ranges"),
        vec![Key::new([
            Atom::Ipv4("10.1.2.3".parse().expect("ip")),
            Atom::Port(53),
        ])],
    );
    apply_both(&a, &b, &del);
    assert_same(&a, &b, "edge shapes, deletions", &["ip"]);
}
