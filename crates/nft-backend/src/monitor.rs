//! Following the kernel's nf_tables change notifications, to see when someone else changes
//! Rudder's tables.
//!
//! Every committed nf_tables transaction is reported to the `NFNLGRP_NFTABLES` multicast
//! group of `NETLINK_NETFILTER` sockets: one message per object created or deleted (tables,
//! chains, rules, sets, elements, each naming its table), then `NFT_MSG_NEWGEN` with the new
//! generation, the process id of the writer (`NFTA_GEN_PROC_PID`) and, in its header, the
//! netlink port id of the writer's socket. Messages of one transaction arrive together
//! (commits are serialized), so the [`Monitor`] groups them up to their `NEWGEN` and drops
//! the groups Rudder wrote itself: those whose port id is one of its writer's sockets, or
//! whose process id is one of the `nft` programs it ran ([`crate::OwnIds`]). Dry runs are
//! aborted, not committed, and are never reported.
//!
//! What is left is a change made by someone else to a watched table. The monitor reads on a
//! thread of its own, so a burst of notifications never blocks anyone, and reports changes
//! debounced: a burst (a script of many commands, a table deleted with all it holds) becomes
//! one [`Notice`], sent [`QUIET`] after the last change of the burst and at most [`MAX_DELAY`]
//! after its first.
//!
//! Being subscribed is not free: the kernel formats a notification for every object of every
//! transaction while anyone listens, which made a full sync of 10,000 services two to three
//! times slower. So the backend writes its own large transactions (more than
//! [`PAUSE_ABOVE`] operations and elements) with the monitor out of the group: it leaves the
//! group, reads the kernel's generation, commits, joins again and reads the generation again.
//! Every commit advances the generation by one; if it advanced by more than Rudder's own
//! commit, someone else committed meanwhile, unseen.
//!
//! Notifications are lost then, and when the socket's receive buffer overflows
//! (`ENOBUFS`); the monitor reports [`Notice::Lost`], and whoever listens must look at the
//! tables themselves.

use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use netlink_sys::Socket;
use nix::sys::socket::{setsockopt, sockopt};
use rudder_nft::{Family, TableRef};

use rudder_nft_codec::decode::{Attrs, Message, NFTA_GEN_ID, NFTA_GEN_PROC_PID, messages};
use rudder_nft_codec::wire::NETLINK_NETFILTER;

use crate::OwnIds;

/// `NFNLGRP_NFTABLES`: the multicast group of nf_tables change notifications.
const NFNLGRP_NFTABLES: u32 = 7;
// `NFT_MSG_NEWGEN`: the last message of every committed transaction.
use rudder_nft_codec::wire::NFT_MSG_NEWGEN;
/// The table attribute of every nf_tables object message (`NFTA_TABLE_NAME`,
/// `NFTA_CHAIN_TABLE`, `NFTA_RULE_TABLE`, `NFTA_SET_TABLE`, `NFTA_SET_ELEM_LIST_TABLE`, ...).
const ATTR_TABLE: u16 = 1;
/// `NFTA_RULE_CHAIN`, `NFTA_SET_NAME`, `NFTA_SET_ELEM_LIST_SET`, `NFTA_OBJ_NAME`.
const ATTR_NAME_2: u16 = 2;
/// `NFTA_CHAIN_NAME`.
const NFTA_CHAIN_NAME: u16 = 3;
/// `NFTA_SET_ELEM_LIST_ELEMENTS`.
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;

/// How long a burst of changes must be quiet before it is reported.
pub const QUIET: Duration = Duration::from_millis(50);
/// The longest a change waits to be reported, however long its burst goes on.
pub const MAX_DELAY: Duration = Duration::from_millis(200);
/// How often an idle monitor looks whether it should stop.
const IDLE: Duration = Duration::from_millis(250);
/// Rudder's own transactions larger than this (operations plus elements) are written with
/// the monitor out of the notification group (see the module's documentation).
pub const PAUSE_ABOVE: usize = 1000;
/// The socket's receive buffer: room for the notifications of a large transaction while
/// the thread catches up (memory is used only when it fills).
const RECV_BUFFER: usize = 16 << 20;

/// What the monitor reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Someone else changed watched tables.
    Changed {
        /// What changed, one line per object and kind of change (`rule added to chain ip
        /// rudder services`, with `(×N)` when it happened N times), tables deleted first.
        changes: Vec<String>,
        /// Watched tables that were deleted (and not created again in the same burst).
        deleted: Vec<TableRef>,
    },
    /// Notifications were lost (the receive buffer overflowed): the tables may have been
    /// changed without the monitor seeing it.
    Lost,
}

