//! Following manifest files for `rudder run`.
//!
//! Rules (docs/operations.md, "The manifest file source"):
//! - **Debounce.** A file that changed (its [`Meta`]: inode, size, modification or change
//!   time, symlink target) is read once that metadata has stayed the same for
//!   [`Settings::settle`] (300 ms), so a file caught mid-write is not read half-written.
//! - **Suspicious changes wait longer.** A file that had content and is now empty, or that
//!   disappeared, is believed only after staying so for [`Settings::suspicious`] (2 s): a
//!   truncate-then-write (or delete-then-create) never removes rules, while a real removal
//!   is applied 2 s later.
//! - **Last good content.** A file that cannot be read or parsed keeps the objects of its last
//!   successful read until it is fixed or removed; the problem is logged, counted, and shown
//!   by `/status` while it lasts.
//! - **Content hashes.** Every [`Settings::rehash`] (`--full-sync-period`) every file is read
//!   again and its content hash compared, which catches edits that metadata hides.
//! - **Paths that are not there.** The first snapshot waits until every path given on the
//!   command line can be walked; later, a path given that disappears (or cannot be read) keeps
//!   the objects of everything under it.
//! - Files are read on a thread of their own, never on the runtime's threads that serve
//!   `/healthz`, `/metrics` and `/status`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rudder_controller::change::Change;
use rudder_model::MALFORMED_DOCUMENT;
use tokio::sync::mpsc::UnboundedSender;
use tracing::{info, warn};

use crate::convert;
use crate::files::{self, Seen, Skipped};
use crate::manifests::{self, LoadError, Objects};

/// A manifest file that is being skipped (shown by `/status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SkippedInput {
    /// The path.
    pub file: String,
    /// The `reason` label (`not_regular_file`, `file_too_large`, …).
    pub reason: String,
    /// What is wrong with it.
    pub message: String,
}

/// Where the follower reports what it skips: the binary's metrics and `/status`.
pub trait Report: Send + Sync {
    /// One piece of input skipped, by reason (`rudder_invalid_input_skipped_total`).
    fn invalid_input(&self, reason: &str);
    /// The files being skipped now.
    fn set_skipped_input(&self, skipped: Vec<SkippedInput>);
}

/// The timing rules.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How long a changed file's metadata must stay the same before it is read.
    pub settle: Duration,
    /// How long a file that became empty, or disappeared, must stay so before it counts.
    pub suspicious: Duration,
    /// How often every file is read again to compare content hashes (zero: never).
    pub rehash: Duration,
}

impl Settings {
    /// The defaults, with content hashes checked every `full_sync_period`.
    pub fn new(full_sync_period: Duration) -> Settings {
        Settings {
            settle: Duration::from_millis(300),
            suspicious: Duration::from_secs(2),
            rehash: full_sync_period,
        }
    }
}

/// What is known about one path.
#[derive(Debug)]
struct FileState {
    /// What the last walk saw (`None`: nothing there).
    seen: Option<Seen>,
    /// Since when `seen` has not changed.
    since: Instant,
    /// What `seen` was when the path was last evaluated (`None`: never).
    evaluated: Option<Option<Seen>>,
    /// The next evaluation re-reads the file even if its metadata did not change.
    rehash_due: bool,
    /// Hash of the content `objects` came from.
    hash: Option<u64>,
    /// The last good content.
    objects: Option<Objects>,
    /// Whether that content was empty.
    empty: bool,
    /// Why the file is being skipped, while it is.
    problem: Option<Skipped>,
}

/// The result of one poll.
#[derive(Debug, Default)]
pub struct Poll {
    /// All objects, when they changed (always on the first poll).
    pub changed: Option<Objects>,
    /// Problems that appeared (or changed) in this poll: to log and count once.
    pub new_problems: Vec<Skipped>,
    /// Files that were being skipped and are read again.
    pub recovered: Vec<PathBuf>,
    /// Documents of the files read in this poll that could not be used.
    pub load_errors: Vec<LoadError>,
    /// Every file being skipped now.
    pub problems: Vec<Skipped>,
}

/// The manifest file source.
pub struct Follower {
    paths: Vec<PathBuf>,
    settings: Settings,
    files: BTreeMap<PathBuf, FileState>,
    started: bool,
    last_rehash: Option<Instant>,
}

