//! The nftables part of the IPVS mode: what IPVS itself cannot do, in Rudder's own table.
//!
//! kube-proxy's IPVS mode does this with ~15 ipsets and iptables chains; here it is one table
//! per family (`ip rudder`, `ip6 rudder`, the same names as the nftables mode, so switching
//! modes replaces the other mode's table) whose rules never change with services: every
//! service only adds elements to named sets and maps, so a sync writes elements, never rules.
//!
//! - **Masquerade marking** (nat, before IPVS): off-cluster traffic to ClusterIPs (or all of
//!   it with `--masquerade-all`), external and load balancer IPs under `Cluster` policy, node
//!   ports under `Cluster` policy; marked packets are masqueraded in postrouting, after IPVS
//!   chose a real server. Hairpin traffic (a pod reaching itself through a service) is
//!   masqueraded by its `endpoint . endpoint . proto . port`.
//! - **`loadBalancerSourceRanges`**: new connections to a filtered load balancer IP from a
//!   source outside its ranges are dropped before IPVS sees them.
//! - **No endpoints**: new connections to a frontend without endpoints are rejected at once
//!   (TCP reset, ICMP port unreachable otherwise), instead of IPVS's rate-limited ICMP; an
//!   `internalTrafficPolicy: Local` ClusterIP without endpoints on this node drops them, as
//!   in the nftables mode.
//! - **`externalTrafficPolicy: Local` without local endpoints**: IPVS keeps the cluster's
//!   endpoints so that pods on this node still reach the service (kubernetes#97081); traffic
//!   from elsewhere is dropped here, as in the nftables mode, rather than forwarded without
//!   masquerade to an endpoint whose reply cannot come back.
//! - **VIP filter** (kube-proxy's `KUBE-IPVS-FILTER`): the VIPs bound to the dummy interface
//!   are local addresses, so without it every host daemon listening on `0.0.0.0` would answer
//!   on them. New connections to a bound VIP on a port that is no service (nor a health-check
//!   node port) are rejected.
//!
//! The hooks are placed around IPVS's own: IPVS takes packets at `input` priority 98 and
//! `output` priority -98, so the checks run at `input` 0 and `output` -110, and the marking in
//! nat `prerouting`/`output` at -100.

use std::net::IpAddr;

use rudder_compiler::{
    NodeContext, NodePortIps, local_match, loopback, masquerade_marked, nodeport_match,
    reject_rules,
};
use rudder_nft::{
    Atom, ChainDecl, ChainType, CmpOp, DataType, Expr, Family, FibKind, Hook, Key, KeyType,
    L4Proto, Name, Rule, SetDecl, SetFlag, Stmt, TableRef, Transaction, Verdict,
};

/// Names of the table's objects.
pub mod names {
    /// Set: ClusterIP frontends (`addr . proto . port`).
    pub const CLUSTER_IPS: &str = "cluster-ips";
    /// Set: external and load balancer IP frontends under `Cluster` policy (masqueraded).
    pub const EXTERNAL_IPS: &str = "external-ips";
    /// Set: external and load balancer IP frontends under `Local` policy (not masqueraded).
    pub const LOCAL_IPS: &str = "local-ips";
    /// Set: node ports under `Cluster` policy (`proto . port`, masqueraded).
    pub const NODEPORTS: &str = "nodeports";
    /// Verdict map: frontends without (usable) endpoints → reject or drop.
    pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
    /// Verdict map: node ports without (usable) endpoints → reject or drop.
    pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
    /// Set: `Local`-policy frontends without local endpoints (traffic from elsewhere dropped).
    pub const NO_LOCAL_ENDPOINT_SERVICES: &str = "no-local-endpoint-services";
    /// Set: the same for node ports.
    pub const NO_LOCAL_ENDPOINT_NODEPORTS: &str = "no-local-endpoint-nodeports";
    /// Set: load balancer frontends restricted by `loadBalancerSourceRanges`.
    pub const FIREWALL_IPS: &str = "firewall-ips";
    /// Interval set: `frontend . source prefix` allowed to reach those frontends.
    pub const FIREWALL_ALLOW: &str = "firewall-allow";
    /// Set: `endpoint . endpoint . proto . port` of endpoints on this node (hairpin).
    pub const HAIRPIN: &str = "hairpin-connections";
    /// Set: the addresses bound to the dummy interface.
    pub const VIP_ADDRESSES: &str = "vip-addresses";
    /// Set: health-check node ports (TCP).
    pub const HEALTH_CHECK_PORTS: &str = "health-check-ports";
    /// Set: node addresses that accept node-port traffic (when not every local address does).
    pub const NODEPORT_IPS: &str = "nodeport-ips";
    /// Chain: masquerade marking (nat prerouting and output).
    pub const SERVICES: &str = "services";
    /// Chain: postrouting masquerade.
    pub const MASQUERADING: &str = "masquerading";
    /// Chain: source ranges.
    pub const FIREWALL_CHECK: &str = "firewall-check";
    /// Chain: frontends without endpoints.
    pub const ENDPOINTS_CHECK: &str = "endpoints-check";
    /// Chain: `Local`-policy frontends without local endpoints, for traffic from elsewhere.
    pub const LOCAL_ENDPOINTS_CHECK: &str = "local-endpoints-check";
    /// Chain: the VIP filter.
    pub const VIP_FILTER: &str = "vip-filter";
    /// Chain: the reject statements (a map cannot return `reject`).
    pub const REJECT_CHAIN: &str = "reject-chain";
}

