//! The IPVS netlink attributes, one enum per nesting level, as the kernel lays them out
//! (`include/uapi/linux/ip_vs.h`, policies in `net/netfilter/ipvs/ip_vs_ctl.c`).
//!
//! This is the wire layer: values are the kernel's integers and byte strings. [`crate::codec`]
//! turns them into the typed objects of [`crate::types`]. Integers are in host order
//! (`NLA_U16`, `NLA_U32`) except ports, which are in network order (`nla_get_be16`); the
//! enums hold ports as numbers and emit them big-endian. Nested attributes are sent with
//! `NLA_F_NESTED` (the kernel parses IPVS attributes with `nla_parse_nested_deprecated`,
//! which accepts both) and parsed with or without it. Unknown attributes are kept as
//! [`DefaultNla`] so newer kernels' additions decode.

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, ErrorContext, NLA_F_NESTED, Nla, NlaBuffer, NlasIterator,
    Parseable, parse_string, parse_u8, parse_u16, parse_u16_be, parse_u32, parse_u64,
};

// === first level (IPVS_CMD_ATTR_*) ===
const CMD_ATTR_SERVICE: u16 = 1;
const CMD_ATTR_DEST: u16 = 2;
const CMD_ATTR_TIMEOUT_TCP: u16 = 4;
const CMD_ATTR_TIMEOUT_TCP_FIN: u16 = 5;
const CMD_ATTR_TIMEOUT_UDP: u16 = 6;

// === IPVS_SVC_ATTR_* ===
const SVC_ATTR_AF: u16 = 1;
const SVC_ATTR_PROTOCOL: u16 = 2;
const SVC_ATTR_ADDR: u16 = 3;
const SVC_ATTR_PORT: u16 = 4;
const SVC_ATTR_FWMARK: u16 = 5;
const SVC_ATTR_SCHED_NAME: u16 = 6;
const SVC_ATTR_FLAGS: u16 = 7;
const SVC_ATTR_TIMEOUT: u16 = 8;
const SVC_ATTR_NETMASK: u16 = 9;
const SVC_ATTR_STATS: u16 = 10;
const SVC_ATTR_PE_NAME: u16 = 11;
const SVC_ATTR_STATS64: u16 = 12;

// === IPVS_DEST_ATTR_* ===
const DEST_ATTR_ADDR: u16 = 1;
const DEST_ATTR_PORT: u16 = 2;
const DEST_ATTR_FWD_METHOD: u16 = 3;
const DEST_ATTR_WEIGHT: u16 = 4;
const DEST_ATTR_U_THRESH: u16 = 5;
const DEST_ATTR_L_THRESH: u16 = 6;
const DEST_ATTR_ACTIVE_CONNS: u16 = 7;
const DEST_ATTR_INACT_CONNS: u16 = 8;
const DEST_ATTR_PERSIST_CONNS: u16 = 9;
const DEST_ATTR_STATS: u16 = 10;
const DEST_ATTR_ADDR_FAMILY: u16 = 11;
const DEST_ATTR_STATS64: u16 = 12;
const DEST_ATTR_TUN_TYPE: u16 = 13;
const DEST_ATTR_TUN_PORT: u16 = 14;
const DEST_ATTR_TUN_FLAGS: u16 = 15;

/// `IPVS_STATS_ATTR_PAD`: padding the kernel may insert before 64-bit counters.
pub(crate) const STATS_ATTR_PAD: u16 = 11;

fn emit_nlas<T: Nla>(nlas: &[T], buffer: &mut [u8]) {
    nlas.emit(buffer)
}

fn nlas_len<T: Nla>(nlas: &[T]) -> usize {
    nlas.buffer_len()
}

fn parse_nested<T>(
    value: &[u8],
    parse: impl Fn(&NlaBuffer<&[u8]>) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    NlasIterator::new(value)
        .map(|nla| nla.and_then(|nla| parse(&nla)))
        .collect()
}

fn other(buf: &NlaBuffer<&[u8]>) -> Result<DefaultNla, DecodeError> {
    DefaultNla::parse(buf)
}

