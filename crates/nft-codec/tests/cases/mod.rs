//! The transactions of the byte-exact test vectors (`tests/vectors/*.hex`), shared by the
//! codec's vector test (no root) and the kernel-side capture and confirmation test in
//! `crates/nft-backend/tests/vectors.rs` (root, throwaway network namespaces).
//!
//! Every transaction is one the kernel accepts (in order: a case may rely on the tables of the
//! cases before it), and one `nft -f` accepts as rendered, so that each vector can be confirmed
//! against what `nft` sends for the same text.

#![allow(dead_code)]

use std::net::IpAddr;

use rudder_nft::{
    Atom, ChainDecl, ChainType, CmpOp, DataType, Expr, Family, FibKind, Hook, IfaceName, Key,
    KeyType, L4Proto, Name, Policy, Reject, Rule, SetDecl, SetFlag, Stmt, TableRef, Transaction,
    Verdict,
};
use rudder_nft_codec::IntervalSets;

/// The first sequence number of every vector's batch.
pub const SEQ: u32 = 1;

/// One vector: a transaction and how it is encoded.
pub struct Case {
    /// File name (without `.hex`).
    pub name: &'static str,
    /// What the vector covers.
    pub about: &'static str,
    /// The transaction.
    pub tx: Transaction,
    /// The interval sets declared by earlier transactions (the caller's catalogue).
    pub known: IntervalSets,
    /// Encoded as a dry run (no `BATCH_END`).
    pub dry_run: bool,
}

impl Case {
    /// The batch, as the codec encodes it.
    pub fn encode(&self) -> rudder_nft_codec::Batch {
        let batch = if self.dry_run {
            rudder_nft_codec::encode_dry_run(&self.tx, &self.known, SEQ)
        } else {
            rudder_nft_codec::encode(&self.tx, &self.known, SEQ)
        };
        batch.unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }
}

