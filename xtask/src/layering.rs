//! `cargo xtask test`'s check of the crate graph: only `rudder-sources` may depend on kube-rs.
//!
//! The sources crate is where Kubernetes comes in (the client, the watchers, Events); every
//! other crate works on the model. A `kube` (or `kube-*`) dependency anywhere else is a layering
//! error. The fake API server may use kube-rs in its own tests, to prove real clients work
//! against it; nothing else may, even as a dev-dependency.

use std::process::Command;

use anyhow::{Context, bail};

/// The crate allowed to depend on kube-rs.
const SOURCES: &str = "rudder-sources";
/// Crates allowed a kube-rs dev-dependency (test harnesses checked against real clients).
const DEV_ALLOWED: &[&str] = &["rudder-fake-apiserver"];

/// The workspace's packages and their direct dependencies: `(package, dependency, kind)`,
/// where kind is `normal`, `dev` or `build`.
fn dependencies(metadata: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let packages = metadata["packages"].as_array().cloned().unwrap_or_default();
    for p in packages {
        let name = p["name"].as_str().unwrap_or_default().to_owned();
        for d in p["dependencies"].as_array().cloned().unwrap_or_default() {
            let dep = d["name"].as_str().unwrap_or_default().to_owned();
            let kind = d["kind"].as_str().unwrap_or("normal").to_owned();
            out.push((name.clone(), dep, kind));
        }
    }
    out
}

/// The dependencies on kube-rs that break the rule.
fn violations(deps: &[(String, String, String)]) -> Vec<String> {
    deps.iter()
        .filter(|(_, dep, _)| dep == "kube" || dep.starts_with("kube-"))
        .filter(|(pkg, _, kind)| {
            pkg != SOURCES && !(kind == "dev" && DEV_ALLOWED.contains(&pkg.as_str()))
        })
        .map(|(pkg, dep, kind)| format!("{pkg} depends on {dep} ({kind})"))
        .collect()
}

/// Fails when a crate other than `rudder-sources` depends on kube-rs.
pub fn check() -> anyhow::Result<()> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    let deps = dependencies(&metadata);
    if !deps.iter().any(|(p, _, _)| p == SOURCES) {
        bail!("layering check: no {SOURCES} package in the workspace");
    }
    let bad = violations(&deps);
    if !bad.is_empty() {
        bail!(
            "only {SOURCES} may depend on kube-rs (the sources are the only place that knows Kubernetes' client): {}",
            bad.join("; ")
        );
    }
    println!("layering: only {SOURCES} depends on kube-rs");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(p: &str, d: &str, k: &str) -> (String, String, String) {
        (p.into(), d.into(), k.into())
    }

    #[test]
    fn kube_outside_the_sources_is_refused() {
        let ok = [
            dep("rudder-sources", "kube", "normal"),
            dep("rudder-fake-apiserver", "kube", "dev"),
            dep("rudder-controller", "tokio", "normal"),
        ];
        assert!(violations(&ok).is_empty());
        let bad = [
            dep("rudder-controller", "kube", "normal"),
            dep("rudder", "kube-runtime", "normal"),
            dep("rudder-fake-apiserver", "kube", "normal"),
            dep("rudder-compiler", "kube-core", "dev"),
        ];
        assert_eq!(
            violations(&bad),
            [
                "rudder-controller depends on kube (normal)",
                "rudder depends on kube-runtime (normal)",
                "rudder-fake-apiserver depends on kube (normal)",
                "rudder-compiler depends on kube-core (dev)",
            ]
        );
    }

    #[test]
    fn the_workspace_keeps_kube_in_the_sources() {
        check().expect("layering");
    }
}
