//! A small typed AST for the rule shapes Rudder emits.
//!
//! It is not a general nftables grammar: every variant is something the compiler writes, and
//! each renders to exactly one `nft` spelling, so rules compare by value and render
//! deterministically.

use std::fmt;

use crate::name::Name;
use crate::value::{Atom, Family, Verdict};

/// An expression: a packet field, a constant or a composition of those.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Expr {
    /// Source address of the network header (`ip saddr` / `ip6 saddr`).
    Saddr(Family),
    /// Destination address of the network header (`ip daddr` / `ip6 daddr`).
    Daddr(Family),
    /// Transport destination port for any transport protocol (`th dport`).
    ThDport,
    /// The layer-4 protocol (`meta l4proto`).
    L4Proto,
    /// The packet mark (`meta mark`).
    Mark,
    /// `meta mark and MASK`.
    MarkAnd(u32),
    /// Input interface name (`iifname`).
    Iifname,
    /// Conntrack state (`ct state`).
    CtState,
    /// Conntrack status (`ct status`).
    CtStatus,
    /// A uniformly random number in `0..modulus` (`numgen random mod N`).
    Numgen(u32),
    /// Address type of the source or destination from the FIB (`fib saddr type`).
    FibType(FibKind),
    /// A concatenation `a . b . c`.
    Concat(Vec<Expr>),
    /// A typed constant.
    Const(Atom),
    /// An address prefix, such as `10.244.0.0/16`.
    Prefix(std::net::IpAddr, u8),
    /// An interface name or wildcard (`"eth0"`, `"veth*"`); see [`Expr::iface`].
    Iface(IfaceName),
    /// A keyword constant of the field it is compared with (`new`, `dnat`, `local`).
    Keyword(&'static str),
    /// An anonymous set `{ a, b }`.
    AnonSet(Vec<Expr>),
}

impl Expr {
    /// An interface-name constant. Returns `None` unless `name` is a valid Linux interface
    /// name (1–15 bytes of `[A-Za-z0-9_.-]`, optionally followed by a `*` wildcard).
    pub fn iface(name: &str) -> Option<Expr> {
        IfaceName::new(name).map(Expr::Iface)
    }
}

/// A validated interface name, optionally ending in a `*` wildcard.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IfaceName(Box<str>);

impl IfaceName {
    /// Validates 1–15 bytes of `[A-Za-z0-9_.-]`, optionally followed by `*`.
    pub fn new(name: &str) -> Option<IfaceName> {
        let base = name.strip_suffix('*').unwrap_or(name);
        let ok = !base.is_empty()
            && base.len() <= 15
            && base
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        ok.then(|| IfaceName(name.into()))
    }

    /// The name as written, including a trailing `*` wildcard.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Which address a `fib` lookup classifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FibKind {
    /// `fib saddr type`
    Saddr,
    /// `fib daddr type`
    Daddr,
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CmpOp {
    /// Equality (written implicitly, as nft lists it).
    Eq,
    /// `!=`
    Ne,
}

/// How a rejected packet is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reject {
    /// `reject`: ICMP / ICMPv6 port unreachable.
    Default,
    /// `reject with tcp reset`: a TCP RST, which is not subject to ICMP rate limits.
    TcpReset,
}

/// A rule statement.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stmt {
    /// `left [!=] right`.
    Cmp(Expr, CmpOp, Expr),
    /// `key @set` or `key != @set`.
    Lookup(Expr, CmpOp, Name),
    /// `key vmap @map`.
    Vmap(Expr, Name),
    /// `meta mark set meta mark or BITS`.
    MarkOr(u32),
    /// `meta mark set meta mark xor BITS`.
    MarkXor(u32),
    /// `dnat ip[6] addr . port to KEY map @MAP`: destination NAT to an `address . port`
    /// looked up in a map.
    DnatMap(Family, Expr, Name),
    /// `dnat ip[6] to ADDR:PORT`.
    DnatTo(std::net::IpAddr, u16),
    /// `masquerade [fully-random]`.
    Masquerade {
        /// Use `fully-random` source port allocation.
        fully_random: bool,
    },
    /// `reject ...`.
    Reject(Reject),
    /// A verdict statement.
    Verdict(Verdict),
    /// `counter`.
    Counter,
    /// `KEY vmap { V0 : VERDICT0, … }`: an anonymous verdict map (used only for the few
    /// session-affinity services; everything else uses named maps).
    VmapAnon(Expr, Vec<(Atom, Verdict)>),
    /// `update @SET { KEY }`: adds the key to a dynamic set from the packet path (refreshing
    /// its timeout).
    UpdateSet(Expr, Name),
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Saddr(fam) => write!(f, "{fam} saddr"),
            Expr::Daddr(fam) => write!(f, "{fam} daddr"),
            Expr::ThDport => f.write_str("th dport"),
            Expr::L4Proto => f.write_str("meta l4proto"),
            Expr::Mark => f.write_str("meta mark"),
            Expr::MarkAnd(m) => write!(f, "meta mark and {m:#x}"),
            Expr::Iifname => f.write_str("iifname"),
            Expr::CtState => f.write_str("ct state"),
            Expr::CtStatus => f.write_str("ct status"),
            Expr::Numgen(m) => write!(f, "numgen random mod {m}"),
            Expr::FibType(FibKind::Saddr) => f.write_str("fib saddr type"),
            Expr::FibType(FibKind::Daddr) => f.write_str("fib daddr type"),
            Expr::Concat(parts) => {
                for (i, p) in parts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" . ")?;
                    }
                    write!(f, "{p}")?;
                }
                Ok(())
            }
            Expr::Const(a) => write!(f, "{a}"),
            Expr::Prefix(addr, len) => write!(f, "{addr}/{len}"),
            Expr::Iface(n) => write!(f, "\"{}\"", n.0),
            Expr::Keyword(k) => f.write_str(k),
            Expr::AnonSet(items) => {
                f.write_str("{ ")?;
                for (i, it) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{it}")?;
                }
                f.write_str(" }")
            }
        }
    }
}

