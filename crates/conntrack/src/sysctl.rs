//! The conntrack sysctls kube-proxy sets at startup (`--conntrack-*`, `conntrack.*` in its
//! configuration): the table size (`nf_conntrack_max`, and the hash size with it) and the TCP
//! and UDP timeouts.
//!
//! Timeouts are per network namespace; `nf_conntrack_max` can only be raised from the host's
//! namespace, and the hash size (a module parameter under `/sys`) is only touched after the
//! maximum was raised, so a daemon in a container's namespace never changes the host's table.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What to set. `None`, zero and `false` mean "leave the kernel's value".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConntrackSettings {
    /// `nf_conntrack_max` per CPU (kube-proxy's `maxPerCore`, default 32768; 0 leaves it).
    pub max_per_core: u32,
    /// Lower bound of `nf_conntrack_max` (kube-proxy's `min`, default 131072).
    pub min: u32,
    /// `nf_conntrack_tcp_timeout_established`.
    pub tcp_established: Option<Duration>,
    /// `nf_conntrack_tcp_timeout_close_wait`.
    pub tcp_close_wait: Option<Duration>,
    /// `nf_conntrack_tcp_be_liberal = 1`.
    pub tcp_be_liberal: bool,
    /// `nf_conntrack_udp_timeout`.
    pub udp: Option<Duration>,
    /// `nf_conntrack_udp_timeout_stream`.
    pub udp_stream: Option<Duration>,
}

/// The outcome for one setting.
#[derive(Debug)]
pub struct Outcome {
    /// The sysctl (or parameter) name.
    pub name: &'static str,
    /// `Ok(Some((old, new)))` when written, `Ok(None)` when already right, or why it failed.
    pub result: io::Result<Option<(u64, u64)>>,
}

/// Where the files are: `/proc/sys/net/netfilter` and `/sys/module/nf_conntrack/parameters`
/// on a real system, a directory of plain files in tests.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Holds `nf_conntrack_*`.
    pub sysctl_dir: PathBuf,
    /// Holds `hashsize`.
    pub module_dir: PathBuf,
}

impl Default for Paths {
    fn default() -> Paths {
        Paths {
            sysctl_dir: "/proc/sys/net/netfilter".into(),
            module_dir: "/sys/module/nf_conntrack/parameters".into(),
        }
    }
}

fn read(path: &Path) -> io::Result<u64> {
    let text = std::fs::read_to_string(path)?;
    text.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: not a number: {:?}", path.display(), text.trim()),
        )
    })
}

/// Writes `value` unless the file already holds it (`only_raise`: unless it holds at least it).
fn set(path: &Path, value: u64, only_raise: bool) -> io::Result<Option<(u64, u64)>> {
    let old = read(path)?;
    if old == value || (only_raise && old > value) {
        return Ok(None);
    }
    std::fs::write(path, format!("{value}\n"))?;
    Ok(Some((old, value)))
}

