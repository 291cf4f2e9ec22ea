//! When the kernel refuses a sync: the services at fault are found with dry runs and held
//! back, and everything else is applied.
//!
//! A full sync is bisected over every service: each dry run is a full compile without the
//! services not (yet) included, validated by the kernel (it costs the kernel about what
//! applying it would). A partial sync is bisected over the
//! services it changed: the compiler is rolled back to what the kernel holds, and each dry
//! run is the update of some of them, rolled back again after the kernel's answer. Services
//! refused last time (the *suspects*) are tried after the others, so a known offender costs
//! one more dry run.

use std::collections::BTreeSet;
use std::time::Duration;

use rudder_compiler::Undo;
use rudder_model::ServiceKey;
use rudder_nft::TxStats;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{Dataplane, NftMode, all_services};
use crate::isolate::isolate;
use crate::mode::{DataplaneError, Failure, SyncRequest};
use rudder_model::ProxyState;

/// Most dry runs one sync makes to find refused services: enough for one offender among a
/// million services (about `2 × log2(n)` in the worst case), or a few among thousands. What is
/// not decided then is tried again by the next sync.
pub const MAX_DRY_RUNS: usize = 40;

/// What the sync applied after isolating the refused services.
pub(super) struct Isolated {
    /// The result of applying everything but the refused (and undecided) services.
    pub result: Result<usize, DataplaneError>,
    /// What that transaction held.
    pub stats: TxStats,
    /// Time spent compiling the dry runs and the final transaction.
    pub compile: Duration,
    /// Dry runs made.
    pub dry_runs: usize,
    /// The services found refused, each with the error of the dry run that refused it.
    pub refused: Vec<(ServiceKey, String)>,
    /// The services not decided on (out of dry runs): left out, or left as they were.
    pub undecided: Vec<ServiceKey>,
}

/// The answer of one dry run, as [`isolate`] wants it.
fn verdict<D: Dataplane>(
    dataplane: &mut D,
    tx: &rudder_nft::Transaction,
) -> Result<Result<(), String>, DataplaneError> {
    match dataplane.check(tx) {
        None => Err("the dataplane cannot make dry runs".into()),
        Some(Ok(())) => Ok(Ok(())),
        Some(Err(e)) if dataplane.classify(&e) == Failure::Other => Err(e),
        Some(Err(e)) => Ok(Err(e.to_string())),
    }
}

/// The candidates in the order to try them: those not suspected first, then the suspects.
fn groups(candidates: Vec<ServiceKey>, suspects: &BTreeSet<ServiceKey>) -> Vec<Vec<ServiceKey>> {
    let (sus, others): (Vec<_>, Vec<_>) =
        candidates.into_iter().partition(|k| suspects.contains(k));
    vec![others, sus]
}

