//! Rudder's access to the kernel's connection tracking table, over conntrack netlink
//! (`NETLINK_NETFILTER`, subsystem `CTNETLINK`): listing UDP flows of a family and deleting
//! flows by their original tuple — what `conntrack -L -p udp` and `conntrack -D` do, without
//! running a program.
//!
//! [`sysctl`] sets the conntrack sysctls kube-proxy sets (table size and timeouts).
//!
//! What it must not do: decide which flows to delete (that is the controller's
//! `stale_udp_flows`), or touch anything but conntrack entries and conntrack sysctls.

#![deny(missing_docs)]

pub mod sysctl;

use std::io;
use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_NETFILTER};
use rudder_model::{IpFamily, UdpFlow};

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The netlink socket failed.
    #[error("conntrack netlink socket: {0}")]
    Io(#[from] io::Error),
    /// The kernel answered with an error.
    #[error("conntrack netlink request failed: errno {0}")]
    Kernel(i32),
    /// The kernel sent something that does not decode.
    #[error("cannot decode a conntrack netlink message: {0}")]
    Decode(String),
}

const ENOENT: i32 = 2;

/// A conntrack netlink socket.
pub struct ConntrackSocket {
    socket: Socket,
    seq: u32,
}

impl std::fmt::Debug for ConntrackSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConntrackSocket")
            .field("seq", &self.seq)
            .finish()
    }
}

fn nf_family(f: IpFamily) -> NetfilterProtoFamily {
    match f {
        IpFamily::V4 => NetfilterProtoFamily::IPv4,
        IpFamily::V6 => NetfilterProtoFamily::IPv6,
    }
}

fn endpoints(tuples: &[Tuple]) -> Option<(SocketAddr, SocketAddr, bool)> {
    let (mut src, mut dst, mut sport, mut dport, mut udp) = (None, None, None, None, false);
    for t in tuples {
        match t {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(p) => {
                for x in p {
                    match x {
                        ProtoTuple::Protocol(Protocol::Udp) => udp = true,
                        ProtoTuple::SourcePort(p) => sport = Some(*p),
                        ProtoTuple::DestinationPort(p) => dport = Some(*p),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((
        SocketAddr::new(src?, sport?),
        SocketAddr::new(dst?, dport?),
        udp,
    ))
}

fn orig_tuple(src: SocketAddr, dst: SocketAddr) -> ConntrackAttribute {
    ConntrackAttribute::CtaTupleOrig(vec![
        Tuple::Ip(vec![
            IPTuple::SourceAddress(src.ip()),
            IPTuple::DestinationAddress(dst.ip()),
        ]),
        Tuple::Proto(vec![
            ProtoTuple::Protocol(Protocol::Udp),
            ProtoTuple::SourcePort(src.port()),
            ProtoTuple::DestinationPort(dst.port()),
        ]),
    ])
}

impl ConntrackSocket {
    /// Opens a socket in the current network namespace.
    pub fn new() -> Result<ConntrackSocket, Error> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&NlAddr::new(0, 0))?;
        Ok(ConntrackSocket { socket, seq: 0 })
    }

    /// Sends one request and collects the conntrack messages of the answer, until the dump
    /// ends or the request is acknowledged. Returns `Err(Kernel(errno))` on a kernel error.
    fn request(
        &mut self,
        msg: NetfilterMessage,
        flags: u16,
    ) -> Result<Vec<ConntrackMessage>, Error> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < data.len() {
                let chunk = &data[offset..];
                let len = NetlinkBuffer::new_checked(chunk)
                    .map_err(|e| Error::Decode(e.to_string()))?
                    .length() as usize;
                if len == 0 || len > chunk.len() {
                    return Err(Error::Decode(format!("bad message length {len}")));
                }
                let msg = NetlinkMessage::<NetfilterMessage>::deserialize(&chunk[..len])
                    .map_err(|e| Error::Decode(e.to_string()))?;
                offset += (len + 3) & !3;
                if msg.header.sequence_number != self.seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(Error::Kernel(-code.get())),
                        };
                    }
                    NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner: NetfilterMessageInner::Conntrack(c),
                        ..
                    }) => out.push(c),
                    _ => {}
                }
            }
        }
    }

    /// Every UDP flow of a family.
    pub fn udp_flows(&mut self, family: IpFamily) -> Result<Vec<UdpFlow>, Error> {
        let msg = NetfilterMessage::new(
            NetfilterHeader::new(nf_family(family), 0, 0),
            ConntrackMessage::Get(vec![]),
        );
        let mut flows = Vec::new();
        for m in self.request(msg, NLM_F_REQUEST | NLM_F_DUMP)? {
            let attrs = match &m {
                ConntrackMessage::New(a) | ConntrackMessage::Get(a) => a,
                _ => continue,
            };
            let mut orig = None;
            let mut reply = None;
            for a in attrs {
                match a {
                    ConntrackAttribute::CtaTupleOrig(t) => orig = endpoints(t),
                    ConntrackAttribute::CtaTupleReply(t) => reply = endpoints(t),
                    _ => {}
                }
            }
            if let (Some((src, dst, true)), Some((rsrc, _, _))) = (orig, reply) {
                flows.push(UdpFlow {
                    orig_src: src,
                    orig_dst: dst,
                    reply_src: rsrc,
                });
            }
        }
        Ok(flows)
    }

    /// Deletes one flow by its original tuple; returns whether it existed.
    pub fn delete(&mut self, flow: &UdpFlow) -> Result<bool, Error> {
        let family = if flow.orig_src.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        };
        let msg = NetfilterMessage::new(
            NetfilterHeader::new(nf_family(family), 0, 0),
            ConntrackMessage::Delete(vec![orig_tuple(flow.orig_src, flow.orig_dst)]),
        );
        match self.request(msg, NLM_F_REQUEST | NLM_F_ACK) {
            Ok(_) => Ok(true),
            Err(Error::Kernel(ENOENT)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Whether an address is of the given family (helper for callers filtering flows).
pub fn is_family(ip: &IpAddr, family: IpFamily) -> bool {
    IpFamily::of(ip) == family
}
