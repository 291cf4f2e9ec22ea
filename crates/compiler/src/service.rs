//! Compilation of one service into its claims on set and map elements.

use std::net::IpAddr;
use std::sync::Arc;

use rudder_model::{
    AddressField, Cidr, IpFamily, ObjectKind, Problem, ProxyState, Reason, ResolvedEndpoint,
    Service, TrafficPolicy,
};
use rudder_nft::{Atom, Key, Verdict};
use rustc_hash::FxHashMap;

use crate::affinity;
use crate::conflict::{self, FrontendRank, Rank};
use crate::guard::{node_address_problem, refused_cluster_ip};
use crate::layout::{Class, SetId, n, names};
use crate::policy::categorize;
use crate::{Ctx, Fragment, NameLosers};

fn endpoint_value(ep: &ResolvedEndpoint<'_>) -> Key {
    Key::new([Atom::ip(ep.endpoint.address), Atom::Port(ep.port)])
}

/// The endpoint slots a service had, per endpoint map and frontend (the key without its
/// slot number): `values[i]` was in slot `i`.
pub(crate) type PrevSlots = FxHashMap<(SetId, Vec<Atom>), Vec<Key>>;

/// Orders `values` (sorted) into slots, keeping every value that was already in a slot of the
/// same frontend in that slot, so replacing one endpoint changes one element. Without a
/// previous assignment of the same size, the sorted order is used.
fn assign_slots(values: &[Key], prev: Option<&Vec<Key>>) -> Vec<Key> {
    let Some(prev) = prev.filter(|p| p.len() == values.len()) else {
        return values.to_vec();
    };
    let mut slots: Vec<Option<Key>> = vec![None; values.len()];
    let mut left: Vec<&Key> = Vec::new();
    for v in values {
        match prev.iter().position(|p| p == v) {
            Some(i) => slots[i] = Some(v.clone()),
            None => left.push(v),
        }
    }
    let mut left = left.into_iter();
    slots
        .into_iter()
        .map(|s| s.or_else(|| left.next().cloned()))
        .map(|s| s.unwrap_or_else(|| values[0].clone()))
        .collect()
}

/// The session affinity identities ([`affinity::port_id`]) of `svc`'s ports in `family`, with
/// their ranks: every port of a service with ClientIP affinity that [`compile`] programs in
/// this family (whether or not it has endpoints right now).
pub(crate) fn affinity_ids(family: IpFamily, svc: &Service, ctx: &Ctx) -> Vec<(u128, Rank)> {
    if svc.session_affinity_timeout.is_none()
        || svc.cluster_ip(family).is_none()
        || refused_cluster_ip(svc, &ctx.node_addrs).is_some()
    {
        return Vec::new();
    }
    svc.ports
        .iter()
        .map(|p| {
            let owner = Arc::new(svc.port_name(p));
            (affinity::port_id(family, &owner), Rank::new(svc, owner))
        })
        .collect()
}

