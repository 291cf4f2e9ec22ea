//! One Rudder per table name and network namespace.
//!
//! The lock is an abstract Unix socket named `rudder-<table>`, bound by the daemon for as long
//! as it runs. Abstract socket names belong to a network namespace, the same scope as the
//! nftables tables they protect; the kernel releases the name when the process exits, however
//! it exits (`kill -9` included), so there is never a stale lock to remove. Whoever connects
//! learns the holder's PID from the kernel (`SO_PEERCRED`), and the daemon also answers with a
//! line naming itself (`pid=… metrics=…`).
//!
//! Abstract names have no permissions: any process in the namespace may bind one. A name held
//! by a process of another user is therefore not taken as a Rudder: the daemon starts anyway,
//! with a warning naming the squatter, so an unprivileged process cannot keep the node's proxy
//! from starting. Two Rudders run as the same user, and those are the ones the lock separates.

use std::io::{BufRead, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::Duration;

/// The process holding a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its PID, from the kernel (0 if unknown).
    pub pid: i32,
    /// Its user, from the kernel.
    pub uid: u32,
    /// What it says about itself (`pid=… metrics=…`), if it answered.
    pub says: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {}", self.pid)?;
        if let Some(metrics) = self
            .says
            .as_deref()
            .and_then(|s| {
                s.split_whitespace()
                    .find_map(|w| w.strip_prefix("metrics="))
            })
            .filter(|m| !m.is_empty())
        {
            write!(f, ", metrics at {metrics}")?;
        }
        Ok(())
    }
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error(
        "another Rudder ({holder}) already manages the `{table}` tables in this network namespace"
    )]
    Held { table: String, holder: Holder },
    /// The socket could not be created.
    #[error("cannot take the lock @{name}: {source}")]
    Io {
        name: String,
        source: std::io::Error,
    },
}

/// A held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct Lock {
    _listener: Option<UnixListener>,
    squatter: Option<Holder>,
}

impl Lock {
    /// The process of another user that holds the name, when the lock could not be taken
    /// because of it (and was ignored).
    pub fn squatter(&self) -> Option<&Holder> {
        self.squatter.as_ref()
    }
}

fn name(table: &str) -> String {
    format!("rudder-{table}")
}

fn address(name: &str) -> std::io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(name.as_bytes())
}

/// Takes the lock of `table` in this network namespace. With `answer`, a thread answers every
/// connection with that line (the daemon names itself) and the lock is held until the process
/// exits; without, connections only learn the PID and dropping the lock releases it.
pub fn acquire(table: &str, answer: Option<String>) -> Result<Lock, LockError> {
    let name = name(table);
    let io = |source| LockError::Io {
        name: name.clone(),
        source,
    };
    let listener = match UnixListener::bind_addr(&address(&name).map_err(io)?) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let me = nix::unistd::geteuid().as_raw();
            let holder = holder(table).unwrap_or(Holder {
                pid: 0,
                uid: me,
                says: None,
            });
            if holder.uid != me {
                return Ok(Lock {
                    _listener: None,
                    squatter: Some(holder),
                });
            }
            return Err(LockError::Held {
                table: table.to_owned(),
                holder,
            });
        }
        Err(e) => return Err(io(e)),
    };
    if let Some(line) = answer {
        let answering = listener.try_clone().map_err(io)?;
        std::thread::Builder::new()
            .name("rudder-lock".into())
            .spawn(move || {
                for mut c in answering.incoming().flatten() {
                    let _ = c.set_write_timeout(Some(Duration::from_secs(1)));
                    let _ = writeln!(c, "{line}");
                }
            })
            .map_err(io)?;
    }
    Ok(Lock {
        _listener: Some(listener),
        squatter: None,
    })
}

/// Who holds the lock of `table` in this network namespace, if anyone.
pub fn holder(table: &str) -> Option<Holder> {
    let stream = UnixStream::connect_addr(&address(&name(table)).ok()?).ok()?;
    let (pid, uid) =
        nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
            .map(|c| (c.pid(), c.uid()))
            .unwrap_or((0, u32::MAX));
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut line = String::new();
    let says = match std::io::BufReader::new(&stream).read_line(&mut line) {
        Ok(n) if n > 0 => Some(line.trim().to_owned()),
        _ => None,
    };
    Some(Holder { pid, uid, says })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_told_who_holds_it() {
        // Table names of this test's own: the test shares the network namespace it runs in.
        let table = format!("lock-test-{}", std::process::id());
        let me = i32::try_from(std::process::id()).unwrap();
        assert_eq!(holder(&table), None);
        let lock = acquire(&table, None).unwrap();
        let h = holder(&table).unwrap();
        assert_eq!((h.pid, h.says), (me, None), "the kernel names the holder");
        match acquire(&table, None) {
            Err(LockError::Held { holder, .. }) => assert_eq!(holder.pid, me),
            other => panic!("{other:?}"),
        }
        drop(lock);
        // Released when dropped: someone else may take it.
        let again = acquire(&table, None).unwrap();
        drop(again);
        // A daemon answers with a line about itself; other tables are independent.
        let daemon = format!("{table}-daemon");
        let _held = acquire(&daemon, Some("pid=1 metrics=127.0.0.1:1".into())).unwrap();
        let h = holder(&daemon).unwrap();
        assert_eq!(h.to_string(), format!("pid {me}, metrics at 127.0.0.1:1"));
        assert!(acquire(&table, None).is_ok());
    }

    #[test]
    fn a_name_squatted_by_another_user_does_not_stop_rudder() {
        use std::os::unix::process::CommandExt;
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let table = format!("lock-squat-{}", std::process::id());
        // User nobody binds the name first.
        let script = format!(
            "import socket, time\ns = socket.socket(socket.AF_UNIX)\ns.bind('\\0rudder-{table}')\ns.listen()\ntime.sleep(30)\n"
        );
        let mut child = std::process::Command::new("python3")
            .args(["-c", &script])
            .uid(65534)
            .gid(65534)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while holder(&table).is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the squatter never bound"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let lock = acquire(&table, None).unwrap();
        let squatter = lock.squatter().unwrap();
        assert_eq!(squatter.uid, 65534);
        assert_eq!(u32::try_from(squatter.pid).unwrap(), child.id());
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
