//! Who keeps what when several service ports claim the same thing: a frontend (an address,
//! protocol and port, or a node port), or the names of session affinity objects (see
//! `affinity`).
//!
//! Claims are ranked, best first; only the best claim is programmed, and when it goes away
//! the next one takes over. The rank is a total order on the claims' inputs alone, so the
//! outcome does not depend on the order objects arrived in, and an incremental update resolves
//! exactly as a full compile does.
//!
//! For a frontend: a ClusterIP before a load balancer ingress IP before an external IP
//! ([`FrontendKind`]'s order), then the older Service, then namespace, name and port name
//! ([`Rank`]). The losers lose the whole frontend: every element of every set and map keyed by
//! it (`service-ips`, `no-endpoint-services`, the endpoint maps, `firewall-ips`,
//! `firewall-allow`, and their node-port counterparts), so a frontend is always programmed as
//! exactly one service port would program it alone.

use std::net::IpAddr;
use std::sync::Arc;

use rudder_model::{
    AddressField, ConflictRule, Frontend, FrontendKind, IpFamily, ObjectKind, Problem, Protocol,
    Reason, Service, ServicePort, ServicePortName,
};
use rudder_nft::{Atom, Key, L4Proto};

use crate::layout::SetId;

/// The rank of a service port among others claiming the same thing: the older Service first
/// (`metadata.creationTimestamp`; without one, after every Service that has one), then by
/// namespace, name, port name and protocol.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Rank {
    /// `(false, t)` with a creation time `t`, `(true, 0)` without: a missing time sorts last.
    age: (bool, i64),
    /// The claiming service port.
    pub(crate) owner: Arc<ServicePortName>,
}

impl Rank {
    /// The rank of `owner`, a port of `svc`.
    pub(crate) fn new(svc: &Service, owner: Arc<ServicePortName>) -> Rank {
        let age = match svc.creation_timestamp {
            Some(t) => (false, t),
            None => (true, 0),
        };
        Rank { age, owner }
    }
}

/// A frontend as the compiler keys its elements: `addr . proto . port`, or `proto . port` for
/// a node port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum FrontendKey {
    /// A ClusterIP, external or load balancer IP.
    Ip(IpAddr, L4Proto, u16),
    /// A node port.
    NodePort(L4Proto, u16),
}

impl FrontendKey {
    /// The frontend an element of `set` belongs to: the leading `addr . proto . port` (or
    /// `proto . port`) of its key. `cluster-ips` and `hairpin-connections` are shared by
    /// every port of an address and belong to no frontend.
    pub(crate) fn of_element(set: SetId, key: &Key) -> Option<FrontendKey> {
        let atoms = key.atoms();
        match set {
            SetId::ServiceIps
            | SetId::NoEndpointServices
            | SetId::ClusterEndpoints(_)
            | SetId::LocalEndpoints(_)
            | SetId::FirewallIps
            | SetId::FirewallAllow => match atoms {
                [Atom::Ipv4(a), Atom::Proto(p), Atom::Port(port), ..] => {
                    Some(FrontendKey::Ip(IpAddr::V4(*a), *p, *port))
                }
                [Atom::Ipv6(a), Atom::Proto(p), Atom::Port(port), ..] => {
                    Some(FrontendKey::Ip(IpAddr::V6(*a), *p, *port))
                }
                _ => None,
            },
            SetId::ServiceNodeports
            | SetId::NoEndpointNodeports
            | SetId::NodePorts
            | SetId::NodeportEndpoints(_)
            | SetId::NodeportLocalEndpoints(_) => match atoms {
                [Atom::Proto(p), Atom::Port(port), ..] => Some(FrontendKey::NodePort(*p, *port)),
                _ => None,
            },
            SetId::ClusterIps | SetId::Hairpin => None,
        }
    }

    /// The frontend in the model's terms.
    pub(crate) fn to_model(self) -> Frontend {
        let protocol = |p: L4Proto| match p {
            L4Proto::Tcp => Protocol::Tcp,
            L4Proto::Udp => Protocol::Udp,
            L4Proto::Sctp => Protocol::Sctp,
        };
        match self {
            FrontendKey::Ip(ip, p, port) => Frontend {
                address: Some(ip),
                protocol: protocol(p),
                port,
            },
            FrontendKey::NodePort(p, port) => Frontend {
                address: None,
                protocol: protocol(p),
                port,
            },
        }
    }
}

/// The rank of a service port's claim on a frontend: by kind first, then by [`Rank`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct FrontendRank {
    /// What the frontend is to the port.
    pub(crate) kind: FrontendKind,
    /// The port, by age and name.
    pub(crate) rank: Rank,
}

