//! Rudder's nftables kernel backend: applies [`Transaction`]s and reads back what the kernel
//! holds.
//!
//! This crate owns every interaction with the kernel's nftables state. Transactions are
//! written natively ([`WriteMode::Netlink`], the default): encoded as one nf_tables netlink
//! batch and sent in a single `sendmsg`, which the kernel applies atomically (all or nothing).
//! The fallback ([`WriteMode::Program`]) renders `nft -f` text and pipes it to one `nft`
//! process. Reading back ([`NftBackend::read_table`]) uses nf_tables netlink dumps, decoded
//! into the IR by the codec, so nothing but `--nft-writer nft` needs the `nft` program;
//! [`NftBackend::list_table`] (`nft --json list table`, parsed into a [`TableListing`]) stays
//! for tests that compare with what `nft` itself reports.
//!
//! What it must not do: decide *what* to program (that is the compiler's job), touch tables it
//! does not own, or read the kernel on a hot path: reading a large table back costs tens of
//! milliseconds to seconds, so it is meant for drift checks, repairs and tests.

#![deny(missing_docs)]

mod listing;
pub mod monitor;
pub mod netlink;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rudder_nft::{TableRef, Transaction};

pub use listing::{ListedChain, ListedSet, TableListing};
pub use monitor::{Monitor, Notice};
pub use netlink::{NetlinkError, NetlinkWriter};

/// Oldest `nft` release Rudder supports (the same floor as kube-proxy).
pub const MIN_NFT_VERSION: (u32, u32, u32) = (1, 0, 1);

/// What can go wrong talking to the kernel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The `nft` program could not be started or fed.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// Program path.
        program: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// `nft` rejected the input or the kernel refused the transaction.
    #[error("nft exited with {status}: {stderr}")]
    Nft {
        /// Exit status.
        status: String,
        /// What nft printed on stderr (it names the failing line of the input).
        stderr: String,
    },
    /// The installed `nft` is older than [`MIN_NFT_VERSION`] (checked only when it writes).
    #[error("nft {found} is too old: Rudder needs nft 1.0.1 or later")]
    TooOld {
        /// The version found.
        found: String,
    },
    /// `nft --json` printed something that is not the expected JSON.
    #[error("cannot parse nft JSON output: {0}")]
    Json(String),
    /// The netlink write path failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

impl Error {
    /// Whether the error says an object does not exist (`ENOENT` from the kernel).
    pub fn is_not_found(&self) -> bool {
        match self {
            Error::Nft { stderr, .. } => stderr.contains("No such file or directory"),
            Error::Netlink(e) => e.is_not_found(),
            _ => false,
        }
    }
}

/// Recent identifiers of Rudder's own writers, newest last, at most [`OwnIds::KEPT`]: the
/// netlink port ids of its sockets, or the process ids of the `nft` programs it ran. The
/// kernel names the writer of every change in its notifications, so the [`monitor`] can tell
/// Rudder's own commits from changes made by others.
#[derive(Debug, Default)]
pub struct OwnIds(std::sync::Mutex<std::collections::VecDeque<u32>>);

impl OwnIds {
    /// How many identifiers are remembered. Sockets are kept open and `nft` processes run one
    /// at a time, so a few are enough to cover every commit still being reported.
    pub const KEPT: usize = 64;

    /// Remembers `id`.
    pub fn push(&self, id: u32) {
        if let Ok(mut ids) = self.0.lock() {
            if ids.back() == Some(&id) {
                return;
            }
            if ids.len() == Self::KEPT {
                ids.pop_front();
            }
            ids.push_back(id);
        }
    }

    /// Whether `id` is one of them.
    pub fn contains(&self, id: u32) -> bool {
        self.0.lock().is_ok_and(|ids| ids.contains(&id))
    }
}

/// What applying a transaction cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Bytes written: the netlink batch, or the `nft -f` input.
    pub bytes: usize,
    /// Wall time, including encoding (and the `nft` process, for [`WriteMode::Program`]).
    pub duration: Duration,
}

/// How transactions reach the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WriteMode {
    /// One nf_tables netlink batch per transaction, built in memory (the default: no text to
    /// parse and no process to start).
    #[default]
    Netlink,
    /// `nft -f -` with the rendered transaction: slower, for debugging and comparison.
    Program,
}

