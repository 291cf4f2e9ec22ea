//! Frontends that two services claim: exactly one keeps the whole frontend, by a rule that
//! depends on the claims alone (a ClusterIP before load balancer and external IPs, then the
//! older Service, then namespace/name/port); the loser is reported once, and takes the
//! frontend over when the winner goes away, incrementally exactly as a full compile does.

mod common;

use common::*;
use rudder_compiler::explain::{Frontend, Query, explain};
use rudder_compiler::{Compiler, Config, NodeContext};
use rudder_model::{
    ConflictRule, EndpointSlice, FrontendKind, IpFamily, Problem, Protocol, ProxyState, Reason,
    Service, ServiceKey, ServiceType,
};
use rudder_nft::Ruleset;

fn the_node() -> NodeContext {
    let mut n = local(node("node-a", &["172.18.0.2"]), &["10.244.0.0/16"]);
    n.ips = vec![ip("172.18.0.2")];
    n
}

fn new_compiler() -> Compiler {
    Compiler::new(&[IpFamily::V4], Config::default(), the_node())
}

/// A NodePort-capable service `ns/name` on `cluster_ip:80` (port `http`), created at `created`.
fn svc(name: &str, cluster_ip: &str, created: Option<i64>) -> Service {
    let mut s = service("ns", name, &[cluster_ip]);
    s.service_type = ServiceType::LoadBalancer;
    s.ports = vec![port("http", Protocol::Tcp, 80, None)];
    s.creation_timestamp = created;
    s
}

/// The slice of `name` with the given endpoints on port 8080.
fn eps(name: &str, addrs: &[&str]) -> EndpointSlice {
    slice(
        "ns",
        &format!("{name}-1"),
        name,
        IpFamily::V4,
        &[("http", Protocol::Tcp, 8080)],
        addrs.iter().map(|a| endpoint(a, true, "node-b")).collect(),
    )
}

fn elements(rs: &Ruleset) -> Vec<String> {
    rs.render()
        .lines()
        .filter(|l| l.starts_with("add element"))
        .map(str::to_owned)
        .collect()
}

fn compiled(st: &ProxyState) -> (Vec<String>, Vec<Problem>) {
    let mut c = new_compiler();
    c.full(st);
    let problems = c.take_problems();
    (elements(&c.ruleset().expect("ruleset")), problems)
}

fn text(elements: &[String]) -> String {
    elements.join("\n")
}

/// The one conflict reported: loser service, what the frontend was to it, the winner, and the
/// rule.
fn conflict(problems: &[Problem]) -> (String, FrontendKind, String, ConflictRule) {
    let conflicts: Vec<_> = problems
        .iter()
        .filter_map(|p| match &p.reason {
            Reason::FrontendConflict {
                kind, winner, rule, ..
            } => Some((p.name.clone(), *kind, winner.service.name.clone(), *rule)),
            _ => None,
        })
        .collect();
    assert_eq!(conflicts.len(), 1, "{problems:?}");
    conflicts.into_iter().next().expect("one conflict")
}

/// Applies full(before) then update(after) to an in-memory kernel, and checks the elements
/// against a fresh full compile of `after`; returns the problems the update reported.
fn update_matches_full(
    before: &mut ProxyState,
    after: impl FnOnce(&mut ProxyState),
) -> Vec<Problem> {
    let mut c = new_compiler();
    let mut kernel = Ruleset::new();
    kernel.apply(&c.full(before)).expect("full applies");
    c.take_problems();
    after(before);
    let dirty = before.take_dirty();
    let tx = c.update(before, &dirty);
    kernel.apply(&tx).expect("update applies");
    let (expected, _) = compiled(before);
    assert_eq!(elements(&kernel), expected, "{}", tx.render());
    c.take_problems()
}

