//! The minimal transaction between two rulesets.

use crate::ruleset::{Ruleset, Table};
use crate::tx::{Op, TableRef, Transaction};

/// The transaction that turns `old` into `new`: applying it to `old` yields exactly `new`.
///
/// Objects are compared by value: unchanged chains, sets and elements produce no operation;
/// a chain whose rules changed is flushed and refilled; a changed map element is deleted and
/// re-added. Operations are ordered so the kernel accepts them in one transaction: new
/// tables, chains and sets first, then flushes and element deletions (which drop references),
/// then element additions and rules, and deletions of sets, chains and tables last.
///
/// The cost is linear in the size of both rulesets; the compiler's incremental path avoids
/// calling this on every sync.
pub fn diff(old: &Ruleset, new: &Ruleset) -> Transaction {
    let empty = Table::default();
    let mut creates = Vec::new();
    let mut drops = Vec::new();
    let mut fills = Vec::new();
    let mut removes = Vec::new();

    for (tref, new_t) in &new.tables {
        let old_t = old.tables.get(tref);
        if old_t.is_none() {
            creates.push(Op::AddTable(tref.clone()));
        }
        diff_table(
            tref,
            old_t.unwrap_or(&empty),
            new_t,
            &mut creates,
            &mut drops,
            &mut fills,
            &mut removes,
        );
    }
    for tref in old.tables.keys() {
        if !new.tables.contains_key(tref) {
            removes.push(Op::DeleteTable(tref.clone()));
        }
    }
    let mut tx = Transaction::new();
    for op in creates.into_iter().chain(drops).chain(fills).chain(removes) {
        tx.push(op);
    }
    tx
}

fn diff_table(
    t: &TableRef,
    old: &Table,
    new: &Table,
    creates: &mut Vec<Op>,
    drops: &mut Vec<Op>,
    fills: &mut Vec<Op>,
    removes: &mut Vec<Op>,
) {
    // Sets that go away or change type: chains that use them must drop those references
    // (flush) before the set is deleted, and get their rules back afterwards.
    let replaced: std::collections::BTreeSet<&crate::Name> = old
        .sets
        .iter()
        .filter(|(n, os)| new.sets.get(*n).is_none_or(|ns| ns.decl != os.decl))
        .map(|(n, _)| n)
        .collect();
    let uses_replaced = |rules: &[crate::Rule]| {
        rules
            .iter()
            .flat_map(|r| &r.stmts)
            .any(|st| st.set_refs().is_some_and(|n| replaced.contains(n)))
    };
    // Chains.
    for (name, nc) in &new.chains {
        match old.chains.get(name) {
            None => {
                creates.push(Op::AddChain(t.clone(), nc.decl.clone()));
                for r in &nc.rules {
                    fills.push(Op::AddRule(t.clone(), name.clone(), r.clone()));
                }
            }
            Some(oc) if oc.decl != nc.decl => {
                // A base chain's hook or priority cannot change in place.
                drops.push(Op::FlushChain(t.clone(), name.clone()));
                drops.push(Op::DeleteChain(t.clone(), name.clone()));
                drops.push(Op::AddChain(t.clone(), nc.decl.clone()));
                for r in &nc.rules {
                    fills.push(Op::AddRule(t.clone(), name.clone(), r.clone()));
                }
            }
            Some(oc) if oc.rules != nc.rules => {
                drops.push(Op::FlushChain(t.clone(), name.clone()));
                for r in &nc.rules {
                    fills.push(Op::AddRule(t.clone(), name.clone(), r.clone()));
                }
            }
            Some(oc) if uses_replaced(&oc.rules) => {
                drops.push(Op::FlushChain(t.clone(), name.clone()));
                for r in &nc.rules {
                    fills.push(Op::AddRule(t.clone(), name.clone(), r.clone()));
                }
            }
            Some(_) => {}
        }
    }
    for (name, oc) in &old.chains {
        if !new.chains.contains_key(name) {
            if !oc.rules.is_empty() {
                drops.push(Op::FlushChain(t.clone(), name.clone()));
            }
            removes.push(Op::DeleteChain(t.clone(), name.clone()));
        }
    }
    // Sets and maps.
    for (name, ns) in &new.sets {
        match old.sets.get(name) {
            Some(os) if os.decl == ns.decl => {
                let mut del = Vec::new();
                let mut add = Vec::new();
                for (k, ov) in &os.elements {
                    match ns.elements.get(k) {
                        Some(nv) if nv == ov => {}
                        _ => del.push(k.clone()),
                    }
                }
                for (k, nv) in &ns.elements {
                    if os.elements.get(k) != Some(nv) {
                        add.push((k.clone(), nv.clone()));
                    }
                }
                if !del.is_empty() {
                    drops.push(Op::DeleteElements(t.clone(), name.clone(), del));
                }
                if !add.is_empty() {
                    fills.push(Op::AddElements(t.clone(), name.clone(), add));
                }
            }
            changed => {
                if let Some(os) = changed {
                    // The type changed: replace the set. Rules that use it were flushed above
                    // only if they changed too; the compiler never changes a used set's type.
                    drops.push(Op::DeleteSet(t.clone(), name.clone(), os.decl.is_map()));
                    drops.push(Op::AddSet(t.clone(), ns.decl.clone()));
                } else {
                    creates.push(Op::AddSet(t.clone(), ns.decl.clone()));
                }
                let elems: Vec<_> = ns
                    .elements
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if !elems.is_empty() {
                    fills.push(Op::AddElements(t.clone(), name.clone(), elems));
                }
            }
        }
    }
    for (name, os) in &old.sets {
        if !new.sets.contains_key(name) {
            removes.insert(0, Op::DeleteSet(t.clone(), name.clone(), os.decl.is_map()));
        }
    }
}

// Kept here, not in `ruleset`, so that `diff` depends on `ruleset` and never the other way.
impl Ruleset {
    /// The transaction that creates this ruleset from nothing.
    pub fn to_transaction(&self) -> Transaction {
        diff(&Ruleset::new(), self)
    }
}
