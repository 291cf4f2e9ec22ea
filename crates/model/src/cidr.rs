//! IP prefixes and lenient IP parsing.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Parses an IP address the way Kubernetes does (`ParseIPSloppy`): IPv4 octets may carry
/// leading zeros, which are read as decimal. Surrounding whitespace is not accepted.
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = IpAddr::from_str(s) {
        return Some(ip);
    }
    // Leading zeros: "010.001.002.003".
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() != 4 {
        return None;
    }
    let mut octets = [0u8; 4];
    for (o, p) in octets.iter_mut().zip(&parts) {
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *o = p.parse().ok()?;
    }
    Some(IpAddr::V4(Ipv4Addr::from(octets)))
}

/// A form of IP address that the API server's strict IP validation (KEP-4858,
/// `StrictIPCIDRValidation`) refuses, because programs disagree on what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NonStandardIp {
    /// An IPv4 address with leading zeros (`010.001.002.003`): Go and Rust read the octets as
    /// decimal, libc's `inet_aton` as octal (CVE-2021-29923).
    LeadingZeros,
    /// An IPv4-mapped IPv6 address (`::ffff:1.2.3.4`): an IPv4 address that would slip past
    /// checks made on IPv4 addresses.
    Ipv4Mapped,
    /// A CIDR with bits set beyond its prefix length (`10.0.0.1/8`): a subnet (`10.0.0.0/8`)
    /// to some programs, one address (`10.0.0.1/32`) to others.
    HostBits,
    /// A CIDR not written in canonical form (`fd00:0::/64`, `FD00::/64` for `fd00::/64`),
    /// which fields introduced since strict validation (ServiceCIDR) require.
    NotCanonical,
}

impl fmt::Display for NonStandardIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NonStandardIp::LeadingZeros => "an IPv4 address with leading zeros",
            NonStandardIp::Ipv4Mapped => "an IPv4-mapped IPv6 address",
            NonStandardIp::HostBits => {
                "a CIDR with bits set beyond its prefix length (a subnet, or one address?)"
            }
            NonStandardIp::NotCanonical => "a CIDR not in canonical form",
        })
    }
}

/// Why a string is not a strictly valid IP address or CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StrictError {
    /// It does not parse at all.
    #[error("not an IP address or CIDR")]
    Invalid,
    /// It parses, but in a [`NonStandardIp`] form.
    #[error("{form}: use {canonical:?}")]
    NonStandard {
        /// The form.
        form: NonStandardIp,
        /// What to write instead.
        canonical: String,
    },
}

/// Parses an IP address as the API server's strict validation accepts it (KEP-4858): no
/// leading zeros in IPv4 octets, no IPv4-mapped IPv6 addresses, no zone, no whitespace.
pub fn parse_ip_strict(s: &str) -> Result<IpAddr, StrictError> {
    match IpAddr::from_str(s) {
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => Err(StrictError::NonStandard {
                form: NonStandardIp::Ipv4Mapped,
                canonical: v4.to_string(),
            }),
            None => Ok(IpAddr::V6(v6)),
        },
        Ok(ip) => Ok(ip),
        // Rust's parser refuses leading zeros; the lenient one reads them as decimal.
        Err(_) => match parse_ip(s) {
            Some(ip) => Err(StrictError::NonStandard {
                form: NonStandardIp::LeadingZeros,
                canonical: ip.to_string(),
            }),
            None => Err(StrictError::Invalid),
        },
    }
}

/// An IP prefix such as `10.244.0.0/16` (host bits are cleared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a prefix does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR {0:?}")]
pub struct CidrError(pub String);

