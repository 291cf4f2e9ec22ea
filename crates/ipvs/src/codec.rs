//! Typed objects ↔ IPVS attributes, in the order `ipvsadm`'s libipvs sends them
//! (`ipvs_nl_fill_service_attr`, `ipvs_nl_fill_dest_attr`), and back from what the kernel
//! sends (`ip_vs_genl_fill_service`, `ip_vs_genl_fill_dest`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;

use netlink_packet_core::DecodeError;

use crate::nla::{CmdAttr, DestAttr, ServiceAttr, StatsAttr};
use crate::types::{
    Config, F_PERSISTENT, Family, ForwardMethod, Name, Persistence, Protocol, RealServer,
    RealServerEntry, Scheduler, ServiceFlags, ServiceKey, Stats, Tunnel, TunnelChecksum,
    TunnelKind, VirtualServer, VirtualServerEntry, Weight,
};

const FWD_MASQ: u32 = 0;
const FWD_LOCALNODE: u32 = 1;
const FWD_TUNNEL: u32 = 2;
const FWD_DROUTE: u32 = 3;
const FWD_MASK: u32 = 0x7;

const TUN_IPIP: u8 = 0;
const TUN_GUE: u8 = 1;
const TUN_GRE: u8 = 2;

const TUN_F_CSUM: u16 = 1;
const TUN_F_REMCSUM: u16 = 2;

/// The 16-byte `union nf_inet_addr` of an address: IPv4 in the first four bytes, zeros after.
pub(crate) fn inet_addr(ip: IpAddr) -> Vec<u8> {
    let mut out = vec![0u8; 16];
    match ip {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out.copy_from_slice(&a.octets()),
    }
    out
}

fn parse_inet_addr(bytes: &[u8], family: Family) -> Result<IpAddr, DecodeError> {
    match (family, bytes.len()) {
        (Family::V4, 4 | 16) => Ok(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        (Family::V6, 16) => {
            let mut a = [0u8; 16];
            a.copy_from_slice(bytes);
            Ok(IpAddr::V6(Ipv6Addr::from(a)))
        }
        (_, n) => Err(DecodeError::invalid_ip_address(n)),
    }
}

fn family_of(n: u16, what: &str) -> Result<Family, DecodeError> {
    Family::from_number(n)
        .ok_or_else(|| DecodeError::from(format!("{what}: unknown address family {n}")))
}

/// The netmask attribute of a family and prefix length (see [`Persistence::prefix_len`]).
pub(crate) fn netmask(family: Family, prefix_len: u8) -> [u8; 4] {
    let p = prefix_len.min(family.max_prefix());
    match family {
        Family::V4 => {
            let mask = if p == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(p))
            };
            mask.to_be_bytes()
        }
        Family::V6 => u32::from(p).to_ne_bytes(),
    }
}

fn prefix_of_netmask(family: Family, raw: [u8; 4]) -> Result<u8, DecodeError> {
    match family {
        Family::V4 => {
            let mask = u32::from_be_bytes(raw);
            let ones = mask.leading_ones();
            if mask.checked_shl(ones).unwrap_or(0) != 0 {
                return Err(format!("non-contiguous IPv4 persistence netmask {mask:#010x}").into());
            }
            Ok(ones as u8)
        }
        Family::V6 => {
            let p = u32::from_ne_bytes(raw);
            u8::try_from(p)
                .ok()
                .filter(|p| *p <= 128)
                .ok_or_else(|| format!("IPv6 persistence prefix length {p} above 128").into())
        }
    }
}

// === services ===

/// The attributes that identify a service: all the kernel needs for `DEL_SERVICE`,
/// `GET_SERVICE`, and as the service of destination commands.
pub fn service_key_attrs(key: &ServiceKey) -> Vec<ServiceAttr> {
    match key {
        ServiceKey::Addr { protocol, addr } => vec![
            ServiceAttr::Af(Family::of(&addr.ip()).number()),
            ServiceAttr::Protocol(protocol.number()),
            ServiceAttr::Addr(inet_addr(addr.ip())),
            ServiceAttr::Port(addr.port()),
        ],
        ServiceKey::Fwmark { family, mark } => vec![
            ServiceAttr::Af(family.number()),
            ServiceAttr::Fwmark(mark.get()),
        ],
    }
}