/// Compiles `svc` for one family, following kube-proxy's `syncProxyRules` decisions.
///
/// Per port, with cluster endpoints N and local endpoints L (see [`categorize`]):
/// - `cluster-ips` gets the ClusterIP;
/// - the ClusterIP goes to `cluster-N` (or `local-L` with `internalTrafficPolicy: Local`);
/// - external and load balancer IPs go to `external-N` (masquerade, then all endpoints), or
///   with `externalTrafficPolicy: Local` to `external-local-N-L`;
/// - node ports likewise to `nodeport-N` or `nodeport-external-local-N-L`;
/// - the endpoint maps of those classes get each frontend's endpoints by slot;
/// - `hairpin-connections` gets the endpoints on this node.
///
/// Without any usable endpoint, every frontend goes to `no-endpoint-services` /
/// `no-endpoint-nodeports` with `goto reject-chain`. With endpoints elsewhere but none on this
/// node, frontends under a `Local` policy get `drop` there instead (pods and the node itself
/// still reach external frontends through the short-circuit rules).
///
/// Service addresses that are the node's own are refused (see [`crate::guard`]): a ClusterIP
/// refuses the whole service, in every family (reported by the `primary` family's compile
/// only); an external or load balancer IP only that frontend.
///
/// A port in `name_losers` (its affinity objects would have the names of a better-ranked
/// port's) is not programmed at all.
pub(crate) fn compile(
    family: IpFamily,
    primary: bool,
    state: &ProxyState,
    svc: &Service,
    ctx: &Ctx,
    name_losers: &NameLosers,
    prev: Option<&PrevSlots>,
) -> Fragment {
    let mut frag = Fragment::default();
    let Some(cluster_ip) = svc.cluster_ip(family) else {
        return frag;
    };
    if let Some(ip) = refused_cluster_ip(svc, &ctx.node_addrs) {
        if primary {
            frag.problems
                .push(node_address_problem(svc, AddressField::ClusterIp, ip));
        }
        return frag;
    }
    let (externals, refused_fields) =
        conflict::external_addresses(svc, family, cluster_ip, &ctx.node_addrs);
    let mut refused: Vec<IpAddr> = Vec::new();
    for (field, ip) in refused_fields {
        frag.problems.push(node_address_problem(svc, field, ip));
        refused.push(ip);
    }
    let internal_local = svc.internal_traffic_policy == TrafficPolicy::Local;
    let external_local = svc.external_traffic_policy == TrafficPolicy::Local;
    for port in &svc.ports {
        let owner = Arc::new(svc.port_name(port));
        if svc.session_affinity_timeout.is_some() {
            if let Some((_, winner)) = name_losers.get(&*owner) {
                frag.problems.push(Problem {
                    kind: ObjectKind::Service,
                    namespace: svc.key.namespace.clone(),
                    name: svc.key.name.clone(),
                    reason: Reason::ObjectNameCollision {
                        port: port.name.clone(),
                        winner: Box::new((**winner).clone()),
                    },
                });
                continue;
            }
        }
        let proto = conflict::l4(port.protocol);
        // The frontends this port claims: whoever ranks first on one keeps it (see
        // `conflict`), whatever this port's endpoints.
        for (fe, kind) in conflict::port_frontends(svc, port, cluster_ip, &externals) {
            frag.frontends.push((
                fe,
                FrontendRank {
                    kind,
                    rank: Rank::new(svc, owner.clone()),
                },
            ));
        }
        let frontend = |ip: IpAddr| [Atom::ip(ip), Atom::Proto(proto), Atom::Port(port.port)];
        let node_port_key = |np: u16| [Atom::Proto(proto), Atom::Port(np)];
        let mut claims: Vec<(SetId, Key, Option<Key>)> = Vec::new();
        let mut claim = |set: SetId, key: Key, value: Option<Key>| claims.push((set, key, value));
        claim(SetId::ClusterIps, Key::new([Atom::ip(cluster_ip)]), None);
        // Every node port, for the loopback rules (see `layout::skeleton`).
        let loopback_rules =
            ctx.config.localhost_gate || ctx.config.localhost_node_ports.contains(&family);
        if let (Some(np), true) = (port.node_port, loopback_rules) {
            claim(SetId::NodePorts, Key::new(node_port_key(np)), None);
        }

        let endpoints = state.endpoints_for(svc, port, family);
        let cat = categorize(svc, &endpoints, &ctx.node.name, ctx.node.zone.as_deref());
        let reject = || Some(Key::verdict(Verdict::Goto(n(names::REJECT_CHAIN))));
        let drop = || Some(Key::verdict(Verdict::Drop));
        if !cat.has_any {
            claim(
                SetId::NoEndpointServices,
                Key::new(frontend(cluster_ip)),
                reject(),
            );
            for ip in &externals {
                claim(SetId::NoEndpointServices, Key::new(frontend(*ip)), reject());
            }
            if let Some(np) = port.node_port {
                claim(
                    SetId::NoEndpointNodeports,
                    Key::new(node_port_key(np)),
                    reject(),
                );
            }
            frag.claims
                .extend(claims.into_iter().map(|(s, k, v)| (s, k, owner.clone(), v)));
            continue;
        }

        // Counts are bounded by the endpoints in the state, which fit in u32.
        let count = |v: &[_]| u32::try_from(v.len()).unwrap_or(u32::MAX);
        let (n_cluster, n_local) = (count(&cat.cluster), count(&cat.local));
        if n_local == 0 {
            if internal_local {
                frag.no_local[0] += 1;
            }
            if external_local && svc.externally_accessible() {
                frag.no_local[1] += 1;
            }
        }
        // One shared value per endpoint, whatever the number of frontends.
        let cluster_values: Vec<Key> = cat.cluster.iter().map(endpoint_value).collect();
        let local_values: Vec<Key> = cat.local.iter().map(endpoint_value).collect();
        let slots = |set: SetId, prefix: &[Atom], values: &[Key]| {
            assign_slots(values, prev.and_then(|p| p.get(&(set, prefix.to_vec()))))
        };
        let fill = |claim: &mut dyn FnMut(SetId, Key, Option<Key>),
                    set: SetId,
                    prefix: &[Atom],
                    values: &[Key]| {
            for (i, v) in slots(set, prefix, values).into_iter().enumerate() {
                let mut key = prefix.to_vec();
                key.push(Atom::Int(i as u32));
                claim(set, Key::new(key), Some(v));
            }
        };

        if let Some(timeout) = svc.session_affinity_timeout {
            // Session affinity: per-service chains and sets instead of the shared classes.
            let targets = affinity::build(
                family,
                &owner,
                proto,
                &cat,
                timeout,
                external_local,
                ctx,
                &mut frag.objects,
            );
            let goto_chain = |c: &rudder_nft::Name| Some(Key::verdict(Verdict::Goto(c.clone())));
            let fe = frontend(cluster_ip);
            match if internal_local {
                &targets.local
            } else {
                &targets.cluster
            } {
                Some(chain) => claim(SetId::ServiceIps, Key::new(fe), goto_chain(chain)),
                None if internal_local => claim(SetId::NoEndpointServices, Key::new(fe), drop()),
                None => {}
            }
            if let Some(ext) = &targets.external {
                for ip in &externals {
                    claim(SetId::ServiceIps, Key::new(frontend(*ip)), goto_chain(ext));
                    if external_local && n_local == 0 {
                        claim(SetId::NoEndpointServices, Key::new(frontend(*ip)), drop());
                    }
                }
                if let Some(np) = port.node_port {
                    claim(
                        SetId::ServiceNodeports,
                        Key::new(node_port_key(np)),
                        goto_chain(ext),
                    );
                    if external_local && n_local == 0 {
                        claim(
                            SetId::NoEndpointNodeports,
                            Key::new(node_port_key(np)),
                            drop(),
                        );
                    }
                }
            }
        } else {
            // The ClusterIP.
            let fe = frontend(cluster_ip);
            if internal_local {
                if n_local > 0 {
                    claim(
                        SetId::ServiceIps,
                        Key::new(fe.clone()),
                        Some(Class::Local(n_local).verdict()),
                    );
                    fill(
                        &mut claim,
                        SetId::LocalEndpoints(n_local),
                        &fe,
                        &local_values,
                    );
                    frag.classes.insert(Class::Local(n_local));
                } else {
                    claim(SetId::NoEndpointServices, Key::new(fe.clone()), drop());
                }
            } else if n_cluster > 0 {
                claim(
                    SetId::ServiceIps,
                    Key::new(fe.clone()),
                    Some(Class::Cluster(n_cluster).verdict()),
                );
                fill(
                    &mut claim,
                    SetId::ClusterEndpoints(n_cluster),
                    &fe,
                    &cluster_values,
                );
                frag.classes.insert(Class::Cluster(n_cluster));
            }

            // External and load balancer IPs, and the node port. Cluster endpoints exist whenever
            // the service is externally accessible and has endpoints anywhere.
            if n_cluster > 0 {
                let (ext_class, np_class) = if external_local {
                    (
                        Class::ExternalLocal(n_cluster, n_local),
                        Class::NodePortExternalLocal(n_cluster, n_local),
                    )
                } else {
                    (Class::External(n_cluster), Class::NodePort(n_cluster))
                };
                for ip in &externals {
                    let fe = frontend(*ip);
                    claim(
                        SetId::ServiceIps,
                        Key::new(fe.clone()),
                        Some(ext_class.verdict()),
                    );
                    fill(
                        &mut claim,
                        SetId::ClusterEndpoints(n_cluster),
                        &fe,
                        &cluster_values,
                    );
                    if external_local {
                        if n_local > 0 {
                            fill(
                                &mut claim,
                                SetId::LocalEndpoints(n_local),
                                &fe,
                                &local_values,
                            );
                        } else {
                            claim(SetId::NoEndpointServices, Key::new(fe), drop());
                        }
                    }
                }
                if !externals.is_empty() {
                    frag.classes.extend(ext_class.with_dependencies());
                }
                if let Some(np) = port.node_port {
                    let key = node_port_key(np);
                    claim(
                        SetId::ServiceNodeports,
                        Key::new(key.clone()),
                        Some(np_class.verdict()),
                    );
                    fill(
                        &mut claim,
                        SetId::NodeportEndpoints(n_cluster),
                        &key,
                        &cluster_values,
                    );
                    if external_local {
                        if n_local > 0 {
                            fill(
                                &mut claim,
                                SetId::NodeportLocalEndpoints(n_local),
                                &key,
                                &local_values,
                            );
                        } else {
                            claim(SetId::NoEndpointNodeports, Key::new(key), drop());
                        }
                    }
                    frag.classes.extend(np_class.with_dependencies());
                }
            }
        }

        // loadBalancerSourceRanges: only load balancer IPs are filtered (not node ports, not
        // external IPs), before DNAT. A range covering everything means no filtering; when the
        // node's own IP is in a range, the load balancer IPs themselves are allowed too (for
        // load balancers that deliver with the VIP as source).
        let lb_ips: Vec<IpAddr> = svc
            .load_balancer_ips
            .iter()
            .copied()
            .filter(|ip| IpFamily::of(ip) == family && !refused.contains(ip))
            .collect();
        if let Some(sources) = allowed_sources(svc, family, &ctx.node.ips, &lb_ips) {
            for lb in &lb_ips {
                let fe = frontend(*lb);
                claim(SetId::FirewallIps, Key::new(fe.clone()), None);
                for src in &sources {
                    let mut key = fe.to_vec();
                    key.push(Atom::Prefix(src.addr(), src.prefix_len()));
                    claim(SetId::FirewallAllow, Key::new(key), None);
                }
            }
        }

        // Hairpin: every endpoint on this node that any of the frontends may pick.
        let mut hairpin: Vec<&ResolvedEndpoint<'_>> =
            cat.cluster.iter().chain(&cat.local).collect();
        hairpin.sort_by_key(|e| (e.endpoint.address, e.port));
        hairpin.dedup_by_key(|e| (e.endpoint.address, e.port));
        for ep in hairpin
            .into_iter()
            .filter(|e| e.endpoint.node_name.as_deref() == Some(ctx.node.name.as_str()))
        {
            let ip = Atom::ip(ep.endpoint.address);
            claim(
                SetId::Hairpin,
                Key::new([ip.clone(), ip, Atom::Proto(proto), Atom::Port(ep.port)]),
                None,
            );
        }
        frag.claims
            .extend(claims.into_iter().map(|(s, k, v)| (s, k, owner.clone(), v)));
    }
    frag
}

