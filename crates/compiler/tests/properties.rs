//! Property tests of the compiler's contracts:
//! - an incremental update applied to the old ruleset yields exactly the full rebuild;
//! - `apply(diff(a, b), a) == b` for any two compiled rulesets;
//! - the output does not depend on the order objects arrived in;
//! - object names (whatever characters they hold) never reach the ruleset;
//! - an update that is rolled back leaves the compiler exactly as it was;
//! - an excluded service is compiled as if it did not exist, in full and incremental
//!   compiles.

mod common;

use common::arb::*;
use common::*;
use proptest::prelude::*;
use rudder_compiler::{Compiler, Config, NodeContext};
use rudder_model::{
    EndpointSlice, IpFamily, Protocol, ProxyState, Service, ServiceKey, ServiceType,
};
use rudder_nft::{Ruleset, diff};

fn new_compiler() -> Compiler {
    compiler(default_node(), Config::default())
}

fn default_node() -> NodeContext {
    local(
        node("node-a", &["172.18.0.2", "fc00::2"]),
        &["10.244.0.0/16"],
    )
}

/// A node whose addresses are also some of the generated services' ClusterIPs, external IPs
/// and load balancer IPs: those services, and those frontends, are refused.
fn colliding_node() -> NodeContext {
    local(
        node(
            "node-a",
            &[
                "172.18.0.2",
                "fc00::2",
                "10.96.0.3",
                "fd00::1",
                "192.0.2.1",
                "198.51.100.2",
            ],
        ),
        &["10.244.0.0/16"],
    )
}

/// Endpoint maps up to the order of each frontend's slots: an incremental update keeps
/// surviving endpoints in their slots, a full compile sorts them; both pick uniformly among
/// the same endpoints. Sorting each frontend's values makes the two comparable.
fn canonical(rs: &Ruleset) -> Ruleset {
    use rudder_nft::{Atom, Key};
    use std::collections::BTreeMap;
    let mut out = rs.clone();
    for table in out.tables.values_mut() {
        for (name, set) in table.sets.iter_mut() {
            if !(name.as_str().starts_with("cluster-endpoints-")
                || name.as_str().starts_with("nodeport-endpoints-"))
            {
                continue;
            }
            let mut groups: BTreeMap<Vec<Atom>, Vec<Key>> = BTreeMap::new();
            for (k, v) in &set.elements {
                let (_, prefix) = k.atoms().split_last().expect("slot");
                groups
                    .entry(prefix.to_vec())
                    .or_default()
                    .push(v.clone().expect("map value"));
            }
            set.elements.clear();
            for (prefix, mut values) in groups {
                values.sort();
                for (i, v) in values.into_iter().enumerate() {
                    let mut key = prefix.clone();
                    key.push(Atom::Int(i as u32));
                    set.elements.insert(Key::new(key), Some(v));
                }
            }
        }
    }
    out
}

/// The ruleset text with session-affinity object names (`aff-` and 32 hex digits, a hash of
/// the service port's identity) replaced by a placeholder, lines sorted.
fn without_hashes(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .map(|l| {
            let mut out = String::new();
            let mut rest = l;
            while let Some(i) = rest.find("aff-") {
                out.push_str(&rest[..i + 4]);
                rest = &rest[i + 4..];
                if rest.len() >= 32 && rest[..32].bytes().all(|b| b.is_ascii_hexdigit()) {
                    out.push_str("HASH");
                    rest = &rest[32..];
                }
            }
            out.push_str(rest);
            out
        })
        .collect();
    lines.sort();
    lines
}

fn full_ruleset(st: &ProxyState) -> Ruleset {
    full_ruleset_for(st, default_node())
}

fn full_ruleset_for(st: &ProxyState, node_ctx: NodeContext) -> Ruleset {
    let mut c = compiler(node_ctx, Config::default());
    c.full(st);
    c.ruleset().expect("full ruleset applies")
}

