//! Rudder's rule compiler: Kubernetes service state in, nftables rules and minimal diffs out.
//!
//! This crate owns the *meaning* of the ruleset: which packets are DNATed to which endpoints,
//! which are masqueraded, rejected or dropped. It turns a [`ProxyState`] plus the node's
//! context ([`NodeContext`]) and the proxy configuration ([`Config`]) into the typed IR of
//! [`rudder_nft`], either as a complete ruleset ([`Compiler::full`]) or as the minimal
//! transaction for a set of changed services ([`Compiler::update`]).
//!
//! The compiler is incremental: it remembers what each service contributed (its *claims* on
//! set and map elements), so an update recompiles only the changed services and emits only
//! the elements whose effective value changed. The cost of an update is proportional to the
//! size of the changed services, not of the cluster.
//!
//! What it must not do: I/O, clocks, threads, or anything nondeterministic. The same input
//! always yields byte-for-byte the same output, whatever order objects arrived in.
//!
//! ```
//! use rudder_compiler::{Compiler, Config, NodeContext, NodePortIps};
//! use rudder_model::{IpFamily, ProxyState};
//! let node = NodeContext::new("node-1".into(), NodePortIps::All);
//! let mut compiler = Compiler::new(&[IpFamily::V4], Config::default(), node);
//! let tx = compiler.full(&ProxyState::new());
//! assert!(tx.render().contains("add chain ip rudder services"));
//! ```

#![deny(missing_docs)]

mod affinity;
mod conflict;
pub mod explain;
pub mod guard;
mod layout;
mod policy;
mod service;

use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::FxHashMap;
use std::net::IpAddr;
use std::sync::Arc;

use rudder_model::{Cidr, IpFamily, Problem, ProxyState, ServiceKey, ServicePortName};
use rudder_nft::{
    ApplyError, Atom, Family, IfaceName, Key, Name, Op, Ruleset, TableRef, Transaction, Value,
};

use conflict::{Conflict, Contenders, FrontendKey, FrontendRank, Rank};

pub use conflict::{ClaimRank, ClaimedFrontend, claimed_frontends};
pub use layout::{Class, SetId, names};
pub use policy::{Categorized, Topology, categorize, uses_cluster_endpoints, uses_local_endpoints};

/// The default table name. Rudder uses its own name so it can run beside kube-proxy's
/// `kube-proxy` tables during a migration.
pub const DEFAULT_TABLE: &str = "rudder";

/// Proxy configuration that shapes the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Name of the `ip` and `ip6` tables.
    pub table: Name,
    /// Masquerade all traffic to ClusterIPs (`--masquerade-all`).
    pub masquerade_all: bool,
    /// Bit of the packet mark that requests masquerading (`masqueradeBit`, 0–31, default 14).
    pub masquerade_bit: u8,
    /// Families whose loopback node ports are served by the localhost proxy (KEP-6032): there,
    /// new UDP and SCTP connections to a loopback address on a node port are rejected, as
    /// kube-proxy 1.37 rejects them (the proxy is TCP only), rather than reaching whatever
    /// host process may listen on that port.
    pub localhost_node_ports: Vec<IpFamily>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            table: Name::new(DEFAULT_TABLE).expect("default table name is valid"),
            masquerade_all: false,
            masquerade_bit: 14,
            localhost_node_ports: Vec::new(),
        }
    }
}

impl Config {
    /// The masquerade mark, `1 << masquerade_bit` (bits above 31 are clamped to 31).
    pub fn masquerade_mark(&self) -> u32 {
        1u32 << self.masquerade_bit.min(31)
    }
}

/// Node addresses that accept NodePort traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodePortIps {
    /// Every local address except loopback (`--nodeport-addresses 0.0.0.0/0,::/0`).
    All,
    /// Only these addresses (the node's primary IPs by default).
    Only(Vec<IpAddr>),
}

/// How traffic from pods on this node is told apart from other traffic (kube-proxy's
/// `--detect-local-mode`). Off-cluster traffic to ClusterIPs is masqueraded, and pod traffic to
/// external IPs of `externalTrafficPolicy: Local` services is short-circuited to all endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LocalDetector {
    /// No detection (no `--cluster-cidr`): neither rule is written.
    #[default]
    None,
    /// Source address inside one of these CIDRs (`ClusterCIDR` mode with `--cluster-cidr`, or
    /// `NodeCIDR` mode with the Node's `spec.podCIDRs`).
    Cidrs(Vec<Cidr>),
    /// Arrived on this bridge (`BridgeInterface` mode, `--pod-bridge-interface`).
    Bridge(IfaceName),
    /// Arrived on an interface whose name starts with this prefix (`InterfaceNamePrefix` mode,
    /// `--pod-interface-name-prefix`); stored with its trailing `*`.
    InterfacePrefix(IfaceName),
}

/// What the compiler needs to know about the node it compiles for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeContext {
    /// The node's name: endpoints with this `nodeName` are local.
    pub name: String,
    /// Addresses that accept NodePort traffic.
    pub node_port_ips: NodePortIps,
    /// The node's primary IPs (at most one per family).
    pub ips: Vec<IpAddr>,
    /// The node's `topology.kubernetes.io/zone` label, for topology hints.
    pub zone: Option<String>,
    /// How local (pod) traffic is recognised.
    pub local_detector: LocalDetector,
    /// The cluster's service CIDRs (ServiceCIDR objects): traffic to an address inside them
    /// that is no ClusterIP is dropped.
    pub service_cidrs: Vec<Cidr>,
}

