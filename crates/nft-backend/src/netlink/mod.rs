//! The native write path: transactions sent to the kernel as one nf_tables netlink batch.
//!
//! The batch is built in memory by the codec ([`rudder_nft_codec::encode`]) and sent with a
//! single `sendmsg` on a `NETLINK_NETFILTER` socket; the kernel's answers are decoded by the
//! codec too ([`rudder_nft_codec::decode`]). What this module adds is the socket, sequence
//! numbers, and the catalogue of interval sets kept between transactions.
//!
//! The kernel processes a batch synchronously inside that call and applies it atomically:
//! every message or none. Errors come back as `NLMSG_ERROR` messages naming the failing
//! message's sequence number, which maps to the operation of the transaction; the last
//! message asks for an acknowledgement, so success is confirmed, not assumed.

use std::io::ErrorKind;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use netlink_sys::Socket;
use nix::sys::socket::{setsockopt, sockopt};
use rudder_nft::{Table, TableRef, Transaction};

mod read;

use rudder_nft_codec as codec;
use rudder_nft_codec::IntervalSets;
use rudder_nft_codec::decode::{self, BatchError, BatchReplies, Refusal};
use rudder_nft_codec::wire::NETLINK_NETFILTER;
pub use rudder_nft_codec::{Batch, EncodeError};

/// Why a netlink transaction failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetlinkError {
    /// The transaction has something the encoder cannot express.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The socket could not be opened, sized or used.
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
    /// The kernel refused the batch; nothing was applied.
    #[error(
        "the kernel refused the transaction: {op}: {}{}",
        std::io::Error::from_raw_os_error(*errno),
        detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default()
    )]
    Refused {
        /// The errno the kernel returned.
        errno: i32,
        /// The operation that failed, in `nft` syntax (shortened).
        op: String,
        /// The kernel's own explanation (its extended acknowledgement's message), if any.
        detail: Option<String>,
    },
    /// The kernel neither acknowledged nor refused the batch.
    #[error("the kernel did not acknowledge the transaction")]
    NoAck,
    /// Reading a table back failed, or found what Rudder's IR cannot express.
    #[error("reading the table back: {0}")]
    Dump(#[from] rudder_nft_codec::dump::DumpError),
}

impl NetlinkError {
    fn refused(r: Refusal, op: String) -> NetlinkError {
        NetlinkError::Refused {
            errno: r.errno,
            op,
            detail: r.message,
        }
    }

    /// Whether the kernel said an object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, NetlinkError::Refused { errno, .. } if *errno == nix::libc::ENOENT)
    }
}

/// Writes transactions through netlink. Remembers which sets hold intervals, because lookups
/// into them are encoded differently and a later transaction may add a rule that uses a set
/// declared earlier.
///
/// The socket is kept open between transactions: closing a netfilter netlink socket waits for
/// an RCU grace period (7–15 ms measured here), longer than applying a small change. A socket
/// belongs to the network namespace it was opened in, so it is reused only from a thread in
/// that same namespace.
#[derive(Debug, Default)]
pub struct NetlinkWriter {
    intervals: Mutex<IntervalSets>,
    seq: AtomicU32,
    socket: Mutex<Option<Cached>>,
    /// The netlink port ids of the sockets this writer used, newest last: the kernel's change
    /// notifications name the writer by its port id, so the monitor can tell Rudder's own
    /// commits from others'.
    port_ids: std::sync::Arc<crate::OwnIds>,
}

#[derive(Debug)]
struct Cached {
    netns: std::path::PathBuf,
    socket: Socket,
    sndbuf: usize,
}

/// The network namespace of the calling thread, as `net:[inode]`.
fn current_netns() -> std::io::Result<std::path::PathBuf> {
    std::fs::read_link("/proc/thread-self/ns/net")
}

/// Room for the kernel's replies: acknowledgements and, on failure, error messages.
const RECV_BUFFER: usize = 1 << 20;

impl NetlinkWriter {
    /// A writer for the network namespace of the calling thread.
    pub fn new() -> NetlinkWriter {
        NetlinkWriter::default()
    }