impl FrontendRank {
    /// Why `self` wins over `loser`.
    pub(crate) fn rule_over(&self, loser: &FrontendRank) -> ConflictRule {
        if self.kind != loser.kind {
            ConflictRule::Precedence
        } else if self.rank.age != loser.rank.age {
            ConflictRule::Older
        } else {
            ConflictRule::Order
        }
    }
}

/// One service port that loses a frontend, and the one that keeps it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Conflict {
    /// The losing port.
    pub(crate) loser: ServicePortName,
    /// What the frontend is to the loser.
    pub(crate) kind: FrontendKind,
    /// The frontend.
    pub(crate) frontend: FrontendKey,
    /// The port that keeps it.
    pub(crate) winner: ServicePortName,
    /// What the frontend is to the winner.
    pub(crate) winner_kind: FrontendKind,
    /// Why.
    pub(crate) rule: ConflictRule,
}

impl Conflict {
    /// The losers of one frontend, best first.
    pub(crate) fn of(frontend: FrontendKey, c: &Contenders<FrontendRank>) -> Vec<Conflict> {
        let w = c.winner();
        c.losers()
            .iter()
            .map(|l| Conflict {
                loser: (*l.rank.owner).clone(),
                kind: l.kind,
                frontend,
                winner: (*w.rank.owner).clone(),
                winner_kind: w.kind,
                rule: w.rule_over(l),
            })
            .collect()
    }

    /// The problem reported for the loser.
    pub(crate) fn problem(&self) -> Problem {
        Problem {
            kind: ObjectKind::Service,
            namespace: self.loser.service.namespace.clone(),
            name: self.loser.service.name.clone(),
            reason: Reason::FrontendConflict {
                port: self.loser.port.clone(),
                kind: self.kind,
                frontend: self.frontend.to_model(),
                winner: Box::new(self.winner.clone()),
                winner_kind: self.winner_kind,
                rule: self.rule,
            },
        }
    }
}

/// The claims on one thing, best first. Almost everything has a single claim, stored inline;
/// the others are boxed so that an uncontested entry stays small.
#[derive(Debug, Clone)]
pub(crate) struct Contenders<T> {
    first: T,
    #[allow(clippy::box_collection)] // a thin pointer: the entry stays small
    rest: Option<Box<Vec<T>>>,
}

impl<T: Ord> Contenders<T> {
    /// A single claim.
    pub(crate) fn new(first: T) -> Contenders<T> {
        Contenders { first, rest: None }
    }

    /// The best claim: the one that is programmed.
    pub(crate) fn winner(&self) -> &T {
        &self.first
    }

    /// The other claims, best first.
    pub(crate) fn losers(&self) -> &[T] {
        self.rest.as_deref().map_or(&[], Vec::as_slice)
    }

    /// Whether more than one claim exists.
    pub(crate) fn is_contested(&self) -> bool {
        self.rest.is_some()
    }

    /// Adds a claim in rank order.
    pub(crate) fn insert(&mut self, claim: T) {
        let rest = self.rest.get_or_insert_with(Default::default);
        if claim < self.first {
            let old = std::mem::replace(&mut self.first, claim);
            rest.insert(0, old);
        } else {
            let pos = rest.partition_point(|c| *c < claim);
            rest.insert(pos, claim);
        }
    }

    /// Removes the first claim `is_it` selects; returns false when no claim is left.
    pub(crate) fn remove(&mut self, is_it: impl Fn(&T) -> bool) -> bool {
        let Some(rest) = self.rest.as_mut() else {
            return !is_it(&self.first);
        };
        if is_it(&self.first) {
            if rest.is_empty() {
                return false;
            }
            self.first = rest.remove(0);
        } else if let Some(pos) = rest.iter().position(&is_it) {
            rest.remove(pos);
        }
        if rest.is_empty() {
            self.rest = None;
        }
        true
    }
}

/// The layer-4 protocol of a service port.
pub(crate) fn l4(p: Protocol) -> L4Proto {
    match p {
        Protocol::Tcp => L4Proto::Tcp,
        Protocol::Udp => L4Proto::Udp,
        Protocol::Sctp => L4Proto::Sctp,
    }
}

/// The external frontend addresses of `svc` in `family` (whose ClusterIP is `cluster_ip`):
/// its external IPs, then its load balancer IPs, without duplicates and without the ClusterIP
/// itself; and apart, the ones refused because they are addresses of the node (`node_addrs`,
/// see [`crate::guard`]), with their field.
pub(crate) fn external_addresses(
    svc: &Service,
    family: IpFamily,
    cluster_ip: IpAddr,
    node_addrs: &[IpAddr],
) -> (Vec<IpAddr>, Vec<(AddressField, IpAddr)>) {
    let mut externals = Vec::new();
    let mut refused = Vec::new();
    for (field, ips) in [
        (AddressField::ExternalIp, &svc.external_ips),
        (AddressField::IngressIp, &svc.load_balancer_ips),
    ] {
        for ip in ips.iter().filter(|ip| IpFamily::of(ip) == family) {
            if node_addrs.contains(ip) {
                refused.push((field, *ip));
            } else if !externals.contains(ip) && *ip != cluster_ip {
                externals.push(*ip);
            }
        }
    }
    (externals, refused)
}