impl NodeContext {
    /// A node context without zone and without local-traffic detection.
    pub fn new(name: String, node_port_ips: NodePortIps) -> NodeContext {
        NodeContext {
            name,
            node_port_ips,
            ips: Vec::new(),
            service_cidrs: Vec::new(),
            zone: None,
            local_detector: LocalDetector::None,
        }
    }
}

/// Counts describing the compiled ruleset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompileStats {
    /// Services with at least one port programmed, over all families.
    pub services: usize,
    /// Set and map elements, over all families.
    pub elements: usize,
    /// Endpoint classes (distinct endpoint counts) in use, over all families.
    pub classes: usize,
}

/// A claim of one service port on one element.
#[derive(Debug, Clone)]
struct Claim {
    owner: Arc<ServicePortName>,
    value: Option<Value>,
}

/// The claims on one element, sorted by owner. Almost every element has exactly one claim,
/// which is stored inline (no allocation); the others, rare, are boxed so that the claim
/// table's entries stay small.
#[derive(Debug, Clone)]
struct Claims {
    first: Claim,
    #[allow(clippy::box_collection)] // a thin pointer: the entry stays 8 bytes smaller
    rest: Option<Box<Vec<Claim>>>,
}

impl Claims {
    fn iter(&self) -> impl Iterator<Item = &Claim> {
        std::iter::once(&self.first).chain(self.rest.iter().flat_map(|r| r.iter()))
    }

    fn insert(&mut self, claim: Claim) {
        let rest = self.rest.get_or_insert_with(Default::default);
        if claim.owner < self.first.owner {
            let old = std::mem::replace(&mut self.first, claim);
            rest.insert(0, old);
        } else {
            let pos = rest.partition_point(|c| c.owner < claim.owner);
            rest.insert(pos, claim);
        }
    }

    /// Removes `owner`'s claim; returns false when no claim is left.
    fn remove(&mut self, owner: &ServicePortName) -> bool {
        let Some(rest) = self.rest.as_mut() else {
            return *self.first.owner != *owner;
        };
        if *self.first.owner == *owner {
            if rest.is_empty() {
                return false;
            }
            self.first = rest.remove(0);
        } else if let Some(pos) = rest.iter().position(|c| *c.owner == *owner) {
            rest.remove(pos);
        }
        if rest.is_empty() {
            self.rest = None;
        }
        true
    }
}

/// A chain or set that belongs to one service alone (session affinity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Owned {
    /// A regular chain with its rules.
    Chain(rudder_nft::ChainDecl, Vec<rudder_nft::Rule>),
    /// A set.
    Set(rudder_nft::SetDecl),
}

impl Owned {
    fn name(&self) -> &Name {
        match self {
            Owned::Chain(c, _) => &c.name,
            Owned::Set(s) => &s.name,
        }
    }

    /// Chains and sets live in separate namespaces: the key is the kind and the name.
    fn key(&self) -> (bool, Name) {
        (matches!(self, Owned::Set(_)), self.name().clone())
    }
}

/// What one service contributes to one family's ruleset, as compiled.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fragment {
    pub(crate) claims: Vec<(SetId, Key, Arc<ServicePortName>, Option<Value>)>,
    pub(crate) classes: BTreeSet<Class>,
    pub(crate) objects: Vec<Owned>,
    /// Ports with endpoints elsewhere but none on this node under a `Local` policy:
    /// `[internal, external]` (kube-proxy's `no_local_endpoints` gauge).
    pub(crate) no_local: [u32; 2],
    /// What was refused (addresses of this node used as service addresses).
    pub(crate) problems: Vec<Problem>,
    /// The frontends the service's ports claim, with their ranks (see [`conflict`]).
    pub(crate) frontends: Vec<(FrontendKey, FrontendRank)>,
}

/// What the compiler remembers of a service: which elements it claimed (the values live in
/// the claim table; keys are shared, not copied).
#[derive(Debug, Clone, Default)]
struct Stored {
    claims: Vec<(SetId, Key, Arc<ServicePortName>, Option<Value>)>,
    objects: Vec<Owned>,
    no_local: [u32; 2],
    frontends: Vec<(FrontendKey, FrontendRank)>,
}

type ElemId = (SetId, Key);

/// The compiler for one IP family.
#[derive(Debug)]
struct FamilyCompiler {
    family: IpFamily,
    /// The first family compiled: it reports the problems that concern a service as a whole
    /// (so that they are reported once, not once per family).
    primary: bool,
    table: TableRef,
    skeleton: Ruleset,
    /// Per service, in key order (which is also the order of a full ruleset's elements).
    frags: BTreeMap<ServiceKey, Stored>,
    /// Claims per element, sorted by owner. The effective claim is the one of the winner of
    /// the element's frontend (see [`conflict`]), or for elements of no frontend
    /// (`cluster-ips`, `hairpin-connections`, whose claims are all alike) the first.
    claims: FxHashMap<ElemId, Claims>,
    /// Elements that more than one service port claimed at some point (a superset of the
    /// currently contested ones). Elements outside it have exactly one claim.
    contested: rustc_hash::FxHashSet<ElemId>,
    /// Per frontend, the service ports that claim it, best first: the first one keeps it.
    frontends: FxHashMap<FrontendKey, Contenders<FrontendRank>>,
    /// Frontends that more than one service port claimed at some point (a superset of the
    /// currently contested ones).
    contested_frontends: rustc_hash::FxHashSet<FrontendKey>,
    /// The losers of every contested frontend.
    lost: BTreeMap<FrontendKey, Vec<Conflict>>,
    /// Classes whose objects exist. They are kept while unused until the next full sync, so
    /// a partial sync never deletes a chain (kernels before 6.2 notice late that a chain
    /// became unreferenced).
    classes: BTreeSet<Class>,
    /// Sum of the fragments' `no_local` counts.
    no_local: [u64; 2],
    /// Per session affinity identity ([`affinity::port_id`]: the names of a port's affinity
    /// objects), the service ports it names, best first: only the first may use the names.
    affinity_ids: FxHashMap<u128, Contenders<Rank>>,
    /// The identities each service registered, to withdraw them.
    affinity_regs: FxHashMap<ServiceKey, Vec<(u128, Rank)>>,
    /// Service ports refused because a better-ranked port has the same identity: the
    /// identity and that port.
    name_losers: NameLosers,
    /// While an update runs that may be undone: the previous value of everything it changes.
    journal: Option<Journal>,
}

