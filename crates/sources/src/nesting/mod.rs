//! A linear-time bound on the nesting depth of manifest text, checked before the text reaches
//! the YAML or JSON parser.
//!
//! libyaml (behind `serde_norway`, a fork of `serde_yaml`) keeps one "possible simple key" per
//! open flow collection and walks the pending ones for every token, so nesting costs time that
//! grows with the square of the depth (`{a: {a: …` 10,000 deep: 2 s, 20,000 deep: 9 s;
//! 100,000 nested `[`: 3.7 s, in a debug build). `serde_norway`'s own recursion limit only
//! applies after the whole document has been parsed into events, too late to help. This module
//! follows libyaml's scanner closely enough to know where it opens flow collections (`[`, `{`
//! outside scalars and comments) and block collections (its indentation stack), and stops at
//! the first point where the depth exceeds the limit, in time linear in the input.
//!
//! The scanner mirrors libyaml's rules for everything that decides whether a character is
//! markup or content: comments, single- and double-quoted scalars, plain scalars (with their
//! continuation lines and the indentation that ends them), block scalars (`|`, `>`, with
//! libyaml's indentation detection), anchors, aliases and tags, document markers, line breaks
//! (including NEL, LS and PS) and the characters libyaml's reader refuses. Where libyaml would
//! report an error, the scan stops: libyaml reads no further either. The depth it computes is
//! therefore never smaller than what libyaml would reach.

/// Deepest nesting of collections accepted in a manifest. Kubernetes objects nest about ten
/// levels deep; `serde_norway` and `serde_json` refuse more than 128 levels anyway.
pub const MAX_DEPTH: usize = 100;

/// The text nests deeper than the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("nested more than {limit} levels deep (line {line})")]
pub struct TooDeep {
    /// The limit that was exceeded.
    pub limit: usize,
    /// 1-based line where the limit was exceeded.
    pub line: u64,
}

mod json;
#[cfg(test)]
mod tests;
mod yaml;

pub use json::check_json;
#[cfg(test)]
use yaml::Scanner;
pub use yaml::check_yaml;
