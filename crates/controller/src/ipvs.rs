//! The IPVS proxy mode: the IPVS compiler and an IPVS writer behind [`ProxyMode`].
//!
//! [`IpvsMode`] compiles the state with [`rudder_ipvs_compiler::IpvsCompiler`] into the
//! virtual servers, real servers and VIP addresses IPVS must hold, and hands the operations
//! to an [`IpvsDataplane`]: the kernel in the binary (generic netlink and the dummy
//! interface), an in-memory [`MemoryIpvs`] in tests. IPVS has no transactions, so a sync can
//! fail half-way; the loop then asks for a full sync, which reads what the kernel holds and
//! applies the difference ([`rudder_ipvs_compiler::diff`]) — the same path that repairs
//! changes made behind Rudder's back. A full sync with nothing to repair writes nothing.
//!
//! The mode's nftables part (masquerade marking, source ranges, frontends without
//! endpoints, the VIP filter: [`rudder_ipvs_compiler::table`]) goes to a second dataplane,
//! an nftables [`Dataplane`], the same writer the nftables mode uses. Its tables are
//! replaced atomically by the first sync of a run, repaired by difference by later full
//! syncs, and a partial sync writes only the elements that changed, before the IPVS
//! operations (so a new virtual server is never reachable before its filter lets it be).

use std::time::Instant;

use rudder_compiler::NodeContext;
use rudder_compiler::explain::{Explanation, Query};
use rudder_ipvs_compiler::{IpvsCompiler, Op, Target, diff};
use rudder_model::{IpFamily, Problem, ProxyState, Service};
use rudder_nft::{Ruleset, Transaction, TxStats};

use crate::mode::{DataplaneError, Failure, Outcome, ProxyMode, Scope, SyncRequest, Written};
use crate::nftables::{Dataplane, repair, table_diff};

/// Where IPVS operations go.
pub trait IpvsDataplane: Send {
    /// What the kernel holds: virtual servers with their real servers and weights, and the
    /// addresses on the dummy interface.
    fn read(&mut self) -> Result<Target, DataplaneError>;

    /// Applies `ops` in order; stops at the first failure.
    fn apply(&mut self, ops: &[Op]) -> Result<(), DataplaneError>;

    /// Whether the virtual server `key` is someone else's to remove (kube-proxy's
    /// `--ipvs-exclude-cidrs`): Rudder creates and changes it when a service wants it, but
    /// never deletes it or its real servers.
    fn excluded(&self, _key: &rudder_ipvs_compiler::VsKey) -> bool {
        false
    }
}

/// The operations that make `have` what the compiler wants, without removing anything
/// excluded (see [`IpvsDataplane::excluded`]).
fn ipvs_repair<D: IpvsDataplane>(dataplane: &D, have: &Target, want: &Target) -> Vec<Op> {
    diff(have, want)
        .into_iter()
        .filter(|op| match op {
            Op::DelService(k) | Op::Retire(k, _) => !dataplane.excluded(k),
            _ => true,
        })
        .collect()
}

/// IPVS in memory, with the kernel's rules for what it refuses (adding what exists, changing
/// what does not), for tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryIpvs {
    /// What it holds. Retired real servers are deleted at once (no connections here).
    pub target: Target,
    /// Virtual servers on addresses in these prefixes are excluded.
    pub exclude: Vec<rudder_model::Cidr>,
}

impl IpvsDataplane for MemoryIpvs {
    fn excluded(&self, key: &rudder_ipvs_compiler::VsKey) -> bool {
        match key {
            rudder_ipvs_compiler::VsKey::Addr { addr, .. } => {
                self.exclude.iter().any(|c| c.contains(&addr.ip()))
            }
            rudder_ipvs_compiler::VsKey::Fwmark { .. } => true,
        }
    }

    fn read(&mut self) -> Result<Target, DataplaneError> {
        Ok(self.target.clone())
    }

