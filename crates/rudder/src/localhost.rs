//! The localhost node port proxy (KEP-6032): userspace TCP listeners on `127.0.0.1:<nodePort>`
//! and `[::1]:<nodePort>`, because the kernel cannot DNAT loopback traffic to a pod without
//! `route_localnet`, which Rudder never sets (CVE-2020-8558).
//!
//! What should run comes from the sync loop after every successful sync
//! ([`rudder_controller::localhost::LocalhostNodePorts`]): a listener per family and TCP node
//! port that has endpoints, with those endpoints. Listeners start, change their endpoints and
//! stop as syncs publish new tables; a node port without endpoints has no listener, so a
//! connection to it is refused at once by the kernel (TCP reset).
//!
//! Each accepted connection picks an endpoint (at random, or the pinned one under ClientIP
//! affinity), connects to it within [`DIAL_TIMEOUT`] and then moves bytes in both directions
//! with `splice(2)` through a pipe per direction: the data never enters Rudder's memory, and
//! a connection holds at most one pipe's capacity (64 KiB) per direction in the kernel. Half
//! closes are passed on; a reset or error on one side resets the other. A connection keeps its
//! endpoint when the endpoints change (as a DNATed connection keeps its conntrack entry); when
//! the listener stops (its service or node port went away, or it has no endpoints left) its
//! connections are closed, as kube-proxy's `Shutdown` does. At most [`max_connections`]
//! connections are proxied at once; beyond that new ones are reset.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::fcntl::{OFlag, SpliceFFlags, splice};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use rudder_controller::localhost::{LocalhostNodePorts, Target};
use rudder_model::IpFamily;
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// How long a connection to an endpoint may take (kube-proxy's `dialTimeout`).
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// How often listeners that could not be created (the port is taken by another process) are
/// tried again while nothing else changes.
const RETRY: Duration = Duration::from_secs(5);

/// Bytes moved per `splice` call: one pipe's default capacity.
const CHUNK: usize = 64 * 1024;

/// File descriptors one proxied connection holds: two sockets and two pipes.
const FDS_PER_CONNECTION: u64 = 6;

/// Most connections proxied at once, whatever the descriptor limit allows.
const MAX_CONNECTIONS: u64 = 4096;

/// The loopback address a family's listeners bind.
pub fn loopback(family: IpFamily) -> IpAddr {
    match family {
        IpFamily::V4 => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpFamily::V6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

/// Connections proxied at once: [`MAX_CONNECTIONS`], or fewer if the soft descriptor limit
/// `nofile` leaves no room for them (a quarter of it is kept for everything else).
pub fn max_connections(nofile: u64) -> usize {
    let room = nofile.saturating_sub(nofile / 4) / FDS_PER_CONNECTION;
    usize::try_from(room.clamp(1, MAX_CONNECTIONS)).unwrap_or(1)
}

fn family_label(f: IpFamily) -> &'static str {
    match f {
        IpFamily::V4 => "IPv4",
        IpFamily::V6 => "IPv6",
    }
}

/// The proxy's metrics: kube-proxy 1.37's names, the alias, and Rudder's own.
#[derive(Clone)]
pub struct LocalhostMetrics {
    listeners: IntGaugeVec,
    listeners_alias: IntGaugeVec,
    failures: IntCounterVec,
    connections: IntCounterVec,
    active: IntGaugeVec,
}

impl LocalhostMetrics {
    /// Registers the metrics in `registry`, with series for `families` at zero.
    pub fn register(registry: &Registry, families: &[IpFamily]) -> prometheus::Result<Self> {
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), &["ip_family"])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let m = LocalhostMetrics {
            listeners: gauge(
                "kubeproxy_nftables_localhost_nodeport_listeners",
                "Number of localhost NodePort listeners",
            )?,
            listeners_alias: gauge(
                "kubeproxy_localhost_nodeport_listeners",
                "Number of localhost NodePort listeners (same as kubeproxy_nftables_localhost_nodeport_listeners)",
            )?,
            failures: counter(
                "kubeproxy_nftables_localhost_nodeport_listener_creation_failures_total",
                "Number of failures to create a localhost NodePort listener",
                &["ip_family"],
            )?,
            connections: counter(
                "rudder_localhost_nodeport_connections_total",
                "Connections accepted by the localhost NodePort proxy, by outcome: proxied (connected to an endpoint), dial_failed (the endpoint did not answer), over_limit (too many at once), error (proxied, then ended by a reset or error)",
                &["ip_family", "outcome"],
            )?,
            active: gauge(
                "rudder_localhost_nodeport_active_connections",
                "Connections the localhost NodePort proxy is relaying now",
            )?,
        };
        for f in families {
            let l = family_label(*f);
            m.listeners.with_label_values(&[l]).set(0);
            m.listeners_alias.with_label_values(&[l]).set(0);
            m.failures.with_label_values(&[l]);
            m.active.with_label_values(&[l]).set(0);
            for o in ["proxied", "dial_failed", "over_limit", "error"] {
                m.connections.with_label_values(&[l, o]);
            }
        }
        Ok(m)
    }

    fn set_listeners(&self, family: IpFamily, n: usize) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let l = family_label(family);
        self.listeners.with_label_values(&[l]).set(n);
        self.listeners_alias.with_label_values(&[l]).set(n);
    }

    fn connection(&self, family: IpFamily, outcome: &str) {
        self.connections
            .with_label_values(&[family_label(family), outcome])
            .inc();
    }
}

