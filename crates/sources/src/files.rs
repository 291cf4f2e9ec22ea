//! The manifest file source's contact with the file system: which files are manifests, how
//! they are opened and read, and the limits that keep a hostile tree from hurting the daemon.
//!
//! Rules (docs/operations.md, "The manifest file source"):
//! - Paths given on the command line are read whatever their name; directories are walked
//!   recursively for `*.yaml`, `*.yml` and `*.json`, skipping hidden entries (names starting
//!   with `.`: editors' temporary files, and the `..data` / `..<timestamp>` entries of a
//!   Kubernetes ConfigMap volume, whose files are read through their visible symlinks).
//! - Symlinks are followed to regular files and directories (ConfigMap volumes are made of
//!   them); a symlink loop, a dangling symlink, or a directory reached a second time is
//!   skipped with a reason.
//! - Only regular files are read. A FIFO, socket or device (also behind a symlink, like
//!   `/dev/zero`) is skipped without being read; files are opened with `O_NONBLOCK` and
//!   `O_NOFOLLOW` on their resolved path and checked again with `fstat` on the open file, so a
//!   file swapped between the check and the open is not read either.
//! - At most [`MAX_FILE_BYTES`] are read: the limit applies to what is read, not to what
//!   `stat` says.
//! - Text nested deeper than [`crate::nesting::MAX_DEPTH`] never reaches the parser.
//!
//! One bad file never affects another: every problem is reported for its own path.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::Metadata;
use std::hash::Hasher;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::manifests::{self, LoadError, Objects};
use crate::nesting;

/// Largest manifest file Rudder reads.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Why a file was skipped (the `reason` label of `rudder_invalid_input_skipped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// A FIFO, socket, device or other non-regular file.
    NotRegularFile,
    /// More than [`MAX_FILE_BYTES`].
    FileTooLarge,
    /// Collections nested deeper than the limit.
    TooDeeplyNested,
    /// The file cannot be opened or read, or is not UTF-8 text.
    UnreadableFile,
    /// A dangling symlink, a symlink loop, or a directory reached twice.
    BrokenSymlink,
    /// The text is not valid YAML or JSON as a whole. Not counted here: parse errors are
    /// reported (and counted) with the document errors of [`manifests`].
    InvalidManifest,
}

impl Reason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Reason::NotRegularFile => "not_regular_file",
            Reason::FileTooLarge => "file_too_large",
            Reason::TooDeeplyNested => "too_deeply_nested",
            Reason::UnreadableFile => "unreadable_file",
            Reason::BrokenSymlink => "broken_symlink",
            Reason::InvalidManifest => "invalid_manifest",
        }
    }

    /// Whether this module counts it in `rudder_invalid_input_skipped_total`.
    pub fn counted(self) -> bool {
        self != Reason::InvalidManifest
    }
}

/// A file (or directory) that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The path skipped.
    pub path: PathBuf,
    /// Why, as a label.
    pub reason: Reason,
    /// Why, in words.
    pub message: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} ({})",
            self.path.display(),
            self.message,
            self.reason.label()
        )
    }
}

fn skipped(path: &Path, reason: Reason, message: impl Into<String>) -> Skipped {
    Skipped {
        path: path.to_owned(),
        reason,
        message: message.into(),
    }
}

/// What identifies a file's current version without reading it: which inode (through which
/// symlink target), its size, and its modification and change times. The change time (ctime)
/// moves on every write and cannot be set back by `touch`, so an edit that keeps the size and
/// the modification time still changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Device of the inode.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub len: u64,
    /// Modification time, in nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Change time, in nanoseconds since the epoch.
    pub ctime_ns: i128,
    /// The resolved path, when reached through a symlink.
    pub target: Option<PathBuf>,
}

impl Meta {
    fn new(m: &Metadata, target: Option<PathBuf>) -> Meta {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Meta {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
            target,
        }
    }
}

/// What a walk saw at one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A regular file.
    File(Meta),
    /// Something that will not be read.
    Problem(Skipped),
}