/// A first-level attribute of an IPVS message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CmdAttr {
    /// `IPVS_CMD_ATTR_SERVICE`: the service, nested.
    Service(Vec<ServiceAttr>),
    /// `IPVS_CMD_ATTR_DEST`: the destination, nested.
    Dest(Vec<DestAttr>),
    /// `IPVS_CMD_ATTR_TIMEOUT_TCP`, seconds.
    TimeoutTcp(u32),
    /// `IPVS_CMD_ATTR_TIMEOUT_TCP_FIN`, seconds.
    TimeoutTcpFin(u32),
    /// `IPVS_CMD_ATTR_TIMEOUT_UDP`, seconds.
    TimeoutUdp(u32),
    /// Anything else (the sync daemon's attributes, future ones).
    Other(DefaultNla),
}

impl Nla for CmdAttr {
    fn value_len(&self) -> usize {
        match self {
            CmdAttr::Service(a) => nlas_len(a),
            CmdAttr::Dest(a) => nlas_len(a),
            CmdAttr::TimeoutTcp(_) | CmdAttr::TimeoutTcpFin(_) | CmdAttr::TimeoutUdp(_) => 4,
            CmdAttr::Other(n) => n.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            CmdAttr::Service(_) => CMD_ATTR_SERVICE | NLA_F_NESTED,
            CmdAttr::Dest(_) => CMD_ATTR_DEST | NLA_F_NESTED,
            CmdAttr::TimeoutTcp(_) => CMD_ATTR_TIMEOUT_TCP,
            CmdAttr::TimeoutTcpFin(_) => CMD_ATTR_TIMEOUT_TCP_FIN,
            CmdAttr::TimeoutUdp(_) => CMD_ATTR_TIMEOUT_UDP,
            CmdAttr::Other(n) => n.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            CmdAttr::Service(a) => emit_nlas(a, buffer),
            CmdAttr::Dest(a) => emit_nlas(a, buffer),
            CmdAttr::TimeoutTcp(v) | CmdAttr::TimeoutTcpFin(v) | CmdAttr::TimeoutUdp(v) => {
                buffer.copy_from_slice(&v.to_ne_bytes())
            }
            CmdAttr::Other(n) => n.emit_value(buffer),
        }
    }
}

impl CmdAttr {
    /// Parses one first-level attribute.
    pub fn parse(buf: &NlaBuffer<&[u8]>) -> Result<CmdAttr, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() {
            CMD_ATTR_SERVICE => CmdAttr::Service(
                parse_nested(v, ServiceAttr::parse).context("in IPVS_CMD_ATTR_SERVICE")?,
            ),
            CMD_ATTR_DEST => {
                CmdAttr::Dest(parse_nested(v, DestAttr::parse).context("in IPVS_CMD_ATTR_DEST")?)
            }
            CMD_ATTR_TIMEOUT_TCP => CmdAttr::TimeoutTcp(parse_u32(v).context("TIMEOUT_TCP")?),
            CMD_ATTR_TIMEOUT_TCP_FIN => {
                CmdAttr::TimeoutTcpFin(parse_u32(v).context("TIMEOUT_TCP_FIN")?)
            }
            CMD_ATTR_TIMEOUT_UDP => CmdAttr::TimeoutUdp(parse_u32(v).context("TIMEOUT_UDP")?),
            _ => CmdAttr::Other(other(buf)?),
        })
    }

    /// Parses the attributes of a message body.
    pub fn parse_all(buf: &[u8]) -> Result<Vec<CmdAttr>, DecodeError> {
        parse_nested(buf, CmdAttr::parse)
    }
}

