//! `cargo xtask soak [--duration 10m] [--seed N] [--full-sync-period 5s] [--release] [--verbose]`: the chaos soak
//! (`rudder_e2e::soak`) for as long as wanted. Random service and endpoint churn through the
//! test API server, `kill -9` restarts, API server disconnects, `410 Gone` re-lists and
//! kernel tampering, while a steady probe must see zero failures; at the end the kernel's
//! tables must equal a fresh compile of the final objects. Prints the report (the figures in
//! docs/reliability.md) and fails when the soak does.

use std::time::Duration;

use anyhow::{Context, bail};
use rudder_e2e::soak::{self, SoakConfig};

use crate::demo::build_rudder;
use crate::install_deps;

pub fn soak(args: &[String]) -> anyhow::Result<()> {
    if !rudder_e2e::root::is_root() {
        bail!("the soak programs nftables in network namespaces and must run as root");
    }
    let mut duration = Duration::from_secs(600);
    let mut seed = None;
    let mut release = false;
    let mut verbose = false;
    let mut full_sync_period = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--duration" => {
                let v = it
                    .next()
                    .context("--duration needs a value (90s, 10m, 1h)")?;
                duration = soak::parse_duration(v)
                    .with_context(|| format!("--duration {v}: use 90s, 10m or 1h"))?;
            }
            "--seed" => {
                let v = it.next().context("--seed needs a number")?;
                seed = Some(v.parse::<u64>().with_context(|| format!("--seed {v}"))?);
            }
            "--full-sync-period" => {
                let v = it.next().context("--full-sync-period needs a value (5s)")?;
                full_sync_period = Some(
                    soak::parse_duration(v).with_context(|| format!("--full-sync-period {v}"))?,
                );
            }
            "--release" => release = true,
            "--verbose" => verbose = true,
            other => bail!(
                "unknown argument {other:?}; usage: cargo xtask soak [--duration 10m] [--seed N] [--full-sync-period 5s] [--release] [--verbose]"
            ),
        }
    }
    install_deps()?;
    let rudder = build_rudder(release)?;
    let mut cfg = SoakConfig::new(rudder, duration, seed.unwrap_or_else(soak::random_seed));
    cfg.verbose = verbose;
    if let Some(p) = full_sync_period {
        cfg.full_sync_period = p;
    }
    match soak::run(&cfg) {
        Ok(report) => {
            println!("{report}");
            Ok(())
        }
        Err(failure) => {
            println!("{failure}");
            bail!("the soak failed (seed {})", failure.report.seed)
        }
    }
}