/// Every attribute of a service, as `NEW_SERVICE` and `SET_SERVICE` need them: the key, then
/// `SCHED_NAME`, `PE_NAME` (if any), `FLAGS` (mask all ones, as `ipvsadm` sends), `TIMEOUT`
/// and `NETMASK`.
pub fn service_attrs(vs: &VirtualServer) -> Vec<ServiceAttr> {
    let family = vs.key.family();
    let mut attrs = service_key_attrs(&vs.key);
    attrs.push(ServiceAttr::SchedName(vs.scheduler.name().to_owned()));
    if let Some(pe) = &vs.persistence_engine {
        attrs.push(ServiceAttr::PeName(pe.as_str().to_owned()));
    }
    let persistent = if vs.persistence.is_some() {
        F_PERSISTENT
    } else {
        0
    };
    attrs.push(ServiceAttr::Flags {
        flags: vs.flags.bits() | persistent,
        mask: u32::MAX,
    });
    let (timeout, prefix) = match vs.persistence {
        Some(p) => (p.timeout, p.prefix_len),
        None => (0, family.max_prefix()),
    };
    attrs.push(ServiceAttr::Timeout(timeout));
    attrs.push(ServiceAttr::Netmask(netmask(family, prefix)));
    attrs
}

/// The service key of service attributes.
pub fn parse_service_key(attrs: &[ServiceAttr]) -> Result<ServiceKey, DecodeError> {
    let mut af = None;
    let mut protocol = None;
    let mut addr = None;
    let mut port = None;
    let mut fwmark = None;
    for a in attrs {
        match a {
            ServiceAttr::Af(v) => af = Some(*v),
            ServiceAttr::Protocol(v) => protocol = Some(*v),
            ServiceAttr::Addr(v) => addr = Some(v.as_slice()),
            ServiceAttr::Port(v) => port = Some(*v),
            ServiceAttr::Fwmark(v) => fwmark = NonZeroU32::new(*v),
            _ => {}
        }
    }
    let family = family_of(af.ok_or("service without IPVS_SVC_ATTR_AF")?, "service")?;
    if let Some(mark) = fwmark {
        return Ok(ServiceKey::Fwmark { family, mark });
    }
    match (protocol, addr, port) {
        (Some(protocol), Some(addr), Some(port)) => Ok(ServiceKey::Addr {
            protocol: Protocol::from_number(protocol),
            addr: SocketAddr::new(parse_inet_addr(addr, family)?, port),
        }),
        _ => Err("service with neither FWMARK nor PROTOCOL, ADDR and PORT".into()),
    }
}

/// A service and its counters from service attributes (a reply, or a `NEW_SERVICE` request).
pub fn parse_service(attrs: &[ServiceAttr]) -> Result<VirtualServerEntry, DecodeError> {
    let key = parse_service_key(attrs)?;
    let mut sched = None;
    let mut pe = None;
    let mut flags = None;
    let mut timeout = None;
    let mut mask = None;
    let mut stats = None;
    let mut stats64 = None;
    for a in attrs {
        match a {
            ServiceAttr::SchedName(s) => sched = Some(s.as_str()),
            ServiceAttr::PeName(s) => pe = Some(s.as_str()),
            ServiceAttr::Flags { flags: f, mask: m } => flags = Some(f & m),
            ServiceAttr::Timeout(t) => timeout = Some(*t),
            ServiceAttr::Netmask(m) => mask = Some(*m),
            ServiceAttr::Stats(s) => stats = Some(parse_stats(s)),
            ServiceAttr::Stats64(s) => stats64 = Some(parse_stats(s)),
            _ => {}
        }
    }
    let sched = sched.ok_or("service without IPVS_SVC_ATTR_SCHED_NAME")?;
    let flags = flags.ok_or("service without IPVS_SVC_ATTR_FLAGS")?;
    let scheduler = Scheduler::from_name(sched).map_err(|e| DecodeError::from(e.to_string()))?;
    let persistence_engine = pe
        .filter(|p| !p.is_empty())
        .map(Name::new)
        .transpose()
        .map_err(|e| DecodeError::from(e.to_string()))?;
    let persistence = if flags & F_PERSISTENT != 0 {
        let timeout = timeout.ok_or("persistent service without IPVS_SVC_ATTR_TIMEOUT")?;
        let raw = mask.ok_or("persistent service without IPVS_SVC_ATTR_NETMASK")?;
        Some(Persistence {
            timeout,
            prefix_len: prefix_of_netmask(key.family(), raw)?,
        })
    } else {
        None
    };
    Ok(VirtualServerEntry {
        server: VirtualServer {
            key,
            scheduler,
            flags: ServiceFlags::from_bits(flags),
            persistence,
            persistence_engine,
        },
        stats: stats64.or(stats),
    })
}

