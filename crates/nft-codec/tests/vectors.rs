//! Byte-exact test vectors: the batches of representative transactions, committed under
//! `tests/vectors/` (how they were captured and confirmed: `tests/vectors/README.md`), must
//! be what the encoder produces today, byte for byte. No socket, no root.
//!
//! To rewrite them after a deliberate change of the encoding:
//! `cargo test -p rudder-nft-codec --test vectors -- --ignored write_vectors`, then confirm
//! them against `nft` and the kernel (`crates/nft-backend/tests/vectors.rs`).

mod cases;

use std::path::PathBuf;

use cases::{Case, SEQ, cases};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The messages of a batch, each with its own bytes.
fn messages(mut b: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let len = len.clamp(4, b.len());
        out.push(&b[..len]);
        b = &b[len.div_ceil(4).saturating_mul(4).min(b.len())..];
    }
    out
}

/// The messages of a vector file: one hex line each, `#` comments.
fn read_vector(name: &str) -> Vec<Vec<u8>> {
    let path = dir().join(format!("{name}.hex"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (write it with --ignored write_vectors)",
            path.display()
        )
    });
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            (0..l.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&l[i..i + 2], 16).expect("hex"))
                .collect()
        })
        .collect()
}

fn render(case: &Case) -> String {
    let batch = case.encode();
    let mut out = format!(
        "# {}: {}\n\
         # The batch rudder-nft-codec encodes for the transaction below (tests/cases/mod.rs),\n\
         # first sequence number {SEQ}{}. One netlink message per line, in hex.\n\
         # Regenerate: cargo test -p rudder-nft-codec --test vectors -- --ignored write_vectors\n\
         #\n",
        case.name,
        case.about,
        if case.dry_run { ", as a dry run" } else { "" },
    );
    for line in case.tx.render().lines() {
        out.push_str(&format!("#   {line}\n"));
    }
    for m in messages(&batch.bytes) {
        out.push_str(&hex(m));
        out.push('\n');
    }
    out
}

#[test]
fn batches_are_byte_identical_to_the_vectors() {
    for case in cases() {
        let batch = case.encode();
        let got = messages(&batch.bytes);
        let want = read_vector(case.name);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g == &w.as_slice(),
                "{}: message {i} differs\n encoded: {}\n vector:  {}",
                case.name,
                hex(g),
                hex(w)
            );
        }
        assert_eq!(got.len(), want.len(), "{}: number of messages", case.name);
        // Framing: BATCH_BEGIN first, BATCH_END last unless a dry run, the ack asked on the
        // last operation message.
        assert_eq!(
            u16::from_ne_bytes([got[0][4], got[0][5]]),
            0x10,
            "{}",
            case.name
        );
        let end = u16::from_ne_bytes([got[got.len() - 1][4], got[got.len() - 1][5]]);
        assert_eq!(end == 0x11, !case.dry_run, "{}", case.name);
        let last = if case.dry_run {
            got.len() - 1
        } else {
            got.len() - 2
        };
        let flags = u16::from_ne_bytes([got[last][6], got[last][7]]);
        assert_ne!(flags & 0x4, 0, "{}: ack requested", case.name);
        let seq = u32::from_ne_bytes([got[last][8], got[last][9], got[last][10], got[last][11]]);
        assert_eq!(batch.last_seq, Some(seq), "{}", case.name);
    }
}

/// Rewrites every vector from the current encoder.
#[test]
#[ignore = "rewrites tests/vectors/*.hex"]
fn write_vectors() {
    std::fs::create_dir_all(dir()).expect("vectors dir");
    for case in cases() {
        let path = dir().join(format!("{}.hex", case.name));
        std::fs::write(&path, render(&case)).expect("write vector");
    }
}
