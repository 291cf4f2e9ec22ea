//! The table layout: object names, the static skeleton, and the per-class objects.
//!
//! See `docs/rules.md` for the picture. In short: every frontend (ClusterIP, external IP or
//! load balancer IP `. proto . port`, and every NodePort `proto . port`) is one element of a
//! verdict map that jumps to a chain shared by all services with the same number of
//! endpoints N (an *endpoint class*). That chain's single rule DNATs through one map per
//! class keyed by `frontend . numgen random mod N`. No map is referenced by more than one
//! rule and no anonymous set exists per service, which keeps the kernel's work per element
//! constant (see the performance notes in `docs/performance.md`).

use rudder_nft::{
    Atom, ChainDecl, ChainType, CmpOp, DataType, Expr, Family, FibKind, Hook, Key, KeyType, Name,
    Reject, Rule, Ruleset, SetDecl, SetFlag, Stmt, TableRef, Transaction, Verdict,
};

use rudder_model::Cidr;

use crate::{Config, LocalDetector, NodeContext, NodePortIps};

/// Names of the static objects.
pub mod names {
    /// Set of every active ClusterIP.
    pub const CLUSTER_IPS: &str = "cluster-ips";
    /// Set of node addresses that accept NodePort traffic.
    pub const NODEPORT_IPS: &str = "nodeport-ips";
    /// Set of every node port `proto . port`, with endpoints or not, for the loopback
    /// node-port rules (only with the localhost node ports gate or proxy).
    pub const NODE_PORTS: &str = "node-ports";
    /// Set of `ep . ep . proto . port` for local endpoints, to masquerade hairpin traffic.
    pub const HAIRPIN: &str = "hairpin-connections";
    /// Verdict map `addr . proto . port` → endpoint-class chain.
    pub const SERVICE_IPS: &str = "service-ips";
    /// Verdict map `proto . port` → NodePort endpoint-class chain.
    pub const SERVICE_NODEPORTS: &str = "service-nodeports";
    /// Verdict map for service IPs without endpoints (reject or drop).
    pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
    /// Verdict map for node ports without endpoints.
    pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
    /// Set of load balancer frontends restricted by `loadBalancerSourceRanges`.
    pub const FIREWALL_IPS: &str = "firewall-ips";
    /// Interval set of `frontend . source prefix` allowed to reach those frontends.
    pub const FIREWALL_ALLOW: &str = "firewall-allow";
    /// Dispatch chain, hooked at nat prerouting and output.
    pub const SERVICES: &str = "services";
    /// Postrouting masquerade chain.
    pub const MASQUERADING: &str = "masquerading";
    /// Rejects traffic to unused ports of ClusterIPs.
    pub const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";
    /// Pre-DNAT source-range filtering.
    pub const FIREWALL_CHECK: &str = "firewall-check";
    /// Rejects or drops traffic to services without endpoints.
    pub const SERVICE_ENDPOINTS_CHECK: &str = "service-endpoints-check";
    /// Same, for node ports.
    pub const NODEPORT_ENDPOINTS_CHECK: &str = "nodeport-endpoints-check";
    /// Holds the reject rules (`reject` is not a verdict a map can return).
    pub const REJECT_CHAIN: &str = "reject-chain";
}

/// A compile-time-valid static name.
pub(crate) fn n(s: &str) -> Name {
    // Every caller passes a constant from `names` or a prefix plus a number: never input.
    Name::new(s).expect("static object names are valid")
}

/// The sets and maps the compiler fills with elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetId {
    /// `cluster-ips`
    ClusterIps,
    /// `hairpin-connections`
    Hairpin,
    /// `service-ips`
    ServiceIps,
    /// `service-nodeports`
    ServiceNodeports,
    /// `no-endpoint-services`
    NoEndpointServices,
    /// `no-endpoint-nodeports`
    NoEndpointNodeports,
    /// `node-ports`
    NodePorts,
    /// `cluster-endpoints-N`: all of a frontend's cluster endpoints, by slot.
    ClusterEndpoints(u32),
    /// `nodeport-endpoints-N`: a node port's cluster endpoints, by slot.
    NodeportEndpoints(u32),
    /// `local-endpoints-L`: a frontend's endpoints on this node, by slot.
    LocalEndpoints(u32),
    /// `nodeport-local-endpoints-L`: a node port's endpoints on this node, by slot.
    NodeportLocalEndpoints(u32),
    /// `firewall-ips`
    FirewallIps,
    /// `firewall-allow`
    FirewallAllow,
}

