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

    /// Whether the two prefixes share any address (one contains the other).
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(&other.addr) || other.contains(&self.addr)
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

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