/// The nftables backend: netlink (or `nft -f`) writes, `nft --json` reads.
#[derive(Debug, Clone)]
pub struct NftBackend {
    program: PathBuf,
    mode: WriteMode,
    netlink: std::sync::Arc<NetlinkWriter>,
    /// Process ids of the `nft` programs this backend ran.
    children: std::sync::Arc<OwnIds>,
    /// The running monitor, if any (see [`monitor::PAUSE_ABOVE`]).
    monitor: std::sync::Arc<std::sync::Mutex<std::sync::Weak<monitor::Link>>>,
}

impl Default for NftBackend {
    fn default() -> NftBackend {
        NftBackend::new()
    }
}

impl NftBackend {
    /// A backend running `nft` from `$PATH`.
    pub fn new() -> NftBackend {
        NftBackend::with_program("nft")
    }

    /// A backend running the given `nft` program (for reads, and for writes in
    /// [`WriteMode::Program`]).
    pub fn with_program(program: impl Into<PathBuf>) -> NftBackend {
        NftBackend {
            program: program.into(),
            mode: WriteMode::default(),
            netlink: std::sync::Arc::new(NetlinkWriter::new()),
            children: std::sync::Arc::default(),
            monitor: std::sync::Arc::default(),
        }
    }

    /// The same backend writing with `mode`.
    pub fn write_mode(mut self, mode: WriteMode) -> NftBackend {
        self.mode = mode;
        self
    }

    /// How this backend writes.
    pub fn mode(&self) -> WriteMode {
        self.mode
    }