fn is_manifest_name(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

fn kind(ft: std::fs::FileType) -> &'static str {
    if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Explains why following a symlink failed.
fn symlink_problem(path: &Path, e: &std::io::Error) -> Skipped {
    match e.raw_os_error() {
        Some(code) if code == nix::errno::Errno::ELOOP as i32 => {
            skipped(path, Reason::BrokenSymlink, "symlink loop")
        }
        Some(code) if code == nix::errno::Errno::ENOENT as i32 => {
            let to = std::fs::read_link(path)
                .map(|t| format!(" to {}", t.display()))
                .unwrap_or_default();
            skipped(path, Reason::BrokenSymlink, format!("dangling symlink{to}"))
        }
        _ => skipped(path, Reason::UnreadableFile, e.to_string()),
    }
}

/// Every manifest under `roots`, without reading any: regular files with their [`Meta`], and
/// everything that will not be read with the reason. Never fails as a whole.
pub fn walk(roots: &[PathBuf]) -> BTreeMap<PathBuf, Seen> {
    let mut out = BTreeMap::new();
    let mut dirs_seen: BTreeSet<(u64, u64)> = BTreeSet::new();
    let mut stack: Vec<(PathBuf, bool)> = roots.iter().rev().map(|p| (p.clone(), true)).collect();
    while let Some((p, explicit)) = stack.pop() {
        let problem = |out: &mut BTreeMap<PathBuf, Seen>, s: Skipped| {
            out.insert(s.path.clone(), Seen::Problem(s));
        };
        let lmeta = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) => {
                // Only a root can be missing (an entry vanished since read_dir: ignore it).
                if explicit {
                    problem(&mut out, skipped(&p, Reason::UnreadableFile, e.to_string()));
                }
                continue;
            }
        };
        let (meta, target) = if lmeta.file_type().is_symlink() {
            match std::fs::metadata(&p) {
                Ok(m) => (m, std::fs::canonicalize(&p).ok()),
                Err(e) => {
                    if explicit || is_manifest_name(&p) {
                        problem(&mut out, symlink_problem(&p, &e));
                    }
                    continue;
                }
            }
        } else {
            (lmeta, None)
        };
        if meta.is_dir() {
            if !dirs_seen.insert((meta.dev(), meta.ino())) {
                problem(
                    &mut out,
                    skipped(
                        &p,
                        Reason::BrokenSymlink,
                        "directory reached a second time (a symlink loop, or a second link to it)",
                    ),
                );
                continue;
            }
            let entries = match std::fs::read_dir(&p) {
                Ok(rd) => rd,
                Err(e) => {
                    problem(&mut out, skipped(&p, Reason::UnreadableFile, e.to_string()));
                    continue;
                }
            };
            let mut children: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|c| !is_hidden(c))
                .collect();
            children.sort();
            stack.extend(children.into_iter().rev().map(|c| (c, false)));
        } else if explicit || is_manifest_name(&p) {
            if meta.is_file() {
                out.insert(p, Seen::File(Meta::new(&meta, target)));
            } else {
                let what = kind(meta.file_type());
                problem(&mut out, skipped(&p, Reason::NotRegularFile, what));
            }
        }
    }
    out
}

/// Reads one file: only a regular file, at most `limit` bytes of it, as UTF-8 text.
pub fn read(path: &Path, limit: u64) -> Result<String, Skipped> {
    // Symlinks are followed here, on purpose (ConfigMap volumes); the resolved path is opened
    // without following a symlink again, and without blocking on a FIFO.
    let real = std::fs::canonicalize(path).map_err(|e| symlink_problem(path, &e))?;
    let flags = nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_NOFOLLOW;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(&real)
        .map_err(|e| skipped(path, Reason::UnreadableFile, e.to_string()))?;
    let meta = file
        .metadata()
        .map_err(|e| skipped(path, Reason::UnreadableFile, e.to_string()))?;
    if !meta.is_file() {
        return Err(skipped(
            path,
            Reason::NotRegularFile,
            kind(meta.file_type()),
        ));
    }
    let too_large = |n: u64| {
        skipped(
            path,
            Reason::FileTooLarge,
            format!("file is {n} bytes or more, the limit is {limit}"),
        )
    };
    if meta.len() > limit {
        return Err(too_large(meta.len()));
    }
    let mut buf = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0).saturating_add(1));
    (&file)
        .take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| skipped(path, Reason::UnreadableFile, e.to_string()))?;
    if buf.len() as u64 > limit {
        return Err(too_large(buf.len() as u64));
    }
    String::from_utf8(buf).map_err(|e| {
        skipped(
            path,
            Reason::UnreadableFile,
            format!("not UTF-8 text: {}", e.utf8_error()),
        )
    })
}