/// A running monitor; stops (within a quarter of a second) when dropped.
#[derive(Debug)]
pub struct Monitor {
    link: Arc<Link>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.link.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the backend shares with its running monitor: the socket, to take it out of the
/// notification group around large transactions, and a flag to report lost notifications.
#[derive(Debug)]
pub(crate) struct Link {
    socket: Socket,
    lost: AtomicBool,
    stop: AtomicBool,
}

impl Link {
    /// Leaves the notification group: nothing is reported (or formatted) for the monitor.
    pub fn pause(&self) -> std::io::Result<()> {
        self.socket.drop_membership(NFNLGRP_NFTABLES)
    }

    /// Joins the notification group again.
    pub fn resume(&self) -> std::io::Result<()> {
        self.socket.add_membership(NFNLGRP_NFTABLES)
    }

    /// Has the monitor report [`Notice::Lost`].
    pub fn report_lost(&self) {
        self.lost.store(true, Ordering::Relaxed);
    }
}

/// Who Rudder writes as.
#[derive(Debug, Clone)]
pub(crate) struct Own {
    /// Port ids of its netlink writer's sockets.
    pub port_ids: Arc<OwnIds>,
    /// Process ids of the `nft` programs it ran.
    pub pids: Arc<OwnIds>,
}

/// Starts a monitor of `tables` in the network namespace of the calling thread, calling
/// `notify` (on the monitor's thread) with what it sees until `notify` returns false or the
/// monitor is dropped.
pub(crate) fn start(
    tables: Vec<TableRef>,
    own: Own,
    mut notify: impl FnMut(Notice) -> bool + Send + 'static,
) -> std::io::Result<(Monitor, std::sync::Weak<Link>)> {
    let mut socket = Socket::new(NETLINK_NETFILTER as isize)?;
    socket.bind_auto()?;
    socket.add_membership(NFNLGRP_NFTABLES)?;
    if setsockopt(&socket, sockopt::RcvBufForce, &RECV_BUFFER).is_err() {
        setsockopt(&socket, sockopt::RcvBuf, &RECV_BUFFER).map_err(std::io::Error::from)?;
    }
    let link = Arc::new(Link {
        socket,
        lost: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    });
    let shared = link.clone();
    let thread = std::thread::Builder::new()
        .name("nft-monitor".into())
        .spawn(move || {
            let link = shared;
            let socket = &link.socket;
            let mut reader = Reader::new(tables, own);
            let mut buf = vec![0u8; 256 * 1024];
            while !link.stop.load(Ordering::Relaxed) {
                if link.lost.swap(false, Ordering::Relaxed) {
                    reader.lost();
                    if !notify(Notice::Lost) {
                        return;
                    }
                }
                let timeout = reader.next_deadline().map_or(IDLE, |d| {
                    d.saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(1))
                });
                let tv = nix::sys::time::TimeVal::new(
                    i64::try_from(timeout.as_secs()).unwrap_or(1),
                    i64::from(timeout.subsec_micros()),
                );
                if setsockopt(socket, sockopt::ReceiveTimeout, &tv).is_err() {
                    tracing::warn!("nftables monitor: cannot set a receive timeout: stopping");
                    return;
                }
                match socket.recv(&mut &mut buf[..], 0) {
                    Ok(n) => reader.datagram(&buf[..n.min(buf.len())]),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {
                        reader.lost();
                        if !notify(Notice::Lost) {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(
                            "nftables monitor: cannot read notifications: {e}: stopping"
                        );
                        return;
                    }
                }
                if let Some(notice) = reader.due(Instant::now())
                    && !notify(notice)
                {
                    return;
                }
            }
        })?;
    let weak = Arc::downgrade(&link);
    Ok((
        Monitor {
            link,
            thread: Some(thread),
        },
        weak,
    ))
}

/// One notification about a watched table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Change {
    table: TableRef,
    /// The `nf_tables_msg_types` number.
    kind: u16,
    /// The object the change is about, when it is not the table: the chain of a rule, the
    /// set of elements, the name of a chain or set.
    object: Option<String>,
    /// Elements in a set element message.
    elements: usize,
}

