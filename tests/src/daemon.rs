//! Running the real `rudder` binary inside a namespace, and temporary directories.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::netns::Netns;

/// A directory under the system temp dir, removed on drop (a [`tempfile::TempDir`]).
#[derive(Debug)]
pub struct TempDir {
    dir: tempfile::TempDir,
}

impl TempDir {
    /// Creates `rudder-<prefix>-<random>`, mode 0755 like a directory made with the default
    /// umask (tempfile's default is 0700), so that whatever runs the daemon can read it.
    pub fn new(prefix: &str) -> io::Result<TempDir> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix(&format!("rudder-{prefix}-"))
            .permissions(fs::Permissions::from_mode(0o755))
            .tempdir()?;
        Ok(TempDir { dir })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file atomically (write to a temporary name, then rename), as editors and
    /// config management tools do.
    pub fn write(&self, name: &str, content: &str) -> io::Result<PathBuf> {
        let target = self.path().join(name);
        let tmp = self.path().join(format!(".{name}.tmp"));
        fs::write(&tmp, content)?;
        fs::rename(&tmp, &target)?;
        Ok(target)
    }
}

/// A `rudder` process running in a namespace. Its stderr goes to a log file; it is killed
/// on drop if still running.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
    _dir: TempDir,
}

impl Daemon {
    /// Starts `binary args...` inside `ns`.
    pub fn start(binary: &Path, ns: &Netns, args: &[&str]) -> io::Result<Daemon> {
        let dir = TempDir::new("daemon")?;
        let log = dir.path().join("rudder.log");
        let file = fs::File::create(&log)?;
        let child = ns
            .command(&binary.display().to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()?;
        Ok(Daemon {
            child: Some(child),
            log,
            _dir: dir,
        })
    }

    /// The daemon's process id, while it runs (`ip netns exec` execs the program, so this is
    /// rudder's own pid).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Number of log lines containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits until at least `n` log lines contain `needle`. Fails with the log on timeout or
    /// if the daemon exits.
    pub fn wait_for(&mut self, needle: &str, n: usize, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.count(needle) >= n {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                return Err(io::Error::other(format!(
                    "rudder exited ({status}) before {needle:?}:\n{}",
                    self.log()
                )));
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "timed out waiting for {n}× {needle:?}; log:\n{}",
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the daemon has exited (and how), without waiting; `None` while it runs. A
    /// daemon stopped by [`Daemon::kill`] or [`Daemon::terminate`] reports nothing.
    pub fn exited(&mut self) -> io::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child.try_wait(),
            None => Ok(None),
        }
    }

    /// `kill -9`: sends SIGKILL to the daemon's own pid and reaps it. Its rules stay in the
    /// kernel, as after a crash. Does nothing when it is not running.
    pub fn kill(&mut self) -> io::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_none() {
            let pid = i32::try_from(child.id()).map_err(io::Error::other)?;
            // `ip netns exec` execs the program, so the pid is rudder's own.
            kill(Pid::from_raw(pid), Signal::SIGKILL).map_err(io::Error::other)?;
        }
        child.wait()?;
        Ok(())
    }

    /// Sends SIGTERM and waits for the exit; returns whether it exited successfully within
    /// `timeout` (it is killed otherwise).
    pub fn terminate(&mut self, timeout: Duration) -> io::Result<bool> {
        let Some(mut child) = self.child.take() else {
            return Ok(false);
        };
        let pid = i32::try_from(child.id()).map_err(io::Error::other)?;
        // `ip netns exec` execs the program, so the pid is rudder's own.
        kill(Pid::from_raw(pid), Signal::SIGTERM).map_err(io::Error::other)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.success());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
