//! Throwaway network namespaces.
//!
//! A [`Netns`] is a named namespace (`ip netns add`) that is deleted when the value is
//! dropped, so cleanup also happens when a test panics.

use std::fs::File;
use std::io;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{CloneFlags, setns};

/// Per-process counter that makes namespace names unique inside one process; the pid in the
/// name makes them unique across processes.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// How many names [`Netns::new`] tries before giving up when a name is already taken (for
/// instance a stale namespace left by a killed process that had the same pid).
const NAME_ATTEMPTS: u32 = 16;

/// A named network namespace created by this library and deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named `<prefix>-<pid>-<counter>` and brings its `lo` up.
    ///
    /// The name is unique across threads of this process and across processes. If the
    /// namespace cannot be set up completely it is deleted again before the error is returned.
    pub fn new(prefix: &str) -> io::Result<Netns> {
        let pid = std::process::id();
        let mut last_err = None;
        for _ in 0..NAME_ATTEMPTS {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!("{prefix}-{pid}-{n}");
            let out = Command::new("ip").args(["netns", "add", &name]).output()?;
            if out.status.success() {
                let ns = Netns { name };
                ns.exec(&["ip", "link", "set", "lo", "up"])?;
                return Ok(ns);
            }
            let err = command_error(&["ip", "netns", "add", &name], &out);
            if !String::from_utf8_lossy(&out.stderr).contains("exists") {
                return Err(err);
            }
            last_err = Some(err);
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("could not create a network namespace")))
    }

    /// The namespace's name as shown by `ip netns list`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Path of the namespace's bind mount (`/run/netns/<name>`).
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `ip netns exec <name> args...` and waits for it.
    ///
    /// Returns an error carrying the command line and its stderr when the command cannot be
    /// started or exits with a non-zero status.
    pub fn exec(&self, args: &[&str]) -> io::Result<Output> {
        let Some((program, rest)) = args.split_first() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "Netns::exec needs at least a program name",
            ));
        };
        let out = self.command(program).args(rest).output().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("ip netns exec {} {}: {e}", self.name, args.join(" ")),
            )
        })?;
        if out.status.success() {
            Ok(out)
        } else {
            let mut full = vec!["ip", "netns", "exec", &self.name];
            full.extend_from_slice(args);
            Err(command_error(&full, &out))
        }
    }

    /// Returns a [`Command`] prepared as `ip netns exec <name> <program>`, for spawning
    /// long-running processes (daemons) inside the namespace. Add arguments with
    /// [`Command::arg`]/[`Command::args`].
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Sets a (per-namespace) sysctl with `sysctl -qw key=value` inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        let kv = format!("{key}={value}");
        self.exec(&["sysctl", "-qw", &kv]).map(|_| ())
    }

    /// Runs `f` on a fresh thread that has joined this namespace (`setns(CLONE_NEWNET)`) and
    /// waits for it.
    ///
    /// Sockets created inside `f` belong to this namespace and keep belonging to it after `f`
    /// returns, so they can be handed back and used from any thread. Threads spawned from
    /// inside `f` start in this namespace too. A panic inside `f` is propagated to the caller.
    pub fn enter<F, R>(&self, f: F) -> io::Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let path = self.path();
        let file =
            File::open(&path).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
        std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name(format!("netns-{}", self.name))
                .spawn_scoped(scope, move || -> io::Result<R> {
                    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| {
                        io::Error::new(io::Error::from(e).kind(), format!("setns({path}): {e}"))
                    })?;
                    drop(file);
                    Ok(f())
                })?;
            match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Errors are ignored on purpose: there is nothing useful to do about them during drop.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Builds an error describing a failed command, including its exit status and stderr.
pub(crate) fn command_error(args: &[&str], out: &Output) -> io::Error {
    io::Error::other(format!(
        "`{}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// Runs `ip args...` in the caller's namespace and fails with stderr on a non-zero exit.
///
/// Only used with `-n <ns>` or `netns <ns>` arguments that target namespaces this library
/// created.
pub(crate) fn ip(args: &[&str]) -> io::Result<Output> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(out)
    } else {
        let mut full = vec!["ip"];
        full.extend_from_slice(args);
        Err(command_error(&full, &out))
    }
}