impl Cidr {
    /// The prefix of `addr` with `prefix` bits, or `None` if `prefix` is too long.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return None;
        }
        Some(Cidr {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// A single-address prefix (`/32` or `/128`).
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr {
            addr,
            prefix: if addr.is_ipv4() { 32 } else { 128 },
        }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    /// Whether the prefix covers every address of its family.
    pub fn is_all(&self) -> bool {
        self.prefix == 0
    }

    /// Whether `ip` is inside the prefix.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(*ip, self.prefix) == self.addr
    }

    /// Whether every address of `other` is inside this prefix (a prefix covers itself).
    pub fn covers(&self, other: &Cidr) -> bool {
        self.prefix <= other.prefix && self.contains(&other.addr)
    }

    /// Whether the two prefixes share an address. Two prefixes either nest or are disjoint.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.covers(other) || other.covers(self)
    }

    /// The smallest list of prefixes that covers exactly the same addresses as `cidrs`, in
    /// address order: duplicates and prefixes inside another prefix of the list are dropped,
    /// and two halves of one prefix are merged into it (what `nft` does with `auto-merge`).
    /// No two prefixes of the result overlap, so they can all be elements of one interval set.
    pub fn minimal(cidrs: impl IntoIterator<Item = Cidr>) -> Vec<Cidr> {
        let mut v: Vec<Cidr> = cidrs.into_iter().collect();
        // Address order, shorter prefix first: a covering prefix comes before what it covers.
        v.sort_by_key(|c| (c.addr.is_ipv6(), c.addr, c.prefix));
        let mut out: Vec<Cidr> = Vec::with_capacity(v.len());
        for c in v {
            if out.last().is_some_and(|l| l.covers(&c)) {
                continue;
            }
            out.push(c);
            // Merge sibling halves bottom-up: `a/n+1` and its upper sibling become `a/n`.
            while out.len() >= 2 {
                let (a, b) = (out[out.len() - 2], out[out.len() - 1]);
                match a.parent() {
                    Some(p) if a.prefix == b.prefix && p.covers(&b) => {
                        out.truncate(out.len() - 2);
                        if !out.last().is_some_and(|l| l.covers(&p)) {
                            out.push(p);
                        }
                    }
                    _ => break,
                }
            }
        }
        out
    }

    /// The prefix one bit shorter, `None` for `/0`.
    fn parent(&self) -> Option<Cidr> {
        let p = self.prefix.checked_sub(1)?;
        Some(Cidr {
            addr: mask(self.addr, p),
            prefix: p,
        })
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let err = || CidrError(s.to_owned());
        let t = s.trim();
        let (a, p) = t.split_once('/').ok_or_else(err)?;
        let addr = parse_ip(a).ok_or_else(err)?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let prefix: u8 = p.parse().map_err(|_| err())?;
        Cidr::new(addr, prefix).ok_or_else(err)
    }
}

