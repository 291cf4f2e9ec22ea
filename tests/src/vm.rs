//! A throwaway Linux VM for kernel features the test machine's own kernel lacks (IPVS, dummy
//! links): Debian's `linux-image-amd64` booted by qemu under software emulation, from an
//! initramfs built for each run.
//!
//! [`prepare`] installs what is missing (`qemu-system-x86`, `busybox-static`, `ipvsadm`, with
//! `apt-get`), downloads the kernel package with `apt-get download` (it is never installed on
//! the host) and unpacks it with `dpkg-deb -x` into `target/vm/kernel/<package>/`, then indexes
//! its modules (`busybox depmod`). That is done once; later calls only check the cache.
//!
//! [`Vm`] describes one boot: the modules to load (their dependencies and soft dependencies
//! are added from `modules.dep`, `modules.alias` and each module's `.modinfo`), the files to
//! copy in (host programs come with the shared libraries `ldd` names), memory and a hard
//! timeout. [`Vm::run`] writes the initramfs (busybox-static, an `/init` script, the modules,
//! the files; a newc cpio), boots it (`-accel tcg`, no network: `-nic none`, `-no-reboot`, the
//! console on `ttyS0`), streams the console to stderr, and returns the script's exit status,
//! which the guest's init reports on a second serial port (`ttyS1`, a file on the host) that
//! nothing else writes to, before `poweroff -f`.
//!
//! Nothing on the host changes besides the packages and the cache under `target/vm/`: the
//! guest has no network device, and the only process ever stopped is the qemu the run started
//! (by its pid, on timeout, on error and when the run is dropped during a panic).
//!
//! ```no_run
//! use rudder_e2e::vm::{self, Vm};
//! let prepared = vm::prepare().expect("VM prerequisites");
//! let out = Vm::new(&prepared)
//!     .modules(vm::IPVS_MODULES)
//!     .host_binary("/usr/sbin/ipvsadm")
//!     .run("ipvsadm -A -t 10.96.0.1:80 -s rr && ipvsadm -Ln")
//!     .expect("boot");
//! assert_eq!(out.status, 0, "{}", out.console);
//! assert!(out.output.contains("10.96.0.1:80"));
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The Debian package whose kernel the VM boots (a metapackage naming the current one).
pub const KERNEL_PACKAGE: &str = "linux-image-amd64";

/// The qemu program.
pub const QEMU: &str = "qemu-system-x86_64";

/// IPVS and every scheduler kube-proxy's IPVS mode can be asked for.
pub const IPVS_MODULES: &[&str] = &[
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_lc",
    "ip_vs_wlc",
    "ip_vs_lblc",
    "ip_vs_lblcr",
    "ip_vs_dh",
    "ip_vs_sh",
    "ip_vs_sed",
    "ip_vs_nq",
    "ip_vs_mh",
];

/// Link types the tests create: IPVS's `kube-ipvs0` (dummy) and the namespaces' veth pairs.
pub const LINK_MODULES: &[&str] = &["dummy", "veth"];

/// nf_tables and the expressions Rudder's rulesets use (conntrack, NAT, masquerade, reject,
/// numgen, fib, hashes, limits, object references), and conntrack over netlink.
pub const NFT_MODULES: &[&str] = &[
    "nf_tables",
    "nf_conntrack",
    "nf_nat",
    "nf_conntrack_netlink",
    "nft_ct",
    "nft_nat",
    "nft_masq",
    "nft_chain_nat",
    "nft_reject",
    "nft_reject_ipv4",
    "nft_reject_ipv6",
    "nft_reject_inet",
    "nft_numgen",
    "nft_fib",
    "nft_fib_ipv4",
    "nft_fib_ipv6",
    "nft_fib_inet",
    "nft_hash",
    "nft_limit",
    "nft_objref",
];

/// Everything above: what the IPVS tests need.
pub fn default_modules() -> Vec<&'static str> {
    [IPVS_MODULES, LINK_MODULES, NFT_MODULES].concat()
}

