//! Reading a namespace's conntrack table with the `conntrack` program, inside the namespace.

use std::io;
use std::net::{IpAddr, SocketAddr};

use crate::netns::Netns;

/// One conntrack entry, as `conntrack -L -o id` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Source of the original direction (the client).
    pub orig_src: SocketAddr,
    /// Destination of the original direction (the service address the client used).
    pub orig_dst: SocketAddr,
    /// Source of the reply direction: the endpoint the flow was DNATed to.
    pub reply_src: SocketAddr,
    /// The kernel's id of the entry: a deleted and recreated flow gets a new one.
    pub id: u64,
}

/// Every UDP entry of `ns`'s conntrack table (both families).
pub fn udp_entries(ns: &Netns) -> io::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for family in ["ipv4", "ipv6"] {
        let out = ns.exec(&["conntrack", "-L", "-f", family, "-p", "udp", "-o", "id"])?;
        entries.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(parse_line),
        );
    }
    Ok(entries)
}

/// The UDP entry whose original source is `orig_src`, if any.
pub fn udp_entry_from(ns: &Netns, orig_src: SocketAddr) -> io::Result<Option<Entry>> {
    Ok(udp_entries(ns)?
        .into_iter()
        .find(|e| e.orig_src == orig_src))
}

/// Parses `udp 17 29 src=A dst=B sport=P dport=Q [flags] src=C dst=D sport=R dport=S ... id=N`:
/// the first address/port group is the original direction, the second the reply.
fn parse_line(line: &str) -> Option<Entry> {
    let mut ips: Vec<IpAddr> = Vec::new();
    let mut ports: Vec<u16> = Vec::new();
    let mut id = None;
    for token in line.split_whitespace() {
        let Some((key, value)) = token.split_once('=') else {
            continue;
        };
        match key {
            "src" | "dst" => ips.push(value.parse().ok()?),
            "sport" | "dport" => ports.push(value.parse().ok()?),
            "id" => id = value.parse().ok(),
            _ => {}
        }
    }
    if ips.len() < 4 || ports.len() < 4 {
        return None;
    }
    Some(Entry {
        orig_src: SocketAddr::new(ips[0], ports[0]),
        orig_dst: SocketAddr::new(ips[1], ports[1]),
        reply_src: SocketAddr::new(ips[2], ports[2]),
        id: id?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_directions_and_the_id() {
        let line = "udp      17 29 src=172.18.0.10 dst=10.96.0.12 sport=41000 dport=53 \
                    src=10.244.2.2 dst=10.244.2.1 sport=5353 dport=41000 [ASSURED] mark=0 \
                    use=1 id=3141592";
        let e = parse_line(line).expect("entry");
        assert_eq!(e.orig_src, "172.18.0.10:41000".parse().expect("addr"));
        assert_eq!(e.orig_dst, "10.96.0.12:53".parse().expect("addr"));
        assert_eq!(e.reply_src, "10.244.2.2:5353".parse().expect("addr"));
        assert_eq!(e.id, 3141592);
        assert_eq!(parse_line("conntrack v1.4.7: 1 flow entries"), None);
    }
}
