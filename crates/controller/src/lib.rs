//! Rudder's controller: from [`Change`]s to synced kernel rules.
//!
//! This crate owns the [`SyncLoop`]: change tracking on a
//! [`rudder_model::ProxyState`], the gate that waits for the initial lists, and kube-proxy's
//! timing rules (bursts coalesce within `minSyncPeriod`, failed syncs are retried after
//! `syncPeriod`, a full resync runs periodically and after failures).
//!
//! The loop drives a [`ProxyMode`] ([`mode`]: compile, apply, verify what the kernel holds);
//! the nftables mode ([`nftables::NftMode`]) compiles with `rudder-compiler` and writes to a
//! [`Dataplane`], which the binary implements with the nftables backend and tests implement
//! with the in-memory [`rudder_nft::Ruleset`]. The work that follows a sync (health check
//! servers, stale UDP conntrack entries, the localhost proxy, metrics) hangs off the loop as
//! [`observer`]s.
//!
//! What it must not do: touch the kernel or spawn processes.

#![deny(missing_docs)]

pub mod change;
pub mod conntrack;
pub mod health;
pub mod ipvs;
pub mod isolate;
pub mod localhost;
pub mod mode;
pub mod nftables;
pub mod observer;
mod sync;
pub mod withdrawn;

pub use change::Change;
pub use isolate::{Isolation, isolate};
pub use mode::{DataplaneError, Failure, Outcome, ProxyMode, Scope, SyncRequest, Written};
pub use nftables::{Dataplane, MAX_DRY_RUNS, NftMode, repair, table_diff, updated_by_packets};
pub use observer::{
    LoopEvent, Observer, SyncKind, SyncObserver, SyncReport, Synced, SyncedObserver,
};
pub use sync::{DriftNotice, ExplainRequest, LoopConfig, NodeContextFn, SyncLoop, parse_rfc3339};
