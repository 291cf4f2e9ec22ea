//! Decoding what the kernel sends back on a `NETLINK_NETFILTER` socket: its answers to a
//! batch (acknowledgements and errors), to `GETGEN`, and its change notifications.
//!
//! Messages are read with rust-netlink's `netlink-packet-core` buffers ([`NetlinkBuffer`],
//! [`ErrorBuffer`], [`NlasIterator`]), which check every length before a field is read; a
//! malformed message ends the datagram ([`messages`] yields its error, then nothing).
//!
//! Nothing here reads a socket or keeps state beyond one exchange: [`BatchReplies`] gathers
//! the answers to one batch as the caller reads them, [`generation`] looks for the answer to
//! one request in one datagram.

use netlink_packet_core::{
    DecodeError, ErrorBuffer, ErrorMessage, NLM_F_ACK_TLVS, NLM_F_CAPPED, NetlinkBuffer,
    NetlinkHeader, NlasIterator, Parseable,
};

use crate::batch::Batch;
use crate::wire::{NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWGEN, NLMSG_DONE, NLMSG_ERROR};

/// `NLMSGERR_ATTR_MSG`: the extended acknowledgement's message (a string).
const NLMSGERR_ATTR_MSG: u16 = 1;
/// `NLMSGERR_ATTR_OFFS`: the offset of the attribute at fault in the failing message.
const NLMSGERR_ATTR_OFFS: u16 = 2;
/// `NFTA_GEN_ID`: the generation, in `NFT_MSG_NEWGEN`.
pub const NFTA_GEN_ID: u16 = 1;
/// `NFTA_GEN_PROC_PID`: the process id of the committer, in `NFT_MSG_NEWGEN`.
pub const NFTA_GEN_PROC_PID: u16 = 2;
/// Length of `nlmsghdr`.
const HEADER_LEN: usize = 16;

/// A message the kernel sent that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed netlink message: {0}")]
pub struct Malformed(pub String);

impl From<DecodeError> for Malformed {
    fn from(e: DecodeError) -> Malformed {
        Malformed(e.to_string())
    }
}

/// The kernel refusing one message (`NLMSG_ERROR` with a non-zero code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The sequence number of the message refused (0 if the kernel did not say).
    pub seq: u32,
    /// The errno, positive (`ENOENT`, `EEXIST`, …).
    pub errno: i32,
    /// The extended acknowledgement's message, if the kernel wrote one.
    pub message: Option<String>,
    /// The offset, in the refused message, of the attribute the kernel found at fault.
    pub offset: Option<u32>,
}

/// One message of what the kernel sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// An acknowledgement (`NLMSG_ERROR` with code 0) of the message `seq`.
    Ack {
        /// The sequence number acknowledged.
        seq: u32,
    },
    /// An error.
    Error(Refusal),
    /// `NLMSG_DONE`.
    Done,
    /// An nf_tables message: a reply such as `NFT_MSG_NEWGEN`, or a change notification.
    Nft(NftMessage<'a>),
    /// Anything else (another subsystem, other control messages).
    Other(NetlinkHeader),
}

/// An nf_tables message: netlink header, `nfgenmsg`, attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NftMessage<'a> {
    /// The netlink header (the port id of a notification names the writer's socket).
    pub header: NetlinkHeader,
    /// The `nf_tables_msg_types` number (`NFT_MSG_NEWRULE`, …).
    pub kind: u16,
    /// The `nfgenmsg` family (`NFPROTO_IPV4` 2, `NFPROTO_IPV6` 10, …).
    pub family: u8,
    /// The attributes.
    pub attrs: Attrs<'a>,
}

/// A sequence of netlink attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attrs<'a>(pub &'a [u8]);

impl<'a> Attrs<'a> {
    /// The attributes, as `(type without flags, value)`, up to the first malformed one.
    pub fn iter(self) -> impl Iterator<Item = (u16, &'a [u8])> {
        NlasIterator::new(self.0).map_while(|nla| {
            let nla = nla.ok()?;
            let (kind, len) = (nla.kind(), usize::from(nla.length()));
            // `new_checked` made sure the attribute's length fits the buffer.
            nla.into_inner().get(4..len).map(|value| (kind, value))
        })
    }

    /// The value of the first attribute of type `ty`.
    pub fn get(self, ty: u16) -> Option<&'a [u8]> {
        self.iter().find(|(t, _)| *t == ty).map(|(_, v)| v)
    }

    /// A NUL-terminated string attribute.
    pub fn string(self, ty: u16) -> Option<&'a str> {
        let v = self.get(ty)?;
        let v = v.split(|b| *b == 0).next().unwrap_or(v);
        std::str::from_utf8(v).ok()
    }

    /// A big-endian `u32` attribute (nf_tables numbers are in network order).
    pub fn be32(self, ty: u16) -> Option<u32> {
        let v = self.get(ty)?.get(..4)?;
        Some(u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
    }

    /// How many attributes there are.
    pub fn count(self) -> usize {
        self.iter().count()
    }
}