/// Why the VM could not be prepared or run.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// qemu is missing and cannot be installed: tests skip themselves on this one only.
    #[error("no {QEMU}, and it cannot be installed: {0}")]
    Unavailable(String),
    /// Preparing the kernel, the modules or the files failed.
    #[error("{0}")]
    Prepare(String),
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: io::Error,
    },
    /// The guest did not power off in time; qemu was killed.
    #[error(
        "the VM did not finish within {timeout:?} (qemu, pid {pid}, killed); console:\n{console}"
    )]
    Timeout {
        /// The timeout.
        timeout: Duration,
        /// The pid qemu had (killed and reaped).
        pid: u32,
        /// The end of the console output.
        console: String,
    },
    /// qemu ended without the guest reporting the script's exit status (kernel panic, init
    /// died, qemu failed).
    #[error("the VM ended ({qemu}) without reporting an exit status; console:\n{console}")]
    NoExitStatus {
        /// qemu's exit status.
        qemu: String,
        /// The end of the console output.
        console: String,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> VmError {
    let context = context.into();
    move |source| VmError::Io { context, source }
}

/// The workspace's target directory (`CARGO_TARGET_DIR`, else `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The cache: `target/vm/`.
pub fn cache_dir() -> PathBuf {
    target_dir().join("vm")
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

fn output(cmd: &mut Command) -> Result<String, VmError> {
    let out = cmd.output().map_err(io_err(format!("running {cmd:?}")))?;
    if !out.status.success() {
        return Err(VmError::Prepare(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_static(binary: &Path) -> bool {
    Command::new("ldd")
        .arg(binary)
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            text.contains("not a dynamic executable") || text.contains("statically linked")
        })
        .unwrap_or(false)
}

/// Installs qemu, busybox-static, ipvsadm and socat with apt-get when missing. Only a missing qemu
/// is [`VmError::Unavailable`]; the rest is needed too, but is an ordinary error.
fn install_tools() -> Result<(), VmError> {
    let busybox_ok = Path::new("/bin/busybox").is_file() && is_static(Path::new("/bin/busybox"));
    let mut missing = Vec::new();
    if !have(QEMU) {
        missing.push("qemu-system-x86");
    }
    if !busybox_ok {
        missing.push("busybox-static");
    }
    if !have("ipvsadm") {
        missing.push("ipvsadm");
    }
    if !have("socat") {
        missing.push("socat");
    }
    for (program, package) in [
        ("dpkg-deb", "dpkg"),
        ("ldd", "libc-bin"),
        ("apt-get", "apt"),
    ] {
        if !have(program) {
            missing.push(package);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let refuse = |why: String| {
        if have(QEMU) {
            VmError::Prepare(why)
        } else {
            VmError::Unavailable(why)
        }
    };
    if !crate::root::is_root() || !have("apt-get") {
        return Err(refuse(format!(
            "missing packages {missing:?}; installing them needs root and apt-get"
        )));
    }
    eprintln!("vm: installing {missing:?} with apt-get");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        let _ = Command::new("apt-get").args(["update", "-qq"]).status();
        if !install() {
            return Err(refuse(format!("apt-get install {missing:?} failed")));
        }
    }
    if !have(QEMU) {
        return Err(VmError::Unavailable(format!(
            "apt-get installed {missing:?} but there is still no {QEMU}"
        )));
    }
    Ok(())
}

/// A module of the unpacked kernel.
#[derive(Debug, Clone)]
struct Module {
    /// Path relative to `lib/modules/<release>/`.
    path: String,
    /// Every module it needs (transitively), from `modules.dep`.
    deps: Vec<String>,
}

/// What [`prepare`] leaves: an unpacked kernel and its module index.
#[derive(Debug)]
pub struct Prepared {
    /// The kernel package, e.g. `linux-image-6.1.0-57-amd64`.
    pub package: String,
    /// The kernel release (`uname -r` in the guest), e.g. `6.1.0-57-amd64`.
    pub release: String,
    /// The kernel image of the package.
    pub vmlinuz: PathBuf,
    /// What qemu boots: the uncompressed `vmlinux` taken out of `vmlinuz` (qemu boots its
    /// ELF directly through PVH, which saves the ~5 s the compressed image spends unpacking
    /// itself under emulation), or `vmlinuz` when that fails.
    pub kernel: PathBuf,
    /// `lib/modules/<release>/` of the unpacked package.
    pub modules_dir: PathBuf,
    /// How long [`prepare`] took.
    pub took: Duration,
    modules: HashMap<String, Module>,
    aliases: HashMap<String, Vec<String>>,
}

/// Module names use `_` where file names may use `-`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.trim_end_matches(".ko")
        .trim_end_matches(".ko.xz")
        .trim_end_matches(".ko.zst")
        .replace('-', "_")
}

/// Makes sure the tools and the kernel are there (installing and downloading what is
/// missing, once) and reads the kernel's module index.
pub fn prepare() -> Result<Prepared, VmError> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    install_tools()?;
    let cache = cache_dir();
    fs::create_dir_all(cache.join("kernel")).map_err(io_err("creating target/vm"))?;
    // Other test processes may prepare at the same time.
    let lock = fs::File::create(cache.join(".lock")).map_err(io_err("target/vm/.lock"))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| VmError::Prepare(format!("locking target/vm/.lock: {e}")))?;
    let root = match cached_kernel(&cache)? {
        Some(dir) => dir,
        None => download_kernel(&cache)?,
    };
    let package = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let release = single_entry(&root.join("lib/modules"))?;
    let modules_dir = root.join("lib/modules").join(&release);
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        return Err(VmError::Prepare(format!("no {}", vmlinuz.display())));
    }
    let kernel = uncompressed_kernel(
        &vmlinuz,
        &root.join("boot").join(format!("vmlinux-{release}")),
    );
    let dep = fs::read_to_string(modules_dir.join("modules.dep"))
        .map_err(io_err("reading modules.dep"))?;
    let mut modules = HashMap::new();
    for line in dep.lines() {
        let Some((path, deps)) = line.split_once(':') else {
            continue;
        };
        modules.insert(
            module_name(path),
            Module {
                path: path.to_owned(),
                deps: deps.split_whitespace().map(module_name).collect(),
            },
        );
    }
    let alias = fs::read_to_string(modules_dir.join("modules.alias"))
        .map_err(io_err("reading modules.alias"))?;
    let mut aliases: HashMap<String, Vec<String>> = HashMap::new();
    for line in alias.lines() {
        let mut words = line.split_whitespace();
        if let (Some("alias"), Some(name), Some(module)) =
            (words.next(), words.next(), words.next())
            && !name.contains(['*', '?', '['])
        {
            aliases
                .entry(name.to_owned())
                .or_default()
                .push(module_name(module));
        }
    }
    Ok(Prepared {
        package,
        release,
        vmlinuz,
        kernel,
        modules_dir,
        took: started.elapsed(),
        modules,
        aliases,
    })
}

fn single_entry(dir: &Path) -> Result<String, VmError> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(io_err(format!("reading {}", dir.display())))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
        .pop()
        .ok_or_else(|| VmError::Prepare(format!("{} is empty", dir.display())))
}

