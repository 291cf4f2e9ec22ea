//! Canonical forms of rules: a rule's expressions as the kernel holds them, with what varies
//! between writing and reading taken out, so that a dumped rule and the encoding of the rule
//! Rudder means compare equal exactly when the kernel runs the same bytecode.
//!
//! Rules are not decoded back into the typed AST: the encoder is deterministic, so a rule
//! Rudder wants is encoded ([`expected_rule`]) and its expressions compared, as canonical
//! trees, with the dumped rule's ([`dumped_rule`]). What the canonical form takes out or fills
//! in is what the kernel adds or drops on its own (checked against the kernel by
//! `crates/nft-backend/tests/dump.rs` over every rule shape the compiler emits):
//!
//! - attribute order and the `NLA_F_NESTED` flag (the kernel nests data without it);
//! - rule handles and positions, set IDs (a batch-local number);
//! - `lookup` flags, `bitwise` operation, `dynset` timeout and flags: dumped as 0 when not
//!   sent;
//! - `nat` maxima and range flags: the kernel sets the maxima to the minima and adds the
//!   "addresses/ports specified" flags;
//! - the ICMP code of `reject with tcp reset` (not dumped);
//! - `counter` values (they change with traffic).
//!
//! A lookup into an anonymous set is replaced by the set's elements (sorted), so an anonymous
//! set whose content was changed is a different rule.

use std::collections::HashMap;

use rudder_nft::{Name, Rule, TableRef, Transaction};

use crate::batch::{EncodeError, encode_batch};
use crate::decode::{Attrs, Message, messages};
use crate::set::IntervalSets;
use crate::wire::*;

/// An attribute tree: `(type, value)`, sorted.
pub(crate) type Tree = Vec<(u16, Val)>;

/// The value of one attribute: bytes, or nested attributes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Val {
    /// Raw bytes.
    Raw(Vec<u8>),
    /// Nested attributes (sorted).
    Nest(Tree),
}

/// The canonical form of one rule: its expressions and its userdata (the comment).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CanonicalRule {
    exprs: Vec<(String, Tree)>,
    udata: Vec<u8>,
}

impl CanonicalRule {
    /// The names of the rule's expressions (`payload cmp immediate`), for messages.
    pub fn summary(&self) -> String {
        let names: Vec<&str> = self.exprs.iter().map(|(n, _)| n.as_str()).collect();
        names.join(" ")
    }
}

/// `nft_data`: a value, or a verdict (code and chain).
fn data_tree(bytes: &[u8]) -> Tree {
    let mut t: Tree = Attrs(bytes)
        .iter()
        .map(|(ty, v)| match ty {
            NFTA_DATA_VERDICT => (ty, Val::Nest(raw_tree(v))),
            _ => (ty, Val::Raw(v.to_vec())),
        })
        .collect();
    t.sort();
    t
}

fn raw_tree(bytes: &[u8]) -> Tree {
    let mut t: Tree = Attrs(bytes)
        .iter()
        .map(|(ty, v)| (ty, Val::Raw(v.to_vec())))
        .collect();
    t.sort();
    t
}

/// Attributes of expression `name` that hold `nft_data`.
fn holds_data(name: &str, ty: u16) -> bool {
    matches!(
        (name, ty),
        ("cmp", 3) | ("bitwise", 4 | 5 | 7) | ("immediate", 2) | ("range", 3 | 4)
    )
}

fn be32(v: u32) -> Val {
    Val::Raw(v.to_be_bytes().to_vec())
}

fn get(t: &Tree, ty: u16) -> Option<&Val> {
    t.iter().find(|(k, _)| *k == ty).map(|(_, v)| v)
}

fn get_u32(t: &Tree, ty: u16) -> Option<u32> {
    match get(t, ty)? {
        Val::Raw(b) if b.len() >= 4 => Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        _ => None,
    }
}

fn set(t: &mut Tree, ty: u16, v: Val) {
    t.retain(|(k, _)| *k != ty);
    t.push((ty, v));
}

fn default(t: &mut Tree, ty: u16, v: Val) {
    if get(t, ty).is_none() {
        t.push((ty, v));
    }
}

