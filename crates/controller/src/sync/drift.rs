//! Drift: Rudder's tables changed behind its back, and their repair.
//!
//! Drift is seen two ways. The dataplane's change monitor reports changes others make to
//! Rudder's tables as they happen ([`DriftNotice`]); the loop repairs them with a full sync
//! at once (within the minimum sync period). And before every periodic full resync the loop
//! compares the kernel's tables with what it programmed, by content (every chain, rule, set
//! and element; [`crate::table_diff`]), which catches what happened while nobody watched. Either way the repair is counted once, when
//! the full sync that repairs it succeeds ([`LoopEvent::Drift`]).

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{LoopEvent, SyncLoop};
use crate::mode::ProxyMode;

/// What the dataplane's change monitor reports to the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriftNotice {
    /// Someone else changed Rudder's tables.
    Changed {
        /// What changed, one line per object and kind of change.
        changes: Vec<String>,
        /// Whether one of the tables was deleted (and is missing until the repair).
        tables_missing: bool,
    },
    /// Notifications were lost: the tables may have changed unseen, so the loop compares
    /// them with what it programmed.
    Lost,
}

/// At most this many lines of what changed are kept for the log and the event.
const KEPT: usize = 20;

impl<M: ProxyMode> SyncLoop<M> {
    /// Handles a notice of the change monitor.
    pub(super) fn drift_observed(&mut self, notice: DriftNotice) {
        if self.last_full.is_none() {
            // Nothing programmed in this run yet: the first full sync replaces the tables
            // anyway.
            debug!(?notice, "change of Rudder's tables before its first sync");
            return;
        }
        match notice {
            DriftNotice::Changed {
                changes,
                tables_missing,
            } => {
                warn!(
                    total = changes.len(),
                    changes = ?changes.iter().take(8).collect::<Vec<_>>(),
                    tables_missing,
                    "drift: Rudder's tables were changed behind its back; a full sync repairs them now"
                );
                if tables_missing {
                    self.health.set_tables_missing(true);
                }
                self.drift_seen(changes);
            }
            DriftNotice::Lost => {
                warn!(
                    "change notifications were lost (too many at once): comparing the kernel's tables with what Rudder programmed"
                );
                self.verify_pending = true;
            }
        }
    }

    /// Records drift to repair: the next sync is a full one, now.
    fn drift_seen(&mut self, mut changes: Vec<String>) {
        changes.truncate(KEPT);
        match &mut self.pending_drift {
            Some((pending, _)) => {
                pending.extend(changes);
                pending.truncate(KEPT);
            }
            None => self.pending_drift = Some((changes, Instant::now())),
        }
        self.needs_full = true;
        self.retry_at = None;
        self.health.queued();
    }

    /// After lost notifications: compares the tables with what Rudder programmed.
    pub(super) fn verify_tables(&mut self) {
        self.verify_pending = false;
        if self.last_full.is_none() || self.needs_full {
            return;
        }
        self.check_drift();
    }

    /// Compares the kernel's tables with what Rudder programmed, by content (sets the packet
    /// path updates left out); differences are drift, which the next full sync repairs.
    pub(super) fn check_drift(&mut self) {
        let differences = match self.mode.verify() {
            None => return,
            Some(Err(e)) => {
                warn!("cannot read Rudder's tables to check for drift: {e}");
                return;
            }
            Some(Ok(d)) => d,
        };
        if differences.is_empty() {
            debug!("no drift: the kernel's tables hold what Rudder programmed");
            return;
        }
        warn!(
            total = differences.len(),
            first = ?differences.iter().take(5).collect::<Vec<_>>(),
            "drift: the kernel's rules were changed behind Rudder's back; a full sync repairs them"
        );
        self.drift_seen(differences);
    }

    /// After a successful full sync: the drift seen before it is repaired.
    pub(super) fn drift_repaired(&mut self) {
        self.health.set_tables_missing(false);
        if let Some((differences, seen)) = self.pending_drift.take() {
            info!(
                after_ms = seen.elapsed().as_secs_f64() * 1e3,
                "drift repaired: Rudder's tables are what it programmed again"
            );
            self.emit(LoopEvent::Drift { differences });
        }
    }
}