impl<D: Dataplane> NftMode<D> {
    /// After the dataplane refused a sync (with `error`), or before applying a sync that
    /// tries held-back services again: finds the refused services, adds them to the
    /// quarantine, and applies the rest. `undo` undoes the compile of a partial sync;
    /// `periodic_retry` says the sync is the periodic retry of the quarantine (whose services
    /// still refused are logged quietly). `None` when the search cannot be made (the
    /// dataplane makes no dry runs): the sync's failure stands. When even the tables without
    /// any service are refused, no service is held back and the sync fails.
    pub(super) fn isolate_refused(
        &mut self,
        state: &ProxyState,
        request: SyncRequest<'_>,
        undo: Option<Undo>,
        error: &str,
    ) -> Option<Isolated> {
        let full = request.scope.is_full();
        let suspects = request.suspects;
        let periodic_retry = request.periodic_retry;
        let empty = BTreeSet::new();
        let dirty = match request.scope {
            crate::mode::Scope::Partial(d) => d,
            crate::mode::Scope::Full => &empty,
        };
        let t0 = Instant::now();
        let mut compile = Duration::ZERO;
        let mut dry_runs = 0;
        let mut extra_dry_runs = 0;
        let all: Vec<ServiceKey> = if full {
            all_services(state)
        } else {
            Vec::new()
        };
        let outcome = if full {
            let candidates = groups(all.clone(), suspects);
            let compiler = &mut self.compiler;
            let dataplane = &mut self.dataplane;
            let mut baseline_checked = false;
            isolate(candidates, MAX_DRY_RUNS - 1, |accepted, _refused, trial| {
                let included: BTreeSet<&ServiceKey> = accepted.iter().chain(trial).collect();
                let t = Instant::now();
                compiler.set_excluded(
                    all.iter()
                        .filter(|k| !included.contains(k))
                        .cloned()
                        .collect(),
                );
                let tx = compiler.full(state);
                compile += t.elapsed();
                let answer = verdict(dataplane, &tx)?;
                // Nothing passed yet: are the tables without any service refused too? Then
                // no service is at fault, and none is held back.
                if answer.is_err() && accepted.is_empty() && !baseline_checked {
                    baseline_checked = true;
                    let t = Instant::now();
                    compiler.set_excluded(all.iter().cloned().collect());
                    let base = compiler.full(state);
                    compile += t.elapsed();
                    extra_dry_runs += 1;
                    if let Err(e) = verdict(dataplane, &base)? {
                        return Err(DataplaneError::from(format!(
                            "the kernel refuses Rudder's tables even without any service ({e}), so no service is held back"
                        )));
                    }
                }
                Ok(answer)
            })
        } else {
            // Back to what the kernel holds; each dry run is then an update of some of the
            // changed services, rolled back after the kernel's answer.
            self.compiler.rollback(undo?);
            let quarantined: &BTreeSet<ServiceKey> = request.held_back;
            let candidates = groups(dirty.iter().cloned().collect(), suspects);
            let compiler = &mut self.compiler;
            let dataplane = &mut self.dataplane;
            isolate(candidates, MAX_DRY_RUNS, |accepted, refused, trial| {
                let changed: BTreeSet<ServiceKey> = accepted
                    .iter()
                    .chain(trial)
                    .chain(refused)
                    .cloned()
                    .collect();
                let t = Instant::now();
                compiler.set_excluded(quarantined.iter().chain(refused).cloned().collect());
                let (tx, undo) = compiler.update_undoable(state, &changed);
                compile += t.elapsed();
                let answer = verdict(dataplane, &tx);
                compiler.rollback(undo);
                answer
            })
        };
        dry_runs += extra_dry_runs;
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                warn!("cannot look for the services the kernel refuses: {e}");
                return Some(Isolated {
                    result: Err(e),
                    stats: TxStats::default(),
                    compile,
                    dry_runs,
                    refused: Vec::new(),
                    undecided: Vec::new(),
                });
            }
        };
        dry_runs += outcome.dry_runs;
        // The services held back from now on: those held back already, and those refused.
        let held_back: BTreeSet<ServiceKey> = request
            .held_back
            .iter()
            .chain(outcome.refused.iter().map(|(k, _)| k))
            .cloned()
            .collect();
        // Undecided services wait for the next sync (the loop marks them changed), which
        // decides on them with a budget of its own: a full sync leaves them out, a partial
        // one leaves them as they were.
        let t = Instant::now();
        let tx = if full {
            self.compiler.set_excluded(
                held_back
                    .iter()
                    .chain(&outcome.undecided)
                    .cloned()
                    .collect(),
            );
            self.compiler.full(state)
        } else {
            self.compiler.set_excluded(held_back);
            let changed: BTreeSet<ServiceKey> = outcome
                .accepted
                .iter()
                .chain(outcome.refused.iter().map(|(k, _)| k))
                .cloned()
                .collect();
            self.compiler.update(state, &changed)
        };
        compile += t.elapsed();
        let stats = tx.stats();
        let result = self.dataplane.apply(&tx);
        let first: Vec<String> = outcome
            .refused
            .iter()
            .take(5)
            .map(|(k, _)| k.to_string())
            .collect();
        let elapsed_ms = t0.elapsed().as_secs_f64() * 1e3;
        let kind = if full { "full" } else { "partial" };
        let (refused, accepted, undecided) = (
            outcome.refused.len(),
            outcome.accepted.len(),
            outcome.undecided.len(),
        );
        if outcome.refused.is_empty() {
            info!(
                kind,
                accepted,
                undecided,
                dry_runs,
                elapsed_ms,
                "the kernel refused the sync ({error}) but took every service in dry runs"
            );
        } else if periodic_retry && outcome.refused.iter().all(|(k, _)| suspects.contains(k)) {
            debug!(
                kind,
                refused,
                accepted,
                dry_runs,
                elapsed_ms,
                first = ?first,
                "services held back are still refused by the kernel ({error})"
            );
        } else {
            warn!(
                kind,
                refused,
                accepted,
                undecided,
                dry_runs,
                elapsed_ms,
                first = ?first,
                "the kernel refused the sync ({error}); the services at fault are held back, everything else is applied"
            );
        }
        Some(Isolated {
            result,
            stats,
            compile,
            dry_runs,
            refused: outcome.refused,
            undecided: outcome.undecided,
        })
    }
}
