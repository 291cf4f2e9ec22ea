//! nftables helpers that only ever act inside a namespace created by this library.

use std::io::{self, Write};
use std::process::Stdio;

use crate::netns::{Netns, command_error};

/// Returns `nft list ruleset` as run inside `ns`.
pub fn list_ruleset(ns: &Netns) -> io::Result<String> {
    let out = ns.exec(&["nft", "list", "ruleset"])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Loads an nftables script (the `nft -f` format) inside `ns`, atomically.
pub fn load(ns: &Netns, script: &str) -> io::Result<()> {
    let mut child = ns
        .command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("nft stdin was not captured"))?;
    let written = stdin.write_all(script.as_bytes());
    drop(stdin);
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(command_error(
            &["ip", "netns", "exec", ns.name(), "nft", "-f", "-"],
            &out,
        ));
    }
    written
}

/// Removes every table in `ns` (`nft flush ruleset` inside the namespace).
pub fn flush_ruleset(ns: &Netns) -> io::Result<()> {
    ns.exec(&["nft", "flush", "ruleset"]).map(|_| ())
}
