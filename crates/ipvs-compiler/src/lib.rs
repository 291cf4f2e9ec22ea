//! The IPVS mode's pure compiler: proxy state in, what IPVS must hold out, and the minimal
//! operations that get it there.
//!
//! What it owns: kube-proxy's IPVS semantics (`pkg/proxy/ipvs/proxier.go`) as data. Every
//! ClusterIP, external IP and load balancer IP (VIP mode) `:port/proto` of a service port is a
//! virtual server whose address is bound to the dummy interface; every node port is a virtual
//! server on each node-port address of its family, not bound. Real servers are the endpoints
//! kube-proxy picks (the same categorization as the nftables mode, [`rudder_compiler::categorize`]:
//! ready, serving-and-terminating fallback, topology hints), the local ones for a `Local`
//! policy (internal for the ClusterIP, external for the others), all of them when a `Local`
//! policy has none on this node (kubernetes#97081: pods on the node still reach the service;
//! the nftables part of the mode drops outside traffic then). `sessionAffinity: ClientIP` is a
//! persistent virtual server with the affinity timeout; the `mh` scheduler gets its `mh-port`
//! flag, as kube-proxy sets it. Two services claiming one frontend resolve exactly as in the
//! nftables mode ([`rudder_compiler::claimed_frontends`]: a ClusterIP before an external or
//! load balancer IP, then the older Service): only the winner is programmed.
//!
//! [`IpvsCompiler::update`] recompiles only the changed services and returns the operations
//! for the frontends they touch, so a sync costs what changed; [`diff`] compares any two
//! [`Target`]s (for example what the kernel holds, dumped, with what should be), which is how
//! a full sync repairs changes made behind Rudder's back without touching the rest.
//!
//! Everything IPVS cannot do (masquerade marking, source ranges, rejecting frontends without
//! endpoints, the VIP filter) is the mode's nftables part ([`table`]): a fixed skeleton whose
//! sets the same compile fills, element by element, so that a sync writes only elements;
//! [`IpvsCompiler::take_table_changes`] hands over what changed since the last call.
//!
//! What it must not do: I/O, clocks, or anything nondeterministic; it never sees a socket
//! (the `rudder-ipvs` handle applies [`Op`]s, the nftables writer the transactions).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rudder_compiler::{
    ClaimRank, NodeContext, NodePortIps, allowed_sources, categorize, claimed_frontends, guard,
};
use rudder_ipvs::{Scheduler, ServiceFlags, VirtualServer};
use rudder_model::{
    FrontendKind, IpFamily, ObjectKind, Problem, Protocol, ProxyState, Reason, Service, ServiceKey,
    ServicePortName, TrafficPolicy,
};
use rudder_nft::{Atom, Family, Key, L4Proto, Ruleset, Transaction};

mod explain;
pub mod table;

use table::{Element, Refusal, SetKind, TableConfig, frontend_key, port_key};

/// What identifies a virtual server in the kernel.
pub type VsKey = rudder_ipvs::ServiceKey;

/// The mode's settings (kube-proxy's `--ipvs-*` flags that shape virtual servers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `--ipvs-scheduler` (kube-proxy's default: `rr`).
    pub scheduler: Scheduler,
    /// The nftables part: table name, masquerade settings.
    pub table: TableConfig,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            scheduler: Scheduler::RoundRobin,
            table: TableConfig::default(),
        }
    }
}

/// One virtual server as it should be: its definition, its real servers with their weights,
/// whether its address is bound to the dummy interface, and the service port it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// The virtual server.
    pub service: VirtualServer,
    /// Real servers and their weights (1 for a wanted one; 0 for one being drained).
    pub real: BTreeMap<SocketAddr, u32>,
    /// The address is bound to the dummy interface (ClusterIPs, external and load balancer
    /// IPs; never node ports).
    pub bind: bool,
    /// The service port (`None` for a server read back from the kernel).
    pub owner: Option<ServicePortName>,
}

/// What IPVS should hold (or holds): virtual servers, and the addresses on the dummy
/// interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    /// Virtual servers by key.
    pub servers: BTreeMap<VsKey, Server>,
    /// Addresses bound to the dummy interface.
    pub addresses: BTreeSet<IpAddr>,
}

