//! Requests to the kernel, typed, and their bytes: one netlink message each (`nlmsghdr`,
//! `genlmsghdr`, attributes), ready for `send`. Several encoded requests can be concatenated
//! into one datagram ([`encode_batch`]).

use std::net::SocketAddr;

use netlink_packet_core::{
    DecodeError, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_generic::GenlMessage;
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};

use crate::codec::{
    config_attrs, dest_attrs, dest_key_attrs, parse_config, parse_dest, parse_dest_key,
    parse_service, parse_service_key, service_attrs, service_key_attrs,
};
use crate::message::{Command, FAMILY_NAME, IpvsMessage};
use crate::nla::{CmdAttr, DestAttr, ServiceAttr};
use crate::types::{Config, RealServer, ServiceKey, VirtualServer};

/// One request to IPVS, named after what `ipvsadm` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `ipvsadm -A`: add a virtual server (`EEXIST` if it exists).
    NewService(VirtualServer),
    /// `ipvsadm -E`: change a virtual server's scheduler, flags and persistence (`ESRCH` if
    /// it does not exist).
    SetService(VirtualServer),
    /// `ipvsadm -D`: delete a virtual server and its real servers (`ESRCH`).
    DelService(ServiceKey),
    /// One virtual server (`ESRCH` if absent); answered by a service message and an ack.
    GetService(ServiceKey),
    /// `ipvsadm -L`: every virtual server of the namespace, as a dump.
    GetServices,
    /// `ipvsadm -a`: add a real server to a virtual server (`EEXIST`, `ESRCH`).
    NewDest(ServiceKey, RealServer),
    /// `ipvsadm -e`: change a real server's forwarding, weight, thresholds (`ENOENT` if it
    /// is not there).
    SetDest(ServiceKey, RealServer),
    /// `ipvsadm -d`: delete a real server (`ENOENT`, `ESRCH`).
    DelDest(ServiceKey, SocketAddr),
    /// The real servers of a virtual server, as a dump (empty if the service is absent).
    GetDests(ServiceKey),
    /// `ipvsadm --set`: the global timeouts; `None` fields are left as they are.
    SetConfig(Config),
    /// The global timeouts.
    GetConfig,
    /// `ipvsadm -C`: delete every virtual server of the namespace.
    Flush,
}

impl Request {
    /// The IPVS command.
    pub fn command(&self) -> Command {
        match self {
            Request::NewService(_) => Command::NewService,
            Request::SetService(_) => Command::SetService,
            Request::DelService(_) => Command::DelService,
            Request::GetService(_) | Request::GetServices => Command::GetService,
            Request::NewDest(..) => Command::NewDest,
            Request::SetDest(..) => Command::SetDest,
            Request::DelDest(..) => Command::DelDest,
            Request::GetDests(_) => Command::GetDest,
            Request::SetConfig(_) => Command::SetConfig,
            Request::GetConfig => Command::GetConfig,
            Request::Flush => Command::Flush,
        }
    }

    /// Whether the kernel answers with a dump (several messages, then `NLMSG_DONE`).
    pub fn is_dump(&self) -> bool {
        matches!(self, Request::GetServices | Request::GetDests(_))
    }

    /// Whether the kernel's whole answer is an acknowledgement: the requests that change
    /// something, which are the ones [`crate::handle::Handle::batch`] accepts.
    pub fn is_change(&self) -> bool {
        !self.is_dump() && !matches!(self, Request::GetService(_) | Request::GetConfig)
    }

    /// `nlmsg_flags`: `NLM_F_REQUEST | NLM_F_ACK` (0x0005), plus `NLM_F_DUMP` (0x0300) for
    /// dumps, as `ipvsadm` (libnl adds the ack) and moby/ipvs send them.
    pub fn flags(&self) -> u16 {
        let dump = if self.is_dump() { NLM_F_DUMP } else { 0 };
        NLM_F_REQUEST | NLM_F_ACK | dump
    }

    /// The generic netlink payload. Destination and service-removal commands carry only the
    /// service's identifying attributes (the kernel needs no more: `ip_vs_genl_parse_service`
    /// with `full_entry` false), which keeps the cost per real server down.
    pub fn message(&self) -> IpvsMessage {
        let svc_key = |k: &ServiceKey| CmdAttr::Service(service_key_attrs(k));
        let attrs = match self {
            Request::NewService(vs) | Request::SetService(vs) => {
                vec![CmdAttr::Service(service_attrs(vs))]
            }
            Request::DelService(k) | Request::GetService(k) | Request::GetDests(k) => {
                vec![svc_key(k)]
            }
            Request::NewDest(k, rs) | Request::SetDest(k, rs) => {
                vec![svc_key(k), CmdAttr::Dest(dest_attrs(rs))]
            }
            Request::DelDest(k, addr) => vec![svc_key(k), CmdAttr::Dest(dest_key_attrs(addr))],
            Request::SetConfig(c) => config_attrs(c),
            Request::GetServices | Request::GetConfig | Request::Flush => vec![],
        };
        IpvsMessage {
            command: self.command(),
            attrs,
        }
    }

