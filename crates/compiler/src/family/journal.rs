//! The journal that undoes an update whose transaction was not applied.

use super::*;

impl FamilyCompiler {
    /// Starts recording what the next updates change, for [`FamilyCompiler::rollback`].
    pub(crate) fn begin_journal(&mut self) {
        self.journal = Some(Journal {
            classes: self.classes.clone(),
            no_local: self.no_local,
            ..Journal::default()
        });
    }

    /// Stops recording and returns what was recorded.
    pub(crate) fn end_journal(&mut self) -> Journal {
        self.journal.take().unwrap_or_default()
    }

    /// Puts back every entry the journaled updates changed.
    pub(crate) fn rollback(&mut self, j: Journal) {
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
}