/// The previous value of every entry an update changed, first value kept, so that
/// [`FamilyCompiler::rollback`] puts each back (`None`: the entry did not exist). The sets
/// that are only ever supersets of the truth (`contested`, `contested_frontends`) are not
/// kept: they may stay larger.
#[derive(Debug, Default)]
struct Journal {
    frags: FxHashMap<ServiceKey, Option<Stored>>,
    claims: FxHashMap<ElemId, Option<Claims>>,
    frontends: FxHashMap<FrontendKey, Option<Contenders<FrontendRank>>>,
    lost: BTreeMap<FrontendKey, Option<Vec<Conflict>>>,
    affinity_ids: FxHashMap<u128, Option<Contenders<Rank>>>,
    affinity_regs: FxHashMap<ServiceKey, Option<Vec<(u128, Rank)>>>,
    name_losers: Option<NameLosers>,
    classes: BTreeSet<Class>,
    no_local: [u64; 2],
}

/// Records the previous value of `map[key]` in `journal.field`, unless it was recorded
/// already.
macro_rules! note {
    ($self:ident, $field:ident, $key:expr) => {
        if let Some(j) = $self.journal.as_mut() {
            let key = $key;
            if !j.$field.contains_key(key) {
                j.$field.insert(key.clone(), $self.$field.get(key).cloned());
            }
        }
    };
}

/// Service ports refused because another port's affinity objects would have the same names:
/// the identity and the port that keeps it.
pub(crate) type NameLosers = FxHashMap<ServicePortName, (u128, Arc<ServicePortName>)>;

fn nft_family(f: IpFamily) -> Family {
    match f {
        IpFamily::V4 => Family::Ip,
        IpFamily::V6 => Family::Ip6,
    }
}

/// The endpoint slots a service had, per endpoint map and frontend (see
/// [`service::PrevSlots`]).
fn prev_slots(old: &Stored) -> service::PrevSlots {
    let mut prev = service::PrevSlots::default();
    for (set, k, _, value) in &old.claims {
        if let (true, Some(v)) = (set.is_endpoint_map(), value) {
            let atoms = k.atoms();
            if let Some((Atom::Int(slot), prefix)) = atoms.split_last() {
                let slots = prev.entry((*set, prefix.to_vec())).or_default();
                let slot = *slot as usize;
                if slots.len() <= slot {
                    slots.resize(slot + 1, v.clone());
                }
                slots[slot] = v.clone();
            }
        }
    }
    prev
}

impl FamilyCompiler {
    /// The effective claim on an element: the one of its frontend's winner, if the winner
    /// claims the element at all.
    fn effective_claim(&self, id: &ElemId) -> Option<&Claim> {
        let claims = self.claims.get(id)?;
        match self.frontend_winner(id) {
            None => Some(&claims.first),
            Some(winner) => claims.iter().find(|c| c.owner == *winner),
        }
    }

    fn effective(&self, id: &ElemId) -> Option<Option<Value>> {
        self.effective_claim(id).map(|c| c.value.clone())
    }

    /// The winner of the element's frontend, when more than one port claims that frontend.
    fn frontend_winner(&self, id: &ElemId) -> Option<&Arc<ServicePortName>> {
        if self.contested_frontends.is_empty() {
            return None;
        }
        let fe = FrontendKey::of_element(id.0, &id.1)?;
        let c = self.frontends.get(&fe)?;
        c.is_contested().then(|| &c.winner().rank.owner)
    }

