//! ClientIP session affinity: per-service-port chains and dynamic sets.
//!
//! Affinity needs per-client state in the kernel, so unlike every other service shape it
//! cannot live only in shared maps. For a service port with affinity, Rudder writes
//! (kube-proxy's mechanism, with names derived from a hash, never from input text):
//!
//! ```text
//! chain aff-H-c                         (the cluster endpoints; aff-H-l for local ones)
//!   ip saddr @aff-H-c-0 goto aff-H-c-0  (a client seen recently goes where it went before)
//!   ...
//!   numgen random mod N vmap { 0 : goto aff-H-c-0, ... }
//! chain aff-H-c-i
//!   update @aff-H-c-i { ip saddr }      (remember the client; the set's timeout is the
//!   meta l4proto tcp dnat ip to EP:PORT  affinity timeout)
//! set aff-H-c-i { type ipv4_addr ; flags dynamic,timeout ; timeout Ts ; }
//! chain aff-H-ext: masquerade mark, goto aff-H-c      (external traffic, Cluster policy)
//! chain aff-H-xl: short-circuits, then goto aff-H-l   (external traffic, Local policy)
//! ```
//!
//! As in kube-proxy, affinity is per service port and client IP, whatever service IP the
//! client used.
//!
//! ## Names
//!
//! `H` is [`port_id`]: the first 128 bits of the SHA-256 of an unambiguous encoding of the
//! service port's identity (family, namespace, name, port name, protocol), as 32 hex digits.
//! Names therefore never contain input text, and they are injective in practice: the encoding
//! is injective (every text field is length-prefixed, so `x` + `y/z` and `x/y` + `z` differ),
//! and finding two identities with the same 128-bit prefix of SHA-256 on purpose is out of
//! reach (a birthday search needs about 2^64 hashes; FNV-1a, used before, can be collided in
//! seconds). As belt and braces the compiler still checks that no two service ports of one
//! family get the same `H` (see `FamilyCompiler::register_affinity` in `lib.rs`): the
//! lower-ranked one is refused with
//! [`Reason::ObjectNameCollision`](rudder_model::Reason::ObjectNameCollision).
//!
//! Length: `aff-` (4) + 32 hex digits + the longest suffix, `-c-` or `-l-` and an endpoint
//! index of at most 10 digits (13): 49 bytes, far below the kernel's 255.

use rudder_model::{IpFamily, Protocol, ServicePortName};
use rudder_nft::{
    Atom, ChainDecl, CmpOp, DataType, Expr, Family, KeyType, L4Proto, Name, Rule, SetDecl, SetFlag,
    Stmt, Verdict,
};
use sha2::{Digest, Sha256};

use crate::layout::external_local_rules;
use crate::policy::Categorized;
use crate::{Ctx, Owned};

/// Domain separation: a hash of the same fields for another purpose differs.
const NAME_DOMAIN: &[u8] = b"rudder affinity object names v1\0";

/// The identity of a service port's affinity objects in one family: the first 128 bits of
/// SHA-256 over [`NAME_DOMAIN`], the family (one byte), the namespace, the name and the port
/// name (each as a 64-bit big-endian length, then its bytes) and the protocol (one byte).
/// Stable across runs and versions of Rudder, so names survive restarts.
pub(crate) fn port_id(family: IpFamily, port: &ServicePortName) -> u128 {
    let mut h = Sha256::new();
    h.update(NAME_DOMAIN);
    h.update([match family {
        IpFamily::V4 => 4u8,
        IpFamily::V6 => 6u8,
    }]);
    for field in [&port.service.namespace, &port.service.name, &port.port] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    h.update([match port.protocol {
        Protocol::Tcp => 6u8,
        Protocol::Udp => 17u8,
        Protocol::Sctp => 132u8,
    }]);
    let digest = h.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    shorten_for_tests(u128::from_be_bytes(first))
}

/// The affinity object names' common prefix for an identity from [`port_id`].
pub(crate) fn base_name(id: u128) -> String {
    format!("aff-{id:032x}")
}

#[cfg(test)]
thread_local! {
    /// Unit tests keep only this many bits of [`port_id`], to force collisions.
    pub(crate) static ID_BITS: std::cell::Cell<u32> = const { std::cell::Cell::new(128) };
}