/// Compiles `(s1, l1)` in full, updates to `(s2, l2)` incrementally, and checks the result
/// against a full compile of `(s2, l2)`, including the refused input each reports.
fn incremental_matches_full(
    node_ctx: NodeContext,
    (s1, l1): (Vec<Service>, Vec<EndpointSlice>),
    (s2, l2): (Vec<Service>, Vec<EndpointSlice>),
) -> Result<(), TestCaseError> {
    let mut st = state(s1, l1);
    let mut c = compiler(node_ctx.clone(), Config::default());
    let full_tx = c.full(&st);
    c.take_problems();
    let conflicts_before = c.frontend_conflicts();
    let mut kernel = Ruleset::new();
    kernel
        .apply(&full_tx)
        .expect("full transaction applies to an empty kernel");
    prop_assert_eq!(&kernel, &c.ruleset().expect("ruleset"));

    st.replace_all(s2, l2);
    let changed = st.take_dirty();
    let tx = c.update(&st, &changed);
    if let Err(e) = kernel.apply(&tx) {
        panic!("update does not apply: {e}\n{}", tx.render());
    }
    // The kernel holds exactly what the compiler believes it holds: no chain or set leaked
    // by the update, none missing.
    prop_assert_eq!(
        canonical(&kernel),
        canonical(&c.ruleset().expect("ruleset"))
    );
    let expected = with_kept_classes(&kernel, full_ruleset_for(&st, node_ctx.clone()));
    prop_assert_eq!(canonical(&kernel), canonical(&expected));
    // The no-local-endpoints counts, kept incrementally, match a fresh compile.
    let mut fresh = compiler(node_ctx, Config::default());
    fresh.full(&st);
    prop_assert_eq!(c.no_local_endpoints(), fresh.no_local_endpoints());
    // What the update refused is what a full compile refuses of the changed services, apart
    // from frontend conflicts: those are reported when they appear (they can concern
    // unchanged services, which lose to a changed one).
    let is_conflict = |p: &rudder_model::Problem| p.reason.label() == "frontend_conflict";
    let (update_conflicts, update_problems): (Vec<_>, Vec<_>) =
        c.take_problems().into_iter().partition(is_conflict);
    let mut fresh_problems = fresh.take_problems();
    fresh_problems.retain(|p| !is_conflict(p));
    fresh_problems.retain(|p| changed.contains(&ServiceKey::new(&p.namespace, &p.name)));
    prop_assert_eq!(update_problems, fresh_problems);
    // The conflicts now are a fresh compile's; the update reported exactly the new ones.
    let conflicts_now = c.frontend_conflicts();
    prop_assert_eq!(&conflicts_now, &fresh.frontend_conflicts());
    let new: Vec<_> = conflicts_now
        .into_iter()
        .filter(|p| !conflicts_before.contains(p))
        .collect();
    prop_assert_eq!(update_conflicts, new);

    // Nothing changed: nothing to do.
    prop_assert!(c.update(&st, &changed).is_empty());
    Ok(())
}

/// Whether `name` is one of the endpoint class objects (chains `cluster-2`, `local-1`,
/// `nodeport-external-local-2-1`…, maps `cluster-endpoints-2`…), which incremental updates
/// keep while unused until the next full sync.
fn is_class_object(name: &str) -> bool {
    const PREFIXES: [&str; 12] = [
        "cluster-endpoints-",
        "nodeport-endpoints-",
        "local-endpoints-",
        "nodeport-local-endpoints-",
        "nodeport-external-local-",
        "external-local-",
        "nodeport-cluster-",
        "nodeport-local-",
        "nodeport-",
        "external-",
        "cluster-",
        "local-",
    ];
    PREFIXES.iter().any(|p| {
        name.strip_prefix(p).is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .split('-')
                    .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
    })
}

/// The ruleset with the classes kept while unused by incremental updates added to
/// `expected`, so that an incrementally updated kernel compares with a full compile. Only
/// endpoint class objects may be kept: any other chain or set the kernel holds beyond a full
/// compile is a leak, and makes the comparison fail.
fn with_kept_classes(kernel: &Ruleset, mut expected: Ruleset) -> Ruleset {
    for (t, table) in &kernel.tables {
        let Some(et) = expected.tables.get_mut(t) else {
            continue;
        };
        for (name, chain) in &table.chains {
            if is_class_object(name.as_str()) {
                et.chains
                    .entry(name.clone())
                    .or_insert_with(|| chain.clone());
            }
        }
        for (name, set) in &table.sets {
            if set.elements.is_empty() && is_class_object(name.as_str()) {
                et.sets.entry(name.clone()).or_insert_with(|| set.clone());
            }
        }
    }
    expected
}

