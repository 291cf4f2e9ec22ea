//! The typed IPVS objects: virtual servers (IPVS "services"), real servers ("destinations")
//! and the global timeouts, as plain data.
//!
//! Everything here can be encoded: a [`VirtualServer`] always carries a scheduler, flags, a
//! persistence timeout and a netmask, because the kernel refuses `IPVS_CMD_NEW_SERVICE` and
//! `IPVS_CMD_SET_SERVICE` without any of them (`EINVAL`, `ip_vs_genl_parse_service`).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;

/// An address family, as IPVS carries it (`IPVS_SVC_ATTR_AF`, `IPVS_DEST_ATTR_ADDR_FAMILY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// `AF_INET` (2).
    V4,
    /// `AF_INET6` (10).
    V6,
}

pub(crate) const AF_INET: u16 = 2;
pub(crate) const AF_INET6: u16 = 10;

impl Family {
    /// The family of an address.
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub(crate) fn number(self) -> u16 {
        match self {
            Family::V4 => AF_INET,
            Family::V6 => AF_INET6,
        }
    }

    pub(crate) fn from_number(n: u16) -> Option<Family> {
        match n {
            AF_INET => Some(Family::V4),
            AF_INET6 => Some(Family::V6),
            _ => None,
        }
    }

    /// The longest prefix of this family (32 or 128).
    pub fn max_prefix(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

/// The transport protocol of a virtual server (`IPVS_SVC_ATTR_PROTOCOL`, an IP protocol
/// number in a `u16`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Protocol {
    /// `IPPROTO_TCP` (6).
    Tcp,
    /// `IPPROTO_UDP` (17).
    Udp,
    /// `IPPROTO_SCTP` (132).
    Sctp,
    /// Any other protocol number (IPVS also knows AH 51 and ESP 50). `Other(6)` encodes like
    /// `Tcp` and decodes as `Tcp`: build values with [`Protocol::from_number`].
    Other(u16),
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u16 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
            Protocol::Other(n) => n,
        }
    }

    /// The protocol of a number, named when it is TCP, UDP or SCTP.
    pub fn from_number(n: u16) -> Protocol {
        match n {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            132 => Protocol::Sctp,
            n => Protocol::Other(n),
        }
    }
}

/// A name the kernel accepts as a scheduler or persistence engine name: 1 to 15 bytes, no
/// NUL (`IP_VS_SCHEDNAME_MAXLEN` and `IP_VS_PENAME_MAXLEN` are 16 with the NUL).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

/// A string that is not a valid scheduler or persistence engine name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid IPVS name {0:?}: 1 to 15 bytes without NUL")]
pub struct InvalidName(pub String);