/// The newest fully unpacked kernel in the cache.
fn cached_kernel(cache: &Path) -> Result<Option<PathBuf>, VmError> {
    let mut ready: Vec<PathBuf> = fs::read_dir(cache.join("kernel"))
        .map_err(io_err("reading target/vm/kernel"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join(".ready").is_file())
        .collect();
    ready.sort();
    Ok(ready.pop())
}

/// The ELF kernel inside a bzImage (`vmlinuz`): the xz stream after the setup code,
/// unpacked with `xz` (the trailing data after the stream makes it complain; the ELF header
/// and a plausible size say whether it worked). Cached next to `vmlinuz`; `vmlinuz` itself
/// when anything fails.
fn uncompressed_kernel(vmlinuz: &Path, vmlinux: &Path) -> PathBuf {
    if vmlinux.is_file() {
        return vmlinux.to_path_buf();
    }
    let extract = || -> Option<()> {
        let image = fs::read(vmlinuz).ok()?;
        let at = image.windows(6).position(|w| w == b"\xfd7zXZ\0")?;
        let partial = vmlinux.with_extension("partial");
        let out = fs::File::create(&partial).ok()?;
        let mut child = Command::new("xz")
            .arg("-dc")
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut stdin = child.stdin.take()?;
        let _ = stdin.write_all(&image[at..]);
        drop(stdin);
        let _ = child.wait();
        let elf = fs::read(&partial).ok()?;
        if elf.len() < image.len() || !elf.starts_with(b"\x7fELF\x02") {
            let _ = fs::remove_file(&partial);
            return None;
        }
        fs::rename(&partial, vmlinux).ok()
    };
    match extract() {
        Some(()) => vmlinux.to_path_buf(),
        None => {
            eprintln!(
                "vm: could not unpack {}; booting it compressed",
                vmlinuz.display()
            );
            vmlinuz.to_path_buf()
        }
    }
}

/// `apt-get download` the kernel package `linux-image-amd64` depends on, unpack it, index
/// its modules.
fn download_kernel(cache: &Path) -> Result<PathBuf, VmError> {
    let depends = || {
        output(Command::new("apt-cache").args(["depends", KERNEL_PACKAGE]))
            .ok()
            .and_then(|text| {
                text.lines()
                    .filter_map(|l| l.trim().strip_prefix("Depends: "))
                    .find(|p| p.starts_with("linux-image-"))
                    .map(str::to_owned)
            })
    };
    let package = match depends() {
        Some(p) => p,
        None => {
            let _ = Command::new("apt-get").args(["update", "-qq"]).status();
            depends().ok_or_else(|| {
                VmError::Prepare(format!(
                    "apt-cache knows no kernel package {KERNEL_PACKAGE}"
                ))
            })?
        }
    };
    eprintln!("vm: downloading {package} (not installed: unpacked into target/vm)");
    let download = cache.join("download");
    let _ = fs::remove_dir_all(&download);
    fs::create_dir_all(&download).map_err(io_err("creating target/vm/download"))?;
    output(
        Command::new("apt-get")
            .args(["download", "-qq", &package])
            .current_dir(&download),
    )?;
    let deb = fs::read_dir(&download)
        .map_err(io_err("reading target/vm/download"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| VmError::Prepare(format!("apt-get download {package} left no .deb")))?;
    let partial = cache.join("kernel").join(format!(".{package}.partial"));
    let _ = fs::remove_dir_all(&partial);
    output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
    let release = single_entry(&partial.join("lib/modules"))?;
    // The package carries no modules.dep (the installer runs depmod); busybox's will do.
    output(
        Command::new("/bin/busybox")
            .args(["depmod", "-b"])
            .arg(&partial)
            .arg(&release),
    )?;
    fs::write(partial.join(".ready"), &package).map_err(io_err("writing .ready"))?;
    let dir = cache.join("kernel").join(&package);
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&partial, &dir).map_err(io_err("renaming the unpacked kernel"))?;
    let _ = fs::remove_dir_all(&download);
    Ok(dir)
}

/// The `.modinfo` section of a module file (ELF64, little endian), as `key=value` strings.
fn modinfo(file: &[u8]) -> Vec<String> {
    let u16_at = |o: usize| file.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        file.get(o..o + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let u64_at = |o: usize| {
        file.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let section = |i: usize| -> Option<(usize, usize, usize)> {
        let shoff = usize::try_from(u64_at(0x28)?).ok()?;
        let entsize = usize::from(u16_at(0x3a)?);
        let header = shoff.checked_add(i.checked_mul(entsize)?)?;
        Some((
            usize::try_from(u32_at(header)?).ok()?,
            usize::try_from(u64_at(header + 0x18)?).ok()?,
            usize::try_from(u64_at(header + 0x20)?).ok()?,
        ))
    };
    let find = || -> Option<&[u8]> {
        if file.get(..4)? != b"\x7fELF" {
            return None;
        }
        let count = usize::from(u16_at(0x3c)?);
        let (_, names_at, names_len) = section(usize::from(u16_at(0x3e)?))?;
        let names = file.get(names_at..names_at.checked_add(names_len)?)?;
        (0..count).find_map(|i| {
            let (name, at, len) = section(i)?;
            let name = names.get(name..)?.split(|&b| b == 0).next()?;
            (name == b".modinfo")
                .then(|| file.get(at..at.checked_add(len)?))
                .flatten()
        })
    };
    find()
        .map(|info| {
            info.split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A module to load at boot, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Load {
    name: String,
    path: String,
    /// Reached only as a soft dependency alternative (e.g. `crc32c_intel` for `crc32c`):
    /// its failure is reported apart.
    optional: bool,
}

impl Prepared {
    /// The modules to load for `wanted`, dependencies first (from `modules.dep`), soft
    /// dependencies (`softdep=pre:` in `.modinfo`, resolved through `modules.alias`) before
    /// the module that names them.
    fn resolve(&self, wanted: &[String]) -> Result<Vec<Load>, VmError> {
        let mut order: Vec<Load> = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut stack: Vec<(String, bool)> = Vec::new();
        for name in wanted {
            let name = name.replace('-', "_");
            if !self.modules.contains_key(&name) {
                return Err(VmError::Prepare(format!(
                    "kernel {} has no module {name}",
                    self.release
                )));
            }
            self.visit(&name, false, &mut order, &mut seen, &mut stack)?;
        }
        Ok(order)
    }

    fn candidates(&self, name: &str) -> Vec<String> {
        let name = name.replace('-', "_");
        if self.modules.contains_key(&name) {
            return vec![name];
        }
        self.aliases
            .get(&name)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|m| self.modules.contains_key(m))
            .collect()
    }

    fn visit(
        &self,
        name: &str,
        optional: bool,
        order: &mut Vec<Load>,
        seen: &mut HashMap<String, usize>,
        stack: &mut Vec<(String, bool)>,
    ) -> Result<(), VmError> {
        if let Some(&i) = seen.get(name) {
            if !optional && order[i].optional {
                // Needed after all: it and what it needs are no longer optional.
                order[i].optional = false;
                let deps = self.modules.get(name).map(|m| m.deps.clone());
                for dep in deps.unwrap_or_default() {
                    self.visit(&dep, false, order, seen, stack)?;
                }
            }
            return Ok(());
        }
        if stack.iter().any(|(n, _)| n == name) {
            return Ok(());
        }
        let module = self
            .modules
            .get(name)
            .ok_or_else(|| VmError::Prepare(format!("no module {name}")))?;
        stack.push((name.to_owned(), optional));
        let file = fs::read(self.modules_dir.join(&module.path))
            .map_err(io_err(format!("reading {}", module.path)))?;
        let info = modinfo(&file);
        let mut pre = Vec::new();
        for softdep in info.iter().filter_map(|kv| kv.strip_prefix("softdep=")) {
            let mut in_pre = false;
            for word in softdep.split_whitespace() {
                match word {
                    "pre:" => in_pre = true,
                    "post:" => in_pre = false,
                    w if in_pre => pre.push(w.to_owned()),
                    _ => {}
                }
            }
        }
        for soft in pre {
            for candidate in self.candidates(&soft) {
                self.visit(&candidate, true, order, seen, stack)?;
            }
        }
        for dep in &module.deps {
            self.visit(dep, optional, order, seen, stack)?;
        }
        stack.pop();
        seen.insert(name.to_owned(), order.len());
        order.push(Load {
            name: name.to_owned(),
            path: module.path.clone(),
            optional,
        });
        Ok(())
    }
}

/// Where a file of the initramfs comes from.
#[derive(Debug, Clone)]
enum Node {
    Dir,
    File { from: PathBuf, mode: u32 },
    Bytes { data: Vec<u8>, mode: u32 },
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

/// A newc cpio archive (what the kernel unpacks as its initramfs), written in order: parents
/// before children (the map's order).
#[derive(Debug, Default)]
struct Archive {
    nodes: BTreeMap<String, Node>,
}

impl Archive {
    fn add(&mut self, path: &str, node: Node) {
        let path = path.trim_start_matches('/').to_owned();
        let mut parent = String::new();
        for part in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, p)| p)
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            self.nodes.entry(parent.clone()).or_insert(Node::Dir);
        }
        self.nodes.insert(path, node);
    }

    fn write(&self, out: &Path) -> Result<u64, VmError> {
        let file = fs::File::create(out).map_err(io_err(format!("creating {}", out.display())))?;
        let mut w = BufWriter::new(file);
        let mut written = 0u64;
        let mut ino = 1u32;
        let mut entry = |w: &mut BufWriter<fs::File>,
                         name: &str,
                         mode: u32,
                         rdev: (u32, u32),
                         data: &mut dyn Read,
                         size: u64|
         -> io::Result<()> {
            let size32 = u32::try_from(size).map_err(io::Error::other)?;
            let namesize = u32::try_from(name.len() + 1).map_err(io::Error::other)?;
            let header = format!(
                "070701{ino:08X}{mode:08X}{:08X}{:08X}{:08X}{:08X}{size32:08X}{:08X}{:08X}{:08X}{:08X}{namesize:08X}{:08X}",
                0, 0, 1, 0, 0, 0, rdev.0, rdev.1, 0
            );
            ino += 1;
            w.write_all(header.as_bytes())?;
            w.write_all(name.as_bytes())?;
            w.write_all(&[0])?;
            let pad = |n: u64| ((4 - n % 4) % 4) as usize;
            w.write_all(&[0; 4][..pad(110 + u64::from(namesize))])?;
            let copied = io::copy(&mut data.take(size), w)?;
            if copied != size {
                return Err(io::Error::other(format!(
                    "{name}: file changed while copied"
                )));
            }
            w.write_all(&[0; 4][..pad(size)])?;
            written += 110 + u64::from(namesize) + size;
            Ok(())
        };
        for (name, node) in &self.nodes {
            let res = match node {
                Node::Dir => entry(&mut w, name, 0o040755, (0, 0), &mut io::empty(), 0),
                Node::File { from, mode } => fs::File::open(from).and_then(|f| {
                    let size = f.metadata()?.len();
                    entry(&mut w, name, 0o100000 | mode, (0, 0), &mut &f, size)
                }),
                Node::Bytes { data, mode } => entry(
                    &mut w,
                    name,
                    0o100000 | mode,
                    (0, 0),
                    &mut data.as_slice(),
                    data.len() as u64,
                ),
                Node::Symlink(target) => entry(
                    &mut w,
                    name,
                    0o120777,
                    (0, 0),
                    &mut target.as_bytes(),
                    target.len() as u64,
                ),
                Node::CharDev { major, minor } => entry(
                    &mut w,
                    name,
                    0o020600,
                    (*major, *minor),
                    &mut io::empty(),
                    0,
                ),
            };
            res.map_err(io_err(format!("writing {name} into the initramfs")))?;
        }
        entry(&mut w, "TRAILER!!!", 0, (0, 0), &mut io::empty(), 0)
            .and_then(|()| w.flush())
            .map_err(io_err("writing the initramfs"))?;
        Ok(written)
    }
}

/// The shared libraries (and the loader) `ldd` names for a dynamic binary; nothing for a
/// static one.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, VmError> {
    if is_static(binary) {
        return Ok(Vec::new());
    }
    let text = output(Command::new("ldd").arg(binary))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let l = l.split(" (").next()?.trim();
            let path = l.rsplit("=> ").next()?.trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

static RUN_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// One boot of the VM: see the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Vm<'a> {
    prepared: &'a Prepared,
    modules: Vec<String>,
    files: Vec<(String, PathBuf)>,
    dirs: Vec<(String, PathBuf)>,
    bytes: Vec<(String, Vec<u8>, u32)>,
    binaries: Vec<PathBuf>,
    memory_mib: u32,
    cpus: u32,
    timeout: Duration,
    echo: bool,
    interactive: bool,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct VmOutput {
    /// The script's exit status.
    pub status: i32,
    /// What the script printed (stdout and stderr, from the console between init's markers;
    /// kernel messages of level warning and above may interleave).
    pub output: String,
    /// The whole console: firmware, kernel, init, script.
    pub console: String,
    /// Modules that failed to load (dependencies of the requested ones included).
    pub failed_modules: Vec<String>,
    /// Soft-dependency alternatives that failed to load (e.g. a CPU-specific `crc32c_intel`
    /// where the generic one loaded): informational.
    pub failed_optional_modules: Vec<String>,
    /// Modules loaded at boot, in order.
    pub loaded_modules: Vec<String>,
    /// Guest uptime when `/init` started (kernel boot).
    pub boot: Duration,
    /// Guest uptime when the script started (modules loaded).
    pub ready: Duration,
    /// Wall-clock time of the whole run on the host: initramfs, qemu from start to exit.
    pub wall: Duration,
    /// Size of the initramfs.
    pub initramfs_bytes: u64,
}

impl VmOutput {
    /// Panics with the console unless the script exited 0 and every module loaded.
    pub fn assert_success(&self) -> &VmOutput {
        assert!(
            self.status == 0 && self.failed_modules.is_empty(),
            "the VM script exited {} (modules that failed: {:?}); console:\n{}",
            self.status,
            self.failed_modules,
            self.console
        );
        self
    }
}

/// Kills (SIGKILL, by its own pid) and reaps the qemu it holds when dropped: on success it has
/// already exited; on error, timeout or panic it is stopped here.
#[derive(Debug)]
struct QemuGuard(Option<Child>);

impl Drop for QemuGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// Removes a run's directory (its initramfs) on drop, unless `RUDDER_VM_KEEP=1`.
#[derive(Debug)]
struct RunDir(PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        if std::env::var("RUDDER_VM_KEEP").is_ok_and(|v| v == "1") {
            eprintln!("vm: kept {}", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Console bytes to text: no carriage returns, no escape sequences (the firmware clears the
/// screen), no other control characters.
fn clean_console(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

fn uptime(line: &str) -> Duration {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("uptime="))
        .and_then(|s| s.parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .unwrap_or_default()
}

impl<'a> Vm<'a> {
    /// A VM with no modules and no files yet: 1 GiB, one CPU, a 300 s timeout, the console
    /// echoed to stderr (captured by the test harness unless `--nocapture`).
    pub fn new(prepared: &'a Prepared) -> Vm<'a> {
        Vm {
            prepared,
            modules: Vec::new(),
            files: Vec::new(),
            dirs: Vec::new(),
            bytes: Vec::new(),
            binaries: Vec::new(),
            memory_mib: 1024,
            cpus: 1,
            timeout: Duration::from_secs(300),
            echo: true,
            interactive: false,
        }
    }

    /// Modules to load at boot (with their dependencies), in this order.
    pub fn modules(mut self, names: &[&str]) -> Vm<'a> {
        self.modules.extend(names.iter().map(|n| (*n).to_owned()));
        self
    }

    /// Copies the host file `from` to `guest` (an absolute path), keeping its permissions.
    pub fn file(mut self, from: impl AsRef<Path>, guest: &str) -> Vm<'a> {
        self.files
            .push((guest.to_owned(), from.as_ref().to_path_buf()));
        self
    }

    /// Copies the host directory `from` (recursively, regular files and directories) to
    /// `guest`.
    pub fn dir(mut self, from: impl AsRef<Path>, guest: &str) -> Vm<'a> {
        self.dirs
            .push((guest.to_owned(), from.as_ref().to_path_buf()));
        self
    }

    /// Writes `data` to `guest` with permissions `mode` (e.g. `0o644`, `0o755`).
    pub fn bytes(mut self, guest: &str, data: impl Into<Vec<u8>>, mode: u32) -> Vm<'a> {
        self.bytes.push((guest.to_owned(), data.into(), mode));
        self
    }

    /// Copies a host program to the same path in the guest, with the shared libraries and
    /// loader `ldd` names (a static binary comes alone). It wins over the busybox applet of
    /// the same name (busybox's stays reachable as `busybox NAME`).
    pub fn host_binary(mut self, path: impl AsRef<Path>) -> Vm<'a> {
        self.binaries.push(path.as_ref().to_path_buf());
        self
    }

    /// Guest memory (MiB).
    pub fn memory_mib(mut self, mib: u32) -> Vm<'a> {
        self.memory_mib = mib;
        self
    }

    /// Guest CPUs (TCG runs one host thread per CPU).
    pub fn cpus(mut self, cpus: u32) -> Vm<'a> {
        self.cpus = cpus.max(1);
        self
    }

    /// The hard timeout of the whole run, boot included; qemu is killed when it passes.
    pub fn timeout(mut self, timeout: Duration) -> Vm<'a> {
        self.timeout = timeout;
        self
    }

    /// Whether to echo the console to stderr as it comes (`vm| ` lines); on by default.
    pub fn echo(mut self, echo: bool) -> Vm<'a> {
        self.echo = echo;
        self
    }

    /// For people at a terminal (`cargo xtask vm --shell`): qemu gets the terminal, the
    /// script gets the console as its stdin, nothing is captured ([`VmOutput::output`] and
    /// `console` stay empty), and the timeout becomes a day.
    pub fn interactive(mut self) -> Vm<'a> {
        self.interactive = true;
        self.timeout = Duration::from_secs(24 * 3600);
        self
    }

    fn archive(&self, script: &str, nonce: &str) -> Result<(Archive, Vec<Load>), VmError> {
        let p = self.prepared;
        let loads = p.resolve(&self.modules)?;
        let mut a = Archive::default();
        for dir in [
            "dev", "proc", "sys", "tmp", "run", "root", "etc", "var", "mnt",
        ] {
            a.add(dir, Node::Dir);
        }
        for dir in ["bin", "sbin", "usr/bin", "usr/sbin"] {
            a.add(dir, Node::Dir);
        }
        a.add("var/run", Node::Symlink("/run".into()));
        // Debian's busybox-static runs its own applets in preference to anything on PATH
        // (a "standalone shell"), which would shadow the host programs copied in: scripts run
        // under the host's dash instead, as /bin/sh.
        let dash = Path::new("/bin/dash");
        if dash.is_file() {
            a.add(
                "bin/dash",
                Node::File {
                    from: dash.to_path_buf(),
                    mode: 0o755,
                },
            );
            for lib in shared_libraries(dash)? {
                a.add(
                    &lib.display().to_string(),
                    Node::File {
                        from: lib.clone(),
                        mode: 0o755,
                    },
                );
            }
            a.add("bin/sh", Node::Symlink("dash".into()));
        }
        a.add("dev/console", Node::CharDev { major: 5, minor: 1 });
        a.add(
            "bin/busybox",
            Node::File {
                from: "/bin/busybox".into(),
                mode: 0o755,
            },
        );
        let moddir = format!("lib/modules/{}", p.release);
        let included: HashSet<&str> = loads.iter().map(|l| l.path.as_str()).collect();
        for l in &loads {
            a.add(
                &format!("{moddir}/{}", l.path),
                Node::File {
                    from: p.modules_dir.join(&l.path),
                    mode: 0o644,
                },
            );
        }
        // A modules.dep and modules.alias of what is inside, so that busybox's modprobe (and
        // the kernel's on-demand loading through it) finds them.
        let mut dep = String::new();
        let mut names: Vec<&Load> = loads.iter().collect();
        names.sort_by(|x, y| x.path.cmp(&y.path));
        for l in names {
            let deps = p
                .modules
                .get(&l.name)
                .map(|m| m.deps.clone())
                .unwrap_or_default();
            let paths: Vec<&str> = deps
                .iter()
                .filter_map(|d| p.modules.get(d).map(|m| m.path.as_str()))
                .filter(|path| included.contains(path))
                .collect();
            let _ = writeln!(dep, "{}: {}", l.path, paths.join(" "));
        }
        a.add(
            &format!("{moddir}/modules.dep"),
            Node::Bytes {
                data: dep.into_bytes(),
                mode: 0o644,
            },
        );
        let loaded: HashSet<&str> = loads.iter().map(|l| l.name.as_str()).collect();
        let mut alias = String::new();
        let mut pairs: Vec<(&String, &String)> = p
            .aliases
            .iter()
            .flat_map(|(k, v)| v.iter().map(move |m| (k, m)))
            .filter(|(_, m)| loaded.contains(m.as_str()))
            .collect();
        pairs.sort();
        for (name, module) in pairs {
            let _ = writeln!(alias, "alias {name} {module}");
        }
        a.add(
            &format!("{moddir}/modules.alias"),
            Node::Bytes {
                data: alias.into_bytes(),
                mode: 0o644,
            },
        );
        let list: String = loads
            .iter()
            .map(|l| format!("{} {} {}\n", l.name, l.path, u8::from(l.optional)))
            .collect();
        a.add(
            "etc/rudder-vm/modules",
            Node::Bytes {
                data: list.into_bytes(),
                mode: 0o644,
            },
        );
        for binary in &self.binaries {
            let guest = binary.display().to_string();
            a.add(
                &guest,
                Node::File {
                    from: binary.clone(),
                    mode: 0o755,
                },
            );
            for lib in shared_libraries(binary)? {
                a.add(
                    &lib.display().to_string(),
                    Node::File {
                        from: lib.clone(),
                        mode: 0o755,
                    },
                );
            }
        }
        for (guest, from) in &self.dirs {
            add_dir(&mut a, from, guest)?;
        }
        for (guest, from) in &self.files {
            let meta = fs::metadata(from).map_err(io_err(format!("{}", from.display())))?;
            use std::os::unix::fs::PermissionsExt;
            a.add(
                guest,
                Node::File {
                    from: from.clone(),
                    mode: meta.permissions().mode() & 0o7777,
                },
            );
        }
        for (guest, data, mode) in &self.bytes {
            a.add(
                guest,
                Node::Bytes {
                    data: data.clone(),
                    mode: *mode,
                },
            );
        }
        a.add(
            "etc/rudder-vm/script",
            Node::Bytes {
                data: script.as_bytes().to_vec(),
                mode: 0o755,
            },
        );
        let stdin = if self.interactive {
            "/dev/console"
        } else {
            "/dev/null"
        };
        a.add(
            "init",
            Node::Bytes {
                data: init_script(&p.release, nonce, stdin).into_bytes(),
                mode: 0o755,
            },
        );
        Ok((a, loads))
    }

    /// Boots the VM, runs `script` with `/bin/sh` inside (the host's dash, so that host
    /// programs on `PATH` win over busybox applets; as root, cwd `/`, stdin `/dev/null`,
    /// after the modules are loaded), and returns its exit status and output once the guest
    /// has powered off. A non-zero status is not an error; a timeout, a panic or a guest that
    /// never reports a status is.
    pub fn run(&self, script: &str) -> Result<VmOutput, VmError> {
        let started = Instant::now();
        let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let nonce = format!("{:x}{:x}{n:x}", std::process::id(), stamp & 0xffff_ffff);
        let dir = RunDir(
            cache_dir()
                .join("runs")
                .join(format!("{}-{n}", std::process::id())),
        );
        let _ = fs::remove_dir_all(&dir.0);
        fs::create_dir_all(&dir.0).map_err(io_err("creating the run directory"))?;
        let (archive, loads) = self.archive(script, &nonce)?;
        let initrd = dir.0.join("initrd.cpio");
        let initramfs_bytes = archive.write(&initrd)?;
        let status_file = dir.0.join("status");
        fs::write(&status_file, b"").map_err(io_err("creating the status file"))?;

        let mut cmd = Command::new(QEMU);
        cmd.args([
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-nodefaults",
            "-no-user-config",
        ])
        .args([
            "-nographic",
            "-monitor",
            "none",
            "-nic",
            "none",
            "-no-reboot",
        ])
        .arg("-m")
        .arg(self.memory_mib.to_string())
        .arg("-smp")
        .arg(self.cpus.to_string())
        .args(["-serial", "stdio", "-serial"])
        .arg(format!("file:{}", status_file.display()))
        .arg("-kernel")
        .arg(&self.prepared.kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            "console=ttyS0 panic=-1 oops=panic quiet rdinit=/init tsc=reliable",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if self.interactive {
            cmd.stdin(Stdio::inherit())
                .stdout(Stdio::inherit())
                .stderr(Stdio::inherit());
        }
        let mut guard = QemuGuard(Some(
            cmd.spawn().map_err(io_err(format!("starting {QEMU}")))?,
        ));
        let pid = guard.0.as_ref().map_or(0, Child::id);
        let console = Arc::new(Mutex::new(Vec::<u8>::new()));
        let child = guard
            .0
            .as_mut()
            .ok_or_else(|| VmError::Prepare("no qemu".into()))?;
        let readers: Vec<_> = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .map(|mut stream| {
            let console = Arc::clone(&console);
            let echo = self.echo;
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut line = Vec::new();
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    console
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&buf[..n]);
                    if echo {
                        for &b in &buf[..n] {
                            if b == b'\n' {
                                eprintln!("vm| {}", clean_console(&line));
                                line.clear();
                            } else {
                                line.push(b);
                            }
                        }
                    }
                }
                if echo && !line.is_empty() {
                    eprintln!("vm| {}", clean_console(&line));
                }
            })
        })
        .collect();
        let deadline = started + self.timeout;
        let qemu_status = loop {
            let child = guard
                .0
                .as_mut()
                .ok_or_else(|| VmError::Prepare("no qemu".into()))?;
            if let Some(status) = child.try_wait().map_err(io_err("waiting for qemu"))? {
                break status;
            }
            if Instant::now() >= deadline {
                drop(guard);
                for r in readers {
                    let _ = r.join();
                }
                let text = clean_console(&console.lock().unwrap_or_else(|e| e.into_inner()));
                return Err(VmError::Timeout {
                    timeout: self.timeout,
                    pid,
                    console: tail(&text, 60),
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        };
        for r in readers {
            let _ = r.join();
        }
        drop(guard);
        let console = clean_console(&console.lock().unwrap_or_else(|e| e.into_inner()));
        let status_text = fs::read_to_string(&status_file).unwrap_or_default();
        let mut out = VmOutput {
            status: -1,
            output: String::new(),
            console: console.clone(),
            failed_modules: Vec::new(),
            failed_optional_modules: Vec::new(),
            loaded_modules: Vec::new(),
            boot: Duration::ZERO,
            ready: Duration::ZERO,
            wall: started.elapsed(),
            initramfs_bytes,
        };
        let mut exit = None;
        for line in status_text.lines() {
            let mut words = line.split_whitespace();
            let (Some(tag), Some(got)) = (words.next(), words.next()) else {
                continue;
            };
            if got != nonce {
                continue;
            }
            let arg = words.next().unwrap_or_default().to_owned();
            match tag {
                "RUDDER-VM-INIT" => out.boot = uptime(line),
                "RUDDER-VM-READY" => out.ready = uptime(line),
                "RUDDER-VM-MODULE-FAILED" => out.failed_modules.push(arg),
                "RUDDER-VM-OPTIONAL-MODULE-FAILED" => out.failed_optional_modules.push(arg),
                "RUDDER-VM-EXIT" => exit = arg.parse::<i32>().ok(),
                _ => {}
            }
        }
        out.loaded_modules = loads
            .iter()
            .map(|l| l.name.clone())
            .filter(|n| !out.failed_modules.contains(n) && !out.failed_optional_modules.contains(n))
            .collect();
        let start = format!("RUDDER-VM-START {nonce}");
        let end = format!("RUDDER-VM-EXIT {nonce}");
        if let Some(from) = console.find(&start) {
            let body = &console[from + start.len()..];
            let body = body.strip_prefix('\n').unwrap_or(body);
            out.output = body[..body.find(&end).unwrap_or(body.len())].to_owned();
        }
        match exit {
            Some(code) => {
                out.status = code;
                Ok(out)
            }
            None => Err(VmError::NoExitStatus {
                qemu: qemu_status.to_string(),
                console: tail(&console, 60),
            }),
        }
    }
}

fn add_dir(a: &mut Archive, from: &Path, guest: &str) -> Result<(), VmError> {
    use std::os::unix::fs::PermissionsExt;
    a.add(guest, Node::Dir);
    let entries = fs::read_dir(from).map_err(io_err(format!("reading {}", from.display())))?;
    for entry in entries {
        let entry = entry.map_err(io_err(format!("reading {}", from.display())))?;
        let path = entry.path();
        let name = format!(
            "{}/{}",
            guest.trim_end_matches('/'),
            entry.file_name().to_string_lossy()
        );
        let meta = fs::metadata(&path).map_err(io_err(format!("{}", path.display())))?;
        if meta.is_dir() {
            add_dir(a, &path, &name)?;
        } else if meta.is_file() {
            a.add(
                &name,
                Node::File {
                    from: path,
                    mode: meta.permissions().mode() & 0o7777,
                },
            );
        }
    }
    Ok(())
}

/// The guest's `/init`: mounts, loads the modules in order (reporting each failure on
/// `ttyS1`), runs the script, reports its status on `ttyS1`, powers off.
fn init_script(release: &str, nonce: &str, stdin: &str) -> String {
    let release = shell_quote(release);
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /run/netns
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mkdir -p /run/netns
report() {{ echo "$*" >/dev/ttyS1; }}
up() {{ cut -d' ' -f1 /proc/uptime; }}
report "RUDDER-VM-INIT {nonce} uptime=$(up)"
M=/lib/modules/{release}
while read -r name path optional; do
    if ! grep -q "^$name " /proc/modules && ! insmod "$M/$path" 2>/tmp/insmod.err; then
        if [ "$optional" = 1 ]; then
            report "RUDDER-VM-OPTIONAL-MODULE-FAILED {nonce} $name"
        else
            echo "rudder-vm: module $name failed: $(cat /tmp/insmod.err)"
            report "RUDDER-VM-MODULE-FAILED {nonce} $name"
        fi
    fi
done </etc/rudder-vm/modules
ip link set lo up
echo 4 > /proc/sys/kernel/printk
report "RUDDER-VM-READY {nonce} uptime=$(up)"
echo "RUDDER-VM-START {nonce}"
cd /
/bin/sh /etc/rudder-vm/script <{stdin}
rc=$?
echo
echo "RUDDER-VM-EXIT {nonce} $rc"
report "RUDDER-VM-EXIT {nonce} $rc"
sync
poweroff -f
"#
    )
}