#[test]
fn the_older_of_two_services_with_the_same_cluster_ip_and_port_keeps_it() {
    // By name alone `aa-new` would come first: the creation time decides.
    let old = svc("zz-old", "10.96.0.1", Some(100));
    let new = svc("aa-new", "10.96.0.1", Some(200));
    let slices = vec![
        eps("zz-old", &["10.244.1.1", "10.244.1.2"]),
        eps("aa-new", &["10.244.2.1", "10.244.2.2", "10.244.2.3"]),
    ];
    let mut st = state(vec![old.clone(), new], slices);
    let (els, problems) = compiled(&st);
    let t = text(&els);
    assert!(t.contains("10.96.0.1 . tcp . 80 : goto cluster-2"), "{t}");
    assert!(
        t.contains("10.244.1.1 . 8080") && !t.contains("10.244.2.1"),
        "{t}"
    );
    assert!(
        !t.contains("cluster-endpoints-3"),
        "the loser's endpoint map: {t}"
    );
    assert_eq!(
        conflict(&problems),
        (
            "aa-new".into(),
            FrontendKind::ClusterIp,
            "zz-old".into(),
            ConflictRule::Older
        )
    );
    let message = problems[0].to_string();
    assert!(
        message.starts_with(
            "Service ns/aa-new: port \"http\": clusterIP 10.96.0.1:80/tcp is also the clusterIP of ns/zz-old:http/tcp, which keeps it (its Service is older)"
        ),
        "{message}"
    );

    // The winner goes: the loser takes over, and nothing is reported.
    let problems = update_matches_full(&mut st, |st| {
        st.remove_service(&ServiceKey::new("ns", "zz-old"));
    });
    assert!(problems.is_empty(), "{problems:?}");
    let (els, _) = compiled(&st);
    assert!(text(&els).contains("10.96.0.1 . tcp . 80 : goto cluster-3"));

    // It comes back: the unchanged newer service loses again, reported by this update.
    let problems = update_matches_full(&mut st, |st| {
        st.upsert_service(old);
    });
    assert_eq!(conflict(&problems).0, "aa-new");
}

#[test]
fn a_conflict_is_reported_once_not_at_every_sync() {
    let mut st = state(
        vec![
            svc("a", "10.96.0.1", Some(1)),
            svc("b", "10.96.0.1", Some(2)),
        ],
        vec![eps("a", &["10.244.1.1"]), eps("b", &["10.244.2.1"])],
    );
    let mut c = new_compiler();
    c.full(&st);
    assert_eq!(conflict(&c.take_problems()).0, "b");
    // The loser's endpoints change: its conflict is the same, not reported again.
    st.upsert_slice(eps("b", &["10.244.2.9"]));
    let dirty = st.take_dirty();
    c.update(&st, &dirty);
    assert!(c.take_problems().is_empty());
    // Nor by the periodic full resync.
    c.full(&st);
    assert!(c.take_problems().is_empty());
    // But it stays visible.
    assert_eq!(conflict(&c.frontend_conflicts()).0, "b");
    // A new winner is a new conflict: reported.
    st.upsert_service(svc("c", "10.96.0.1", Some(0)));
    let dirty = st.take_dirty();
    c.update(&st, &dirty);
    let labels: Vec<String> = c
        .take_problems()
        .iter()
        .map(|p| match &p.reason {
            Reason::FrontendConflict { winner, .. } => {
                format!("{} loses to {}", p.name, winner.service.name)
            }
            r => r.to_string(),
        })
        .collect();
    assert_eq!(labels, ["a loses to c", "b loses to c"]);
}