/// Endpoint choice of one listener: its current target and, under ClientIP affinity, the
/// pinned endpoint and when it was last used.
#[derive(Debug)]
struct Picker {
    target: Target,
    pinned: Option<(SocketAddr, Instant)>,
    seed: u64,
}

impl Picker {
    fn new(target: Target) -> Picker {
        use std::hash::{BuildHasher, Hasher};
        // A random seed per listener (RandomState is seeded from the OS).
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u16(target.endpoints.len() as u16);
        Picker {
            target,
            pinned: None,
            seed: h.finish() | 1,
        }
    }

    /// A pseudo-random number (xorshift64*).
    fn next(&mut self) -> u64 {
        self.seed ^= self.seed >> 12;
        self.seed ^= self.seed << 25;
        self.seed ^= self.seed >> 27;
        self.seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// The endpoint for a new connection at `now`: the pinned one while the affinity window
    /// (renewed by every connection, like kube-proxy's) has not run out and it is still an
    /// endpoint, else one at random.
    fn pick(&mut self, now: Instant) -> Option<SocketAddr> {
        if let (Some(timeout), Some((ep, last))) = (self.target.affinity, self.pinned)
            && now.saturating_duration_since(last) <= timeout
            && self.target.endpoints.contains(&ep)
        {
            self.pinned = Some((ep, now));
            return Some(ep);
        }
        let n = self.target.endpoints.len();
        if n == 0 {
            return None;
        }
        let i = usize::try_from(self.next() % n as u64).unwrap_or(0);
        let ep = *self.target.endpoints.get(i)?;
        if self.target.affinity.is_some() {
            self.pinned = Some((ep, now));
        }
        Some(ep)
    }

    /// New endpoints (and affinity) for later connections; a changed affinity drops the pin.
    fn update(&mut self, target: &Target) {
        if self.target.affinity != target.affinity {
            self.pinned = None;
        }
        self.target = target.clone();
    }
}

/// A running listener. Dropping it stops accepting and closes its connections.
struct Listener {
    picker: Arc<Mutex<Picker>>,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` with `SO_REUSEADDR`, so a restarted Rudder gets its ports back while old
/// connections linger in TIME_WAIT.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Everything the listeners share.
#[derive(Clone)]
struct Shared {
    metrics: LocalhostMetrics,
    limit: Arc<Semaphore>,
}

/// Runs until `updates` closes: keeps one listener per family and TCP node port with
/// endpoints, each following its endpoints.
pub async fn run(
    mut updates: watch::Receiver<LocalhostNodePorts>,
    metrics: LocalhostMetrics,
    max_connections: usize,
) {
    let shared = Shared {
        metrics,
        limit: Arc::new(Semaphore::new(max_connections)),
    };
    let mut listeners: BTreeMap<(IpFamily, u16), Listener> = BTreeMap::new();
    let mut failed: BTreeMap<(IpFamily, u16), String> = BTreeMap::new();
    loop {
        let desired = updates.borrow_and_update().clone();
        reconcile(&mut listeners, &mut failed, &desired, &shared);
        tokio::select! {
            changed = updates.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(RETRY), if !failed.is_empty() => {}
        }
    }
}

fn reconcile(
    listeners: &mut BTreeMap<(IpFamily, u16), Listener>,
    failed: &mut BTreeMap<(IpFamily, u16), String>,
    desired: &LocalhostNodePorts,
    shared: &Shared,
) {
    listeners.retain(|(family, port), _| {
        let keep = desired.listeners.contains_key(&(*family, *port));
        if !keep {
            info!(%family, port, "stopping localhost node port listener");
        }
        keep
    });
    failed.retain(|k, _| desired.listeners.contains_key(k));
    for (&(family, port), target) in &desired.listeners {
        if let Some(l) = listeners.get(&(family, port)) {
            if let Ok(mut p) = l.picker.lock() {
                if p.target != *target {
                    debug!(%family, port, endpoints = target.endpoints.len(), "localhost node port endpoints changed");
                    p.update(target);
                }
            }
            continue;
        }
        let addr = SocketAddr::new(loopback(family), port);
        match bind(addr) {
            Ok(listener) => {
                info!(%addr, service = %target.service, endpoints = target.endpoints.len(), "serving localhost node port");
                failed.remove(&(family, port));
                let picker = Arc::new(Mutex::new(Picker::new(target.clone())));
                let task = tokio::spawn(accept_loop(
                    listener,
                    family,
                    picker.clone(),
                    shared.clone(),
                ));
                listeners.insert((family, port), Listener { picker, task });
            }
            Err(e) => {
                let message = e.to_string();
                // Logged and counted once per failure, not at every retry.
                if failed.get(&(family, port)) != Some(&message) {
                    warn!(%addr, service = %target.service, "cannot listen for localhost node port connections: {e}");
                    shared
                        .metrics
                        .failures
                        .with_label_values(&[family_label(family)])
                        .inc();
                }
                failed.insert((family, port), message);
            }
        }
    }
    for family in &desired.families {
        let n = listeners.keys().filter(|(f, _)| f == family).count();
        shared.metrics.set_listeners(*family, n);
    }
}

async fn accept_loop(
    listener: TcpListener,
    family: IpFamily,
    picker: Arc<Mutex<Picker>>,
    shared: Shared,
) {
    // Dropping the set (when this task is aborted) aborts every connection task.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    let Ok(permit) = shared.limit.clone().try_acquire_owned() else {
                        shared.metrics.connection(family, "over_limit");
                        reset(&client);
                        continue;
                    };
                    let endpoint = picker.lock().ok().and_then(|mut p| p.pick(Instant::now()));
                    connections.spawn(connection(client, endpoint, family, shared.clone(), permit));
                }
                Err(e) => {
                    // Out of descriptors or memory: wait instead of spinning.
                    debug!(%family, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Resets the connection when it is dropped (`SO_LINGER` 0).
fn reset(s: &TcpStream) {
    let _ = s.set_zero_linger();
}

async fn connection(
    client: TcpStream,
    endpoint: Option<SocketAddr>,
    family: IpFamily,
    shared: Shared,
    _permit: OwnedSemaphorePermit,
) {
    let Some(endpoint) = endpoint else {
        reset(&client);
        return;
    };
    let backend = match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(endpoint)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            debug!(%endpoint, "localhost node port: cannot connect to the endpoint: {e}");
            shared.metrics.connection(family, "dial_failed");
            reset(&client);
            return;
        }
        Err(_) => {
            debug!(%endpoint, "localhost node port: the endpoint did not answer in time");
            shared.metrics.connection(family, "dial_failed");
            reset(&client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = backend.set_nodelay(true);
    shared.metrics.connection(family, "proxied");
    let active = shared
        .metrics
        .active
        .with_label_values(&[family_label(family)]);
    active.inc();
    if let Err(e) = relay(&client, &backend).await {
        debug!(%endpoint, "localhost node port connection ended: {e}");
        shared.metrics.connection(family, "error");
        // Pass the failure on: both sides see a reset rather than a clean end.
        reset(&client);
        reset(&backend);
    }
    active.dec();
}

/// Moves bytes both ways until both directions have ended (a half close ends one), or one
/// of them fails, which ends the other at once.
pub async fn relay(a: &TcpStream, b: &TcpStream) -> io::Result<()> {
    tokio::try_join!(pump(a, b), pump(b, a)).map(|_| ())
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?)
}

/// Moves bytes from `src` to `dst` through a pipe with `splice`, until `src` ends; then
/// ends `dst`'s sending side. Returns the bytes moved.
async fn pump(src: &TcpStream, dst: &TcpStream) -> io::Result<u64> {
    let (pipe_r, pipe_w) = pipe()?;
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut total = 0u64;
    loop {
        // The pipe is empty here, so EAGAIN means the socket has nothing to read.
        let n = loop {
            src.readable().await?;
            match src.try_io(Interest::READABLE, || {
                splice(src.as_fd(), None, pipe_w.as_fd(), None, CHUNK, flags)
                    .map_err(io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            nix::sys::socket::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(dst),
                nix::sys::socket::Shutdown::Write,
            )
            .or_else(|e| {
                if e == nix::errno::Errno::ENOTCONN {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
            return Ok(total);
        }
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || {
                splice(pipe_r.as_fd(), None, dst.as_fd(), None, left, flags)
                    .map_err(io::Error::from)
            }) {
                Ok(m) => {
                    left = left.saturating_sub(m);
                    total += m as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rudder_model::{Protocol, ServiceKey, ServicePortName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn target(eps: &[&str], affinity: Option<u64>) -> Target {
        Target {
            service: ServicePortName {
                service: ServiceKey::new("ns", "s"),
                port: "p".into(),
                protocol: Protocol::Tcp,
            },
            endpoints: eps.iter().map(|e| e.parse().unwrap()).collect(),
            affinity: affinity.map(Duration::from_secs),
        }
    }

    #[test]
    fn endpoints_are_picked_at_random_or_pinned_under_affinity() {
        let now = Instant::now();
        let mut p = Picker::new(target(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"], None));
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            seen.insert(p.pick(now).unwrap());
        }
        assert_eq!(seen.len(), 3, "every endpoint is used");

        let mut p = Picker::new(target(
            &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"],
            Some(10),
        ));
        let first = p.pick(now).unwrap();
        // Within the window (renewed by each connection) the pin holds.
        for i in 1..30 {
            assert_eq!(p.pick(now + Duration::from_secs(i * 5)).unwrap(), first);
        }
        // The pinned endpoint goes away: another one is picked and pinned.
        let others: Vec<&str> = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
            .into_iter()
            .filter(|e| e.parse::<SocketAddr>().unwrap() != first)
            .collect();
        p.update(&target(&others, Some(10)));
        let second = p.pick(now + Duration::from_secs(150)).unwrap();
        assert_ne!(second, first);
        assert_eq!(p.pick(now + Duration::from_secs(155)).unwrap(), second);
        // No endpoints: nothing.
        p.update(&target(&[], Some(10)));
        assert_eq!(p.pick(now + Duration::from_secs(200)), None);
    }

    #[tokio::test]
    async fn a_reset_on_one_side_ends_the_relay_at_once() {
        // client <-> relay <-> server, and the server keeps its side open and idle: a reset
        // from the client must end both directions, not wait for the server.
        let (client, c2) = pair().await;
        let (b1, _server) = pair().await;
        let relay = tokio::spawn(async move { relay(&c2, &b1).await });
        client.set_zero_linger().unwrap();
        drop(client);
        let r = tokio::time::timeout(Duration::from_secs(2), relay)
            .await
            .expect("the relay ends")
            .unwrap();
        assert!(r.is_err(), "a reset is an error: {r:?}");
    }

    #[test]
    fn the_connection_limit_follows_the_descriptor_limit() {
        assert_eq!(max_connections(1024), 128);
        assert_eq!(max_connections(1 << 20), 4096);
        assert_eq!(max_connections(0), 1);
    }

    /// A backend on an ephemeral loopback port: each connection gets `"hi\n"`, then its
    /// bytes are echoed until it ends its side, and then the backend closes.
    async fn backend() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let _ = s.write_all(b"hi\n").await;
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    /// The greeting read through a connection to `to`, or the error that ended it.
    async fn greeting(s: &mut TcpStream) -> io::Result<String> {
        let mut buf = [0u8; 3];
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    fn connections(m: &LocalhostMetrics, outcome: &str) -> u64 {
        m.connections.with_label_values(&["IPv4", outcome]).get()
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_reset_at_once_across_all_listeners() {
        let metrics = LocalhostMetrics::register(&Registry::new(), &[IpFamily::V4]).unwrap();
        let shared = Shared {
            metrics: metrics.clone(),
            limit: Arc::new(Semaphore::new(2)),
        };
        let be = backend().await.to_string();
        // Two listeners (two node ports) share the one limit.
        let mut ports = Vec::new();
        for _ in 0..2 {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            ports.push(l.local_addr().unwrap());
            let picker = Arc::new(Mutex::new(Picker::new(target(&[&be], None))));
            tokio::spawn(accept_loop(l, IpFamily::V4, picker, shared.clone()));
        }
        let mut a1 = TcpStream::connect(ports[0]).await.unwrap();
        assert_eq!(greeting(&mut a1).await.unwrap(), "hi\n");
        let mut b1 = TcpStream::connect(ports[1]).await.unwrap();
        assert_eq!(greeting(&mut b1).await.unwrap(), "hi\n");
        assert_eq!(connections(&metrics, "proxied"), 2);
        // At the limit (two connections, one per listener): the next connection on either
        // listener is accepted by the kernel and reset at once, not queued until a slot
        // frees up.
        for port in &ports {
            let t0 = std::time::Instant::now();
            let mut c = TcpStream::connect(*port)
                .await
                .expect("the handshake completes");
            let e = greeting(&mut c).await.expect_err("reset");
            assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
            assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        }
        assert_eq!(connections(&metrics, "over_limit"), 2);
        assert_eq!(connections(&metrics, "proxied"), 2);
        // The proxied connections are untouched.
        b1.write_all(b"ok\n").await.unwrap();
        assert_eq!(greeting(&mut b1).await.unwrap(), "ok\n");
        // One ends: its slot is free again and the next connection is proxied.
        drop(a1);
        let t0 = std::time::Instant::now();
        while shared.limit.available_permits() == 0 {
            assert!(t0.elapsed() < Duration::from_secs(2), "the slot is freed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut a2 = TcpStream::connect(ports[0]).await.unwrap();
        assert_eq!(greeting(&mut a2).await.unwrap(), "hi\n");
        assert_eq!(connections(&metrics, "proxied"), 3);
        assert_eq!(connections(&metrics, "over_limit"), 2);
    }

    #[tokio::test]
    async fn a_port_taken_by_another_process_is_counted_once_and_retried_while_the_others_serve() {
        let metrics = LocalhostMetrics::register(&Registry::new(), &[IpFamily::V4]).unwrap();
        let shared = Shared {
            metrics: metrics.clone(),
            limit: Arc::new(Semaphore::new(16)),
        };
        let be = backend().await.to_string();
        // Another process holds one port; the other is free.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = taken.local_addr().unwrap().port();
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = free.local_addr().unwrap().port();
        drop(free);
        let desired = LocalhostNodePorts {
            listeners: [
                ((IpFamily::V4, busy), target(&[&be], None)),
                ((IpFamily::V4, open), target(&[&be], None)),
            ]
            .into_iter()
            .collect(),
            families: vec![IpFamily::V4],
        };
        let failures = || metrics.failures.with_label_values(&["IPv4"]).get();
        let gauge = || metrics.listeners.with_label_values(&["IPv4"]).get();
        let mut listeners = BTreeMap::new();
        let mut failed = BTreeMap::new();
        reconcile(&mut listeners, &mut failed, &desired, &shared);
        assert_eq!(
            listeners.keys().collect::<Vec<_>>(),
            [&(IpFamily::V4, open)]
        );
        assert!(failed.contains_key(&(IpFamily::V4, busy)), "{failed:?}");
        assert_eq!((failures(), gauge()), (1, 1));
        let mut c = TcpStream::connect(("127.0.0.1", open)).await.unwrap();
        assert_eq!(
            greeting(&mut c).await.unwrap(),
            "hi\n",
            "the other listener serves"
        );
        // Retries (every RETRY while something failed) count and log the same failure once.
        for _ in 0..3 {
            reconcile(&mut listeners, &mut failed, &desired, &shared);
        }
        assert_eq!((failures(), gauge(), listeners.len()), (1, 1, 1));
        // The other process lets go: the next retry binds it.
        drop(taken);
        reconcile(&mut listeners, &mut failed, &desired, &shared);
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!((failures(), gauge(), listeners.len()), (1, 2, 2));
        let mut c = TcpStream::connect(("127.0.0.1", busy)).await.unwrap();
        assert_eq!(greeting(&mut c).await.unwrap(), "hi\n");
    }

    /// A connected pair of loopback TCP streams.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn relay_moves_large_streams_both_ways_and_passes_half_closes_on() {
        // client <-> (c1, c2) relay (b1, b2) <-> server
        let (mut client, c2) = pair().await;
        let (b1, mut server) = pair().await;
        let relay = tokio::spawn(async move { relay(&c2, &b1).await });
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "bytes arrive unchanged and in order");
        // The client's half close arrived; the server can still answer.
        server.write_all(b"done").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"done");
        relay.await.unwrap().unwrap();
    }
}