/// The static `rudder` binary (`cargo xtask dist`'s build): `RUDDER_VM_RUDDER` when set
/// (`cargo xtask test` sets it after building), else built here with the same command, which
/// is a no-op when it is up to date.
pub fn static_rudder() -> Result<PathBuf, VmError> {
    if let Some(path) = std::env::var_os("RUDDER_VM_RUDDER") {
        return Ok(PathBuf::from(path));
    }
    let mut cmd = static_build_command();
    eprintln!("vm: building the static rudder: {cmd:?}");
    let status = cmd
        .status()
        .map_err(io_err("running cargo build for the static rudder"))?;
    if !status.success() {
        return Err(VmError::Prepare(format!("{cmd:?} failed with {status}")));
    }
    Ok(static_rudder_path())
}

/// The target the static binary is built for (the toolchain's only one; naming it keeps build
/// scripts and proc macros dynamic while the binary is linked statically).
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";

/// `cargo build` of the static `rudder` (release, glibc linked statically, symbols stripped),
/// shared by `cargo xtask dist` and [`static_rudder`] so that both use one artifact.
pub fn static_build_command() -> Command {
    let mut cmd = cargo_command();
    cmd.args([
        "build",
        "--release",
        "--locked",
        "-p",
        "rudder",
        "--target",
        STATIC_TARGET,
    ])
    .env("RUSTFLAGS", "-C target-feature=+crt-static")
    .env("CARGO_PROFILE_RELEASE_STRIP", "symbols");
    cmd
}