/// One change to IPVS or the dummy interface. [`diff`] orders them so that nothing is ever
/// reachable half-made: addresses are bound before their virtual servers exist, real servers
/// are added after their virtual server, and addresses are unbound last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Bind an address to the dummy interface.
    Bind(IpAddr),
    /// Create a virtual server.
    AddService(VirtualServer),
    /// Change a virtual server's scheduler, flags or persistence in place (its connections
    /// stay).
    EditService(VirtualServer),
    /// Add a real server with weight 1.
    AddReal(VsKey, SocketAddr),
    /// Set a real server's weight (1: taken back from draining).
    SetWeight(VsKey, SocketAddr, u32),
    /// Stop sending new connections to a real server (weight 0) and delete it once its
    /// connections are gone (at once for UDP): kube-proxy's graceful termination.
    Retire(VsKey, SocketAddr),
    /// Delete a virtual server (and with it its real servers).
    DelService(VsKey),
    /// Remove an address from the dummy interface.
    Unbind(IpAddr),
}

/// The operations that turn `have` into `want`, in a safe order (see [`Op`]). Real servers
/// `have` holds at weight 0 and `want` does not are being drained: left alone.
pub fn diff(have: &Target, want: &Target) -> Vec<Op> {
    let keys: BTreeSet<&VsKey> = have.servers.keys().chain(want.servers.keys()).collect();
    let mut binds = Vec::new();
    let mut services = Vec::new();
    let mut reals = Vec::new();
    let mut retires = Vec::new();
    let mut deletes = Vec::new();
    let mut unbinds = Vec::new();
    binds.extend(
        want.addresses
            .difference(&have.addresses)
            .map(|a| Op::Bind(*a)),
    );
    unbinds.extend(
        have.addresses
            .difference(&want.addresses)
            .map(|a| Op::Unbind(*a)),
    );
    for key in keys {
        match (have.servers.get(key), want.servers.get(key)) {
            (None, None) => {}
            (Some(_), None) => deletes.push(Op::DelService(*key)),
            (h, Some(w)) => {
                let empty = BTreeMap::new();
                let have_real = match h {
                    None => {
                        services.push(Op::AddService(w.service.clone()));
                        &empty
                    }
                    Some(h) => {
                        if h.service != w.service {
                            services.push(Op::EditService(w.service.clone()));
                        }
                        &h.real
                    }
                };
                for (addr, weight) in &w.real {
                    match have_real.get(addr) {
                        None => reals.push(Op::AddReal(*key, *addr)),
                        Some(hw) if hw != weight => reals.push(Op::SetWeight(*key, *addr, *weight)),
                        Some(_) => {}
                    }
                }
                for (addr, weight) in have_real {
                    if *weight != 0 && !w.real.contains_key(addr) {
                        retires.push(Op::Retire(*key, *addr));
                    }
                }
            }
        }
    }
    binds
        .into_iter()
        .chain(services)
        .chain(reals)
        .chain(retires)
        .chain(deletes)
        .chain(unbinds)
        .collect()
}

/// One service port's claim on a virtual server.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Claim {
    key: VsKey,
    rank: ClaimRank,
    server: Server,
    /// The frontend, for conflict reports.
    frontend: rudder_model::Frontend,
    kind: FrontendKind,
    /// What the claim puts in the nftables part when it wins.
    elements: Arc<[Element]>,
}

/// A claim as it competes for its virtual server.
#[derive(Debug, Clone)]
struct Contender {
    server: Server,
    elements: Arc<[Element]>,
}

/// The incremental compiler.
#[derive(Debug, Clone)]
pub struct IpvsCompiler {
    families: Vec<IpFamily>,
    options: Options,
    node: NodeContext,
    /// Each service's claims, as last compiled.
    by_service: BTreeMap<ServiceKey, Vec<Claim>>,
    /// Per virtual server, every claim on it by rank: the first one is programmed.
    contenders: BTreeMap<VsKey, BTreeMap<ClaimRank, Contender>>,
    /// The nftables elements of each virtual server's winner.
    winner_elements: BTreeMap<VsKey, Arc<[Element]>>,
    /// Every element of the nftables part, with the number of winners that hold it.
    elements: BTreeMap<Element, u32>,
    /// Elements added (`true`) or deleted (`false`) since the last
    /// [`IpvsCompiler::take_table_changes`].
    pending: BTreeMap<Element, bool>,
    /// What the winners make.
    target: Target,
    /// How many bound servers use each address.
    bound: BTreeMap<IpAddr, usize>,
    /// Per service with any, its `no_local_endpoints` counts (see
    /// [`IpvsCompiler::no_local_endpoints`]).
    no_local: BTreeMap<ServiceKey, [u32; 4]>,
    /// Their sums.
    no_local_total: [u64; 4],
    /// Services compiled as absent (held back by the sync loop).
    excluded: BTreeSet<ServiceKey>,
    problems: Vec<Problem>,
}