    fn apply(&mut self, ops: &[Op]) -> Result<(), DataplaneError> {
        let t = &mut self.target;
        for op in ops {
            let ok = match op {
                Op::Bind(a) => t.addresses.insert(*a),
                Op::Unbind(a) => t.addresses.remove(a),
                Op::AddService(vs) => t
                    .servers
                    .insert(
                        vs.key,
                        rudder_ipvs_compiler::Server {
                            service: vs.clone(),
                            real: Default::default(),
                            bind: false,
                            owner: None,
                        },
                    )
                    .is_none(),
                Op::EditService(vs) => match t.servers.get_mut(&vs.key) {
                    Some(s) => {
                        s.service = vs.clone();
                        true
                    }
                    None => false,
                },
                Op::DelService(k) => t.servers.remove(k).is_some(),
                Op::AddReal(k, a) => t
                    .servers
                    .get_mut(k)
                    .is_some_and(|s| s.real.insert(*a, 1).is_none()),
                Op::SetWeight(k, a, w) => t
                    .servers
                    .get_mut(k)
                    .and_then(|s| s.real.get_mut(a))
                    .map(|x| *x = *w)
                    .is_some(),
                Op::Retire(k, a) => t
                    .servers
                    .get_mut(k)
                    .is_some_and(|s| s.real.remove(a).is_some()),
            };
            if !ok {
                return Err(format!("refused: {op:?}").into());
            }
        }
        Ok(())
    }
}

/// The IPVS mode over an [`IpvsDataplane`] and, for its nftables part, a [`Dataplane`].
pub struct IpvsMode<D, N = Ruleset> {
    compiler: IpvsCompiler,
    dataplane: D,
    tables: N,
    /// Whether the nftables part was written in this run: later full syncs repair it by
    /// difference instead of replacing it.
    programmed: bool,
}

impl<D: IpvsDataplane, N: Dataplane> IpvsMode<D, N> {
    /// The mode compiling with `compiler`, writing IPVS to `dataplane` and its nftables part
    /// to `tables`.
    pub fn new(compiler: IpvsCompiler, dataplane: D, tables: N) -> IpvsMode<D, N> {
        IpvsMode {
            compiler,
            dataplane,
            tables,
            programmed: false,
        }
    }

    /// The nftables dataplane.
    pub fn tables(&self) -> &N {
        &self.tables
    }

    /// The nftables dataplane, to change it.
    pub fn tables_mut(&mut self) -> &mut N {
        &mut self.tables
    }

    /// The tables as the dataplane holds them; `None` when it cannot read them.
    fn read_tables(&mut self, expected: &Ruleset) -> Option<Result<Ruleset, DataplaneError>> {
        let mut read = Vec::new();
        for t in self.compiler.tables() {
            match self.tables.read(&t, expected.tables.get(&t))? {
                Ok(table) => read.push((t, table)),
                Err(e) => return Some(Err(format!("cannot read {t}: {e}").into())),
            }
        }
        Some(Ok(Ruleset {
            tables: read
                .into_iter()
                .filter_map(|(t, table)| table.map(|x| (t, x)))
                .collect(),
        }))
    }

    /// The nftables transaction of a full sync: the repair by difference once the tables
    /// were written in this run and can be read, else their atomic replacement.
    fn full_tables(&mut self) -> Result<Transaction, DataplaneError> {
        let desired = self
            .compiler
            .ruleset()
            .map_err(|e| format!("the compiler's own tables: {e}"))?;
        if self.programmed {
            match self.read_tables(&desired) {
                Some(Ok(kernel)) => return Ok(repair(&kernel, &desired)),
                Some(Err(e)) => tracing::warn!(
                    "full sync: {e}; replacing the tables instead of repairing the difference"
                ),
                None => {}
            }
        }
        let mut tx = Transaction::new();
        for t in self.compiler.tables() {
            tx.push(rudder_nft::Op::AddTable(t.clone()));
            tx.push(rudder_nft::Op::DeleteTable(t));
        }
        tx.extend(self.compiler.create_transaction());
        Ok(tx)
    }

    /// The dataplane.
    pub fn dataplane(&self) -> &D {
        &self.dataplane
    }

    /// The dataplane, to change it.
    pub fn dataplane_mut(&mut self) -> &mut D {
        &mut self.dataplane
    }

    /// The compiler.
    pub fn compiler(&self) -> &IpvsCompiler {
        &self.compiler
    }
}

/// What `ops` and the nftables transaction of `stats` change, in the loop's units.
fn written(ops: &[Op], stats: TxStats) -> Written {
    let mut w = Written {
        objects: stats.objects,
        elements_added: stats.elements_added,
        elements_deleted: stats.elements_deleted,
    };
    for op in ops {
        match op {
            Op::AddReal(..) | Op::Bind(_) => w.elements_added += 1,
            Op::Retire(..) | Op::Unbind(_) => w.elements_deleted += 1,
            _ => w.objects += 1,
        }
    }
    w
}