/// The sources `loadBalancerSourceRanges` lets reach the load balancer IPs `lb_ips` of `svc`
/// in `family`, as disjoint prefixes (elements of one interval set must not overlap: the
/// kernel refuses the whole batch with `File exists`); `None` when the service is not
/// filtered in this family (no range, or one covering everything). When one of the node's own
/// addresses is in a range, the load balancer IPs themselves are allowed too, for load
/// balancers that deliver with the VIP as source (kube-proxy does the same).
pub fn allowed_sources(
    svc: &Service,
    family: IpFamily,
    node_ips: &[IpAddr],
    lb_ips: &[IpAddr],
) -> Option<Vec<Cidr>> {
    let ranges: Vec<&Cidr> = svc
        .load_balancer_source_ranges
        .iter()
        .filter(|c| IpFamily::of(&c.addr()) == family)
        .collect();
    if ranges.is_empty() || ranges.iter().any(|c| c.is_all()) {
        return None;
    }
    let node_in_range = node_ips
        .iter()
        .any(|ip| ranges.iter().any(|c| c.contains(ip)));
    let hosts = lb_ips
        .iter()
        .filter(|_| node_in_range)
        .map(|ip| Cidr::host(*ip));
    Some(Cidr::minimal(ranges.iter().map(|c| **c).chain(hosts)))
}