/// The test binary of `package`'s integration test `test`, built (debug) if needed: to run
/// in the guest (`Vm::host_binary` brings its shared libraries).
pub fn test_binary(package: &str, test: &str) -> Result<PathBuf, VmError> {
    let mut cmd = cargo_command();
    cmd.args([
        "test",
        "--locked",
        "-p",
        package,
        "--test",
        test,
        "--no-run",
        "--message-format=json",
    ])
    .stderr(Stdio::inherit());
    let out = cmd
        .output()
        .map_err(io_err(format!("building the {test} test of {package}")))?;
    if !out.status.success() {
        return Err(VmError::Prepare(format!(
            "{cmd:?} failed with {}",
            out.status
        )));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"]["name"] == test && v["profile"]["test"] == true)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| VmError::Prepare(format!("no executable for the {test} test of {package}")))
}

/// `cargo` from a test, with the environment a shell has.
fn cargo_command() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // Run from a test, the environment holds what cargo sets for the test (CARGO_MANIFEST_DIR,
    // CARGO_PKG_*, OUT_DIR...); build scripts that watch those (ring's) would rebuild the
    // whole dependency tree each time, so the build gets the environment a shell has.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let set_by_cargo = [
            "CARGO_PKG_",
            "CARGO_BIN_EXE_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
        ]
        .iter()
        .any(|p| key.starts_with(p))
            || [
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "OUT_DIR",
                "RUST_TEST_THREADS",
            ]
            .contains(&key.as_ref());
        if set_by_cargo {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.current_dir(workspace_root());
    cmd
}