/// The sets and maps that services fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetKind {
    /// `cluster-ips`
    ClusterIps,
    /// `external-ips`
    ExternalIps,
    /// `local-ips`
    LocalIps,
    /// `nodeports`
    Nodeports,
    /// `no-endpoint-services` (a verdict map)
    NoEndpointServices,
    /// `no-endpoint-nodeports` (a verdict map)
    NoEndpointNodeports,
    /// `no-local-endpoint-services`
    NoLocalEndpointServices,
    /// `no-local-endpoint-nodeports`
    NoLocalEndpointNodeports,
    /// `firewall-ips`
    FirewallIps,
    /// `firewall-allow`
    FirewallAllow,
    /// `hairpin-connections`
    Hairpin,
    /// `vip-addresses`
    VipAddresses,
    /// `health-check-ports`
    HealthCheckPorts,
}

impl SetKind {
    /// The set's name.
    pub fn name(self) -> Name {
        use names::*;
        n(match self {
            SetKind::ClusterIps => CLUSTER_IPS,
            SetKind::ExternalIps => EXTERNAL_IPS,
            SetKind::LocalIps => LOCAL_IPS,
            SetKind::Nodeports => NODEPORTS,
            SetKind::NoEndpointServices => NO_ENDPOINT_SERVICES,
            SetKind::NoEndpointNodeports => NO_ENDPOINT_NODEPORTS,
            SetKind::NoLocalEndpointServices => NO_LOCAL_ENDPOINT_SERVICES,
            SetKind::NoLocalEndpointNodeports => NO_LOCAL_ENDPOINT_NODEPORTS,
            SetKind::FirewallIps => FIREWALL_IPS,
            SetKind::FirewallAllow => FIREWALL_ALLOW,
            SetKind::Hairpin => HAIRPIN,
            SetKind::VipAddresses => VIP_ADDRESSES,
            SetKind::HealthCheckPorts => HEALTH_CHECK_PORTS,
        })
    }
}

/// What a frontend without endpoints gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// Rejected at once (no endpoints at all).
    Reject,
    /// Dropped (a `Local` policy without local endpoints, where nothing may answer).
    Drop,
}

impl Refusal {
    fn value(self) -> Key {
        Key::verdict(match self {
            Refusal::Reject => Verdict::Goto(n(names::REJECT_CHAIN)),
            Refusal::Drop => Verdict::Drop,
        })
    }
}

/// One element of one of the table's sets or maps.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Element {
    /// The table's family.
    pub family: Family,
    /// The set.
    pub set: SetKind,
    /// The key.
    pub key: Key,
    /// The verdict, for the two maps.
    pub refusal: Option<Refusal>,
}

impl Element {
    /// An element of a set.
    pub fn new(family: Family, set: SetKind, key: Key) -> Element {
        Element {
            family,
            set,
            key,
            refusal: None,
        }
    }

    /// An element of a verdict map.
    pub fn refused(family: Family, set: SetKind, key: Key, refusal: Refusal) -> Element {
        Element {
            family,
            set,
            key,
            refusal: Some(refusal),
        }
    }

    /// The `(key, value)` pair as a transaction carries it.
    pub fn entry(&self) -> (Key, Option<Key>) {
        (self.key.clone(), self.refusal.map(Refusal::value))
    }
}

/// The key of a frontend `addr . proto . port`.
pub fn frontend_key(addr: IpAddr, proto: L4Proto, port: u16) -> Key {
    Key::new([Atom::ip(addr), Atom::Proto(proto), Atom::Port(port)])
}

/// The key of a node port `proto . port`.
pub fn port_key(proto: L4Proto, port: u16) -> Key {
    Key::new([Atom::Proto(proto), Atom::Port(port)])
}