impl Change {
    /// One line of the summary.
    fn describe(&self) -> String {
        let t = &self.table;
        let o = self.object.as_deref().unwrap_or("?");
        match self.kind {
            0 => format!("table {t} added"),
            2 | 26 => format!("table {t} deleted"),
            3 => format!("chain {t} {o} added"),
            5 | 27 => format!("chain {t} {o} deleted"),
            6 => format!("rule added to chain {t} {o}"),
            8 | 28 => format!("rule deleted from chain {t} {o}"),
            9 => format!("set {t} {o} added"),
            11 | 29 => format!("set {t} {o} deleted"),
            12 => format!("element added to set {t} {o}"),
            14 | 30 => format!("element deleted from set {t} {o}"),
            18 => format!("object {t} {o} added"),
            20 | 31 => format!("object {t} {o} deleted"),
            22 => format!("flowtable {t} {o} added"),
            24 | 32 => format!("flowtable {t} {o} deleted"),
            k => format!("change {k} to table {t}"),
        }
    }
}

/// The changes of one burst, summarized.
#[derive(Debug, Default)]
struct Burst {
    first: Option<Instant>,
    last: Option<Instant>,
    lines: BTreeMap<String, usize>,
    deleted: BTreeSet<TableRef>,
}

/// Parses notifications and groups them: everything the monitor does but reading.
#[derive(Debug)]
struct Reader {
    tables: Vec<TableRef>,
    own: Own,
    /// Changes to watched tables of the transaction being reported (up to its `NEWGEN`).
    group: Vec<Change>,
    /// The generation of the last `NEWGEN` seen.
    last_gen: Option<u32>,
    burst: Burst,
}

impl Reader {
    fn new(tables: Vec<TableRef>, own: Own) -> Reader {
        Reader {
            tables,
            own,
            group: Vec::new(),
            last_gen: None,
            burst: Burst::default(),
        }
    }

    /// When the current burst is due, if there is one.
    fn next_deadline(&self) -> Option<Instant> {
        let (first, last) = (self.burst.first?, self.burst.last?);
        Some((last + QUIET).min(first + MAX_DELAY))
    }

    /// The burst's notice, if it is due at `now`.
    fn due(&mut self, now: Instant) -> Option<Notice> {
        if self.next_deadline()? > now {
            return None;
        }
        let burst = std::mem::take(&mut self.burst);
        let (mut deleted_lines, mut other): (Vec<String>, Vec<String>) = burst
            .lines
            .into_iter()
            .map(|(l, n)| if n > 1 { format!("{l} (×{n})") } else { l })
            .partition(|l| l.starts_with("table ") && l.contains(" deleted"));
        deleted_lines.append(&mut other);
        Some(Notice::Changed {
            changes: deleted_lines,
            deleted: burst.deleted.into_iter().collect(),
        })
    }

    /// The notifications before an overflow are incomplete: forgotten (the [`Notice::Lost`]
    /// covers them).
    fn lost(&mut self) {
        self.group.clear();
        self.burst = Burst::default();
    }