    fn add_contender(&mut self, fe: FrontendKey, rank: FrontendRank) {
        note!(self, frontends, &fe);
        match self.frontends.entry(fe) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                self.contested_frontends.insert(fe);
                e.get_mut().insert(rank);
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Contenders::new(rank));
            }
        }
    }

    fn remove_contender(&mut self, fe: &FrontendKey, owner: &ServicePortName) {
        note!(self, frontends, fe);
        if let Some(c) = self.frontends.get_mut(fe) {
            if !c.remove(|r| *r.rank.owner == *owner) {
                self.frontends.remove(fe);
            }
        }
    }

    /// Recomputes the losers of the given frontends.
    fn resolve_frontends<'a>(&mut self, touched: impl IntoIterator<Item = &'a FrontendKey>) {
        for fe in touched {
            note!(self, lost, fe);
            match self.frontends.get(fe).filter(|c| c.is_contested()) {
                Some(c) => {
                    self.lost.insert(*fe, Conflict::of(*fe, c));
                }
                None => {
                    self.lost.remove(fe);
                }
            }
        }
    }

    fn add_claim(&mut self, id: ElemId, owner: Arc<ServicePortName>, value: Option<Value>) {
        note!(self, claims, &id);
        let claim = Claim { owner, value };
        match self.claims.entry(id) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                self.contested.insert(e.key().clone());
                e.get_mut().insert(claim);
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Claims {
                    first: claim,
                    rest: None,
                });
            }
        }
    }

    fn remove_claim(&mut self, id: &ElemId, owner: &ServicePortName) {
        note!(self, claims, id);
        if let Some(list) = self.claims.get_mut(id) {
            if !list.remove(owner) {
                self.claims.remove(id);
            }
        }
    }

    /// Registers the affinity identities of `svc` (`None`: the service is gone) in place of
    /// the ones registered for `key` before, adding every identity involved to `touched`.
    fn register_affinity(
        &mut self,
        key: &ServiceKey,
        svc: Option<&rudder_model::Service>,
        ctx: &Ctx,
        touched: &mut BTreeSet<u128>,
    ) {
        note!(self, affinity_regs, key);
        for (id, rank) in self.affinity_regs.remove(key).into_iter().flatten() {
            touched.insert(id);
            note!(self, affinity_ids, &id);
            if let Some(c) = self.affinity_ids.get_mut(&id) {
                if !c.remove(|r| r.owner == rank.owner) {
                    self.affinity_ids.remove(&id);
                }
            }
        }
        let regs = svc.map_or_else(Vec::new, |s| service::affinity_ids(self.family, s, ctx));
        for (id, rank) in &regs {
            touched.insert(*id);
            note!(self, affinity_ids, id);
            match self.affinity_ids.entry(*id) {
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    e.get_mut().insert(rank.clone())
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(Contenders::new(rank.clone()));
                }
            }
        }
        if !regs.is_empty() {
            self.affinity_regs.insert(key.clone(), regs);
        }
    }

    /// Recomputes which service ports lose their affinity names among the `touched`
    /// identities, and returns the services whose refusal changed (they must be recompiled).
    fn resolve_affinity_names(&mut self, touched: &BTreeSet<u128>) -> BTreeSet<ServiceKey> {
        let mut changed = BTreeSet::new();
        if touched.is_empty() {
            return changed;
        }
        if let Some(j) = self.journal.as_mut()
            && j.name_losers.is_none()
        {
            j.name_losers = Some(self.name_losers.clone());
        }
        let mut old = NameLosers::default();
        self.name_losers.retain(|port, (id, winner)| {
            if touched.contains(id) {
                old.insert(port.clone(), (*id, winner.clone()));
                false
            } else {
                true
            }
        });
        for id in touched {
            let Some(c) = self.affinity_ids.get(id) else {
                continue;
            };
            for loser in c.losers() {
                let entry = (*id, c.winner().owner.clone());
                if old.remove(&*loser.owner) != Some(entry.clone()) {
                    changed.insert(loser.owner.service.clone());
                }
                self.name_losers.insert((*loser.owner).clone(), entry);
            }
        }
        // Ports that lost before and no longer do.
        changed.extend(old.into_keys().map(|p| p.service));
        changed
    }

    /// Records a compiled fragment: its claims and classes. Returns the classes it needs
    /// that did not exist yet.
    fn insert_fragment(&mut self, key: &ServiceKey, frag: Fragment) -> Vec<Class> {
        let mut stored = Stored {
            claims: Vec::with_capacity(frag.claims.len()),
            objects: frag.objects,
            no_local: frag.no_local,
            frontends: frag.frontends,
        };
        for (fe, rank) in &stored.frontends {
            self.add_contender(*fe, rank.clone());
        }
        for (total, n) in self.no_local.iter_mut().zip(frag.no_local) {
            *total += u64::from(n);
        }
        for (set, k, owner, value) in frag.claims {
            stored
                .claims
                .push((set, k.clone(), owner.clone(), value.clone()));
            self.add_claim((set, k), owner, value);
        }
        let new: Vec<Class> = frag
            .classes
            .into_iter()
            .filter(|c| self.classes.insert(*c))
            .collect();
        if !stored.claims.is_empty() || !stored.objects.is_empty() || !stored.frontends.is_empty() {
            note!(self, frags, key);
            self.frags.insert(key.clone(), stored);
        }
        new
    }

    /// Recompiles the given services and returns the operations for what changed. An
    /// excluded service is compiled as if it did not exist.
    fn update(
        &mut self,
        state: &ProxyState,
        ctx: &Ctx,
        changed: &BTreeSet<ServiceKey>,
        excluded: &BTreeSet<ServiceKey>,
        problems: &mut Vec<Problem>,
    ) -> Transaction {
        let service = |key: &ServiceKey| state.service(key).filter(|_| !excluded.contains(key));
        // Affinity names first: a changed service can make an unchanged one lose (or win back)
        // its names, and then that one is recompiled too.
        let mut touched = BTreeSet::new();
        for key in changed {
            self.register_affinity(key, service(key), ctx, &mut touched);
        }
        let extra = self.resolve_affinity_names(&touched);
        let all;
        let changed = if extra.iter().all(|k| changed.contains(k)) {
            changed
        } else {
            all = changed.union(&extra).cloned().collect::<BTreeSet<_>>();
            &all
        };
        // 1. Compile the changed services (nothing changes yet: compiling reads the old
        // fragments for their endpoint slots).
        let mut work: Vec<(&ServiceKey, Option<Fragment>)> = Vec::with_capacity(changed.len());
        for key in changed {
            let prev_slots = self.frags.get(key).map(prev_slots).unwrap_or_default();
            let frag = service(key).map(|svc| {
                let mut frag = service::compile(
                    self.family,
                    self.primary,
                    state,
                    svc,
                    ctx,
                    &self.name_losers,
                    Some(&prev_slots),
                );
                problems.append(&mut frag.problems);
                frag
            });
            work.push((key, frag));
        }

        // 2. Every element whose effective value may change, with its value now: the changed
        // services' old and new elements, and the elements other (unchanged) service ports
        // hold on a frontend a changed one claims or claimed, since its winner may change.
        let mut before: BTreeMap<ElemId, Option<Option<Value>>> = BTreeMap::new();
        let mut touched: BTreeSet<FrontendKey> = BTreeSet::new();
        for (key, frag) in &work {
            let old = self.frags.get(*key);
            let old_claims = old.into_iter().flat_map(|o| &o.claims);
            let new_claims = frag.iter().flat_map(|f| &f.claims);
            for (set, k, _, _) in old_claims.chain(new_claims) {
                let id = (*set, k.clone());
                if let std::collections::btree_map::Entry::Vacant(e) = before.entry(id) {
                    let value = self.effective(e.key());
                    e.insert(value);
                }
            }
            let old_fes = old.into_iter().flat_map(|o| &o.frontends);
            let new_fes = frag.iter().flat_map(|f| &f.frontends);
            touched.extend(old_fes.chain(new_fes).map(|(fe, _)| *fe));
        }
        let mut others: BTreeMap<&ServiceKey, BTreeSet<FrontendKey>> = BTreeMap::new();
        for fe in &touched {
            let Some(c) = self.frontends.get(fe) else {
                continue;
            };
            for r in std::iter::once(c.winner()).chain(c.losers()) {
                if !changed.contains(&r.rank.owner.service) {
                    others.entry(&r.rank.owner.service).or_default().insert(*fe);
                }
            }
        }
        for (key, fes) in others {
            let Some(stored) = self.frags.get(key) else {
                continue;
            };
            for (set, k, _, _) in &stored.claims {
                if FrontendKey::of_element(*set, k).is_some_and(|fe| fes.contains(&fe)) {
                    let id = (*set, k.clone());
                    if let std::collections::btree_map::Entry::Vacant(e) = before.entry(id) {
                        let value = self.effective(e.key());
                        e.insert(value);
                    }
                }
            }
        }

        // 3. Replace the changed services' fragments.
        let mut new_classes = BTreeSet::new();
        // Objects owned by services (session affinity), before and after, by name.
        let mut old_objects: BTreeMap<(bool, Name), Owned> = BTreeMap::new();
        let mut new_objects: BTreeMap<(bool, Name), Owned> = BTreeMap::new();
        for (key, frag) in work {
            note!(self, frags, key);
            if let Some(old) = self.frags.remove(key) {
                for (total, n) in self.no_local.iter_mut().zip(old.no_local) {
                    *total = total.saturating_sub(u64::from(n));
                }
                for o in &old.objects {
                    old_objects.insert(o.key(), o.clone());
                }
                for (set, k, owner, _) in old.claims {
                    self.remove_claim(&(set, k), &owner);
                }
                for (fe, rank) in &old.frontends {
                    self.remove_contender(fe, &rank.rank.owner);
                }
            }
            if let Some(frag) = frag {
                for o in &frag.objects {
                    new_objects.insert(o.key(), o.clone());
                }
                new_classes.extend(self.insert_fragment(key, frag));
            }
        }
        self.resolve_frontends(&touched);

        let mut tx = Transaction::new();
        for c in &new_classes {
            layout::class_objects(
                nft_family(self.family),
                &self.table,
                *c,
                ctx.config.masquerade_mark(),
                &ctx.node,
                &mut tx,
            );
        }
        let mut deletes: BTreeMap<SetId, Vec<Key>> = BTreeMap::new();
        let mut adds: BTreeMap<SetId, Vec<(Key, Option<Value>)>> = BTreeMap::new();
        for (id, old) in before {
            let new = self.effective(&id);
            if new == old {
                continue;
            }
            let (set, key) = id;
            if old.is_some() {
                deletes.entry(set).or_default().push(key.clone());
            }
            if let Some(v) = new {
                adds.entry(set).or_default().push((key, v));
            }
        }
        // Owned objects: create new chains and sets first, flush chains that change or go
        // (dropping their references), then element deletions, set replacements, rules,
        // element additions, and chain deletions last.
        let t = &self.table;
        let mut flushes = Vec::new();
        let mut set_deletes = Vec::new();
        let mut set_adds = Vec::new();
        let mut rules = Vec::new();
        let mut chain_deletes = Vec::new();
        // Sets that go or change type: chains using them must let go of them first.
        let replaced_sets: BTreeSet<&Name> = old_objects
            .iter()
            .filter(|(k, o)| k.0 && new_objects.get(*k) != Some(*o))
            .map(|(k, _)| &k.1)
            .collect();
        let uses_replaced = |rules: &[rudder_nft::Rule]| {
            rules
                .iter()
                .flat_map(|r| &r.stmts)
                .any(|st| st.set_refs().is_some_and(|n| replaced_sets.contains(n)))
        };
        for (key, new) in &new_objects {
            let name = &key.1;
            match (old_objects.get(key), new) {
                (Some(old), Owned::Chain(_, r)) if old == new && uses_replaced(r) => {
                    flushes.push(Op::FlushChain(t.clone(), name.clone()));
                    rules.extend(
                        r.iter()
                            .map(|r| Op::AddRule(t.clone(), name.clone(), r.clone())),
                    );
                }
                (Some(old), new) if old == new => {}
                (old, Owned::Chain(decl, r)) => {
                    if old.is_some() {
                        flushes.push(Op::FlushChain(t.clone(), name.clone()));
                    } else {
                        tx.add_chain(t, decl.clone());
                    }
                    rules.extend(
                        r.iter()
                            .map(|r| Op::AddRule(t.clone(), name.clone(), r.clone())),
                    );
                }
                (old, Owned::Set(decl)) => {
                    if old.is_some() {
                        set_deletes.push(Op::DeleteSet(t.clone(), name.clone(), false));
                        set_adds.push(Op::AddSet(t.clone(), decl.clone()));
                    } else {
                        tx.add_set(t, decl.clone());
                    }
                }
            }
        }
        for (key, old) in &old_objects {
            if new_objects.contains_key(key) {
                continue;
            }
            let name = &key.1;
            match old {
                Owned::Chain(..) => {
                    flushes.push(Op::FlushChain(t.clone(), name.clone()));
                    chain_deletes.push(Op::DeleteChain(t.clone(), name.clone()));
                }
                Owned::Set(_) => set_deletes.push(Op::DeleteSet(t.clone(), name.clone(), false)),
            }
        }
        for op in flushes {
            tx.push(op);
        }
        for (set, keys) in deletes {
            tx.delete_elements(t, &set.name(), keys);
        }
        for op in set_deletes.into_iter().chain(set_adds).chain(rules) {
            tx.push(op);
        }
        for (set, elems) in adds {
            tx.add_elements(t, &set.name(), elems);
        }
        for op in chain_deletes {
            tx.push(op);
        }
        tx
    }

    /// Starts recording what the next updates change, for [`FamilyCompiler::rollback`].
    fn begin_journal(&mut self) {
        self.journal = Some(Journal {
            classes: self.classes.clone(),
            no_local: self.no_local,
            ..Journal::default()
        });
    }

    /// Stops recording and returns what was recorded.
    fn end_journal(&mut self) -> Journal {
        self.journal.take().unwrap_or_default()
    }

    /// Puts back every entry the journaled updates changed.
    fn rollback(&mut self, j: Journal) {
        fn restore<K: std::hash::Hash + Eq, V>(
            map: &mut FxHashMap<K, V>,
            old: FxHashMap<K, Option<V>>,
        ) {
            for (k, v) in old {
                match v {
                    Some(v) => map.insert(k, v),
                    None => map.remove(&k),
                };
            }
        }
        for (k, v) in j.frags {
            match v {
                Some(v) => self.frags.insert(k, v),
                None => self.frags.remove(&k),
            };
        }
        restore(&mut self.claims, j.claims);
        restore(&mut self.frontends, j.frontends);
        restore(&mut self.affinity_ids, j.affinity_ids);
        restore(&mut self.affinity_regs, j.affinity_regs);
        for (k, v) in j.lost {
            match v {
                Some(v) => self.lost.insert(k, v),
                None => self.lost.remove(&k),
            };
        }
        if let Some(n) = j.name_losers {
            self.name_losers = n;
        }
        self.classes = j.classes;
        self.no_local = j.no_local;
    }

    /// Forgets everything and compiles every service but the excluded ones: the complete
    /// table.
    fn full(
        &mut self,
        state: &ProxyState,
        ctx: &Ctx,
        excluded: &BTreeSet<ServiceKey>,
        problems: &mut Vec<Problem>,
    ) -> Transaction {
        // `clear` keeps the hash table's capacity: a resync does not grow it again.
        self.frags.clear();
        self.no_local = [0; 2];
        self.claims.clear();
        self.contested.clear();
        self.frontends.clear();
        self.contested_frontends.clear();
        self.lost.clear();
        self.classes.clear();
        self.affinity_ids.clear();
        self.affinity_regs.clear();
        self.name_losers.clear();
        let mut touched = BTreeSet::new();
        let services = || state.services().filter(|s| !excluded.contains(&s.key));
        for svc in services() {
            self.register_affinity(&svc.key, Some(svc), ctx, &mut touched);
        }
        self.resolve_affinity_names(&touched);
        self.skeleton = layout::skeleton(
            nft_family(self.family),
            &self.table,
            &ctx.config,
            &ctx.node,
            &ctx.service_cidrs,
        );
        for svc in services() {
            let mut frag = service::compile(
                self.family,
                self.primary,
                state,
                svc,
                ctx,
                &self.name_losers,
                None,
            );
            problems.append(&mut frag.problems);
            self.insert_fragment(&svc.key, frag);
        }
        let contested: Vec<FrontendKey> = self.contested_frontends.iter().copied().collect();
        self.resolve_frontends(&contested);
        self.create_transaction(ctx)
    }

    /// The operations that create the whole table from nothing. Elements are listed per set
    /// in service-key order, then in each service's own order: deterministic without sorting.
    fn create_transaction(&self, ctx: &Ctx) -> Transaction {
        let mut tx = self.skeleton.to_transaction();
        for c in &self.classes {
            layout::class_objects(
                nft_family(self.family),
                &self.table,
                *c,
                ctx.config.masquerade_mark(),
                &ctx.node,
                &mut tx,
            );
        }
        // Service-owned objects: every chain and set declared before any rule uses them.
        let owned = self.frags.values().flat_map(|s| &s.objects);
        for o in owned.clone() {
            match o {
                Owned::Chain(decl, _) => tx.add_chain(&self.table, decl.clone()),
                Owned::Set(decl) => tx.add_set(&self.table, decl.clone()),
            }
        }
        for o in owned {
            if let Owned::Chain(decl, rules) = o {
                for r in rules {
                    tx.add_rule(&self.table, &decl.name, r.clone());
                }
            }
        }
        let mut per_set: BTreeMap<SetId, Vec<(Key, Option<Value>)>> = BTreeMap::new();
        for stored in self.frags.values() {
            for (set, key, owner, value) in &stored.claims {
                let id = (*set, key.clone());
                // Emit each element once: from the service port whose claim is effective.
                // Uncontested elements of uncontested frontends have a single claim, which is
                // this one.
                let alone = (self.contested.is_empty() || !self.contested.contains(&id))
                    && (self.contested_frontends.is_empty()
                        || FrontendKey::of_element(*set, key)
                            .is_none_or(|fe| !self.contested_frontends.contains(&fe)));
                let mine = alone
                    || self
                        .effective_claim(&id)
                        .is_some_and(|c| Arc::ptr_eq(&c.owner, owner));
                if mine {
                    per_set
                        .entry(*set)
                        .or_default()
                        .push((key.clone(), value.clone()));
                }
            }
        }
        for (set, elems) in per_set {
            tx.add_elements(&self.table, &set.name(), elems);
        }
        tx
    }
}