impl Name {
    /// Checks a name.
    pub fn new(name: &str) -> Result<Name, InvalidName> {
        if name.is_empty() || name.len() > 15 || name.contains('\0') {
            return Err(InvalidName(name.to_owned()));
        }
        Ok(Name(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A scheduler (`IPVS_SVC_ATTR_SCHED_NAME`); each is a kernel module `ip_vs_<name>`, loaded on
/// first use (an unknown one is refused with `ENOENT`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Scheduler {
    /// `rr`, round robin (kube-proxy's default).
    RoundRobin,
    /// `wrr`, weighted round robin.
    WeightedRoundRobin,
    /// `lc`, least connection.
    LeastConnection,
    /// `wlc`, weighted least connection.
    WeightedLeastConnection,
    /// `lblc`, locality-based least connection.
    LocalityBasedLeastConnection,
    /// `lblcr`, locality-based least connection with replication.
    LocalityBasedLeastConnectionReplication,
    /// `dh`, destination hashing.
    DestinationHashing,
    /// `sh`, source hashing (see [`ServiceFlags::sched1`], [`ServiceFlags::sched2`]).
    SourceHashing,
    /// `sed`, shortest expected delay.
    ShortestExpectedDelay,
    /// `nq`, never queue.
    NeverQueue,
    /// `mh`, Maglev hashing (kernel 4.18+; same flag bits as `sh`).
    MaglevHashing,
    /// `fo`, weighted fail over (kernel 4.2+).
    WeightedFailover,
    /// `ovf`, weighted overflow (kernel 4.19+).
    WeightedOverflow,
    /// `twos`, weighted random twos choice (kernel 5.5+).
    RandomTwos,
    /// Any other name, including the `none` the kernel reports for a service without a
    /// scheduler. Built by [`Scheduler::from_name`], never holding a name above.
    Other(Name),
}

const SCHEDULERS: &[(&str, Scheduler)] = &[
    ("rr", Scheduler::RoundRobin),
    ("wrr", Scheduler::WeightedRoundRobin),
    ("lc", Scheduler::LeastConnection),
    ("wlc", Scheduler::WeightedLeastConnection),
    ("lblc", Scheduler::LocalityBasedLeastConnection),
    ("lblcr", Scheduler::LocalityBasedLeastConnectionReplication),
    ("dh", Scheduler::DestinationHashing),
    ("sh", Scheduler::SourceHashing),
    ("sed", Scheduler::ShortestExpectedDelay),
    ("nq", Scheduler::NeverQueue),
    ("mh", Scheduler::MaglevHashing),
    ("fo", Scheduler::WeightedFailover),
    ("ovf", Scheduler::WeightedOverflow),
    ("twos", Scheduler::RandomTwos),
];

impl Scheduler {
    /// The scheduler of a name (`"rr"` → `RoundRobin`, an unknown valid name → `Other`).
    pub fn from_name(name: &str) -> Result<Scheduler, InvalidName> {
        if let Some((_, s)) = SCHEDULERS.iter().find(|(n, _)| *n == name) {
            return Ok(s.clone());
        }
        Ok(Scheduler::Other(Name::new(name)?))
    }

    /// The kernel's name of the scheduler.
    pub fn name(&self) -> &str {
        match self {
            Scheduler::Other(n) => n.as_str(),
            known => SCHEDULERS
                .iter()
                .find(|(_, s)| s == known)
                .map_or("", |(n, _)| n),
        }
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What identifies a virtual server: the kernel looks services up by `(family, protocol,
/// address, port)` or by `(family, firewall mark)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceKey {
    /// A service on an address and port (`ipvsadm -t/-u/--sctp-service`).
    Addr {
        /// Transport protocol.
        protocol: Protocol,
        /// Virtual address and port.
        addr: SocketAddr,
    },
    /// A service on packets carrying a firewall mark (`ipvsadm -f`); 0 means no mark to the
    /// kernel, hence non-zero.
    Fwmark {
        /// Address family of the packets.
        family: Family,
        /// The mark.
        mark: NonZeroU32,
    },
}

impl ServiceKey {
    /// A TCP service.
    pub fn tcp(addr: SocketAddr) -> ServiceKey {
        ServiceKey::Addr {
            protocol: Protocol::Tcp,
            addr,
        }
    }

    /// A UDP service.
    pub fn udp(addr: SocketAddr) -> ServiceKey {
        ServiceKey::Addr {
            protocol: Protocol::Udp,
            addr,
        }
    }

    /// An SCTP service.
    pub fn sctp(addr: SocketAddr) -> ServiceKey {
        ServiceKey::Addr {
            protocol: Protocol::Sctp,
            addr,
        }
    }

    /// The address family.
    pub fn family(&self) -> Family {
        match self {
            ServiceKey::Addr { addr, .. } => Family::of(&addr.ip()),
            ServiceKey::Fwmark { family, .. } => *family,
        }
    }
}

/// The service flags other than persistence (`struct ip_vs_flags`, `IP_VS_SVC_F_*`).
/// `HASHED` (0x2) is the kernel's own and is neither sent nor decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceFlags {
    /// `IP_VS_SVC_F_ONEPACKET` (0x4): schedule every UDP datagram on its own (`ipvsadm -o`).
    pub one_packet: bool,
    /// `IP_VS_SVC_F_SCHED1` (0x8): `sh-fallback` for `sh`, `mh-fallback` for `mh`.
    pub sched1: bool,
    /// `IP_VS_SVC_F_SCHED2` (0x10): `sh-port` for `sh`, `mh-port` for `mh`.
    pub sched2: bool,
    /// `IP_VS_SVC_F_SCHED3` (0x20): unused by the kernel's schedulers today.
    pub sched3: bool,
}

pub(crate) const F_PERSISTENT: u32 = 0x1;
const F_ONEPACKET: u32 = 0x4;
const F_SCHED1: u32 = 0x8;
const F_SCHED2: u32 = 0x10;
const F_SCHED3: u32 = 0x20;

impl ServiceFlags {
    pub(crate) fn bits(self) -> u32 {
        (if self.one_packet { F_ONEPACKET } else { 0 })
            | (if self.sched1 { F_SCHED1 } else { 0 })
            | (if self.sched2 { F_SCHED2 } else { 0 })
            | (if self.sched3 { F_SCHED3 } else { 0 })
    }

    pub(crate) fn from_bits(bits: u32) -> ServiceFlags {
        ServiceFlags {
            one_packet: bits & F_ONEPACKET != 0,
            sched1: bits & F_SCHED1 != 0,
            sched2: bits & F_SCHED2 != 0,
            sched3: bits & F_SCHED3 != 0,
        }
    }
}

/// Persistence (`IP_VS_SVC_F_PERSISTENT` with `IPVS_SVC_ATTR_TIMEOUT` and
/// `IPVS_SVC_ATTR_NETMASK`): clients within one prefix go to the same real server for
/// `timeout` seconds after their last connection — kube-proxy's `sessionAffinity: ClientIP`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Persistence {
    /// Seconds (kube-proxy: the affinity timeout, 10800 by default).
    pub timeout: u32,
    /// Client prefix length grouped together; the family's full length (32 or 128) is one
    /// client per address, what kube-proxy uses. On the wire an IPv4 netmask is the mask
    /// itself in network order (`/24` → `ff ff ff 00`), an IPv6 one the prefix length as a
    /// host-order `u32` (the kernel refuses 0 and more than 128 with `EINVAL`). Values above
    /// the family's length are sent as the full length.
    pub prefix_len: u8,
}

impl Persistence {
    /// One client per address, for `timeout` seconds.
    pub fn per_client(timeout: u32, family: Family) -> Persistence {
        Persistence {
            timeout,
            prefix_len: family.max_prefix(),
        }
    }
}

/// A virtual server (an IPVS "service", `ipvsadm -A`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VirtualServer {
    /// What identifies it.
    pub key: ServiceKey,
    /// How it picks a real server.
    pub scheduler: Scheduler,
    /// Flags other than persistence.
    pub flags: ServiceFlags,
    /// Persistence; `None` sends timeout 0 and the family's full netmask (as `ipvsadm` and
    /// kube-proxy do). A decoded service without `PERSISTENT` is `None` whatever timeout and
    /// netmask the kernel reports.
    pub persistence: Option<Persistence>,
    /// Persistence engine (`IPVS_SVC_ATTR_PE_NAME`, `ipvsadm --pe`; only `sip` exists).
    pub persistence_engine: Option<Name>,
}

impl VirtualServer {
    /// A service with a scheduler, no flags and no persistence.
    pub fn new(key: ServiceKey, scheduler: Scheduler) -> VirtualServer {
        VirtualServer {
            key,
            scheduler,
            flags: ServiceFlags::default(),
            persistence: None,
            persistence_engine: None,
        }
    }

    /// The same service, persistent for `timeout` seconds per client address.
    pub fn persistent(mut self, timeout: u32) -> VirtualServer {
        self.persistence = Some(Persistence::per_client(timeout, self.key.family()));
        self
    }
}

/// Encapsulation of a tunnelled real server (`IPVS_DEST_ATTR_TUN_TYPE`, kernel 5.3+).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TunnelKind {
    /// `IP_VS_CONN_F_TUNNEL_TYPE_IPIP` (0), the default.
    Ipip,
    /// `IP_VS_CONN_F_TUNNEL_TYPE_GUE` (1) to a UDP port (`IPVS_DEST_ATTR_TUN_PORT`).
    Gue {
        /// Destination UDP port of the encapsulation.
        port: u16,
    },
    /// `IP_VS_CONN_F_TUNNEL_TYPE_GRE` (2).
    Gre,
}

/// Checksum option of a GUE or GRE tunnel (`IPVS_DEST_ATTR_TUN_FLAGS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TunnelChecksum {
    /// `IP_VS_TUNNEL_ENCAP_FLAG_NOCSUM` (0).
    #[default]
    None,
    /// `IP_VS_TUNNEL_ENCAP_FLAG_CSUM` (1).
    Checksum,
    /// `IP_VS_TUNNEL_ENCAP_FLAG_REMCSUM` (2).
    RemoteChecksum,
}

/// A tunnel's encapsulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tunnel {
    /// Encapsulation.
    pub kind: TunnelKind,
    /// Checksum option.
    pub checksum: TunnelChecksum,
}

/// How packets reach a real server (`IPVS_DEST_ATTR_FWD_METHOD`, `IP_VS_CONN_F_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ForwardMethod {
    /// `IP_VS_CONN_F_MASQ` (0), NAT: what kube-proxy uses.
    Masquerade,
    /// `IP_VS_CONN_F_LOCALNODE` (1).
    Local,
    /// `IP_VS_CONN_F_TUNNEL` (2), IP-in-IP or GUE/GRE.
    Tunnel(Tunnel),
    /// `IP_VS_CONN_F_DROUTE` (3), direct routing.
    DirectRoute,
}

/// A real server weight: 0 to `i32::MAX` (the kernel stores an `int` and refuses a negative
/// one with `ERANGE`). Weight 0 takes no new connections and keeps established ones: the
/// first half of a graceful removal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Weight(u32);

impl Weight {
    /// Weight 0: quiesced.
    pub const ZERO: Weight = Weight(0);
    /// Weight 1: kube-proxy's weight for every endpoint.
    pub const ONE: Weight = Weight(1);
    /// The largest weight.
    pub const MAX: Weight = Weight(i32::MAX as u32);

    /// A weight, if it is at most `i32::MAX`.
    pub fn new(w: u32) -> Option<Weight> {
        (w <= i32::MAX as u32).then_some(Weight(w))
    }

    /// The value.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// A real server (an IPVS "destination", `ipvsadm -a`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RealServer {
    /// Address and port (its family may differ from the service's only with tunnelling).
    pub addr: SocketAddr,
    /// Forwarding method.
    pub forward: ForwardMethod,
    /// Weight.
    pub weight: Weight,
    /// Upper connection threshold, 0 for none (`ipvsadm -x`).
    pub upper_threshold: u32,
    /// Lower connection threshold, 0 for none (`ipvsadm -y`).
    pub lower_threshold: u32,
}

impl RealServer {
    /// A masqueraded real server with a weight and no thresholds (kube-proxy's shape).
    pub fn masquerade(addr: SocketAddr, weight: Weight) -> RealServer {
        RealServer {
            addr,
            forward: ForwardMethod::Masquerade,
            weight,
            upper_threshold: 0,
            lower_threshold: 0,
        }
    }
}

/// The global connection timeouts, in seconds (`IPVS_CMD_SET_CONFIG`/`GET_CONFIG`,
/// `ipvsadm --set tcp tcpfin udp`). In a set request `None` leaves the kernel's value as it is
/// (the attribute is not sent); 0 does too, as the kernel ignores zero timeouts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Config {
    /// Established TCP connections (`IPVS_CMD_ATTR_TIMEOUT_TCP`; kernel default 900).
    pub tcp: Option<u32>,
    /// TCP after a FIN (`IPVS_CMD_ATTR_TIMEOUT_TCP_FIN`; default 120).
    pub tcp_fin: Option<u32>,
    /// UDP (`IPVS_CMD_ATTR_TIMEOUT_UDP`; default 300).
    pub udp: Option<u32>,
}

/// Counters of a service or destination (`IPVS_*_ATTR_STATS64`, or the 32-bit
/// `IPVS_*_ATTR_STATS` of kernels before 4.1 widened).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Stats {
    /// Connections scheduled.
    pub conns: u64,
    /// Incoming packets.
    pub in_packets: u64,
    /// Outgoing packets.
    pub out_packets: u64,
    /// Incoming bytes.
    pub in_bytes: u64,
    /// Outgoing bytes.
    pub out_bytes: u64,
    /// Current connection rate.
    pub cps: u64,
    /// Current incoming packet rate.
    pub in_pps: u64,
    /// Current outgoing packet rate.
    pub out_pps: u64,
    /// Current incoming byte rate.
    pub in_bps: u64,
    /// Current outgoing byte rate.
    pub out_bps: u64,
}

/// A virtual server as the kernel reports it in a `GET_SERVICE` reply or dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualServerEntry {
    /// The service.
    pub server: VirtualServer,
    /// Its counters (`None` if the kernel sent none).
    pub stats: Option<Stats>,
}

/// A real server as the kernel reports it in a `GET_DEST` dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealServerEntry {
    /// The destination.
    pub server: RealServer,
    /// Active connections (`IPVS_DEST_ATTR_ACTIVE_CONNS`): a removed real server is deleted
    /// once this reaches 0 (kube-proxy's graceful termination).
    pub active_conns: u32,
    /// Inactive connections (`IPVS_DEST_ATTR_INACT_CONNS`).
    pub inactive_conns: u32,
    /// Persistent connection templates (`IPVS_DEST_ATTR_PERSIST_CONNS`).
    pub persist_conns: u32,
    /// Its counters (`None` if the kernel sent none).
    pub stats: Option<Stats>,
}