impl Follower {
    /// A follower of `paths` (files or directories), with these timing rules.
    pub fn new(paths: Vec<PathBuf>, settings: Settings) -> Follower {
        Follower {
            paths,
            settings,
            files: BTreeMap::new(),
            started: false,
            last_rehash: None,
        }
    }

    /// Looks at the files once, at time `now`.
    pub fn poll(&mut self, now: Instant) -> Poll {
        let first = !self.started;
        self.started = true;
        let mut seen_now = files::walk(&self.paths);
        let rehash_now = !self.settings.rehash.is_zero()
            && self
                .last_rehash
                .is_none_or(|t| now.duration_since(t) >= self.settings.rehash);
        if rehash_now {
            self.last_rehash = Some(now);
            if !first {
                for st in self.files.values_mut() {
                    st.rehash_due = true;
                }
            }
        }
        // A path given on the command line that cannot be walked (missing, unreadable, a
        // dangling symlink: a volume not mounted yet) keeps everything read under it.
        let broken_roots: Vec<PathBuf> = self
            .paths
            .iter()
            .filter(|r| matches!(seen_now.get(*r), Some(Seen::Problem(_))))
            .cloned()
            .collect();
        let missing_root = self.paths.iter().any(|r| {
            matches!(seen_now.get(r), Some(Seen::Problem(s))
                if matches!(s.reason, files::Reason::UnreadableFile | files::Reason::BrokenSymlink))
        });
        let mut paths: Vec<PathBuf> = self.files.keys().cloned().collect();
        paths.extend(
            seen_now
                .keys()
                .filter(|p| !self.files.contains_key(*p))
                .cloned(),
        );
        let mut out = Poll::default();
        let mut changed = first;
        let mut gone = Vec::new();
        for path in paths {
            let seen = seen_now.remove(&path);
            if seen.is_none() && broken_roots.iter().any(|r| path.starts_with(r)) {
                continue;
            }
            let st = self.files.entry(path.clone()).or_insert_with(|| FileState {
                seen: seen.clone(),
                since: now,
                evaluated: None,
                rehash_due: false,
                hash: None,
                objects: None,
                empty: true,
                problem: None,
            });
            if st.seen != seen {
                st.seen = seen;
                st.since = now;
            }
            let moved = st.evaluated.as_ref() != Some(&st.seen);
            let rehash = st.rehash_due && matches!(st.seen, Some(Seen::File(_)));
            if !moved && !rehash {
                continue;
            }
            let suspicious = st.objects.is_some()
                && match &st.seen {
                    None => true,
                    Some(Seen::File(m)) => m.len == 0 && !st.empty,
                    Some(Seen::Problem(_)) => false,
                };
            let wait = if first {
                Duration::ZERO
            } else if suspicious {
                self.settings.suspicious
            } else {
                self.settings.settle
            };
            if now.duration_since(st.since) < wait {
                continue;
            }
            st.evaluated = Some(st.seen.clone());
            st.rehash_due = false;
            let problem = match &st.seen {
                None => {
                    changed |= st.objects.is_some();
                    gone.push(path);
                    continue;
                }
                Some(Seen::Problem(s)) => Some(s.clone()),
                Some(Seen::File(_)) => match files::load_file(&path) {
                    Ok(l) => {
                        if st.hash != Some(l.hash) || st.objects.is_none() {
                            st.hash = Some(l.hash);
                            st.objects = Some(l.objects);
                            st.empty = l.empty;
                            out.load_errors.extend(l.errors);
                            changed = true;
                        }
                        None
                    }
                    Err(s) => Some(s),
                },
            };
            match problem {
                Some(s) => {
                    if st.problem.as_ref() != Some(&s) {
                        out.new_problems.push(s.clone());
                    }
                    st.problem = Some(s);
                }
                None => {
                    if st.problem.take().is_some() {
                        out.recovered.push(path);
                    }
                }
            }
        }
        for p in gone {
            self.files.remove(&p);
        }
        out.problems = self
            .files
            .values()
            .filter_map(|st| st.problem.clone())
            .collect();
        if first && missing_root {
            // Nothing is sent before every path given exists: an empty first snapshot would
            // replace the rules a previous run left in place.
            self.started = false;
            changed = false;
        }
        if changed {
            let mut all = Objects::default();
            let by_file: BTreeMap<PathBuf, Objects> = self
                .files
                .iter()
                .filter_map(|(p, st)| st.objects.clone().map(|o| (p.clone(), o)))
                .collect();
            if !by_file.is_empty() {
                all = manifests::merge(&by_file);
            }
            out.changed = Some(all);
        }
        out
    }
}

