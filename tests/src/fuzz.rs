//! A small mutation fuzzer that runs on the stable toolchain, inside `cargo test`.
//!
//! `cargo fuzz` needs a nightly compiler (for its sanitizer coverage), which this project's
//! machines do not have. This driver is the stand-in: it takes the checked-in seed corpus of
//! a target, applies random stacked mutations (bit flips, interesting bytes and numbers,
//! dictionary tokens, deleted, duplicated and spliced ranges) from a seeded generator, and
//! calls the target with each result for a fixed time. A panic is a finding: the input is
//! written under `target/fuzz-findings/<target>/` and the run fails, naming the file and the
//! seed so that it can be replayed. There is no coverage feedback: the seeds and the
//! dictionary carry the structure.
//!
//! Each run reports its executions and findings on stderr. The time per target is
//! `RUDDER_FUZZ_SECS` (default 3 s in `cargo test`; `cargo xtask fuzz` runs longer), the
//! seed `RUDDER_FUZZ_SEED` (default: from the clock, printed).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What one run did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The target's name.
    pub target: String,
    /// The generator's seed (`RUDDER_FUZZ_SEED` replays the run).
    pub seed: u64,
    /// Inputs tried, seeds included.
    pub executions: u64,
    /// How long it ran.
    pub elapsed: Duration,
    /// Files holding inputs that panicked.
    pub findings: Vec<PathBuf>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fuzz {}: {} executions in {:.1} s ({:.0}/s), seed {}, {} findings",
            self.target,
            self.executions,
            self.elapsed.as_secs_f64(),
            self.executions as f64 / self.elapsed.as_secs_f64().max(1e-9),
            self.seed,
            self.findings.len()
        )
    }
}

/// xorshift64*: fast, seedable, good enough to pick mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator (a zero seed is taken as one).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

const INTERESTING_BYTES: &[u8] = b"\0\xff\x7f\x80\"';\n\r\t{}[]:-/.,#&*!|>%@`\\ ";
const INTERESTING_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "255",
    "256",
    "65535",
    "65536",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "-9223372036854775808",
    "18446744073709551616",
    "99999999999999999999999",
    "1e400",
    "0.5",
    "NaN",
    ".inf",
    "0x10",
];

/// One mutation of `data`, in place.
fn mutate_once(data: &mut Vec<u8>, rng: &mut Rng, dict: &[&[u8]], seeds: &[Vec<u8>]) {
    let len = data.len();
    match rng.below(9) {
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())];
        }
        2 if len > 0 => {
            // Delete a range.
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(64));
            data.drain(at..at + n);
        }
        3 if len > 0 => {
            // Duplicate a range (grows lists, nesting, repeated keys).
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(256));
            let chunk: Vec<u8> = data[at..at + n].to_vec();
            let to = rng.below(len + 1);
            data.splice(to..to, chunk);
        }
        4 if !dict.is_empty() => {
            let tok = dict[rng.below(dict.len())];
            let to = rng.below(len + 1);
            data.splice(to..to, tok.iter().copied());
        }
        5 => {
            // Replace a run of digits (or insert) with an interesting number.
            let num = INTERESTING_NUMBERS[rng.below(INTERESTING_NUMBERS.len())].as_bytes();
            let digits: Vec<usize> = (0..len).filter(|&i| data[i].is_ascii_digit()).collect();
            if digits.is_empty() {
                let to = rng.below(len + 1);
                data.splice(to..to, num.iter().copied());
            } else {
                let start = digits[rng.below(digits.len())];
                let mut end = start;
                while end < len && data[end].is_ascii_digit() {
                    end += 1;
                }
                data.splice(start..end, num.iter().copied());
            }
        }
        6 if !seeds.is_empty() => {
            // Splice: our prefix, another seed's suffix.
            let other = &seeds[rng.below(seeds.len())];
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        7 if len > 1 => {
            // Swap two bytes.
            let (a, b) = (rng.below(len), rng.below(len));
            data.swap(a, b);
        }
        _ => {
            // Repeat one byte many times (long tokens, deep nesting).
            let b = if len > 0 { data[rng.below(len)] } else { b'[' };
            let n = 1 + rng.below(4096);
            let to = rng.below(len + 1);
            data.splice(to..to, std::iter::repeat_n(b, n));
        }
    }
}