#[cfg(test)]
fn shorten_for_tests(id: u128) -> u128 {
    match ID_BITS.with(std::cell::Cell::get) {
        0 => 0,
        b if b >= 128 => id,
        b => id >> (128 - b),
    }
}

#[cfg(not(test))]
fn shorten_for_tests(id: u128) -> u128 {
    id
}

fn name(s: &str) -> Name {
    // Built from a fixed prefix, hex digits and numbers only.
    Name::new(s).expect("affinity object names are valid")
}

/// The chains that frontends of an affinity service jump to.
pub(crate) struct Targets {
    /// Cluster endpoints (`None` when there are none).
    pub cluster: Option<Name>,
    /// Local endpoints (`None` when there are none or the service uses none).
    pub local: Option<Name>,
    /// The entry for external frontends (external IPs, load balancer IPs, node ports).
    pub external: Option<Name>,
}

/// One group: a dispatch chain, and a chain and a timeout set per endpoint.
fn group(
    f: Family,
    base: &str,
    proto: L4Proto,
    eps: &[rudder_model::ResolvedEndpoint<'_>],
    timeout: u32,
    objects: &mut Vec<Owned>,
) -> Name {
    let addr_type = if f == Family::Ip {
        DataType::Ipv4Addr
    } else {
        DataType::Ipv6Addr
    };
    let dispatch = name(base);
    let mut dispatch_rules = Vec::new();
    let mut choices = Vec::new();
    for (i, ep) in eps.iter().enumerate() {
        let ep_name = name(&format!("{base}-{i}"));
        objects.push(Owned::Set(SetDecl {
            flags: vec![SetFlag::Dynamic, SetFlag::Timeout],
            timeout_secs: Some(timeout),
            ..SetDecl::set(ep_name.clone(), KeyType::types([addr_type]))
        }));
        objects.push(Owned::Chain(
            ChainDecl::regular(ep_name.clone()),
            vec![Rule::new(vec![
                Stmt::UpdateSet(Expr::Saddr(f), ep_name.clone()),
                Stmt::Cmp(Expr::L4Proto, CmpOp::Eq, Expr::Const(Atom::Proto(proto))),
                Stmt::DnatTo(ep.endpoint.address, ep.port),
            ])],
        ));
        dispatch_rules.push(Rule::new(vec![
            Stmt::Lookup(Expr::Saddr(f), CmpOp::Eq, ep_name.clone()),
            Stmt::Verdict(Verdict::Goto(ep_name.clone())),
        ]));
        choices.push((Atom::Int(i as u32), Verdict::Goto(ep_name)));
    }
    let n = u32::try_from(eps.len()).unwrap_or(u32::MAX);
    dispatch_rules.push(Rule::new(vec![Stmt::VmapAnon(Expr::Numgen(n), choices)]));
    objects.push(Owned::Chain(
        ChainDecl::regular(dispatch.clone()),
        dispatch_rules,
    ));
    dispatch
}

/// Builds the affinity objects of one service port and returns the chains to jump to.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build(
    family: IpFamily,
    port: &ServicePortName,
    proto: L4Proto,
    cat: &Categorized<'_>,
    timeout: u32,
    external_local: bool,
    ctx: &Ctx,
    objects: &mut Vec<Owned>,
) -> Targets {
    let f = if family == IpFamily::V4 {
        Family::Ip
    } else {
        Family::Ip6
    };
    let base = base_name(port_id(family, port));
    let cluster = (!cat.cluster.is_empty()).then(|| {
        group(
            f,
            &format!("{base}-c"),
            proto,
            &cat.cluster,
            timeout,
            objects,
        )
    });
    let local = (!cat.local.is_empty())
        .then(|| group(f, &format!("{base}-l"), proto, &cat.local, timeout, objects));
    let mark = ctx.config.masquerade_mark();
    let external = cluster.as_ref().map(|c| {
        let (chain, rules) = if external_local {
            (
                name(&format!("{base}-xl")),
                external_local_rules(f, &ctx.node, mark, c.clone(), local.clone()),
            )
        } else {
            (
                name(&format!("{base}-ext")),
                vec![Rule::new(vec![
                    Stmt::MarkOr(mark),
                    Stmt::Verdict(Verdict::Goto(c.clone())),
                ])],
            )
        };
        objects.push(Owned::Chain(ChainDecl::regular(chain.clone()), rules));
        chain
    });
    Targets {
        cluster,
        local,
        external,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;
    use rudder_model::{
        Endpoint, EndpointPort, EndpointSlice, ProxyState, Reason, Service, ServiceKey, ServicePort,
    };

    use super::*;
    use crate::{Compiler, Config, NodeContext, NodePortIps};

    fn spn(ns: &str, name: &str, port: &str, protocol: Protocol) -> ServicePortName {
        ServicePortName {
            service: ServiceKey::new(ns, name),
            port: port.to_owned(),
            protocol,
        }
    }

    #[test]
    fn names_that_join_to_the_same_text_get_different_ids() {
        // Joined with `/`, both read `x/y/z/http/tcp`: FNV-1a of that text named both.
        let a = spn("x", "y/z", "http", Protocol::Tcp);
        let b = spn("x/y", "z", "http", Protocol::Tcp);
        assert_ne!(port_id(IpFamily::V4, &a), port_id(IpFamily::V4, &b));
        // Port names alike.
        let c = spn("x", "y", "z/http", Protocol::Tcp);
        let d = spn("x", "y/z", "http", Protocol::Tcp);
        assert_ne!(port_id(IpFamily::V4, &c), port_id(IpFamily::V4, &d));
        // The name is the prefix and 32 hex digits, nothing of the input.
        let name = base_name(port_id(IpFamily::V4, &a));
        assert_eq!(name.len(), 4 + 32);
        assert!(name.starts_with("aff-"));
        assert!(name[4..].bytes().all(|b| b.is_ascii_hexdigit()));
    }

    fn arb_family() -> impl Strategy<Value = IpFamily> {
        prop_oneof![Just(IpFamily::V4), Just(IpFamily::V6)]
    }

    fn arb_protocol() -> impl Strategy<Value = Protocol> {
        prop_oneof![
            Just(Protocol::Tcp),
            Just(Protocol::Udp),
            Just(Protocol::Sctp)
        ]
    }

    /// `text` cut into namespace, name and port name at two points (in any order).
    fn split(text: &str, i: usize, j: usize) -> (String, String, String) {
        let (i, j) = (i.min(j).min(text.len()), i.max(j).min(text.len()));
        (text[..i].into(), text[i..j].into(), text[j..].into())
    }

    /// Pairs of service ports: independent ones, and ones whose fields joined with or without
    /// a separator read the same (the same text cut at different points).
    fn arb_pair()
    -> impl Strategy<Value = ((IpFamily, ServicePortName), (IpFamily, ServicePortName))> {
        // A tiny alphabet with the separator makes equal texts common.
        let one = || {
            let text = "[xy/:.\\-]{0,4}";
            (arb_family(), text, text, text, arb_protocol())
                .prop_map(|(f, ns, name, port, proto)| (f, spn(&ns, &name, &port, proto)))
        };
        let resplit = (
            arb_family(),
            "[xy/]{0,8}",
            (0..9usize, 0..9usize, 0..9usize, 0..9usize),
            arb_protocol(),
        )
            .prop_map(|(f, text, (a, b, c, d), proto)| {
                let (n1, s1, p1) = split(&text, a, b);
                let (n2, s2, p2) = split(&text, c, d);
                (
                    (f, spn(&n1, &s1, &p1, proto)),
                    (f, spn(&n2, &s2, &p2, proto)),
                )
            });
        prop_oneof![(one(), one()), resplit]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

        #[test]
        fn distinct_service_ports_get_distinct_names((a, b) in arb_pair()) {
            let (ida, idb) = (port_id(a.0, &a.1), port_id(b.0, &b.1));
            prop_assert_eq!(a == b, ida == idb, "{:?} {:?}", a, b);
            prop_assert_eq!(a == b, base_name(ida) == base_name(idb));
        }
    }

    /// A ClientIP service `ns/name` on `cluster_ip:80` with one endpoint, created at `created`.
    fn sticky(
        ns: &str,
        name: &str,
        cluster_ip: &str,
        ep: &str,
        created: i64,
    ) -> (Service, EndpointSlice) {
        let mut s = Service::new(
            ServiceKey::new(ns, name),
            vec![cluster_ip.parse().expect("ip")],
        );
        s.ports = vec![ServicePort::new("http", Protocol::Tcp, 80)];
        s.session_affinity_timeout = Some(60);
        s.creation_timestamp = Some(created);
        let mut sl = EndpointSlice::new(
            ns,
            &format!("{name}-1"),
            name,
            IpFamily::V4,
            vec![EndpointPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8080,
            }],
            vec![Endpoint::new(ep.parse().expect("ip"))],
        );
        sl.service = ServiceKey::new(ns, name);
        (s, sl)
    }

    fn compiler() -> Compiler {
        Compiler::new(
            &[IpFamily::V4],
            Config::default(),
            NodeContext::new("n".into(), NodePortIps::All),
        )
    }

    fn full_text(st: &ProxyState) -> (String, Vec<Reason>) {
        let mut c = compiler();
        c.full(st);
        let reasons = c.take_problems().into_iter().map(|p| p.reason).collect();
        (c.ruleset().expect("ruleset").render(), reasons)
    }

    #[test]
    fn a_port_whose_affinity_names_are_taken_is_refused_until_they_are_free() {
        // Force every identity to 0: all affinity ports collide.
        ID_BITS.with(|b| b.set(0));
        let (old, old_sl) = sticky("ns", "old", "10.96.0.1", "10.244.0.1", 100);
        let (new, new_sl) = sticky("ns", "new", "10.96.0.2", "10.244.0.2", 200);
        let mut st = ProxyState::new();
        st.replace_all(vec![old.clone(), new], vec![old_sl, new_sl]);
        st.take_dirty();
        let mut c = compiler();
        c.full(&st);
        let problems = c.take_problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].name, "new");
        assert_eq!(problems[0].reason.label(), "object_name_collision");
        assert!(
            problems[0].to_string().contains("ns/old:http/tcp"),
            "{}",
            problems[0]
        );
        let text = c.ruleset().expect("ruleset").render();
        // Only the older service is programmed; the newer one's ClusterIP goes nowhere.
        assert!(text.contains("10.96.0.1 . tcp . 80 : goto aff-"), "{text}");
        assert!(!text.contains("10.96.0.2 . tcp . 80"), "{text}");
        assert!(
            text.contains("10.244.0.1:8080") && !text.contains("10.244.0.2:8080"),
            "{text}"
        );

        // The older one goes away: the newer one takes the names over, incrementally exactly
        // as a full compile does, and nothing is refused any more.
        let mut kernel = rudder_nft::Ruleset::new();
        kernel.apply(&compiler_full(&mut c, &st)).expect("full");
        st.remove_service(&ServiceKey::new("ns", "old"));
        let dirty = st.take_dirty();
        kernel
            .apply(&c.update(&st, &dirty))
            .expect("update applies");
        assert!(c.take_problems().is_empty());
        let (expected, reasons) = full_text(&st);
        assert!(reasons.is_empty());
        assert_eq!(
            aff_and_elements(&kernel.render()),
            aff_and_elements(&expected)
        );
        assert!(expected.contains("10.244.0.2:8080"), "{expected}");

        // It comes back: the newer service (unchanged) is refused again, in the same update.
        st.upsert_service(old);
        let dirty = st.take_dirty();
        kernel
            .apply(&c.update(&st, &dirty))
            .expect("update applies");
        let labels: Vec<String> = c
            .take_problems()
            .iter()
            .map(|p| format!("{} {}", p.name, p.reason.label()))
            .collect();
        assert_eq!(labels, ["new object_name_collision"]);
        let (expected, _) = full_text(&st);
        assert_eq!(
            aff_and_elements(&kernel.render()),
            aff_and_elements(&expected)
        );
        ID_BITS.with(|b| b.set(128));
    }

    fn compiler_full(c: &mut Compiler, st: &ProxyState) -> rudder_nft::Transaction {
        let tx = c.full(st);
        c.take_problems();
        tx
    }

    /// The affinity objects and all elements (unused classes may differ between an updated
    /// and a fresh ruleset).
    fn aff_and_elements(text: &str) -> BTreeSet<String> {
        text.lines()
            .filter(|l| l.contains("aff-") || l.starts_with("add element"))
            .map(str::to_owned)
            .collect()
    }
}