impl IpvsCompiler {
    /// A compiler for `families` on the node `node`.
    pub fn new(families: &[IpFamily], options: Options, node: NodeContext) -> IpvsCompiler {
        IpvsCompiler {
            families: families.to_vec(),
            options,
            node,
            by_service: BTreeMap::new(),
            contenders: BTreeMap::new(),
            winner_elements: BTreeMap::new(),
            elements: BTreeMap::new(),
            pending: BTreeMap::new(),
            target: Target::default(),
            bound: BTreeMap::new(),
            no_local: BTreeMap::new(),
            no_local_total: [0; 4],
            excluded: BTreeSet::new(),
            problems: Vec::new(),
        }
    }

    /// The families compiled.
    pub fn families(&self) -> &[IpFamily] {
        &self.families
    }

    /// The node context.
    pub fn node(&self) -> &NodeContext {
        &self.node
    }

    /// A new node context; the next [`IpvsCompiler::full`] uses it.
    pub fn set_node(&mut self, node: NodeContext) {
        self.node = node;
    }

    /// Services to compile as absent until further notice.
    pub fn set_excluded(&mut self, services: BTreeSet<ServiceKey>) {
        self.excluded = services;
    }

    /// What IPVS should hold after the last compile.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The nftables settings.
    pub fn table_config(&self) -> &TableConfig {
        &self.options.table
    }

    /// The nftables tables the mode owns, one per family.
    pub fn tables(&self) -> Vec<rudder_nft::TableRef> {
        self.families
            .iter()
            .map(|f| self.options.table.table(nft_family(*f)))
            .collect()
    }

    /// Per family, the service ports that have endpoints but none on this node under a
    /// `Local` policy, as `(family, internal, external)`: kube-proxy's
    /// `sync_proxy_rules_no_local_endpoints_total` gauge, kept up to date incrementally.
    pub fn no_local_endpoints(&self) -> Vec<(IpFamily, u64, u64)> {
        self.families
            .iter()
            .map(|f| {
                let i = if *f == IpFamily::V4 { 0 } else { 2 };
                (*f, self.no_local_total[i], self.no_local_total[i + 1])
            })
            .collect()
    }