/// The messages of one datagram, up to the first malformed one (whose error is the last
/// item).
pub fn messages(datagram: &[u8]) -> impl Iterator<Item = Result<Message<'_>, Malformed>> {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        if rest.len() < HEADER_LEN {
            return None;
        }
        let item = message(rest);
        match &item {
            Ok((_, len)) => rest = rest.get(len.div_ceil(4) * 4..).unwrap_or_default(),
            Err(_) => rest = &[],
        }
        Some(item.map(|(m, _)| m))
    })
}

/// The first message of `buf`, and its length.
fn message(buf: &[u8]) -> Result<(Message<'_>, usize), Malformed> {
    let nl = NetlinkBuffer::new_checked(buf)?;
    let header = NetlinkHeader::parse(&nl)?;
    let payload = nl.payload();
    let len = header.length as usize;
    let m = match header.message_type {
        NLMSG_ERROR => error(&header, payload)?,
        NLMSG_DONE => Message::Done,
        ty if ty >> 8 == NFNL_SUBSYS_NFTABLES && payload.len() >= 4 => Message::Nft(NftMessage {
            header,
            kind: ty & 0xff,
            family: payload[0],
            attrs: Attrs(&payload[4..]),
        }),
        _ => Message::Other(header),
    };
    Ok((m, len))
}

/// An `NLMSG_ERROR`: the code, the header of the message it answers (all of the message
/// unless capped), then, with `NLM_F_ACK_TLVS`, the extended acknowledgement.
fn error<'a>(header: &NetlinkHeader, payload: &'a [u8]) -> Result<Message<'a>, Malformed> {
    let err = ErrorMessage::parse(&ErrorBuffer::new_checked(&payload)?)?;
    let original = err.header.as_slice();
    let seq = original
        .get(..HEADER_LEN)
        .map(|h| NetlinkBuffer::new(h).sequence_number());
    let Some(code) = err.code else {
        return Ok(Message::Ack {
            seq: seq.unwrap_or(0),
        });
    };
    let mut refusal = Refusal {
        seq: seq.unwrap_or(0),
        errno: code.get().checked_neg().unwrap_or(i32::MAX),
        message: None,
        offset: None,
    };
    if header.flags & NLM_F_ACK_TLVS != 0 && original.len() >= HEADER_LEN {
        let echoed = if header.flags & NLM_F_CAPPED != 0 {
            HEADER_LEN
        } else {
            let len = NetlinkBuffer::new(&original[..HEADER_LEN]).length() as usize;
            len.div_ceil(4) * 4
        };
        let tlvs = Attrs(original.get(echoed..).unwrap_or_default());
        refusal.message = tlvs.string(NLMSGERR_ATTR_MSG).map(str::to_owned);
        refusal.offset = tlvs
            .get(NLMSGERR_ATTR_OFFS)
            .and_then(|v| v.get(..4))
            .map(|v| u32::from_ne_bytes([v[0], v[1], v[2], v[3]]));
    }
    Ok(Message::Error(refusal))
}

/// Why a batch did not go through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The kernel refused a message (the first refusal; the kernel reports every message it
    /// refused, and applies nothing).
    #[error("the kernel refused message {}: {}", .0.seq, std::io::Error::from_raw_os_error(.0.errno))]
    Refused(Refusal),
    /// Neither an acknowledgement of the last message nor an error came back.
    #[error("the kernel did not acknowledge the batch")]
    NoAck,
}

/// The kernel's answers to one batch, gathered datagram by datagram: the batch went through
/// when its last message was acknowledged and nothing was refused.
#[derive(Debug, Clone, Default)]
pub struct BatchReplies {
    last_seq: Option<u32>,
    acked: bool,
    refused: Option<Refusal>,
}

impl BatchReplies {
    /// Ready for the answers to `batch`.
    pub fn new(batch: &Batch) -> BatchReplies {
        BatchReplies {
            last_seq: batch.last_seq,
            acked: false,
            refused: None,
        }
    }