#[test]
fn the_older_of_two_services_with_the_same_node_port_keeps_it() {
    let mut old = svc("zz-old", "10.96.0.1", Some(100));
    old.ports[0].node_port = Some(30080);
    let mut new = svc("aa-new", "10.96.0.2", Some(200));
    new.ports[0].node_port = Some(30080);
    let slices = vec![
        eps("zz-old", &["10.244.1.1"]),
        eps("aa-new", &["10.244.2.1", "10.244.2.2"]),
    ];
    let mut st = state(vec![old, new], slices);
    let (els, problems) = compiled(&st);
    let t = text(&els);
    assert!(t.contains("tcp . 30080 : goto nodeport-1"), "{t}");
    assert!(
        t.contains("nodeport-endpoints-1 { tcp . 30080 . 0 : 10.244.1.1 . 8080 }"),
        "{t}"
    );
    assert!(!t.contains("nodeport-endpoints-2"), "{t}");
    // The loser keeps its ClusterIP.
    assert!(t.contains("10.96.0.2 . tcp . 80 : goto cluster-2"), "{t}");
    assert_eq!(
        conflict(&problems),
        (
            "aa-new".into(),
            FrontendKind::NodePort,
            "zz-old".into(),
            ConflictRule::Older
        )
    );
    assert!(problems[0].to_string().contains("nodePort 30080/tcp"));
    // The winner loses its endpoints (it now rejects on its node port): it still keeps it.
    update_matches_full(&mut st, |st| {
        st.remove_slice(&rudder_model::SliceKey {
            namespace: "ns".into(),
            name: "zz-old-1".into(),
        });
    });
    let (els, _) = compiled(&st);
    let t = text(&els);
    assert!(
        t.contains("no-endpoint-nodeports { tcp . 30080 : goto reject-chain }"),
        "{t}"
    );
    assert!(!t.contains("service-nodeports { tcp . 30080"), "{t}");
}

#[test]
fn a_cluster_ip_wins_over_an_older_services_external_ip_on_it() {
    // The external IP's service is older and has no endpoints: neither its age nor its reject
    // element may touch the ClusterIP's traffic.
    let mut thief = svc("thief", "10.96.0.9", Some(1));
    thief.external_ips = vec![ip("10.96.0.1")];
    let owner = svc("owner", "10.96.0.1", Some(50));
    let mut st = state(vec![thief, owner], vec![eps("owner", &["10.244.1.1"])]);
    let (els, problems) = compiled(&st);
    let t = text(&els);
    assert!(t.contains("10.96.0.1 . tcp . 80 : goto cluster-1"), "{t}");
    assert!(
        !t.contains("10.96.0.1 . tcp . 80 : goto reject-chain"),
        "{t}"
    );
    // The thief's own ClusterIP still rejects (it has no endpoints).
    assert!(
        t.contains("10.96.0.9 . tcp . 80 : goto reject-chain"),
        "{t}"
    );
    assert_eq!(
        conflict(&problems),
        (
            "thief".into(),
            FrontendKind::ExternalIp,
            "owner".into(),
            ConflictRule::Precedence
        )
    );
    // Without the ClusterIP's service, the external IP is the thief's.
    update_matches_full(&mut st, |st| {
        st.remove_service(&ServiceKey::new("ns", "owner"));
    });
    let (els, problems) = compiled(&st);
    assert!(text(&els).contains("10.96.0.1 . tcp . 80 : goto reject-chain"));
    assert!(problems.is_empty());
}

#[test]
fn a_cluster_ip_wins_over_a_load_balancer_ip_on_it_with_its_source_ranges() {
    // The LB service restricts its sources: programmed on the other's ClusterIP, that would
    // drop the ClusterIP's traffic from everywhere else.
    let mut lb = svc("lb", "10.96.0.9", Some(1));
    lb.load_balancer_ips = vec![ip("10.96.0.1"), ip("198.51.100.7")];
    lb.load_balancer_source_ranges = vec!["192.0.2.0/24".parse().expect("cidr")];
    let owner = svc("owner", "10.96.0.1", Some(50));
    let mut st = state(
        vec![lb, owner],
        vec![eps("owner", &["10.244.1.1"]), eps("lb", &["10.244.2.1"])],
    );
    let (els, problems) = compiled(&st);
    let t = text(&els);
    assert!(t.contains("10.96.0.1 . tcp . 80 : goto cluster-1"), "{t}");
    assert!(!t.contains("10.96.0.1 . tcp . 80 : goto external-1"), "{t}");
    // Only the LB IP it keeps is filtered.
    assert!(
        t.contains("firewall-ips { 198.51.100.7 . tcp . 80 }"),
        "{t}"
    );
    assert!(
        !t.contains("10.96.0.1 . tcp . 80 . 192.0.2.0/24")
            && !t.contains("{ 10.96.0.1 . tcp . 80 }"),
        "{t}"
    );
    assert_eq!(
        conflict(&problems),
        (
            "lb".into(),
            FrontendKind::IngressIp,
            "owner".into(),
            ConflictRule::Precedence
        )
    );
    // And back again when the ClusterIP's service goes.
    update_matches_full(&mut st, |st| {
        st.remove_service(&ServiceKey::new("ns", "owner"));
    });
    let (els, _) = compiled(&st);
    let t = text(&els);
    assert!(t.contains("10.96.0.1 . tcp . 80 . 192.0.2.0/24"), "{t}");
}