fn parse_stats(attrs: &[StatsAttr]) -> Stats {
    let mut s = Stats::default();
    for a in attrs {
        let (kind, value) = match a {
            StatsAttr::U32 { kind, value } => (*kind, u64::from(*value)),
            StatsAttr::U64 { kind, value } => (*kind, *value),
            _ => continue,
        };
        let field = match kind {
            1 => &mut s.conns,
            2 => &mut s.in_packets,
            3 => &mut s.out_packets,
            4 => &mut s.in_bytes,
            5 => &mut s.out_bytes,
            6 => &mut s.cps,
            7 => &mut s.in_pps,
            8 => &mut s.out_pps,
            9 => &mut s.in_bps,
            10 => &mut s.out_bps,
            _ => continue,
        };
        *field = value;
    }
    s
}

// === destinations ===

/// The attributes that identify a destination within its service (`DEL_DEST`):
/// `ADDR_FAMILY`, `ADDR`, `PORT`.
pub fn dest_key_attrs(addr: &SocketAddr) -> Vec<DestAttr> {
    vec![
        DestAttr::AddrFamily(Family::of(&addr.ip()).number()),
        DestAttr::Addr(inet_addr(addr.ip())),
        DestAttr::Port(addr.port()),
    ]
}

/// Every attribute of a destination, as `NEW_DEST` and `SET_DEST` need them: the key, then
/// `FWD_METHOD`, `WEIGHT`, `U_THRESH`, `L_THRESH` (all four required by the kernel), and for
/// tunnels `TUN_TYPE`, `TUN_PORT`, `TUN_FLAGS`.
pub fn dest_attrs(rs: &RealServer) -> Vec<DestAttr> {
    let mut attrs = dest_key_attrs(&rs.addr);
    let fwd = match rs.forward {
        ForwardMethod::Masquerade => FWD_MASQ,
        ForwardMethod::Local => FWD_LOCALNODE,
        ForwardMethod::Tunnel(_) => FWD_TUNNEL,
        ForwardMethod::DirectRoute => FWD_DROUTE,
    };
    attrs.push(DestAttr::FwdMethod(fwd));
    attrs.push(DestAttr::Weight(rs.weight.get()));
    attrs.push(DestAttr::UpperThreshold(rs.upper_threshold));
    attrs.push(DestAttr::LowerThreshold(rs.lower_threshold));
    if let ForwardMethod::Tunnel(t) = rs.forward {
        let (kind, port) = match t.kind {
            TunnelKind::Ipip => (TUN_IPIP, 0),
            TunnelKind::Gue { port } => (TUN_GUE, port),
            TunnelKind::Gre => (TUN_GRE, 0),
        };
        let flags = match t.checksum {
            TunnelChecksum::None => 0,
            TunnelChecksum::Checksum => TUN_F_CSUM,
            TunnelChecksum::RemoteChecksum => TUN_F_REMCSUM,
        };
        attrs.push(DestAttr::TunType(kind));
        attrs.push(DestAttr::TunPort(port));
        attrs.push(DestAttr::TunFlags(flags));
    }
    attrs
}

/// The address of destination attributes. Without `ADDR_FAMILY` (kernels before 3.18) the
/// family is `fallback` (the service's), or guessed from the address bytes.
pub fn parse_dest_key(
    attrs: &[DestAttr],
    fallback: Option<Family>,
) -> Result<SocketAddr, DecodeError> {
    let mut af = None;
    let mut addr = None;
    let mut port = None;
    for a in attrs {
        match a {
            DestAttr::AddrFamily(v) => af = Some(*v),
            DestAttr::Addr(v) => addr = Some(v.as_slice()),
            DestAttr::Port(v) => port = Some(*v),
            _ => {}
        }
    }
    let addr = addr.ok_or("destination without IPVS_DEST_ATTR_ADDR")?;
    let port = port.ok_or("destination without IPVS_DEST_ATTR_PORT")?;
    let family = match af {
        Some(n) => family_of(n, "destination")?,
        None => fallback.unwrap_or(if addr.len() <= 4 || addr[4..].iter().all(|b| *b == 0) {
            Family::V4
        } else {
            Family::V6
        }),
    };
    Ok(SocketAddr::new(parse_inet_addr(addr, family)?, port))
}