/// The snapshot of one read of the manifests, and what was skipped: the same conversion
/// (and the same rule for duplicates) as `rudder compile`'s, [`convert::convert`].
fn snapshot(objs: &Objects, hostname: &str) -> (Change, Vec<rudder_model::Problem>) {
    let conv = convert::convert(objs, hostname);
    if conv.node.is_none() {
        warn!(node = %hostname, "no Node object for this node in the manifests");
    }
    let snapshot = Change::Snapshot {
        services: conv.services,
        slices: conv.slices,
        node: conv.node.map(Box::new),
        service_cidrs: conv.service_cidrs,
    };
    (snapshot, conv.problems)
}

/// The problems of `problems` that were not in `reported`, and the keys of all of them.
fn new_problems(
    reported: &std::collections::BTreeSet<String>,
    problems: Vec<rudder_model::Problem>,
) -> (
    Vec<rudder_model::Problem>,
    std::collections::BTreeSet<String>,
) {
    let mut now = std::collections::BTreeSet::new();
    let mut fresh = Vec::new();
    for p in problems {
        let key = format!("{} {p}", p.reason.label());
        if !reported.contains(&key) {
            fresh.push(p);
        }
        now.insert(key);
    }
    (fresh, now)
}

/// Logs, counts and publishes what one poll found.
fn report(p: &Poll, metrics: &dyn Report) {
    for s in &p.new_problems {
        warn!(file = %s.path.display(), reason = s.reason.label(), "skipping manifest file, keeping its last good content: {}", s.message);
        if s.reason.counted() {
            metrics.invalid_input(s.reason.label());
        }
    }
    for f in &p.recovered {
        info!(file = %f.display(), "manifest file readable again");
    }
    for e in &p.load_errors {
        if e.document > 0 {
            // A document that is not an object: bad syntax, no kind, a field of the wrong
            // type (`port: "http"`).
            warn!(file = %e.file.display(), document = e.document, reason = MALFORMED_DOCUMENT, "skipping manifest: {}", e.message);
            metrics.invalid_input(MALFORMED_DOCUMENT);
        } else {
            warn!(file = %e.file.display(), "skipping manifest: {}", e.message);
        }
    }
    metrics.set_skipped_input(
        p.problems
            .iter()
            .map(|s| SkippedInput {
                file: s.path.display().to_string(),
                reason: s.reason.label().into(),
                message: s.message.clone(),
            })
            .collect(),
    );
}