impl Cidr {
    /// Parses a CIDR as the API server's strict validation of subnet fields accepts it
    /// (KEP-4858, `IsValidCIDRForLegacyField` with strict validation: `loadBalancerSourceRanges`,
    /// `podCIDRs`): its address as [`parse_ip_strict`] does, a prefix length without leading
    /// zeros, and no bits set beyond the prefix length ([`NonStandardIp::HostBits`]; checked
    /// last, as the API server does). Non-canonical IPv6 text (`FD00:0::/64`) is accepted, as
    /// it is in those fields. Surrounding whitespace is not accepted.
    pub fn parse_strict(s: &str) -> Result<Cidr, StrictError> {
        let (a, p) = s.split_once('/').ok_or(StrictError::Invalid)?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(StrictError::Invalid);
        }
        let prefix: u8 = p.parse().map_err(|_| StrictError::Invalid)?;
        let zeros = p.len() > 1 && p.starts_with('0');
        let addr = match parse_ip_strict(a) {
            Ok(addr) if zeros => {
                let cidr = Cidr::new(addr, prefix).ok_or(StrictError::Invalid)?;
                return Err(StrictError::NonStandard {
                    form: NonStandardIp::LeadingZeros,
                    canonical: cidr.to_string(),
                });
            }
            Ok(addr) => addr,
            Err(StrictError::NonStandard { form, .. }) => {
                let Some(addr) = parse_ip(a) else {
                    return Err(StrictError::Invalid);
                };
                // A mapped address's prefix counts the IPv6 bits; one shorter than the
                // mapped range is an IPv6 prefix.
                let (addr, prefix) = match (form, addr) {
                    (NonStandardIp::Ipv4Mapped, IpAddr::V6(v6)) if prefix >= 96 => {
                        match v6.to_ipv4_mapped() {
                            Some(v4) => (IpAddr::V4(v4), prefix - 96),
                            None => (IpAddr::V6(v6), prefix),
                        }
                    }
                    _ => (addr, prefix),
                };
                let cidr = Cidr::new(addr, prefix).ok_or(StrictError::Invalid)?;
                return Err(StrictError::NonStandard {
                    form,
                    canonical: cidr.to_string(),
                });
            }
            Err(e) => return Err(e),
        };
        let cidr = Cidr::new(addr, prefix).ok_or(StrictError::Invalid)?;
        if cidr.addr != addr {
            return Err(StrictError::NonStandard {
                form: NonStandardIp::HostBits,
                canonical: cidr.to_string(),
            });
        }
        Ok(cidr)
    }

    /// Parses a CIDR as the API server validates fields introduced since strict validation
    /// (`IsValidCIDR`: ServiceCIDR `spec.cidrs`): [`Cidr::parse_strict`], and then the text
    /// must be the canonical form (`fd00::/64`, not `FD00:0::/64`,
    /// [`NonStandardIp::NotCanonical`]).
    pub fn parse_canonical(s: &str) -> Result<Cidr, StrictError> {
        let cidr = Cidr::parse_strict(s)?;
        let canonical = cidr.to_string();
        if canonical != s {
            return Err(StrictError::NonStandard {
                form: NonStandardIp::NotCanonical,
                canonical,
            });
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sloppy_parsing_takes_leading_zeros_but_nothing_else() {
        assert_eq!(
            parse_ip("010.001.002.003"),
            Some("10.1.2.3".parse().unwrap())
        );
        // Four digits, a sign, an empty octet: not an address, even though `u8` would parse
        // some of them.
        for bad in [
            "0001.2.3.4",
            "+1.2.3.4",
            "1..2.3",
            "1.2.3",
            "1.2.3.4.5",
            " 1.2.3.4",
        ] {
            assert_eq!(parse_ip(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_a_zero_prefix_covers_everything() {
        assert!(Cidr::new("0.0.0.0".parse().unwrap(), 0).unwrap().is_all());
        assert!(Cidr::new("::".parse().unwrap(), 0).unwrap().is_all());
        assert!(!Cidr::new("0.0.0.0".parse().unwrap(), 1).unwrap().is_all());
        assert!(!Cidr::host("10.0.0.1".parse().unwrap()).is_all());
    }

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn minimal(list: &[&str]) -> Vec<String> {
        Cidr::minimal(list.iter().map(|s| c(s)))
            .iter()
            .map(|c| c.to_string())
            .collect()
    }

    #[test]
    fn strict_parsing_refuses_what_kep_4858_refuses() {
        let non_standard = |s: &str| match parse_ip_strict(s) {
            Err(StrictError::NonStandard { form, canonical }) => Some((form, canonical)),
            _ => None,
        };
        assert_eq!(parse_ip_strict("10.1.2.3"), Ok("10.1.2.3".parse().unwrap()));
        assert_eq!(parse_ip_strict("fd00::1"), Ok("fd00::1".parse().unwrap()));
        assert_eq!(parse_ip_strict("0.0.0.0"), Ok("0.0.0.0".parse().unwrap()));
        assert_eq!(
            non_standard("010.001.002.003"),
            Some((NonStandardIp::LeadingZeros, "10.1.2.3".into()))
        );
        assert_eq!(
            non_standard("10.0.0.01"),
            Some((NonStandardIp::LeadingZeros, "10.0.0.1".into()))
        );
        assert_eq!(
            non_standard("::ffff:1.2.3.4"),
            Some((NonStandardIp::Ipv4Mapped, "1.2.3.4".into()))
        );
        assert_eq!(
            non_standard("::ffff:102:304"),
            Some((NonStandardIp::Ipv4Mapped, "1.2.3.4".into()))
        );
        for bad in [
            "",
            " 10.0.0.1",
            "10.0.0.1 ",
            "fe80::1%eth0",
            "1.2.3",
            "0x0a.0.0.1",
            "256.0.0.1",
        ] {
            assert_eq!(parse_ip_strict(bad), Err(StrictError::Invalid), "{bad:?}");
        }
        assert_eq!(Cidr::parse_strict("10.0.0.0/8"), Ok(c("10.0.0.0/8")));
        assert_eq!(Cidr::parse_strict("10.0.0.1/32"), Ok(c("10.0.0.1/32")));
        assert_eq!(Cidr::parse_strict("0.0.0.0/0"), Ok(c("0.0.0.0/0")));
        assert_eq!(Cidr::parse_strict("fd00::/64"), Ok(c("fd00::/64")));
        // Legacy fields take IPv6 in any case and with zeros written out.
        assert_eq!(Cidr::parse_strict("FD00:0::/64"), Ok(c("fd00::/64")));
        // The form, and what to write instead (the API server's order: leading zeros, then
        // IPv4-mapped, then host bits).
        for (raw, form, canonical) in [
            ("010.0.0.0/8", NonStandardIp::LeadingZeros, "10.0.0.0/8"),
            ("10.0.0.0/08", NonStandardIp::LeadingZeros, "10.0.0.0/8"),
            ("010.0.0.1/8", NonStandardIp::LeadingZeros, "10.0.0.0/8"),
            (
                "::ffff:10.0.0.0/104",
                NonStandardIp::Ipv4Mapped,
                "10.0.0.0/8",
            ),
            (
                "::ffff:10.0.0.1/104",
                NonStandardIp::Ipv4Mapped,
                "10.0.0.0/8",
            ),
            ("10.1.2.3/8", NonStandardIp::HostBits, "10.0.0.0/8"),
            ("10.0.0.1/31", NonStandardIp::HostBits, "10.0.0.0/31"),
            ("192.168.1.5/24", NonStandardIp::HostBits, "192.168.1.0/24"),
            ("0.0.0.1/0", NonStandardIp::HostBits, "0.0.0.0/0"),
            ("fd00::1/64", NonStandardIp::HostBits, "fd00::/64"),
            ("::1/0", NonStandardIp::HostBits, "::/0"),
        ] {
            assert_eq!(
                Cidr::parse_strict(raw),
                Err(StrictError::NonStandard {
                    form,
                    canonical: canonical.into()
                }),
                "{raw}"
            );
        }
        // ServiceCIDR (new fields): canonical text only.
        assert_eq!(Cidr::parse_canonical("10.96.0.0/16"), Ok(c("10.96.0.0/16")));
        assert_eq!(
            Cidr::parse_canonical("fd00:10:96::/112"),
            Ok(c("fd00:10:96::/112"))
        );
        for (raw, form, canonical) in [
            (
                "FD00:10:96::/112",
                NonStandardIp::NotCanonical,
                "fd00:10:96::/112",
            ),
            (
                "fd00:10:96:0::/112",
                NonStandardIp::NotCanonical,
                "fd00:10:96::/112",
            ),
            (
                "fd00:0010:96::/112",
                NonStandardIp::NotCanonical,
                "fd00:10:96::/112",
            ),
            ("10.96.0.1/16", NonStandardIp::HostBits, "10.96.0.0/16"),
            ("010.96.0.0/16", NonStandardIp::LeadingZeros, "10.96.0.0/16"),
        ] {
            assert_eq!(
                Cidr::parse_canonical(raw),
                Err(StrictError::NonStandard {
                    form,
                    canonical: canonical.into()
                }),
                "{raw}"
            );
        }
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0.0/",
            " 10.0.0.0/8",
            "10.0.0.0/+8",
        ] {
            assert_eq!(
                Cidr::parse_strict(bad),
                Err(StrictError::Invalid),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn minimal_drops_covered_and_duplicate_prefixes() {
        assert_eq!(minimal(&["10.1.0.0/16", "10.0.0.0/8"]), ["10.0.0.0/8"]);
        assert_eq!(minimal(&["10.0.0.0/8", "10.0.0.1/32"]), ["10.0.0.0/8"]);
        assert_eq!(minimal(&["10.0.0.0/8", "10.0.0.0/8"]), ["10.0.0.0/8"]);
        assert_eq!(
            minimal(&["192.168.0.0/24", "10.0.0.0/8"]),
            ["10.0.0.0/8", "192.168.0.0/24"]
        );
        assert_eq!(minimal(&["fd00::/8", "fd00:1::/32"]), ["fd00::/8"]);
        assert_eq!(minimal(&["::/0", "fd00::/8"]), ["::/0"]);
        // Families never merge.
        assert_eq!(minimal(&["0.0.0.0/0", "::/0"]), ["0.0.0.0/0", "::/0"]);
    }

    #[test]
    fn minimal_merges_sibling_halves() {
        assert_eq!(minimal(&["10.0.0.0/25", "10.0.0.128/25"]), ["10.0.0.0/24"]);
        assert_eq!(
            minimal(&["10.0.0.0/26", "10.0.0.64/26", "10.0.0.128/25"]),
            ["10.0.0.0/24"]
        );
        // Not siblings: adjacent but in different parents.
        assert_eq!(
            minimal(&["10.0.0.128/25", "10.0.1.0/25"]),
            ["10.0.0.128/25", "10.0.1.0/25"]
        );
        assert_eq!(minimal(&["0.0.0.0/1", "128.0.0.0/1"]), ["0.0.0.0/0"]);
    }

    #[test]
    fn minimal_covers_the_same_addresses_and_never_overlaps() {
        // Exhaustive over small prefixes of one /28: every subset of a few prefixes.
        let all: Vec<Cidr> = (25u8..=28)
            .flat_map(|p| {
                let step = 1u32 << (32 - u32::from(p));
                (0..(128 / step)).map(move |i| {
                    Cidr::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * step)), p).unwrap()
                })
            })
            .collect();
        let n = all.len();
        for a in 0..n {
            for b in a..n {
                for d in b..n {
                    let input = [all[a], all[b], all[d]];
                    let out = Cidr::minimal(input);
                    for x in 0u32..128 {
                        let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + x));
                        assert_eq!(
                            input.iter().any(|c| c.contains(&ip)),
                            out.iter().any(|c| c.contains(&ip)),
                            "{input:?} -> {out:?} at {ip}"
                        );
                    }
                    for (i, x) in out.iter().enumerate() {
                        for y in &out[i + 1..] {
                            assert!(!x.overlaps(y), "{input:?} -> {out:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn parses_sloppy_ipv4_and_cidrs() {
        assert_eq!(
            parse_ip("010.001.002.003"),
            Some("10.1.2.3".parse().unwrap())
        );
        assert_eq!(parse_ip("fd00::1"), Some("fd00::1".parse().unwrap()));
        assert_eq!(parse_ip("1.2.3"), None);
        assert_eq!(parse_ip("1.2.3.256"), None);
        assert_eq!(parse_ip(" 1.2.3.4"), None);
        let c: Cidr = "10.244.1.7/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.244.0.0/16");
        assert!(c.contains(&"10.244.200.1".parse().unwrap()));
        assert!(!c.contains(&"10.245.0.1".parse().unwrap()));
        assert!(!c.contains(&"::1".parse().unwrap()));
        let inner: Cidr = "10.244.3.0/24".parse().unwrap();
        let other: Cidr = "10.245.0.0/16".parse().unwrap();
        assert!(c.overlaps(&inner) && inner.overlaps(&c));
        assert!(!c.overlaps(&other) && !other.overlaps(&c));
        assert!(!c.overlaps(&"::/0".parse().unwrap()));
        assert!(" 0.0.0.0/0 ".parse::<Cidr>().unwrap().is_all());
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("fd00::/129".parse::<Cidr>().is_err());
        assert!("fd00::/+1".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
    }
}