pub fn n(s: &str) -> Name {
    Name::new(s).expect("name")
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn v4(s: &str) -> Atom {
    Atom::Ipv4(s.parse().expect("ipv4"))
}

fn v6(s: &str) -> Atom {
    Atom::Ipv6(s.parse().expect("ipv6"))
}

pub fn table(f: Family) -> TableRef {
    TableRef::new(f, n("rudder"))
}

fn base(name: &str, kind: ChainType, hook: Hook, priority: i32, policy: Policy) -> ChainDecl {
    let mut c = ChainDecl::base(n(name), kind, hook, priority);
    if let Some(b) = c.base.as_mut() {
        b.policy = policy;
    }
    c
}

fn chain_with_comment(name: &str, comment: &str) -> ChainDecl {
    let mut c = ChainDecl::regular(n(name));
    c.comment = Some(rudder_nft::Comment::sanitize(comment));
    c
}

fn rule(stmts: Vec<Stmt>) -> Rule {
    Rule::new(stmts)
}

fn goto(c: &str) -> Stmt {
    Stmt::Verdict(Verdict::Goto(n(c)))
}

fn jump(c: &str) -> Stmt {
    Stmt::Verdict(Verdict::Jump(n(c)))
}

/// `ip daddr . meta l4proto . th dport`
fn frontend(f: Family) -> Expr {
    Expr::Concat(vec![Expr::Daddr(f), Expr::L4Proto, Expr::ThDport])
}

/// Sets and maps the rules of [`rules`] look up, declared first.
fn sets(tx: &mut Transaction, t: &TableRef) {
    let f = t.family;
    let addr = match f {
        Family::Ip => DataType::Ipv4Addr,
        Family::Ip6 => DataType::Ipv6Addr,
    };
    tx.add_set(t, SetDecl::set(n("cluster-ips"), KeyType::types([addr])));
    let mut allow = SetDecl::set(
        n("firewall-allow"),
        KeyType::types([addr, DataType::InetProto, DataType::InetService, addr]),
    );
    allow.flags = vec![SetFlag::Interval];
    allow.comment = Some(rudder_nft::Comment::sanitize("loadBalancerSourceRanges"));
    tx.add_set(t, allow);
    tx.add_set(
        t,
        SetDecl::map(
            n("service-ips"),
            KeyType::types([addr, DataType::InetProto, DataType::InetService]),
            DataType::Verdict,
        ),
    );
    let key = vec![
        Expr::Daddr(f),
        Expr::L4Proto,
        Expr::ThDport,
        Expr::Numgen(3),
    ];
    tx.add_set(
        t,
        SetDecl::map_typeof(n("endpoints-3"), key, vec![Expr::Daddr(f), Expr::ThDport]),
    );
    let mut aff = SetDecl::set(n("affinity"), KeyType::types([addr]));
    aff.flags = vec![SetFlag::Dynamic, SetFlag::Timeout];
    aff.timeout_secs = Some(10800);
    tx.add_set(t, aff);
}

/// A table with base chains of every hook and type, regular chains (one with a comment) and
/// rules using every statement and expression the encoder knows.
fn rules(f: Family) -> Transaction {
    let t = table(f);
    let mut tx = Transaction::new();
    tx.add_table(t.clone());
    tx.add_chain(
        &t,
        base(
            "nat-prerouting",
            ChainType::Nat,
            Hook::Prerouting,
            -100,
            Policy::Accept,
        ),
    );
    tx.add_chain(
        &t,
        base(
            "nat-output",
            ChainType::Nat,
            Hook::Output,
            -100,
            Policy::Accept,
        ),
    );
    tx.add_chain(
        &t,
        base(
            "nat-postrouting",
            ChainType::Nat,
            Hook::Postrouting,
            100,
            Policy::Accept,
        ),
    );
    tx.add_chain(
        &t,
        base(
            "filter-input",
            ChainType::Filter,
            Hook::Input,
            0,
            Policy::Accept,
        ),
    );
    tx.add_chain(
        &t,
        base(
            "filter-forward",
            ChainType::Filter,
            Hook::Forward,
            0,
            Policy::Drop,
        ),
    );
    tx.add_chain(
        &t,
        base(
            "filter-prerouting-pre-dnat",
            ChainType::Filter,
            Hook::Prerouting,
            -110,
            Policy::Accept,
        ),
    );
    for c in [
        "services",
        "masquerading",
        "reject-chain",
        "endpoints",
        "sticky",
    ] {
        tx.add_chain(&t, ChainDecl::regular(n(c)));
    }
    tx.add_chain(&t, chain_with_comment("firewall-check", "source ranges"));
    sets(&mut tx, &t);
    let (local_net, loopback, pod, other, ep) = match f {
        Family::Ip => (
            Expr::Prefix(ip("10.244.0.0"), 16),
            Expr::Prefix(ip("127.0.0.0"), 8),
            Expr::Prefix(ip("10.244.0.0"), 14),
            Expr::Const(Atom::Prefix(ip("10.96.0.0"), 12)),
            ip("10.244.1.2"),
        ),
        Family::Ip6 => (
            Expr::Prefix(ip("fd00:244::"), 56),
            Expr::Prefix(ip("::1"), 128),
            Expr::Prefix(ip("fd00:244::"), 63),
            Expr::Const(Atom::Prefix(ip("fd00:96::"), 108)),
            ip("fd00:244:1::2"),
        ),
    };
    let r = |tx: &mut Transaction, c: &str, rule: Rule| tx.add_rule(&t, &n(c), rule);
    r(&mut tx, "nat-prerouting", rule(vec![jump("services")]));
    r(&mut tx, "nat-output", rule(vec![jump("services")]));
    r(&mut tx, "nat-postrouting", rule(vec![jump("masquerading")]));
    // Lookups, byte-aligned and unaligned prefixes, marks, comments.
    r(
        &mut tx,
        "services",
        rule(vec![
            Stmt::Lookup(Expr::Daddr(f), CmpOp::Eq, n("cluster-ips")),
            Stmt::Cmp(Expr::Saddr(f), CmpOp::Ne, local_net),
            Stmt::MarkOr(0x4000),
        ])
        .with_comment("masquerade off-cluster traffic to ClusterIPs"),
    );
    r(
        &mut tx,
        "services",
        rule(vec![Stmt::Vmap(frontend(f), n("service-ips"))]),
    );
    r(
        &mut tx,
        "services",
        rule(vec![
            Stmt::Cmp(
                Expr::FibType(FibKind::Daddr),
                CmpOp::Eq,
                Expr::Keyword("local"),
            ),
            Stmt::Cmp(Expr::Daddr(f), CmpOp::Ne, loopback),
            Stmt::Cmp(Expr::Saddr(f), CmpOp::Eq, pod),
            Stmt::Cmp(Expr::Daddr(f), CmpOp::Eq, other),
            Stmt::Counter,
            Stmt::Verdict(Verdict::Return),
        ]),
    );
    r(
        &mut tx,
        "masquerading",
        rule(vec![
            Stmt::Cmp(Expr::MarkAnd(0x4000), CmpOp::Ne, Expr::Const(Atom::Int(0))),
            Stmt::MarkXor(0x4000),
            Stmt::Masquerade { fully_random: true },
        ]),
    );
    r(
        &mut tx,
        "masquerading",
        rule(vec![
            Stmt::Cmp(Expr::CtStatus, CmpOp::Eq, Expr::Keyword("dnat")),
            Stmt::Cmp(
                Expr::Iifname,
                CmpOp::Eq,
                Expr::Iface(IfaceName::new("veth*").expect("iface")),
            ),
            Stmt::Masquerade {
                fully_random: false,
            },
        ]),
    );
    r(
        &mut tx,
        "filter-forward",
        rule(vec![
            Stmt::Cmp(Expr::CtState, CmpOp::Eq, Expr::Keyword("new")),
            Stmt::Cmp(
                Expr::Iifname,
                CmpOp::Ne,
                Expr::Iface(IfaceName::new("cbr0").expect("iface")),
            ),
            jump("firewall-check"),
        ]),
    );
    r(
        &mut tx,
        "filter-forward",
        rule(vec![
            Stmt::Cmp(Expr::CtState, CmpOp::Ne, Expr::Keyword("new")),
            Stmt::Cmp(Expr::Mark, CmpOp::Eq, Expr::Const(Atom::Hex(0x4000))),
            Stmt::Verdict(Verdict::Accept),
        ]),
    );
    r(
        &mut tx,
        "filter-input",
        rule(vec![
            Stmt::Cmp(
                Expr::FibType(FibKind::Saddr),
                CmpOp::Ne,
                Expr::Keyword("unicast"),
            ),
            Stmt::Cmp(
                Expr::L4Proto,
                CmpOp::Eq,
                Expr::Const(Atom::Proto(L4Proto::Udp)),
            ),
            Stmt::Cmp(Expr::ThDport, CmpOp::Eq, Expr::Const(Atom::Port(53))),
            Stmt::Verdict(Verdict::Drop),
        ]),
    );
    r(
        &mut tx,
        "filter-prerouting-pre-dnat",
        rule(vec![
            Stmt::Cmp(Expr::CtState, CmpOp::Eq, Expr::Keyword("new")),
            jump("firewall-check"),
        ]),
    );
    // A lookup into an interval set: host-order fields converted to big endian.
    r(
        &mut tx,
        "firewall-check",
        rule(vec![
            Stmt::Lookup(
                Expr::Concat(vec![
                    Expr::Daddr(f),
                    Expr::L4Proto,
                    Expr::ThDport,
                    Expr::Saddr(f),
                ]),
                CmpOp::Ne,
                n("firewall-allow"),
            ),
            Stmt::Verdict(Verdict::Drop),
        ])
        .with_comment("loadBalancerSourceRanges"),
    );
    // Both rejects, the TCP one with nft's implicit protocol match.
    r(
        &mut tx,
        "reject-chain",
        rule(vec![
            Stmt::Cmp(
                Expr::L4Proto,
                CmpOp::Eq,
                Expr::Const(Atom::Proto(L4Proto::Tcp)),
            ),
            Stmt::Reject(Reject::TcpReset),
        ]),
    );
    r(
        &mut tx,
        "reject-chain",
        rule(vec![Stmt::Counter, Stmt::Reject(Reject::TcpReset)]),
    );
    r(
        &mut tx,
        "reject-chain",
        rule(vec![Stmt::Reject(Reject::Default)]),
    );
    // DNAT through a map and to a fixed address; a dynamic set update.
    r(
        &mut tx,
        "endpoints",
        rule(vec![Stmt::DnatMap(
            f,
            Expr::Concat(vec![
                Expr::Daddr(f),
                Expr::L4Proto,
                Expr::ThDport,
                Expr::Numgen(3),
            ]),
            n("endpoints-3"),
        )]),
    );
    r(
        &mut tx,
        "sticky",
        rule(vec![
            Stmt::UpdateSet(Expr::Saddr(f), n("affinity")),
            Stmt::Cmp(
                Expr::L4Proto,
                CmpOp::Eq,
                Expr::Const(Atom::Proto(L4Proto::Tcp)),
            ),
            Stmt::DnatTo(ep, 8080),
        ]),
    );
    tx
}

/// Elements of a plain set, a verdict map (jump and goto) and a data map.
fn elements(f: Family) -> Transaction {
    let t = table(f);
    let mut tx = Transaction::new();
    let (a, b, e1, e2) = match f {
        Family::Ip => (
            v4("10.96.0.10"),
            v4("10.96.0.11"),
            v4("10.244.1.2"),
            v4("10.244.2.2"),
        ),
        Family::Ip6 => (
            v6("fd00:96::10"),
            v6("fd00:96::11"),
            v6("fd00:244:1::2"),
            v6("fd00:244:2::2"),
        ),
    };
    tx.add_elements(
        &t,
        &n("cluster-ips"),
        vec![(Key::new([a.clone()]), None), (Key::new([b.clone()]), None)],
    );
    let tcp = Atom::Proto(L4Proto::Tcp);
    let udp = Atom::Proto(L4Proto::Udp);
    tx.add_elements(
        &t,
        &n("service-ips"),
        vec![
            (
                Key::new([a.clone(), tcp.clone(), Atom::Port(80)]),
                Some(Key::verdict(Verdict::Goto(n("endpoints")))),
            ),
            (
                Key::new([b.clone(), udp.clone(), Atom::Port(53)]),
                Some(Key::verdict(Verdict::Jump(n("sticky")))),
            ),
            (
                Key::new([b.clone(), tcp.clone(), Atom::Port(443)]),
                Some(Key::verdict(Verdict::Drop)),
            ),
        ],
    );
    tx.add_elements(
        &t,
        &n("endpoints-3"),
        vec![
            (
                Key::new([a.clone(), tcp.clone(), Atom::Port(80), Atom::Int(0)]),
                Some(Key::new([e1.clone(), Atom::Port(8080)])),
            ),
            (
                Key::new([a.clone(), tcp.clone(), Atom::Port(80), Atom::Int(1)]),
                Some(Key::new([e2.clone(), Atom::Port(8080)])),
            ),
            (
                Key::new([a, tcp, Atom::Port(80), Atom::Int(2)]),
                Some(Key::new([e1, Atom::Port(8081)])),
            ),
        ],
    );
    tx
}

/// Elements of a concatenated interval set: prefixes, a single address, an open range.
fn intervals(f: Family) -> Transaction {
    let t = table(f);
    let mut tx = Transaction::new();
    let tcp = Atom::Proto(L4Proto::Tcp);
    let (lb, r1, r2, any) = match f {
        Family::Ip => (
            v4("192.168.122.10"),
            Atom::Prefix(ip("10.0.0.0"), 8),
            Atom::Prefix(ip("172.18.0.0"), 24),
            Atom::Prefix(ip("0.0.0.0"), 0),
        ),
        Family::Ip6 => (
            v6("fd00:122::10"),
            Atom::Prefix(ip("fd00:1::"), 64),
            Atom::Prefix(ip("fd00:1:2::"), 48),
            Atom::Prefix(ip("::"), 0),
        ),
    };
    let elems = [r1, r2, lb.clone()]
        .into_iter()
        .map(|src| {
            (
                Key::new([lb.clone(), tcp.clone(), Atom::Port(80), src]),
                None,
            )
        })
        .chain(std::iter::once((
            Key::new([
                lb.clone(),
                Atom::Proto(L4Proto::Sctp),
                Atom::Port(9999),
                any,
            ]),
            None,
        )))
        .collect();
    tx.add_elements(&t, &n("firewall-allow"), elems);
    tx
}

/// Rules with anonymous sets: merged address prefixes (with and without a range at zero) and
/// a numgen verdict map.
fn anonymous(f: Family) -> Transaction {
    let t = table(f);
    let mut tx = Transaction::new();
    let prefixes = match f {
        Family::Ip => vec![
            Expr::Prefix(ip("10.96.0.0"), 12),
            Expr::Prefix(ip("10.100.0.0"), 16),
            Expr::Prefix(ip("172.30.0.0"), 16),
            Expr::Prefix(ip("172.31.0.0"), 16),
            Expr::Const(Atom::Ipv4("192.0.2.1".parse().expect("ip"))),
        ],
        Family::Ip6 => vec![
            Expr::Prefix(ip("fd00:96::"), 108),
            Expr::Prefix(ip("::"), 8),
            Expr::Const(Atom::Ipv6("2001:db8::1".parse().expect("ip"))),
        ],
    };
    tx.add_rule(
        &t,
        &n("services"),
        rule(vec![
            Stmt::Cmp(Expr::Daddr(f), CmpOp::Eq, Expr::AnonSet(prefixes.clone())),
            Stmt::Cmp(Expr::Saddr(f), CmpOp::Ne, Expr::AnonSet(prefixes)),
            Stmt::VmapAnon(
                Expr::Numgen(3),
                vec![
                    (Atom::Int(0), Verdict::Goto(n("endpoints"))),
                    (Atom::Int(1), Verdict::Goto(n("sticky"))),
                    (Atom::Int(2), Verdict::Jump(n("endpoints"))),
                ],
            ),
        ])
        .with_comment("anonymous sets"),
    );
    tx
}

/// Deletions: elements of each kind of set, a flushed and a deleted chain and set.
fn deletions(f: Family) -> Transaction {
    let t = table(f);
    let mut tx = Transaction::new();
    let (a, lb, r1) = match f {
        Family::Ip => (
            v4("10.96.0.11"),
            v4("192.168.122.10"),
            Atom::Prefix(ip("10.0.0.0"), 8),
        ),
        Family::Ip6 => (
            v6("fd00:96::11"),
            v6("fd00:122::10"),
            Atom::Prefix(ip("fd00:1::"), 64),
        ),
    };
    let tcp = Atom::Proto(L4Proto::Tcp);
    tx.delete_elements(&t, &n("cluster-ips"), vec![Key::new([a.clone()])]);
    tx.delete_elements(
        &t,
        &n("service-ips"),
        vec![Key::new([
            a.clone(),
            Atom::Proto(L4Proto::Udp),
            Atom::Port(53),
        ])],
    );
    tx.delete_elements(
        &t,
        &n("firewall-allow"),
        vec![Key::new([lb, tcp, Atom::Port(80), r1])],
    );
    tx.push(rudder_nft::Op::FlushChain(t.clone(), n("sticky")));
    tx.push(rudder_nft::Op::FlushSet(t.clone(), n("affinity"), false));
    tx.push(rudder_nft::Op::DeleteSet(t.clone(), n("affinity"), false));
    tx.push(rudder_nft::Op::FlushChain(t.clone(), n("reject-chain")));
    tx.push(rudder_nft::Op::DeleteChain(t.clone(), n("reject-chain")));
    tx
}

/// A dry run of a change (sent without `BATCH_END`: validated, then aborted).
fn dry_run(f: Family) -> Transaction {
    let t = table(f);
    let mut tx = Transaction::new();
    let a = match f {
        Family::Ip => v4("10.96.0.12"),
        Family::Ip6 => v6("fd00:96::12"),
    };
    tx.add_elements(&t, &n("cluster-ips"), vec![(Key::new([a]), None)]);
    tx.add_rule(
        &t,
        &n("services"),
        rule(vec![Stmt::Counter, goto("endpoints")]),
    );
    tx
}

/// The same table replaced in one batch (`add table; delete table; …`), as a full sync does.
fn replace(f: Family) -> Transaction {
    let t = table(f);
    let mut tx = Transaction::new();
    tx.add_table(t.clone());
    tx.delete_table(t.clone());
    tx.add_table(t.clone());
    tx.add_chain(&t, ChainDecl::regular(n("services")));
    tx
}

/// The catalogue of interval sets after [`rules`].
fn declared(f: Family) -> IntervalSets {
    let mut known = IntervalSets::new();
    rudder_nft_codec::track_interval_sets(&rules(f), &mut known);
    known
}

/// Every vector, in the order the kernel can take them.
pub fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for (f, suffix) in [(Family::Ip, "ip"), (Family::Ip6, "ip6")] {
        let name =
            |base: &str| -> &'static str { Box::leak(format!("{base}-{suffix}").into_boxed_str()) };
        out.push(Case {
            name: name("rules"),
            about: "table, base and regular chains, sets and maps, rules with every statement and expression",
            tx: rules(f),
            known: IntervalSets::new(),
            dry_run: false,
        });
        out.push(Case {
            name: name("elements"),
            about: "elements of a set, a verdict map and a data map",
            tx: elements(f),
            known: declared(f),
            dry_run: false,
        });
        out.push(Case {
            name: name("intervals"),
            about: "elements of a concatenated interval set (prefixes, an address, 0/0), the set known from an earlier transaction",
            tx: intervals(f),
            known: declared(f),
            dry_run: false,
        });
        out.push(Case {
            name: name("anonymous"),
            about: "anonymous interval sets (merged prefixes) and an anonymous numgen verdict map",
            tx: anonymous(f),
            known: declared(f),
            dry_run: false,
        });
        out.push(Case {
            name: name("dry-run"),
            about: "a dry run: the same messages without BATCH_END",
            tx: dry_run(f),
            known: declared(f),
            dry_run: true,
        });
        out.push(Case {
            name: name("deletions"),
            about: "element deletions from a set, a verdict map and an interval set; flushed and deleted sets and chains",
            tx: deletions(f),
            known: declared(f),
            dry_run: false,
        });
        out.push(Case {
            name: name("replace"),
            about: "a table replaced in one batch: add, delete, add again",
            tx: replace(f),
            known: declared(f),
            dry_run: false,
        });
    }
    out
}

