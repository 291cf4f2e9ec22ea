//! What the kernel sends back: a datagram of netlink messages — services or destinations of
//! a dump, the timeouts, acknowledgements, errors, the end of a dump — decoded into
//! [`Reply`]s, each with the sequence number of the request it answers.

use std::fmt;
use std::io;

use netlink_packet_core::{
    DecodeError, ErrorBuffer, ErrorContext, NLM_F_MULTIPART, NetlinkBuffer, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, NlasIterator, parse_u16,
};
use netlink_packet_generic::GenlMessage;

use crate::codec::{parse_config, parse_dest, parse_service};
use crate::message::{Command, IpvsMessage};
use crate::nla::CmdAttr;
use crate::types::{Config, RealServerEntry, VirtualServerEntry};

/// An error the kernel returned for a request (`nlmsgerr.error`, made positive).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KernelError {
    /// The errno.
    pub errno: i32,
}

const EPERM: i32 = 1;
const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const EEXIST: i32 = 17;
const EINVAL: i32 = 22;

impl KernelError {
    /// `EEXIST`: the service or destination is already there.
    pub fn is_exists(self) -> bool {
        self.errno == EEXIST
    }

    /// `ESRCH` (no such service) or `ENOENT` (no such destination; also an unknown scheduler
    /// or persistence engine module).
    pub fn is_not_found(self) -> bool {
        self.errno == ESRCH || self.errno == ENOENT
    }

    /// `EINVAL`: a missing or malformed attribute, or a value the kernel refuses.
    pub fn is_invalid(self) -> bool {
        self.errno == EINVAL
    }

    /// `EPERM`: IPVS commands need `CAP_NET_ADMIN` (`GENL_ADMIN_PERM`).
    pub fn is_permission_denied(self) -> bool {
        self.errno == EPERM
    }

    /// The error as an I/O error (its text is `strerror`'s).
    pub fn to_io(self) -> io::Error {
        io::Error::from_raw_os_error(self.errno)
    }
}

impl fmt::Debug for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KernelError({}: {})", self.errno, self.to_io())
    }
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (errno {})", self.to_io(), self.errno)
    }
}

impl std::error::Error for KernelError {}

/// One decoded message from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// A virtual server (command `NEW_SERVICE`: a `GET_SERVICE` answer or dump part).
    Service(VirtualServerEntry),
    /// A real server (command `NEW_DEST`: a `GET_DEST` dump part).
    Dest(RealServerEntry),
    /// The timeouts (command `SET_CONFIG`: the `GET_CONFIG` answer).
    Config(Config),
    /// Another IPVS message, undecoded.
    Other(IpvsMessage),
    /// An acknowledgement: the request succeeded.
    Ack,
    /// The request failed.
    Error(KernelError),
    /// The end of a dump (`NLMSG_DONE`).
    Done,
    /// A netlink message of another kind (`NLMSG_NOOP`, `NLMSG_OVERRUN`).
    Noop,
}

/// A reply and the header fields that route it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Sequence number of the request it answers.
    pub seq: u32,
    /// `NLM_F_MULTI`: part of a dump.
    pub multipart: bool,
    /// The reply.
    pub reply: Reply,
}

impl Reply {
    /// Decodes an IPVS message into a reply.
    pub fn from_message(msg: IpvsMessage) -> Result<Reply, DecodeError> {
        let find_service = |attrs: &[CmdAttr]| {
            attrs.iter().find_map(|a| match a {
                CmdAttr::Service(s) => Some(s.clone()),
                _ => None,
            })
        };
        let find_dest = |attrs: &[CmdAttr]| {
            attrs.iter().find_map(|a| match a {
                CmdAttr::Dest(d) => Some(d.clone()),
                _ => None,
            })
        };
        Ok(match msg.command {
            Command::NewService => {
                let s = find_service(&msg.attrs).ok_or("service reply without a service")?;
                Reply::Service(parse_service(&s).context("decoding an IPVS service")?)
            }
            Command::NewDest => {
                let d = find_dest(&msg.attrs).ok_or("destination reply without a destination")?;
                Reply::Dest(parse_dest(&d, None).context("decoding an IPVS destination")?)
            }
            Command::SetConfig => Reply::Config(parse_config(&msg.attrs)),
            _ => Reply::Other(msg),
        })
    }
}