/// An attribute of a service (`IPVS_SVC_ATTR_*`, inside `IPVS_CMD_ATTR_SERVICE`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServiceAttr {
    /// `IPVS_SVC_ATTR_AF` (u16).
    Af(u16),
    /// `IPVS_SVC_ATTR_PROTOCOL` (u16).
    Protocol(u16),
    /// `IPVS_SVC_ATTR_ADDR`: 16 bytes (`union nf_inet_addr`, IPv4 in the first 4) when Rudder
    /// and the kernel send it; the kernel also accepts 4.
    Addr(Vec<u8>),
    /// `IPVS_SVC_ATTR_PORT`, network order on the wire.
    Port(u16),
    /// `IPVS_SVC_ATTR_FWMARK` (u32).
    Fwmark(u32),
    /// `IPVS_SVC_ATTR_SCHED_NAME`, NUL-terminated on the wire.
    SchedName(String),
    /// `IPVS_SVC_ATTR_FLAGS`: `struct ip_vs_flags { u32 flags; u32 mask; }`; the kernel
    /// applies `(old & !mask) | (flags & mask)`.
    Flags {
        /// The flag bits.
        flags: u32,
        /// Which bits to set.
        mask: u32,
    },
    /// `IPVS_SVC_ATTR_TIMEOUT`: persistence timeout, seconds (u32).
    Timeout(u32),
    /// `IPVS_SVC_ATTR_NETMASK`: four raw bytes (`__be32` mask for IPv4, host-order prefix
    /// length for IPv6).
    Netmask([u8; 4]),
    /// `IPVS_SVC_ATTR_STATS`, nested (only in the kernel's replies).
    Stats(Vec<StatsAttr>),
    /// `IPVS_SVC_ATTR_PE_NAME`, NUL-terminated on the wire.
    PeName(String),
    /// `IPVS_SVC_ATTR_STATS64`, nested (only in the kernel's replies).
    Stats64(Vec<StatsAttr>),
    /// Anything else.
    Other(DefaultNla),
}

impl Nla for ServiceAttr {
    fn value_len(&self) -> usize {
        match self {
            ServiceAttr::Af(_) | ServiceAttr::Protocol(_) | ServiceAttr::Port(_) => 2,
            ServiceAttr::Fwmark(_) | ServiceAttr::Timeout(_) | ServiceAttr::Netmask(_) => 4,
            ServiceAttr::Addr(a) => a.len(),
            ServiceAttr::SchedName(s) | ServiceAttr::PeName(s) => s.len() + 1,
            ServiceAttr::Flags { .. } => 8,
            ServiceAttr::Stats(a) | ServiceAttr::Stats64(a) => nlas_len(a),
            ServiceAttr::Other(n) => n.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            ServiceAttr::Af(_) => SVC_ATTR_AF,
            ServiceAttr::Protocol(_) => SVC_ATTR_PROTOCOL,
            ServiceAttr::Addr(_) => SVC_ATTR_ADDR,
            ServiceAttr::Port(_) => SVC_ATTR_PORT,
            ServiceAttr::Fwmark(_) => SVC_ATTR_FWMARK,
            ServiceAttr::SchedName(_) => SVC_ATTR_SCHED_NAME,
            ServiceAttr::Flags { .. } => SVC_ATTR_FLAGS,
            ServiceAttr::Timeout(_) => SVC_ATTR_TIMEOUT,
            ServiceAttr::Netmask(_) => SVC_ATTR_NETMASK,
            ServiceAttr::Stats(_) => SVC_ATTR_STATS | NLA_F_NESTED,
            ServiceAttr::PeName(_) => SVC_ATTR_PE_NAME,
            ServiceAttr::Stats64(_) => SVC_ATTR_STATS64 | NLA_F_NESTED,
            ServiceAttr::Other(n) => n.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            ServiceAttr::Af(v) | ServiceAttr::Protocol(v) => {
                buffer.copy_from_slice(&v.to_ne_bytes())
            }
            ServiceAttr::Port(p) => buffer.copy_from_slice(&p.to_be_bytes()),
            ServiceAttr::Fwmark(v) | ServiceAttr::Timeout(v) => {
                buffer.copy_from_slice(&v.to_ne_bytes())
            }
            ServiceAttr::Netmask(m) => buffer.copy_from_slice(m),
            ServiceAttr::Addr(a) => buffer.copy_from_slice(a),
            ServiceAttr::SchedName(s) | ServiceAttr::PeName(s) => {
                let (text, nul) = buffer.split_at_mut(s.len());
                text.copy_from_slice(s.as_bytes());
                nul[0] = 0;
            }
            ServiceAttr::Flags { flags, mask } => {
                buffer[..4].copy_from_slice(&flags.to_ne_bytes());
                buffer[4..].copy_from_slice(&mask.to_ne_bytes());
            }
            ServiceAttr::Stats(a) | ServiceAttr::Stats64(a) => emit_nlas(a, buffer),
            ServiceAttr::Other(n) => n.emit_value(buffer),
        }
    }
}

