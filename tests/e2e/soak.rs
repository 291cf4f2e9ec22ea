//! The chaos soak (see `rudder_e2e::soak`), bounded for CI: 75 s of random service and
//! endpoint churn through the test API server with `kill -9` restarts, API server
//! disconnects, `410 Gone` re-lists and kernel tampering injected at random, while a steady
//! probe (TCP connections and long-running UDP flows to a service that never changes) must
//! see zero failures, and the kernel's tables must end up equal to a fresh compile of the
//! final objects.
//!
//! `RUDDER_SOAK_DURATION` (`90s`, `10m`) and `RUDDER_SOAK_SEED` override the length and the
//! seed; `cargo xtask soak` runs longer soaks.

use std::path::PathBuf;
use std::time::Duration;

use rudder_e2e::e2e_enabled;
use rudder_e2e::soak::{self, SoakConfig};

#[test]
fn chaos_soak_never_fails_a_probe_and_ends_with_the_compiled_tables() {
    if !e2e_enabled() {
        return;
    }
    let duration = std::env::var("RUDDER_SOAK_DURATION")
        .ok()
        .and_then(|d| soak::parse_duration(&d))
        .unwrap_or(Duration::from_secs(75));
    let seed = std::env::var("RUDDER_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(soak::random_seed);
    let cfg = SoakConfig::new(PathBuf::from(env!("CARGO_BIN_EXE_rudder")), duration, seed);
    match soak::run(&cfg) {
        Ok(report) => println!("{report}"),
        Err(failure) => panic!("{failure}"),
    }
}
