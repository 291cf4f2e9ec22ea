//! The IPVS compiler against kube-proxy's IPVS semantics, and incremental ≡ full.

#[path = "../../compiler/tests/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use common::arb::arb_state;
use common::{endpoint, ip, node, port, service, slice, state};
use proptest::prelude::*;
use rudder_compiler::NodeContext;
use rudder_compiler::NodePortIps;
use rudder_model::{
    FrontendKind, IpFamily, Protocol, ProxyState, Reason, ServiceKey, TrafficPolicy,
};
use table::{SetKind, TableConfig};

use super::*;

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("test socket address")
}

fn tcp(s: &str) -> VsKey {
    VsKey::tcp(sa(s))
}

fn compiler(node: NodeContext) -> IpvsCompiler {
    IpvsCompiler::new(&[IpFamily::V4, IpFamily::V6], Options::default(), node)
}

fn reals(t: &Target, key: &VsKey) -> Vec<String> {
    t.servers
        .get(key)
        .map(|s| s.real.keys().map(|a| a.to_string()).collect())
        .unwrap_or_default()
}

/// A web service: ClusterIP 10.96.0.10:80, node port 30080, external IP 203.0.113.7, load
/// balancer IP 192.0.2.50, endpoints on node-a (local) and node-b.
fn web() -> ProxyState {
    let mut s = service("ns", "web", &["10.96.0.10"]);
    s.ports = vec![port("http", Protocol::Tcp, 80, Some(30080))];
    s.external_ips = vec![ip("203.0.113.7")];
    s.load_balancer_ips = vec![ip("192.0.2.50")];
    let sl = slice(
        "ns",
        "web-1",
        "web",
        IpFamily::V4,
        &[("http", Protocol::Tcp, 8080)],
        vec![
            endpoint("10.244.1.5", true, "node-a"),
            endpoint("10.244.2.5", true, "node-b"),
            endpoint("10.244.2.6", false, "node-b"),
        ],
    );
    state(vec![s], vec![sl])
}

#[test]
fn every_frontend_is_a_virtual_server_and_only_vips_are_bound() {
    let mut c = compiler(node("node-a", &["172.18.0.2"]));
    let st = web();
    let t = c.full(&st).clone();
    let keys: Vec<String> = t
        .servers
        .keys()
        .map(|k| match k {
            VsKey::Addr { addr, .. } => addr.to_string(),
            VsKey::Fwmark { .. } => "fwmark".into(),
        })
        .collect();
    assert_eq!(
        keys,
        [
            "10.96.0.10:80",
            "172.18.0.2:30080",
            "192.0.2.50:80",
            "203.0.113.7:80"
        ]
    );
    let bound: Vec<String> = t.addresses.iter().map(|a| a.to_string()).collect();
    assert_eq!(bound, ["10.96.0.10", "192.0.2.50", "203.0.113.7"]);
    // Ready endpoints only, weight 1, on every frontend.
    for k in t.servers.keys() {
        assert_eq!(
            reals(&t, k),
            ["10.244.1.5:8080", "10.244.2.5:8080"],
            "{k:?}"
        );
        assert!(t.servers[k].real.values().all(|w| *w == 1));
        assert_eq!(t.servers[k].service.scheduler, Scheduler::RoundRobin);
        assert_eq!(t.servers[k].service.persistence, None);
    }
    assert!(!t.servers[&tcp("172.18.0.2:30080")].bind);
}