impl ServiceAttr {
    /// Parses one service attribute.
    pub fn parse(buf: &NlaBuffer<&[u8]>) -> Result<ServiceAttr, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() {
            SVC_ATTR_AF => ServiceAttr::Af(parse_u16(v).context("IPVS_SVC_ATTR_AF")?),
            SVC_ATTR_PROTOCOL => {
                ServiceAttr::Protocol(parse_u16(v).context("IPVS_SVC_ATTR_PROTOCOL")?)
            }
            SVC_ATTR_ADDR => ServiceAttr::Addr(v.to_vec()),
            SVC_ATTR_PORT => ServiceAttr::Port(parse_u16_be(v).context("IPVS_SVC_ATTR_PORT")?),
            SVC_ATTR_FWMARK => ServiceAttr::Fwmark(parse_u32(v).context("IPVS_SVC_ATTR_FWMARK")?),
            SVC_ATTR_SCHED_NAME => {
                ServiceAttr::SchedName(parse_string(v).context("IPVS_SVC_ATTR_SCHED_NAME")?)
            }
            SVC_ATTR_FLAGS => {
                if v.len() != 8 {
                    return Err(
                        DecodeError::invalid_number(8, v.len()).context("IPVS_SVC_ATTR_FLAGS")
                    );
                }
                ServiceAttr::Flags {
                    flags: parse_u32(&v[..4])?,
                    mask: parse_u32(&v[4..])?,
                }
            }
            SVC_ATTR_TIMEOUT => {
                ServiceAttr::Timeout(parse_u32(v).context("IPVS_SVC_ATTR_TIMEOUT")?)
            }
            SVC_ATTR_NETMASK => ServiceAttr::Netmask(v.try_into().map_err(|_| {
                DecodeError::invalid_number(4, v.len()).context("IPVS_SVC_ATTR_NETMASK")
            })?),
            SVC_ATTR_STATS => ServiceAttr::Stats(
                parse_nested(v, StatsAttr::parse).context("IPVS_SVC_ATTR_STATS")?,
            ),
            SVC_ATTR_PE_NAME => {
                ServiceAttr::PeName(parse_string(v).context("IPVS_SVC_ATTR_PE_NAME")?)
            }
            SVC_ATTR_STATS64 => ServiceAttr::Stats64(
                parse_nested(v, StatsAttr::parse).context("IPVS_SVC_ATTR_STATS64")?,
            ),
            _ => ServiceAttr::Other(other(buf)?),
        })
    }
}

/// An attribute of a destination (`IPVS_DEST_ATTR_*`, inside `IPVS_CMD_ATTR_DEST`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DestAttr {
    /// `IPVS_DEST_ATTR_ADDR`: 16 bytes, IPv4 in the first 4 (the kernel also accepts 4).
    Addr(Vec<u8>),
    /// `IPVS_DEST_ATTR_PORT`, network order on the wire.
    Port(u16),
    /// `IPVS_DEST_ATTR_FWD_METHOD` (u32, `IP_VS_CONN_F_FWD_MASK` bits).
    FwdMethod(u32),
    /// `IPVS_DEST_ATTR_WEIGHT` (u32, an `int` in the kernel).
    Weight(u32),
    /// `IPVS_DEST_ATTR_U_THRESH` (u32).
    UpperThreshold(u32),
    /// `IPVS_DEST_ATTR_L_THRESH` (u32).
    LowerThreshold(u32),
    /// `IPVS_DEST_ATTR_ACTIVE_CONNS` (u32, replies only).
    ActiveConns(u32),
    /// `IPVS_DEST_ATTR_INACT_CONNS` (u32, replies only).
    InactiveConns(u32),
    /// `IPVS_DEST_ATTR_PERSIST_CONNS` (u32, replies only).
    PersistConns(u32),
    /// `IPVS_DEST_ATTR_STATS`, nested (replies only).
    Stats(Vec<StatsAttr>),
    /// `IPVS_DEST_ATTR_ADDR_FAMILY` (u16, kernel 3.18+).
    AddrFamily(u16),
    /// `IPVS_DEST_ATTR_STATS64`, nested (replies only).
    Stats64(Vec<StatsAttr>),
    /// `IPVS_DEST_ATTR_TUN_TYPE` (u8, kernel 5.3+).
    TunType(u8),
    /// `IPVS_DEST_ATTR_TUN_PORT`, network order on the wire.
    TunPort(u16),
    /// `IPVS_DEST_ATTR_TUN_FLAGS` (u16).
    TunFlags(u16),
    /// Anything else.
    Other(DefaultNla),
}