impl SetId {
    /// The set's name.
    pub fn name(self) -> Name {
        match self {
            SetId::ClusterIps => n(names::CLUSTER_IPS),
            SetId::Hairpin => n(names::HAIRPIN),
            SetId::ServiceIps => n(names::SERVICE_IPS),
            SetId::ServiceNodeports => n(names::SERVICE_NODEPORTS),
            SetId::NoEndpointServices => n(names::NO_ENDPOINT_SERVICES),
            SetId::NoEndpointNodeports => n(names::NO_ENDPOINT_NODEPORTS),
            SetId::NodePorts => n(names::NODE_PORTS),
            SetId::ClusterEndpoints(c) => n(&format!("cluster-endpoints-{c}")),
            SetId::NodeportEndpoints(c) => n(&format!("nodeport-endpoints-{c}")),
            SetId::LocalEndpoints(c) => n(&format!("local-endpoints-{c}")),
            SetId::NodeportLocalEndpoints(c) => n(&format!("nodeport-local-endpoints-{c}")),
            SetId::FirewallIps => n(names::FIREWALL_IPS),
            SetId::FirewallAllow => n(names::FIREWALL_ALLOW),
        }
    }

    /// Whether this is an endpoint map whose keys end with a slot number.
    pub fn is_endpoint_map(self) -> bool {
        matches!(
            self,
            SetId::ClusterEndpoints(_)
                | SetId::NodeportEndpoints(_)
                | SetId::LocalEndpoints(_)
                | SetId::NodeportLocalEndpoints(_)
        )
    }
}

/// A group of objects shared by every frontend whose service has the same number of
/// endpoints (N cluster-wide, L on this node). Variants are ordered so that a class comes
/// after the classes its chain jumps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Chain `cluster-N` and map `cluster-endpoints-N`: DNAT for service IPs.
    Cluster(u32),
    /// Chain `external-N`: masquerade mark, then `goto cluster-N`.
    External(u32),
    /// Chain `nodeport-cluster-N` and map `nodeport-endpoints-N`: DNAT for node ports.
    NodePortCluster(u32),
    /// Chain `nodeport-N`: masquerade mark, then `goto nodeport-cluster-N`.
    NodePort(u32),
    /// Chain `local-L` and map `local-endpoints-L`: DNAT to endpoints on this node.
    Local(u32),
    /// Chain `nodeport-local-L` and map `nodeport-local-endpoints-L`.
    NodePortLocal(u32),
    /// Chain `external-local-N-L`: `externalTrafficPolicy: Local` for external and load
    /// balancer IPs: pod and node traffic short-circuits to `cluster-N`, the rest goes to
    /// `local-L` (when L > 0) without masquerade.
    ExternalLocal(u32, u32),
    /// Chain `nodeport-external-local-N-L`: the same for node ports.
    NodePortExternalLocal(u32, u32),
}

impl Class {
    /// The entry chain of the class.
    pub fn chain(self) -> Name {
        match self {
            Class::Cluster(c) => n(&format!("cluster-{c}")),
            Class::External(c) => n(&format!("external-{c}")),
            Class::NodePortCluster(c) => n(&format!("nodeport-cluster-{c}")),
            Class::NodePort(c) => n(&format!("nodeport-{c}")),
            Class::Local(l) => n(&format!("local-{l}")),
            Class::NodePortLocal(l) => n(&format!("nodeport-local-{l}")),
            Class::ExternalLocal(c, l) => n(&format!("external-local-{c}-{l}")),
            Class::NodePortExternalLocal(c, l) => n(&format!("nodeport-external-local-{c}-{l}")),
        }
    }

