//! The nftables proxy mode: the compiler and an nftables writer behind [`ProxyMode`].
//!
//! [`NftMode`] compiles the state with [`rudder_compiler::Compiler`] into nftables
//! [`Transaction`]s and hands them to a [`Dataplane`]: the kernel in the binary (nf_tables
//! netlink, or the `nft` program), an in-memory [`Ruleset`] in tests. When the kernel refuses
//! a transaction, it finds the services at fault with dry runs ([`crate::isolate`]) and
//! applies everything else. It knows no kernel API itself: that is the dataplane's.
//!
//! What the kernel holds is read back through [`Dataplane::read`] as tables of the IR: drift
//! checks compare content ([`table_diff`]), and a full sync after the first one, when the
//! tables can be read, writes only the difference between them and the compiled ruleset
//! ([`repair`]), keeping the elements the packet path learned (session affinity). The first
//! full sync of a run, and any full sync whose tables cannot be read, replace the tables
//! atomically.

mod content;
mod isolate;

use rudder_compiler::explain::{Explanation, Query};
use rudder_compiler::{Compiler, NodeContext};
use rudder_model::{IpFamily, Problem, ProxyState, Service};
use rudder_nft::{Ruleset, Table, TableRef, Transaction};
use tokio::time::Instant;

use crate::mode::{DataplaneError, Failure, Outcome, ProxyMode, Scope, SyncRequest, Written};

pub use content::{repair, table_diff, updated_by_packets};
pub use isolate::MAX_DRY_RUNS;

/// Where nftables transactions go: the kernel in the binary, an in-memory ruleset in tests.
pub trait Dataplane: Send {
    /// Applies `tx` atomically; returns the number of bytes sent, when that means anything.
    fn apply(&mut self, tx: &Transaction) -> Result<usize, DataplaneError>;

    /// Validates `tx` completely, as [`Dataplane::apply`] would, without applying it (a dry
    /// run); `None` when the dataplane cannot. The mode uses dry runs to find the services
    /// whose rules are refused, so without them one refused service fails every sync.
    fn check(&mut self, _tx: &Transaction) -> Option<Result<(), DataplaneError>> {
        None
    }

    /// Whether [`Dataplane::check`] makes dry runs (returns `Some`).
    fn supports_dry_runs(&self) -> bool {
        false
    }

    /// What kind of failure `error` (from [`Dataplane::apply`] or [`Dataplane::check`]) is.
    fn classify(&self, _error: &DataplaneError) -> Failure {
        Failure::Refused
    }

    /// `table` as the dataplane holds it (`None`: it does not exist), for drift checks and
    /// repairs by difference; `expected` is the table Rudder programmed, which a reader that
    /// compares rules as bytecode matches them with. `None` when the dataplane cannot read
    /// its tables back.
    fn read(
        &mut self,
        _table: &TableRef,
        _expected: Option<&Table>,
    ) -> Option<Result<Option<Table>, DataplaneError>> {
        None
    }
}

impl Dataplane for Ruleset {
    fn apply(&mut self, tx: &Transaction) -> Result<usize, DataplaneError> {
        Ruleset::apply(self, tx).map_err(|e| Box::new(e) as DataplaneError)?;
        Ok(0)
    }

    fn supports_dry_runs(&self) -> bool {
        true
    }

    fn check(&mut self, tx: &Transaction) -> Option<Result<(), DataplaneError>> {
        let mut copy = self.clone();
        Some(
            Ruleset::apply(&mut copy, tx)
                .map(|_| ())
                .map_err(|e| Box::new(e) as DataplaneError),
        )
    }

    fn classify(&self, error: &DataplaneError) -> Failure {
        match error.downcast_ref::<rudder_nft::ApplyError>() {
            Some(e) if e.is_not_found() => Failure::NotFound,
            _ => Failure::Refused,
        }
    }

    fn read(
        &mut self,
        table: &TableRef,
        _expected: Option<&Table>,
    ) -> Option<Result<Option<Table>, DataplaneError>> {
        Some(Ok(self.tables.get(table).cloned()))
    }
}

/// The nftables mode over a [`Dataplane`].
pub struct NftMode<D> {
    compiler: Compiler,
    dataplane: D,
    /// Whether a sync of this run went through: later full syncs repair by difference.
    programmed: bool,
}

impl<D: Dataplane> NftMode<D> {
    /// The mode compiling with `compiler` and writing to `dataplane`.
    pub fn new(compiler: Compiler, dataplane: D) -> NftMode<D> {
        NftMode {
            compiler,
            dataplane,
            programmed: false,
        }
    }

    /// The compiler.
    pub fn compiler(&self) -> &Compiler {
        &self.compiler
    }

    /// The dataplane.
    pub fn dataplane(&self) -> &D {
        &self.dataplane
    }

    /// The dataplane, to change it.
    pub fn dataplane_mut(&mut self) -> &mut D {
        &mut self.dataplane
    }

    /// The tables the mode owns.
    pub fn tables(&self) -> Vec<TableRef> {
        self.compiler.tables()
    }

