//! `cargo xtask dist`: one static binary, `target/dist/rudder`, that needs nothing on the
//! node; and the check that proves it (`cargo xtask test` runs it): the binary runs in an
//! empty `chroot` (no libc, no `/etc`, no `nft`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::run;

/// Builds `target/dist/rudder`: release, glibc linked statically, symbols stripped (the same
/// build the VM tests use, `rudder_e2e::vm::static_build_command`).
pub fn dist() -> anyhow::Result<PathBuf> {
    let root = crate::demo::workspace_root();
    let mut cmd = rudder_e2e::vm::static_build_command();
    run(&mut cmd)?;
    let built = rudder_e2e::vm::static_rudder_path();
    let dir = root.join("target/dist");
    std::fs::create_dir_all(&dir).context("creating target/dist")?;
    let out = dir.join("rudder");
    std::fs::copy(&built, &out)
        .with_context(|| format!("copying {} to {}", built.display(), out.display()))?;
    let size = std::fs::metadata(&out)?.len();
    eprintln!(
        "xtask: {} ({:.1} MiB, static)",
        out.display(),
        size as f64 / (1024.0 * 1024.0)
    );
    Ok(out)
}

/// Runs `binary` with `args` inside an empty root holding only the binary (`/rudder`) and
/// `files` (under `/m`).
fn in_empty_root(
    binary: &Path,
    files: &[(&str, &Path)],
    args: &[&str],
) -> anyhow::Result<std::process::Output> {
    let root = rudder_e2e::TempDir::new("dist-chroot").context("temporary root")?;
    std::fs::copy(binary, root.path().join("rudder")).context("copying the binary")?;
    std::fs::create_dir_all(root.path().join("m")).context("creating /m")?;
    for (name, from) in files {
        std::fs::copy(from, root.path().join("m").join(name))
            .with_context(|| format!("copying {name}"))?;
    }
    // Found on this PATH: the child's environment is empty.
    let chroot = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("chroot"))
        .find(|p| p.is_file())
        .context("no chroot program")?;
    Command::new(chroot)
        .arg(root.path())
        .arg("/rudder")
        .args(args)
        .env_clear()
        .output()
        .context("chroot")
}

/// `cargo xtask dist --check`: builds the binary, then proves it is static and runs alone.
pub fn check() -> anyhow::Result<()> {
    let bin = dist()?;
    let file = Command::new("ldd").arg(&bin).output().context("ldd")?;
    let ldd =
        String::from_utf8_lossy(&file.stdout).to_string() + &String::from_utf8_lossy(&file.stderr);
    if !ldd.contains("not a dynamic executable") && !ldd.contains("statically linked") {
        bail!("{} is dynamically linked:\n{ldd}", bin.display());
    }
    let version = in_empty_root(&bin, &[], &["--version"])?;
    let text = String::from_utf8_lossy(&version.stdout);
    if !version.status.success() || !text.starts_with("rudder ") {
        bail!(
            "rudder --version in an empty root: {} {text} {}",
            version.status,
            String::from_utf8_lossy(&version.stderr)
        );
    }
    let example = crate::demo::workspace_root().join("examples/nginx");
    let compiled = in_empty_root(
        &bin,
        &[
            ("nginx.yaml", &example.join("nginx.yaml")),
            ("node.yaml", &example.join("node.yaml")),
        ],
        &[
            "compile",
            "--manifests",
            "/m",
            "--hostname-override",
            "node-1",
        ],
    )?;
    let out = String::from_utf8_lossy(&compiled.stdout);
    if !compiled.status.success() || !out.contains("10.96.100.100") {
        bail!(
            "rudder compile in an empty root: {}\n{}",
            compiled.status,
            String::from_utf8_lossy(&compiled.stderr)
        );
    }
    eprintln!(
        "xtask: the static binary runs in an empty root: {} and compile ({} lines)",
        text.trim(),
        out.lines().count()
    );
    Ok(())
}