/// The content of an anonymous set, given its name (dumped rules) or batch-local ID (the
/// encoder's rules).
type AnonContent<'a> = dyn Fn(&str, Option<u32>) -> Option<Val> + 'a;

/// One expression: its name and canonical attributes.
fn expr(bytes: &[u8], anon: &AnonContent<'_>) -> (String, Tree) {
    let a = Attrs(bytes);
    let name = a.string(NFTA_EXPR_NAME).unwrap_or_default().to_owned();
    let data = a.get(NFTA_EXPR_DATA).unwrap_or_default();
    let mut t: Tree = Attrs(data)
        .iter()
        .map(|(ty, v)| {
            if holds_data(&name, ty) {
                (ty, Val::Nest(data_tree(v)))
            } else {
                (ty, Val::Raw(v.to_vec()))
            }
        })
        .collect();
    match name.as_str() {
        "lookup" => {
            let id = get_u32(&t, 4);
            t.retain(|(k, _)| *k != 4); // SET_ID
            default(&mut t, 5, be32(0)); // FLAGS
            if let Some(Val::Raw(n)) = get(&t, 1) {
                let n = String::from_utf8_lossy(n.split(|b| *b == 0).next().unwrap_or(n));
                if n.starts_with("__") {
                    let content = anon(&n, id).unwrap_or(Val::Raw(b"?".to_vec()));
                    set(&mut t, 1, content);
                }
            }
        }
        "bitwise" => default(&mut t, 6, be32(0)), // OP: NFT_BITWISE_BOOL
        "nat" => {
            let mut flags = get_u32(&t, 7).unwrap_or(0);
            if let Some(min) = get(&t, 3).cloned() {
                default(&mut t, 4, min);
                flags |= 1; // NF_NAT_RANGE_MAP_IPS
            }
            if let Some(min) = get(&t, 5).cloned() {
                default(&mut t, 6, min);
                flags |= 2; // NF_NAT_RANGE_PROTO_SPECIFIED
            }
            t.retain(|(k, _)| *k != 7);
            if flags != 0 {
                t.push((7, be32(flags)));
            }
        }
        "reject" if get_u32(&t, 1) == Some(1) => t.retain(|(k, _)| *k != 2),
        "counter" => t.clear(),
        "dynset" => {
            t.retain(|(k, _)| !matches!(k, 2 | 8)); // SET_ID, PAD
            default(&mut t, 6, Val::Raw(0u64.to_be_bytes().to_vec())); // TIMEOUT
            default(&mut t, 9, be32(0)); // FLAGS
        }
        _ => {}
    }
    t.sort();
    (name, t)
}

/// The expressions of `NFTA_RULE_EXPRESSIONS`.
fn exprs(list: &[u8], anon: &AnonContent<'_>) -> Vec<(String, Tree)> {
    Attrs(list)
        .iter()
        .filter(|(ty, _)| *ty == NFTA_LIST_ELEM)
        .map(|(_, e)| expr(e, anon))
        .collect()
}

/// One element of an anonymous set, canonical: key, end, data and flags; timeouts left out.
pub(crate) fn element(bytes: &[u8]) -> Tree {
    let mut t: Tree = Attrs(bytes)
        .iter()
        .filter(|(ty, _)| !matches!(ty, 4 | 5)) // TIMEOUT, EXPIRATION
        .map(|(ty, v)| match ty {
            NFTA_SET_ELEM_KEY | NFTA_SET_ELEM_DATA | NFTA_SET_ELEM_KEY_END => {
                (ty, Val::Nest(data_tree(v)))
            }
            _ => (ty, Val::Raw(v.to_vec())),
        })
        .collect();
    t.sort();
    t
}

/// The elements of `NFTA_SET_ELEM_LIST_ELEMENTS`, canonical.
pub(crate) fn elements(list: &[u8]) -> impl Iterator<Item = Tree> + '_ {
    Attrs(list)
        .iter()
        .filter(|(ty, _)| *ty == NFTA_LIST_ELEM)
        .map(|(_, e)| element(e))
}

/// An anonymous set's elements as one value.
pub(crate) fn anon_value(mut elems: Vec<Tree>) -> Val {
    elems.sort();
    Val::Nest(
        elems
            .into_iter()
            .map(|e| (NFTA_LIST_ELEM, Val::Nest(e)))
            .collect(),
    )
}