/// Shared inputs of every family's compilation.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) config: Config,
    pub(crate) node: NodeContext,
    /// [`guard::node_addresses`] of `node`.
    pub(crate) node_addrs: Vec<IpAddr>,
    /// The service CIDRs that pass [`guard::service_cidrs`].
    pub(crate) service_cidrs: Vec<Cidr>,
    /// The service CIDRs refused, reported at every full compile.
    cidr_problems: Vec<Problem>,
}

impl Ctx {
    fn new(config: Config, node: NodeContext) -> Ctx {
        let (service_cidrs, cidr_problems) = guard::service_cidrs(&node);
        Ctx {
            node_addrs: guard::node_addresses(&node),
            config,
            node,
            service_cidrs,
            cidr_problems,
        }
    }
}

/// Reports an affinity name collision found in both families of a dual-stack port once.
fn dedup_collisions(problems: &mut Vec<Problem>) {
    let mut seen: Vec<Problem> = Vec::new();
    problems.retain(|p| {
        if !matches!(p.reason, rudder_model::Reason::ObjectNameCollision { .. }) {
            return true;
        }
        if seen.contains(p) {
            return false;
        }
        seen.push(p.clone());
        true
    });
}

/// The incremental compiler for every IP family Rudder programs.
#[derive(Debug)]
pub struct Compiler {
    ctx: Ctx,
    families: Vec<FamilyCompiler>,
    /// Refused input found by the compilations since the last [`Compiler::take_problems`].
    problems: Vec<Problem>,
    /// The frontend conflicts as last reported: a conflict is reported when it appears (or
    /// its winner changes), not again at every compile.
    reported: BTreeSet<Conflict>,
    /// Services compiled as if they did not exist ([`Compiler::set_excluded`]).
    excluded: BTreeSet<ServiceKey>,
}

