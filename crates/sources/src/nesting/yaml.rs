//! The YAML scanner: libyaml's rules for what is markup and what is content, its flow levels
//! and its indentation stack.

use super::*;

/// Checks YAML text (one or more documents).
pub fn check_yaml(text: &str, limit: usize) -> Result<(), TooDeep> {
    let mut s = Scanner::new(text, limit);
    s.run();
    match s.exceeded {
        Some(line) => Err(TooDeep { limit, line }),
        None => Ok(()),
    }
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

pub(super) struct Scanner<'a> {
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
    pub(super) max_flow: usize,
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
    pub(super) fn new(text: &'a str, limit: usize) -> Scanner<'a> {
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

    pub(super) fn run(&mut self) {
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