    /// Every element of the nftables part after the last compile.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.elements.keys()
    }

    /// The transaction that creates the nftables part as compiled: every table's skeleton and
    /// elements (for tables that do not exist).
    pub fn create_transaction(&self) -> Transaction {
        let mut tx = Transaction::new();
        for f in &self.families {
            tx.extend(table::skeleton(
                nft_family(*f),
                &self.options.table,
                &self.node,
            ));
        }
        tx.extend(table::elements_tx(
            &self.options.table,
            self.elements.keys(),
            [],
        ));
        tx
    }

    /// The nftables part as compiled, as the kernel should hold it.
    pub fn ruleset(&self) -> Result<Ruleset, rudder_nft::ApplyError> {
        let mut rs = Ruleset::new();
        rs.apply(&self.create_transaction())?;
        Ok(rs)
    }

    /// The elements added to and deleted from the nftables part since the last call (or
    /// the last [`IpvsCompiler::full`]), as one transaction. Cost: what changed.
    pub fn take_table_changes(&mut self) -> Transaction {
        let pending = std::mem::take(&mut self.pending);
        let added = pending.iter().filter(|(_, a)| **a).map(|(e, _)| e);
        let deleted = pending.iter().filter(|(_, a)| !**a).map(|(e, _)| e);
        table::elements_tx(&self.options.table, added, deleted)
    }

    /// What was refused since the last call: service addresses that are the node's own,
    /// frontends lost to another service.
    pub fn take_problems(&mut self) -> Vec<Problem> {
        std::mem::take(&mut self.problems)
    }

    /// Whether `svc` is refused as a whole (its ClusterIP is one of the node's addresses).
    pub fn refuses(&self, svc: &Service) -> bool {
        let addrs = guard::node_addresses(&self.node);
        guard::refused_cluster_ip(svc, &addrs).is_some()
    }

    /// Compiles everything again and returns the whole target (to compare with what the
    /// kernel holds, [`diff`]).
    pub fn full(&mut self, state: &ProxyState) -> &Target {
        self.by_service.clear();
        self.contenders.clear();
        self.winner_elements.clear();
        self.elements.clear();
        self.target = Target::default();
        self.bound.clear();
        self.no_local.clear();
        self.no_local_total = [0; 4];
        let keys: Vec<ServiceKey> = state.services().map(|s| s.key.clone()).collect();
        self.recompile(state, keys);
        self.pending.clear();
        &self.target
    }

    /// Recompiles the services `changed` (present, changed or gone) and returns the
    /// operations on the virtual servers they claim or claimed, and on their addresses, from
    /// the previous target to the new one. Cost: the changed services and the frontends they
    /// touch, never the whole state.
    pub fn update(&mut self, state: &ProxyState, changed: &BTreeSet<ServiceKey>) -> Vec<Op> {
        let before = self.recompile(state, changed.iter().cloned());
        let mut have = Target::default();
        let mut want = Target::default();
        for (k, old) in &before.servers {
            if let Some(s) = old {
                have.servers.insert(*k, s.clone());
            }
            if let Some(s) = self.target.servers.get(k) {
                want.servers.insert(*k, s.clone());
            }
        }
        for (a, was) in &before.addresses {
            if *was {
                have.addresses.insert(*a);
            }
            if self.target.addresses.contains(a) {
                want.addresses.insert(*a);
            }
        }
        diff(&have, &want)
    }

    /// Recompiles `keys`; returns, for every virtual server whose winner may have changed,
    /// what the target held before, and for their addresses whether they were bound.
    fn recompile(
        &mut self,
        state: &ProxyState,
        keys: impl IntoIterator<Item = ServiceKey>,
    ) -> Before {
        let mut touched = BTreeSet::new();
        for key in keys {
            if let Some(old) = self.no_local.remove(&key) {
                for (t, n) in self.no_local_total.iter_mut().zip(old) {
                    *t -= u64::from(n);
                }
            }
            if let Some(old) = self.by_service.remove(&key) {
                for c in old {
                    touched.insert(c.key);
                    if let Some(m) = self.contenders.get_mut(&c.key) {
                        m.remove(&c.rank);
                        if m.is_empty() {
                            self.contenders.remove(&c.key);
                        }
                    }
                }
            }
            let Some(svc) = state.service(&key) else {
                continue;
            };
            if self.excluded.contains(&key) {
                continue;
            }
            let (claims, no_local) = self.compile_service(state, svc);
            if no_local != [0; 4] {
                for (t, n) in self.no_local_total.iter_mut().zip(no_local) {
                    *t += u64::from(n);
                }
                self.no_local.insert(key.clone(), no_local);
            }
            for c in &claims {
                touched.insert(c.key);
                self.contenders.entry(c.key).or_default().insert(
                    c.rank.clone(),
                    Contender {
                        server: c.server.clone(),
                        elements: c.elements.clone(),
                    },
                );
            }
            self.by_service.insert(key, claims);
        }
        let mut before = Before::default();
        for k in &touched {
            before
                .servers
                .insert(*k, self.target.servers.get(k).cloned());
            if let Some(a) = addr_of(k) {
                before
                    .addresses
                    .insert(a, self.target.addresses.contains(&a));
            }
        }
        for k in &touched {
            self.settle(k);
        }
        self.report_conflicts(&touched);
        before
    }

    /// Sets the target of `key` from its best claim, keeping the address and element counts.
    fn settle(&mut self, key: &VsKey) {
        let winner = self
            .contenders
            .get(key)
            .and_then(|m| m.values().next())
            .cloned();
        if let Some(old) = self.winner_elements.remove(key) {
            for e in old.iter() {
                self.release_element(e);
            }
        }
        let old = match winner {
            Some(c) => {
                for e in c.elements.iter() {
                    self.hold_element(e);
                }
                self.winner_elements.insert(*key, c.elements);
                self.target.servers.insert(*key, c.server)
            }
            None => self.target.servers.remove(key),
        };
        if old.as_ref().is_some_and(|s| s.bind) {
            self.release(old.as_ref().map(Server::service_addr));
        }
        let bind = self.target.servers.get(key).filter(|s| s.bind);
        if let Some(a) = bind.map(Server::service_addr) {
            *self.bound.entry(a).or_insert(0) += 1;
            self.target.addresses.insert(a);
        }
    }

    fn hold_element(&mut self, e: &Element) {
        let n = self.elements.entry(e.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            self.note(e, true);
        }
    }

    fn release_element(&mut self, e: &Element) {
        if let Some(n) = self.elements.get_mut(e) {
            *n -= 1;
            if *n == 0 {
                self.elements.remove(e);
                self.note(e, false);
            }
        }
    }

    /// Records that `e` was added or deleted; the two cancel out.
    fn note(&mut self, e: &Element, added: bool) {
        match self.pending.get(e) {
            Some(was) if *was != added => {
                self.pending.remove(e);
            }
            _ => {
                self.pending.insert(e.clone(), added);
            }
        }
    }

    fn release(&mut self, addr: Option<IpAddr>) {
        let Some(a) = addr else { return };
        if let Some(n) = self.bound.get_mut(&a) {
            *n -= 1;
            if *n == 0 {
                self.bound.remove(&a);
                self.target.addresses.remove(&a);
            }
        }
    }

    /// Problems for the claims that lost a virtual server they touch.
    fn report_conflicts(&mut self, touched: &BTreeSet<VsKey>) {
        for k in touched {
            let Some(m) = self.contenders.get(k) else {
                continue;
            };
            if m.len() < 2 {
                continue;
            }
            let mut it = m.iter().map(|(r, c)| (r, &c.server));
            let Some((win_rank, winner)) = it.next() else {
                continue;
            };
            let Some(winner_name) = winner.owner.clone() else {
                continue;
            };
            let winner_kind = self
                .by_service
                .get(&winner_name.service)
                .and_then(|cs| cs.iter().find(|c| c.key == *k && c.rank == *win_rank))
                .map(|c| c.kind);
            let Some(winner_kind) = winner_kind else {
                continue;
            };
            for (rank, loser) in it {
                let Some(owner) = &loser.owner else { continue };
                let claim = self
                    .by_service
                    .get(&owner.service)
                    .and_then(|cs| cs.iter().find(|c| c.key == *k && c.rank == *rank));
                let Some(claim) = claim else { continue };
                self.problems.push(Problem {
                    kind: ObjectKind::Service,
                    namespace: owner.service.namespace.clone(),
                    name: owner.service.name.clone(),
                    reason: Reason::FrontendConflict {
                        port: owner.port.clone(),
                        kind: claim.kind,
                        frontend: claim.frontend,
                        winner: Box::new(winner_name.clone()),
                        winner_kind,
                        rule: win_rank.rule_over(rank),
                    },
                });
            }
        }
    }

    /// The virtual servers one service claims, in every family.
    /// The virtual servers one service claims, in every family, and its service ports with
    /// endpoints but none on this node under a `Local` policy (`[v4 internal, v4 external,
    /// v6 internal, v6 external]`).
    fn compile_service(&mut self, state: &ProxyState, svc: &Service) -> (Vec<Claim>, [u32; 4]) {
        let mut no_local = [0u32; 4];
        let claims = self.compile_claims(state, svc, &mut no_local);
        (claims, no_local)
    }

    fn compile_claims(
        &mut self,
        state: &ProxyState,
        svc: &Service,
        no_local: &mut [u32; 4],
    ) -> Vec<Claim> {
        let node_addrs = guard::node_addresses(&self.node);
        let mut out = Vec::new();
        for &family in &self.families {
            let Some(_) = svc.cluster_ip(family) else {
                continue;
            };
            if let Some(ip) = guard::refused_cluster_ip(svc, &node_addrs) {
                if family == self.families[0] || svc.cluster_ip(self.families[0]).is_none() {
                    self.problems.push(Problem {
                        kind: ObjectKind::Service,
                        namespace: svc.key.namespace.clone(),
                        name: svc.key.name.clone(),
                        reason: Reason::NodeAddress {
                            field: rudder_model::AddressField::ClusterIp,
                            address: ip,
                        },
                    });
                }
                return Vec::new();
            }
            let mut counted = BTreeSet::new();
            for fe in claimed_frontends(svc, family, &node_addrs) {
                let Some(port) = svc.ports.get(fe.port) else {
                    continue;
                };
                let local = match fe.kind {
                    FrontendKind::ClusterIp => svc.internal_traffic_policy == TrafficPolicy::Local,
                    _ => svc.external_traffic_policy == TrafficPolicy::Local,
                };
                let endpoints = state.endpoints_for(svc, port, family);
                let cat = categorize(svc, &endpoints, &self.node.name, self.node.zone.as_deref());
                if counted.insert(fe.port) && cat.has_any && cat.local.is_empty() {
                    let i = if family == IpFamily::V4 { 0 } else { 2 };
                    if svc.internal_traffic_policy == TrafficPolicy::Local {
                        no_local[i] += 1;
                    }
                    if svc.external_traffic_policy == TrafficPolicy::Local
                        && svc.externally_accessible()
                    {
                        no_local[i + 1] += 1;
                    }
                }
                let external = fe.kind != FrontendKind::ClusterIp;
                // kube-proxy: an external Local policy without local endpoints keeps the
                // cluster ones (kubernetes#97081), so pods on this node still reach the
                // service; the nftables part drops traffic from elsewhere. An internal Local
                // policy without local endpoints has none (its traffic is dropped).
                let fallback = local && external && cat.local.is_empty();
                let picked = if local && !fallback {
                    &cat.local
                } else {
                    &cat.cluster
                };
                let real: BTreeMap<SocketAddr, u32> = picked
                    .iter()
                    .map(|e| (SocketAddr::new(e.endpoint.address, e.port), 1))
                    .collect();
                let refusal = picked.is_empty().then_some(if local && cat.has_any {
                    Refusal::Drop
                } else {
                    Refusal::Reject
                });
                let elements = self.elements_of(
                    svc,
                    family,
                    &fe,
                    Marks {
                        local,
                        refusal,
                        no_local: fallback && !picked.is_empty(),
                        hairpin: picked
                            .iter()
                            .filter(|e| {
                                e.endpoint.node_name.as_deref() == Some(self.node.name.as_str())
                            })
                            .map(|e| (e.endpoint.address, e.port))
                            .collect(),
                    },
                );
                let addresses: Vec<(IpAddr, bool)> = match fe.frontend.address {
                    Some(a) => vec![(a, true)],
                    None => node_port_addresses(&self.node, family)
                        .into_iter()
                        .map(|a| (a, false))
                        .collect(),
                };
                for (addr, bind) in addresses {
                    let key = vs_key(
                        fe.frontend.protocol,
                        SocketAddr::new(addr, fe.frontend.port),
                    );
                    let service = self.virtual_server(svc, key);
                    out.push(Claim {
                        key,
                        rank: fe.rank.clone(),
                        server: Server {
                            service,
                            real: real.clone(),
                            bind,
                            owner: Some(svc.port_name(port)),
                        },
                        frontend: fe.frontend,
                        kind: fe.kind,
                        elements: elements.clone(),
                    });
                }
            }
        }
        out
    }

    /// What one frontend of `svc` puts in the nftables part (see [`table`]).
    fn elements_of(
        &self,
        svc: &Service,
        family: IpFamily,
        fe: &rudder_compiler::ClaimedFrontend,
        marks: Marks,
    ) -> Arc<[Element]> {
        let f = nft_family(family);
        let proto = l4(fe.frontend.protocol);
        let port = fe.frontend.port;
        let mut out = Vec::new();
        let el = |set, key| Element::new(f, set, key);
        match fe.frontend.address {
            Some(addr) => {
                let key = frontend_key(addr, proto, port);
                out.push(el(SetKind::VipAddresses, Key::new([Atom::ip(addr)])));
                out.push(el(
                    match (fe.kind, marks.local) {
                        (FrontendKind::ClusterIp, _) => SetKind::ClusterIps,
                        (_, true) => SetKind::LocalIps,
                        (_, false) => SetKind::ExternalIps,
                    },
                    key.clone(),
                ));
                if let Some(r) = marks.refusal {
                    out.push(Element::refused(
                        f,
                        SetKind::NoEndpointServices,
                        key.clone(),
                        r,
                    ));
                }
                if marks.no_local {
                    out.push(el(SetKind::NoLocalEndpointServices, key.clone()));
                }
                if fe.kind == FrontendKind::IngressIp {
                    let lb_ips: Vec<IpAddr> = svc
                        .load_balancer_ips
                        .iter()
                        .copied()
                        .filter(|ip| IpFamily::of(ip) == family)
                        .collect();
                    if let Some(sources) = allowed_sources(svc, family, &self.node.ips, &lb_ips) {
                        out.push(el(SetKind::FirewallIps, key.clone()));
                        for src in sources {
                            let mut k = key.atoms().to_vec();
                            k.push(Atom::Prefix(src.addr(), src.prefix_len()));
                            out.push(el(SetKind::FirewallAllow, Key::new(k)));
                        }
                    }
                }
            }
            None => {
                let key = port_key(proto, port);
                if !marks.local {
                    out.push(el(SetKind::Nodeports, key.clone()));
                }
                if let Some(r) = marks.refusal {
                    out.push(Element::refused(
                        f,
                        SetKind::NoEndpointNodeports,
                        key.clone(),
                        r,
                    ));
                }
                if marks.no_local {
                    out.push(el(SetKind::NoLocalEndpointNodeports, key));
                }
            }
        }
        for (ip, p) in marks.hairpin {
            let a = Atom::ip(ip);
            out.push(el(
                SetKind::Hairpin,
                Key::new([a.clone(), a, Atom::Proto(proto), Atom::Port(p)]),
            ));
        }
        if let Some(hc) = svc.health_check_node_port {
            out.push(el(SetKind::HealthCheckPorts, Key::new([Atom::Port(hc)])));
        }
        out.into()
    }

    /// The virtual server of `key` for `svc`: the scheduler, `mh-port` for `mh`, and
    /// persistence for ClientIP affinity.
    fn virtual_server(&self, svc: &Service, key: VsKey) -> VirtualServer {
        let mut vs = VirtualServer::new(key, self.options.scheduler.clone());
        if self.options.scheduler == Scheduler::MaglevHashing {
            vs.flags = ServiceFlags {
                sched2: true,
                ..ServiceFlags::default()
            };
        }
        if let Some(t) = svc.session_affinity_timeout {
            vs = vs.persistent(t);
        }
        vs
    }
}