#[test]
fn a_load_balancer_ip_wins_over_an_external_ip_and_a_missing_creation_time_ranks_last() {
    // Same external frontend: an LB IP before an external IP, whatever their age.
    let mut ext = svc("ext", "10.96.0.8", Some(1));
    ext.external_ips = vec![ip("198.51.100.7")];
    let mut lb = svc("lb", "10.96.0.9", Some(100));
    lb.load_balancer_ips = vec![ip("198.51.100.7")];
    let (_, problems) = compiled(&state(vec![ext, lb], vec![]));
    assert_eq!(
        conflict(&problems),
        (
            "ext".into(),
            FrontendKind::ExternalIp,
            "lb".into(),
            ConflictRule::Precedence
        )
    );
    // Two external IPs: the one with a creation time before the one without, whatever their
    // names; two without: by name.
    let mut a = svc("a", "10.96.0.8", None);
    a.external_ips = vec![ip("198.51.100.7")];
    let mut z = svc("z", "10.96.0.9", Some(100));
    z.external_ips = vec![ip("198.51.100.7")];
    let (_, problems) = compiled(&state(vec![a.clone(), z.clone()], vec![]));
    assert_eq!(conflict(&problems).0, "a");
    z.creation_timestamp = None;
    let (_, problems) = compiled(&state(vec![a, z], vec![]));
    let c = conflict(&problems);
    assert_eq!((c.0.as_str(), c.3), ("z", ConflictRule::Order));
}

#[test]
fn different_ports_on_one_address_do_not_conflict() {
    let owner = svc("owner", "10.96.0.1", Some(1));
    let mut other = svc("other", "10.96.0.9", Some(2));
    other.external_ips = vec![ip("10.96.0.1")];
    other.ports[0].port = 8080;
    let (els, problems) = compiled(&state(
        vec![owner, other],
        vec![eps("owner", &["10.244.1.1"]), eps("other", &["10.244.2.1"])],
    ));
    assert!(problems.is_empty(), "{problems:?}");
    let t = text(&els);
    assert!(t.contains("10.96.0.1 . tcp . 80 : goto cluster-1"), "{t}");
    assert!(
        t.contains("10.96.0.1 . tcp . 8080 : goto external-1"),
        "{t}"
    );
}

#[test]
fn explain_shows_the_winner_and_says_the_frontend_is_contested() {
    // By name the thief would come first.
    let mut thief = svc("a-thief", "10.96.0.9", Some(1));
    thief.external_ips = vec![ip("10.96.0.1")];
    let owner = svc("owner", "10.96.0.1", Some(50));
    let st = state(
        vec![thief, owner],
        vec![
            eps("owner", &["10.244.1.1"]),
            eps("a-thief", &["10.244.2.1"]),
        ],
    );
    let e = explain(
        &st,
        &Config::default(),
        &the_node(),
        &Query {
            to: ip("10.96.0.1"),
            port: 80,
            protocol: Protocol::Tcp,
            from: Some(ip("10.244.3.3")),
            via: None,
        },
    );
    assert_eq!(
        e.matched,
        Some(("ns/owner:http/tcp".to_owned(), Frontend::ClusterIp))
    );
    let addrs: Vec<String> = e.candidates.iter().map(|c| c.address.to_string()).collect();
    assert_eq!(addrs, ["10.244.1.1"]);
    assert_eq!(e.contested.len(), 1);
    assert_eq!(e.contested[0].service_port, "ns/a-thief:http/tcp");
    let report = e.to_string();
    assert!(
        report.contains("contested:   also the external IP of ns/a-thief:http/tcp, which loses it"),
        "{report}"
    );
}