/// Compiles `a` in full, tries an update to `b` and rolls it back (the kernel never saw it),
/// then updates to `c`: the compiler after the rollback is exactly the one before the update,
/// and the update to `c`, applied to the kernel that holds `a`, yields `c`'s full compile.
fn rollback_restores(
    a: (Vec<Service>, Vec<EndpointSlice>),
    b: (Vec<Service>, Vec<EndpointSlice>),
    c3: (Vec<Service>, Vec<EndpointSlice>),
) -> Result<(), TestCaseError> {
    let mut st = state(a.0, a.1);
    let mut c = new_compiler();
    let mut kernel = Ruleset::new();
    kernel.apply(&c.full(&st)).expect("full applies");
    let before = c.ruleset().expect("ruleset");
    let no_local = c.no_local_endpoints();
    let conflicts = c.frontend_conflicts();
    st.replace_all(b.0, b.1);
    let changed_b = st.take_dirty();
    let (_, undo) = c.update_undoable(&st, &changed_b);
    c.rollback(undo);
    prop_assert_eq!(&c.ruleset().expect("ruleset"), &before);
    prop_assert_eq!(c.no_local_endpoints(), no_local);
    prop_assert_eq!(c.frontend_conflicts(), conflicts);
    // The services `b` changed are still at `a` in the compiler: they change again.
    st.replace_all(c3.0, c3.1);
    let mut changed = st.take_dirty();
    changed.extend(changed_b);
    let tx = c.update(&st, &changed);
    if let Err(e) = kernel.apply(&tx) {
        panic!(
            "update after a rollback does not apply: {e}\n{}",
            tx.render()
        );
    }
    let expected = with_kept_classes(&kernel, full_ruleset(&st));
    prop_assert_eq!(canonical(&kernel), canonical(&expected));
    Ok(())
}

/// Excluding services compiles the others as if the excluded did not exist: in full, and
/// by an update that names them, which withdraws what they had.
fn exclusion_is_absence(
    (s1, l1): (Vec<Service>, Vec<EndpointSlice>),
    pick: Vec<bool>,
) -> Result<(), TestCaseError> {
    let st = state(s1.clone(), l1.clone());
    let excluded: std::collections::BTreeSet<ServiceKey> = s1
        .iter()
        .zip(pick.iter().cycle())
        .filter(|(_, p)| **p)
        .map(|(s, _)| s.key.clone())
        .collect();
    let without = state(
        s1.into_iter()
            .filter(|s| !excluded.contains(&s.key))
            .collect(),
        l1,
    );
    let expected = full_ruleset(&without);
    // Full compile.
    let mut c = new_compiler();
    c.set_excluded(excluded.clone());
    c.full(&st);
    prop_assert_eq!(&c.ruleset().expect("ruleset"), &expected);
    // Incremental: everything programmed, then the excluded withdrawn.
    let mut c = new_compiler();
    let mut kernel = Ruleset::new();
    kernel.apply(&c.full(&st)).expect("full applies");
    c.set_excluded(excluded.clone());
    let tx = c.update(&st, &excluded);
    kernel.apply(&tx).expect("withdrawal applies");
    let expected = with_kept_classes(&kernel, expected);
    prop_assert_eq!(canonical(&kernel), canonical(&expected));
    // And back: no longer excluded, they are programmed again.
    c.set_excluded(Default::default());
    kernel
        .apply(&c.update(&st, &excluded))
        .expect("return applies");
    let expected = with_kept_classes(&kernel, full_ruleset(&st));
    prop_assert_eq!(canonical(&kernel), canonical(&expected));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    #[test]
    fn a_rolled_back_update_leaves_the_compiler_as_it_was(
        a in arb_state(),
        b in arb_state(),
        c in arb_state(),
    ) {
        rollback_restores(a, b, c)?;
    }

    #[test]
    fn an_excluded_service_is_compiled_as_absent(
        a in arb_state(),
        pick in proptest::collection::vec(any::<bool>(), 1..8),
    ) {
        exclusion_is_absence(a, pick)?;
    }

    #[test]
    fn incremental_update_equals_full_rebuild(a in arb_state(), b in arb_state()) {
        incremental_matches_full(default_node(), a, b)?;
    }

    #[test]
    fn incremental_update_equals_full_rebuild_after_one_service_changes(
        a in arb_state(),
        k in 0..NAMES.len(),
        how in 0..3u8,
    ) {
        // Small changes keep most conflicts, with losers and winners changed or not.
        let (s1, l1) = a;
        let mut s2 = s1.clone();
        let mut l2 = l1.clone();
        match how {
            0 => s2.retain(|s| s.key.name != NAMES[k]),
            1 => l2.retain(|s| s.service.name != NAMES[k]),
            _ => {
                for s in s2.iter_mut().filter(|s| s.key.name == NAMES[k]) {
                    s.creation_timestamp = Some(-1);
                }
            }
        }
        incremental_matches_full(default_node(), (s1.clone(), l1.clone()), (s2.clone(), l2.clone()))?;
        // And back.
        incremental_matches_full(default_node(), (s2, l2), (s1, l1))?;
    }

    #[test]
    fn incremental_update_equals_full_rebuild_when_service_addresses_are_node_addresses(
        a in arb_state(),
        b in arb_state(),
    ) {
        incremental_matches_full(colliding_node(), a, b)?;
    }

    #[test]
    fn an_update_to_nothing_leaves_exactly_the_skeleton(
        steps in proptest::collection::vec(arb_state(), 1..4),
    ) {
        // Any sequence of incremental updates, and then everything deleted: after each the
        // kernel holds what the compiler believes, and at the end only the skeleton (and the
        // endpoint classes kept until the next full sync) is left: no orphan chain or set.
        let mut st = ProxyState::new();
        let mut c = new_compiler();
        let mut kernel = Ruleset::new();
        kernel.apply(&c.full(&st)).expect("full applies");
        for (s, l) in steps.into_iter().chain([(Vec::new(), Vec::new())]) {
            st.replace_all(s, l);
            let changed = st.take_dirty();
            let tx = c.update(&st, &changed);
            if let Err(e) = kernel.apply(&tx) {
                panic!("update does not apply: {e}\n{}", tx.render());
            }
            prop_assert_eq!(canonical(&kernel), canonical(&c.ruleset().expect("ruleset")));
        }
        let skeleton = with_kept_classes(&kernel, full_ruleset(&ProxyState::new()));
        prop_assert_eq!(canonical(&kernel), canonical(&skeleton));
    }

    #[test]
    fn diff_then_apply_round_trips((s1, l1) in arb_state(), (s2, l2) in arb_state()) {
        let a = full_ruleset(&state(s1, l1));
        let b = full_ruleset(&state(s2, l2));
        let mut x = a.clone();
        x.apply(&diff(&a, &b)).expect("diff applies");
        prop_assert_eq!(&x, &b);
        prop_assert!(diff(&b, &b).is_empty());
    }

    #[test]
    fn output_does_not_depend_on_arrival_order((s1, l1) in arb_state()) {
        let forward = state(s1.clone(), l1.clone());
        let mut rs = ProxyState::new();
        for s in s1.into_iter().rev() { rs.upsert_service(s); }
        for s in l1.into_iter().rev() { rs.upsert_slice(s); }
        let mut a = new_compiler();
        let mut b = new_compiler();
        prop_assert_eq!(a.full(&forward).render(), b.full(&rs).render());
    }

    #[test]
    fn names_never_reach_the_ruleset((s1, l1) in arb_state(), evil in "[ -~\\n\\t\"';{}@$\\\\]{1,40}") {
        let plain = full_ruleset(&state(s1.clone(), l1.clone())).render();
        // Rename every namespace and service to hostile text, keeping their relative order.
        let rename = |k: &ServiceKey| ServiceKey::new(&format!("{evil}{}", k.namespace), &format!("{evil}{}", k.name));
        let services: Vec<Service> = s1.into_iter().map(|mut s| { s.key = rename(&s.key); s }).collect();
        let slices: Vec<EndpointSlice> = l1.into_iter().map(|mut s| {
            s.service = rename(&s.service);
            s.key.namespace = format!("{evil}{}", s.key.namespace);
            s
        }).collect();
        let hostile = full_ruleset(&state(services, slices)).render();
        prop_assert_eq!(without_hashes(&plain), without_hashes(&hostile));
    }
}

