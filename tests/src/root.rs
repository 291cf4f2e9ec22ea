//! Root-privilege gate for end-to-end tests.
//!
//! Creating network namespaces, veth pairs and nftables rules needs root. Tests call
//! [`e2e_enabled`] first and return early when it says `false`.

/// Environment variable that, when set to `1`, makes [`e2e_enabled`] return `false` so the
/// end-to-end tests skip themselves instead of failing.
pub const SKIP_ENV: &str = "RUDDER_E2E_SKIP";

/// Returns whether the current process runs with an effective uid of 0.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Panics with a clear message unless the process runs as root (effective uid 0).
pub fn require_root() {
    assert!(
        is_root(),
        "rudder end-to-end tests need root (they create network namespaces, veth pairs and \
         nftables rules); run them as root or set {SKIP_ENV}=1 to skip them"
    );
}

/// Decides whether end-to-end tests should run.
///
/// Returns `false` when the environment variable [`SKIP_ENV`] is set to `1` (tests should then
/// return early). Otherwise requires root via [`require_root`], panicking if the process is
/// not root, and returns `true`.
pub fn e2e_enabled() -> bool {
    if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        return false;
    }
    require_root();
    true
}
