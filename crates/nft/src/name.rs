//! Validated object names and sanitized comments.

use std::fmt;
use std::sync::Arc;

/// Longest object name the kernel accepts (`NFT_NAME_MAXLEN` is 256 including the NUL).
pub const MAX_NAME_LEN: usize = 255;
/// Longest comment Rudder writes (the kernel allows 256 bytes of user data per object).
pub const MAX_COMMENT_LEN: usize = 128;

/// Why a string is not a valid nftables object name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("empty nftables name")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`].
    #[error("nftables name is {0} bytes long, the limit is {MAX_NAME_LEN}")]
    TooLong(usize),
    /// The name contains a character outside `[A-Za-z0-9_./:-]` or does not start with a letter.
    #[error(
        "nftables name {0:?} must start with a letter and use only letters, digits and _ . / : -"
    )]
    BadCharacter(String),
}

/// The name of a table, chain, set or map: starts with an ASCII letter and uses only
/// `[A-Za-z0-9_./:-]`, so it can be written into `nft -f` input without quoting.
///
/// Cheap to clone (shared).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(Arc<str>);

impl Name {
    /// Validates `s` as an object name.
    pub fn new(s: &str) -> Result<Name, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(s.len()));
        }
        let mut chars = s.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
        let rest_ok = s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | ':' | '-'));
        if !first_ok || !rest_ok {
            return Err(NameError::BadCharacter(s.to_owned()));
        }
        Ok(Name(s.into()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// A comment attached to an object or element.
///
/// nft's scanner has no escape sequences inside quoted strings, so a comment keeps only
/// printable ASCII without `"` and `\`; anything else becomes `_`, and it is cut at
/// [`MAX_COMMENT_LEN`] bytes. Building a comment never fails.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Comment(Arc<str>);

impl Comment {
    /// Builds a comment from arbitrary text, replacing unsafe characters.
    pub fn sanitize(text: &str) -> Comment {
        let mut out = String::with_capacity(text.len().min(MAX_COMMENT_LEN));
        for c in text.chars() {
            if out.len() >= MAX_COMMENT_LEN {
                break;
            }
            let safe = c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ';
            out.push(if safe { c } else { '_' });
        }
        Comment(out.into())
    }

    /// The sanitized text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Comment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0)
    }
}

impl fmt::Debug for Comment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(Name::new("service-ips").is_ok());
        assert!(Name::new("a/b:c.d_e-f").is_ok());
        assert_eq!(Name::new(""), Err(NameError::Empty));
        assert!(matches!(Name::new("1abc"), Err(NameError::BadCharacter(_))));
        assert!(matches!(Name::new("a b"), Err(NameError::BadCharacter(_))));
        assert!(matches!(
            Name::new("a;flush ruleset"),
            Err(NameError::BadCharacter(_))
        ));
        assert!(matches!(Name::new("a\"b"), Err(NameError::BadCharacter(_))));
        assert!(matches!(
            Name::new(&"a".repeat(256)),
            Err(NameError::TooLong(256))
        ));
    }

    proptest::proptest! {
        /// Whatever the text, a comment is at most 128 bytes (the most `nft` and the
        /// kernel's userdata take, kubernetes#139516) of printable ASCII without quotes or
        /// backslashes.
        #[test]
        fn comments_stay_within_the_kernel_limit(text in ".{0,600}") {
            let c = Comment::sanitize(&text);
            proptest::prop_assert!(c.as_str().len() <= MAX_COMMENT_LEN);
            proptest::prop_assert!(c
                .as_str()
                .bytes()
                .all(|b| (b.is_ascii_graphic() || b == b' ') && b != b'"' && b != b'\\'));
            // Nothing is lost below the limit: one byte (or `_`) per character.
            proptest::prop_assert_eq!(c.as_str().len(), text.chars().count().min(MAX_COMMENT_LEN));
        }
    }

    #[test]
    fn comments_cannot_close_their_quotes() {
        let c = Comment::sanitize("ns/svc\" ; flush ruleset ; \\ \n\u{202e}x");
        assert_eq!(c.as_str(), "ns/svc_ ; flush ruleset ; _ __x");
        assert_eq!(c.to_string(), "\"ns/svc_ ; flush ruleset ; _ __x\"");
        assert_eq!(
            Comment::sanitize(&"x".repeat(500)).as_str().len(),
            MAX_COMMENT_LEN
        );
    }
}