#[test]
fn replacing_one_endpoint_rewrites_one_slot() {
    let mut s = service("ns", "web", &["10.96.0.1"]);
    s.ports = vec![port("http", Protocol::Tcp, 80, Some(30080))];
    let eps = |addrs: &[&str]| {
        addrs
            .iter()
            .map(|a| endpoint(a, true, "node-b"))
            .collect::<Vec<_>>()
    };
    let mk = |addrs: &[&str]| {
        slice(
            "ns",
            "web-1",
            "web",
            IpFamily::V4,
            &[("http", Protocol::Tcp, 8080)],
            eps(addrs),
        )
    };
    let mut st = state(
        vec![s],
        vec![mk(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"])],
    );
    let mut c = new_compiler();
    c.full(&st);
    // 10.0.0.2 (slot 1) is replaced by 10.0.0.9: only slot 1 changes, for the ClusterIP
    // and for the node port, although the new address sorts last.
    st.upsert_slice(mk(&["10.0.0.1", "10.0.0.9", "10.0.0.3", "10.0.0.4"]));
    let dirty = st.take_dirty();
    let text = c.update(&st, &dirty).render();
    assert_eq!(
        text,
        "delete element ip rudder cluster-endpoints-4 { 10.96.0.1 . tcp . 80 . 1 }\n\
         delete element ip rudder nodeport-endpoints-4 { tcp . 30080 . 1 }\n\
         add element ip rudder cluster-endpoints-4 { 10.96.0.1 . tcp . 80 . 1 : 10.0.0.9 . 8080 }\n\
         add element ip rudder nodeport-endpoints-4 { tcp . 30080 . 1 : 10.0.0.9 . 8080 }\n"
    );
    // A second replacement keeps the first one's slot.
    st.upsert_slice(mk(&["10.0.0.1", "10.0.0.9", "10.0.0.3", "10.0.0.5"]));
    let dirty = st.take_dirty();
    let text = c.update(&st, &dirty).render();
    assert!(
        text.contains("cluster-endpoints-4 { 10.96.0.1 . tcp . 80 . 3 : 10.0.0.5 . 8080 }"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 4, "{text}");
}

#[test]
fn one_endpoint_change_touches_only_that_service() {
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for i in 0..200u32 {
        let name = format!("svc{i}");
        let mut s = service(
            "ns",
            &name,
            &[&format!("10.96.{}.{}", i / 250, i % 250 + 1)],
        );
        s.ports = vec![port("http", Protocol::Tcp, 80, None)];
        services.push(s);
        let eps = (0..3)
            .map(|e| {
                endpoint(
                    &format!("10.{}.{}.{}", 1 + i / 250, i % 250, e + 1),
                    true,
                    "node-b",
                )
            })
            .collect();
        slices.push(slice(
            "ns",
            &format!("{name}-x"),
            &name,
            IpFamily::V4,
            &[("http", Protocol::Tcp, 8080)],
            eps,
        ));
    }
    let mut st = state(services, slices.clone());
    let mut c = new_compiler();
    c.full(&st);
    // Replace the last endpoint of svc7.
    let mut changed_slice = slices[7].clone();
    changed_slice.endpoints[2].address = ip("10.99.99.99");
    st.upsert_slice(changed_slice);
    let dirty = st.take_dirty();
    assert_eq!(
        dirty.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(),
        vec!["svc7"]
    );
    let tx = c.update(&st, &dirty);
    let text = tx.render();
    assert_eq!(
        text,
        "delete element ip rudder cluster-endpoints-3 { 10.96.0.8 . tcp . 80 . 2 }\n\
         add element ip rudder cluster-endpoints-3 { 10.96.0.8 . tcp . 80 . 2 : 10.99.99.99 . 8080 }\n"
    );
}

#[test]
fn no_local_endpoints_counts_local_policies_without_local_endpoints() {
    use rudder_model::TrafficPolicy;
    // Two ports, both policies Local, endpoints only on node-b (the compiler is node-a).
    let mut s = service("ns", "web", &["10.96.0.1"]);
    s.service_type = ServiceType::NodePort;
    s.internal_traffic_policy = TrafficPolicy::Local;
    s.external_traffic_policy = TrafficPolicy::Local;
    s.ports = vec![
        port("http", Protocol::Tcp, 80, Some(30080)),
        port("https", Protocol::Tcp, 443, Some(30443)),
    ];
    // The same policies but no endpoints at all: rejected, not counted.
    let mut empty = s.clone();
    empty.key = ServiceKey::new("ns", "empty");
    empty.cluster_ips = vec![ip("10.96.0.2")];
    empty.ports = vec![port("http", Protocol::Tcp, 80, Some(30081))];
    let ports = [
        ("http", Protocol::Tcp, 8080),
        ("https", Protocol::Tcp, 8443),
    ];
    let elsewhere = slice(
        "ns",
        "web-1",
        "web",
        IpFamily::V4,
        &ports,
        vec![endpoint("10.1.0.1", true, "node-b")],
    );
    let mut st = state(vec![s, empty], vec![elsewhere]);
    let mut c = compiler(node("node-a", &["192.0.2.1"]), Config::default());
    c.full(&st);
    assert_eq!(
        c.no_local_endpoints(),
        vec![(IpFamily::V4, 2, 2), (IpFamily::V6, 0, 0)]
    );
    // An endpoint appears on this node: nothing is counted any more.
    st.upsert_slice(slice(
        "ns",
        "web-1",
        "web",
        IpFamily::V4,
        &ports,
        vec![
            endpoint("10.1.0.1", true, "node-b"),
            endpoint("10.1.0.2", true, "node-a"),
        ],
    ));
    let dirty = st.take_dirty();
    c.update(&st, &dirty);
    assert_eq!(
        c.no_local_endpoints(),
        vec![(IpFamily::V4, 0, 0), (IpFamily::V6, 0, 0)]
    );
}
