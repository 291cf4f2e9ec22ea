//! The nftables proxy mode: the compiler and an nftables writer behind [`ProxyMode`].
//!
//! [`NftMode`] compiles the state with [`rudder_compiler::Compiler`] into nftables
//! [`Transaction`]s and hands them to a [`Dataplane`]: the kernel in the binary (nf_tables
//! netlink, or the `nft` program), an in-memory [`Ruleset`] in tests. When the kernel refuses
//! a transaction, it finds the services at fault with dry runs ([`crate::isolate`]) and
//! applies everything else. It knows no kernel API itself: that is the dataplane's.

mod isolate;

use std::collections::BTreeMap;

use rudder_compiler::explain::{Explanation, Query};
use rudder_compiler::{Compiler, NodeContext};
use rudder_model::{IpFamily, Problem, ProxyState, Service};
use rudder_nft::{Ruleset, TableRef, Transaction};
use tokio::time::Instant;

use crate::mode::{DataplaneError, Failure, Outcome, ProxyMode, Scope, SyncRequest, Written};

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

    /// The shape of `table` as the dataplane holds it (see [`Shape`]), for drift detection
    /// before periodic full resyncs; `None` when the dataplane cannot tell.
    fn shape(&mut self, _table: &TableRef) -> Option<Result<Shape, DataplaneError>> {
        None
    }
}

/// A table's shape: rules per chain (`chain NAME`) and elements per static set or map
/// (`set NAME`; sets the packet path updates are left out). Differences between the shape
/// Rudder programmed and the kernel's are drift: changes made behind Rudder's back.
pub type Shape = BTreeMap<String, usize>;

/// The shape of a table as Rudder programmed it.
pub fn expected_shape(table: &rudder_nft::Table) -> Shape {
    let mut s = Shape::new();
    for (name, chain) in &table.chains {
        s.insert(format!("chain {name}"), chain.rules.len());
    }
    for (name, set) in &table.sets {
        let dynamic = set.decl.flags.iter().any(|f| {
            matches!(
                f,
                rudder_nft::SetFlag::Dynamic | rudder_nft::SetFlag::Timeout
            )
        }) || set.decl.timeout_secs.is_some();
        if !dynamic {
            s.insert(format!("set {name}"), set.elements.len());
        }
    }
    s
}

/// What differs between two shapes, for the log (at most a few entries).
pub fn shape_diff(expected: &Shape, actual: &Shape) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in expected {
        match actual.get(k) {
            None => out.push(format!("{k} missing")),
            Some(a) if a != v => out.push(format!("{k}: {a} instead of {v}")),
            Some(_) => {}
        }
    }
    // Extra chains are drift; extra sets may be the dynamic ones the expectation leaves out.
    for k in actual.keys() {
        if k.starts_with("chain ") && !expected.contains_key(k) {
            out.push(format!("{k} unexpected"));
        }
    }
    out
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

    fn shape(&mut self, table: &TableRef) -> Option<Result<Shape, DataplaneError>> {
        Some(Ok(self
            .tables
            .get(table)
            .map(expected_shape)
            .unwrap_or_default()))
    }
}

/// The nftables mode over a [`Dataplane`].
pub struct NftMode<D> {
    compiler: Compiler,
    dataplane: D,
}

impl<D: Dataplane> NftMode<D> {
    /// The mode compiling with `compiler` and writing to `dataplane`.
    pub fn new(compiler: Compiler, dataplane: D) -> NftMode<D> {
        NftMode {
            compiler,
            dataplane,
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
        let mut result = if probe_first {
            Err(DataplaneError::from(
                "services held back are tried in dry runs first",
            ))
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
        let mut actual = Vec::new();
        for table_ref in self.compiler.tables() {
            match self.dataplane.shape(&table_ref)? {
                Err(e) => return Some(Err(format!("cannot read {table_ref}: {e}").into())),
                Ok(shape) => actual.push((table_ref, shape)),
            }
        }
        let expected = self.compiler.ruleset().ok()?;
        let mut differences = Vec::new();
        for (table_ref, shape) in &actual {
            let Some(table) = expected.tables.get(table_ref) else {
                continue;
            };
            for d in shape_diff(&expected_shape(table), shape) {
                differences.push(format!("{table_ref}: {d}"));
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