    /// The netlink port ids this writer sends from (see [`crate::OwnIds`]).
    pub fn port_ids(&self) -> std::sync::Arc<crate::OwnIds> {
        self.port_ids.clone()
    }

    /// Encodes `tx` without sending it.
    pub fn encode(&self, tx: &Transaction) -> Result<Batch, EncodeError> {
        self.encode_as(tx, true)
    }

    fn encode_as(&self, tx: &Transaction, commit: bool) -> Result<Batch, EncodeError> {
        let known = self.intervals.lock().map(|g| g.clone()).unwrap_or_default();
        // Enough sequence numbers for every message the batch can hold (at most one per
        // element, plus anonymous sets and framing), so consecutive batches never share one.
        let stats = tx.stats();
        let most = tx.len() * 3 + stats.elements_added + stats.elements_deleted + 2;
        let seq = self.seq.fetch_add(
            u32::try_from(most).unwrap_or(u32::MAX / 2),
            Ordering::Relaxed,
        );
        if commit {
            codec::encode(tx, &known, seq.wrapping_add(1))
        } else {
            codec::encode_dry_run(tx, &known, seq.wrapping_add(1))
        }
    }

    /// Applies `tx` atomically. Returns the size of the batch in bytes.
    pub fn apply(&self, tx: &Transaction) -> Result<usize, NetlinkError> {
        self.send(tx, true)
    }

    /// Has the kernel validate `tx` completely, exactly as [`NetlinkWriter::apply`] would
    /// send it, and then abort it (see [`codec::encode_dry_run`]): `Ok` when the kernel would
    /// take it, the same error as `apply` otherwise. Nothing changes.
    pub fn check(&self, tx: &Transaction) -> Result<(), NetlinkError> {
        self.send(tx, false).map(|_| ())
    }

    /// The socket for the calling thread's network namespace, opened if needed.
    fn socket(&self) -> Result<std::sync::MutexGuard<'_, Option<Cached>>, NetlinkError> {
        let netns = current_netns()?;
        let mut cache = self
            .socket
            .lock()
            .map_err(|_| std::io::Error::other("netlink socket lock poisoned"))?;
        if cache.as_ref().is_none_or(|c| c.netns != netns) {
            let mut socket = Socket::new(NETLINK_NETFILTER as isize)?;
            let addr = socket.bind_auto()?;
            self.port_ids.push(addr.port_number());
            let _ = setsockopt(&socket, sockopt::RcvBufForce, &RECV_BUFFER);
            socket.set_cap_ack(true)?;
            // Errors carry the kernel's explanation, when it has one.
            let _ = socket.set_ext_ack(true);
            socket.set_non_blocking(true)?;
            *cache = Some(Cached {
                netns,
                socket,
                sndbuf: 0,
            });
        }
        Ok(cache)
    }

    fn send(&self, tx: &Transaction, commit: bool) -> Result<usize, NetlinkError> {
        let batch = self.encode_as(tx, commit)?;
        let len = batch.bytes.len();
        let mut cache = self.socket()?;
        let Some(cached) = cache.as_mut() else {
            return Err(NetlinkError::Io(std::io::Error::other("no netlink socket")));
        };
        let result = send_batch(cached, &batch, tx);
        if matches!(result, Err(NetlinkError::Io(_) | NetlinkError::NoAck)) {
            // A socket in an unknown state is not reused.
            *cache = None;
        }
        result?;
        if commit && let Ok(mut known) = self.intervals.lock() {
            codec::track_interval_sets(tx, &mut known);
        }
        Ok(len)
    }

    /// `table` as the kernel holds it, read over netlink dumps and decoded into the IR, or
    /// `None` if it does not exist. Rules that match one of `expected`'s rules (compared as
    /// canonical bytecode) come back as that rule, others as placeholders that name them
    /// ([`rudder_nft_codec::dump::decode_table`]); chains, sets and elements are decoded.
    pub fn read_table(
        &self,
        table: &TableRef,
        expected: Option<&Table>,
    ) -> Result<Option<Table>, NetlinkError> {
        read::read_table(table, expected)
    }

    /// Whether `table` exists (`NFT_MSG_GETTABLE`).
    pub fn table_exists(&self, table: &TableRef) -> Result<bool, NetlinkError> {
        read::Reader::new()?.exists(table)
    }

    /// The kernel's nf_tables generation (`NFT_MSG_GETGEN`): a counter that every committed
    /// transaction, anyone's, advances by exactly one.
    pub fn generation(&self) -> Result<u32, NetlinkError> {
        let mut cache = self.socket()?;
        let Some(cached) = cache.as_mut() else {
            return Err(NetlinkError::Io(std::io::Error::other("no netlink socket")));
        };
        let result = get_generation(&cached.socket, self.seq.fetch_add(1, Ordering::Relaxed));
        if result.is_err() {
            *cache = None;
        }
        result
    }
}