impl Nla for DestAttr {
    fn value_len(&self) -> usize {
        match self {
            DestAttr::Addr(a) => a.len(),
            DestAttr::Port(_) | DestAttr::AddrFamily(_) | DestAttr::TunPort(_) => 2,
            DestAttr::TunFlags(_) => 2,
            DestAttr::TunType(_) => 1,
            DestAttr::FwdMethod(_)
            | DestAttr::Weight(_)
            | DestAttr::UpperThreshold(_)
            | DestAttr::LowerThreshold(_)
            | DestAttr::ActiveConns(_)
            | DestAttr::InactiveConns(_)
            | DestAttr::PersistConns(_) => 4,
            DestAttr::Stats(a) | DestAttr::Stats64(a) => nlas_len(a),
            DestAttr::Other(n) => n.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            DestAttr::Addr(_) => DEST_ATTR_ADDR,
            DestAttr::Port(_) => DEST_ATTR_PORT,
            DestAttr::FwdMethod(_) => DEST_ATTR_FWD_METHOD,
            DestAttr::Weight(_) => DEST_ATTR_WEIGHT,
            DestAttr::UpperThreshold(_) => DEST_ATTR_U_THRESH,
            DestAttr::LowerThreshold(_) => DEST_ATTR_L_THRESH,
            DestAttr::ActiveConns(_) => DEST_ATTR_ACTIVE_CONNS,
            DestAttr::InactiveConns(_) => DEST_ATTR_INACT_CONNS,
            DestAttr::PersistConns(_) => DEST_ATTR_PERSIST_CONNS,
            DestAttr::Stats(_) => DEST_ATTR_STATS | NLA_F_NESTED,
            DestAttr::AddrFamily(_) => DEST_ATTR_ADDR_FAMILY,
            DestAttr::Stats64(_) => DEST_ATTR_STATS64 | NLA_F_NESTED,
            DestAttr::TunType(_) => DEST_ATTR_TUN_TYPE,
            DestAttr::TunPort(_) => DEST_ATTR_TUN_PORT,
            DestAttr::TunFlags(_) => DEST_ATTR_TUN_FLAGS,
            DestAttr::Other(n) => n.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            DestAttr::Addr(a) => buffer.copy_from_slice(a),
            DestAttr::Port(p) | DestAttr::TunPort(p) => buffer.copy_from_slice(&p.to_be_bytes()),
            DestAttr::AddrFamily(v) | DestAttr::TunFlags(v) => {
                buffer.copy_from_slice(&v.to_ne_bytes())
            }
            DestAttr::TunType(v) => buffer[0] = *v,
            DestAttr::FwdMethod(v)
            | DestAttr::Weight(v)
            | DestAttr::UpperThreshold(v)
            | DestAttr::LowerThreshold(v)
            | DestAttr::ActiveConns(v)
            | DestAttr::InactiveConns(v)
            | DestAttr::PersistConns(v) => buffer.copy_from_slice(&v.to_ne_bytes()),
            DestAttr::Stats(a) | DestAttr::Stats64(a) => emit_nlas(a, buffer),
            DestAttr::Other(n) => n.emit_value(buffer),
        }
    }
}

