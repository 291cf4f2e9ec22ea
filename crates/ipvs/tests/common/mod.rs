//! Reading the hex vectors of `tests/vectors/`.
#![allow(dead_code)] // each test crate uses part of it

use std::fmt::Write;

/// The family id the vectors were derived with.
pub const FAMILY: u16 = 0x0022;

/// The bytes of `tests/vectors/<name>.hex` (`#` starts a comment, whitespace is ignored).
pub fn vector(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/vectors/{name}.hex", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let digits: String = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect();
    assert!(digits.len() % 2 == 0, "{path}: odd number of hex digits");
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&digits[i..i + 2], 16).unwrap_or_else(|e| panic!("{path}: {e}"))
        })
        .collect()
}

/// Hex dump in 16-byte rows, for readable failures.
pub fn dump(bytes: &[u8]) -> String {
    let mut s = String::new();
    for (i, row) in bytes.chunks(16).enumerate() {
        let _ = write!(s, "{:04x}:", i * 16);
        for b in row {
            let _ = write!(s, " {b:02x}");
        }
        s.push('\n');
    }
    s
}

/// Asserts two byte strings are equal, printing both as hex when not.
#[track_caller]
pub fn assert_bytes(got: &[u8], want: &[u8], what: &str) {
    assert!(
        got == want,
        "{what}: bytes differ\n--- got ({} bytes)\n{}--- want ({} bytes)\n{}",
        got.len(),
        dump(got),
        want.len(),
        dump(want)
    );
}