    /// One datagram: one or more netlink messages (decoded by the codec, up to the first
    /// malformed one).
    fn datagram(&mut self, buf: &[u8]) {
        for m in messages(buf) {
            match m {
                Ok(Message::Nft(n)) => {
                    self.message(n.kind, n.family, n.header.port_number, n.attrs)
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }

    fn message(&mut self, kind: u16, family: u8, port_id: u32, attrs: Attrs<'_>) {
        if kind == NFT_MSG_NEWGEN {
            let pid = attrs.be32(NFTA_GEN_PROC_PID);
            let generation = attrs.be32(NFTA_GEN_ID);
            // Commits were not seen (written while the monitor was out of the group, or
            // lost): the changes collected may belong partly to one of them, whoever wrote
            // it, and are not taken for Rudder's.
            let skipped = match (self.last_gen, generation) {
                (Some(last), Some(g)) => g != last.wrapping_add(1) && !(last == u32::MAX && g == 1),
                _ => false,
            };
            if generation.is_some() {
                self.last_gen = generation;
            }
            let group = std::mem::take(&mut self.group);
            if group.is_empty() {
                return;
            }
            let own = self.own.port_ids.contains(port_id)
                || pid.is_some_and(|p| self.own.pids.contains(p));
            if !own || skipped {
                self.add(group);
            }
            return;
        }
        let family = match family {
            2 => Family::Ip,
            10 => Family::Ip6,
            _ => return,
        };
        let Some(table) = attrs.string(ATTR_TABLE) else {
            return;
        };
        let Some(table) = self
            .tables
            .iter()
            .find(|t| t.family == family && t.name.as_str() == table)
        else {
            return;
        };
        let object = match kind {
            3 | 5 | 27 => attrs.string(NFTA_CHAIN_NAME),
            0 | 2 | 26 => None,
            _ => attrs.string(ATTR_NAME_2),
        };
        let elements = match kind {
            12 | 14 | 30 => attrs
                .get(NFTA_SET_ELEM_LIST_ELEMENTS)
                .map_or(1, |list| Attrs(list).count().max(1)),
            _ => 1,
        };
        self.group.push(Change {
            table: table.clone(),
            kind,
            object: object.map(str::to_owned),
            elements,
        });
    }

    /// Adds a foreign transaction's changes to the burst.
    fn add(&mut self, group: Vec<Change>) {
        let now = Instant::now();
        self.burst.first.get_or_insert(now);
        self.burst.last = Some(now);
        for c in group {
            match c.kind {
                2 | 26 => {
                    self.burst.deleted.insert(c.table.clone());
                }
                0 => {
                    self.burst.deleted.remove(&c.table);
                }
                _ => {}
            }
            *self.burst.lines.entry(c.describe()).or_default() += c.elements;
        }
    }
}

/// What the monitor makes of `datagrams` (notifications as the kernel would send them) for
/// Rudder's tables `tables`: the notices it would report once their bursts are due. For the
/// fuzzer and tests: whatever the bytes, the reader must neither panic nor report a change of
/// a table it does not watch.
#[doc(hidden)]
pub fn read_datagrams(tables: &[TableRef], datagrams: &[&[u8]]) -> Vec<Notice> {
    let own = Own {
        port_ids: Arc::new(crate::OwnIds::default()),
        pids: Arc::new(crate::OwnIds::default()),
    };
    let mut reader = Reader::new(tables.to_vec(), own);
    let mut out = Vec::new();
    for d in datagrams {
        reader.datagram(d);
    }
    let later = Instant::now() + MAX_DELAY + QUIET;
    out.extend(reader.due(later));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rudder_nft::Name;
    use rudder_nft_codec::wire::{NFNL_SUBSYS_NFTABLES, NLM_F_REQUEST, Writer};

    fn table(f: Family, n: &str) -> TableRef {
        TableRef::new(f, Name::new(n).unwrap())
    }

    fn reader() -> Reader {
        let own = Own {
            port_ids: Arc::default(),
            pids: Arc::default(),
        };
        own.port_ids.push(4242);
        own.pids.push(777);
        Reader::new(
            vec![table(Family::Ip, "rudder"), table(Family::Ip6, "rudder")],
            own,
        )
    }

    /// A notification as the kernel writes it: header (with the writer's port id),
    /// `nfgenmsg`, attributes.
    fn msg(w: &mut Writer, kind: u16, family: u8, port_id: u32, attrs: &[(u16, &str)]) {
        let start = w.begin_msg(
            (NFNL_SUBSYS_NFTABLES << 8) | kind,
            NLM_F_REQUEST,
            1,
            family,
            0,
        );
        w.buf[start + 12..start + 16].copy_from_slice(&port_id.to_ne_bytes());
        for (ty, v) in attrs {
            w.str(*ty, v);
        }
        w.end_msg(start);
    }

    fn newgen(w: &mut Writer, port_id: u32, pid: u32) {
        newgen_at(w, port_id, pid, None);
    }

    /// A `NEWGEN` of generation `generation`, or of the next one after the last written.
    fn newgen_at(w: &mut Writer, port_id: u32, pid: u32, generation: Option<u32>) {
        // Per test thread: each test sees consecutive generations.
        thread_local! {
            static NEXT: std::cell::Cell<u32> = const { std::cell::Cell::new(100) };
        }
        let g = generation.unwrap_or_else(|| NEXT.with(|n| n.replace(n.get() + 1)));
        let start = w.begin_msg((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN, 0, 1, 0, 0);
        w.buf[start + 12..start + 16].copy_from_slice(&port_id.to_ne_bytes());
        w.u32(NFTA_GEN_ID, g);
        w.u32(NFTA_GEN_PROC_PID, pid);
        w.str(3, "nft");
        w.end_msg(start);
    }

    fn flush(r: &mut Reader) -> Option<Notice> {
        r.due(Instant::now() + MAX_DELAY)
    }

    #[test]
    fn changes_by_others_to_watched_tables_are_reported_once_per_burst() {
        let mut r = reader();
        let mut w = Writer::default();
        // Someone (port 9, pid 1234) flushes a chain of ours and deletes an element.
        for _ in 0..3 {
            msg(&mut w, 8, 2, 9, &[(1, "rudder"), (2, "services")]);
        }
        msg(&mut w, 14, 2, 9, &[(1, "rudder"), (2, "service-ips")]);
        newgen(&mut w, 9, 1234);
        r.datagram(&w.buf);
        assert!(r.due(Instant::now()).is_none(), "debounced");
        assert_eq!(
            flush(&mut r),
            Some(Notice::Changed {
                changes: vec![
                    "element deleted from set ip rudder service-ips".into(),
                    "rule deleted from chain ip rudder services (×3)".into(),
                ],
                deleted: vec![],
            })
        );
        assert!(flush(&mut r).is_none(), "reported once");
    }

    #[test]
    fn rudders_own_commits_and_other_tables_are_ignored() {
        let mut r = reader();
        let mut w = Writer::default();
        // Rudder's netlink writer (port 4242).
        msg(&mut w, 6, 2, 4242, &[(1, "rudder"), (2, "services")]);
        newgen(&mut w, 4242, 1);
        // An `nft` Rudder ran (pid 777, some port).
        msg(&mut w, 12, 10, 31337, &[(1, "rudder"), (2, "service-ips")]);
        newgen(&mut w, 31337, 777);
        // Someone else's table, and another family's table of the same name.
        msg(&mut w, 6, 2, 9, &[(1, "firewalld"), (2, "input")]);
        msg(&mut w, 6, 1, 9, &[(1, "rudder"), (2, "input")]);
        newgen(&mut w, 9, 1234);
        r.datagram(&w.buf);
        assert!(flush(&mut r).is_none());
    }

    #[test]
    fn a_deleted_table_is_named_first() {
        let mut r = reader();
        let mut w = Writer::default();
        msg(&mut w, 8, 10, 9, &[(1, "rudder"), (2, "services")]);
        msg(&mut w, 11, 10, 9, &[(1, "rudder"), (2, "cluster-ips")]);
        msg(&mut w, 5, 10, 9, &[(1, "rudder"), (3, "services")]);
        msg(&mut w, 2, 10, 9, &[(1, "rudder")]);
        newgen(&mut w, 9, 1234);
        r.datagram(&w.buf);
        let Some(Notice::Changed { changes, deleted }) = flush(&mut r) else {
            panic!("reported");
        };
        assert_eq!(deleted, vec![table(Family::Ip6, "rudder")]);
        assert_eq!(changes[0], "table ip6 rudder deleted");
        assert_eq!(changes.len(), 4);
    }

    #[test]
    fn a_transaction_without_its_newgen_is_not_reported_and_garbage_is_ignored() {
        let mut r = reader();
        let mut w = Writer::default();
        msg(&mut w, 8, 2, 9, &[(1, "rudder"), (2, "services")]);
        r.datagram(&w.buf);
        assert!(flush(&mut r).is_none(), "waits for the NEWGEN");
        r.lost();
        newgen(&mut w, 9, 1);
        // Truncated and nonsense datagrams.
        for cut in [0, 3, 15, 17, 30] {
            r.datagram(&w.buf[..cut.min(w.buf.len())]);
        }
        r.datagram(&[0xff; 64]);
        r.datagram(&w.buf[20..]);
        assert!(flush(&mut r).is_none());
    }

    #[test]
    fn changes_before_a_skipped_generation_are_not_taken_for_rudders() {
        let mut r = reader();
        let mut w = Writer::default();
        newgen_at(&mut w, 9, 1, Some(10));
        // Part of someone's commit, then the monitor was out of the group for a while: the
        // next NEWGEN seen is Rudder's, three generations later.
        msg(&mut w, 8, 2, 9, &[(1, "rudder"), (2, "services")]);
        msg(&mut w, 6, 2, 4242, &[(1, "rudder"), (2, "services")]);
        newgen_at(&mut w, 4242, 1, Some(13));
        r.datagram(&w.buf);
        assert!(matches!(flush(&mut r), Some(Notice::Changed { .. })));
        // Consecutive generations: Rudder's own again.
        let mut w = Writer::default();
        msg(&mut w, 6, 2, 4242, &[(1, "rudder"), (2, "services")]);
        newgen_at(&mut w, 4242, 1, Some(14));
        r.datagram(&w.buf);
        assert!(flush(&mut r).is_none());
    }

    #[test]
    fn a_burst_is_reported_at_most_max_delay_after_its_first_change() {
        let mut r = reader();
        let mut w = Writer::default();
        msg(&mut w, 6, 2, 9, &[(1, "rudder"), (2, "services")]);
        newgen(&mut w, 9, 1);
        r.datagram(&w.buf);
        let first = r.burst.first.expect("burst started");
        let d = r.next_deadline().expect("a deadline");
        assert!(d <= first + MAX_DELAY && d >= first + QUIET.min(MAX_DELAY));
    }
}