impl DestAttr {
    /// Parses one destination attribute.
    pub fn parse(buf: &NlaBuffer<&[u8]>) -> Result<DestAttr, DecodeError> {
        let v = buf.value();
        let u32_of = |name: &str| parse_u32(v).context(format!("IPVS_DEST_ATTR_{name}"));
        Ok(match buf.kind() {
            DEST_ATTR_ADDR => DestAttr::Addr(v.to_vec()),
            DEST_ATTR_PORT => DestAttr::Port(parse_u16_be(v).context("IPVS_DEST_ATTR_PORT")?),
            DEST_ATTR_FWD_METHOD => DestAttr::FwdMethod(u32_of("FWD_METHOD")?),
            DEST_ATTR_WEIGHT => DestAttr::Weight(u32_of("WEIGHT")?),
            DEST_ATTR_U_THRESH => DestAttr::UpperThreshold(u32_of("U_THRESH")?),
            DEST_ATTR_L_THRESH => DestAttr::LowerThreshold(u32_of("L_THRESH")?),
            DEST_ATTR_ACTIVE_CONNS => DestAttr::ActiveConns(u32_of("ACTIVE_CONNS")?),
            DEST_ATTR_INACT_CONNS => DestAttr::InactiveConns(u32_of("INACT_CONNS")?),
            DEST_ATTR_PERSIST_CONNS => DestAttr::PersistConns(u32_of("PERSIST_CONNS")?),
            DEST_ATTR_STATS => {
                DestAttr::Stats(parse_nested(v, StatsAttr::parse).context("IPVS_DEST_ATTR_STATS")?)
            }
            DEST_ATTR_ADDR_FAMILY => {
                DestAttr::AddrFamily(parse_u16(v).context("IPVS_DEST_ATTR_ADDR_FAMILY")?)
            }
            DEST_ATTR_STATS64 => DestAttr::Stats64(
                parse_nested(v, StatsAttr::parse).context("IPVS_DEST_ATTR_STATS64")?,
            ),
            DEST_ATTR_TUN_TYPE => {
                DestAttr::TunType(parse_u8(v).context("IPVS_DEST_ATTR_TUN_TYPE")?)
            }
            DEST_ATTR_TUN_PORT => {
                DestAttr::TunPort(parse_u16_be(v).context("IPVS_DEST_ATTR_TUN_PORT")?)
            }
            DEST_ATTR_TUN_FLAGS => {
                DestAttr::TunFlags(parse_u16(v).context("IPVS_DEST_ATTR_TUN_FLAGS")?)
            }
            _ => DestAttr::Other(other(buf)?),
        })
    }
}

/// A counter inside `IPVS_*_ATTR_STATS` (32-bit counters, 64-bit byte counts) or
/// `IPVS_*_ATTR_STATS64` (all 64-bit); `kind` is `IPVS_STATS_ATTR_*` (1 = CONNS … 10 = OUTBPS).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatsAttr {
    /// A 32-bit counter.
    U32 {
        /// `IPVS_STATS_ATTR_*`.
        kind: u16,
        /// Value.
        value: u32,
    },
    /// A 64-bit counter.
    U64 {
        /// `IPVS_STATS_ATTR_*`.
        kind: u16,
        /// Value.
        value: u64,
    },
    /// Padding (`IPVS_STATS_ATTR_PAD`) or anything else.
    Other(DefaultNla),
}

impl Nla for StatsAttr {
    fn value_len(&self) -> usize {
        match self {
            StatsAttr::U32 { .. } => 4,
            StatsAttr::U64 { .. } => 8,
            StatsAttr::Other(n) => n.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            StatsAttr::U32 { kind, .. } | StatsAttr::U64 { kind, .. } => *kind,
            StatsAttr::Other(n) => n.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            StatsAttr::U32 { value, .. } => buffer.copy_from_slice(&value.to_ne_bytes()),
            StatsAttr::U64 { value, .. } => buffer.copy_from_slice(&value.to_ne_bytes()),
            StatsAttr::Other(n) => n.emit_value(buffer),
        }
    }
}

impl StatsAttr {
    /// Parses one counter.
    pub fn parse(buf: &NlaBuffer<&[u8]>) -> Result<StatsAttr, DecodeError> {
        let v = buf.value();
        let kind = buf.kind();
        Ok(match (kind, v.len()) {
            (STATS_ATTR_PAD, _) => StatsAttr::Other(other(buf)?),
            (_, 4) => StatsAttr::U32 {
                kind,
                value: parse_u32(v)?,
            },
            (_, 8) => StatsAttr::U64 {
                kind,
                value: parse_u64(v)?,
            },
            _ => StatsAttr::Other(other(buf)?),
        })
    }
}