/// Follows the files on a thread of its own, sending a snapshot at start and whenever the
/// objects change, until the receiver is gone.
pub fn spawn(
    mut follower: Follower,
    hostname: String,
    interval: Duration,
    changes: UnboundedSender<Change>,
    metrics: Arc<dyn Report>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("rudder-manifests".into())
        .spawn(move || {
            // Problems of objects reported so far: each snapshot holds every object again,
            // and a problem is logged and counted when it appears, not at every change of
            // some other file.
            let mut reported = std::collections::BTreeSet::new();
            while !changes.is_closed() {
                let p = follower.poll(Instant::now());
                report(&p, metrics.as_ref());
                if let Some(objs) = &p.changed {
                    let (snapshot, problems) = snapshot(objs, &hostname);
                    let (fresh, now) = new_problems(&reported, problems);
                    reported = now;
                    rudder_controller::change::report_problems(&fresh);
                    if changes.send(snapshot).is_err() {
                        return;
                    }
                }
                std::thread::sleep(interval);
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn svc(name: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n"
        )
    }

    fn names(objs: &Objects) -> Vec<String> {
        let mut v: Vec<String> = objs
            .services
            .iter()
            .filter_map(|s| s.metadata.name.clone())
            .collect();
        v.sort();
        v
    }

    const MS: Duration = Duration::from_millis(1);

    struct Clock(Instant);

    impl Clock {
        fn at(&self, ms: u64) -> Instant {
            self.0 + MS * u32::try_from(ms).unwrap()
        }
    }

    fn follower(dir: &Path) -> Follower {
        Follower::new(
            vec![dir.to_owned()],
            Settings {
                settle: MS * 300,
                suspicious: Duration::from_secs(2),
                rehash: Duration::from_secs(3600),
            },
        )
    }

    #[test]
    fn a_changed_file_is_read_once_it_has_settled() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        std::fs::write(&a, svc("a", "10.96.0.1")).unwrap();
        let mut f = follower(dir.path());
        let c = Clock(Instant::now());
        assert_eq!(names(&f.poll(c.at(0)).changed.unwrap()), ["a"]);
        assert!(f.poll(c.at(100)).changed.is_none(), "nothing changed");
        std::fs::write(&a, svc("a2", "10.96.0.1")).unwrap();
        assert!(f.poll(c.at(200)).changed.is_none(), "just changed");
        assert!(f.poll(c.at(400)).changed.is_none(), "200 ms: not settled");
        assert_eq!(names(&f.poll(c.at(500)).changed.unwrap()), ["a2"]);
        // A file that appears is debounced too.
        std::fs::write(dir.path().join("b.yaml"), svc("b", "10.96.0.2")).unwrap();
        assert!(f.poll(c.at(600)).changed.is_none());
        assert_eq!(names(&f.poll(c.at(900)).changed.unwrap()), ["a2", "b"]);
    }

    #[test]
    fn truncate_then_write_back_never_removes_objects() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        std::fs::write(&a, svc("a", "10.96.0.1")).unwrap();
        std::fs::write(dir.path().join("b.yaml"), svc("b", "10.96.0.2")).unwrap();
        let mut f = follower(dir.path());
        let c = Clock(Instant::now());
        assert_eq!(names(&f.poll(c.at(0)).changed.unwrap()), ["a", "b"]);
        std::fs::write(&a, "").unwrap();
        for ms in [50, 400, 1000, 1500, 2000] {
            assert!(f.poll(c.at(ms)).changed.is_none(), "emptied at {ms} ms");
        }
        std::fs::write(&a, svc("a", "10.96.0.1")).unwrap();
        for ms in [2100, 2500, 5000] {
            assert!(
                f.poll(c.at(ms)).changed.is_none(),
                "same content back: no change"
            );
        }
        // An empty file that stays empty is believed after the longer wait.
        std::fs::write(&a, "").unwrap();
        assert!(f.poll(c.at(6000)).changed.is_none());
        assert!(f.poll(c.at(7900)).changed.is_none());
        assert_eq!(names(&f.poll(c.at(8000)).changed.unwrap()), ["b"]);
        // And a removed file likewise.
        std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
        assert!(f.poll(c.at(8100)).changed.is_none());
        assert!(f.poll(c.at(9000)).changed.is_none());
        assert!(names(&f.poll(c.at(10_100)).changed.unwrap()).is_empty());
    }

    #[test]
    fn an_edit_that_keeps_size_and_mtime_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        std::fs::write(&a, svc("a", "10.96.0.1")).unwrap();
        let mut f = follower(dir.path());
        let c = Clock(Instant::now());
        f.poll(c.at(0));
        let mtime = std::fs::metadata(&a).unwrap().modified().unwrap();
        // Same size, same mtime (`touch -r`): the change time still moves.
        std::fs::write(&a, svc("b", "10.96.0.1")).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&a)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        f.poll(c.at(100));
        assert_eq!(names(&f.poll(c.at(500)).changed.unwrap()), ["b"]);
    }

    #[test]
    fn content_hashes_catch_what_metadata_hides() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        std::fs::write(&a, svc("a", "10.96.0.1")).unwrap();
        let mut f = follower(dir.path());
        let c = Clock(Instant::now());
        f.poll(c.at(0));
        std::fs::write(&a, svc("b", "10.96.0.1")).unwrap();
        // A file system whose metadata did not move: pretend the walk saw nothing new.
        let meta = files::walk(&[dir.path().to_owned()]);
        let st = f.files.get_mut(&a).unwrap();
        st.seen = meta.get(&a).cloned();
        st.evaluated = Some(st.seen.clone());
        assert!(
            f.poll(c.at(1000)).changed.is_none(),
            "metadata says unchanged"
        );
        assert!(f.poll(c.at(3_599_000)).changed.is_none());
        assert_eq!(names(&f.poll(c.at(3_600_000)).changed.unwrap()), ["b"]);
        assert!(f.poll(c.at(3_600_500)).changed.is_none(), "hashed once");
    }

    #[test]
    fn a_missing_root_delays_the_first_snapshot_and_later_keeps_its_objects() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("manifests");
        let other = dir.path().join("other.yaml");
        std::fs::write(&other, svc("o", "10.96.0.9")).unwrap();
        let mut f = Follower::new(
            vec![root.clone(), other],
            Settings {
                settle: MS * 300,
                suspicious: Duration::from_secs(2),
                rehash: Duration::from_secs(3600),
            },
        );
        let c = Clock(Instant::now());
        let p = f.poll(c.at(0));
        assert!(p.changed.is_none(), "waiting for {}", root.display());
        assert_eq!(p.new_problems.len(), 1);
        assert!(f.poll(c.at(100)).new_problems.is_empty(), "logged once");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("a.yaml"), svc("a", "10.96.0.1")).unwrap();
        let p = f.poll(c.at(200));
        assert_eq!(
            names(&p.changed.unwrap()),
            ["a", "o"],
            "read at once when it appears"
        );
        // The directory goes away (an unmounted volume): its objects stay.
        std::fs::rename(&root, dir.path().join("away")).unwrap();
        for ms in [300, 1000, 5000, 10_000] {
            let p = f.poll(c.at(ms));
            assert!(p.changed.is_none(), "{ms}");
            // The problem itself is debounced like any change.
            assert_eq!(p.problems.len(), usize::from(ms >= 1000), "{ms}");
        }
    }

    #[test]
    fn a_bad_file_keeps_its_last_good_content_and_never_blocks_others() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        let b = dir.path().join("b.yaml");
        std::fs::write(&a, svc("a", "10.96.0.1")).unwrap();
        std::fs::write(&b, svc("b", "10.96.0.2")).unwrap();
        let mut f = follower(dir.path());
        let c = Clock(Instant::now());
        f.poll(c.at(0));
        // a becomes a FIFO, b is edited, a dangling symlink and a deep file appear.
        std::fs::remove_file(&a).unwrap();
        nix::unistd::mkfifo(&a, nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::fs::write(&b, svc("b2", "10.96.0.2")).unwrap();
        std::os::unix::fs::symlink("nowhere", dir.path().join("c.yaml")).unwrap();
        std::fs::write(dir.path().join("d.yaml"), "[".repeat(100_000)).unwrap();
        f.poll(c.at(100));
        let p = f.poll(c.at(500));
        assert_eq!(
            names(&p.changed.unwrap()),
            ["a", "b2"],
            "a keeps its last content"
        );
        let mut reasons: Vec<_> = p.new_problems.iter().map(|s| s.reason.label()).collect();
        reasons.sort();
        assert_eq!(
            reasons,
            ["broken_symlink", "not_regular_file", "too_deeply_nested"]
        );
        assert_eq!(p.problems.len(), 3);
        // Reported once, shown while it lasts.
        let p = f.poll(c.at(600));
        assert!(p.new_problems.is_empty());
        assert_eq!(p.problems.len(), 3);
        // Fixed: read again.
        std::fs::remove_file(&a).unwrap();
        std::fs::write(&a, svc("a3", "10.96.0.1")).unwrap();
        f.poll(c.at(700));
        let p = f.poll(c.at(1000));
        assert_eq!(names(&p.changed.unwrap()), ["a3", "b2"]);
        assert_eq!(p.recovered, [a]);
        assert_eq!(p.problems.len(), 2);
    }

    /// Two Nodes named like this node (in two files), two Services and two ServiceCIDRs with
    /// the same names: the later one of each wins.
    const FIRST: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-1}