/// What undoes a [`Compiler::update_undoable`] whose transaction was not applied
/// ([`Compiler::rollback`]): the previous value of everything the update changed.
#[derive(Debug)]
pub struct Undo {
    families: Vec<Journal>,
    problems: usize,
    reported: BTreeSet<Conflict>,
}

impl Compiler {
    /// A compiler for the given families (one table each), with nothing compiled yet.
    pub fn new(families: &[IpFamily], config: Config, node: NodeContext) -> Compiler {
        let mut fams: Vec<IpFamily> = families.to_vec();
        fams.sort();
        fams.dedup();
        let families = fams
            .into_iter()
            .enumerate()
            .map(|(i, family)| FamilyCompiler {
                family,
                primary: i == 0,
                table: TableRef::new(nft_family(family), config.table.clone()),
                skeleton: Ruleset::new(),
                frags: BTreeMap::new(),
                claims: FxHashMap::default(),
                contested: Default::default(),
                frontends: FxHashMap::default(),
                contested_frontends: Default::default(),
                lost: BTreeMap::new(),
                classes: BTreeSet::new(),
                no_local: [0; 2],
                affinity_ids: FxHashMap::default(),
                affinity_regs: FxHashMap::default(),
                name_losers: NameLosers::default(),
                journal: None,
            })
            .collect();
        Compiler {
            ctx: Ctx::new(config, node),
            families,
            problems: Vec::new(),
            reported: BTreeSet::new(),
            excluded: BTreeSet::new(),
        }
    }

