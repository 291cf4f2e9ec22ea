//! Reading Rudder's tables back over nf_tables netlink dumps: the table (`GETTABLE`), then
//! its chains, sets, every set's elements and its rules (`NLM_F_DUMP`), decoded by the codec
//! ([`rudder_nft_codec::dump`]) into the IR. No `nft` program is involved.
//!
//! Each read opens a socket of its own (blocking, with a receive timeout): a dump is
//! answered over several `recvmsg` calls, the kernel filling the next datagram as the last
//! one is read, and keeping it apart from the writer's socket means no dump answer can be
//! mistaken for a batch's. A dump the kernel marks interrupted (the table changed while it
//! was read) is read again, a few times.

use std::io::ErrorKind;
use std::time::Duration;

use netlink_sys::Socket;
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;
use rudder_nft::{Table, TableRef};
use rudder_nft_codec::dump::{
    DumpError, DumpReplies, Dumped, Request, TableDump, decode_table, encode_request,
};
use rudder_nft_codec::wire::NETLINK_NETFILTER;

use super::NetlinkError;

/// Room for one datagram of a dump (the kernel fills at most 32 KiB at a time).
const DATAGRAM: usize = 256 * 1024;
/// How long one answer may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Reads of a table that keeps changing under the dump.
const ATTEMPTS: usize = 4;

/// A socket for dumps in the calling thread's network namespace.
pub(crate) struct Reader {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Reader {
    pub(crate) fn new() -> Result<Reader, NetlinkError> {
        let mut socket = Socket::new(NETLINK_NETFILTER as isize)?;
        socket.bind_auto()?;
        let _ = setsockopt(&socket, sockopt::RcvBufForce, &(4 << 20));
        let _ = socket.set_ext_ack(true);
        let tv = TimeVal::new(TIMEOUT.as_secs() as _, 0);
        setsockopt(&socket, sockopt::ReceiveTimeout, &tv).map_err(std::io::Error::from)?;
        Ok(Reader {
            socket,
            seq: 1,
            buf: vec![0u8; DATAGRAM],
        })
    }

    /// Sends `req` about `table` and gathers every answer.
    fn ask(&mut self, req: Request<'_>, table: &TableRef) -> Result<Vec<Dumped>, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.socket.send(&encode_request(req, table, seq), 0)?;
        let mut replies = DumpReplies::new(seq);
        while !replies.is_done() {
            match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => replies.read(&self.buf[..n.min(DATAGRAM)]),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Err(NetlinkError::NoAck),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(replies.finish()?)
    }

    /// Whether `table` exists.
    pub(crate) fn exists(&mut self, table: &TableRef) -> Result<bool, NetlinkError> {
        match self.ask(Request::Table, table) {
            Ok(_) => Ok(true),
            Err(NetlinkError::Dump(e)) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Everything the kernel holds about `table`, or `None` if it does not exist.
    pub(crate) fn dump(&mut self, table: &TableRef) -> Result<Option<TableDump>, NetlinkError> {
        let mut last = None;
        for _ in 0..ATTEMPTS {
            match self.dump_once(table) {
                Err(NetlinkError::Dump(DumpError::Interrupted)) => {
                    last = Some(NetlinkError::Dump(DumpError::Interrupted));
                }
                Err(NetlinkError::Dump(e)) if e.is_not_found() => return Ok(None),
                other => return other.map(Some),
            }
        }
        Err(last.unwrap_or(NetlinkError::NoAck))
    }

    fn dump_once(&mut self, table: &TableRef) -> Result<TableDump, NetlinkError> {
        self.ask(Request::Table, table)?;
        let mut d = TableDump {
            chains: self.ask(Request::Chains, table)?,
            sets: self.ask(Request::Sets, table)?,
            ..TableDump::default()
        };
        for set in d.set_names() {
            let elems = self.ask(Request::Elements(&set), table)?;
            d.elements.insert(set, elems);
        }
        d.rules = self.ask(Request::Rules, table)?;
        // The table may have been deleted and created again between the requests.
        if !self.exists(table)? {
            return Err(NetlinkError::Dump(DumpError::Interrupted));
        }
        Ok(d)
    }
}

/// `table` as the kernel holds it, decoded, or `None` if it does not exist; `expected` names
/// the rules that match Rudder's (see [`decode_table`]).
pub(crate) fn read_table(
    table: &TableRef,
    expected: Option<&Table>,
) -> Result<Option<Table>, NetlinkError> {
    let Some(d) = Reader::new()?.dump(table)? else {
        return Ok(None);
    };
    Ok(Some(decode_table(&d, table, expected)?))
}