impl Server {
    /// The virtual server's address (every server Rudder makes has one).
    fn service_addr(&self) -> IpAddr {
        match self.service.key {
            VsKey::Addr { addr, .. } => addr.ip(),
            VsKey::Fwmark { .. } => IpAddr::from([0, 0, 0, 0]),
        }
    }
}

/// What decides a frontend's nftables elements besides its address.
struct Marks {
    /// Its traffic policy is `Local`.
    local: bool,
    /// Without usable endpoints: what happens to its new connections.
    refusal: Option<Refusal>,
    /// An external `Local` policy that fell back to the cluster's endpoints.
    no_local: bool,
    /// The endpoints on this node it may pick (for hairpin masquerade).
    hairpin: Vec<(IpAddr, u16)>,
}

/// The nftables family of an IP family.
fn nft_family(f: IpFamily) -> Family {
    match f {
        IpFamily::V4 => Family::Ip,
        IpFamily::V6 => Family::Ip6,
    }
}

fn l4(p: Protocol) -> L4Proto {
    match p {
        Protocol::Tcp => L4Proto::Tcp,
        Protocol::Udp => L4Proto::Udp,
        Protocol::Sctp => L4Proto::Sctp,
    }
}

/// What the target held, before a recompile, of what it touched.
#[derive(Debug, Default)]
struct Before {
    servers: BTreeMap<VsKey, Option<Server>>,
    addresses: BTreeMap<IpAddr, bool>,
}