    /// One datagram of answers. Malformed messages end it and are otherwise ignored: what
    /// matters is an acknowledgement or an error, which are checked for whole.
    pub fn read(&mut self, datagram: &[u8]) {
        for m in messages(datagram) {
            match m {
                Ok(Message::Ack { seq }) if Some(seq) == self.last_seq => self.acked = true,
                Ok(Message::Error(r)) if self.refused.is_none() => self.refused = Some(r),
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }

    /// The outcome, once every answer has been read.
    pub fn outcome(self) -> Result<(), BatchError> {
        if let Some(r) = self.refused {
            return Err(BatchError::Refused(r));
        }
        if self.acked || self.last_seq.is_none() {
            Ok(())
        } else {
            Err(BatchError::NoAck)
        }
    }
}

/// The answer to the `GETGEN` request `seq` ([`encode_get_generation`](crate::encode_get_generation))
/// in `datagram`, if it holds one: the generation, or why there is none (an error, or a
/// `NEWGEN` without its generation, as [`BatchError::NoAck`]).
pub fn generation(datagram: &[u8], seq: u32) -> Option<Result<u32, BatchError>> {
    for m in messages(datagram) {
        match m {
            Ok(Message::Error(r)) => return Some(Err(BatchError::Refused(r))),
            Ok(Message::Nft(n)) if n.header.sequence_number == seq && n.kind == NFT_MSG_NEWGEN => {
                return Some(n.attrs.be32(NFTA_GEN_ID).ok_or(BatchError::NoAck));
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    None
}

/// The errno of a refusal as an [`std::io::Error`].
impl From<&Refusal> for std::io::Error {
    fn from(r: &Refusal) -> std::io::Error {
        std::io::Error::from_raw_os_error(r.errno)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{NLM_F_REQUEST, Writer};

    /// An `NLMSG_ERROR` as the kernel writes it: code, the header of the message answered,
    /// then extended acknowledgement TLVs.
    fn error_msg(code: i32, seq: u32, tlvs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut b = Vec::new();
        let flags = NLM_F_CAPPED | if tlvs.is_empty() { 0 } else { NLM_F_ACK_TLVS };
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&4242u32.to_ne_bytes());
        b.extend_from_slice(&code.to_ne_bytes());
        // The original header: 200 bytes long, sequence number `seq`.
        b.extend_from_slice(&200u32.to_ne_bytes());
        b.extend_from_slice(&0x0a06u16.to_ne_bytes());
        b.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        for (ty, v) in tlvs {
            let len = u16::try_from(4 + v.len()).expect("small");
            b.extend_from_slice(&len.to_ne_bytes());
            b.extend_from_slice(&ty.to_ne_bytes());
            b.extend_from_slice(v);
            while b.len() % 4 != 0 {
                b.push(0);
            }
        }
        let len = u32::try_from(b.len()).expect("small");
        b[..4].copy_from_slice(&len.to_ne_bytes());
        b
    }

    fn batch(last: u32) -> Batch {
        Batch {
            bytes: Vec::new(),
            seqs: vec![(last - 1, 0), (last, 1)],
            last_seq: Some(last),
        }
    }

    #[test]
    fn an_acknowledged_batch_went_through() {
        let mut r = BatchReplies::new(&batch(7));
        r.read(&error_msg(0, 6, &[]));
        let mut pending = r.clone();
        assert_eq!(pending.clone().outcome(), Err(BatchError::NoAck));
        pending.read(&error_msg(0, 7, &[]));
        assert_eq!(pending.outcome(), Ok(()));
    }

    #[test]
    fn the_first_refusal_is_reported_with_its_extended_ack() {
        let mut r = BatchReplies::new(&batch(7));
        let mut d = error_msg(-17, 6, &[(1, b"Set exists\0"), (2, &44u32.to_ne_bytes())]);
        d.extend(error_msg(-2, 7, &[]));
        r.read(&d);
        assert_eq!(
            r.outcome(),
            Err(BatchError::Refused(Refusal {
                seq: 6,
                errno: 17,
                message: Some("Set exists".into()),
                offset: Some(44),
            }))
        );
    }

    #[test]
    fn truncated_and_garbage_datagrams_are_not_acknowledgements() {
        let ack = error_msg(0, 7, &[]);
        for cut in [0, 3, 15, 16, 19, 20, 30, ack.len() - 1] {
            let mut r = BatchReplies::new(&batch(7));
            r.read(&ack[..cut]);
            assert_eq!(r.outcome(), Err(BatchError::NoAck), "cut at {cut}");
        }
        let mut r = BatchReplies::new(&batch(7));
        r.read(&[0xff; 64]);
        assert_eq!(r.outcome(), Err(BatchError::NoAck));
        assert!(messages(&[0xff; 64]).next().is_some_and(|m| m.is_err()));
    }

    #[test]
    fn the_generation_is_read_from_its_newgen() {
        let mut w = Writer::default();
        let m = w.begin_msg((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN, 0, 9, 0, 0);
        w.u32(NFTA_GEN_ID, 1234);
        w.u32(NFTA_GEN_PROC_PID, 99);
        w.end_msg(m);
        assert_eq!(generation(&w.buf, 9), Some(Ok(1234)));
        assert_eq!(generation(&w.buf, 8), None, "another request's");
        assert!(matches!(
            generation(&error_msg(-1, 9, &[]), 9),
            Some(Err(BatchError::Refused(Refusal { errno: 1, .. })))
        ));
    }
}