/// A compile-time-valid static name.
fn n(s: &str) -> Name {
    // Every caller passes a constant from `names`: never input.
    Name::new(s).expect("static object names are valid")
}

fn addr_type(f: Family) -> DataType {
    match f {
        Family::Ip => DataType::Ipv4Addr,
        Family::Ip6 => DataType::Ipv6Addr,
    }
}

fn frontend(f: Family) -> Expr {
    Expr::Concat(vec![Expr::Daddr(f), Expr::L4Proto, Expr::ThDport])
}

fn ct_new() -> Stmt {
    Stmt::Cmp(Expr::CtState, CmpOp::Eq, Expr::Keyword("new"))
}

fn jump(c: &str) -> Stmt {
    Stmt::Verdict(Verdict::Jump(n(c)))
}

fn lookup(key: Expr, set: &str) -> Stmt {
    Stmt::Lookup(key, CmpOp::Eq, n(set))
}

/// The settings the table's rules depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableConfig {
    /// The tables' name.
    pub table: Name,
    /// `--masquerade-all`.
    pub masquerade_all: bool,
    /// The masquerade bit of the packet mark (`masqueradeBit`).
    pub masquerade_bit: u8,
}

impl Default for TableConfig {
    fn default() -> TableConfig {
        let c = rudder_compiler::Config::default();
        TableConfig {
            table: c.table,
            masquerade_all: c.masquerade_all,
            masquerade_bit: c.masquerade_bit,
        }
    }
}

impl TableConfig {
    /// The masquerade mark, `1 << masquerade_bit` (bits above 31 are clamped to 31).
    pub fn mark(&self) -> u32 {
        1u32 << self.masquerade_bit.min(31)
    }

    /// The table of `family`.
    pub fn table(&self, family: Family) -> TableRef {
        TableRef::new(family, self.table.clone())
    }
}

