//! Typed nftables objects and transactions for Rudder, with no I/O.
//!
//! This crate owns the *intermediate representation* (IR) that the rule compiler produces and
//! the kernel backends consume: tables, chains, rules, sets, maps and their elements as plain
//! data ([`Ruleset`]), and a [`Transaction`] of verbs on those objects named after `nft`
//! commands (`add`, `delete`, `flush`).
//!
//! It also owns two pure operations on that IR:
//! - [`Transaction::render`] writes a transaction as `nft -f` input, deterministically;
//! - [`Ruleset::apply`] executes a transaction in memory with the kernel's error rules
//!   (missing objects, conflicting elements, references to undeclared chains and sets), so
//!   tests can check that a diff is both *valid* and *complete*, and [`diff`] computes the
//!   minimal transaction between two rulesets.
//!
//! What it must not do: talk to the kernel, spawn processes, or accept free text. Every name is
//! a validated [`Name`], every value a typed [`Atom`] (addresses, protocols, ports, integers,
//! verdicts) and comments are sanitized, so input from the Kubernetes API can never inject
//! nftables syntax.
//!
//! ```
//! use rudder_nft::*;
//! let table = TableRef::new(Family::Ip, Name::new("rudder").unwrap());
//! let mut tx = Transaction::new();
//! tx.add_table(table.clone());
//! tx.add_set(&table, SetDecl::map(
//!     Name::new("service-ips").unwrap(),
//!     KeyType::types([DataType::Ipv4Addr, DataType::InetProto, DataType::InetService]),
//!     DataType::Verdict,
//! ));
//! assert!(tx.render().starts_with("add table ip rudder\n"));
//! ```

#![deny(missing_docs)]

mod diff;
mod expr;
mod name;
mod object;
mod ruleset;
mod tx;
mod value;

pub use diff::diff;
pub use expr::{CmpOp, Expr, FibKind, IfaceName, Reject, Rule, Stmt};
pub use name::{Comment, MAX_COMMENT_LEN, MAX_NAME_LEN, Name, NameError};
pub use object::{
    BaseChain, ChainDecl, ChainType, DataType, Hook, KeyType, Policy, SetDecl, SetFlag,
};
pub use ruleset::{ApplyError, Chain, Ruleset, Set, Table};
pub use tx::{Op, TableRef, Transaction, TxStats};
pub use value::{Atom, Elements, Family, Key, L4Proto, Value, Verdict};