    /// The tables as the dataplane holds them, with the compiler's view of them: `None` when
    /// the dataplane cannot read them back, the error when reading failed.
    fn read_all(&mut self) -> Option<Result<(Ruleset, Ruleset), DataplaneError>> {
        let expected = match self.compiler.ruleset() {
            Ok(r) => r,
            Err(e) => return Some(Err(format!("the compiler's own ruleset: {e}").into())),
        };
        let mut read = Vec::new();
        for t in self.compiler.tables() {
            match self.dataplane.read(&t, expected.tables.get(&t))? {
                Ok(table) => read.push((t, table)),
                Err(e) => return Some(Err(format!("cannot read {t}: {e}").into())),
            }
        }
        Some(Ok((content::ruleset_of(read), expected)))
    }

    /// The repair of a full sync, by difference with what the kernel holds; `None` when the
    /// tables must be replaced instead (first sync of the run, tables that cannot be read).
    fn repair_by_difference(&mut self) -> Option<Transaction> {
        if !self.programmed {
            return None;
        }
        match self.read_all()? {
            Ok((kernel, desired)) => Some(repair(&kernel, &desired)),
            Err(e) => {
                tracing::warn!(
                    "full sync: {e}; replacing the tables instead of repairing the difference"
                );
                None
            }
        }
    }
}

impl<D: Dataplane> ProxyMode for NftMode<D> {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn families(&self) -> Vec<IpFamily> {
        self.compiler.families()
    }

    fn node(&self) -> &NodeContext {
        self.compiler.node()
    }

    fn set_node(&mut self, node: NodeContext) {
        self.compiler
            .reconfigure(self.compiler.config().clone(), node);
    }

    fn sync(&mut self, state: &ProxyState, request: SyncRequest<'_>) -> Outcome {
        let full = request.scope.is_full();
        let t0 = Instant::now();
        self.compiler
            .set_excluded(request.held_back.iter().cloned().collect());
        let (tx, undo) = match request.scope {
            Scope::Full => (self.compiler.full(state), None),
            Scope::Partial(changed) => {
                let (tx, undo) = self.compiler.update_undoable(state, changed);
                (tx, Some(undo))
            }
        };
        let mut compile = t0.elapsed();
        let mut stats = tx.stats();
        let t1 = Instant::now();
        // Services held back are tried in dry runs first: applying them with everything
        // else would most likely be refused again.
        let probe_first = !request.suspects.is_empty() && self.dataplane.supports_dry_runs();
        // A full sync after the first: only the difference with what the kernel holds.
        let repair = if full && !probe_first {
            self.repair_by_difference()
        } else {
            None
        };
        let mut result = if probe_first {
            Err(DataplaneError::from(
                "services held back are tried in dry runs first",
            ))
        } else if let Some(repair) = &repair {
            match self.dataplane.apply(repair) {
                Ok(bytes) => {
                    stats = repair.stats();
                    Ok(bytes)
                }
                Err(e) => {
                    tracing::warn!(
                        "the repair by difference was refused ({e}): replacing the tables"
                    );
                    self.dataplane.apply(&tx)
                }
            }
        } else {
            self.dataplane.apply(&tx)
        };
        let mut dry_runs = 0;
        let mut isolation_compile = std::time::Duration::ZERO;
        let mut refused = Vec::new();
        let mut undecided = Vec::new();
        if let Err(e) = &result {
            let failure = if probe_first {
                Failure::Refused
            } else {
                self.dataplane.classify(e)
            };
            match failure {
                // A partial sync that misses an object: the kernel's tables are not what
                // Rudder programmed. Only a full sync can repair them.
                Failure::NotFound if !full => {}
                Failure::Other => {}
                Failure::Refused | Failure::NotFound => {
                    let reason = e.to_string();
                    if let Some(r) = self.isolate_refused(state, request, undo, &reason) {
                        dry_runs = r.dry_runs;
                        stats = r.stats;
                        compile += r.compile;
                        isolation_compile = r.compile;
                        result = r.result;
                        refused = r.refused;
                        undecided = r.undecided;
                    }
                }
            }
        }
        let apply = t1.elapsed().saturating_sub(isolation_compile);
        if result.is_ok() {
            self.programmed = true;
        }
        let result = result.map_err(|e| {
            let failure = self.dataplane.classify(&e);
            (e, failure)
        });
        Outcome {
            result,
            written: Written {
                objects: stats.objects,
                elements_added: stats.elements_added,
                elements_deleted: stats.elements_deleted,
            },
            compile,
            apply,
            dry_runs,
            refused,
            undecided,
        }
    }

    fn verify(&mut self) -> Option<Result<Vec<String>, DataplaneError>> {
        let (kernel, expected) = match self.read_all()? {
            Ok(both) => both,
            Err(e) => return Some(Err(e)),
        };
        let mut differences = Vec::new();
        for (t, want) in &expected.tables {
            for d in table_diff(want, kernel.tables.get(t)) {
                differences.push(format!("{t}: {d}"));
            }
        }
        Some(Ok(differences))
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
        rudder_compiler::explain::explain(
            state,
            self.compiler.config(),
            self.compiler.node(),
            query,
        )
    }
}

/// The services of `state` in key order (the candidates of a full sync's search).
fn all_services(state: &ProxyState) -> Vec<rudder_model::ServiceKey> {
    state.services().map(|s| s.key.clone()).collect()
}
