//! An in-memory ruleset that applies transactions with the kernel's rules.

use std::collections::BTreeMap;

use crate::expr::Rule;
use crate::name::Name;
use crate::object::{ChainDecl, SetDecl, SetFlag};
use crate::tx::{Op, TableRef, Transaction};
use crate::value::{Atom, Elements, Key, Value};

/// A chain with its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Declaration.
    pub decl: ChainDecl,
    /// Rules in order.
    pub rules: Vec<Rule>,
}

/// A set or map with its elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    /// Declaration.
    pub decl: SetDecl,
    /// Elements, sorted by key.
    pub elements: Elements,
}

/// A table's chains and sets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Table {
    /// Chains by name.
    pub chains: BTreeMap<Name, Chain>,
    /// Sets and maps by name.
    pub sets: BTreeMap<Name, Set>,
}

/// Every table Rudder owns, as plain data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ruleset {
    /// Tables by family and name.
    pub tables: BTreeMap<TableRef, Table>,
}

/// Why a transaction does not apply. The classes match the kernel's errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// An object the operation needs does not exist (`ENOENT`).
    #[error("operation {index}: {what} not found")]
    NotFound {
        /// Index of the failing operation.
        index: usize,
        /// The missing object.
        what: String,
    },
    /// The object exists with a different definition or value (`EEXIST`).
    #[error("operation {index}: {what} already exists with a different definition")]
    Exists {
        /// Index of the failing operation.
        index: usize,
        /// The conflicting object.
        what: String,
    },
    /// The object is still in use (`EBUSY`).
    #[error("operation {index}: {what} is still in use")]
    Busy {
        /// Index of the failing operation.
        index: usize,
        /// The object in use.
        what: String,
    },
    /// The operation does not fit the object's type (`EINVAL`).
    #[error("operation {index}: {what}")]
    Invalid {
        /// Index of the failing operation.
        index: usize,
        /// What is wrong.
        what: String,
    },
}

impl ApplyError {
    /// Whether this is a not-found error.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ApplyError::NotFound { .. })
    }
}

impl Ruleset {
    /// An empty ruleset.
    pub fn new() -> Ruleset {
        Ruleset::default()
    }

    /// Applies `tx` atomically: either every operation applies, or `self` is unchanged.
    pub fn apply(&mut self, tx: &Transaction) -> Result<(), ApplyError> {
        let mut next = self.clone();
        for (index, op) in tx.ops().iter().enumerate() {
            next.apply_op(index, op)?;
        }
        *self = next;
        Ok(())
    }

    /// Renders the ruleset as `nft -f` input that creates it from nothing.
    pub fn render(&self) -> String {
        self.to_transaction().render()
    }

    fn table_mut(&mut self, index: usize, t: &TableRef) -> Result<&mut Table, ApplyError> {
        self.tables.get_mut(t).ok_or_else(|| ApplyError::NotFound {
            index,
            what: format!("table {t}"),
        })
    }

