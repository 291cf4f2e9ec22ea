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
        "[", "]", "{", "}", ",", ":", " ", "\n", "  ", "-", "?", "'", "\"", "\\", "#", "|", ">",
        "&a", "*a", "!t", "!<", "a", "b: ", "- ", "---\n", "\t", "\r\n", "\u{85}", "%", "x", "1",
        "''", "|2", ">-", "\\x4", "...", "   ", ": ", "? ", "\u{2028}",
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
