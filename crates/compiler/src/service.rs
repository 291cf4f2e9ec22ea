//! Compilation of one service into its claims on set and map elements.

use std::net::IpAddr;
use std::sync::Arc;

use rudder_model::{IpFamily, Protocol, ProxyState, ResolvedEndpoint, Service};
use rudder_nft::{Atom, Key, L4Proto, Verdict};
use rustc_hash::FxHashMap;

use crate::layout::{Class, SetId, n, names};
use crate::policy::categorize;
use crate::{Ctx, Fragment};

fn l4(p: Protocol) -> L4Proto {
    match p {
        Protocol::Tcp => L4Proto::Tcp,
        Protocol::Udp => L4Proto::Udp,
        Protocol::Sctp => L4Proto::Sctp,
    }
}

fn endpoint_value(ep: &ResolvedEndpoint<'_>) -> Key {
    Key::new([Atom::ip(ep.endpoint.address), Atom::Port(ep.port)])
}

/// Compiles `svc` for one family.
///
/// Per port, with endpoints:
/// - `cluster-ips` gets the ClusterIP;
/// - `service-ips` maps `clusterIP . proto . port` to `goto cluster-N`, and every external
///   and load balancer IP to `goto external-N` (which marks for masquerade first);
/// - `service-nodeports` maps `proto . nodePort` to `goto nodeport-N`;
/// - `cluster-endpoints-N` / `nodeport-endpoints-N` map `frontend . i` to the i-th endpoint;
/// - `hairpin-connections` gets the endpoints on this node.
///
/// Without usable endpoints, the same frontends go to `no-endpoint-services` /
/// `no-endpoint-nodeports` with `goto reject-chain`, and nothing is DNATed.
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

pub(crate) fn compile(
    family: IpFamily,
    state: &ProxyState,
    svc: &Service,
    ctx: &Ctx,
    prev: Option<&PrevSlots>,
) -> Fragment {
    let mut frag = Fragment::default();
    let Some(cluster_ip) = svc.cluster_ip(family) else {
        return frag;
    };
    let mut externals: Vec<IpAddr> = Vec::new();
    for ip in svc.external_ips.iter().chain(&svc.load_balancer_ips) {
        if IpFamily::of(ip) == family && !externals.contains(ip) && *ip != cluster_ip {
            externals.push(*ip);
        }
    }
    for port in &svc.ports {
        let owner = Arc::new(svc.port_name(port));
        let proto = l4(port.protocol);
        let frontend = |ip: IpAddr| [Atom::ip(ip), Atom::Proto(proto), Atom::Port(port.port)];
        let mut claim = |set: SetId, key: Key, value: Option<Key>| {
            frag.claims.push((set, key, owner.clone(), value));
        };
        claim(SetId::ClusterIps, Key::new([Atom::ip(cluster_ip)]), None);

        let endpoints = state.endpoints_for(svc, port, family);
        let cat = categorize(svc, &endpoints, &ctx.node.name);
        let eps = &cat.cluster;
        if eps.is_empty() {
            let reject = Some(Key::verdict(Verdict::Goto(n(names::REJECT_CHAIN))));
            claim(
                SetId::NoEndpointServices,
                Key::new(frontend(cluster_ip)),
                reject.clone(),
            );
            for ip in &externals {
                claim(
                    SetId::NoEndpointServices,
                    Key::new(frontend(*ip)),
                    reject.clone(),
                );
            }
            if let Some(np) = port.node_port {
                claim(
                    SetId::NoEndpointNodeports,
                    Key::new([Atom::Proto(proto), Atom::Port(np)]),
                    reject,
                );
            }
            continue;
        }

        // Endpoint counts are bounded by the number of endpoints in the state, which fits
        // in u32 on every platform Rudder runs on.
        let count = u32::try_from(eps.len()).unwrap_or(u32::MAX);
        let cluster = Class::Cluster(count);
        claim(
            SetId::ServiceIps,
            Key::new(frontend(cluster_ip)),
            Some(cluster.verdict()),
        );
        // One shared value per endpoint, whatever the number of frontends.
        let values: Vec<Key> = eps.iter().map(|ep| endpoint_value(ep)).collect();
        let slots = |set: SetId, prefix: &[Atom]| {
            assign_slots(&values, prev.and_then(|p| p.get(&(set, prefix.to_vec()))))
        };
        let per_frontend = |claim: &mut dyn FnMut(SetId, Key, Option<Key>),
                            [a, p, n]: [Atom; 3]| {
            let set = SetId::ClusterEndpoints(count);
            let assigned = slots(set, &[a.clone(), p.clone(), n.clone()]);
            for (i, v) in assigned.into_iter().enumerate() {
                let key = Key::new([a.clone(), p.clone(), n.clone(), Atom::Int(i as u32)]);
                claim(set, key, Some(v));
            }
        };
        per_frontend(&mut claim, frontend(cluster_ip));
        frag.classes.insert(cluster);
        if !externals.is_empty() {
            let external = Class::External(count);
            let verdict = external.verdict();
            for ip in &externals {
                claim(
                    SetId::ServiceIps,
                    Key::new(frontend(*ip)),
                    Some(verdict.clone()),
                );
                per_frontend(&mut claim, frontend(*ip));
            }
            frag.classes.insert(external);
        }
        if let Some(np) = port.node_port {
            let class = Class::NodePort(count);
            claim(
                SetId::ServiceNodeports,
                Key::new([Atom::Proto(proto), Atom::Port(np)]),
                Some(class.verdict()),
            );
            let set = SetId::NodeportEndpoints(count);
            let assigned = slots(set, &[Atom::Proto(proto), Atom::Port(np)]);
            for (i, v) in assigned.into_iter().enumerate() {
                let key = Key::new([Atom::Proto(proto), Atom::Port(np), Atom::Int(i as u32)]);
                claim(set, key, Some(v));
            }
            frag.classes.insert(class);
        }
        for ep in eps
            .iter()
            .filter(|e| e.endpoint.node_name.as_deref() == Some(ctx.node.name.as_str()))
        {
            let key = Key::new([
                Atom::ip(ep.endpoint.address),
                Atom::ip(ep.endpoint.address),
                Atom::Proto(proto),
                Atom::Port(ep.port),
            ]);
            claim(SetId::Hairpin, key, None);
        }
    }
    frag
}