    fn apply_op(&mut self, index: usize, op: &Op) -> Result<(), ApplyError> {
        let nf = |what: String| ApplyError::NotFound { index, what };
        match op {
            Op::AddTable(t) => {
                self.tables.entry(t.clone()).or_default();
            }
            Op::DeleteTable(t) => {
                self.tables
                    .remove(t)
                    .ok_or_else(|| nf(format!("table {t}")))?;
            }
            Op::AddChain(t, decl) => {
                let table = self.table_mut(index, t)?;
                match table.chains.get(&decl.name) {
                    Some(c) if c.decl.base != decl.base => {
                        return Err(ApplyError::Exists {
                            index,
                            what: format!("chain {}", decl.name),
                        });
                    }
                    Some(_) => {}
                    None => {
                        table.chains.insert(
                            decl.name.clone(),
                            Chain {
                                decl: decl.clone(),
                                rules: vec![],
                            },
                        );
                    }
                }
            }
            Op::FlushChain(t, name) => {
                let table = self.table_mut(index, t)?;
                table
                    .chains
                    .get_mut(name)
                    .ok_or_else(|| nf(format!("chain {name}")))?
                    .rules
                    .clear();
            }
            Op::DeleteChain(t, name) => {
                let table = self.table_mut(index, t)?;
                let chain = table
                    .chains
                    .get(name)
                    .ok_or_else(|| nf(format!("chain {name}")))?;
                if !chain.rules.is_empty() || table.chain_referenced(name) {
                    return Err(ApplyError::Busy {
                        index,
                        what: format!("chain {name}"),
                    });
                }
                table.chains.remove(name);
            }
            Op::AddRule(t, chain, rule) => {
                let table = self.table_mut(index, t)?;
                for stmt in &rule.stmts {
                    if let Some(s) = stmt.set_refs() {
                        if !table.sets.contains_key(s) {
                            return Err(nf(format!("set {s}")));
                        }
                    }
                    for c in stmt.chain_refs() {
                        if !table.chains.contains_key(c) {
                            return Err(nf(format!("chain {c}")));
                        }
                    }
                }
                table
                    .chains
                    .get_mut(chain)
                    .ok_or_else(|| nf(format!("chain {chain}")))?
                    .rules
                    .push(rule.clone());
            }
            Op::AddSet(t, decl) => {
                let table = self.table_mut(index, t)?;
                match table.sets.get(&decl.name) {
                    Some(s) if &s.decl != decl => {
                        return Err(ApplyError::Exists {
                            index,
                            what: format!("set {}", decl.name),
                        });
                    }
                    Some(_) => {}
                    None => {
                        table.sets.insert(
                            decl.name.clone(),
                            Set {
                                decl: decl.clone(),
                                elements: Elements::new(),
                            },
                        );
                    }
                }
            }
            Op::FlushSet(t, name, _) => {
                let table = self.table_mut(index, t)?;
                table
                    .sets
                    .get_mut(name)
                    .ok_or_else(|| nf(format!("set {name}")))?
                    .elements
                    .clear();
            }
            Op::DeleteSet(t, name, _) => {
                let table = self.table_mut(index, t)?;
                if !table.sets.contains_key(name) {
                    return Err(nf(format!("set {name}")));
                }
                if table.set_referenced(name) {
                    return Err(ApplyError::Busy {
                        index,
                        what: format!("set {name}"),
                    });
                }
                table.sets.remove(name);
            }
            Op::AddElements(t, name, elems) => {
                let table = self.table_mut(index, t)?;
                let chains: Vec<Name> = table.chains.keys().cloned().collect();
                let set = table
                    .sets
                    .get_mut(name)
                    .ok_or_else(|| nf(format!("set {name}")))?;
                let interval = set.decl.flags.contains(&SetFlag::Interval);
                for (k, v) in elems {
                    check_element(index, set, k, v.as_ref(), &chains)?;
                    if interval {
                        if let Some(other) = set
                            .elements
                            .keys()
                            .find(|e| *e != k && intervals_overlap(e, k))
                        {
                            return Err(ApplyError::Exists {
                                index,
                                what: format!("element {k} in {name} (overlaps {other})"),
                            });
                        }
                    }
                    match set.elements.get(k) {
                        Some(old) if old != v => {
                            return Err(ApplyError::Exists {
                                index,
                                what: format!("element {k} in {name}"),
                            });
                        }
                        Some(_) => {}
                        None => {
                            set.elements.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            Op::DeleteElements(t, name, keys) => {
                let table = self.table_mut(index, t)?;
                let set = table
                    .sets
                    .get_mut(name)
                    .ok_or_else(|| nf(format!("set {name}")))?;
                for k in keys {
                    if set.elements.remove(k).is_none() {
                        return Err(nf(format!("element {k} in {name}")));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether two keys of an interval set share a point: every field equal, or, for prefixes,
/// nested. The kernel refuses an element that overlaps another (`EEXIST`); it lets a few
/// orders of insertion through, this model refuses them all. Linear in the set's size:
/// interval sets hold few elements.
fn intervals_overlap(a: &Key, b: &Key) -> bool {
    fn prefix(a: &Atom) -> Option<(std::net::IpAddr, u8)> {
        match a {
            Atom::Prefix(ip, len) => Some((*ip, *len)),
            Atom::Ipv4(ip) => Some(((*ip).into(), 32)),
            Atom::Ipv6(ip) => Some(((*ip).into(), 128)),
            _ => None,
        }
    }
    fn bits(ip: std::net::IpAddr) -> (bool, u128, u8) {
        match ip {
            std::net::IpAddr::V4(a) => (false, u128::from(u32::from(a)) << 96, 32),
            std::net::IpAddr::V6(a) => (true, u128::from(a), 128),
        }
    }
    let (a, b) = (a.atoms(), b.atoms());
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (prefix(x), prefix(y)) {
            (Some((xa, xl)), Some((ya, yl))) => {
                let ((x6, xb, max), (y6, yb, _)) = (bits(xa), bits(ya));
                let shorter = u32::from(xl.min(yl).min(max));
                let mask = if shorter == 0 {
                    0
                } else {
                    u128::MAX << (128 - shorter)
                };
                x6 == y6 && xb & mask == yb & mask
            }
            _ => x == y,
        })
}

fn check_element(
    index: usize,
    set: &Set,
    key: &Key,
    value: Option<&Value>,
    chains: &[Name],
) -> Result<(), ApplyError> {
    let invalid = |what: String| ApplyError::Invalid { index, what };
    if key.atoms().len() != set.decl.key.arity() {
        return Err(invalid(format!(
            "key {key} does not fit set {}",
            set.decl.name
        )));
    }
    match (&set.decl.data, value) {
        (None, None) => Ok(()),
        (Some(_), None) => Err(invalid(format!(
            "map {} needs data for {key}",
            set.decl.name
        ))),
        (None, Some(_)) => Err(invalid(format!("set {} takes no data", set.decl.name))),
        (Some(d), Some(v)) => {
            if v.atoms().len() != d.arity() {
                return Err(invalid(format!(
                    "data {v} does not fit map {}",
                    set.decl.name
                )));
            }
            for a in v.atoms() {
                if let Atom::Verdict(verdict) = a {
                    if let Some(target) = verdict.target() {
                        if !chains.contains(target) {
                            return Err(ApplyError::NotFound {
                                index,
                                what: format!("chain {target}"),
                            });
                        }
                    }
                }
            }
            Ok(())
        }
    }
}

impl Table {
    fn chain_referenced(&self, name: &Name) -> bool {
        let by_rule = self
            .chains
            .values()
            .flat_map(|c| &c.rules)
            .flat_map(|r| &r.stmts)
            .any(|s| s.chain_refs().contains(&name));
        let by_elem = self
            .sets
            .values()
            .flat_map(|s| s.elements.values())
            .flatten()
            .any(|v| {
                v.atoms()
                    .iter()
                    .any(|a| matches!(a, Atom::Verdict(vd) if vd.target() == Some(name)))
            });
        by_rule || by_elem
    }

    fn set_referenced(&self, name: &Name) -> bool {
        self.chains
            .values()
            .flat_map(|c| &c.rules)
            .flat_map(|r| &r.stmts)
            .any(|s| s.set_refs() == Some(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::{DataType, KeyType};
    use crate::value::{Family, L4Proto};

    fn prefix(s: &str) -> Atom {
        let (a, l) = s.split_once('/').unwrap();
        Atom::Prefix(a.parse().unwrap(), l.parse().unwrap())
    }

    /// Applies one transaction adding `first` then `second` to an interval set keyed
    /// `addr . proto . port . prefix`.
    fn add_two(first: &str, second: &str, port2: u16) -> Result<(), ApplyError> {
        let t = TableRef::new(Family::Ip, Name::new("t").unwrap());
        let at = DataType::Ipv4Addr;
        let mut tx = Transaction::new();
        tx.add_table(t.clone());
        let name = Name::new("allow").unwrap();
        tx.add_set(
            &t,
            SetDecl {
                flags: vec![SetFlag::Interval],
                ..SetDecl::set(
                    name.clone(),
                    KeyType::types([at, DataType::InetProto, DataType::InetService, at]),
                )
            },
        );
        let key = |src: &str, port: u16| {
            Key::new(vec![
                Atom::Ipv4("192.0.2.1".parse().unwrap()),
                Atom::Proto(L4Proto::Tcp),
                Atom::Port(port),
                prefix(src),
            ])
        };
        tx.add_elements(&t, &name, vec![(key(first, 80), None)]);
        tx.add_elements(&t, &name, vec![(key(second, port2), None)]);
        Ruleset::new().apply(&tx)
    }

    #[test]
    fn overlapping_interval_elements_are_refused_like_the_kernel() {
        for (a, b) in [
            ("10.0.0.0/8", "10.1.0.0/16"),
            ("10.1.0.0/16", "10.0.0.0/8"),
            ("10.0.0.0/8", "10.0.0.1/32"),
            ("0.0.0.0/0", "192.168.0.0/24"),
        ] {
            let err = add_two(a, b, 80).unwrap_err();
            assert!(matches!(err, ApplyError::Exists { .. }), "{a} {b}: {err}");
        }
        // Disjoint prefixes, the same element twice, or another port: fine.
        add_two("10.0.0.0/8", "11.0.0.0/8", 80).unwrap();
        add_two("10.0.0.0/8", "10.0.0.0/8", 80).unwrap();
        add_two("10.0.0.0/8", "10.1.0.0/16", 81).unwrap();
    }
}
