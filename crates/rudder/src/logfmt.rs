//! Log output that input cannot forge: control characters in logged values are escaped.
//!
//! Object names, namespaces, file paths and error messages come from input, and Kubernetes
//! does not stop a manifest from putting a newline or an escape sequence in them. Written as
//! they are, a newline starts a fake log line and an escape sequence drives the terminal.
//!
//! - Text logs: [`EscapedFields`] formats every field (the message included) like
//!   tracing-subscriber's default, then escapes what [`is_unsafe_char`] flags (`\n`, `\r`,
//!   `\t`, else `\u{1b}`). The line's own newline and the level colours are written by the
//!   event formatter around the fields, so they stay. (tracing-subscriber 0.3.20 and later
//!   already write ESC, BEL, BS, FF, DEL and C1 controls of messages and Display fields as
//!   `\x1b`-style escapes, but not newlines, carriage returns, tabs or the other C0
//!   controls: a newline still forged a line.)
//! - JSON logs: serde escapes C0 controls, but writes DEL, C1 controls (`U+009B` is a CSI to
//!   many terminals), the Unicode line separators and bidirectional controls as they are;
//!   [`JsonSafe`] rewrites those as `\uXXXX`, which is the same JSON string.
//! - Text Rudder prints itself (`rudder compile`'s and `explain`'s messages on stderr) goes
//!   through [`rudder_model::escape_controls`].

use std::fmt;
use std::io;

use rudder_model::{escape_controls, is_unsafe_char};
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};

/// `text` with every unsafe character but the newline escaped: for multi-line reports
/// received from elsewhere (`explain --live`, `status --json`) before they reach a terminal.
pub fn multiline(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c != '\n' && is_unsafe_char(c)) {
        return std::borrow::Cow::Borrowed(text);
    }
    text.split('\n')
        .map(|l| escape_controls(l).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
        .into()
}

/// Prints `rudder: <message>` on stderr, with control characters escaped.
pub fn say(message: impl fmt::Display) {
    eprintln!("rudder: {}", escape_controls(&message.to_string()));
}

/// tracing-subscriber's default field formatting, with control characters escaped.
#[derive(Debug, Default, Clone, Copy)]
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut buf = String::new();
        let mut visitor = DefaultVisitor::new(Writer::new(&mut buf), true);
        fields.record(&mut visitor);
        visitor.finish()?;
        writer.write_str(&escape_controls(&buf))
    }
}

/// A writer of JSON log lines that escapes, as `\uXXXX`, the characters serde leaves raw but
/// a terminal may act on. Each line arrives in one `write` (tracing-subscriber formats an
/// event into a buffer and writes it at once), so a character is never split.
#[derive(Debug)]
pub struct JsonSafe<W>(pub W);

impl<W: io::Write> io::Write for JsonSafe<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        if !text.chars().any(is_unsafe_char) {
            self.0.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut out = String::with_capacity(text.len() + 16);
        for c in text.chars() {
            // C0 controls other than the line's own newline cannot occur outside strings in
            // serde's output, and inside them serde has escaped them already.
            if c != '\n' && is_unsafe_char(c) {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            } else {
                out.push(c);
            }
        }
        self.0.write_all(out.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects everything written, for the assertions.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    const EVIL: &str = "web\n2026-01-01T00:00:00Z  INFO rudder: all good\u{1b}[31m\r\u{7f}\u{9b}";

    /// Logs what Rudder logs about a bad object: the name in the message, in a Display field
    /// and in a Debug field, inside a span.
    fn log_hostile_lines() {
        let span = tracing::info_span!("sync", file = %EVIL);
        let _g = span.enter();
        tracing::warn!(
            reason = "invalid_port",
            name = %EVIL,
            namespace = ?EVIL,
            "skipped invalid input: Service {EVIL}/{EVIL}: invalid port"
        );
    }

    #[test]
    fn text_logs_escape_control_characters_in_every_field() {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(EscapedFields)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, log_hostile_lines);
        let out = sink.text();
        assert_eq!(out.matches('\n').count(), 1, "one line: {out:?}");
        assert!(out.ends_with('\n'));
        assert!(
            !out.trim_end_matches('\n').chars().any(is_unsafe_char),
            "{out:?}"
        );
        // The escapes are visible, in the message, the fields and the span. (tracing-subscriber
        // itself writes ESC, BEL, BS, FF and DEL as `\x1b`-style escapes in messages and
        // Display fields since 0.3.20, but leaves newlines, CR, tabs and other C0 controls.)
        assert!(
            out.contains(
                "skipped invalid input: Service web\\n2026-01-01T00:00:00Z  INFO rudder: all good\\x1b[31m\\r\\x7f\\u{9b}/"
            ),
            "{out}"
        );
        assert!(out.contains("sync{file=web\\n2026"), "{out}");
        assert!(out.contains(" name=web\\n2026"), "{out}");
        assert!(out.contains("reason=\"invalid_port\""), "{out}");
    }

    #[test]
    fn json_logs_keep_one_line_per_event_and_the_same_strings() {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || JsonSafe(writer.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, log_hostile_lines);
        let out = sink.text();
        assert_eq!(out.matches('\n').count(), 1, "one line: {out:?}");
        assert!(
            !out.trim_end_matches('\n').chars().any(is_unsafe_char),
            "{out:?}"
        );
        // Still JSON, and the strings are exactly the input.
        let v: serde_json::Value = serde_json::from_str(out.trim_end()).expect("one JSON object");
        assert_eq!(v["fields"]["name"], EVIL);
        assert_eq!(v["span"]["file"], EVIL);
        assert!(
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(EVIL)),
            "{v}"
        );
    }

    #[test]
    fn multiline_reports_keep_their_lines_only() {
        assert_eq!(multiline("a\nb\n"), "a\nb\n");
        assert_eq!(multiline("a\u{1b}[2J\r\nb"), "a\\u{1b}[2J\\r\nb");
    }

    #[test]
    fn json_safe_passes_clean_lines_through_unchanged() {
        let sink = Sink::default();
        let mut w = JsonSafe(sink.clone());
        let line = "{\"message\":\"sync done\",\"name\":\"café\"}\n";
        io::Write::write_all(&mut w, line.as_bytes()).unwrap();
        assert_eq!(sink.text(), line);
    }
}