/// The static part of the table of `f`: its sets and maps (with the `nodeport-ips`
/// elements, which depend only on the node), its chains and every rule.
pub fn skeleton(f: Family, config: &TableConfig, node: &NodeContext) -> Transaction {
    use names::*;
    let table = config.table(f);
    let mark = config.mark();
    let mut tx = Transaction::new();
    tx.add_table(table.clone());
    let at = addr_type(f);
    let fe = || KeyType::types([at, DataType::InetProto, DataType::InetService]);
    let port = || KeyType::types([DataType::InetProto, DataType::InetService]);
    let sets = [
        SetDecl::set(n(CLUSTER_IPS), fe()),
        SetDecl::set(n(EXTERNAL_IPS), fe()),
        SetDecl::set(n(LOCAL_IPS), fe()),
        SetDecl::set(n(NODEPORTS), port()),
        SetDecl::map(n(NO_ENDPOINT_SERVICES), fe(), DataType::Verdict),
        SetDecl::map(n(NO_ENDPOINT_NODEPORTS), port(), DataType::Verdict),
        SetDecl::set(n(NO_LOCAL_ENDPOINT_SERVICES), fe()),
        SetDecl::set(n(NO_LOCAL_ENDPOINT_NODEPORTS), port()),
        SetDecl::set(n(FIREWALL_IPS), fe()),
        SetDecl {
            flags: vec![SetFlag::Interval],
            ..SetDecl::set(
                n(FIREWALL_ALLOW),
                KeyType::types([at, DataType::InetProto, DataType::InetService, at]),
            )
        },
        SetDecl::set(
            n(HAIRPIN),
            KeyType::types([at, at, DataType::InetProto, DataType::InetService]),
        ),
        SetDecl::set(n(VIP_ADDRESSES), KeyType::types([at])),
        SetDecl::set(
            n(HEALTH_CHECK_PORTS),
            KeyType::types([DataType::InetService]),
        ),
    ];
    for s in sets {
        tx.add_set(&table, s);
    }
    let specific = match &node.node_port_ips {
        NodePortIps::All => false,
        NodePortIps::Only(ips) => {
            tx.add_set(&table, SetDecl::set(n(NODEPORT_IPS), KeyType::types([at])));
            let elems: Vec<_> = ips
                .iter()
                .filter(|ip| Family::of(ip) == f)
                .map(|ip| (Key::new(vec![Atom::ip(*ip)]), None))
                .collect();
            tx.add_elements(&table, &n(NODEPORT_IPS), elems);
            true
        }
    };

    // Regular chains first, so base chains can jump to them.
    for c in [
        SERVICES,
        MASQUERADING,
        FIREWALL_CHECK,
        ENDPOINTS_CHECK,
        LOCAL_ENDPOINTS_CHECK,
        VIP_FILTER,
        REJECT_CHAIN,
    ] {
        tx.add_chain(&table, ChainDecl::regular(n(c)));
    }
    let to_vip = lookup(Expr::Daddr(f), VIP_ADDRESSES);
    let base = [
        (
            "filter-prerouting-pre-ipvs",
            ChainType::Filter,
            Hook::Prerouting,
            -110,
            vec![vec![ct_new(), jump(FIREWALL_CHECK)]],
        ),
        (
            "filter-output-pre-ipvs",
            ChainType::Filter,
            Hook::Output,
            -110,
            vec![
                vec![ct_new(), jump(FIREWALL_CHECK)],
                vec![ct_new(), jump(ENDPOINTS_CHECK)],
            ],
        ),
        (
            "filter-input",
            ChainType::Filter,
            Hook::Input,
            0,
            vec![
                vec![ct_new(), jump(ENDPOINTS_CHECK)],
                vec![ct_new(), jump(LOCAL_ENDPOINTS_CHECK)],
                vec![ct_new(), to_vip, jump(VIP_FILTER)],
            ],
        ),
        (
            "nat-prerouting",
            ChainType::Nat,
            Hook::Prerouting,
            -100,
            vec![vec![jump(SERVICES)]],
        ),
        (
            "nat-output",
            ChainType::Nat,
            Hook::Output,
            -100,
            vec![vec![jump(SERVICES)]],
        ),
        (
            "nat-postrouting",
            ChainType::Nat,
            Hook::Postrouting,
            100,
            vec![vec![jump(MASQUERADING)]],
        ),
    ];
    for (name, kind, hook, prio, rules) in base {
        let cname = n(name);
        tx.add_chain(&table, ChainDecl::base(cname.clone(), kind, hook, prio));
        for r in rules {
            tx.add_rule(&table, &cname, Rule::new(r));
        }
    }

    // services: masquerade marking, before IPVS picks a real server.
    let services = n(SERVICES);
    let mark_it = Stmt::MarkOr(mark);
    tx.add_rule(
        &table,
        &services,
        Rule::new(vec![
            Stmt::Cmp(Expr::Saddr(f), CmpOp::Eq, loopback(f)),
            Stmt::Verdict(Verdict::Return),
        ]),
    );
    let cluster = lookup(frontend(f), CLUSTER_IPS);
    if config.masquerade_all {
        tx.add_rule(
            &table,
            &services,
            Rule::new(vec![cluster, mark_it.clone()])
                .with_comment("masquerade all traffic to ClusterIPs"),
        );
    } else if let Some(not_local) = local_match(f, &node.local_detector, CmpOp::Ne) {
        tx.add_rule(
            &table,
            &services,
            Rule::new(vec![cluster, not_local, mark_it.clone()])
                .with_comment("masquerade off-cluster traffic to ClusterIPs"),
        );
    } else {
        // Without a way to tell pods from the rest, kube-proxy masquerades what the node
        // sends from a VIP: the dummy interface makes the VIP the source address the kernel
        // picks to reach a VIP, and the endpoint could not answer it.
        tx.add_rule(
            &table,
            &services,
            Rule::new(vec![
                lookup(
                    Expr::Concat(vec![Expr::Saddr(f), Expr::L4Proto, Expr::ThDport]),
                    CLUSTER_IPS,
                ),
                mark_it.clone(),
            ])
            .with_comment("masquerade traffic from a VIP to a ClusterIP"),
        );
    }
    tx.add_rule(
        &table,
        &services,
        Rule::new(vec![lookup(frontend(f), EXTERNAL_IPS), mark_it.clone()])
            .with_comment("masquerade traffic to external and load balancer IPs"),
    );
    let port_expr = || Expr::Concat(vec![Expr::L4Proto, Expr::ThDport]);
    let mut np = nodeport_match(f, specific, lookup(port_expr(), NODEPORTS));
    np.push(mark_it);
    tx.add_rule(
        &table,
        &services,
        Rule::new(np).with_comment("masquerade node-port traffic"),
    );

    // masquerading: what was marked, and hairpin connections.
    let masq = n(MASQUERADING);
    tx.add_rule(&table, &masq, masquerade_marked(mark));
    tx.add_rule(
        &table,
        &masq,
        Rule::new(vec![
            lookup(
                Expr::Concat(vec![
                    Expr::Saddr(f),
                    Expr::Daddr(f),
                    Expr::L4Proto,
                    Expr::ThDport,
                ]),
                HAIRPIN,
            ),
            Stmt::Masquerade { fully_random: true },
        ])
        .with_comment("hairpin"),
    );

    // The checks.
    tx.add_rule(
        &table,
        &n(FIREWALL_CHECK),
        Rule::new(vec![
            lookup(frontend(f), FIREWALL_IPS),
            Stmt::Lookup(
                Expr::Concat(vec![
                    Expr::Daddr(f),
                    Expr::L4Proto,
                    Expr::ThDport,
                    Expr::Saddr(f),
                ]),
                CmpOp::Ne,
                n(FIREWALL_ALLOW),
            ),
            Stmt::Verdict(Verdict::Drop),
        ])
        .with_comment("loadBalancerSourceRanges"),
    );
    tx.add_rule(
        &table,
        &n(ENDPOINTS_CHECK),
        Rule::new(vec![Stmt::Vmap(frontend(f), n(NO_ENDPOINT_SERVICES))]),
    );
    tx.add_rule(
        &table,
        &n(ENDPOINTS_CHECK),
        Rule::new(nodeport_match(
            f,
            specific,
            Stmt::Vmap(port_expr(), n(NO_ENDPOINT_NODEPORTS)),
        )),
    );
    let local_check = n(LOCAL_ENDPOINTS_CHECK);
    tx.add_rule(
        &table,
        &local_check,
        Rule::new(vec![
            Stmt::Cmp(
                Expr::FibType(FibKind::Saddr),
                CmpOp::Eq,
                Expr::Keyword("local"),
            ),
            Stmt::Verdict(Verdict::Return),
        ]),
    );
    if let Some(pods) = local_match(f, &node.local_detector, CmpOp::Eq) {
        tx.add_rule(
            &table,
            &local_check,
            Rule::new(vec![pods, Stmt::Verdict(Verdict::Return)]),
        );
    }
    tx.add_rule(
        &table,
        &local_check,
        Rule::new(vec![
            lookup(frontend(f), NO_LOCAL_ENDPOINT_SERVICES),
            Stmt::Verdict(Verdict::Drop),
        ])
        .with_comment("externalTrafficPolicy Local without local endpoints"),
    );
    let mut np = nodeport_match(
        f,
        specific,
        lookup(port_expr(), NO_LOCAL_ENDPOINT_NODEPORTS),
    );
    np.push(Stmt::Verdict(Verdict::Drop));
    tx.add_rule(
        &table,
        &local_check,
        Rule::new(np).with_comment("externalTrafficPolicy Local without local endpoints"),
    );
    let vip = n(VIP_FILTER);
    for set in [CLUSTER_IPS, EXTERNAL_IPS, LOCAL_IPS] {
        tx.add_rule(
            &table,
            &vip,
            Rule::new(vec![
                lookup(frontend(f), set),
                Stmt::Verdict(Verdict::Return),
            ]),
        );
    }
    tx.add_rule(
        &table,
        &vip,
        Rule::new(vec![
            Stmt::Cmp(
                Expr::L4Proto,
                CmpOp::Eq,
                Expr::Const(Atom::Proto(L4Proto::Tcp)),
            ),
            lookup(Expr::ThDport, HEALTH_CHECK_PORTS),
            Stmt::Verdict(Verdict::Return),
        ]),
    );
    tx.add_rule(
        &table,
        &vip,
        Rule::new(vec![Stmt::Verdict(Verdict::Goto(n(REJECT_CHAIN)))])
            .with_comment("a VIP port that is no service"),
    );
    let rj = n(REJECT_CHAIN);
    for r in reject_rules() {
        tx.add_rule(&table, &rj, r);
    }
    tx
}

/// The transaction that adds `added` and deletes `deleted`, per table and set.
pub fn elements_tx<'a>(
    config: &TableConfig,
    added: impl IntoIterator<Item = &'a Element>,
    deleted: impl IntoIterator<Item = &'a Element>,
) -> Transaction {
    use std::collections::BTreeMap;
    type Entries = Vec<(Key, Option<Key>)>;
    let mut adds: BTreeMap<(Family, SetKind), Entries> = BTreeMap::new();
    let mut dels: BTreeMap<(Family, SetKind), Vec<Key>> = BTreeMap::new();
    for e in deleted {
        dels.entry((e.family, e.set))
            .or_default()
            .push(e.key.clone());
    }
    for e in added {
        adds.entry((e.family, e.set)).or_default().push(e.entry());
    }
    let mut tx = Transaction::new();
    for ((f, set), keys) in dels {
        tx.delete_elements(&config.table(f), &set.name(), keys);
    }
    for ((f, set), elems) in adds {
        tx.add_elements(&config.table(f), &set.name(), elems);
    }
    tx
}