/// Where [`static_build_command`] leaves the binary.
pub fn static_rudder_path() -> PathBuf {
    target_dir()
        .join(STATIC_TARGET)
        .join("release")
        .join("rudder")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_is_newc_with_parents_first() {
        let mut a = Archive::default();
        a.add(
            "/a/b/c",
            Node::Bytes {
                data: b"hello".to_vec(),
                mode: 0o644,
            },
        );
        a.add("/a-x", Node::Symlink("a".into()));
        let dir = crate::TempDir::new("cpio").unwrap();
        let out = dir.path().join("x.cpio");
        a.write(&out).unwrap();
        let bytes = fs::read(&out).unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let text = String::from_utf8_lossy(&bytes);
        let names: Vec<&str> = ["a\0", "a-x\0", "a/b\0", "a/b/c\0", "TRAILER!!!\0"].to_vec();
        let mut at = 0;
        for name in names {
            let i = text[at..].find(name).unwrap();
            at += i + name.len();
        }
        assert!(text.starts_with("070701"));
        assert!(text.contains("hello"));
    }

    #[test]
    fn modinfo_of_a_minimal_elf() {
        // An ELF64 header with two sections: the section names and .modinfo.
        let names = b"\0.shstrtab\0.modinfo\0";
        let info = b"license=GPL\0softdep=pre: crc32c\0depends=\0";
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        let names_at = 64;
        let info_at = names_at + names.len();
        let shoff = info_at + info.len();
        f.extend_from_slice(names);
        f.extend_from_slice(info);
        f[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        f[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        let section = |name: u32, at: usize, len: usize| {
            let mut s = vec![0u8; 64];
            s[..4].copy_from_slice(&name.to_le_bytes());
            s[0x18..0x20].copy_from_slice(&(at as u64).to_le_bytes());
            s[0x20..0x28].copy_from_slice(&(len as u64).to_le_bytes());
            s
        };
        f.extend(section(0, 0, 0));
        f.extend(section(1, names_at, names.len()));
        f.extend(section(11, info_at, info.len()));
        assert_eq!(
            modinfo(&f),
            ["license=GPL", "softdep=pre: crc32c", "depends="]
        );
        assert!(modinfo(b"not an elf").is_empty());
    }

    #[test]
    fn ldd_paths_and_console_cleaning() {
        assert_eq!(
            module_name("kernel/arch/x86/crypto/crc32c-intel.ko"),
            "crc32c_intel"
        );
        assert_eq!(
            clean_console(b"\x1bc\x1b[?7l\x1b[2JBOOT\r\nok\x07\n"),
            "BOOT\nok\n"
        );
        assert_eq!(
            uptime("RUDDER-VM-INIT x uptime=3.25"),
            Duration::from_millis(3250)
        );
    }
}
