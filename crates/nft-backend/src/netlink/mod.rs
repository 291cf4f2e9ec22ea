//! The native write path: transactions sent to the kernel as one nf_tables netlink batch.
//!
//! The batch is built in memory ([`rudder_nft_codec::encode`]) and sent with a single `sendmsg` on a
//! `NETLINK_NETFILTER` socket. The kernel processes a batch synchronously inside that call
//! and applies it atomically: every message or none. Errors come back as `NLMSG_ERROR`
//! messages naming the failing message's sequence number, which maps to the operation of the
//! transaction; the last message asks for an acknowledgement, so success is confirmed, not
//! assumed.

pub(crate) use rudder_nft_codec::wire;

use std::io::ErrorKind;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use netlink_sys::Socket;
use nix::sys::socket::{setsockopt, sockopt};
use rudder_nft::Transaction;

use rudder_nft_codec as codec;
use rudder_nft_codec::IntervalSets;
pub use rudder_nft_codec::{Batch, EncodeError};
use wire::{NETLINK_NETFILTER, NLMSG_DONE, NLMSG_ERROR};

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
    #[error("the kernel refused the transaction: {op}: {}", std::io::Error::from_raw_os_error(*errno))]
    Refused {
        /// The errno the kernel returned.
        errno: i32,
        /// The operation that failed, in `nft` syntax (shortened).
        op: String,
    },
    /// The kernel neither acknowledged nor refused the batch.
    #[error("the kernel did not acknowledge the transaction")]
    NoAck,
}

impl NetlinkError {
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
    let mut w = wire::Writer::default();
    let m = w.begin_msg(
        (wire::NFNL_SUBSYS_NFTABLES << 8) | wire::NFT_MSG_GETGEN,
        wire::NLM_F_REQUEST,
        seq,
        0,
        0,
    );
    w.end_msg(m);
    socket.send(&w.buf, 0)?;
    // The kernel answers inside sendmsg: the reply is waiting.
    loop {
        let n = match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Err(NetlinkError::NoAck),
            Err(e) => return Err(e.into()),
        };
        let mut at = 0;
        while at + 20 <= n {
            let len = u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
            let ty = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
            let msg_seq =
                u32::from_ne_bytes([buf[at + 8], buf[at + 9], buf[at + 10], buf[at + 11]]);
            if len < 16 || at + len > n {
                break;
            }
            if ty == NLMSG_ERROR && len >= 20 {
                let errno =
                    -i32::from_ne_bytes([buf[at + 16], buf[at + 17], buf[at + 18], buf[at + 19]]);
                if errno != 0 {
                    return Err(NetlinkError::Refused {
                        errno,
                        op: "get generation".into(),
                    });
                }
            } else if msg_seq == seq && ty & 0xff == wire::NFT_MSG_NEWGEN {
                // nfgenmsg, then attributes: NFTA_GEN_ID (1) first, a big-endian u32.
                let mut a = at + 20;
                while a + 8 <= at + len {
                    let alen = usize::from(u16::from_ne_bytes([buf[a], buf[a + 1]]));
                    let aty = u16::from_ne_bytes([buf[a + 2], buf[a + 3]]) & 0x3fff;
                    if alen < 4 || a + alen > at + len {
                        break;
                    }
                    if aty == 1 && alen >= 8 {
                        return Ok(u32::from_be_bytes([
                            buf[a + 4],
                            buf[a + 5],
                            buf[a + 6],
                            buf[a + 7],
                        ]));
                    }
                    a += alen.div_ceil(4) * 4;
                }
                return Err(NetlinkError::NoAck);
            }
            at += len.div_ceil(4) * 4;
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
    let mut acked = false;
    let mut refused: Option<NetlinkError> = None;
    loop {
        let n = match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        let mut at = 0;
        while at + 16 <= n {
            let len = u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
            let ty = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
            if len < 16 || at + len > n {
                break;
            }
            if ty == NLMSG_ERROR && len >= 20 {
                let errno =
                    -i32::from_ne_bytes([buf[at + 16], buf[at + 17], buf[at + 18], buf[at + 19]]);
                // The original header follows the error code.
                let seq = if len >= 36 {
                    u32::from_ne_bytes([buf[at + 28], buf[at + 29], buf[at + 30], buf[at + 31]])
                } else {
                    0
                };
                if errno == 0 {
                    if Some(seq) == batch.last_seq {
                        acked = true;
                    }
                } else if refused.is_none() {
                    refused = Some(NetlinkError::Refused {
                        errno,
                        op: describe(batch, tx, seq),
                    });
                }
            } else if ty == NLMSG_DONE {
                // Nothing to do: the batch end.
            }
            at += len.div_ceil(4) * 4;
        }
    }
    if let Some(e) = refused {
        return Err(e);
    }
    if acked || batch.last_seq.is_none() {
        Ok(())
    } else {
        Err(NetlinkError::NoAck)
    }
}

/// The operation a message belongs to, in `nft` syntax, shortened for an error message.
fn describe(batch: &Batch, tx: &Transaction, seq: u32) -> String {
    let Some(&(_, i)) = batch.seqs.iter().find(|(s, _)| *s == seq) else {
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