/// A 64-bit hash of a file's content, to notice changes that metadata hides.
pub fn content_hash(text: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    h.write(text.as_bytes());
    h.finish()
}

/// A file that was read and parsed.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The objects of the documents that could be used.
    pub objects: Objects,
    /// Documents that could not be used (the rest of the file is).
    pub errors: Vec<LoadError>,
    /// Hash of the content (to notice edits that metadata hides).
    pub hash: u64,
    /// Whether the file had any content.
    pub empty: bool,
}

/// Reads, bounds and parses one file.
pub fn load_file(path: &Path) -> Result<Loaded, Skipped> {
    let text = read(path, MAX_FILE_BYTES)?;
    let json = path.extension().and_then(|e| e.to_str()) == Some("json");
    let depth = if json {
        nesting::check_json(&text, nesting::MAX_DEPTH)
    } else {
        nesting::check_yaml(&text, nesting::MAX_DEPTH)
    };
    depth.map_err(|e| skipped(path, Reason::TooDeeplyNested, e.to_string()))?;
    // The YAML parser is a dependency: should it ever panic on some input, that input is
    // one more file to skip, not the end of the thread that follows the files.
    let parsed =
        std::panic::catch_unwind(|| manifests::parse_str(path, &text)).unwrap_or_else(|_| {
            Err(LoadError {
                file: path.to_owned(),
                document: 0,
                message: "the manifest parser failed on this file".into(),
            })
        });
    let (objects, errors) = parsed.map_err(|e| Skipped {
        path: path.to_owned(),
        reason: Reason::InvalidManifest,
        message: e.to_string(),
    })?;
    Ok(Loaded {
        objects,
        errors,
        hash: content_hash(&text),
        empty: text.trim().is_empty(),
    })
}