    /// The verdict that sends a frontend to this class.
    pub fn verdict(self) -> Key {
        Key::verdict(Verdict::Goto(self.chain()))
    }

    /// This class and the classes its chain jumps to.
    pub fn with_dependencies(self) -> Vec<Class> {
        let mut out = vec![self];
        match self {
            Class::External(c) => out.push(Class::Cluster(c)),
            Class::NodePort(c) => out.push(Class::NodePortCluster(c)),
            Class::ExternalLocal(c, l) => {
                out.push(Class::Cluster(c));
                if l > 0 {
                    out.push(Class::Local(l));
                }
            }
            Class::NodePortExternalLocal(c, l) => {
                out.push(Class::NodePortCluster(c));
                if l > 0 {
                    out.push(Class::NodePortLocal(l));
                }
            }
            Class::Cluster(_)
            | Class::NodePortCluster(_)
            | Class::Local(_)
            | Class::NodePortLocal(_) => {}
        }
        out
    }
}

fn addr_type(f: Family) -> DataType {
    match f {
        Family::Ip => DataType::Ipv4Addr,
        Family::Ip6 => DataType::Ipv6Addr,
    }
}

fn frontend_key(f: Family) -> Expr {
    Expr::Concat(vec![Expr::Daddr(f), Expr::L4Proto, Expr::ThDport])
}

fn ct_new() -> Stmt {
    Stmt::Cmp(Expr::CtState, CmpOp::Eq, Expr::Keyword("new"))
}

fn jump(c: &str) -> Stmt {
    Stmt::Verdict(Verdict::Jump(n(c)))
}

