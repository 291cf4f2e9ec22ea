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
mod family;
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
use family::*;

pub use conflict::{ClaimRank, ClaimedFrontend, claimed_frontends};
pub use layout::{
    Class, SetId, local_match, loopback, masquerade_marked, names, nodeport_match, reject_rules,
};
pub use policy::{Categorized, Topology, categorize, uses_cluster_endpoints, uses_local_endpoints};
pub use service::allowed_sources;

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
    /// The `KubeProxyNFTablesLocalhostNodePorts` gate is on. In the families where it is on
    /// but the localhost proxy is not (`--nodeport-addresses` lists no loopback address of
    /// that family), new connections of every protocol, TCP included, to a loopback address
    /// on a node port are rejected, as kube-proxy 1.37 rejects them; with the gate off,
    /// loopback traffic is left alone (kube-proxy 1.36).
    pub localhost_gate: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            table: Name::new(DEFAULT_TABLE).expect("default table name is valid"),
            masquerade_all: false,
            masquerade_bit: 14,
            localhost_node_ports: Vec::new(),
            localhost_gate: false,
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
    /// The local addresses `NodePortIps::All` stands for (loopback and IPVS's `kube-ipvs0`
    /// left out), where a mode needs them listed: IPVS mode makes a virtual server per
    /// node-port address. Empty when not listed (nftables mode matches any local address
    /// instead); the IPVS compiler falls back to `ips` then.
    pub local_ips: Vec<IpAddr>,
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
            local_ips: Vec::new(),
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
