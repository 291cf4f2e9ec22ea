//! TCP and UDP echo servers that answer with a fixed name.
//!
//! Each port gets a TCP listener and a UDP socket bound to `[::]:port` inside a namespace.
//! Namespaces created by [`Netns::new`] keep the kernel default `net.ipv6.bindv6only=0`, so
//! these sockets are dual-stack and serve IPv4 (as v4-mapped addresses) and IPv6 alike. If a
//! namespace happens to be v6-only, `0.0.0.0:port` can be bound as well and is served too.

use std::io::{self, Read, Write};
use std::net::{
    Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::netns::Netns;

/// How long a serving thread waits between checks of the stop flag.
const POLL: Duration = Duration::from_millis(5);
/// Read timeout of the UDP sockets (bounds how long dropping [`EchoServers`] waits).
const UDP_POLL: Duration = Duration::from_millis(50);
/// Write timeout for answers on accepted TCP connections.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

type Peers = Arc<Mutex<Vec<SocketAddr>>>;

/// Echo servers running in one namespace; they stop (and their threads are joined) on drop.
#[derive(Debug)]
pub struct EchoServers {
    name: String,
    ports: Vec<u16>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    tcp_peers: Peers,
    udp_peers: Peers,
}

/// Starts TCP and UDP echo servers answering `"{name}\n"` on every port in `ports`, inside
/// namespace `ns`.
///
/// TCP: every accepted connection gets `"{name}\n"` and is then closed; the peer address is
/// recorded (see [`EchoServers::accepted_peers`]). UDP: every datagram is answered with
/// `"{name}\n"` to its sender (see [`EchoServers::udp_peers`]). A port of `0` picks an
/// ephemeral port; the chosen ports are returned by [`EchoServers::ports`].
pub fn serve_pod(ns: &Netns, name: &str, ports: &[u16]) -> io::Result<EchoServers> {
    let (tcp, udp, bound) = ns.enter(|| bind_all(ports))??;
    let stop = Arc::new(AtomicBool::new(false));
    let tcp_peers: Peers = Arc::default();
    let udp_peers: Peers = Arc::default();
    let mut servers = EchoServers {
        name: name.to_owned(),
        ports: bound,
        stop,
        threads: Vec::new(),
        tcp_peers,
        udp_peers,
    };
    let answer: Arc<[u8]> = Arc::from(format!("{name}\n").into_bytes());
    for listener in tcp {
        listener.set_nonblocking(true)?;
        let (stop, peers, answer) = (
            servers.stop.clone(),
            servers.tcp_peers.clone(),
            answer.clone(),
        );
        let port = listener.local_addr()?.port();
        let handle = std::thread::Builder::new()
            .name(format!("echo-tcp-{name}-{port}"))
            .spawn(move || serve_tcp(&listener, &stop, &peers, &answer))?;
        servers.threads.push(handle);
    }
    for socket in udp {
        socket.set_read_timeout(Some(UDP_POLL))?;
        let (stop, peers, answer) = (
            servers.stop.clone(),
            servers.udp_peers.clone(),
            answer.clone(),
        );
        let port = socket.local_addr()?.port();
        let handle = std::thread::Builder::new()
            .name(format!("echo-udp-{name}-{port}"))
            .spawn(move || serve_udp(&socket, &stop, &peers, &answer))?;
        servers.threads.push(handle);
    }
    Ok(servers)
}

impl EchoServers {
    /// Starts echo servers; same as the free function [`serve_pod`].
    pub fn serve_pod(ns: &Netns, name: &str, ports: &[u16]) -> io::Result<EchoServers> {
        serve_pod(ns, name, ports)
    }

    /// The name the servers answer with (without the trailing newline).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The ports actually served (ephemeral ports resolved), in request order.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// Peer addresses of all accepted TCP connections so far, in accept order. IPv4 peers
    /// are reported as plain IPv4 addresses (not v4-mapped IPv6).
    pub fn accepted_peers(&self) -> Vec<SocketAddr> {
        self.tcp_peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Source addresses of all UDP datagrams answered so far, normalized like
    /// [`EchoServers::accepted_peers`].
    pub fn udp_peers(&self) -> Vec<SocketAddr> {
        self.udp_peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Forgets the recorded TCP and UDP peers.
    pub fn clear_peers(&self) {
        self.tcp_peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.udp_peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

impl Drop for EchoServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for handle in self.threads.drain(..) {
            // A panicking server thread has nothing left to clean up.
            let _ = handle.join();
        }
    }
}

/// Turns v4-mapped IPv6 socket addresses into plain IPv4 ones.
fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

type Bound = (Vec<TcpListener>, Vec<UdpSocket>, Vec<u16>);

/// Binds all sockets; must run inside the target namespace.
fn bind_all(ports: &[u16]) -> io::Result<Bound> {
    let (mut tcp, mut udp, mut bound) = (Vec::new(), Vec::new(), Vec::new());
    for &port in ports {
        let v6 = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))
            .map_err(|e| io::Error::new(e.kind(), format!("bind tcp [::]:{port}: {e}")))?;
        let port = v6.local_addr()?.port();
        tcp.push(v6);
        // Succeeds only when [::] is v6-only in this namespace; then serve IPv4 separately.
        match TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)) {
            Ok(v4) => tcp.push(v4),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("bind tcp 0.0.0.0:{port}: {e}"),
                ));
            }
        }
        let v6 = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port))
            .map_err(|e| io::Error::new(e.kind(), format!("bind udp [::]:{port}: {e}")))?;
        udp.push(v6);
        match UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)) {
            Ok(v4) => udp.push(v4),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("bind udp 0.0.0.0:{port}: {e}"),
                ));
            }
        }
        bound.push(port);
    }
    Ok((tcp, udp, bound))
}

fn serve_tcp(
    listener: &TcpListener,
    stop: &AtomicBool,
    peers: &Mutex<Vec<SocketAddr>>,
    answer: &[u8],
) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => {
                peers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(normalize(peer));
                // A client that went away early is not the server's problem.
                let _ = answer_tcp(stream, answer);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

fn answer_tcp(mut stream: TcpStream, answer: &[u8]) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    stream.write_all(answer)?;
    stream.shutdown(Shutdown::Write)?;
    // Drain whatever the client already sent so closing does not turn into a reset that
    // could discard the answer on the client's side.
    stream.set_nonblocking(true)?;
    let mut buf = [0u8; 1024];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
    Ok(())
}

fn serve_udp(socket: &UdpSocket, stop: &AtomicBool, peers: &Mutex<Vec<SocketAddr>>, answer: &[u8]) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::SeqCst) {
        match socket.recv_from(&mut buf) {
            Ok((_, peer)) => {
                peers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(normalize(peer));
                // Losing a reply is equivalent to losing the datagram; clients time out.
                let _ = socket.send_to(answer, peer);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => std::thread::sleep(POLL),
        }
    }
}