    /// The families compiled.
    pub fn families(&self) -> Vec<IpFamily> {
        self.families.iter().map(|f| f.family).collect()
    }

    /// The tables this compiler writes.
    pub fn tables(&self) -> Vec<TableRef> {
        self.families.iter().map(|f| f.table.clone()).collect()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.ctx.config
    }

    /// The node context.
    pub fn node(&self) -> &NodeContext {
        &self.ctx.node
    }

    /// Compiles everything and returns a transaction that atomically *replaces* Rudder's
    /// tables (`add table`, `delete table`, then the complete content), so it applies the
    /// same way whether or not the tables exist, and whatever drifted in them.
    pub fn full(&mut self, state: &ProxyState) -> Transaction {
        let mut tx = Transaction::new();
        for f in &self.families {
            tx.push(Op::AddTable(f.table.clone()));
            tx.push(Op::DeleteTable(f.table.clone()));
        }
        // A full compile reports everything refused: what earlier compiles reported and
        // nobody took is superseded (so an unread list cannot grow without bound).
        self.problems.clear();
        self.problems.extend(self.ctx.cidr_problems.iter().cloned());
        for f in &mut self.families {
            tx.extend(f.full(state, &self.ctx, &self.excluded, &mut self.problems));
        }
        dedup_collisions(&mut self.problems);
        self.report_conflicts();
        tx
    }

    /// Recompiles only `changed` services and returns the minimal transaction from the
    /// previously compiled ruleset to the new one. Services not in `changed` are assumed
    /// unchanged. Must follow a [`Compiler::full`].
    pub fn update(&mut self, state: &ProxyState, changed: &BTreeSet<ServiceKey>) -> Transaction {
        let mut tx = Transaction::new();
        let from = self.problems.len();
        for f in &mut self.families {
            tx.extend(f.update(
                state,
                &self.ctx,
                changed,
                &self.excluded,
                &mut self.problems,
            ));
        }
        let mut new = self.problems.split_off(from);
        dedup_collisions(&mut new);
        self.problems.extend(new);
        self.report_conflicts();
        tx
    }

