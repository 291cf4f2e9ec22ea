//! Rudder's nftables kernel backend: applies [`Transaction`]s and reads back what the kernel
//! holds.
//!
//! This crate owns every interaction with the kernel's nftables state. Transactions are
//! written natively ([`WriteMode::Netlink`], the default): encoded as one nf_tables netlink
//! batch and sent in a single `sendmsg`, which the kernel applies atomically (all or nothing).
//! The fallback ([`WriteMode::Program`]) renders `nft -f` text and pipes it to one `nft`
//! process. Reading back uses `nft --json list table`, parsed into a [`TableListing`] that can
//! be compared with the compiler's desired [`Ruleset`](rudder_nft::Ruleset).
//!
//! What it must not do: decide *what* to program (that is the compiler's job), touch tables it
//! does not own, or read the kernel on a hot path: listing a large table costs seconds, so it is
//! meant for status, tests and drift checks only.

mod listing;
pub mod netlink;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rudder_nft::{TableRef, Transaction};

pub use listing::{ListedChain, ListedSet, TableListing};
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
    /// The installed `nft` is older than [`MIN_NFT_VERSION`].
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
    /// for an empty transaction.
    pub fn apply(&self, tx: &Transaction) -> Result<Applied, Error> {
        let start = Instant::now();
        if tx.is_empty() {
            return Ok(Applied {
                bytes: 0,
                duration: start.elapsed(),
            });
        }
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

    /// Checks `tx` against the kernel without applying it (`nft --check -f -`).
    pub fn check(&self, tx: &Transaction) -> Result<(), Error> {
        self.run(&["--check", "-f", "-"], Some(&tx.render()))
            .map(|_| ())
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

    /// Whether a table exists.
    pub fn table_exists(&self, table: &TableRef) -> Result<bool, Error> {
        match self.run(
            &["list", "table", table.family.as_str(), table.name.as_str()],
            None,
        ) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
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