status: {addresses: [{type: InternalIP, address: 10.0.0.1}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
---
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: kubernetes}
spec: {cidrs: [10.96.0.0/16]}
"#;
    const SECOND: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: NODE-1}
status: {addresses: [{type: InternalIP, address: 10.0.0.2}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.0.2, ports: [{port: 80}]}
---
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: kubernetes}
spec: {cidrs: [10.97.0.0/16]}
"#;

    fn objects(files: &[(&str, &str)]) -> Objects {
        let mut all = BTreeMap::new();
        for (name, text) in files {
            let (objs, errors) = manifests::parse_str(Path::new(name), text).expect("parses");
            assert!(errors.is_empty(), "{errors:?}");
            all.insert(PathBuf::from(name), objs);
        }
        manifests::merge(&all)
    }

    #[test]
    fn a_problem_is_reported_when_it_appears_not_at_every_snapshot() {
        let bad = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec: {clusterIP: 127.0.0.1, ports: [{port: 80}]}\n";
        let worse = bad.replace("127.0.0.1", "224.0.0.1");
        let problems = |text: &str| snapshot(&objects(&[("a.yaml", text)]), "node-1").1;
        let (fresh, reported) = new_problems(&Default::default(), problems(bad));
        assert_eq!(fresh.len(), 1);
        // The same problem in the next snapshot: not again.
        let (fresh, reported) = new_problems(&reported, problems(bad));
        assert!(fresh.is_empty());
        // A different problem of the same object: reported.
        let (fresh, reported) = new_problems(&reported, problems(&worse));
        assert_eq!(fresh.len(), 1);
        // Fixed, then broken again: reported again.
        let (_, reported) = new_problems(&reported, problems(FIRST));
        let (fresh, _) = new_problems(&reported, problems(&worse));
        assert_eq!(fresh.len(), 1);
    }

    #[test]
    fn compile_and_run_resolve_duplicate_objects_alike() {
        let objs = objects(&[("a.yaml", FIRST), ("b.yaml", SECOND)]);
        // What `rudder compile` uses...
        let conv = convert::convert(&objs, "node-1");
        // ... and what `rudder run` sends to the sync loop.
        let (snap, problems) = snapshot(&objs, "node-1");
        let Change::Snapshot {
            services,
            node,
            service_cidrs,
            ..
        } = snap
        else {
            panic!("not a snapshot");
        };
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(
            node.as_ref().map(|n| n.addresses.clone()),
            Some(vec![ip("10.0.0.2")])
        );
        assert_eq!(conv.node.map(|n| n.addresses), Some(vec![ip("10.0.0.2")]));
        assert_eq!(services.len(), 1);
        assert_eq!(services[0].cluster_ips, vec![ip("10.96.0.2")]);
        assert_eq!(conv.services, services);
        assert_eq!(
            service_cidrs,
            vec![rudder_model::NamedCidr {
                cidr: "10.97.0.0/16".parse().unwrap(),
                object: "kubernetes".into(),
            }]
        );
        assert_eq!(conv.service_cidrs, service_cidrs);
        let labels: Vec<String> = problems
            .iter()
            .map(|p| format!("{} {}", p.kind, p.reason.label()))
            .collect();
        assert_eq!(
            labels,
            [
                "Service duplicate_object",
                "Node duplicate_object",
                "ServiceCIDR duplicate_object"
            ]
        );
        assert_eq!(problems, conv.problems);
        // In the other file order, the other one wins: the rule is the order, not the content.
        let swapped = objects(&[("a.yaml", SECOND), ("b.yaml", FIRST)]);
        let (snap, _) = snapshot(&swapped, "node-1");
        assert!(matches!(
            snap,
            Change::Snapshot { node: Some(n), .. } if n.addresses == vec![ip("10.0.0.1")]
        ));
    }

    #[test]
    fn a_later_invalid_duplicate_replaces_the_earlier_object() {
        let bad = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec: {clusterIP: 127.0.0.1, ports: [{port: 80}]}\n";
        let objs = objects(&[("a.yaml", FIRST), ("b.yaml", bad)]);
        let (snap, problems) = snapshot(&objs, "node-1");
        assert!(matches!(snap, Change::Snapshot { services, .. } if services.is_empty()));
        let labels: Vec<&str> = problems.iter().map(|p| p.reason.label()).collect();
        assert_eq!(labels, ["duplicate_object", "special_cluster_ip"]);
    }

    #[test]
    fn documents_with_fields_of_the_wrong_type_are_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let svc = |i: usize, port: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: default}}\nspec: {{clusterIP: 10.96.0.9, ports: [{{port: {port}}}]}}\n"
            )
        };
        let text = [
            svc(1, "\"http\""),
            svc(2, "80.5"),
            svc(3, "true"),
            svc(4, "80"),
        ]
        .join("---\n");
        std::fs::write(dir.join("m.yaml"), text).unwrap();
        #[derive(Default)]
        struct Counts(std::sync::Mutex<Vec<String>>);
        impl Report for Counts {
            fn invalid_input(&self, reason: &str) {
                self.0.lock().unwrap().push(reason.to_owned());
            }
            fn set_skipped_input(&self, _: Vec<SkippedInput>) {}
        }
        let counts = Counts::default();
        let mut f = follower(dir);
        let p = f.poll(Instant::now());
        report(&p, &counts);
        drop(tmp);
        let objs = p.changed.expect("read");
        // The good document is used; the three others are counted, as often as they are read.
        assert_eq!(objs.services.len(), 1);
        assert_eq!(*counts.0.lock().unwrap(), ["malformed_document"; 3]);
    }
}
