//! Typed values: the atoms that set keys, map data and rule constants are made of.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::name::Name;

/// An nftables address family. Rudder uses one table per IP family, like kube-proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// `ip`: IPv4.
    Ip,
    /// `ip6`: IPv6.
    Ip6,
}

impl Family {
    /// The family keyword in `nft` syntax.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }

    /// The family an address belongs to.
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::Ip,
            IpAddr::V6(_) => Family::Ip6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A layer-4 protocol (`inet_proto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L4Proto {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// SCTP (132).
    Sctp,
}

impl L4Proto {
    /// The protocol keyword in `nft` syntax.
    pub fn as_str(self) -> &'static str {
        match self {
            L4Proto::Tcp => "tcp",
            L4Proto::Udp => "udp",
            L4Proto::Sctp => "sctp",
        }
    }
}

/// A verdict, as a rule statement or as the data of a verdict map.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// `accept`
    Accept,
    /// `drop`
    Drop,
    /// `return`
    Return,
    /// `jump CHAIN`
    Jump(Name),
    /// `goto CHAIN`
    Goto(Name),
}

impl Verdict {
    /// The chain this verdict transfers control to, if any.
    pub fn target(&self) -> Option<&Name> {
        match self {
            Verdict::Jump(n) | Verdict::Goto(n) => Some(n),
            _ => None,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept => f.write_str("accept"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Return => f.write_str("return"),
            Verdict::Jump(n) => write!(f, "jump {n}"),
            Verdict::Goto(n) => write!(f, "goto {n}"),
        }
    }
}

/// One typed value. Concatenations of atoms form set keys and map data.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Atom {
    /// An IPv4 address (`ipv4_addr`).
    Ipv4(Ipv4Addr),
    /// An IPv6 address (`ipv6_addr`).
    Ipv6(Ipv6Addr),
    /// A layer-4 protocol (`inet_proto`).
    Proto(L4Proto),
    /// A transport port (`inet_service`).
    Port(u16),
    /// An unsigned integer, written in decimal (`numgen` results and the like).
    Int(u32),
    /// A bit mask, written in hexadecimal (`mark`).
    Hex(u32),
    /// A verdict (data of verdict maps). Boxed: verdicts are rare in keys and data, and
    /// keeping the chain name out of line makes every atom 8 bytes smaller.
    Verdict(Box<Verdict>),
    /// An address prefix (elements of interval sets). Host prefixes (`/32`, `/128`) are written
    /// as plain addresses, as the kernel lists them.
    Prefix(IpAddr, u8),
}

/// One word per atom (two for IPv6), tagged by kind: set keys are hashed hundreds of
/// thousands of times per full compile, and the derived hash fed addresses to the hasher byte
/// by byte.
impl std::hash::Hash for Atom {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        const fn tag(t: u64) -> u64 {
            t << 56
        }
        match self {
            Atom::Ipv4(a) => h.write_u64(tag(1) | u64::from(u32::from(*a))),
            Atom::Ipv6(a) => {
                h.write_u64(tag(2));
                h.write_u128(u128::from(*a));
            }
            Atom::Proto(p) => h.write_u64(tag(3) | *p as u64),
            Atom::Port(p) => h.write_u64(tag(4) | u64::from(*p)),
            Atom::Int(i) => h.write_u64(tag(5) | u64::from(*i)),
            Atom::Hex(i) => h.write_u64(tag(6) | u64::from(*i)),
            Atom::Verdict(v) => {
                h.write_u64(tag(7));
                v.hash(h);
            }
            Atom::Prefix(IpAddr::V4(a), len) => {
                h.write_u64(tag(8) | u64::from(*len) << 32 | u64::from(u32::from(*a)));
            }
            Atom::Prefix(IpAddr::V6(a), len) => {
                h.write_u64(tag(9) | u64::from(*len));
                h.write_u128(u128::from(*a));
            }
        }
    }
}

impl Atom {
    /// The atom for an IP address of either family.
    pub fn ip(addr: IpAddr) -> Atom {
        match addr {
            IpAddr::V4(a) => Atom::Ipv4(a),
            IpAddr::V6(a) => Atom::Ipv6(a),
        }
    }
}

impl fmt::Display for Atom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Atom::Ipv4(a) => write!(f, "{a}"),
            Atom::Ipv6(a) => write!(f, "{a}"),
            Atom::Proto(p) => f.write_str(p.as_str()),
            Atom::Port(p) => write!(f, "{p}"),
            Atom::Int(i) => write!(f, "{i}"),
            Atom::Hex(i) => write!(f, "{i:#x}"),
            Atom::Verdict(v) => write!(f, "{v}"),
            Atom::Prefix(a, len) if u32::from(*len) == if a.is_ipv4() { 32 } else { 128 } => {
                write!(f, "{a}")
            }
            Atom::Prefix(a, len) => write!(f, "{a}/{len}"),
        }
    }
}

/// A set key or map datum: one atom or a concatenation of several. Cheap to clone (shared).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(pub std::sync::Arc<[Atom]>);

/// The data of a map element (same shape as a [`Key`]).
pub type Value = Key;

impl Key {
    /// A key of the given atoms.
    pub fn new(atoms: impl Into<std::sync::Arc<[Atom]>>) -> Key {
        Key(atoms.into())
    }

    /// A verdict as map data.
    pub fn verdict(v: Verdict) -> Key {
        Key(std::sync::Arc::new([Atom::Verdict(Box::new(v))]))
    }

    /// The atoms.
    pub fn atoms(&self) -> &[Atom] {
        &self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" . ")?;
            }
            write!(f, "{a}")?;
        }
        Ok(())
    }
}

/// The elements of a set (value `None`) or map (value `Some`), sorted by key.
pub type Elements = BTreeMap<Key, Option<Value>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atoms_stay_small() {
        // Every set element holds several atoms: their size is most of the compiler's memory.
        assert!(
            std::mem::size_of::<Atom>() <= 24,
            "{}",
            std::mem::size_of::<Atom>()
        );
    }

    #[test]
    fn atoms_render_in_nft_syntax() {
        let k = Key::new(vec![
            Atom::Ipv4(Ipv4Addr::new(10, 96, 0, 1)),
            Atom::Proto(L4Proto::Sctp),
            Atom::Port(80),
            Atom::Int(7),
        ]);
        assert_eq!(k.to_string(), "10.96.0.1 . sctp . 80 . 7");
        assert_eq!(Atom::Hex(0x4000).to_string(), "0x4000");
        assert_eq!(
            Atom::Ipv6("fd00::1".parse().unwrap()).to_string(),
            "fd00::1"
        );
        let v = Key::verdict(Verdict::Goto(Name::new("cluster-3").unwrap()));
        assert_eq!(v.to_string(), "goto cluster-3");
    }
}