/// The node ports' virtual-server addresses of a compile.
fn node_port_servers(t: &Target) -> Vec<String> {
    t.servers
        .keys()
        .filter_map(|k| match k {
            VsKey::Addr { addr, .. } if addr.port() == 30080 => Some(addr.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn all_node_port_addresses_are_the_listed_local_addresses() {
    let st = web();
    let mut ctx = NodeContext::new("node-a".into(), NodePortIps::All);
    ctx.ips = vec![ip("172.18.0.2")];
    // Nothing listed (offline): the node's primary IP stands in.
    let t = compiler(ctx.clone()).full(&st).clone();
    assert_eq!(node_port_servers(&t), ["172.18.0.2:30080"]);
    // Listed: every local address, per family, loopback never (it cannot be DNATed).
    ctx.local_ips = vec![
        ip("10.0.0.5"),
        ip("172.18.0.2"),
        ip("127.0.0.1"),
        ip("fd00:18::2"),
    ];
    let t = compiler(ctx.clone()).full(&st).clone();
    assert_eq!(
        node_port_servers(&t),
        ["10.0.0.5:30080", "172.18.0.2:30080"]
    );
    // The primary IP only matters through the list when it is listed.
    ctx.local_ips = vec![ip("10.0.0.5")];
    let t = compiler(ctx.clone()).full(&st).clone();
    assert_eq!(node_port_servers(&t), ["10.0.0.5:30080"]);
    // Only(..) ignores the list.
    ctx.node_port_ips = NodePortIps::Only(vec![ip("172.18.0.2")]);
    let t = compiler(ctx).full(&st).clone();
    assert_eq!(node_port_servers(&t), ["172.18.0.2:30080"]);
}

#[test]
fn local_policies_pick_local_endpoints_and_fall_back_to_all() {
    let mut st = web();
    let mut s = st.service(&ServiceKey::new("ns", "web")).unwrap().clone();
    s.external_traffic_policy = TrafficPolicy::Local;
    st.upsert_service(s.clone());
    let mut c = compiler(node("node-a", &["172.18.0.2"]));
    let t = c.full(&st).clone();
    // The ClusterIP follows the internal policy (Cluster): every endpoint.
    assert_eq!(reals(&t, &tcp("10.96.0.10:80")).len(), 2);
    // External frontends: the local endpoint only.
    for k in ["172.18.0.2:30080", "192.0.2.50:80", "203.0.113.7:80"] {
        assert_eq!(reals(&t, &tcp(k)), ["10.244.1.5:8080"], "{k}");
    }
    // On a node without local endpoints, kube-proxy keeps the cluster endpoints
    // (kubernetes#97081).
    let mut c = compiler(node("node-c", &["172.18.0.3"]));
    let t = c.full(&st).clone();
    assert_eq!(reals(&t, &tcp("172.18.0.3:30080")).len(), 2);
    // Internal Local: the ClusterIP too.
    s.internal_traffic_policy = TrafficPolicy::Local;
    st.upsert_service(s);
    let mut c = compiler(node("node-a", &["172.18.0.2"]));
    let t = c.full(&st).clone();
    assert_eq!(reals(&t, &tcp("10.96.0.10:80")), ["10.244.1.5:8080"]);
}

#[test]
fn client_ip_affinity_is_persistence_and_mh_gets_its_port_flag() {
    let mut st = web();
    let mut s = st.service(&ServiceKey::new("ns", "web")).unwrap().clone();
    s.session_affinity_timeout = Some(600);
    st.upsert_service(s);
    let mut c = IpvsCompiler::new(
        &[IpFamily::V4],
        Options {
            scheduler: Scheduler::MaglevHashing,
            ..Options::default()
        },
        node("node-a", &["172.18.0.2"]),
    );
    let t = c.full(&st).clone();
    let vs = &t.servers[&tcp("10.96.0.10:80")].service;
    assert_eq!(
        vs.persistence.map(|p| (p.timeout, p.prefix_len)),
        Some((600, 32))
    );
    assert!(vs.flags.sched2 && !vs.flags.sched1);
    assert_eq!(vs.scheduler.name(), "mh");
}

#[test]
fn a_clusterip_that_is_the_nodes_address_is_refused_and_reported() {
    let mut s = service("ns", "evil", &["172.18.0.2"]);
    s.ports = vec![port("p", Protocol::Tcp, 22, None)];
    let st = state(vec![s], vec![]);
    let mut c = compiler(node("node-a", &["172.18.0.2"]));
    assert!(c.full(&st).servers.is_empty());
    let labels: Vec<&str> = c.take_problems().iter().map(|p| p.reason.label()).collect();
    assert_eq!(labels, ["cluster_ip_is_node_ip"]);
    assert!(c.refuses(st.service(&ServiceKey::new("ns", "evil")).unwrap()));
}

#[test]
fn the_clusterip_wins_over_an_external_ip_that_repeats_it() {
    let mut st = web();
    let mut other = service("ns", "thief", &["10.96.0.99"]);
    other.ports = vec![port("http", Protocol::Tcp, 80, None)];
    other.external_ips = vec![ip("10.96.0.10")];
    st.upsert_service(other);
    st.upsert_slice(slice(
        "ns",
        "thief-1",
        "thief",
        IpFamily::V4,
        &[("http", Protocol::Tcp, 9090)],
        vec![endpoint("10.244.9.9", true, "node-b")],
    ));
    st.take_dirty();
    let mut c = compiler(node("node-a", &["172.18.0.2"]));
    let t = c.full(&st).clone();
    assert_eq!(
        reals(&t, &tcp("10.96.0.10:80")),
        ["10.244.1.5:8080", "10.244.2.5:8080"]
    );
    let problems = c.take_problems();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].name, "thief");
    assert_eq!(problems[0].reason.label(), "frontend_conflict");
}

#[test]
fn one_endpoint_change_is_one_add_and_one_graceful_retire() {
    let mut st = web();
    let mut c = compiler(node("node-a", &["172.18.0.2"]));
    c.full(&st);
    st.upsert_slice(slice(
        "ns",
        "web-1",
        "web",
        IpFamily::V4,
        &[("http", Protocol::Tcp, 8080)],
        vec![
            endpoint("10.244.1.5", true, "node-a"),
            endpoint("10.244.2.7", true, "node-b"),
        ],
    ));
    let changed = st.take_dirty();
    let ops = c.update(&st, &changed);
    // Four frontends, each +1 / −1 real server; nothing else.
    assert_eq!(ops.len(), 8, "{ops:#?}");
    let adds = ops
        .iter()
        .filter(|o| matches!(o, Op::AddReal(_, a) if *a == sa("10.244.2.7:8080")))
        .count();
    let retires = ops
        .iter()
        .filter(|o| matches!(o, Op::Retire(_, a) if *a == sa("10.244.2.5:8080")))
        .count();
    assert_eq!((adds, retires), (4, 4));
    // Adds come before retires: a frontend never has fewer real servers than needed.
    let first_retire = ops.iter().position(|o| matches!(o, Op::Retire(..)));
    let last_add = ops.iter().rposition(|o| matches!(o, Op::AddReal(..)));
    assert!(last_add < first_retire);
    // Nothing changed: nothing to do.
    assert!(c.update(&st, &changed).is_empty());
}

#[test]
fn deleting_the_service_deletes_its_servers_and_unbinds_last() {
    let mut st = web();
    let mut c = compiler(node("node-a", &["172.18.0.2"]));
    c.full(&st);
    st.remove_service(&ServiceKey::new("ns", "web"));
    let changed = st.take_dirty();
    let ops = c.update(&st, &changed);
    let dels = ops
        .iter()
        .filter(|o| matches!(o, Op::DelService(_)))
        .count();
    let unbinds: Vec<&Op> = ops.iter().filter(|o| matches!(o, Op::Unbind(_))).collect();
    assert_eq!((dels, unbinds.len()), (4, 3));
    assert!(matches!(ops.last(), Some(Op::Unbind(_))));
    assert!(c.target().servers.is_empty() && c.target().addresses.is_empty());
}

#[test]
fn diff_repairs_what_the_kernel_lost_and_leaves_draining_servers_alone() {
    let st = web();
    let mut c = compiler(node("node-a", &["172.18.0.2"]));
    let want = c.full(&st).clone();
    assert!(diff(&want, &want).is_empty());
    let mut have = want.clone();
    let k = tcp("10.96.0.10:80");
    // Someone deleted one real server, added one, and unbound an address.
    if let Some(s) = have.servers.get_mut(&k) {
        s.real.remove(&sa("10.244.1.5:8080"));
        s.real.insert(sa("10.244.7.7:80"), 1);
        // A server being drained (weight 0) that is not wanted stays as it is.
        s.real.insert(sa("10.244.8.8:80"), 0);
    }
    have.addresses.remove(&ip("192.0.2.50"));
    let ops = diff(&have, &want);
    assert_eq!(
        ops,
        [
            Op::Bind(ip("192.0.2.50")),
            Op::AddReal(k, sa("10.244.1.5:8080")),
            Op::Retire(k, sa("10.244.7.7:80")),
        ]
    );
}

#[test]
fn conflicts_name_the_frontend_both_kinds_and_every_loser() {
    // `web` has 10.96.0.10:80; two others repeat it as an external IP (each with a ClusterIP
    // and a node port of its own, so the reports must pick the contested claim).
    let mut st = web();
    for (name, cip, np) in [
        ("thief-a", "10.96.0.98", 30098),
        ("thief-b", "10.96.0.99", 30099),
    ] {
        let mut s = service("ns", name, &[cip]);
        s.ports = vec![port("http", Protocol::Tcp, 80, Some(np))];
        s.external_ips = vec![ip("10.96.0.10")];
        st.upsert_service(s);
    }
    st.take_dirty();
    let mut c = compiler(node("node-a", &["172.18.0.2"]));
    c.full(&st);
    let mut problems = c.take_problems();
    problems.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<&str> = problems.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["thief-a", "thief-b"]);
    for p in &problems {
        let Reason::FrontendConflict {
            kind,
            frontend,
            winner,
            winner_kind,
            ..
        } = &p.reason
        else {
            panic!("{p}");
        };
        assert_eq!(*kind, FrontendKind::ExternalIp, "{p}");
        assert_eq!(*winner_kind, FrontendKind::ClusterIp, "{p}");
        assert_eq!(frontend.address, Some(ip("10.96.0.10")), "{p}");
        assert_eq!(frontend.port, 80, "{p}");
        assert_eq!(winner.service.name, "web", "{p}");
    }
}

#[test]
fn excluded_services_and_a_new_node_context_are_compiled_as_given() {
    let st = web();
    let mut c = compiler(node("node-a", &["172.18.0.2"]));
    assert_eq!(c.families(), [IpFamily::V4, IpFamily::V6]);
    assert!(!c.refuses(st.service(&ServiceKey::new("ns", "web")).unwrap()));
    c.set_excluded([ServiceKey::new("ns", "web")].into());
    assert!(
        c.full(&st).servers.is_empty(),
        "an excluded service is absent"
    );
    c.set_excluded(Default::default());
    c.set_node(node("node-a", &["172.18.0.9"]));
    assert_eq!(
        c.node().node_port_ips,
        NodePortIps::Only(vec![ip("172.18.0.9")])
    );
    let t = c.full(&st).clone();
    assert!(t.servers.contains_key(&tcp("172.18.0.9:30080")));
    assert!(!t.servers.contains_key(&tcp("172.18.0.2:30080")));
}

#[test]
fn a_draining_real_server_that_is_wanted_again_gets_its_weight_back() {
    let st = web();
    let mut c = compiler(node("node-a", &["172.18.0.2"]));
    let want = c.full(&st).clone();
    let mut have = want.clone();
    let k = tcp("10.96.0.10:80");
    if let Some(s) = have.servers.get_mut(&k) {
        s.real.insert(sa("10.244.1.5:8080"), 0);
    }
    assert_eq!(
        diff(&have, &want),
        [Op::SetWeight(k, sa("10.244.1.5:8080"), 1)]
    );
}

fn apply(t: &mut Target, ops: &[Op]) {
    for op in ops {
        match op {
            Op::Bind(a) => assert!(t.addresses.insert(*a), "bind twice {a}"),
            Op::Unbind(a) => assert!(t.addresses.remove(a), "unbind missing {a}"),
            Op::AddService(vs) => {
                assert!(
                    t.servers
                        .insert(
                            vs.key,
                            Server {
                                service: vs.clone(),
                                real: Default::default(),
                                bind: false,
                                owner: None,
                            },
                        )
                        .is_none(),
                    "add existing {vs:?}"
                );
            }
            Op::EditService(vs) => {
                let s = t.servers.get_mut(&vs.key).expect("edit missing");
                s.service = vs.clone();
            }
            Op::DelService(k) => assert!(t.servers.remove(k).is_some(), "delete missing {k:?}"),
            Op::AddReal(k, a) => {
                let s = t
                    .servers
                    .get_mut(k)
                    .expect("real server of a missing service");
                assert!(s.real.insert(*a, 1).is_none(), "add existing real {a}");
            }
            Op::SetWeight(k, a, w) => {
                let s = t.servers.get_mut(k).expect("service");
                *s.real.get_mut(a).expect("real") = *w;
            }
            // Retired servers are gone once drained; model that at once.
            Op::Retire(k, a) => {
                let s = t.servers.get_mut(k).expect("service");
                assert!(s.real.remove(a).is_some(), "retire missing {a}");
            }
        }
    }
}

/// Servers with their definitions and real servers.
type Servers = Vec<(VsKey, VirtualServer, Vec<(SocketAddr, u32)>)>;

/// What matters of a target for comparison: servers with their definitions and real servers,
/// and the addresses.
fn shape(t: &Target) -> (Servers, BTreeSet<IpAddr>) {
    (
        t.servers
            .iter()
            .map(|(k, s)| {
                (
                    *k,
                    s.service.clone(),
                    s.real.iter().map(|(a, w)| (*a, *w)).collect(),
                )
            })
            .collect(),
        t.addresses.clone(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    #[test]
    fn incremental_updates_equal_a_full_compile(
        steps in proptest::collection::vec(arb_state(), 1..4),
    ) {
        let ctx = node("node-a", &["172.18.0.2", "fd00:18::2"]);
        let mut st = ProxyState::new();
        let mut c = compiler(ctx.clone());
        let mut kernel = c.full(&st).clone();
        for (s, l) in steps.into_iter().chain([(Vec::new(), Vec::new())]) {
            st.replace_all(s, l);
            let changed = st.take_dirty();
            let ops = c.update(&st, &changed);
            apply(&mut kernel, &ops);
            let mut fresh = compiler(ctx.clone());
            let expected = fresh.full(&st).clone();
            prop_assert_eq!(shape(&kernel), shape(&expected));
            prop_assert_eq!(shape(c.target()), shape(&expected));
            // The no_local_endpoints gauge: kept incrementally, and counted as the nftables
            // mode counts it.
            prop_assert_eq!(c.no_local_endpoints(), fresh.no_local_endpoints());
            let mut nft = rudder_compiler::Compiler::new(
                &[IpFamily::V4, IpFamily::V6],
                rudder_compiler::Config::default(),
                ctx.clone(),
            );
            nft.full(&st);
            prop_assert_eq!(c.no_local_endpoints(), nft.no_local_endpoints());
            // And diff from what the kernel holds to a fresh compile is empty.
            prop_assert!(diff(&kernel, &expected).is_empty());
        }
        prop_assert!(kernel.servers.is_empty() && kernel.addresses.is_empty());
    }
}

/// The elements of `set` in the family of `f`, rendered (`key` or `key : verdict`).
fn elems(c: &IpvsCompiler, f: Family, set: SetKind) -> Vec<String> {
    c.elements()
        .filter(|e| e.family == f && e.set == set)
        .map(|e| match e.entry() {
            (k, Some(v)) => format!("{k} : {v}"),
            (k, None) => k.to_string(),
        })
        .collect()
}

#[test]
fn the_table_marks_cluster_ips_external_ips_and_node_ports_and_lists_the_vips() {
    let mut st = web();
    let mut c = compiler(node("node-a", &["172.18.0.2"]));
    c.full(&st);
    let v4 = Family::Ip;
    assert_eq!(
        elems(&c, v4, SetKind::ClusterIps),
        ["10.96.0.10 . tcp . 80"]
    );
    assert_eq!(
        elems(&c, v4, SetKind::ExternalIps),
        ["192.0.2.50 . tcp . 80", "203.0.113.7 . tcp . 80"]
    );
    assert!(elems(&c, v4, SetKind::LocalIps).is_empty());
    assert_eq!(elems(&c, v4, SetKind::Nodeports), ["tcp . 30080"]);
    assert_eq!(
        elems(&c, v4, SetKind::VipAddresses),
        ["10.96.0.10", "192.0.2.50", "203.0.113.7"]
    );
    // The endpoint on this node may be picked: its hairpin connection is masqueraded.
    assert_eq!(
        elems(&c, v4, SetKind::Hairpin),
        ["10.244.1.5 . 10.244.1.5 . tcp . 8080"]
    );
    assert!(elems(&c, v4, SetKind::NoEndpointServices).is_empty());
    assert!(elems(&c, Family::Ip6, SetKind::ClusterIps).is_empty());
    // Under a Local policy the external frontends are not masqueraded, and the
    // health-check node port passes the VIP filter.
    let mut s = st.service(&ServiceKey::new("ns", "web")).unwrap().clone();
    s.external_traffic_policy = TrafficPolicy::Local;
    s.health_check_node_port = Some(31000);
    st.upsert_service(s);
    c.full(&st);
    assert!(elems(&c, v4, SetKind::ExternalIps).is_empty());
    assert_eq!(
        elems(&c, v4, SetKind::LocalIps),
        ["192.0.2.50 . tcp . 80", "203.0.113.7 . tcp . 80"]
    );
    assert!(elems(&c, v4, SetKind::Nodeports).is_empty());
    assert_eq!(elems(&c, v4, SetKind::HealthCheckPorts), ["31000"]);
    assert!(elems(&c, v4, SetKind::NoLocalEndpointServices).is_empty());
}

#[test]
fn frontends_without_endpoints_are_rejected_and_local_policies_without_local_ones_dropped() {
    let mut st = web();
    let key = ServiceKey::new("ns", "web");
    let v4 = Family::Ip;
    // eTP=Local on a node without local endpoints: IPVS keeps the cluster's endpoints for
    // this node's pods; traffic from elsewhere is dropped.
    let mut s = st.service(&key).unwrap().clone();
    s.external_traffic_policy = TrafficPolicy::Local;
    st.upsert_service(s.clone());
    let mut c = compiler(node("node-c", &["172.18.0.3"]));
    c.full(&st);
    assert_eq!(reals(c.target(), &tcp("172.18.0.3:30080")).len(), 2);
    assert_eq!(
        elems(&c, v4, SetKind::NoLocalEndpointServices),
        ["192.0.2.50 . tcp . 80", "203.0.113.7 . tcp . 80"]
    );
    assert_eq!(
        elems(&c, v4, SetKind::NoLocalEndpointNodeports),
        ["tcp . 30080"]
    );
    assert!(elems(&c, v4, SetKind::Hairpin).is_empty());
    // iTP=Local without local endpoints: no real servers, and the ClusterIP drops.
    s.internal_traffic_policy = TrafficPolicy::Local;
    st.upsert_service(s.clone());
    c.full(&st);
    assert!(reals(c.target(), &tcp("10.96.0.10:80")).is_empty());
    assert_eq!(
        elems(&c, v4, SetKind::NoEndpointServices),
        ["10.96.0.10 . tcp . 80 : drop"]
    );
    // No endpoints at all: every frontend rejects at once, and nothing else drops.
    st.replace_all(vec![s], Vec::new());
    c.full(&st);
    assert_eq!(
        elems(&c, v4, SetKind::NoEndpointServices),
        [
            "10.96.0.10 . tcp . 80 : goto reject-chain",
            "192.0.2.50 . tcp . 80 : goto reject-chain",
            "203.0.113.7 . tcp . 80 : goto reject-chain"
        ]
    );
    assert_eq!(
        elems(&c, v4, SetKind::NoEndpointNodeports),
        ["tcp . 30080 : goto reject-chain"]
    );
    assert!(elems(&c, v4, SetKind::NoLocalEndpointServices).is_empty());
}

#[test]
fn source_ranges_filter_load_balancer_ips_only() {
    let mut st = web();
    let mut s = st.service(&ServiceKey::new("ns", "web")).unwrap().clone();
    s.load_balancer_source_ranges = vec![
        "198.51.100.0/24".parse().unwrap(),
        "198.51.100.128/25".parse().unwrap(),
        "fd00::/64".parse().unwrap(),
    ];
    st.upsert_service(s.clone());
    let mut ctx = node("node-a", &["172.18.0.2"]);
    ctx.ips = vec![ip("172.18.0.2")];
    let mut c = compiler(ctx);
    c.full(&st);
    let v4 = Family::Ip;
    assert_eq!(
        elems(&c, v4, SetKind::FirewallIps),
        ["192.0.2.50 . tcp . 80"]
    );
    assert_eq!(
        elems(&c, v4, SetKind::FirewallAllow),
        ["192.0.2.50 . tcp . 80 . 198.51.100.0/24"]
    );
    // The node inside a range: the load balancer IP itself may be the source too.
    s.load_balancer_source_ranges
        .push("172.18.0.0/16".parse().unwrap());
    st.upsert_service(s.clone());
    c.full(&st);
    assert_eq!(
        elems(&c, v4, SetKind::FirewallAllow),
        [
            "192.0.2.50 . tcp . 80 . 172.18.0.0/16",
            "192.0.2.50 . tcp . 80 . 192.0.2.50",
            "192.0.2.50 . tcp . 80 . 198.51.100.0/24"
        ]
    );
    // A range covering everything filters nothing.
    s.load_balancer_source_ranges = vec!["0.0.0.0/0".parse().unwrap()];
    st.upsert_service(s);
    c.full(&st);
    assert!(elems(&c, v4, SetKind::FirewallIps).is_empty());
    assert!(elems(&c, v4, SetKind::FirewallAllow).is_empty());
}

#[test]
fn the_table_applies_and_its_rules_follow_the_configuration() {
    let st = web();
    let mut ctx = node("node-a", &["172.18.0.2"]);
    let mut c = compiler(ctx.clone());
    c.full(&st);
    let rs = c.ruleset().expect("the table applies in memory");
    let text = rs.render();
    assert!(
        text.contains("ip saddr . meta l4proto . th dport @cluster-ips meta mark set"),
        "{text}"
    );
    assert!(
        text.contains("ip daddr @nodeport-ips meta l4proto . th dport @nodeports"),
        "{text}"
    );
    assert!(
        text.contains("ct state new ip daddr @vip-addresses jump vip-filter"),
        "{text}"
    );
    // With a pod CIDR, off-cluster traffic to ClusterIPs is marked, and pods pass the
    // local-endpoints check.
    ctx.local_detector =
        rudder_compiler::LocalDetector::Cidrs(vec!["10.244.0.0/16".parse().unwrap()]);
    ctx.node_port_ips = NodePortIps::All;
    let mut c = IpvsCompiler::new(&[IpFamily::V4], Options::default(), ctx.clone());
    c.full(&st);
    let text = c.ruleset().expect("applies").render();
    assert!(
        text.contains("ip daddr . meta l4proto . th dport @cluster-ips ip saddr != 10.244.0.0/16"),
        "{text}"
    );
    assert!(text.contains("ip saddr 10.244.0.0/16 return"), "{text}");
    assert!(
        text.contains(
            "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport @nodeports"
        ),
        "{text}"
    );
    assert!(!text.contains("nodeport-ips"), "{text}");
    let options = Options {
        table: TableConfig {
            masquerade_all: true,
            masquerade_bit: 3,
            ..TableConfig::default()
        },
        ..Options::default()
    };
    let mut c = IpvsCompiler::new(&[IpFamily::V4], options, ctx);
    c.full(&st);
    let text = c.ruleset().expect("applies").render();
    assert!(
        text.contains(
            "ip daddr . meta l4proto . th dport @cluster-ips meta mark set meta mark or 0x8"
        ),
        "{text}"
    );
}

/// Applies the nftables part of a compile to a ruleset that holds what the compiler made.
fn apply_table(rs: &mut Ruleset, tx: &Transaction) {
    if let Err(e) = rs.apply(tx) {
        panic!("the element changes do not apply: {e}\n{}", tx.render());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    #[test]
    fn the_tables_element_changes_equal_a_full_compile(
        steps in proptest::collection::vec(arb_state(), 1..4),
    ) {
        let ctx = node("node-a", &["172.18.0.2", "fd00:18::2"]);
        let mut st = ProxyState::new();
        let mut c = compiler(ctx.clone());
        c.full(&st);
        let mut kernel = c.ruleset().expect("the empty table applies");
        for (s, l) in steps.into_iter().chain([(Vec::new(), Vec::new())]) {
            st.replace_all(s, l);
            let changed = st.take_dirty();
            c.update(&st, &changed);
            apply_table(&mut kernel, &c.take_table_changes());
            let mut fresh = compiler(ctx.clone());
            fresh.full(&st);
            prop_assert_eq!(
                c.elements().collect::<Vec<_>>(),
                fresh.elements().collect::<Vec<_>>()
            );
            let expected = fresh.ruleset().expect("a full compile applies");
            prop_assert_eq!(kernel.render(), expected.render());
            // Nothing is pending after a take.
            prop_assert!(c.take_table_changes().is_empty());
        }
        // An update to nothing leaves the skeleton only.
        let empty = compiler(ctx).ruleset().expect("skeleton");
        prop_assert_eq!(kernel.render(), empty.render());
    }
}

#[test]
fn no_local_endpoints_counts_local_policies_without_endpoints_here() {
    let mut st = web();
    let key = ServiceKey::new("ns", "web");
    let mut s = st.service(&key).unwrap().clone();
    s.external_traffic_policy = TrafficPolicy::Local;
    s.internal_traffic_policy = TrafficPolicy::Local;
    st.upsert_service(s);
    let mut c = compiler(node("node-c", &["172.18.0.3"]));
    c.full(&st);
    assert_eq!(
        c.no_local_endpoints(),
        [(IpFamily::V4, 1, 1), (IpFamily::V6, 0, 0)]
    );
    // The same node gets a local endpoint: the counts go to zero incrementally.
    let sl = slice(
        "ns",
        "web-2",
        "web",
        IpFamily::V4,
        &[("http", Protocol::Tcp, 8080)],
        vec![endpoint("10.244.3.5", true, "node-c")],
    );
    st.upsert_slice(sl);
    let changed = st.take_dirty();
    c.update(&st, &changed);
    assert_eq!(
        c.no_local_endpoints(),
        [(IpFamily::V4, 0, 0), (IpFamily::V6, 0, 0)]
    );
}

mod explain {
    use rudder_compiler::explain::{Query, Verdict, Via};

    use super::*;

    fn ask(c: &IpvsCompiler, st: &ProxyState, to: &str, port: u16, via: Via) -> Explanation {
        c.explain(
            st,
            &Query {
                to: ip(to),
                port,
                protocol: Protocol::Tcp,
                from: None,
                via: Some(via),
            },
        )
    }

    use rudder_compiler::explain::Explanation;

    #[test]
    fn candidates_are_the_virtual_servers_real_servers_picked_by_its_scheduler() {
        let st = web();
        let mut c = compiler(node("node-a", &["172.18.0.2"]));
        c.full(&st);
        let e = ask(&c, &st, "10.96.0.10", 80, Via::Pod);
        let got: Vec<String> = e
            .candidates
            .iter()
            .map(|c| format!("{}:{} {}", c.address, c.port, c.local))
            .collect();
        assert_eq!(got, ["10.244.1.5:8080 true", "10.244.2.5:8080 false"]);
        assert_eq!(e.verdict, Verdict::Dnat);
        let text = e.to_string();
        assert!(text.contains("picked by IPVS's rr scheduler"), "{text}");
        assert!(
            text.contains("IPVS virtual server tcp 10.96.0.10:80"),
            "{text}"
        );
    }

    #[test]
    fn a_vip_port_that_is_no_service_is_rejected_by_the_vip_filter() {
        let st = web();
        let mut c = compiler(node("node-a", &["172.18.0.2"]));
        c.full(&st);
        let e = ask(&c, &st, "203.0.113.7", 22, Via::External);
        assert!(
            matches!(&e.verdict, Verdict::Reject(why) if why.contains("VIP filter")),
            "{e}"
        );
        // An address that is no VIP is not touched.
        let e = ask(&c, &st, "198.51.100.1", 22, Via::External);
        assert!(matches!(e.verdict, Verdict::NotAService(_)), "{e}");
    }

    #[test]
    fn local_policies_do_not_short_circuit_and_the_node_is_not_masqueraded() {
        let mut st = web();
        let mut s = st.service(&ServiceKey::new("ns", "web")).unwrap().clone();
        s.external_traffic_policy = TrafficPolicy::Local;
        st.upsert_service(s);
        let mut c = compiler(node("node-a", &["172.18.0.2"]));
        c.full(&st);
        let e = ask(&c, &st, "192.0.2.50", 80, Via::Node);
        let got: Vec<String> = e.candidates.iter().map(|c| c.address.to_string()).collect();
        // The nftables mode sends the node's traffic to every endpoint; IPVS has one real
        // server list for every source.
        assert_eq!(got, ["10.244.1.5"], "{e}");
        assert_eq!(e.masquerade.as_ref().map(|m| m.0), Some(false), "{e}");
    }
}
