//! Comparing tables by content, and the repair by difference.
//!
//! What the dataplane reads back ([`super::Dataplane::read`]) is a [`Table`] of the IR, so
//! the kernel's tables and the ones Rudder programmed compare object by object: chain
//! declarations and rules (a rule Rudder did not write reads back as a placeholder that
//! names it), set declarations and every element with its value. Sets the packet path
//! updates (session affinity: dynamic, with timeouts) are left out of the element
//! comparison, and their elements are kept by a repair.

use rudder_nft::{Ruleset, Set, SetDecl, SetFlag, Table, TableRef, Transaction};

/// Most lines per chain or set in a list of differences.
const PER_OBJECT: usize = 3;

/// Whether the packet path adds elements to the set (session affinity), so that its
/// elements are not Rudder's to compare or to replace.
pub fn updated_by_packets(decl: &SetDecl) -> bool {
    decl.flags
        .iter()
        .any(|f| matches!(f, SetFlag::Dynamic | SetFlag::Timeout))
        || decl.timeout_secs.is_some()
}

fn set_diff(name: &str, want: &Set, got: &Set, out: &mut Vec<String>) {
    if want.decl != got.decl {
        out.push(format!("set {name}: declaration differs"));
        return;
    }
    if updated_by_packets(&want.decl) {
        return;
    }
    let (w, g) = (&want.elements, &got.elements);
    if w.len() != g.len() {
        out.push(format!(
            "set {name}: {} instead of {} elements",
            g.len(),
            w.len()
        ));
    }
    let mut lines = Vec::new();
    for (k, v) in w {
        match g.get(k) {
            None => lines.push(format!("set {name}: element {k} missing")),
            Some(gv) if gv != v => lines.push(format!(
                "set {name}: element {k}: {} instead of {}",
                show(gv.as_ref()),
                show(v.as_ref())
            )),
            Some(_) => {}
        }
        if lines.len() >= PER_OBJECT {
            break;
        }
    }
    for k in g.keys().filter(|k| !w.contains_key(*k)) {
        if lines.len() >= PER_OBJECT {
            break;
        }
        lines.push(format!("set {name}: unexpected element {k}"));
    }
    out.extend(lines);
}

fn show(v: Option<&rudder_nft::Value>) -> String {
    v.map_or_else(|| "no value".to_owned(), |v| v.to_string())
}

/// What differs between the table Rudder programmed (`want`) and the one read back (`got`;
/// `None`: it does not exist), one line per difference, a few per object.
pub fn table_diff(want: &Table, got: Option<&Table>) -> Vec<String> {
    let Some(got) = got else {
        return vec!["table missing".to_owned()];
    };
    let mut out = Vec::new();
    for (name, wc) in &want.chains {
        let Some(gc) = got.chains.get(name) else {
            out.push(format!("chain {name} missing"));
            continue;
        };
        if wc.decl != gc.decl {
            out.push(format!("chain {name}: declaration differs"));
        }
        if wc.rules != gc.rules {
            if wc.rules.len() != gc.rules.len() {
                out.push(format!(
                    "chain {name}: {} instead of {} rules",
                    gc.rules.len(),
                    wc.rules.len()
                ));
            }
            let changed = wc
                .rules
                .iter()
                .zip(&gc.rules)
                .enumerate()
                .filter(|(_, (w, g))| w != g)
                .take(PER_OBJECT);
            for (i, (w, g)) in changed {
                out.push(format!("chain {name}: rule {i} is `{g}` instead of `{w}`"));
            }
        }
    }
    for name in got.chains.keys().filter(|n| !want.chains.contains_key(*n)) {
        out.push(format!("chain {name} unexpected"));
    }
    for (name, ws) in &want.sets {
        match got.sets.get(name) {
            None => out.push(format!("set {name} missing")),
            Some(gs) => set_diff(name.as_str(), ws, gs, &mut out),
        }
    }
    for name in got.sets.keys().filter(|n| !want.sets.contains_key(*n)) {
        out.push(format!("set {name} unexpected"));
    }
    out
}

/// The transaction that makes `kernel` hold `desired`, keeping the elements the packet path
/// learned in sets that stay (same declaration).
pub fn repair(kernel: &Ruleset, desired: &Ruleset) -> Transaction {
    let mut want = desired.clone();
    for (t, table) in &mut want.tables {
        let Some(held) = kernel.tables.get(t) else {
            continue;
        };
        for (name, set) in &mut table.sets {
            if !updated_by_packets(&set.decl) {
                continue;
            }
            if let Some(h) = held.sets.get(name).filter(|h| h.decl == set.decl) {
                set.elements = h.elements.clone();
            }
        }
    }
    rudder_nft::diff(kernel, &want)
}

/// The tables of `kernel` read back, keyed as a ruleset.
pub fn ruleset_of(tables: Vec<(TableRef, Option<Table>)>) -> Ruleset {
    Ruleset {
        tables: tables
            .into_iter()
            .filter_map(|(t, table)| table.map(|x| (t, x)))
            .collect(),
    }
}