fn get_generation(socket: &Socket, seq: u32) -> Result<u32, NetlinkError> {
    let mut buf = vec![0u8; 64 * 1024];
    while socket.recv(&mut &mut buf[..], 0).is_ok() {}
    socket.send(&codec::encode_get_generation(seq), 0)?;
    // The kernel answers inside sendmsg: the reply is waiting.
    loop {
        let n = match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Err(NetlinkError::NoAck),
            Err(e) => return Err(e.into()),
        };
        match decode::generation(&buf[..n.min(buf.len())], seq) {
            Some(Ok(generation)) => return Ok(generation),
            Some(Err(BatchError::Refused(r))) => {
                return Err(NetlinkError::refused(r, "get generation".into()));
            }
            Some(Err(BatchError::NoAck)) => return Err(NetlinkError::NoAck),
            None => {}
        }
    }
}

fn send_batch(cached: &mut Cached, batch: &Batch, tx: &Transaction) -> Result<(), NetlinkError> {
    let socket = &cached.socket;
    let mut buf = vec![0u8; 64 * 1024];
    // Nothing should be waiting; anything that is belongs to an earlier batch.
    while socket.recv(&mut &mut buf[..], 0).is_ok() {}
    // The whole batch goes in one message; the socket's send buffer must hold it (forcing
    // the size needs CAP_NET_ADMIN, which programming nftables needs anyway).
    let want = batch.bytes.len() + 64 * 1024;
    if want > cached.sndbuf {
        let want = want.max(256 * 1024);
        let want = i32::try_from(want).unwrap_or(i32::MAX) as usize;
        if setsockopt(socket, sockopt::SndBufForce, &want).is_err() {
            setsockopt(socket, sockopt::SndBuf, &want).map_err(std::io::Error::from)?;
        }
        cached.sndbuf = want;
    }
    // The kernel processes the batch inside sendmsg, so a non-blocking send either takes it
    // whole or fails; then read what the kernel answered.
    socket.send(&batch.bytes, 0)?;
    let mut replies = BatchReplies::new(batch);
    loop {
        match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => replies.read(&buf[..n.min(buf.len())]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
    match replies.outcome() {
        Ok(()) => Ok(()),
        Err(BatchError::Refused(r)) => {
            let op = describe(batch, tx, r.seq);
            Err(NetlinkError::refused(r, op))
        }
        Err(BatchError::NoAck) => Err(NetlinkError::NoAck),
    }
}

/// The operation a message belongs to, in `nft` syntax, shortened for an error message.
fn describe(batch: &Batch, tx: &Transaction, seq: u32) -> String {
    let Some(i) = batch.operation(seq) else {
        return format!("message {seq} (batch framing)");
    };
    let Some(op) = tx.ops().get(i) else {
        return format!("operation {i}");
    };
    let mut one = Transaction::new();
    one.push(op.clone());
    let text = one.render();
    let line = text.lines().next().unwrap_or_default();
    if line.len() > 300 {
        let mut cut = 300;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{} …", &line[..cut])
    } else {
        line.to_owned()
    }
}