/// Everything under `paths`, read once (`rudder compile`, `rudder explain`): the objects of
/// each file that could be used, the documents that could not, and the files skipped.
pub fn load(paths: &[PathBuf]) -> (BTreeMap<PathBuf, Objects>, Vec<LoadError>, Vec<Skipped>) {
    let mut files = BTreeMap::new();
    let mut errors = Vec::new();
    let mut skips = Vec::new();
    for (path, seen) in walk(paths) {
        match seen {
            Seen::Problem(s) => skips.push(s),
            Seen::File(_) => match load_file(&path) {
                Ok(l) => {
                    errors.extend(l.errors);
                    files.insert(path, l.objects);
                }
                Err(s) => skips.push(s),
            },
        }
    }
    (files, errors, skips)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: default}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n";

    fn reasons(skips: &[Skipped]) -> Vec<(String, &'static str)> {
        let mut v: Vec<_> = skips
            .iter()
            .map(|s| {
                let name = s.path.file_name().unwrap().to_string_lossy().into_owned();
                (name, s.reason.label())
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_hostile_tree_skips_each_bad_file_and_reads_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("good.yaml"), SERVICE).unwrap();
        nix::unistd::mkfifo(&d.join("fifo.yaml"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        symlink("/dev/zero", d.join("zero.yaml")).unwrap();
        symlink("loop2.yaml", d.join("loop1.yaml")).unwrap();
        symlink("loop1.yaml", d.join("loop2.yaml")).unwrap();
        symlink("nowhere.yaml", d.join("dangling.yaml")).unwrap();
        symlink(".", d.join("cycle")).unwrap();
        std::fs::write(d.join("deep.yaml"), "[".repeat(100_000)).unwrap();
        std::fs::write(d.join("deep.json"), "[".repeat(100_000)).unwrap();
        std::fs::write(d.join("bad.yaml"), "a: [unclosed").unwrap();
        std::fs::write(d.join("binary.yaml"), [0xff, 0xfe, 0x00]).unwrap();
        std::fs::write(d.join("notes.txt"), "not a manifest").unwrap();
        std::fs::write(d.join(".hidden.yaml"), "[".repeat(1000)).unwrap();
        let big = std::fs::File::create(d.join("big.yaml")).unwrap();
        big.set_len(MAX_FILE_BYTES + 1).unwrap();
        let start = std::time::Instant::now();
        let (files, errors, skips) = load(&[d.to_owned()]);
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "bounded time"
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(files[&d.join("good.yaml")].services.len(), 1);
        assert_eq!(
            reasons(&skips),
            [
                ("bad.yaml".to_owned(), "invalid_manifest"),
                ("big.yaml".to_owned(), "file_too_large"),
                ("binary.yaml".to_owned(), "unreadable_file"),
                ("cycle".to_owned(), "broken_symlink"),
                ("dangling.yaml".to_owned(), "broken_symlink"),
                ("deep.json".to_owned(), "too_deeply_nested"),
                ("deep.yaml".to_owned(), "too_deeply_nested"),
                ("fifo.yaml".to_owned(), "not_regular_file"),
                ("loop1.yaml".to_owned(), "broken_symlink"),
                ("loop2.yaml".to_owned(), "broken_symlink"),
                ("zero.yaml".to_owned(), "not_regular_file"),
            ]
        );
        let text = |name: &str| {
            skips
                .iter()
                .find(|s| s.path.ends_with(name))
                .unwrap()
                .to_string()
        };
        assert!(
            text("fifo.yaml").contains("a FIFO"),
            "{}",
            text("fifo.yaml")
        );
        assert!(text("zero.yaml").contains("a character device"));
        assert!(text("loop1.yaml").contains("symlink loop"));
        assert!(text("dangling.yaml").contains("dangling symlink to nowhere.yaml"));
    }

    #[test]
    fn configmap_volumes_are_read_once_through_their_symlinks() {
        // kubelet's layout: ..2024_01_01/ holds the files, ..data -> ..2024_01_01, and each
        // visible name -> ..data/<name>.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("..2024_01_01")).unwrap();
        std::fs::write(d.join("..2024_01_01/svc.yaml"), SERVICE).unwrap();
        symlink("..2024_01_01", d.join("..data")).unwrap();
        symlink("..data/svc.yaml", d.join("svc.yaml")).unwrap();
        let seen = walk(&[d.to_owned()]);
        assert_eq!(seen.len(), 1, "{seen:?}");
        let Some(Seen::File(meta)) = seen.get(&d.join("svc.yaml")) else {
            panic!("{seen:?}");
        };
        assert!(
            meta.target
                .as_ref()
                .unwrap()
                .ends_with("..2024_01_01/svc.yaml")
        );
        let (files, _, skips) = load(&[d.to_owned()]);
        assert!(skips.is_empty());
        assert_eq!(files[&d.join("svc.yaml")].services.len(), 1);
    }

    #[test]
    fn explicit_paths_are_read_whatever_their_name_and_reported_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("svc.txt"), SERVICE).unwrap();
        let (files, _, skips) = load(&[d.join("svc.txt"), d.join("missing.yaml")]);
        assert_eq!(files.len(), 1);
        assert_eq!(
            reasons(&skips),
            [("missing.yaml".to_owned(), "unreadable_file")]
        );
    }

    #[test]
    fn the_limit_applies_to_what_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.yaml");
        std::fs::write(&p, "x".repeat(101)).unwrap();
        assert_eq!(read(&p, 101).unwrap().len(), 101);
        assert_eq!(read(&p, 100).unwrap_err().reason, Reason::FileTooLarge);
        // A file whose size says nothing about its content is bounded by the read itself.
        assert_eq!(
            read(Path::new("/proc/self/status"), 10).unwrap_err().reason,
            Reason::FileTooLarge
        );
        assert_eq!(
            read(Path::new("/dev/zero"), 10).unwrap_err().reason,
            Reason::NotRegularFile
        );
    }
}