    /// Appends the request's netlink message to `out`. `family_id` is the resolved id of the
    /// `IPVS` family; the port id is 0 (the kernel fills in the sender's).
    pub fn encode_into(&self, family_id: u16, seq: u32, out: &mut Vec<u8>) {
        let mut genl = GenlMessage::from_payload(self.message());
        genl.set_resolved_family_id(family_id);
        let mut header = NetlinkHeader::default();
        header.flags = self.flags();
        header.sequence_number = seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(genl));
        nl.finalize();
        let start = out.len();
        out.resize(start + nl.buffer_len(), 0);
        nl.serialize(&mut out[start..]);
    }

    /// The request's netlink message.
    pub fn encode(&self, family_id: u16, seq: u32) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(family_id, seq, &mut out);
        out
    }

    /// The request an IPVS message carries (what the kernel would make of it), for tests and
    /// fakes. `dump` is whether `NLM_F_DUMP` was set.
    pub fn from_message(msg: &IpvsMessage, dump: bool) -> Result<Request, DecodeError> {
        let service = || -> Result<&[ServiceAttr], DecodeError> {
            msg.attrs
                .iter()
                .find_map(|a| match a {
                    CmdAttr::Service(s) => Some(s.as_slice()),
                    _ => None,
                })
                .ok_or_else(|| "request without IPVS_CMD_ATTR_SERVICE".into())
        };
        let dest = || -> Result<&[DestAttr], DecodeError> {
            msg.attrs
                .iter()
                .find_map(|a| match a {
                    CmdAttr::Dest(d) => Some(d.as_slice()),
                    _ => None,
                })
                .ok_or_else(|| "request without IPVS_CMD_ATTR_DEST".into())
        };
        Ok(match msg.command {
            Command::NewService => Request::NewService(parse_service(service()?)?.server),
            Command::SetService => Request::SetService(parse_service(service()?)?.server),
            Command::DelService => Request::DelService(parse_service_key(service()?)?),
            Command::GetService if dump => Request::GetServices,
            Command::GetService => Request::GetService(parse_service_key(service()?)?),
            Command::NewDest | Command::SetDest => {
                let key = parse_service_key(service()?)?;
                let rs = parse_dest(dest()?, Some(key.family()))?.server;
                if msg.command == Command::NewDest {
                    Request::NewDest(key, rs)
                } else {
                    Request::SetDest(key, rs)
                }
            }
            Command::DelDest => {
                let key = parse_service_key(service()?)?;
                Request::DelDest(key, parse_dest_key(dest()?, Some(key.family()))?)
            }
            Command::GetDest => Request::GetDests(parse_service_key(service()?)?),
            Command::SetConfig => Request::SetConfig(parse_config(&msg.attrs)),
            Command::GetConfig => Request::GetConfig,
            Command::Flush => Request::Flush,
            Command::Other(n) => return Err(format!("unsupported IPVS command {n}").into()),
        })
    }

    /// Decodes one request message (header and payload), returning it with its sequence
    /// number: the inverse of [`Request::encode`].
    pub fn decode(bytes: &[u8]) -> Result<(Request, u32), DecodeError> {
        let nl = NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(bytes)?;
        let dump = nl.header.flags & NLM_F_DUMP == NLM_F_DUMP;
        match nl.payload {
            NetlinkPayload::InnerMessage(genl) => Ok((
                Request::from_message(&genl.payload, dump)?,
                nl.header.sequence_number,
            )),
            _ => Err("not an IPVS request".into()),
        }
    }
}

/// Several requests back to back in one buffer, with sequence numbers `first_seq`,
/// `first_seq + 1`, …: the kernel handles every message of a datagram in order and
/// acknowledges each (see [`crate::handle::Handle::batch`] for what that does and does not
/// promise).
pub fn encode_batch(requests: &[Request], family_id: u16, first_seq: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        r.encode_into(family_id, first_seq.wrapping_add(i as u32), &mut out);
    }
    out
}

/// The request that resolves the `IPVS` family id: `CTRL_CMD_GETFAMILY` to the generic
/// netlink controller (`GENL_ID_CTRL`, 0x10) with `CTRL_ATTR_FAMILY_NAME` `"IPVS"`, flags
/// `NLM_F_REQUEST | NLM_F_ACK`. The answer is a `CTRL_CMD_NEWFAMILY` message (decode it with
/// [`crate::reply::decode_family_reply`]), or `ENOENT` when `ip_vs` is not loaded.
pub fn family_request(seq: u32) -> Vec<u8> {
    let mut genl = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(FAMILY_NAME.to_owned())],
    });
    genl.finalize();
    let mut nl = NetlinkMessage::from(genl);
    nl.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    nl.header.sequence_number = seq;
    nl.finalize();
    let mut out = vec![0u8; nl.buffer_len()];
    nl.serialize(&mut out);
    out
}
