//! Addresses that can never be a service's address, and text made safe for logs and terminals.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{Cidr, MIN_SERVICE_CIDR_PREFIX_V4, MIN_SERVICE_CIDR_PREFIX_V6, Reason};

/// Why an address can never be a ClusterIP, external IP or load balancer IP: programming it
/// would capture traffic the node itself needs (loopback, link-local metadata services), or
/// it is no unicast destination at all.
///
/// The API server refuses some of these for `externalIPs` only (`ValidateNonSpecialIP`:
/// unspecified, loopback, link-local unicast and link-local multicast); Rudder refuses all of
/// them for every kind of service address (see docs/semantics.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SpecialIp {
    /// `0.0.0.0/8` ("this network", a source only) or `::`.
    Unspecified,
    /// `127.0.0.0/8` or `::1`.
    Loopback,
    /// `169.254.0.0/16` or `fe80::/10`.
    LinkLocal,
    /// `224.0.0.0/4` or `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// `::ffff:0:0/96`: an IPv4 address in IPv6 clothing, which would bypass checks made on
    /// the IPv4 address (refused by the API server's strict IP validation, KEP-4858).
    Ipv4Mapped,
}

impl SpecialIp {
    /// The special ranges, as prefixes.
    pub const RANGES: [(IpAddr, u8, SpecialIp); 10] = [
        (
            IpAddr::V4(Ipv4Addr::new(0, 0, 0, 0)),
            8,
            SpecialIp::Unspecified,
        ),
        (
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)),
            8,
            SpecialIp::Loopback,
        ),
        (
            IpAddr::V4(Ipv4Addr::new(169, 254, 0, 0)),
            16,
            SpecialIp::LinkLocal,
        ),
        (
            IpAddr::V4(Ipv4Addr::new(224, 0, 0, 0)),
            4,
            SpecialIp::Multicast,
        ),
        (IpAddr::V4(Ipv4Addr::BROADCAST), 32, SpecialIp::Broadcast),
        (
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            128,
            SpecialIp::Unspecified,
        ),
        (IpAddr::V6(Ipv6Addr::LOCALHOST), 128, SpecialIp::Loopback),
        (
            IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)),
            10,
            SpecialIp::LinkLocal,
        ),
        (
            IpAddr::V6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0)),
            8,
            SpecialIp::Multicast,
        ),
        (
            IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0)),
            96,
            SpecialIp::Ipv4Mapped,
        ),
    ];

    /// The special range `ip` is in, if any.
    pub fn of(ip: &IpAddr) -> Option<SpecialIp> {
        Self::RANGES.iter().find_map(|(addr, len, kind)| {
            Cidr::new(*addr, *len)
                .filter(|c| c.contains(ip))
                .map(|_| *kind)
        })
    }

    /// The first special range that overlaps `cidr` (contains it or is contained in it).
    pub fn overlapping(cidr: &Cidr) -> Option<SpecialIp> {
        Self::RANGES.iter().find_map(|(addr, len, kind)| {
            Cidr::new(*addr, *len)
                .filter(|c| c.overlaps(cidr))
                .map(|_| *kind)
        })
    }
}

impl fmt::Display for SpecialIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SpecialIp::Unspecified => "unspecified (0.0.0.0/8, ::)",
            SpecialIp::Loopback => "loopback (127.0.0.0/8, ::1)",
            SpecialIp::LinkLocal => "link-local (169.254.0.0/16, fe80::/10)",
            SpecialIp::Multicast => "multicast (224.0.0.0/4, ff00::/8)",
            SpecialIp::Broadcast => "the broadcast address (255.255.255.255)",
            SpecialIp::Ipv4Mapped => "IPv4-mapped IPv6 (::ffff:0:0/96)",
        })
    }
}

/// Why a service CIDR must not be programmed, judged on the prefix alone: broader than /8
/// (IPv4) or /64 (IPv6), or overlapping a [special range](SpecialIp). Its drop rule
/// (`ip daddr <cidr> drop` for new connections to unallocated ClusterIPs) would otherwise
/// cut the node off. The checks against the node's addresses and the pod network are the
/// compiler's, which knows them.
pub fn service_cidr_refusal(cidr: &Cidr) -> Option<Reason> {
    let min = if cidr.addr().is_ipv4() {
        MIN_SERVICE_CIDR_PREFIX_V4
    } else {
        MIN_SERVICE_CIDR_PREFIX_V6
    };
    if cidr.prefix_len() < min {
        return Some(Reason::ServiceCidrTooBroad { cidr: *cidr, min });
    }
    SpecialIp::overlapping(cidr).map(|kind| Reason::ServiceCidrSpecial { cidr: *cidr, kind })
}