/// Applies `s` for a machine with `cpus` CPUs; returns one outcome per setting it tried.
pub fn apply(s: &ConntrackSettings, cpus: usize, paths: &Paths) -> Vec<Outcome> {
    let mut out = Vec::new();
    if s.max_per_core > 0 {
        let cpus = u64::try_from(cpus.max(1)).unwrap_or(u64::MAX);
        let max = (u64::from(s.max_per_core).saturating_mul(cpus)).max(u64::from(s.min));
        let result = set(&paths.sysctl_dir.join("nf_conntrack_max"), max, true);
        let raised = matches!(result, Ok(Some(_)));
        out.push(Outcome {
            name: "nf_conntrack_max",
            result,
        });
        if raised {
            // kube-proxy keeps the hash table at a quarter of the maximum.
            out.push(Outcome {
                name: "nf_conntrack hashsize",
                result: set(&paths.module_dir.join("hashsize"), max / 4, true),
            });
        }
    }
    let timeouts: [(&'static str, Option<Duration>); 4] = [
        ("nf_conntrack_tcp_timeout_established", s.tcp_established),
        ("nf_conntrack_tcp_timeout_close_wait", s.tcp_close_wait),
        ("nf_conntrack_udp_timeout", s.udp),
        ("nf_conntrack_udp_timeout_stream", s.udp_stream),
    ];
    for (name, d) in timeouts {
        if let Some(d) = d.filter(|d| d.as_secs() > 0) {
            out.push(Outcome {
                name,
                result: set(&paths.sysctl_dir.join(name), d.as_secs(), false),
            });
        }
    }
    if s.tcp_be_liberal {
        out.push(Outcome {
            name: "nf_conntrack_tcp_be_liberal",
            result: set(
                &paths.sysctl_dir.join("nf_conntrack_tcp_be_liberal"),
                1,
                false,
            ),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake() -> (tempfile::TempDir, Paths) {
        let dir = tempfile::Builder::new()
            .prefix("rudder-sysctl-")
            .tempdir()
            .expect("dir");
        let d = dir.path().to_path_buf();
        for (f, v) in [
            ("nf_conntrack_max", "65536"),
            ("hashsize", "16384"),
            ("nf_conntrack_tcp_timeout_established", "432000"),
            ("nf_conntrack_tcp_timeout_close_wait", "60"),
            ("nf_conntrack_tcp_be_liberal", "0"),
            ("nf_conntrack_udp_timeout", "30"),
            ("nf_conntrack_udp_timeout_stream", "120"),
        ] {
            std::fs::write(d.join(f), format!("{v}\n")).expect("write");
        }
        let paths = Paths {
            sysctl_dir: d.clone(),
            module_dir: d.clone(),
        };
        (dir, paths)
    }

    fn value(p: &Paths, f: &str) -> u64 {
        read(&p.sysctl_dir.join(f)).expect("read")
    }

    #[test]
    fn kube_proxy_defaults_raise_the_table_and_set_tcp_timeouts() {
        let (_d, p) = fake();
        let s = ConntrackSettings {
            max_per_core: 32768,
            min: 131072,
            tcp_established: Some(Duration::from_secs(86400)),
            tcp_close_wait: Some(Duration::from_secs(3600)),
            ..ConntrackSettings::default()
        };
        let out = apply(&s, 2, &p);
        assert!(out.iter().all(|o| o.result.is_ok()), "{out:?}");
        assert_eq!(
            value(&p, "nf_conntrack_max"),
            131072,
            "min wins over 2 × 32768"
        );
        assert_eq!(value(&p, "hashsize"), 32768);
        assert_eq!(value(&p, "nf_conntrack_tcp_timeout_established"), 86400);
        assert_eq!(value(&p, "nf_conntrack_tcp_timeout_close_wait"), 3600);
        assert_eq!(
            value(&p, "nf_conntrack_udp_timeout"),
            30,
            "unset: left alone"
        );
        assert_eq!(value(&p, "nf_conntrack_tcp_be_liberal"), 0);
        // Again: nothing to write.
        let again = apply(&s, 2, &p);
        assert!(
            again.iter().all(|o| matches!(o.result, Ok(None))),
            "{again:?}"
        );
    }

    #[test]
    fn the_table_is_never_shrunk_and_zero_leaves_it() {
        let (_d, p) = fake();
        std::fs::write(p.sysctl_dir.join("nf_conntrack_max"), "1000000\n").expect("write");
        let s = ConntrackSettings {
            max_per_core: 32768,
            min: 0,
            tcp_be_liberal: true,
            udp: Some(Duration::from_secs(10)),
            ..ConntrackSettings::default()
        };
        let out = apply(&s, 4, &p);
        assert!(out.iter().all(|o| o.result.is_ok()), "{out:?}");
        assert_eq!(value(&p, "nf_conntrack_max"), 1_000_000);
        assert_eq!(
            value(&p, "hashsize"),
            16384,
            "untouched when the maximum was not raised"
        );
        assert_eq!(value(&p, "nf_conntrack_tcp_be_liberal"), 1);
        assert_eq!(value(&p, "nf_conntrack_udp_timeout"), 10);
        let none = apply(&ConntrackSettings::default(), 4, &p);
        assert!(none.is_empty(), "{none:?}");
    }

    #[test]
    fn raising_the_table_never_shrinks_its_hash() {
        // kubernetes#142035: the maximum is raised, but a hash table already larger than a
        // quarter of the new maximum stays as it is; and a maximum above the computed one is
        // never lowered, whatever the CPU count.
        let (_d, p) = fake();
        std::fs::write(p.module_dir.join("hashsize"), "1048576\n").expect("write");
        let s = ConntrackSettings {
            max_per_core: 32768,
            min: 131072,
            ..ConntrackSettings::default()
        };
        let out = apply(&s, 8, &p);
        assert!(out.iter().all(|o| o.result.is_ok()), "{out:?}");
        assert_eq!(value(&p, "nf_conntrack_max"), 262144);
        assert_eq!(
            read(&p.module_dir.join("hashsize")).expect("read"),
            1_048_576
        );
        for cpus in [1, 2, 4] {
            let out = apply(&s, cpus, &p);
            assert!(out.iter().all(|o| matches!(o.result, Ok(None))), "{out:?}");
            assert_eq!(value(&p, "nf_conntrack_max"), 262144, "{cpus} CPUs");
        }
    }

    #[test]
    fn errors_are_reported_per_setting() {
        let (_d, mut p) = fake();
        p.sysctl_dir = p.sysctl_dir.join("missing");
        let s = ConntrackSettings {
            max_per_core: 1,
            tcp_established: Some(Duration::from_secs(5)),
            ..ConntrackSettings::default()
        };
        let out = apply(&s, 1, &p);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|o| o.result.is_err()), "{out:?}");
    }
}
