//! The seam between the sync loop and a proxy mode.
//!
//! The loop ([`crate::SyncLoop`]) owns what does not depend on the kernel: the state and its
//! change tracking, the initial-list gate, kube-proxy's timing rules, the choice between full
//! and partial syncs, the services held back after a refusal, health, metrics and events. A
//! proxy mode owns what does: compiling the state into its rules, applying them, reading back
//! what the kernel holds, and telling which services it had to leave out. nftables
//! ([`crate::nftables::NftMode`]) is the first mode; a second one (IPVS) implements the same
//! trait and changes nothing in the loop.

use std::collections::BTreeSet;
use std::time::Duration;

use rudder_compiler::NodeContext;
use rudder_compiler::explain::{Explanation, Query};
use rudder_model::{IpFamily, Problem, ProxyState, Service, ServiceKey};

/// An error from a dataplane, boxed so any backend fits.
pub type DataplaneError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a mode did not apply a sync, as far as the loop cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The kernel refused the change for what it contains: some service's rules may be at
    /// fault, and the mode looks for them.
    Refused,
    /// An object the change touches does not exist: the kernel's state is not what Rudder
    /// programmed (deleted or changed behind its back), and only a full sync helps.
    NotFound,
    /// Anything else (the kernel could not be reached): retried later.
    Other,
}

/// What one sync covers.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Everything: the whole state is compiled and the kernel made to hold exactly that.
    Full,
    /// Only these services changed since the last successful sync.
    Partial(&'a BTreeSet<ServiceKey>),
}

impl Scope<'_> {
    /// Whether this is a full sync.
    pub fn is_full(&self) -> bool {
        matches!(self, Scope::Full)
    }
}

/// One sync, as the loop asks a mode for it.
#[derive(Debug, Clone, Copy)]
pub struct SyncRequest<'a> {
    /// Full or partial.
    pub scope: Scope<'a>,
    /// Services held back (the kernel refused their rules before): compiled as if they did
    /// not exist, so that nothing else waits for them.
    pub held_back: &'a BTreeSet<ServiceKey>,
    /// Services held back until now and tried again in this sync. A mode that can make dry
    /// runs tries them in one first: applied with everything else they would most likely be
    /// refused again, and the whole change with them.
    pub suspects: &'a BTreeSet<ServiceKey>,
    /// The suspects are tried again because their time came, not because they changed: when
    /// only they are refused again, it is not news (logged at debug level).
    pub periodic_retry: bool,
}

/// What a mode changed in the kernel, in its own units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Operations on objects (tables, chains, sets, rules; virtual and real servers).
    pub objects: usize,
    /// Elements (or addresses) added.
    pub elements_added: usize,
    /// Elements (or addresses) deleted.
    pub elements_deleted: usize,
}

/// The outcome of [`ProxyMode::sync`].
#[derive(Debug)]
pub struct Outcome {
    /// Bytes sent to the kernel when the change was applied; the error, and what kind of
    /// failure it is, when it was not.
    pub result: Result<usize, (DataplaneError, Failure)>,
    /// What the applied (or refused) change held.
    pub written: Written,
    /// Time spent compiling (dry runs' compiles included).
    pub compile: Duration,
    /// Time spent applying, dry runs included, compiles not.
    pub apply: Duration,
    /// Dry runs made to find the services the kernel refuses.
    pub dry_runs: usize,
    /// Services the kernel refused, with its error: left out of what was applied. The loop
    /// holds them back.
    pub refused: Vec<(ServiceKey, String)>,
    /// Services neither applied nor refused (the search for refused services ran out of
    /// dry runs): the loop tries them again in the next sync.
    pub undecided: Vec<ServiceKey>,
}

/// A proxy mode: how the state becomes the kernel's rules.
///
/// Every method runs on the loop's thread, between changes: a mode never sees the state
/// change under it, and needs no locks of its own.
pub trait ProxyMode: Send {
    /// kube-proxy's name for the mode (`nftables`, `ipvs`), as `/proxyMode` reports it.
    fn name(&self) -> &'static str;

    /// The address families programmed.
    fn families(&self) -> Vec<IpFamily>;

    /// The node context the mode compiles for.
    fn node(&self) -> &NodeContext;

    /// A new node context (node addresses, service CIDRs). The loop makes the next sync a
    /// full one.
    fn set_node(&mut self, node: NodeContext);

    /// Programs the state: everything for [`Scope::Full`], the changed services for
    /// [`Scope::Partial`], without the services `held_back`. When the kernel refuses the
    /// change, a mode that can looks for the services at fault, applies everything else,
    /// and reports them in [`Outcome::refused`]. After a failure (no change applied) the
    /// loop asks for a full sync next.
    fn sync(&mut self, state: &ProxyState, request: SyncRequest<'_>) -> Outcome;

    /// Compares what the kernel holds with what the mode programmed, before a periodic
    /// full resync: the differences, for the log (empty when there are none), or `None`
    /// when the mode cannot tell.
    fn verify(&mut self) -> Option<Result<Vec<String>, DataplaneError>>;

    /// Whether the mode refuses `service` as a whole, from its spec alone (it gets no rules,
    /// and nothing may follow it, such as a health check server).
    fn refuses(&self, service: &Service) -> bool;

    /// Input the mode refused during the last syncs (for example service addresses that are
    /// the node's own), for the log, metrics and Events.
    fn take_problems(&mut self) -> Vec<Problem>;

    /// Per family, service ports with endpoints but none local under a `Local` policy:
    /// `(family, internal, external)` (kube-proxy's `sync_proxy_rules_no_local_endpoints_total`).
    fn no_local_endpoints(&self) -> Vec<(IpFamily, u64, u64)>;

    /// What happens to a packet, given `state` (for `rudder explain --live`).
    fn explain(&self, state: &ProxyState, query: &Query) -> Explanation;
}
