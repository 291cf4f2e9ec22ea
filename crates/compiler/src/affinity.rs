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

use rudder_model::{IpFamily, ServicePortName};
use rudder_nft::{
    Atom, ChainDecl, CmpOp, DataType, Expr, Family, KeyType, L4Proto, Name, Rule, SetDecl, SetFlag,
    Stmt, Verdict,
};

use crate::layout::external_local_rules;
use crate::policy::Categorized;
use crate::{Ctx, Owned};

/// A stable 64-bit FNV-1a hash, so object names do not change between runs or versions.
fn fnv64(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
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
    let h = fnv64(&format!(
        "{family}/{}/{}/{}/{}",
        port.service.namespace, port.service.name, port.port, port.protocol
    ));
    let base = format!("aff-{h:016x}");
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