fn frame_of(header: &NetlinkHeader, reply: Reply) -> Frame {
    Frame {
        seq: header.sequence_number,
        multipart: header.flags & NLM_F_MULTIPART != 0,
        reply,
    }
}

/// Splits a datagram into its netlink messages (each `nlmsg_len` long, padded to 4 bytes).
pub fn split_messages(datagram: &[u8]) -> Result<Vec<&[u8]>, DecodeError> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < datagram.len() {
        let chunk = &datagram[offset..];
        let len = NetlinkBuffer::new_checked(chunk)
            .context("splitting a netlink datagram")?
            .length() as usize;
        if len < 16 || len > chunk.len() {
            return Err(format!("netlink message length {len} in {} bytes", chunk.len()).into());
        }
        out.push(&chunk[..len]);
        offset += (len + 3) & !3;
    }
    Ok(out)
}

/// Decodes every message of a datagram from an IPVS socket.
pub fn decode(datagram: &[u8]) -> Result<Vec<Frame>, DecodeError> {
    split_messages(datagram)?
        .into_iter()
        .map(decode_message)
        .collect()
}

/// Decodes one netlink message from an IPVS socket.
pub fn decode_message(bytes: &[u8]) -> Result<Frame, DecodeError> {
    let nl = NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(bytes)?;
    let reply = match nl.payload {
        NetlinkPayload::InnerMessage(genl) => Reply::from_message(genl.payload)?,
        NetlinkPayload::Error(e) => match e.code {
            None => Reply::Ack,
            Some(code) => Reply::Error(KernelError {
                errno: code.get().saturating_neg(),
            }),
        },
        NetlinkPayload::Done(_) => Reply::Done,
        _ => Reply::Noop,
    };
    Ok(frame_of(&nl.header, reply))
}

/// The answer to [`crate::request::family_request`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FamilyReply {
    /// The family id (`CTRL_ATTR_FAMILY_ID`).
    Id(u16),
    /// The acknowledgement that follows it.
    Ack,
    /// The controller's error: `ENOENT` means no `IPVS` family (module not loaded).
    Error(KernelError),
}

/// Decodes one message of the controller's answer, with its sequence number.
///
/// Only what Rudder needs is read, from the raw attributes: the family id of a
/// `CTRL_CMD_NEWFAMILY`, or the controller's ack or error. The rest of the answer (the
/// family's operations, policies and multicast groups) is not parsed: `netlink-packet-generic`
/// panics on some malformed policy attributes (found by `cargo xtask fuzz netlink`), and a
/// kernel newer than it may send attributes it refuses.
pub fn decode_family_reply(bytes: &[u8]) -> Result<(u32, FamilyReply), DecodeError> {
    let buf = NetlinkBuffer::new_checked(bytes)?;
    let seq = buf.sequence_number();
    if buf.message_type() == netlink_packet_core::NLMSG_ERROR {
        let e = ErrorBuffer::new_checked(buf.payload())?;
        let code = e.code();
        let reply = match code {
            None => FamilyReply::Ack,
            Some(c) => FamilyReply::Error(KernelError {
                errno: c.get().saturating_neg(),
            }),
        };
        return Ok((seq, reply));
    }
    // genlmsghdr: cmd, version, reserved.
    const GENL_ID_CTRL: u16 = 0x10;
    const CTRL_CMD_NEWFAMILY: u8 = 1;
    if buf.message_type() != GENL_ID_CTRL || buf.payload().first() != Some(&CTRL_CMD_NEWFAMILY) {
        return Err("unexpected answer to CTRL_CMD_GETFAMILY".into());
    }
    raw_family_id(bytes).ok_or_else(|| "CTRL_CMD_NEWFAMILY without CTRL_ATTR_FAMILY_ID".into())
}

fn raw_family_id(bytes: &[u8]) -> Option<(u32, FamilyReply)> {
    let buf = NetlinkBuffer::new_checked(bytes).ok()?;
    let payload = buf.payload();
    // genlmsghdr (4 bytes), then CTRL_ATTR_* attributes; CTRL_ATTR_FAMILY_ID is 1, a u16.
    let id = NlasIterator::new(payload.get(4..)?)
        .filter_map(Result::ok)
        .find(|nla| nla.kind() == 1)
        .and_then(|nla| parse_u16(nla.value()).ok())?;
    Some((buf.sequence_number(), FamilyReply::Id(id)))
}