fn addr_of(key: &VsKey) -> Option<IpAddr> {
    match key {
        VsKey::Addr { addr, .. } => Some(addr.ip()),
        VsKey::Fwmark { .. } => None,
    }
}

pub(crate) fn vs_key(protocol: Protocol, addr: SocketAddr) -> VsKey {
    match protocol {
        Protocol::Tcp => VsKey::tcp(addr),
        Protocol::Udp => VsKey::udp(addr),
        Protocol::Sctp => VsKey::sctp(addr),
    }
}

/// The addresses node ports are served on in `family`: the node-port addresses, or, when
/// every local address is one (`NodePortIps::All`), the local addresses the context lists
/// (kube-proxy's IPVS mode takes every local address but loopback and `kube-ipvs0`'s), or
/// the node's primary IPs when it lists none (offline).
fn node_port_addresses(node: &NodeContext, family: IpFamily) -> Vec<IpAddr> {
    let all = match &node.node_port_ips {
        NodePortIps::Only(ips) => ips.clone(),
        NodePortIps::All if node.local_ips.is_empty() => node.ips.clone(),
        NodePortIps::All => node.local_ips.clone(),
    };
    let mut v: Vec<IpAddr> = all
        .into_iter()
        .filter(|a| IpFamily::of(a) == family && !a.is_loopback())
        .collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests;