/// The frontends one port of `svc` claims, given the service's ClusterIP and external
/// addresses ([`external_addresses`]): the ClusterIP, each external address (a load balancer
/// IP when it is one, also when it is an external IP too), and the node port.
pub(crate) fn port_frontends(
    svc: &Service,
    port: &ServicePort,
    cluster_ip: IpAddr,
    externals: &[IpAddr],
) -> Vec<(FrontendKey, FrontendKind)> {
    let proto = l4(port.protocol);
    let mut out = Vec::with_capacity(2 + externals.len());
    out.push((
        FrontendKey::Ip(cluster_ip, proto, port.port),
        FrontendKind::ClusterIp,
    ));
    for ip in externals {
        let kind = if svc.load_balancer_ips.contains(ip) {
            FrontendKind::IngressIp
        } else {
            FrontendKind::ExternalIp
        };
        out.push((FrontendKey::Ip(*ip, proto, port.port), kind));
    }
    if let Some(np) = port.node_port {
        out.push((FrontendKey::NodePort(proto, np), FrontendKind::NodePort));
    }
    out
}

/// The rank of a service port's claim on a frontend, for code outside the compiler that must
/// agree with it on who keeps a contested frontend: the lowest rank keeps it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClaimRank(FrontendRank);

impl ClaimRank {
    /// Why this claim keeps the frontend over `loser`.
    pub fn rule_over(&self, loser: &ClaimRank) -> ConflictRule {
        self.0.rule_over(&loser.0)
    }
}

/// One frontend a service port claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedFrontend {
    /// The index of the port in `Service::ports`.
    pub port: usize,
    /// The frontend.
    pub frontend: Frontend,
    /// What the frontend is to the port.
    pub kind: FrontendKind,
    /// The claim's rank among every claim on the same frontend.
    pub rank: ClaimRank,
}

/// Every frontend `svc` claims in `family` on a node with the addresses `node_addrs` (see
/// [`crate::guard::node_addresses`]), exactly as the compiler claims them: nothing for a
/// service without a ClusterIP of the family or refused for its ClusterIP, and no external or
/// load balancer IP that is one of the node's addresses.
pub fn claimed_frontends(
    svc: &Service,
    family: IpFamily,
    node_addrs: &[IpAddr],
) -> Vec<ClaimedFrontend> {
    let Some(cluster_ip) = svc.cluster_ip(family) else {
        return Vec::new();
    };
    if crate::guard::refused_cluster_ip(svc, node_addrs).is_some() {
        return Vec::new();
    }
    let (externals, _) = external_addresses(svc, family, cluster_ip, node_addrs);
    let mut out = Vec::new();
    for (i, p) in svc.ports.iter().enumerate() {
        let owner = Arc::new(svc.port_name(p));
        for (fe, kind) in port_frontends(svc, p, cluster_ip, &externals) {
            out.push(ClaimedFrontend {
                port: i,
                frontend: fe.to_model(),
                kind,
                rank: ClaimRank(FrontendRank {
                    kind,
                    rank: Rank::new(svc, owner.clone()),
                }),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contenders_keep_rank_order_and_report_emptiness() {
        let mut c = Contenders::new(5);
        c.insert(3);
        c.insert(9);
        c.insert(4);
        assert_eq!((*c.winner(), c.losers()), (3, &[4, 5, 9][..]));
        assert!(c.remove(|x| *x == 3));
        assert_eq!((*c.winner(), c.losers()), (4, &[5, 9][..]));
        assert!(c.remove(|x| *x == 9));
        assert!(c.remove(|x| *x == 5));
        assert!(c.losers().is_empty());
        assert!(!c.remove(|x| *x == 4));
    }

    #[test]
    fn older_services_rank_first_and_a_missing_time_ranks_last() {
        let port = |ns: &str| {
            Arc::new(ServicePortName {
                service: rudder_model::ServiceKey::new(ns, "s"),
                port: String::new(),
                protocol: rudder_model::Protocol::Tcp,
            })
        };
        let svc = |t: Option<i64>| {
            let mut s = Service::new(rudder_model::ServiceKey::new("ns", "s"), vec![]);
            s.creation_timestamp = t;
            s
        };
        let old_b = Rank::new(&svc(Some(100)), port("b"));
        let new_a = Rank::new(&svc(Some(200)), port("a"));
        let none_a = Rank::new(&svc(None), port("a"));
        let none_b = Rank::new(&svc(None), port("b"));
        assert!(old_b < new_a);
        assert!(new_a < none_a);
        assert!(none_a < none_b);
    }
}