/// One exchange of the kernel reply vectors (`tests/vectors/replies/*.hex`): a batch sent to
/// a kernel after `setup` was applied, and what the kernel is expected to answer.
pub struct ReplyCase {
    /// File name (without `.hex`).
    pub name: &'static str,
    /// What the kernel answers.
    pub about: &'static str,
    /// Applied first (successfully), in an empty namespace.
    pub setup: Transaction,
    /// The batch whose answer is recorded, encoded from [`SEQ`].
    pub tx: Transaction,
    /// The errno expected (0: acknowledged).
    pub errno: i32,
}

/// `ip probe` with a chain and a set.
fn probe_setup() -> Transaction {
    let t = TableRef::new(Family::Ip, n("probe"));
    let mut tx = Transaction::new();
    tx.add_table(t.clone());
    tx.add_chain(&t, ChainDecl::regular(n("services")));
    tx.add_set(
        &t,
        SetDecl::set(n("ips"), KeyType::types([DataType::Ipv4Addr])),
    );
    tx
}

/// The kernel reply vectors.
pub fn reply_cases() -> Vec<ReplyCase> {
    let t = TableRef::new(Family::Ip, n("probe"));
    let mut ok = Transaction::new();
    ok.add_elements(&t, &n("ips"), vec![(Key::new([v4("10.0.0.1")]), None)]);
    ok.add_rule(&t, &n("services"), rule(vec![Stmt::Counter]));
    let mut exists = Transaction::new();
    exists.add_elements(&t, &n("ips"), vec![(Key::new([v4("10.0.0.2")]), None)]);
    // The same set declared again with another key type.
    exists.add_set(
        &t,
        SetDecl::set(n("ips"), KeyType::types([DataType::Ipv6Addr])),
    );
    let mut missing_chain = Transaction::new();
    missing_chain.add_rule(&t, &n("services"), rule(vec![jump("no-such-chain")]));
    let mut missing_table = Transaction::new();
    missing_table.delete_table(TableRef::new(Family::Ip, n("no-such-table")));
    vec![
        ReplyCase {
            name: "ack",
            about: "an element and a rule added: the last message acknowledged",
            setup: probe_setup(),
            tx: ok,
            errno: 0,
        },
        ReplyCase {
            name: "eexist",
            about: "a set declared again with another key type: EEXIST for the second message",
            setup: probe_setup(),
            tx: exists,
            errno: 17,
        },
        ReplyCase {
            name: "enoent-chain",
            about: "a rule jumping to a chain that does not exist: ENOENT",
            setup: probe_setup(),
            tx: missing_chain,
            errno: 2,
        },
        ReplyCase {
            name: "enoent-table",
            about: "a table that does not exist deleted: ENOENT",
            setup: probe_setup(),
            tx: missing_table,
            errno: 2,
        },
    ]
}
