//! Rudder's task runner (`cargo xtask <task>`).
//!
//! - `test`: installs the system packages the tests need (on Debian, as root) and runs the
//!   whole test suite, kernel tests included;
//! - `demo`: builds Rudder and runs it on the embedded nginx example in throwaway network
//!   namespaces, printing which backend answered each request;
//! - `bench`: kernel-level benchmarks (apply to a real kernel in a namespace), side by side
//!   with a kube-proxy-style layout, printed as Markdown for `docs/performance.md`;
//! - `bench-api`: the daemon against the test API server at scale: start to first sync,
//!   change-to-kernel latency, peak memory.

mod bench;
mod bench_api;
mod demo;

use std::process::{Command, ExitCode};

use anyhow::{Context, bail};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("demo") => demo::demo(),
        Some("bench") => bench::bench(&args[1..]),
        Some("bench-api") => bench_api::bench_api(&args[1..]),
        Some("deps") => install_deps(),
        _ => {
            eprintln!("usage: cargo xtask <test|demo|bench|bench-api|deps> [args]");
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
    run(cargo()
        .args(["test", "--workspace", "--all-targets"])
        .args(extra))?;
    run(cargo().args(["test", "--workspace", "--doc"]))?;
    Ok(())
}
