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

/// Checks YAML text (one or more documents).
pub fn check_yaml(text: &str, limit: usize) -> Result<(), TooDeep> {
    let mut s = Scanner::new(text, limit);
    s.run();
    match s.exceeded {
        Some(line) => Err(TooDeep { limit, line }),
        None => Ok(()),
    }
}

/// Checks JSON text.
pub fn check_json(text: &str, limit: usize) -> Result<(), TooDeep> {
    let (mut depth, mut line) = (0usize, 1u64);
    let mut in_string = false;
    let mut escaped = false;
    for &b in text.as_bytes() {
        if b == b'\n' {
            line += 1;
        }
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Err(TooDeep { limit, line });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// The longest prefix libyaml's reader accepts: it refuses control characters and a few
/// non-characters, and stops there (after reading ahead, so possibly even earlier).
fn readable_prefix(text: &str) -> &str {
    let allowed = |c: char| {
        matches!(c as u32,
            0x09 | 0x0A | 0x0D | 0x20..=0x7E | 0x85 | 0xA0..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
    };
    match text.char_indices().find(|(_, c)| !allowed(*c)) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// A possible simple key of the block context: where it started.
#[derive(Debug, Clone, Copy)]
struct Key {
    index: u64,
    line: u64,
    column: u64,
}

struct Scanner<'a> {
    b: &'a [u8],
    pos: usize,
    /// Characters read (libyaml's `mark.index`).
    index: u64,
    line: u64,
    column: u64,
    flow: usize,
    /// libyaml's `indent` (-1 outside any block collection) and its stack of outer indents.
    indent: i64,
    indents: Vec<i64>,
    simple_key_allowed: bool,
    /// The possible simple key of the block context (flow level 0); keys inside flow
    /// collections never change the indentation, so they are not tracked.
    key: Option<Key>,
    limit: usize,
    exceeded: Option<u64>,
    /// Deepest flow level reached (for tests).
    #[cfg(test)]
    max_flow: usize,
    /// libyaml would have stopped with an error here.
    stopped: bool,
}

/// Characters libyaml's `IS_ALPHA` accepts (anchor names, tag handles).
fn is_alpha(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Characters of a tag's URI (`yaml_parser_scan_tag_uri`); `,[]` only in verbatim tags.
fn is_uri(b: u8, verbatim: bool) -> bool {
    is_alpha(b)
        || b";/?:@&=+$.%!~*'()".contains(&b)
        || (verbatim && matches!(b, b',' | b'[' | b']'))
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str, limit: usize) -> Scanner<'a> {
        Scanner {
            b: readable_prefix(text).as_bytes(),
            pos: 0,
            index: 0,
            line: 0,
            column: 0,
            flow: 0,
            indent: -1,
            indents: Vec::new(),
            simple_key_allowed: true,
            key: None,
            limit,
            exceeded: None,
            stopped: false,
            #[cfg(test)]
            max_flow: 0,
        }
    }

    /// The byte `k` bytes ahead; 0 (libyaml's end of input) past the end.
    fn at(&self, k: usize) -> u8 {
        self.b.get(self.pos + k).copied().unwrap_or(0)
    }

    fn cur(&self) -> u8 {
        self.at(0)
    }

    fn is_z(&self) -> bool {
        self.pos >= self.b.len()
    }

    fn is_break_at(&self, k: usize) -> bool {
        match self.at(k) {
            b'\r' | b'\n' => true,
            0xC2 => self.at(k + 1) == 0x85,
            0xE2 => self.at(k + 1) == 0x80 && matches!(self.at(k + 2), 0xA8 | 0xA9),
            _ => false,
        }
    }

    fn is_blank_at(&self, k: usize) -> bool {
        matches!(self.at(k), b' ' | b'\t')
    }

    fn is_blankz_at(&self, k: usize) -> bool {
        self.pos + k >= self.b.len() || self.is_blank_at(k) || self.is_break_at(k)
    }

    fn is_breakz(&self) -> bool {
        self.is_z() || self.is_break_at(0)
    }

    /// Moves past one character.
    fn skip(&mut self) {
        let w = match self.cur() {
            b if b < 0x80 => 1,
            b if b & 0xE0 == 0xC0 => 2,
            b if b & 0xF0 == 0xE0 => 3,
            _ => 4,
        };
        self.pos = (self.pos + w).min(self.b.len());
        self.index += 1;
        self.column += 1;
    }

    /// Moves past one line break (CR LF counts as one).
    fn skip_line(&mut self) {
        if self.cur() == b'\r' && self.at(1) == b'\n' {
            self.pos += 2;
            self.index += 2;
        } else {
            self.skip();
        }
        self.column = 0;
        self.line += 1;
    }

    fn depth_changed(&mut self) {
        #[cfg(test)]
        {
            self.max_flow = self.max_flow.max(self.flow);
        }
        if self.flow + self.indents.len() > self.limit && self.exceeded.is_none() {
            self.exceeded = Some(self.line + 1);
        }
    }

    fn roll_indent(&mut self, column: u64) {
        let column = i64::try_from(column).unwrap_or(i64::MAX);
        if self.flow == 0 && self.indent < column {
            self.indents.push(self.indent);
            self.indent = column;
            self.depth_changed();
        }
    }

    fn unroll_indent(&mut self, column: i64) {
        if self.flow != 0 {
            return;
        }
        while self.indent > column {
            self.indent = self.indents.pop().unwrap_or(-1);
        }
    }

    fn save_simple_key(&mut self) {
        if self.simple_key_allowed && self.flow == 0 {
            self.key = Some(Key {
                index: self.index,
                line: self.line,
                column: self.column,
            });
        }
    }

    fn remove_simple_key(&mut self) {
        if self.flow == 0 {
            self.key = None;
        }
    }

    fn stale_simple_keys(&mut self) {
        if let Some(k) = self.key {
            if k.line < self.line || k.index + 1024 < self.index {
                self.key = None;
            }
        }
    }

    fn is_document_indicator(&self) -> bool {
        self.column == 0
            && ((self.at(0) == b'-' && self.at(1) == b'-' && self.at(2) == b'-')
                || (self.at(0) == b'.' && self.at(1) == b'.' && self.at(2) == b'.'))
            && self.is_blankz_at(3)
    }

    fn run(&mut self) {
        while !self.stopped && self.exceeded.is_none() {
            self.scan_to_next_token();
            self.stale_simple_keys();
            let column = i64::try_from(self.column).unwrap_or(i64::MAX);
            self.unroll_indent(column);
            if self.is_z() {
                return;
            }
            self.next_token();
        }
    }

    fn scan_to_next_token(&mut self) {
        loop {
            if self.column == 0 && self.at(0) == 0xEF && self.at(1) == 0xBB && self.at(2) == 0xBF {
                self.skip();
            }
            while self.cur() == b' '
                || ((self.flow != 0 || !self.simple_key_allowed) && self.cur() == b'\t')
            {
                self.skip();
            }
            if self.cur() == b'#' {
                while !self.is_breakz() {
                    self.skip();
                }
            }
            if !self.is_break_at(0) {
                return;
            }
            self.skip_line();
            if self.flow == 0 {
                self.simple_key_allowed = true;
            }
        }
    }

    fn next_token(&mut self) {
        let c = self.cur();
        if self.column == 0 && c == b'%' {
            // A directive: libyaml accepts only a name and parameters up to the line's end.
            while !self.is_breakz() {
                self.skip();
            }
            return;
        }
        if self.is_document_indicator() {
            self.unroll_indent(-1);
            self.remove_simple_key();
            self.simple_key_allowed = false;
            self.skip();
            self.skip();
            self.skip();
            return;
        }
        let next_blankz = self.is_blankz_at(1);
        match c {
            b'[' | b'{' => {
                self.save_simple_key();
                self.flow += 1;
                self.depth_changed();
                self.simple_key_allowed = true;
                self.skip();
            }
            b']' | b'}' => {
                self.remove_simple_key();
                self.flow = self.flow.saturating_sub(1);
                self.simple_key_allowed = false;
                self.skip();
            }
            b',' => {
                self.remove_simple_key();
                self.simple_key_allowed = true;
                self.skip();
            }
            b'-' if next_blankz => {
                if self.flow == 0 {
                    if !self.simple_key_allowed {
                        self.stopped = true;
                        return;
                    }
                    self.roll_indent(self.column);
                }
                self.remove_simple_key();
                self.simple_key_allowed = true;
                self.skip();
            }
            b'?' if self.flow != 0 || next_blankz => {
                if self.flow == 0 {
                    if !self.simple_key_allowed {
                        self.stopped = true;
                        return;
                    }
                    self.roll_indent(self.column);
                }
                self.remove_simple_key();
                self.simple_key_allowed = self.flow == 0;
                self.skip();
            }
            b':' if self.flow != 0 || next_blankz => {
                if self.flow == 0 {
                    match self.key.take() {
                        Some(k) => {
                            self.roll_indent(k.column);
                            self.simple_key_allowed = false;
                        }
                        None => {
                            if !self.simple_key_allowed {
                                self.stopped = true;
                                return;
                            }
                            self.roll_indent(self.column);
                            self.simple_key_allowed = true;
                        }
                    }
                } else {
                    // Inside flow collections the key is not tracked; libyaml allows a new
                    // simple key after a value indicator there only when none was pending,
                    // and that only matters for keys, which never change the depth.
                    self.simple_key_allowed = false;
                }
                self.skip();
            }
            b'*' | b'&' => {
                self.save_simple_key();
                self.simple_key_allowed = false;
                self.scan_anchor();
            }
            b'!' => {
                self.save_simple_key();
                self.simple_key_allowed = false;
                self.scan_tag();
            }
            b'|' | b'>' if self.flow == 0 => {
                self.remove_simple_key();
                self.simple_key_allowed = true;
                self.scan_block_scalar();
            }
            b'\'' | b'"' => {
                self.save_simple_key();
                self.simple_key_allowed = false;
                self.scan_quoted(c == b'\'');
            }
            _ => {
                let starts_plain = !(self.is_blankz_at(0) || b"-?:,[]{}#&*!|>'\"%@`".contains(&c))
                    || (c == b'-' && !self.is_blank_at(1))
                    || (self.flow == 0 && matches!(c, b'?' | b':') && !next_blankz);
                if !starts_plain {
                    // "found character that cannot start any token"
                    self.stopped = true;
                    return;
                }
                self.save_simple_key();
                self.simple_key_allowed = false;
                self.scan_plain();
            }
        }
    }

    fn scan_anchor(&mut self) {
        self.skip();
        let start = self.pos;
        while is_alpha(self.cur()) {
            self.skip();
        }
        let ok_end = self.is_blankz_at(0) || b"?:,]}%@`".contains(&self.cur());
        if self.pos == start || !ok_end {
            self.stopped = true;
        }
    }

    fn scan_tag(&mut self) {
        if self.at(1) == b'<' {
            self.skip();
            self.skip();
            while is_uri(self.cur(), true) {
                self.skip();
            }
            if self.cur() != b'>' {
                self.stopped = true;
                return;
            }
            self.skip();
        } else {
            // Handle (`!`, `!!`, `!name!`) and suffix: all URI characters.
            self.skip();
            while is_uri(self.cur(), false) {
                self.skip();
            }
        }
        if !(self.is_blankz_at(0) || (self.flow != 0 && self.cur() == b',')) {
            self.stopped = true;
        }
    }

    fn scan_quoted(&mut self, single: bool) {
        let quote = if single { b'\'' } else { b'"' };
        self.skip();
        loop {
            if self.is_document_indicator() || self.is_z() {
                self.stopped = true;
                return;
            }
            while !self.is_blankz_at(0) {
                let c = self.cur();
                if single && c == b'\'' && self.at(1) == b'\'' {
                    self.skip();
                    self.skip();
                } else if c == quote {
                    break;
                } else if !single && c == b'\\' && self.is_break_at(1) {
                    self.skip();
                    self.skip_line();
                    break;
                } else if !single && c == b'\\' {
                    let code_length = match self.at(1) {
                        b'0' | b'a' | b'b' | b't' | b'\t' | b'n' | b'v' | b'f' | b'r' | b'e'
                        | b' ' | b'"' | b'/' | b'\\' | b'N' | b'_' | b'L' | b'P' => 0,
                        b'x' => 2,
                        b'u' => 4,
                        b'U' => 8,
                        _ => {
                            self.stopped = true;
                            return;
                        }
                    };
                    self.skip();
                    self.skip();
                    for _ in 0..code_length {
                        if !self.cur().is_ascii_hexdigit() {
                            self.stopped = true;
                            return;
                        }
                        self.skip();
                    }
                } else {
                    self.skip();
                }
            }
            if self.cur() == quote {
                self.skip();
                return;
            }
            while self.is_blank_at(0) || self.is_break_at(0) {
                if self.is_blank_at(0) {
                    self.skip();
                } else {
                    self.skip_line();
                }
            }
        }
    }

    fn scan_plain(&mut self) {
        let indent = self.indent + 1;
        let mut leading_blanks = false;
        loop {
            if self.is_document_indicator() || self.cur() == b'#' {
                break;
            }
            while !self.is_blankz_at(0) {
                let c = self.cur();
                if self.flow != 0 && c == b':' && b",?[]{}".contains(&self.at(1)) {
                    self.stopped = true;
                    return;
                }
                if (c == b':' && self.is_blankz_at(1)) || (self.flow != 0 && b",[]{}".contains(&c))
                {
                    break;
                }
                leading_blanks = false;
                self.skip();
            }
            if !(self.is_blank_at(0) || self.is_break_at(0)) {
                break;
            }
            while self.is_blank_at(0) || self.is_break_at(0) {
                if self.is_blank_at(0) {
                    let column = i64::try_from(self.column).unwrap_or(i64::MAX);
                    if leading_blanks && column < indent && self.cur() == b'\t' {
                        self.stopped = true;
                        return;
                    }
                    self.skip();
                } else {
                    self.skip_line();
                    leading_blanks = true;
                }
            }
            let column = i64::try_from(self.column).unwrap_or(i64::MAX);
            if self.flow == 0 && column < indent {
                break;
            }
        }
        if leading_blanks {
            self.simple_key_allowed = true;
        }
    }

    fn scan_block_scalar(&mut self) {
        self.skip();
        let mut increment: i64 = 0;
        let digit = |b: u8| i64::from(b - b'0');
        if matches!(self.cur(), b'+' | b'-') {
            self.skip();
            if self.cur().is_ascii_digit() {
                if self.cur() == b'0' {
                    self.stopped = true;
                    return;
                }
                increment = digit(self.cur());
                self.skip();
            }
        } else if self.cur().is_ascii_digit() {
            if self.cur() == b'0' {
                self.stopped = true;
                return;
            }
            increment = digit(self.cur());
            self.skip();
            if matches!(self.cur(), b'+' | b'-') {
                self.skip();
            }
        }
        while self.is_blank_at(0) {
            self.skip();
        }
        if self.cur() == b'#' {
            while !self.is_breakz() {
                self.skip();
            }
        }
        if !self.is_breakz() {
            self.stopped = true;
            return;
        }
        if self.is_break_at(0) {
            self.skip_line();
        }
        let mut indent: i64 = 0;
        if increment != 0 {
            indent = if self.indent >= 0 {
                self.indent + increment
            } else {
                increment
            };
        }
        if !self.block_scalar_breaks(&mut indent) {
            return;
        }
        while i64::try_from(self.column).unwrap_or(i64::MAX) == indent && !self.is_z() {
            while !self.is_breakz() {
                self.skip();
            }
            if self.is_break_at(0) {
                self.skip_line();
            }
            if !self.block_scalar_breaks(&mut indent) {
                return;
            }
        }
    }

    /// libyaml's `yaml_parser_scan_block_scalar_breaks`: skips indentation and empty lines,
    /// and detects the indentation when it is not known yet. False when libyaml fails.
    fn block_scalar_breaks(&mut self, indent: &mut i64) -> bool {
        let mut max_indent: i64 = 0;
        loop {
            let col = |s: &Self| i64::try_from(s.column).unwrap_or(i64::MAX);
            while (*indent == 0 || col(self) < *indent) && self.cur() == b' ' {
                self.skip();
            }
            max_indent = max_indent.max(col(self));
            if (*indent == 0 || col(self) < *indent) && self.cur() == b'\t' {
                self.stopped = true;
                return false;
            }
            if !self.is_break_at(0) {
                break;
            }
            self.skip_line();
        }
        if *indent == 0 {
            *indent = max_indent.max(self.indent + 1).max(1);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn depth_ok(text: &str, limit: usize) -> bool {
        check_yaml(text, limit).is_ok()
    }

    #[test]
    fn flow_and_block_nesting_are_counted() {
        assert!(depth_ok("a: [[[1]]]", 4));
        assert!(!depth_ok("a: [[[1]]]", 3), "mapping + three flow levels");
        assert!(depth_ok("[[1], [2], [3], {a: [4]}]", 3));
        assert!(!depth_ok("[[1], [2], [3], {a: [[4]]}]", 3));
        let block = "a:\n  b:\n    c:\n      d: 1\n";
        assert!(depth_ok(block, 4));
        assert!(!depth_ok(block, 3));
        assert!(!depth_ok("- - - - - x", 4), "compact block sequences nest");
        assert_eq!(
            check_yaml("a: 1\nb: [[[[[[", 3),
            Err(TooDeep { limit: 3, line: 2 })
        );
    }

    #[test]
    fn brackets_in_scalars_and_comments_are_content() {
        for (text, limit) in [
            ("a: '[[[[[['\n", 2),
            ("a: \"[[[[[[\\\"[[[[\"\n", 2),
            ("a: x[[[[[[\n", 2),
            ("# [[[[[[\na: 1\n", 2),
            ("a: 1 # [[[[[[\n", 2),
            ("a: |\n  [[[[[[\n  {{{{{{\nb: 1\n", 2),
            ("a: >-\n    [[[[[[\n\n    [[[[\nb: 1\n", 2),
            ("- |2\n   [[[[[[\n", 2),
            ("a: it's [[[[[[\n", 2),
            ("a: !<tag:[[[[[[> x\n", 2),
            ("a: multi\n  line [[[[[[ plain\n", 2),
            ("'a''[[[[[[': 1\n", 2),
            // The tag ends at the blank; the six brackets after it are real.
            ("a: !tag [[[[[[]]]]]]\n", 7),
            ("%YAML 1.1\n--- [[[[[[\n", 6),
        ] {
            assert!(depth_ok(text, limit), "{text:?}");
        }
    }

    #[test]
    fn markup_after_scalars_and_comments_is_counted() {
        // What ends a scalar or comment for libyaml ends it here too: brackets after it count.
        for text in [
            "a: 'x'\nb: [[[[[[\n",
            "a: \"x\\\"\"\nb: [[[[[[\n",
            "a: |\n  text\nb: [[[[[[\n",
            "- a: |\n xx\n- [[[[[[\n",
            "# c\u{85}[[[[[[\n",
            "a: x\u{2028}b: [[[[[[\n",
            "a: b\r[[[[[[\n",
            "a: plain\nb: [[[[[[\n",
            "[a, 'b', \"c\", d: e, f[[[[[[\n",
            "a: &anchor [[[[[[\n",
            "a: !tag [[[[[[\n",
            "--- |\n  text\n--- [[[[[[\n",
        ] {
            assert!(!depth_ok(text, 4), "{text:?}");
        }
    }

    #[test]
    fn what_libyaml_refuses_ends_the_scan() {
        // libyaml stops at its first error (or at a character its reader refuses), so
        // nothing after it is parsed and nothing after it counts.
        for text in [
            "a: \"\\q\" [[[[[[\n",
            "a: \u{1}[[[[[[\n",
            "a: [x:[[[[[[\n",
            "a: &[[[[[[\n",
        ] {
            assert!(depth_ok(text, 2), "{text:?}");
        }
    }

    #[test]
    fn real_manifests_pass() {
        for f in ["node.yaml", "nginx.yaml", "others.yaml"] {
            let path = format!("{}/../../examples/nginx/{f}", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).expect("example");
            assert!(check_yaml(&text, 12).is_ok(), "{f}");
        }
    }

    #[test]
    fn json_nesting() {
        assert!(check_json(r#"{"a": [[1]], "b": "[[[[[[[["}"#, 3).is_ok());
        assert!(check_json(r#"{"a": "\"[[[[", "b": [[[1]]]}"#, 3).is_err());
    }

    /// Compares the deepest flow level with libyaml's own scanner (PyYAML's `CLoader`) over
    /// random YAML-like text: never less than libyaml's (that would let deep input through).
    /// Needs python3 with PyYAML built against libyaml: `cargo test -- --ignored libyaml`.
    #[test]
    #[ignore]
    fn never_below_libyaml_on_random_text() {
        let pieces = [
            "[", "]", "{", "}", ",", ":", " ", "\n", "  ", "-", "?", "'", "\"", "\\", "#", "|",
            ">", "&a", "*a", "!t", "!<", "a", "b: ", "- ", "---\n", "\t", "\r\n", "\u{85}", "%",
            "x", "1", "''", "|2", ">-", "\\x4", "...", "   ", ": ", "? ", "\u{2028}",
        ];
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let cases: Vec<String> = (0..100_000)
            .map(|_| {
                let n = next() % 40;
                (0..n)
                    .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                    .collect()
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("cases.json");
        std::fs::write(&input, serde_json::to_string(&cases).unwrap()).unwrap();
        let script = r#"
import json, sys, yaml
out = []
for t in json.load(open(sys.argv[1])):
    d = m = 0
    try:
        for tok in yaml.scan(t, Loader=yaml.CLoader):
            n = type(tok).__name__
            if n in ('FlowSequenceStartToken', 'FlowMappingStartToken'):
                d += 1
                m = max(m, d)
            elif n in ('FlowSequenceEndToken', 'FlowMappingEndToken'):
                d -= 1
    except yaml.YAMLError:
        pass
    out.append(m)
print(json.dumps(out))
"#;
        let out = std::process::Command::new("python3")
            .args(["-c", script])
            .arg(&input)
            .output()
            .expect("python3");
        drop(dir);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs: Vec<usize> = serde_json::from_slice(&out.stdout).unwrap();
        let (mut equal, mut above) = (0, 0);
        for (text, theirs) in cases.iter().zip(theirs) {
            let mut s = Scanner::new(text, usize::MAX);
            s.run();
            assert!(
                s.max_flow >= theirs,
                "{text:?}: {} < libyaml's {theirs}",
                s.max_flow
            );
            if s.max_flow == theirs {
                equal += 1;
            } else {
                above += 1;
            }
        }
        eprintln!("{equal} equal, {above} above libyaml");
    }

    #[test]
    fn a_hundred_thousand_nested_brackets_are_refused_in_milliseconds() {
        let deep = "[".repeat(100_000);
        let keys = "{a: ".repeat(100_000);
        let start = Instant::now();
        assert_eq!(
            check_yaml(&deep, MAX_DEPTH),
            Err(TooDeep {
                limit: MAX_DEPTH,
                line: 1
            })
        );
        assert!(check_json(&deep, MAX_DEPTH).is_err());
        // Nested flow mappings with keys are libyaml's quadratic case (20,000: 9 s).
        assert!(check_yaml(&keys, MAX_DEPTH).is_err());
        let took = start.elapsed();
        assert!(took < Duration::from_millis(100), "{took:?}");
    }

    #[test]
    fn valid_text_is_scanned_in_linear_time() {
        let line = "- [a, {b: 'c', d: \"e\"}]\n";
        let time = |n: usize| {
            let text = line.repeat(n);
            let start = Instant::now();
            assert!(check_yaml(&text, MAX_DEPTH).is_ok());
            start.elapsed()
        };
        let (small, large) = (time(20_000), time(80_000));
        // Four times the text: about four times the time, far from sixteen.
        assert!(
            large < small * 10 + Duration::from_millis(50),
            "{small:?} {large:?}"
        );
    }
}
