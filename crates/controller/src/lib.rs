//! Rudder's controller: from Kubernetes (or manifest files) to synced kernel rules.
//!
//! This crate owns the only code that knows kube-rs ([`watch`]: watchers for Services,
//! EndpointSlices and this node's Node, with their re-list and backoff behaviour), the
//! translation of their events into [`Change`]s, and the [`SyncLoop`]: change tracking on a
//! [`rudder_model::ProxyState`], the gate that waits for the initial lists, and kube-proxy's
//! timing rules (bursts coalesce within `minSyncPeriod`, failed syncs are retried after
//! `syncPeriod`, a full resync runs periodically and after failures).
//!
//! What it must not do: touch the kernel or spawn processes. The loop drives a
//! [`Dataplane`], which the binary implements with the nftables backend and tests implement
//! with the in-memory [`rudder_nft::Ruleset`].

pub mod change;
pub mod conntrack;
pub mod events;
pub mod health;
pub mod localhost;
mod sync;
pub mod watch;
pub mod withdrawn;

pub use change::Change;
pub use sync::{
    Dataplane, DataplaneError, DriftNotice, ExplainRequest, Failure, Isolation, LoopConfig,
    LoopEvent, MAX_DRY_RUNS, NodeContextFn, Observer, Shape, SyncKind, SyncLoop, SyncReport,
    Synced, SyncedObserver, expected_shape, isolate, parse_rfc3339, shape_diff,
};
