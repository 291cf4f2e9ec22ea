//! Rudder's task runner (`cargo xtask <task>`).
//!
//! - `test`: installs the system packages the tests need (on Debian, as root) and runs the
//!   whole test suite, kernel tests included;
//! - `demo`: builds Rudder and runs it on the embedded nginx example in throwaway network
//!   namespaces, printing which backend answered each request;
//! - `bench`: kernel-level benchmarks (apply to a real kernel in a namespace), side by side
//!   with a kube-proxy-style layout, printed as Markdown for `docs/performance.md`;
//! - `bench-api`: the daemon against the test API server at scale: start to first sync,
//!   change-to-kernel latency, peak memory;
//! - `bench-ipvs [--quick]`: the IPVS mode at scale in the test VM (first sync, one-endpoint
//!   changes, RSS, netlink requests, the reads kube-proxy's IPVS mode does on every sync);
//! - `dist [--check]`: `target/dist/rudder`, one static binary; `--check` runs it in an empty
//!   chroot (`test` does this too);
//! - `fuzz [--secs N] [--seed N] [TARGET]`: the fuzz targets (manifests, the config file), optimized, N seconds each (default 60), with executions and findings;
//! - `bench-refusals`: what a service the kernel refuses costs the sync loop (bisection by
//!   dry runs), and what the table monitor costs a full sync;
//! - `soak`: the chaos soak for as long as wanted (`--duration 10m --seed N`);
//! - `vm-prepare`: installs qemu, downloads and unpacks the VM's kernel (once) and boots it
//!   once, with timings; `vm [--shell] [SCRIPT...]`: boots the IPVS test VM by hand and runs
//!   SCRIPT (or a shell) inside (docs/testing.md, "IPVS VM").

mod bench;
mod bench_api;
mod bench_ipvs;
mod bench_refusals;
mod demo;
mod dist;
mod layering;
mod soak;
mod vm;

use std::process::{Command, ExitCode};