/// A destination and its counters from destination attributes.
pub fn parse_dest(
    attrs: &[DestAttr],
    fallback: Option<Family>,
) -> Result<RealServerEntry, DecodeError> {
    let addr = parse_dest_key(attrs, fallback)?;
    let mut fwd = None;
    let mut weight = None;
    let mut upper = 0;
    let mut lower = 0;
    let mut tun_type = TUN_IPIP;
    let mut tun_port = 0;
    let mut tun_flags = 0;
    let mut entry_counts = [0u32; 3];
    let mut stats = None;
    let mut stats64 = None;
    for a in attrs {
        match a {
            DestAttr::FwdMethod(v) => fwd = Some(*v),
            DestAttr::Weight(v) => weight = Some(*v),
            DestAttr::UpperThreshold(v) => upper = *v,
            DestAttr::LowerThreshold(v) => lower = *v,
            DestAttr::TunType(v) => tun_type = *v,
            DestAttr::TunPort(v) => tun_port = *v,
            DestAttr::TunFlags(v) => tun_flags = *v,
            DestAttr::ActiveConns(v) => entry_counts[0] = *v,
            DestAttr::InactiveConns(v) => entry_counts[1] = *v,
            DestAttr::PersistConns(v) => entry_counts[2] = *v,
            DestAttr::Stats(s) => stats = Some(parse_stats(s)),
            DestAttr::Stats64(s) => stats64 = Some(parse_stats(s)),
            _ => {}
        }
    }
    let fwd = fwd.ok_or("destination without IPVS_DEST_ATTR_FWD_METHOD")?;
    let weight = weight.ok_or("destination without IPVS_DEST_ATTR_WEIGHT")?;
    let forward = match fwd & FWD_MASK {
        FWD_MASQ => ForwardMethod::Masquerade,
        FWD_LOCALNODE => ForwardMethod::Local,
        FWD_DROUTE => ForwardMethod::DirectRoute,
        FWD_TUNNEL => ForwardMethod::Tunnel(Tunnel {
            kind: match tun_type {
                TUN_IPIP => TunnelKind::Ipip,
                TUN_GUE => TunnelKind::Gue { port: tun_port },
                TUN_GRE => TunnelKind::Gre,
                t => return Err(format!("unknown tunnel type {t}").into()),
            },
            checksum: match tun_flags {
                0 => TunnelChecksum::None,
                TUN_F_CSUM => TunnelChecksum::Checksum,
                TUN_F_REMCSUM => TunnelChecksum::RemoteChecksum,
                f => return Err(format!("unknown tunnel flags {f:#x}").into()),
            },
        }),
        m => return Err(format!("unknown forwarding method {m}").into()),
    };
    Ok(RealServerEntry {
        server: RealServer {
            addr,
            forward,
            weight: Weight::new(weight)
                .ok_or_else(|| DecodeError::from(format!("weight {weight} above i32::MAX")))?,
            upper_threshold: upper,
            lower_threshold: lower,
        },
        active_conns: entry_counts[0],
        inactive_conns: entry_counts[1],
        persist_conns: entry_counts[2],
        stats: stats64.or(stats),
    })
}

// === config ===

/// The timeout attributes of a `SET_CONFIG` request, in the order `ipvsadm --set` sends them.
pub fn config_attrs(c: &Config) -> Vec<CmdAttr> {
    let mut attrs = Vec::new();
    if let Some(t) = c.tcp {
        attrs.push(CmdAttr::TimeoutTcp(t));
    }
    if let Some(t) = c.tcp_fin {
        attrs.push(CmdAttr::TimeoutTcpFin(t));
    }
    if let Some(t) = c.udp {
        attrs.push(CmdAttr::TimeoutUdp(t));
    }
    attrs
}

/// The timeouts present in a message's attributes.
pub fn parse_config(attrs: &[CmdAttr]) -> Config {
    let mut c = Config::default();
    for a in attrs {
        match a {
            CmdAttr::TimeoutTcp(t) => c.tcp = Some(*t),
            CmdAttr::TimeoutTcpFin(t) => c.tcp_fin = Some(*t),
            CmdAttr::TimeoutUdp(t) => c.udp = Some(*t),
            _ => {}
        }
    }
    c
}
