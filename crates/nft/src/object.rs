//! Declarations of chains, sets and maps (everything but their contents).

use std::fmt;

use crate::expr::Expr;
use crate::name::{Comment, Name};

/// The type of a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChainType {
    /// `filter`
    Filter,
    /// `nat`: only the first packet of each connection traverses it.
    Nat,
}

/// The netfilter hook a base chain is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    /// `prerouting`
    Prerouting,
    /// `input`
    Input,
    /// `forward`
    Forward,
    /// `output`
    Output,
    /// `postrouting`
    Postrouting,
}

/// A base chain's default policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Policy {
    /// `accept`
    Accept,
    /// `drop`
    Drop,
}

/// What makes a chain a base chain: its type, hook, numeric priority and policy.
///
/// Priorities are numeric: `dstnat` is −100, `filter` 0, `srcnat` 100; Rudder's pre-DNAT
/// filter chains use −110 like kube-proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BaseChain {
    /// Chain type.
    pub kind: ChainType,
    /// Hook.
    pub hook: Hook,
    /// Priority; lower runs first.
    pub priority: i32,
    /// Default policy.
    pub policy: Policy,
}

/// A chain declaration: its name and, for base chains, the hook it is attached to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChainDecl {
    /// Name.
    pub name: Name,
    /// `Some` for base chains.
    pub base: Option<BaseChain>,
    /// Optional comment.
    pub comment: Option<Comment>,
}

impl ChainDecl {
    /// A regular chain, reached only by jumps and gotos.
    pub fn regular(name: Name) -> ChainDecl {
        ChainDecl {
            name,
            base: None,
            comment: None,
        }
    }

    /// A base chain.
    pub fn base(name: Name, kind: ChainType, hook: Hook, priority: i32) -> ChainDecl {
        ChainDecl {
            name,
            base: Some(BaseChain {
                kind,
                hook,
                priority,
                policy: Policy::Accept,
            }),
            comment: None,
        }
    }
}

/// Basic data types of set keys and map data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DataType {
    /// `ipv4_addr`
    Ipv4Addr,
    /// `ipv6_addr`
    Ipv6Addr,
    /// `inet_proto`
    InetProto,
    /// `inet_service`
    InetService,
    /// `mark`
    Mark,
    /// `verdict` (map data only)
    Verdict,
}

impl DataType {
    fn as_str(self) -> &'static str {
        match self {
            DataType::Ipv4Addr => "ipv4_addr",
            DataType::Ipv6Addr => "ipv6_addr",
            DataType::InetProto => "inet_proto",
            DataType::InetService => "inet_service",
            DataType::Mark => "mark",
            DataType::Verdict => "verdict",
        }
    }
}

/// The type of set keys or map data: a concatenation of named types (`type a . b`), or of
/// the types of expressions (`typeof x . y`, needed for `numgen` results).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyType {
    /// `type a . b`
    Types(Vec<DataType>),
    /// `typeof x . y`
    Typeof(Vec<Expr>),
}

impl KeyType {
    /// `type` of the given data types.
    pub fn types(t: impl IntoIterator<Item = DataType>) -> KeyType {
        KeyType::Types(t.into_iter().collect())
    }

    /// Number of concatenated fields.
    pub fn arity(&self) -> usize {
        match self {
            KeyType::Types(t) => t.len(),
            KeyType::Typeof(e) => e.len(),
        }
    }

    fn is_typeof(&self) -> bool {
        matches!(self, KeyType::Typeof(_))
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyType::Types(t) => {
                let parts: Vec<&str> = t.iter().map(|d| d.as_str()).collect();
                f.write_str(&parts.join(" . "))
            }
            KeyType::Typeof(e) => {
                for (i, x) in e.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" . ")?;
                    }
                    write!(f, "{x}")?;
                }
                Ok(())
            }
        }
    }
}

/// Set flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetFlag {
    /// `dynamic`: updated from the packet path.
    Dynamic,
    /// `timeout`: elements expire.
    Timeout,
    /// `interval`: keys may be ranges and prefixes.
    Interval,
}

/// A set or map declaration.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SetDecl {
    /// Name.
    pub name: Name,
    /// Key type.
    pub key: KeyType,
    /// Data type: `Some` for maps.
    pub data: Option<KeyType>,
    /// Flags.
    pub flags: Vec<SetFlag>,
    /// Default element timeout in seconds.
    pub timeout_secs: Option<u32>,
    /// Optional comment.
    pub comment: Option<Comment>,
}

impl SetDecl {
    /// A set with the given key type.
    pub fn set(name: Name, key: KeyType) -> SetDecl {
        SetDecl {
            name,
            key,
            data: None,
            flags: Vec::new(),
            timeout_secs: None,
            comment: None,
        }
    }

    /// A map whose data is one basic type (for example [`DataType::Verdict`]).
    pub fn map(name: Name, key: KeyType, data: DataType) -> SetDecl {
        SetDecl {
            data: Some(KeyType::Types(vec![data])),
            ..SetDecl::set(name, key)
        }
    }

    /// A map whose key and data are both given as `typeof` expressions.
    pub fn map_typeof(name: Name, key: Vec<Expr>, data: Vec<Expr>) -> SetDecl {
        SetDecl {
            data: Some(KeyType::Typeof(data)),
            ..SetDecl::set(name, KeyType::Typeof(key))
        }
    }

    /// Whether this declares a map.
    pub fn is_map(&self) -> bool {
        self.data.is_some()
    }

    /// `set` or `map`.
    pub fn keyword(&self) -> &'static str {
        if self.is_map() { "map" } else { "set" }
    }

    /// Whether the data of this map is verdicts.
    pub fn is_verdict_map(&self) -> bool {
        matches!(&self.data, Some(KeyType::Types(t)) if t.as_slice() == [DataType::Verdict])
    }

    /// The body written between braces in `add set|map`.
    pub(crate) fn render_body(&self) -> String {
        let mut s = String::new();
        let kw = if self.key.is_typeof() {
            "typeof"
        } else {
            "type"
        };
        s.push_str(&format!("{kw} {}", self.key));
        if let Some(d) = &self.data {
            s.push_str(&format!(" : {d}"));
        }
        s.push_str(" ;");
        if !self.flags.is_empty() {
            let f: Vec<&str> = self
                .flags
                .iter()
                .map(|f| match f {
                    SetFlag::Dynamic => "dynamic",
                    SetFlag::Timeout => "timeout",
                    SetFlag::Interval => "interval",
                })
                .collect();
            s.push_str(&format!(" flags {} ;", f.join(",")));
        }
        if let Some(t) = self.timeout_secs {
            s.push_str(&format!(" timeout {t}s ;"));
        }
        if let Some(c) = &self.comment {
            s.push_str(&format!(" comment {c} ;"));
        }
        s
    }
}

impl fmt::Display for ChainType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
        })
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        })
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::Accept => "accept",
            Policy::Drop => "drop",
        })
    }
}