use anyhow::{Context, bail};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("demo") => demo::demo(),
        Some("bench") => bench::bench(&args[1..]),
        Some("bench-api") => bench_api::bench_api(&args[1..]),
        Some("bench-ipvs") => bench_ipvs::bench_ipvs(&args[1..]),
        Some("bench-refusals") => bench_refusals::bench_refusals(&args[1..]),
        Some("soak") => soak::soak(&args[1..]),
        Some("deps") => install_deps(),
        Some("fuzz") => fuzz(&args[1..]),
        Some("dist") if args.get(1).map(String::as_str) == Some("--check") => dist::check(),
        Some("dist") => dist::dist().map(|_| ()),
        Some("kind") => kind(),
        Some("vm-prepare") => vm::prepare(),
        Some("vm") => {
            return match vm::run(&args[1..]) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("xtask: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <test|demo|bench|bench-api|bench-ipvs|bench-refusals|fuzz|dist|soak|kind|deps|vm-prepare|vm> [args]"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs nftables, iproute2 and conntrack with apt-get when they are missing.
pub fn install_deps() -> anyhow::Result<()> {
    let missing: Vec<&str> = [
        ("nft", "nftables"),
        ("ip", "iproute2"),
        ("conntrack", "conntrack"),
    ]
    .into_iter()
    .filter(|(p, _)| !have(p))
    .map(|(_, pkg)| pkg)
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !have("apt-get") {
        bail!("missing programs from packages {missing:?} and no apt-get to install them");
    }
    eprintln!("xtask: installing {missing:?}");
    let update = Command::new("apt-get")
        .args(["update", "-qq"])
        .status()
        .context("apt-get update")?;
    if !update.success() {
        bail!("apt-get update failed");
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("apt-get install")?;
    if !status.success() {
        bail!("apt-get install {missing:?} failed");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// `cargo xtask test`: dependencies, formatting, then every test of the workspace.
fn test(extra: &[String]) -> anyhow::Result<()> {
    if !rudder_e2e::root::is_root() {
        bail!("the tests program nftables in network namespaces and must run as root");
    }
    install_deps()?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    layering::check()?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The VM tests (e2e_vm) boot the static binary in qemu: build it and prepare the VM
    // (qemu, the kernel) first, so that both are timed apart and the tests only boot.
    let rudder = dist::dist()?;
    let started = std::time::Instant::now();
    match rudder_e2e::vm::prepare() {
        Ok(p) => eprintln!(
            "xtask: VM kernel {} ready ({:.1?})",
            p.release,
            started.elapsed()
        ),
        Err(rudder_e2e::vm::VmError::Unavailable(why)) => {
            eprintln!("xtask: WARNING: the VM tests will skip themselves: {why}")
        }
        Err(e) => bail!("preparing the VM: {e}"),
    }
    run(cargo()
        .args(["test", "--workspace", "--all-targets"])
        .args(extra)
        .env("RUDDER_VM_RUDDER", &rudder))?;
    run(cargo().args(["test", "--workspace", "--doc"]))?;
    dist::check()?;
    Ok(())
}

/// `cargo xtask fuzz`: every fuzz target (tests whose name starts with `fuzz_`), built
/// optimized, one after the other, `--secs` each.
fn fuzz(args: &[String]) -> anyhow::Result<()> {
    let mut secs = "60".to_owned();
    let mut seed = None;
    let mut filter = "fuzz_".to_owned();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--secs" => secs = it.next().context("--secs needs a value")?.clone(),
            "--seed" => seed = Some(it.next().context("--seed needs a value")?.clone()),
            t if !t.starts_with('-') => filter = format!("fuzz_{}", t.replace('-', "_")),
            other => bail!("unknown argument {other:?}"),
        }
    }
    let mut cmd = cargo();
    cmd.args(["test", "--release", "--workspace", "--lib", "--bins", "--"])
        .arg(&filter)
        .args(["--nocapture", "--test-threads", "1"])
        .env("RUDDER_FUZZ_SECS", &secs);
    if let Some(seed) = seed {
        cmd.env("RUDDER_FUZZ_SEED", seed);
    }
    run(&mut cmd)
}

/// `cargo xtask kind`: for users with Docker and kind (not available on the development
/// machines): build the image, create a kind cluster without kube-proxy, load the image,
/// install Rudder, wait for it, and check a ClusterIP and a NodePort service answer.
fn kind() -> anyhow::Result<()> {
    let root = demo::workspace_root();
    let image = "ghcr.io/rudder-proxy/rudder:0.1.0";
    for tool in ["docker", "kind", "kubectl"] {
        if !have(tool) {
            bail!("{tool} is needed for the kind workflow");
        }
    }
    run(Command::new("docker")
        .args(["build", "-t", image])
        .arg(&root))?;
    run(Command::new("kind")
        .args(["create", "cluster", "--name", "rudder", "--config"])
        .arg(root.join("deploy/kind/cluster.yaml")))?;
    run(Command::new("kind").args(["load", "docker-image", image, "--name", "rudder"]))?;
    run(Command::new("kubectl")
        .args(["apply", "-f"])
        .arg(root.join("deploy")))?;
    run(Command::new("kubectl").args([
        "-n",
        "kube-system",
        "rollout",
        "status",
        "daemonset/rudder",
        "--timeout=180s",
    ]))?;
    // Smoke test: three pods answering their names behind a ClusterIP and a NodePort.
    run(Command::new("kubectl").args([
        "create",
        "deployment",
        "whoami",
        "--image=registry.k8s.io/e2e-test-images/agnhost:2.53",
        "--replicas=3",
        "--",
        "/agnhost",
        "netexec",
        "--http-port=8080",
    ]))?;
    run(Command::new("kubectl").args([
        "expose",
        "deployment",
        "whoami",
        "--port=80",
        "--target-port=8080",
        "--type=NodePort",
    ]))?;
    run(Command::new("kubectl").args([
        "rollout",
        "status",
        "deployment/whoami",
        "--timeout=180s",
    ]))?;
    run(Command::new("kubectl").args([
        "run",
        "smoke",
        "--rm",
        "-i",
        "--restart=Never",
        "--image=registry.k8s.io/e2e-test-images/agnhost:2.53",
        "--",
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6; do wget -qO- http://whoami.default.svc/hostname; echo; done",
    ]))?;
    let np = Command::new("kubectl")
        .args([
            "get",
            "svc",
            "whoami",
            "-o",
            "jsonpath={.spec.ports[0].nodePort}",
        ])
        .output()?;
    let np = String::from_utf8_lossy(&np.stdout).trim().to_owned();
    run(Command::new("docker").args([
        "exec",
        "rudder-worker",
        "sh",
        "-c",
        &format!("curl -s http://$(hostname -i | cut -d' ' -f1):{np}/hostname"),
    ]))?;
    eprintln!("xtask: Rudder serves ClusterIP and NodePort traffic on kind");
    Ok(())
}
