//! Transactions: ordered verbs on objects, rendered as `nft -f` input.

use std::fmt::Write as _;

use crate::expr::Rule;
use crate::name::Name;
use crate::object::{ChainDecl, SetDecl};
use crate::value::{Family, Key, Value};

/// Elements per `add element` / `delete element` line when rendering. nft accepts any number,
/// but shorter lines keep error messages readable.
const ELEMENTS_PER_LINE: usize = 2048;

/// A table: its family and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableRef {
    /// Address family.
    pub family: Family,
    /// Table name.
    pub name: Name,
}

impl TableRef {
    /// The table `family name`.
    pub fn new(family: Family, name: Name) -> TableRef {
        TableRef { family, name }
    }
}

impl std::fmt::Display for TableRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.family, self.name)
    }
}

/// One verb on one object. Each variant names the `nft` command it renders to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// `add table`: creates the table if it does not exist.
    AddTable(TableRef),
    /// `delete table`: removes the table and everything in it.
    DeleteTable(TableRef),
    /// `add chain`: creates the chain if it does not exist.
    AddChain(TableRef, ChainDecl),
    /// `flush chain`: removes every rule of the chain.
    FlushChain(TableRef, Name),
    /// `delete chain`: removes an empty, unreferenced chain.
    DeleteChain(TableRef, Name),
    /// `add rule`: appends a rule to a chain.
    AddRule(TableRef, Name, Rule),
    /// `add set` / `add map`: creates the set if it does not exist.
    AddSet(TableRef, SetDecl),
    /// `flush set` / `flush map` (the flag tells which): removes every element.
    FlushSet(TableRef, Name, bool),
    /// `delete set` / `delete map` (the flag tells which).
    DeleteSet(TableRef, Name, bool),
    /// `add element`: adds elements; for maps every key has data.
    AddElements(TableRef, Name, Vec<(Key, Option<Value>)>),
    /// `delete element`: removes elements by key.
    DeleteElements(TableRef, Name, Vec<Key>),
}

/// Counts that describe the size of a transaction, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxStats {
    /// Operations on tables, chains, sets and rules.
    pub objects: usize,
    /// Elements added.
    pub elements_added: usize,
    /// Elements deleted.
    pub elements_deleted: usize,
}

/// An ordered list of operations that the kernel applies atomically: all or nothing.
///
/// Verbs never fail when queued: every object is typed and validated on construction, so a
/// transaction can always be rendered. Whether it *applies* is decided by the kernel (or by
/// [`crate::Ruleset::apply`], which follows the kernel's rules).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    ops: Vec<Op>,
}

impl Transaction {
    /// An empty transaction.
    pub fn new() -> Transaction {
        Transaction::default()
    }

    /// Queues an operation.
    pub fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    /// Appends every operation of `other`.
    pub fn extend(&mut self, other: Transaction) {
        self.ops.extend(other.ops);
    }

    /// The queued operations, in order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Number of queued operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Sizes for logs and metrics.
    pub fn stats(&self) -> TxStats {
        let mut s = TxStats::default();
        for op in &self.ops {
            match op {
                Op::AddElements(_, _, e) => s.elements_added += e.len(),
                Op::DeleteElements(_, _, e) => s.elements_deleted += e.len(),
                _ => s.objects += 1,
            }
        }
        s
    }

    /// Equivalent to `nft add table`.
    pub fn add_table(&mut self, t: TableRef) {
        self.push(Op::AddTable(t));
    }

    /// Equivalent to `nft delete table`.
    pub fn delete_table(&mut self, t: TableRef) {
        self.push(Op::DeleteTable(t));
    }

    /// Equivalent to `nft add chain`.
    pub fn add_chain(&mut self, t: &TableRef, c: ChainDecl) {
        self.push(Op::AddChain(t.clone(), c));
    }

    /// Equivalent to `nft add rule`.
    pub fn add_rule(&mut self, t: &TableRef, chain: &Name, r: Rule) {
        self.push(Op::AddRule(t.clone(), chain.clone(), r));
    }

    /// Equivalent to `nft add set` or `nft add map`.
    pub fn add_set(&mut self, t: &TableRef, s: SetDecl) {
        self.push(Op::AddSet(t.clone(), s));
    }

    /// Equivalent to `nft add element` (nothing is queued for an empty list).
    pub fn add_elements(&mut self, t: &TableRef, set: &Name, e: Vec<(Key, Option<Value>)>) {
        if !e.is_empty() {
            self.push(Op::AddElements(t.clone(), set.clone(), e));
        }
    }

    /// Equivalent to `nft delete element` (nothing is queued for an empty list).
    pub fn delete_elements(&mut self, t: &TableRef, set: &Name, keys: Vec<Key>) {
        if !keys.is_empty() {
            self.push(Op::DeleteElements(t.clone(), set.clone(), keys));
        }
    }

    /// Renders the transaction as `nft -f` input: one command per line, deterministic.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for op in &self.ops {
            render_op(&mut out, op);
        }
        out
    }
}

fn render_op(out: &mut String, op: &Op) {
    // `write!` into a String cannot fail.
    let _ = match op {
        Op::AddTable(t) => writeln!(out, "add table {t}"),
        Op::DeleteTable(t) => writeln!(out, "delete table {t}"),
        Op::AddChain(t, c) => {
            let _ = write!(out, "add chain {t} {}", c.name);
            let mut body = String::new();
            if let Some(b) = &c.base {
                let _ = write!(
                    body,
                    " type {} hook {} priority {} ; policy {} ;",
                    b.kind, b.hook, b.priority, b.policy
                );
            }
            if let Some(cm) = &c.comment {
                let _ = write!(body, " comment {cm} ;");
            }
            if body.is_empty() {
                writeln!(out)
            } else {
                writeln!(out, " {{{body} }}")
            }
        }
        Op::FlushChain(t, c) => writeln!(out, "flush chain {t} {c}"),
        Op::DeleteChain(t, c) => writeln!(out, "delete chain {t} {c}"),
        Op::AddRule(t, c, r) => writeln!(out, "add rule {t} {c} {r}"),
        Op::AddSet(t, s) => writeln!(
            out,
            "add {} {t} {} {{ {} }}",
            s.keyword(),
            s.name,
            s.render_body()
        ),
        Op::FlushSet(t, s, is_map) => {
            writeln!(out, "flush {} {t} {s}", if *is_map { "map" } else { "set" })
        }
        Op::DeleteSet(t, s, is_map) => {
            writeln!(
                out,
                "delete {} {t} {s}",
                if *is_map { "map" } else { "set" }
            )
        }
        Op::AddElements(t, s, elems) => {
            for chunk in elems.chunks(ELEMENTS_PER_LINE) {
                let _ = write!(out, "add element {t} {s} {{ ");
                for (i, (k, v)) in chunk.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    let _ = write!(out, "{k}");
                    if let Some(v) = v {
                        let _ = write!(out, " : {v}");
                    }
                }
                out.push_str(" }\n");
            }
            Ok(())
        }
        Op::DeleteElements(t, s, keys) => {
            for chunk in keys.chunks(ELEMENTS_PER_LINE) {
                let _ = write!(out, "delete element {t} {s} {{ ");
                for (i, k) in chunk.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    let _ = write!(out, "{k}");
                }
                out.push_str(" }\n");
            }
            Ok(())
        }
    };
}
