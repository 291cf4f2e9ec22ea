//! Names of kernel objects derived from input (session affinity chains and sets) are
//! injective: two service ports never share an object, however their names are spelled.

mod common;

use std::collections::BTreeSet;

use common::*;
use rudder_compiler::{Compiler, Config};
use rudder_model::{IpFamily, Protocol, Service};

/// A ClientIP service `ns/name` on `cluster_ip` port `port` with one endpoint `ep`.
fn sticky(
    ns: &str,
    name: &str,
    port_name: &str,
    cluster_ip: &str,
    ep: &str,
) -> (Service, rudder_model::EndpointSlice) {
    let mut s = service(ns, name, &[cluster_ip]);
    s.ports = vec![port(port_name, Protocol::Tcp, 80, None)];
    s.session_affinity_timeout = Some(60);
    let mut sl = slice(
        ns,
        "slice",
        name,
        IpFamily::V4,
        &[(port_name, Protocol::Tcp, 8080)],
        vec![endpoint(ep, true, "node-b")],
    );
    sl.key.name = format!("{name}-slice");
    (s, sl)
}

/// The chain a ClusterIP's `service-ips` element goes to, and every endpoint DNATed to by the
/// affinity chains whose names start with it.
fn reached(text: &str, cluster_ip: &str) -> (String, BTreeSet<String>) {
    let needle = format!("{cluster_ip} . tcp . 80 : goto ");
    let start = text.find(&needle).expect("service-ips element") + needle.len();
    let chain: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let eps = text
        .lines()
        .filter(|l| l.starts_with(&format!("add rule ip rudder {chain}")))
        .filter_map(|l| l.split("dnat ip to ").nth(1))
        .map(str::to_owned)
        .collect();
    (chain, eps)
}

fn check_apart(
    a: (Service, rudder_model::EndpointSlice),
    b: (Service, rudder_model::EndpointSlice),
) {
    let st = state(vec![a.0, b.0], vec![a.1, b.1]);
    let mut c = Compiler::new(
        &[IpFamily::V4],
        Config::default(),
        node("node-a", &["172.18.0.2"]),
    );
    c.full(&st);
    assert!(c.take_problems().is_empty());
    let text = c.ruleset().expect("ruleset applies").render();
    let (chain_a, eps_a) = reached(&text, "10.96.0.1");
    let (chain_b, eps_b) = reached(&text, "10.96.0.2");
    assert_ne!(chain_a, chain_b, "{text}");
    assert_eq!(
        eps_a,
        BTreeSet::from(["10.244.1.1:8080".to_owned()]),
        "{text}"
    );
    assert_eq!(
        eps_b,
        BTreeSet::from(["10.244.2.2:8080".to_owned()]),
        "{text}"
    );
    // No input text in any name: only the prefix and hex digits before the suffix.
    for name in [&chain_a, &chain_b] {
        let hex = &name["aff-".len()..name.len() - "-c".len()];
        assert_eq!(hex.len(), 32, "{name}");
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
    }
}

#[test]
fn namespace_and_name_that_join_alike_get_their_own_affinity_objects() {
    // `x` + `y/z` and `x/y` + `z` read the same once joined with `/`.
    check_apart(
        sticky("x", "y/z", "http", "10.96.0.1", "10.244.1.1"),
        sticky("x/y", "z", "http", "10.96.0.2", "10.244.2.2"),
    );
}

#[test]
fn name_and_port_name_that_join_alike_get_their_own_affinity_objects() {
    check_apart(
        sticky("x", "y", "z/http", "10.96.0.1", "10.244.1.1"),
        sticky("x", "y/z", "http", "10.96.0.2", "10.244.2.2"),
    );
}