/// The static part of the table: base chains, fixed chains, and the declarations of the
/// fixed sets and maps (with the `nodeport-ips` elements, which depend only on the node).
pub fn skeleton(
    family: Family,
    table: &TableRef,
    config: &Config,
    node: &NodeContext,
    service_cidrs: &[Cidr],
) -> Ruleset {
    let node_port_ips = &node.node_port_ips;
    use names::*;
    let f = family;
    let mark = config.masquerade_mark();
    let mut tx = Transaction::new();
    tx.add_table(table.clone());
    let at = addr_type(f);
    let sets = [
        SetDecl::set(n(CLUSTER_IPS), KeyType::types([at])),
        SetDecl::set(
            n(HAIRPIN),
            KeyType::types([at, at, DataType::InetProto, DataType::InetService]),
        ),
        SetDecl::map(
            n(SERVICE_IPS),
            KeyType::types([at, DataType::InetProto, DataType::InetService]),
            DataType::Verdict,
        ),
        SetDecl::map(
            n(SERVICE_NODEPORTS),
            KeyType::types([DataType::InetProto, DataType::InetService]),
            DataType::Verdict,
        ),
        SetDecl::map(
            n(NO_ENDPOINT_SERVICES),
            KeyType::types([at, DataType::InetProto, DataType::InetService]),
            DataType::Verdict,
        ),
        SetDecl::map(
            n(NO_ENDPOINT_NODEPORTS),
            KeyType::types([DataType::InetProto, DataType::InetService]),
            DataType::Verdict,
        ),
        SetDecl::set(
            n(FIREWALL_IPS),
            KeyType::types([at, DataType::InetProto, DataType::InetService]),
        ),
        SetDecl {
            flags: vec![SetFlag::Interval],
            ..SetDecl::set(
                n(FIREWALL_ALLOW),
                KeyType::types([at, DataType::InetProto, DataType::InetService, at]),
            )
        },
    ];
    for s in sets {
        tx.add_set(table, s);
    }
    let specific_node_ports = match node_port_ips {
        NodePortIps::All => false,
        NodePortIps::Only(ips) => {
            tx.add_set(table, SetDecl::set(n(NODEPORT_IPS), KeyType::types([at])));
            let elems: Vec<_> = ips
                .iter()
                .filter(|ip| Family::of(ip) == f)
                .map(|ip| (Key::new(vec![Atom::ip(*ip)]), None))
                .collect();
            tx.add_elements(table, &n(NODEPORT_IPS), elems);
            true
        }
    };

    // Regular chains first, so base chains can jump to them.
    for c in [
        SERVICES,
        MASQUERADING,
        CLUSTER_IPS_CHECK,
        FIREWALL_CHECK,
        SERVICE_ENDPOINTS_CHECK,
        NODEPORT_ENDPOINTS_CHECK,
        REJECT_CHAIN,
    ] {
        tx.add_chain(table, ChainDecl::regular(n(c)));
    }
    let base = [
        (
            "filter-prerouting-pre-dnat",
            ChainType::Filter,
            Hook::Prerouting,
            -110,
            vec![vec![ct_new(), jump(FIREWALL_CHECK)]],
        ),
        (
            "filter-output-pre-dnat",
            ChainType::Filter,
            Hook::Output,
            -110,
            vec![vec![ct_new(), jump(FIREWALL_CHECK)]],
        ),
        (
            "filter-input",
            ChainType::Filter,
            Hook::Input,
            0,
            vec![
                vec![ct_new(), jump(NODEPORT_ENDPOINTS_CHECK)],
                vec![ct_new(), jump(SERVICE_ENDPOINTS_CHECK)],
            ],
        ),
        (
            "filter-forward",
            ChainType::Filter,
            Hook::Forward,
            0,
            vec![
                vec![ct_new(), jump(SERVICE_ENDPOINTS_CHECK)],
                vec![ct_new(), jump(CLUSTER_IPS_CHECK)],
            ],
        ),
        (
            "filter-output",
            ChainType::Filter,
            Hook::Output,
            0,
            vec![
                vec![ct_new(), jump(SERVICE_ENDPOINTS_CHECK)],
                vec![ct_new(), jump(CLUSTER_IPS_CHECK)],
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
        tx.add_chain(table, ChainDecl::base(cname.clone(), kind, hook, prio));
        for r in rules {
            tx.add_rule(table, &cname, Rule::new(r));
        }
    }
    let localhost = match f {
        Family::Ip => rudder_model::IpFamily::V4,
        Family::Ip6 => rudder_model::IpFamily::V6,
    };
    let proxied = config.localhost_node_ports.contains(&localhost);
    if proxied || config.localhost_gate {
        // Loopback node ports never reach a host process (kube-proxy 1.37): where the
        // localhost proxy runs it serves TCP, so other protocols are rejected; where the gate
        // is on but the proxy is not, every protocol is. Whether the port has endpoints or
        // not: the node ports are a plain set of their own, since a lookup without a
        // verdict in a verdict map is refused by kernels before 6.x (EINVAL on 6.1). In
        // nat-output, which sees only new flows.
        tx.add_set(
            table,
            SetDecl::set(
                n(NODE_PORTS),
                KeyType::types([DataType::InetProto, DataType::InetService]),
            ),
        );
        let mut stmts = vec![Stmt::Cmp(Expr::Daddr(f), CmpOp::Eq, loopback(f))];
        if proxied {
            stmts.push(Stmt::Cmp(
                Expr::L4Proto,
                CmpOp::Ne,
                Expr::Const(Atom::Proto(rudder_nft::L4Proto::Tcp)),
            ));
        }
        stmts.push(Stmt::Lookup(
            Expr::Concat(vec![Expr::L4Proto, Expr::ThDport]),
            CmpOp::Eq,
            n(NODE_PORTS),
        ));
        stmts.push(Stmt::Verdict(Verdict::Goto(n(REJECT_CHAIN))));
        tx.add_rule(
            table,
            &n("nat-output"),
            Rule::new(stmts).with_comment(if proxied {
                "localhost node ports are TCP only"
            } else {
                "no localhost node port proxy"
            }),
        );
    }

    // services: masquerade marking for off-cluster traffic to ClusterIPs, then dispatch.
    let services = n(SERVICES);
    let to_cluster_ip = Stmt::Lookup(Expr::Daddr(f), CmpOp::Eq, n(CLUSTER_IPS));
    if config.masquerade_all {
        tx.add_rule(
            table,
            &services,
            Rule::new(vec![to_cluster_ip, Stmt::MarkOr(mark)])
                .with_comment("masquerade all traffic to ClusterIPs"),
        );
    } else if let Some(not_local) = local_match(f, &node.local_detector, CmpOp::Ne) {
        tx.add_rule(
            table,
            &services,
            Rule::new(vec![to_cluster_ip, not_local, Stmt::MarkOr(mark)])
                .with_comment("masquerade off-cluster traffic to ClusterIPs"),
        );
    }
    tx.add_rule(
        table,
        &services,
        Rule::new(vec![Stmt::Vmap(frontend_key(f), n(SERVICE_IPS))]),
    );
    let port_key = Expr::Concat(vec![Expr::L4Proto, Expr::ThDport]);
    tx.add_rule(
        table,
        &services,
        Rule::new(nodeport_match(
            f,
            specific_node_ports,
            Stmt::Vmap(port_key.clone(), n(SERVICE_NODEPORTS)),
        )),
    );

    // masquerading
    let masq = n(MASQUERADING);
    tx.add_rule(table, &masq, masquerade_marked(mark));
    tx.add_rule(
        table,
        &masq,
        Rule::new(vec![
            Stmt::Cmp(Expr::CtStatus, CmpOp::Eq, Expr::Keyword("dnat")),
            Stmt::Lookup(
                Expr::Concat(vec![
                    Expr::Saddr(f),
                    Expr::Daddr(f),
                    Expr::L4Proto,
                    Expr::ThDport,
                ]),
                CmpOp::Eq,
                n(HAIRPIN),
            ),
            Stmt::Masquerade { fully_random: true },
        ])
        .with_comment("hairpin"),
    );

    // Checks in the filter hooks.
    tx.add_rule(
        table,
        &n(CLUSTER_IPS_CHECK),
        Rule::new(vec![
            Stmt::Lookup(Expr::Daddr(f), CmpOp::Eq, n(CLUSTER_IPS)),
            Stmt::Verdict(Verdict::Goto(n(REJECT_CHAIN))),
        ])
        .with_comment("reject traffic to invalid ports of ClusterIPs"),
    );
    // Addresses inside the service CIDRs that are no ClusterIP: drop (kube-proxy's
    // "unallocated ClusterIP" rule; the reject above already answered allocated ones).
    let unallocated: Vec<Expr> = service_cidrs
        .iter()
        .filter(|c| Family::of(&c.addr()) == f)
        .map(|c| Expr::Prefix(c.addr(), c.prefix_len()))
        .collect();
    if !unallocated.is_empty() {
        let target = if unallocated.len() == 1 {
            unallocated[0].clone()
        } else {
            Expr::AnonSet(unallocated)
        };
        tx.add_rule(
            table,
            &n(CLUSTER_IPS_CHECK),
            Rule::new(vec![
                Stmt::Cmp(Expr::Daddr(f), CmpOp::Eq, target),
                Stmt::Verdict(Verdict::Drop),
            ])
            .with_comment("drop traffic to unallocated ClusterIPs"),
        );
    }
    tx.add_rule(
        table,
        &n(FIREWALL_CHECK),
        Rule::new(vec![
            Stmt::Lookup(frontend_key(f), CmpOp::Eq, n(FIREWALL_IPS)),
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
        table,
        &n(SERVICE_ENDPOINTS_CHECK),
        Rule::new(vec![Stmt::Vmap(frontend_key(f), n(NO_ENDPOINT_SERVICES))]),
    );
    tx.add_rule(
        table,
        &n(NODEPORT_ENDPOINTS_CHECK),
        Rule::new(nodeport_match(
            f,
            specific_node_ports,
            Stmt::Vmap(port_key, n(NO_ENDPOINT_NODEPORTS)),
        )),
    );
    let rj = n(REJECT_CHAIN);
    for r in reject_rules() {
        tx.add_rule(table, &rj, r);
    }

    let mut rs = Ruleset::new();
    // The skeleton is built from constants and typed values only; if it ever failed to apply
    // that would be a bug caught by the unit tests, so an empty ruleset is a safe fallback.
    let _ = rs.apply(&tx);
    rs
}

/// The rule that masquerades what carries the masquerade `mark`, clearing it first (so a
/// packet that goes through the stack again is not masqueraded twice).
pub fn masquerade_marked(mark: u32) -> Rule {
    Rule::new(vec![
        Stmt::Cmp(Expr::MarkAnd(mark), CmpOp::Ne, Expr::Const(Atom::Int(0))),
        Stmt::MarkXor(mark),
        Stmt::Masquerade { fully_random: true },
    ])
}

/// The rules of the reject chain: a TCP reset for TCP (not subject to ICMP rate limits),
/// ICMP port unreachable for the rest.
pub fn reject_rules() -> [Rule; 2] {
    [
        Rule::new(vec![
            Stmt::Cmp(
                Expr::L4Proto,
                CmpOp::Eq,
                Expr::Const(Atom::Proto(rudder_nft::L4Proto::Tcp)),
            ),
            Stmt::Reject(Reject::TcpReset),
        ]),
        Rule::new(vec![Stmt::Reject(Reject::Default)]),
    ]
}

/// The match for local (`Eq`) or non-local (`Ne`) traffic by the detector, if it has one
/// for this family: `ip saddr [!=] CIDR` (or a set of CIDRs), `iifname [!=] "cbr0"`,
/// `iifname [!=] "veth*"`.
pub fn local_match(f: Family, detector: &LocalDetector, op: CmpOp) -> Option<Stmt> {
    match detector {
        LocalDetector::None => None,
        LocalDetector::Cidrs(cidrs) => {
            let mine: Vec<Expr> = cidrs
                .iter()
                .filter(|c| Family::of(&c.addr()) == f)
                .map(|c| Expr::Prefix(c.addr(), c.prefix_len()))
                .collect();
            match mine.len() {
                0 => None,
                1 => mine
                    .into_iter()
                    .next()
                    .map(|p| Stmt::Cmp(Expr::Saddr(f), op, p)),
                _ => Some(Stmt::Cmp(Expr::Saddr(f), op, Expr::AnonSet(mine))),
            }
        }
        LocalDetector::Bridge(iface) | LocalDetector::InterfacePrefix(iface) => {
            Some(Stmt::Cmp(Expr::Iifname, op, Expr::Iface(iface.clone())))
        }
    }
}

/// The loopback addresses of a family: `127.0.0.0/8`, `::1`.
pub fn loopback(f: Family) -> Expr {
    match f {
        Family::Ip => Expr::Prefix(
            std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 0)),
            8,
        ),
        Family::Ip6 => Expr::Const(Atom::Ipv6(std::net::Ipv6Addr::LOCALHOST)),
    }
}

/// The statements selecting node-port traffic, followed by `then`: to an address of the
/// `nodeport-ips` set when `specific`, else to any local address except loopback.
pub fn nodeport_match(f: Family, specific: bool, then: Stmt) -> Vec<Stmt> {
    if specific {
        vec![
            Stmt::Lookup(Expr::Daddr(f), CmpOp::Eq, n(names::NODEPORT_IPS)),
            then,
        ]
    } else {
        vec![
            Stmt::Cmp(
                Expr::FibType(FibKind::Daddr),
                CmpOp::Eq,
                Expr::Keyword("local"),
            ),
            Stmt::Cmp(Expr::Daddr(f), CmpOp::Ne, loopback(f)),
            then,
        ]
    }
}

fn endpoint_map(
    tx: &mut Transaction,
    table: &TableRef,
    f: Family,
    set: SetId,
    key: &[Expr],
) -> Name {
    let map = set.name();
    tx.add_set(
        table,
        SetDecl::map_typeof(
            map.clone(),
            key.to_vec(),
            vec![Expr::Daddr(f), Expr::ThDport],
        ),
    );
    map
}

fn goto(class: Class) -> Stmt {
    Stmt::Verdict(Verdict::Goto(class.chain()))
}

/// The rules of an `externalTrafficPolicy: Local` entry chain (kube-proxy's `external-…`
/// chain in Local mode): short-circuit pod traffic and the node's own traffic to all
/// endpoints (masquerading the latter), send the rest to this node's endpoints.
pub(crate) fn external_local_rules(
    f: Family,
    node: &NodeContext,
    mark: u32,
    cluster: Name,
    local: Option<Name>,
) -> Vec<Rule> {
    let goto = |c: Name| Stmt::Verdict(Verdict::Goto(c));
    let fib_local = || {
        Stmt::Cmp(
            Expr::FibType(FibKind::Saddr),
            CmpOp::Eq,
            Expr::Keyword("local"),
        )
    };
    let mut rules = Vec::new();
    if let Some(is_local) = local_match(f, &node.local_detector, CmpOp::Eq) {
        rules.push(
            Rule::new(vec![is_local, goto(cluster.clone())])
                .with_comment("short-circuit pod traffic"),
        );
    }
    rules.push(
        Rule::new(vec![fib_local(), Stmt::MarkOr(mark)]).with_comment("masquerade local traffic"),
    );
    rules.push(
        Rule::new(vec![fib_local(), goto(cluster)]).with_comment("short-circuit local traffic"),
    );
    if let Some(local) = local {
        rules.push(Rule::new(vec![goto(local)]));
    }
    rules
}

/// The transaction that creates the objects of `class` (their elements are added separately).
pub fn class_objects(
    family: Family,
    table: &TableRef,
    class: Class,
    mark: u32,
    node: &NodeContext,
    tx: &mut Transaction,
) {
    let f = family;
    let chain = class.chain();
    let mut rules: Vec<Rule> = Vec::new();
    match class {
        Class::Cluster(c) | Class::Local(c) => {
            let set = if matches!(class, Class::Cluster(_)) {
                SetId::ClusterEndpoints(c)
            } else {
                SetId::LocalEndpoints(c)
            };
            let key = [
                Expr::Daddr(f),
                Expr::L4Proto,
                Expr::ThDport,
                Expr::Numgen(c),
            ];
            let map = endpoint_map(tx, table, f, set, &key);
            rules.push(Rule::new(vec![Stmt::DnatMap(
                f,
                Expr::Concat(key.to_vec()),
                map,
            )]));
        }
        Class::NodePortCluster(c) | Class::NodePortLocal(c) => {
            let set = if matches!(class, Class::NodePortCluster(_)) {
                SetId::NodeportEndpoints(c)
            } else {
                SetId::NodeportLocalEndpoints(c)
            };
            let key = [Expr::L4Proto, Expr::ThDport, Expr::Numgen(c)];
            let map = endpoint_map(tx, table, f, set, &key);
            rules.push(Rule::new(vec![Stmt::DnatMap(
                f,
                Expr::Concat(key.to_vec()),
                map,
            )]));
        }
        Class::External(c) => {
            rules.push(Rule::new(vec![Stmt::MarkOr(mark), goto(Class::Cluster(c))]))
        }
        Class::NodePort(c) => rules.push(Rule::new(vec![
            Stmt::MarkOr(mark),
            goto(Class::NodePortCluster(c)),
        ])),
        Class::ExternalLocal(c, l) => {
            rules = external_local_rules(
                f,
                node,
                mark,
                Class::Cluster(c).chain(),
                (l > 0).then(|| Class::Local(l).chain()),
            );
        }
        Class::NodePortExternalLocal(c, l) => {
            rules = external_local_rules(
                f,
                node,
                mark,
                Class::NodePortCluster(c).chain(),
                (l > 0).then(|| Class::NodePortLocal(l).chain()),
            );
        }
    }
    tx.add_chain(table, ChainDecl::regular(chain.clone()));
    for r in rules {
        tx.add_rule(table, &chain, r);
    }
}