/// The canonical form of a dumped rule (the attributes of a `NEWRULE` message), with the
/// content of the anonymous sets it uses.
pub(crate) fn dumped_rule(attrs: Attrs<'_>, anon: &AnonContent<'_>) -> CanonicalRule {
    CanonicalRule {
        exprs: exprs(attrs.get(NFTA_RULE_EXPRESSIONS).unwrap_or_default(), anon),
        udata: attrs.get(NFTA_RULE_USERDATA).unwrap_or_default().to_vec(),
    }
}

/// The canonical form of the rule Rudder means: `rule` encoded for `chain` of `table`, as
/// one batch would carry it (its anonymous sets included).
pub fn expected_rule(
    table: &TableRef,
    chain: &Name,
    rule: &Rule,
    intervals: &IntervalSets,
) -> Result<CanonicalRule, EncodeError> {
    let mut tx = Transaction::new();
    tx.add_rule(table, chain, rule.clone());
    let batch = encode_batch(&tx, intervals, 1, true)?;
    let mut anon: HashMap<u32, Vec<Tree>> = HashMap::new();
    let mut rule_attrs = None;
    for m in messages(&batch.bytes) {
        let Ok(Message::Nft(n)) = m else { continue };
        match n.kind {
            NFT_MSG_NEWSETELEM => {
                let id = n.attrs.be32(NFTA_SET_ELEM_LIST_SET_ID).unwrap_or(0);
                let list = n.attrs.get(NFTA_SET_ELEM_LIST_ELEMENTS).unwrap_or_default();
                anon.entry(id).or_default().extend(elements(list));
            }
            NFT_MSG_NEWRULE => rule_attrs = Some(n.attrs),
            _ => {}
        }
    }
    let attrs = rule_attrs.ok_or_else(|| EncodeError::Unsupported(format!("rule {rule}")))?;
    let content = |_: &str, id: Option<u32>| {
        id.and_then(|id| anon.get(&id))
            .map(|e| anon_value(e.clone()))
    };
    Ok(dumped_rule(attrs, &content))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rudder_nft::{Atom, CmpOp, Expr, Family, Stmt, Verdict};

    fn t() -> TableRef {
        TableRef::new(Family::Ip, Name::new("t").unwrap())
    }

    fn rule(port: u16) -> Rule {
        Rule::new(vec![
            Stmt::Cmp(Expr::ThDport, CmpOp::Eq, Expr::Const(Atom::Port(port))),
            Stmt::Verdict(Verdict::Accept),
        ])
    }

    #[test]
    fn equal_rules_are_equal_and_others_not() {
        let c = Name::new("c").unwrap();
        let known = IntervalSets::new();
        let a = expected_rule(&t(), &c, &rule(80), &known).unwrap();
        assert_eq!(a, expected_rule(&t(), &c, &rule(80), &known).unwrap());
        assert_ne!(a, expected_rule(&t(), &c, &rule(81), &known).unwrap());
        let commented = rule(80).with_comment("x");
        assert_ne!(a, expected_rule(&t(), &c, &commented, &known).unwrap());
        assert_eq!(a.summary(), "payload cmp immediate");
    }

    #[test]
    fn anonymous_sets_compare_by_content() {
        let c = Name::new("c").unwrap();
        let known = IntervalSets::new();
        let set = |a: &str| {
            Rule::new(vec![Stmt::Cmp(
                Expr::Saddr(Family::Ip),
                CmpOp::Eq,
                Expr::AnonSet(vec![
                    Expr::Prefix("10.0.0.0".parse().unwrap(), 8),
                    Expr::Prefix(a.parse().unwrap(), 16),
                ]),
            )])
        };
        let a = expected_rule(&t(), &c, &set("192.168.0.0"), &known).unwrap();
        let b = expected_rule(&t(), &c, &set("172.16.0.0"), &known).unwrap();
        assert_ne!(a, b);
        assert_eq!(
            a,
            expected_rule(&t(), &c, &set("192.168.0.0"), &known).unwrap()
        );
    }
}