/// Whether `c` must not reach a log line or a terminal as it is: C0 and C1 control
/// characters and DEL (newlines that forge log lines, escape sequences that drive the
/// terminal), Unicode line and paragraph separators, and the bidirectional controls that
/// make text display in another order than it is stored.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// `s` with every [unsafe character](is_unsafe_char) written as an escape (`\n`, `\r`,
/// `\t`, else `\u{1b}`), so input shows up as one visible line. Borrows when there is
/// nothing to escape.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

/// Appends `c` to `out`, escaped if it is [unsafe](is_unsafe_char).
pub fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if is_unsafe_char(c) => {
            use std::fmt::Write;
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn special_addresses_are_recognised() {
        for (a, k) in [
            ("0.0.0.0", SpecialIp::Unspecified),
            ("0.1.2.3", SpecialIp::Unspecified),
            ("127.0.0.1", SpecialIp::Loopback),
            ("127.255.255.254", SpecialIp::Loopback),
            ("169.254.169.254", SpecialIp::LinkLocal),
            ("224.0.0.1", SpecialIp::Multicast),
            ("239.255.255.250", SpecialIp::Multicast),
            ("255.255.255.255", SpecialIp::Broadcast),
            ("::", SpecialIp::Unspecified),
            ("::1", SpecialIp::Loopback),
            ("fe80::1", SpecialIp::LinkLocal),
            ("febf::1", SpecialIp::LinkLocal),
            ("ff02::1", SpecialIp::Multicast),
            ("::ffff:127.0.0.1", SpecialIp::Ipv4Mapped),
            ("::ffff:10.0.0.1", SpecialIp::Ipv4Mapped),
        ] {
            assert_eq!(SpecialIp::of(&ip(a)), Some(k), "{a}");
        }
        for a in [
            "10.96.0.1",
            "1.0.0.0",
            "126.255.255.255",
            "128.0.0.1",
            "169.253.255.255",
            "223.255.255.255",
            "240.0.0.1",
            "255.255.255.254",
            "fd00::1",
            "fec0::1",
            "::2",
            "2001:db8::1",
            "::fffe:1.2.3.4",
        ] {
            assert_eq!(SpecialIp::of(&ip(a)), None, "{a}");
        }
    }

    #[test]
    fn prefixes_overlapping_special_ranges() {
        let c = |s: &str| s.parse::<Cidr>().unwrap();
        assert_eq!(
            SpecialIp::overlapping(&c("0.0.0.0/0")),
            Some(SpecialIp::Unspecified)
        );
        assert_eq!(
            SpecialIp::overlapping(&c("127.0.0.0/16")),
            Some(SpecialIp::Loopback)
        );
        assert_eq!(
            SpecialIp::overlapping(&c("128.0.0.0/2")),
            Some(SpecialIp::LinkLocal)
        );
        assert_eq!(
            SpecialIp::overlapping(&c("::/0")),
            Some(SpecialIp::Unspecified)
        );
        assert_eq!(
            SpecialIp::overlapping(&c("::ffff:10.0.0.0/120")),
            Some(SpecialIp::Ipv4Mapped)
        );
        assert_eq!(SpecialIp::overlapping(&c("10.96.0.0/12")), None);
        assert_eq!(SpecialIp::overlapping(&c("fd00:10:96::/112")), None);
    }

    #[test]
    fn control_characters_are_escaped_and_nothing_else() {
        assert!(matches!(escape_controls("web-1/ns.x:80"), Cow::Borrowed(_)));
        assert_eq!(
            escape_controls("a\nb\r\tc\u{1b}[31md\u{7f}e\u{9b}f\u{2028}g\u{202e}h"),
            "a\\nb\\r\\tc\\u{1b}[31md\\u{7f}e\\u{9b}f\\u{2028}g\\u{202e}h"
        );
        assert_eq!(escape_controls("\0"), "\\u{0}");
        // Printable non-ASCII stays readable.
        assert_eq!(escape_controls("café ☕"), "café ☕");
        for c in (0u32..0x20).chain(0x7f..0xa0).filter_map(char::from_u32) {
            let e = escape_controls(&c.to_string()).into_owned();
            assert!(
                e.starts_with('\\') && !e.chars().any(is_unsafe_char),
                "{c:?} -> {e:?}"
            );
        }
    }
}