impl<D: IpvsDataplane, N: Dataplane> ProxyMode for IpvsMode<D, N> {
    fn name(&self) -> &'static str {
        "ipvs"
    }

    fn families(&self) -> Vec<IpFamily> {
        self.compiler.families().to_vec()
    }

    fn node(&self) -> &NodeContext {
        self.compiler.node()
    }

    fn set_node(&mut self, node: NodeContext) {
        self.compiler.set_node(node);
    }

    fn sync(&mut self, state: &ProxyState, request: SyncRequest<'_>) -> Outcome {
        let t0 = Instant::now();
        self.compiler.set_excluded(request.held_back.clone());
        let ops = match request.scope {
            Scope::Full => {
                self.compiler.full(state);
                let compile = t0.elapsed();
                // A full sync repairs by difference: only what the kernel lacks or has too
                // much is written.
                let t1 = Instant::now();
                match self
                    .full_tables()
                    .and_then(|tx| Ok((tx, self.dataplane.read()?)))
                {
                    Ok((tx, have)) => Ok((
                        tx,
                        ipvs_repair(&self.dataplane, &have, self.compiler.target()),
                        compile,
                        t1,
                    )),
                    Err(e) => Err((e, compile, t1)),
                }
            }
            Scope::Partial(changed) => {
                let ops: Vec<Op> = self
                    .compiler
                    .update(state, changed)
                    .into_iter()
                    .filter(|op| match op {
                        Op::DelService(k) | Op::Retire(k, _) => !self.dataplane.excluded(k),
                        _ => true,
                    })
                    .collect();
                let tx = self.compiler.take_table_changes();
                Ok((tx, ops, t0.elapsed(), Instant::now()))
            }
        };
        let (tx, ops, compile, t1) = match ops {
            Ok(x) => x,
            Err((e, compile, t1)) => {
                return Outcome {
                    result: Err((e, Failure::Other)),
                    written: Written::default(),
                    compile,
                    apply: t1.elapsed(),
                    dry_runs: 0,
                    refused: Vec::new(),
                    undecided: Vec::new(),
                };
            }
        };
        // The nftables part first: a new frontend passes the VIP filter before its virtual
        // server exists.
        let tables = if tx.is_empty() {
            Ok(0)
        } else {
            self.tables.apply(&tx).map_err(|e| {
                let failure = match self.tables.classify(&e) {
                    Failure::NotFound => Failure::NotFound,
                    _ => Failure::Other,
                };
                (format!("the nftables part: {e}").into(), failure)
            })
        };
        if tables.is_ok() && request.scope.is_full() {
            self.programmed = true;
        }
        let result = tables.and_then(|bytes| {
            if ops.is_empty() {
                Ok(bytes)
            } else {
                self.dataplane
                    .apply(&ops)
                    .map(|()| bytes)
                    .map_err(|e| (e, Failure::Other))
            }
        });
        Outcome {
            result,
            written: written(&ops, tx.stats()),
            compile,
            apply: t1.elapsed(),
            dry_runs: 0,
            refused: Vec::new(),
            undecided: Vec::new(),
        }
    }

    fn verify(&mut self) -> Option<Result<Vec<String>, DataplaneError>> {
        let have = match self.dataplane.read() {
            Ok(h) => h,
            Err(e) => return Some(Err(e)),
        };
        let mut out: Vec<String> = ipvs_repair(&self.dataplane, &have, self.compiler.target())
            .iter()
            .map(|op| format!("{op:?}"))
            .collect();
        let expected = match self.compiler.ruleset() {
            Ok(r) => r,
            Err(e) => return Some(Err(format!("the compiler's own tables: {e}").into())),
        };
        match self.read_tables(&expected) {
            Some(Ok(kernel)) => {
                for (t, want) in &expected.tables {
                    for d in table_diff(want, kernel.tables.get(t)) {
                        out.push(format!("{t}: {d}"));
                    }
                }
            }
            Some(Err(e)) => return Some(Err(e)),
            None => {}
        }
        Some(Ok(out))
    }

    fn refuses(&self, service: &Service) -> bool {
        self.compiler.refuses(service)
    }

    fn take_problems(&mut self) -> Vec<Problem> {
        self.compiler.take_problems()
    }

    fn no_local_endpoints(&self) -> Vec<(IpFamily, u64, u64)> {
        self.compiler.no_local_endpoints()
    }

    fn explain(&self, state: &ProxyState, query: &Query) -> Explanation {
        self.compiler.explain(state, query)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rudder_compiler::NodePortIps;
    use rudder_ipvs_compiler::Options;
    use rudder_model::{
        Endpoint, EndpointPort, EndpointSlice, Node, Protocol, ServiceKey, ServicePort,
    };

    use super::*;
    use crate::{Change, LoopConfig, NodeContextFn, SyncKind, SyncLoop};

    fn node() -> NodeContext {
        NodeContext::new(
            "node-a".into(),
            NodePortIps::Only(vec!["172.18.0.2".parse().unwrap()]),
        )
    }

    fn ipvs_loop() -> SyncLoop<IpvsMode<MemoryIpvs>> {
        let compiler = IpvsCompiler::new(&[IpFamily::V4], Options::default(), node());
        let ctx: NodeContextFn = Box::new(|_: Option<&Node>| node());
        let config = LoopConfig {
            min_sync_period: Duration::ZERO,
            node_wait: Duration::ZERO,
            ..LoopConfig::default()
        };
        SyncLoop::with_mode(
            IpvsMode::new(compiler, MemoryIpvs::default(), Ruleset::new()),
            ctx,
            config,
        )
    }

    fn svc(name: &str, ip: &str) -> Service {
        let mut s = Service::new(ServiceKey::new("ns", name), vec![ip.parse().unwrap()]);
        s.ports = vec![ServicePort {
            node_port: Some(30080),
            ..ServicePort::new("http", Protocol::Tcp, 80)
        }];
        s
    }

    fn slice(name: &str, ips: &[&str]) -> EndpointSlice {
        EndpointSlice::new(
            "ns",
            &format!("{name}-1"),
            name,
            IpFamily::V4,
            vec![EndpointPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8080,
            }],
            ips.iter()
                .map(|ip| Endpoint::new(ip.parse().unwrap()).on_node("node-b"))
                .collect(),
        )
    }

    fn reals(l: &SyncLoop<IpvsMode<MemoryIpvs>>) -> Vec<String> {
        l.mode()
            .dataplane()
            .target
            .servers
            .values()
            .flat_map(|s| s.real.keys().map(|a| a.to_string()))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn excluded_virtual_servers_are_never_deleted_and_wanted_ones_are_kept_there() {
        let mut l = ipvs_loop();
        // Someone else's virtual server in the excluded prefix, and the node port's (which
        // Rudder wants) in it too.
        l.mode_mut().dataplane_mut().exclude = vec!["172.18.0.0/24".parse().unwrap()];
        let theirs = rudder_ipvs_compiler::VsKey::tcp("172.18.0.9:80".parse().unwrap());
        MemoryIpvs::apply(
            l.mode_mut().dataplane_mut(),
            &[Op::AddService(rudder_ipvs::VirtualServer::new(
                theirs,
                rudder_ipvs::Scheduler::RoundRobin,
            ))],
        )
        .expect("theirs");
        l.apply_change(Change::Snapshot {
            services: vec![svc("web", "10.96.0.10")],
            slices: vec![slice("web", &["10.244.1.5"])],
            node: None,
            service_cidrs: Vec::new(),
        });
        l.sync().expect("a sync").expect("applied");
        let keys = |l: &SyncLoop<IpvsMode<MemoryIpvs>>| -> Vec<String> {
            l.mode()
                .dataplane()
                .target
                .servers
                .keys()
                .map(|k| format!("{k:?}"))
                .collect()
        };
        let all = keys(&l);
        assert_eq!(all.len(), 3, "{all:?}");
        assert!(all.iter().any(|k| k.contains("172.18.0.9:80")), "{all:?}");
        assert!(
            all.iter().any(|k| k.contains("172.18.0.2:30080")),
            "{all:?}"
        );
        // The next full syncs neither fail (the wanted one exists) nor delete theirs.
        for _ in 0..2 {
            tokio::time::advance(Duration::from_secs(3601)).await;
            let r = l.sync().expect("a full sync").expect("applied");
            assert_eq!((r.objects, r.elements_added, r.elements_deleted), (0, 0, 0));
        }
        assert_eq!(keys(&l), all);
        assert!(
            l.mode_mut()
                .verify()
                .expect("verifies")
                .expect("reads")
                .is_empty()
        );
        // The service goes: its ClusterIP server is deleted, the excluded node port's stays.
        l.apply_change(Change::ServiceDeleted(ServiceKey::new("ns", "web")));
        l.sync().expect("a sync").expect("applied");
        let left = keys(&l);
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(!left.iter().any(|k| k.contains("10.96.0.10")), "{left:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_programs_ipvs_and_repairs_it_by_difference() {
        let mut l = ipvs_loop();
        l.apply_change(Change::Snapshot {
            services: vec![svc("web", "10.96.0.10")],
            slices: vec![slice("web", &["10.244.1.5"])],
            node: None,
            service_cidrs: Vec::new(),
        });
        let r = l.sync().expect("a sync").expect("applied");
        assert_eq!(r.kind, SyncKind::Full);
        // ClusterIP and node port, one real server each; the ClusterIP is bound.
        assert_eq!(reals(&l), ["10.244.1.5:8080", "10.244.1.5:8080"]);
        let bound: Vec<String> = l
            .mode()
            .dataplane()
            .target
            .addresses
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(bound, ["10.96.0.10"]);
        // The nftables part holds the frontends.
        let tables = l.mode().tables().render();
        assert!(
            tables.contains("add element ip rudder cluster-ips { 10.96.0.10 . tcp . 80 }"),
            "{tables}"
        );
        assert!(tables.contains("vip-addresses { 10.96.0.10 }"), "{tables}");
        // A change is a partial sync of just that.
        l.apply_change(Change::SliceApplied(Box::new(slice(
            "web",
            &["10.244.1.5", "10.244.2.5"],
        ))));
        let r = l.sync().expect("a sync").expect("applied");
        assert_eq!(r.kind, SyncKind::Partial);
        assert_eq!((r.elements_added, r.elements_deleted, r.objects), (2, 0, 0));
        // Someone deletes a virtual server behind Rudder's back: the periodic full sync
        // writes back exactly that one, and nothing when nothing is missing.
        let key = *l
            .mode()
            .dataplane()
            .target
            .servers
            .keys()
            .next()
            .expect("a server");
        l.mode_mut().dataplane_mut().target.servers.remove(&key);
        tokio::time::advance(Duration::from_secs(3601)).await;
        let r = l.sync().expect("the hourly full sync").expect("applied");
        assert_eq!(r.kind, SyncKind::Full);
        assert_eq!((r.objects, r.elements_added), (1, 2), "{r:?}");
        assert_eq!(reals(&l).len(), 4);
        // The same for an element of the nftables part: one element written back.
        let t = rudder_nft::TableRef::new(
            rudder_nft::Family::Ip,
            rudder_nft::Name::new("rudder").unwrap(),
        );
        let mut tx = Transaction::new();
        tx.delete_elements(
            &t,
            &rudder_nft::Name::new("cluster-ips").unwrap(),
            vec![rudder_ipvs_compiler::table::frontend_key(
                "10.96.0.10".parse().unwrap(),
                rudder_nft::L4Proto::Tcp,
                80,
            )],
        );
        l.mode_mut()
            .tables_mut()
            .apply(&tx)
            .expect("deleted behind Rudder's back");
        let drift = l.mode_mut().verify().expect("verifies").expect("reads");
        assert!(
            !drift.is_empty() && drift.iter().all(|d| d.contains("cluster-ips")),
            "{drift:?}"
        );
        tokio::time::advance(Duration::from_secs(3601)).await;
        let r = l.sync().expect("a full sync").expect("applied");
        assert_eq!((r.objects, r.elements_added, r.elements_deleted), (0, 1, 0));
        assert!(
            l.mode_mut()
                .verify()
                .expect("verifies")
                .expect("reads")
                .is_empty()
        );
        tokio::time::advance(Duration::from_secs(3601)).await;
        let r = l.sync().expect("the next full sync").expect("applied");
        assert_eq!((r.objects, r.elements_added, r.elements_deleted), (0, 0, 0));
    }
}