    /// [`Compiler::update`], and what undoes it in the compiler: when the transaction is not
    /// applied (the kernel refused it, or it was only tried), [`Compiler::rollback`] brings
    /// the compiler back to exactly what it was, which is what the kernel still holds. The
    /// cost over `update` is a copy of the previous value of each entry the update changes.
    pub fn update_undoable(
        &mut self,
        state: &ProxyState,
        changed: &BTreeSet<ServiceKey>,
    ) -> (Transaction, Undo) {
        let problems = self.problems.len();
        let reported = self.reported.clone();
        for f in &mut self.families {
            f.begin_journal();
        }
        let tx = self.update(state, changed);
        let families = self.families.iter_mut().map(|f| f.end_journal()).collect();
        (
            tx,
            Undo {
                families,
                problems,
                reported,
            },
        )
    }

    /// Undoes the [`Compiler::update_undoable`] that returned `undo`, which must be the last
    /// change of the compiler: every service is compiled as it was before, and the next
    /// update emits what it would have emitted without the undone one. What the undone
    /// update found refused is forgotten.
    pub fn rollback(&mut self, undo: Undo) {
        for (f, j) in self.families.iter_mut().zip(undo.families) {
            f.rollback(j);
        }
        self.problems.truncate(undo.problems);
        self.reported = undo.reported;
    }

    /// Services to compile as if they did not exist, whatever the state says: the ones the
    /// kernel refused, which the sync loop holds back so that they cannot block everything
    /// else. A full compile leaves them out; an update leaves out those of its `changed`
    /// services that are excluded (withdrawing what they had), so a service whose exclusion
    /// starts or ends must be passed as changed.
    pub fn set_excluded(&mut self, services: BTreeSet<ServiceKey>) {
        self.excluded = services;
    }

    /// The services compiled as if they did not exist (see [`Compiler::set_excluded`]).
    pub fn excluded(&self) -> &BTreeSet<ServiceKey> {
        &self.excluded
    }

    /// Every frontend conflict now, over all families (a node port contested in both
    /// families is one conflict).
    fn conflicts(&self) -> BTreeSet<Conflict> {
        self.families
            .iter()
            .flat_map(|f| f.lost.values().flatten())
            .cloned()
            .collect()
    }

    /// Queues a problem for every conflict that is new since the last report.
    fn report_conflicts(&mut self) {
        let now = self.conflicts();
        for c in now.difference(&self.reported) {
            self.problems.push(c.problem());
        }
        self.reported = now;
    }

    /// The service ports that lose a frontend to another one right now, as problems naming
    /// the winner (the same problems [`Compiler::take_problems`] returned when each conflict
    /// appeared), sorted by loser.
    pub fn frontend_conflicts(&self) -> Vec<Problem> {
        self.conflicts().iter().map(Conflict::problem).collect()
    }

    /// Whether the compiler refuses `svc` as a whole on this node (one of its ClusterIPs is
    /// one of the node's addresses): nothing of it is programmed, so nothing else (health
    /// check servers) should serve it either.
    pub fn refuses(&self, svc: &rudder_model::Service) -> bool {
        guard::refused_cluster_ip(svc, &self.ctx.node_addrs).is_some()
    }

    /// What the compilations since the last call refused to program, and why: a service
    /// address that is one of the node's addresses (a ClusterIP refuses the whole service, an
    /// external or load balancer IP only that frontend), and service CIDRs that would cover the
    /// node or the pod network (see [`guard`]). A full compile reports everything refused; an
    /// update, what the changed services have. The compiler does not log: the caller logs and
    /// counts these.
    pub fn take_problems(&mut self) -> Vec<Problem> {
        std::mem::take(&mut self.problems)
    }

    /// Changes the node context or configuration. The next sync must be a full one.
    pub fn reconfigure(&mut self, config: Config, node: NodeContext) {
        for f in &mut self.families {
            f.table = TableRef::new(f.table.family, config.table.clone());
        }
        self.ctx = Ctx::new(config, node);
    }

    /// The transaction that creates the complete desired ruleset from nothing (no
    /// replace prologue): what `rudder compile` prints.
    pub fn create_transaction(&self) -> Transaction {
        let mut tx = Transaction::new();
        for f in &self.families {
            tx.extend(f.create_transaction(&self.ctx));
        }
        tx
    }

    /// The complete desired ruleset as plain data. An error would mean the compiler built an
    /// inconsistent transaction (a bug that the tests look for).
    pub fn ruleset(&self) -> Result<Ruleset, ApplyError> {
        let mut rs = Ruleset::new();
        rs.apply(&self.create_transaction())?;
        Ok(rs)
    }

    /// Per family, the service ports that have endpoints but none on this node under a
    /// `Local` policy, as `(family, internal, external)`: kube-proxy's
    /// `sync_proxy_rules_no_local_endpoints_total` gauge. Kept up to date incrementally.
    pub fn no_local_endpoints(&self) -> Vec<(IpFamily, u64, u64)> {
        self.families
            .iter()
            .map(|f| (f.family, f.no_local[0], f.no_local[1]))
            .collect()
    }

    /// Sizes of what is compiled.
    pub fn stats(&self) -> CompileStats {
        let mut s = CompileStats::default();
        for f in &self.families {
            s.services += f.frags.len();
            s.elements += f.claims.len();
            s.classes += f.classes.len();
        }
        s
    }
}