    fn spawn_err(&self, source: std::io::Error) -> Error {
        Error::Spawn {
            program: self.program.display().to_string(),
            source,
        }
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
        let mut child = Command::new(&self.program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_err(e))?;
        // Before it can commit anything: the monitor must know the change is Rudder's.
        self.children.push(child.id());
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // nft reads all of its input before it answers, so writing first cannot deadlock
            // on a full stdout pipe. A write error (nft exited early) is reported through the
            // exit status below, which carries nft's own message.
            let _ = pipe.write_all(input.as_bytes());
        }
        let out = child.wait_with_output().map_err(|e| self.spawn_err(e))?;
        if !out.status.success() {
            return Err(Error::Nft {
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Checks that `nft` runs and is recent enough; returns its version.
    pub fn check_version(&self) -> Result<String, Error> {
        let out = self.run(&["--version"], None)?;
        let found = out
            .split_whitespace()
            .find(|w| w.starts_with('v'))
            .unwrap_or("")
            .trim_start_matches('v')
            .to_owned();
        let parts: Vec<u32> = found.split('.').map(|p| p.parse().unwrap_or(0)).collect();
        let v = (
            parts.first().copied().unwrap_or(0),
            parts.get(1).copied().unwrap_or(0),
            parts.get(2).copied().unwrap_or(0),
        );
        if v < MIN_NFT_VERSION {
            return Err(Error::TooOld { found });
        }
        Ok(found)
    }

    /// Applies `tx` atomically, as one netlink batch or one `nft -f -` run. Nothing is sent
    /// for an empty transaction. A large transaction is written with the monitor, if one
    /// runs, out of the notification group (see [`monitor`]).
    pub fn apply(&self, tx: &Transaction) -> Result<Applied, Error> {
        let start = Instant::now();
        if tx.is_empty() {
            return Ok(Applied {
                bytes: 0,
                duration: start.elapsed(),
            });
        }
        let stats = tx.stats();
        let size = tx.len() + stats.elements_added + stats.elements_deleted;
        let link = if size > monitor::PAUSE_ABOVE {
            self.monitor.lock().ok().and_then(|l| l.upgrade())
        } else {
            None
        };
        let Some(link) = link else {
            return self.write(tx, start);
        };
        // Out of the group, then the generation: a commit by anyone after it is either
        // Rudder's own or shows in the generation read after joining again.
        if link.pause().is_err() {
            return self.write(tx, start);
        }
        let before = self.netlink.generation().ok();
        let result = self.write(tx, start);
        let _ = link.resume();
        let after = self.netlink.generation().ok();
        let expected = before.map(|g| match (&result, g.wrapping_add(1)) {
            (Err(_), _) => g,
            // The generation skips 0.
            (Ok(_), 0) => 1,
            (Ok(_), next) => next,
        });
        if before.is_none() || after != expected {
            link.report_lost();
        }
        result
    }

    fn write(&self, tx: &Transaction, start: Instant) -> Result<Applied, Error> {
        let bytes = match self.mode {
            WriteMode::Netlink => self.netlink.apply(tx)?,
            WriteMode::Program => {
                let script = tx.render();
                self.run(&["-f", "-"], Some(&script))?;
                script.len()
            }
        };
        Ok(Applied {
            bytes,
            duration: start.elapsed(),
        })
    }

    /// Has the kernel validate `tx` completely without applying it: a dry run, written the
    /// way [`NftBackend::apply`] would write it (a netlink batch without its end, which the
    /// kernel checks and aborts, or `nft --check -f -`, which sends the same). `Ok` when the
    /// kernel would take it, the error `apply` would return otherwise. Nothing changes in the
    /// kernel, and nothing is reported to change listeners.
    pub fn check(&self, tx: &Transaction) -> Result<(), Error> {
        if tx.is_empty() {
            return Ok(());
        }
        match self.mode {
            WriteMode::Netlink => Ok(self.netlink.check(tx)?),
            WriteMode::Program => self
                .run(&["--check", "-f", "-"], Some(&tx.render()))
                .map(|_| ()),
        }
    }

    /// Follows the kernel's change notifications for `tables` in the network namespace of the
    /// calling thread, and calls `notify` (on a thread of the monitor's own) with the changes
    /// made by anyone but this backend, debounced, until `notify` returns false or the
    /// [`Monitor`] is dropped. See [`monitor`].
    pub fn monitor(
        &self,
        tables: Vec<TableRef>,
        notify: impl FnMut(Notice) -> bool + Send + 'static,
    ) -> Result<Monitor, Error> {
        let own = monitor::Own {
            port_ids: self.netlink.port_ids(),
            pids: self.children.clone(),
        };
        let (m, link) =
            monitor::start(tables, own, notify).map_err(|e| Error::Netlink(NetlinkError::Io(e)))?;
        if let Ok(mut slot) = self.monitor.lock() {
            *slot = link;
        }
        Ok(m)
    }

    /// Whether the error is the kernel (or `nft`) refusing the transaction for what it
    /// contains, as opposed to failing to reach the kernel at all.
    pub fn is_refusal(e: &Error) -> bool {
        matches!(
            e,
            Error::Nft { .. }
                | Error::Netlink(NetlinkError::Refused { .. } | NetlinkError::Encode(_))
        )
    }

    /// Lists one table, or `None` if it does not exist.
    pub fn list_table(&self, table: &TableRef) -> Result<Option<TableListing>, Error> {
        match self.run(
            &[
                "--json",
                "list",
                "table",
                table.family.as_str(),
                table.name.as_str(),
            ],
            None,
        ) {
            Ok(json) => TableListing::parse(&json).map(Some),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `table` as the kernel holds it, read over netlink dumps (no `nft` program), or `None`
    /// if it does not exist. Chains, sets and elements are decoded into the IR; rules that
    /// match one of `expected`'s come back as that rule, any other as a placeholder naming
    /// it (see [`rudder_nft_codec::dump`]).
    pub fn read_table(
        &self,
        table: &TableRef,
        expected: Option<&rudder_nft::Table>,
    ) -> Result<Option<rudder_nft::Table>, Error> {
        Ok(self.netlink.read_table(table, expected)?)
    }

    /// Whether a table exists (asked over netlink).
    pub fn table_exists(&self, table: &TableRef) -> Result<bool, Error> {
        Ok(self.netlink.table_exists(table)?)
    }

    /// Deletes the given tables if they exist, in one transaction, and nothing else. Returns
    /// the tables that were deleted.
    pub fn delete_tables(&self, tables: &[TableRef]) -> Result<Vec<TableRef>, Error> {
        let mut tx = Transaction::new();
        let mut deleted = Vec::new();
        for t in tables {
            if self.table_exists(t)? {
                tx.delete_table(t.clone());
                deleted.push(t.clone());
            }
        }
        self.apply(&tx)?;
        Ok(deleted)
    }
}