/// The seed corpus: every regular file directly in each of `dirs`, sorted.
pub fn seeds_from(dirs: &[&Path]) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|rd| rd.flatten().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn budget() -> Duration {
    std::env::var("RUDDER_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(3))
}

fn seed() -> u64 {
    std::env::var("RUDDER_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// Where findings go: `<workspace>/target/fuzz-findings/<target>/`.
fn findings_dir(target: &str) -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    base.join("fuzz-findings").join(target)
}

/// The text of a panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".into()
    }
}

/// Runs `target` on every finding saved for it (after a fix): the messages of those that
/// still panic.
pub fn replay(target: &str, f: impl Fn(&[u8])) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(findings_dir(target)) else {
        return out;
    };
    let mut files: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_none())
        .collect();
    files.sort();
    for p in files {
        let Ok(data) = std::fs::read(&p) else {
            continue;
        };
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| f(&data))) {
            out.push((p, panic_message(&*payload)));
        }
    }
    out
}

/// Runs `target` on the seeds as they are, then on mutations of them until the time is up.
/// Inputs are at most `max_len` bytes. Panics (after the run) when something was found.
pub fn run(
    target: &str,
    seeds: &[Vec<u8>],
    dict: &[&[u8]],
    max_len: usize,
    f: impl Fn(&[u8]),
) -> Report {
    assert!(!seeds.is_empty(), "fuzz {target}: no seeds");
    let seed = seed();
    let mut rng = Rng::new(seed);
    let budget = budget();
    let started = Instant::now();
    let mut executions = 0u64;
    let mut findings = Vec::new();
    // Panics of this thread are findings, not test output: keep them quiet while fuzzing
    // (other threads' panics still reach the previous hook).
    let previous = std::sync::Arc::new(std::panic::take_hook());
    let me = std::thread::current().id();
    let forward = previous.clone();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() != me {
            forward(info);
        }
    }));
    let try_one = |input: &[u8], findings: &mut Vec<PathBuf>| {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| f(input))) {
            let dir = findings_dir(target);
            let _ = std::fs::create_dir_all(&dir);
            let path = dir.join(format!("crash-{seed}-{}", findings.len()));
            let _ = std::fs::write(&path, input);
            let _ = std::fs::write(path.with_extension("txt"), panic_message(&*payload));
            findings.push(path);
        }
    };
    for s in seeds {
        try_one(s, &mut findings);
        executions += 1;
    }
    while started.elapsed() < budget && findings.len() < 10 {
        let mut data = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(8) {
            mutate_once(&mut data, &mut rng, dict, seeds);
        }
        data.truncate(max_len);
        try_one(&data, &mut findings);
        executions += 1;
    }
    let _ = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| previous(info)));
    let report = Report {
        target: target.into(),
        seed,
        executions,
        elapsed: started.elapsed(),
        findings,
    };
    eprintln!("{report}");
    if let Some(first) = report.findings.first() {
        let message = std::fs::read_to_string(first.with_extension("txt")).unwrap_or_default();
        panic!(
            "{report}: inputs that panic: {:?} (replay with RUDDER_FUZZ_SEED={seed}); the first: {message}",
            report.findings
        );
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_target_is_found_and_saved() {
        let seeds = vec![b"hello".to_vec()];
        let r = catch_unwind(|| {
            run("self-test", &seeds, &[b"BOOM"], 64, |d| {
                assert!(!d.windows(4).any(|w| w == b"BOOM"), "found it");
            })
        });
        assert!(r.is_err(), "the finding fails the run");
        let dir = findings_dir("self-test");
        let saved = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(saved > 0, "the input was saved");
    }

    #[test]
    fn mutations_stay_within_bounds_and_change_the_input() {
        let mut rng = Rng::new(7);
        let seeds = vec![b"a: [1, 2]\n".to_vec(), Vec::new()];
        let mut changed = 0;
        for i in 0..10_000 {
            let mut d = seeds[i % 2].clone();
            mutate_once(&mut d, &mut rng, &[b"x"], &seeds);
            changed += usize::from(d != seeds[i % 2]);
        }
        assert!(changed > 9_000, "{changed}");
    }
}
