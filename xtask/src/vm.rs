//! `cargo xtask vm-prepare` and `cargo xtask vm`: the VM the IPVS tests boot
//! (`rudder_e2e::vm`), by hand.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rudder_e2e::vm::{self, Vm};

/// `cargo xtask vm-prepare`: installs qemu & co., downloads and unpacks the kernel (once),
/// then boots it once and says how long each part took.
pub fn prepare() -> anyhow::Result<()> {
    let started = Instant::now();
    let p = vm::prepare().context("preparing the VM")?;
    eprintln!(
        "xtask: {} ({}) in {}: prepared in {:.1?}",
        p.package,
        p.release,
        vm::cache_dir().display(),
        p.took
    );
    let out = Vm::new(&p)
        .modules(&vm::default_modules())
        .echo(false)
        .timeout(Duration::from_secs(120))
        .run("head -1 /proc/net/ip_vs")
        .context("booting the VM")?;
    out.assert_success();
    eprintln!(
        "xtask: boot: init after {:.2?} (guest uptime), {} modules loaded after {:.2?}, \
         poweroff; qemu ran {:.1?} on the host; {}",
        out.boot,
        out.loaded_modules.len(),
        out.ready,
        out.wall,
        out.output.trim()
    );
    eprintln!("xtask: vm-prepare took {:.1?}", started.elapsed());
    Ok(())
}

/// `cargo xtask vm [--shell] [--no-rudder] [--bin PATH]... [--timeout SECS] [SCRIPT...]`:
/// boots the VM with every module of `vm::default_modules()`, ipvsadm, ip, nft and conntrack,
/// the static rudder (`/usr/bin/rudder`, unless `--no-rudder`), `examples/nginx` (`/m`) and
/// each `--bin` program (same path, with its shared libraries: a test binary, say), runs
/// SCRIPT (or a shell on the console with `--shell`) and exits with its status.
pub fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    let mut shell = false;
    let mut with_rudder = true;
    let mut timeout = Duration::from_secs(600);
    let mut script = Vec::new();
    let mut bins = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--shell" => shell = true,
            "--no-rudder" => with_rudder = false,
            "--bin" => bins.push(it.next().context("--bin needs a path")?.clone()),
            "--timeout" => {
                let secs: u64 = it
                    .next()
                    .context("--timeout needs seconds")?
                    .parse()
                    .context("--timeout needs seconds")?;
                timeout = Duration::from_secs(secs);
            }
            "--" => script.extend(it.by_ref().cloned()),
            other if other.starts_with("--") => bail!("unknown argument {other:?}"),
            other => script.push(other.to_owned()),
        }
    }
    if script.is_empty() && !shell {
        bail!(
            "usage: cargo xtask vm [--shell] [--no-rudder] [--bin PATH]... [--timeout SECS] [SCRIPT...]"
        );
    }
    let p = vm::prepare().context("preparing the VM")?;
    let mut machine = Vm::new(&p)
        .modules(&vm::default_modules())
        .timeout(timeout)
        .dir(crate::demo::workspace_root().join("examples/nginx"), "/m");
    for program in [
        "/usr/sbin/ipvsadm",
        "/usr/sbin/ip",
        "/usr/sbin/nft",
        "/usr/sbin/conntrack",
    ] {
        if Path::new(program).is_file() {
            machine = machine.host_binary(program);
        }
    }
    for bin in &bins {
        let path = std::fs::canonicalize(bin).with_context(|| format!("--bin {bin}"))?;
        machine = machine.host_binary(path);
    }
    if with_rudder {
        machine = machine.file(crate::dist::dist()?, "/usr/bin/rudder");
    }
    let script = if shell {
        machine = machine.interactive();
        "echo 'rudder VM: exit the shell to power off'; exec setsid cttyhack sh -i".to_owned()
    } else {
        script.join(" ")
    };
    let out = machine.run(&script).context("running the VM")?;
    if !out.failed_modules.is_empty() {
        eprintln!(
            "xtask: modules that failed to load: {:?}",
            out.failed_modules
        );
    }
    eprintln!(
        "xtask: exit status {}; init after {:.2?}, modules loaded after {:.2?} (guest uptime); \
         {:.1?} in all",
        out.status, out.boot, out.ready, out.wall
    );
    Ok(ExitCode::from(u8::try_from(out.status).unwrap_or(1)))
}