impl fmt::Display for Stmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stmt::Cmp(l, CmpOp::Eq, r) => write!(f, "{l} {r}"),
            Stmt::Cmp(l, CmpOp::Ne, r) => write!(f, "{l} != {r}"),
            Stmt::Lookup(k, CmpOp::Eq, s) => write!(f, "{k} @{s}"),
            Stmt::Lookup(k, CmpOp::Ne, s) => write!(f, "{k} != @{s}"),
            Stmt::Vmap(k, m) => write!(f, "{k} vmap @{m}"),
            Stmt::MarkOr(bits) => write!(f, "meta mark set meta mark or {bits:#x}"),
            Stmt::MarkXor(bits) => write!(f, "meta mark set meta mark xor {bits:#x}"),
            Stmt::DnatMap(fam, key, map) => write!(f, "dnat {fam} addr . port to {key} map @{map}"),
            Stmt::DnatTo(std::net::IpAddr::V4(a), p) => write!(f, "dnat ip to {a}:{p}"),
            Stmt::DnatTo(std::net::IpAddr::V6(a), p) => write!(f, "dnat ip6 to [{a}]:{p}"),
            Stmt::Masquerade { fully_random: true } => f.write_str("masquerade fully-random"),
            Stmt::Masquerade {
                fully_random: false,
            } => f.write_str("masquerade"),
            Stmt::Reject(Reject::Default) => f.write_str("reject"),
            Stmt::Reject(Reject::TcpReset) => f.write_str("reject with tcp reset"),
            Stmt::Verdict(v) => write!(f, "{v}"),
            Stmt::Counter => f.write_str("counter"),
            Stmt::VmapAnon(k, items) => {
                write!(f, "{k} vmap {{ ")?;
                for (i, (a, v)) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{a} : {v}")?;
                }
                f.write_str(" }")
            }
            Stmt::UpdateSet(k, s) => write!(f, "update @{s} {{ {k} }}"),
        }
    }
}

impl Stmt {
    /// The named sets and maps this statement reads.
    pub fn set_refs(&self) -> Option<&Name> {
        match self {
            Stmt::Lookup(_, _, s)
            | Stmt::Vmap(_, s)
            | Stmt::DnatMap(_, _, s)
            | Stmt::UpdateSet(_, s) => Some(s),
            _ => None,
        }
    }

    /// The chains this statement may transfer control to.
    pub fn chain_refs(&self) -> Vec<&Name> {
        match self {
            Stmt::Verdict(v) => v.target().into_iter().collect(),
            Stmt::VmapAnon(_, items) => items.iter().filter_map(|(_, v)| v.target()).collect(),
            _ => Vec::new(),
        }
    }
}

/// A rule: statements evaluated left to right, and an optional comment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    /// Statements.
    pub stmts: Vec<Stmt>,
    /// Optional comment.
    pub comment: Option<crate::name::Comment>,
}

impl Rule {
    /// A rule of the given statements, without comment.
    pub fn new(stmts: Vec<Stmt>) -> Rule {
        Rule {
            stmts,
            comment: None,
        }
    }

    /// The same rule with a comment.
    pub fn with_comment(mut self, text: &str) -> Rule {
        self.comment = Some(crate::name::Comment::sanitize(text));
        self
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.stmts.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{s}")?;
        }
        if let Some(c) = &self.comment {
            write!(f, " comment {c}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_render() {
        let key = Expr::Concat(vec![Expr::Daddr(Family::Ip), Expr::L4Proto, Expr::ThDport]);
        let vmap = Stmt::Vmap(key.clone(), Name::new("service-ips").unwrap());
        assert_eq!(
            vmap.to_string(),
            "ip daddr . meta l4proto . th dport vmap @service-ips"
        );
        let mut k2 = vec![Expr::Daddr(Family::Ip6), Expr::L4Proto, Expr::ThDport];
        k2.push(Expr::Numgen(3));
        let dnat = Stmt::DnatMap(Family::Ip6, Expr::Concat(k2), Name::new("m").unwrap());
        assert_eq!(
            dnat.to_string(),
            "dnat ip6 addr . port to ip6 daddr . meta l4proto . th dport . numgen random mod 3 map @m"
        );
        let masq = Stmt::Cmp(Expr::MarkAnd(0x4000), CmpOp::Ne, Expr::Const(Atom::Int(0)));
        assert_eq!(masq.to_string(), "meta mark and 0x4000 != 0");
        assert_eq!(
            Stmt::DnatTo("fd00::1".parse().unwrap(), 80).to_string(),
            "dnat ip6 to [fd00::1]:80"
        );
    }

    #[test]
    fn interface_names_are_checked() {
        assert_eq!(Expr::iface("veth*").unwrap().to_string(), "\"veth*\"");
        assert_eq!(Expr::iface("0eth").unwrap().to_string(), "\"0eth\"");
        assert!(Expr::iface("eth0\" accept").is_none());
        assert!(Expr::iface("averyveryverylongname").is_none());
        assert!(Expr::iface("*").is_none());
    }
}
