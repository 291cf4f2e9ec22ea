//! TCP and UDP clients that run inside a namespace.
//!
//! Every request creates a fresh socket on a thread that joined the namespace (see
//! [`Netns::enter`]), so traffic only ever leaves from namespaces this library created.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use crate::netns::Netns;

/// Timeout used by [`histogram`] for each request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// Payload sent by [`udp_request`].
pub const UDP_PING: &[u8] = b"ping";

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The connection was actively refused (TCP reset, or ICMP port/protocol unreachable or
    /// an administrative reject reported as `ECONNREFUSED`).
    #[error("connection refused")]
    Refused,
    /// No answer within the timeout.
    #[error("timed out")]
    Timeout,
    /// Any other I/O error (e.g. host or network unreachable).
    #[error("request failed: {0}")]
    Other(#[from] io::Error),
}

impl RequestError {
    /// Classifies an I/O error: `ConnectionRefused` becomes [`RequestError::Refused`],
    /// `TimedOut`/`WouldBlock` become [`RequestError::Timeout`], anything else
    /// [`RequestError::Other`].
    pub fn from_io(err: io::Error) -> RequestError {
        match err.kind() {
            io::ErrorKind::ConnectionRefused => RequestError::Refused,
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => RequestError::Timeout,
            _ => RequestError::Other(err),
        }
    }

    /// The key this error is counted under in a [`histogram`]: `<refused>`, `<timeout>`, or
    /// `<error: KIND>` (e.g. `<error: host unreachable>`).
    pub fn histogram_key(&self) -> String {
        match self {
            RequestError::Refused => "<refused>".to_owned(),
            RequestError::Timeout => "<timeout>".to_owned(),
            RequestError::Other(e) => format!("<error: {}>", e.kind()),
        }
    }
}

/// Transport protocol for [`histogram`] and [`request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// A TCP connection read until EOF ([`tcp_request`]).
    Tcp,
    /// A single UDP datagram exchange ([`udp_request`]).
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// Connects to `addr` over TCP from inside `ns`, reads until EOF and returns the trimmed
/// text.
///
/// `timeout` bounds the connect and each read separately.
pub fn tcp_request(
    ns: &Netns,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<String, RequestError> {
    ns.enter(|| tcp_in_current_ns(addr, timeout))?
}

/// Sends `"ping"` to `addr` over UDP from a fresh ephemeral socket inside `ns` and returns
/// the trimmed text of the first reply.
///
/// The socket is `connect`ed, so an ICMP port unreachable answer surfaces as
/// [`RequestError::Refused`] instead of a timeout.
pub fn udp_request(
    ns: &Netns,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<String, RequestError> {
    udp_request_from(ns, None, addr, timeout)
}

/// Like [`udp_request`], but binds the local end to `local` (port chosen by the kernel)
/// when given.
pub fn udp_request_from(
    ns: &Netns,
    local: Option<IpAddr>,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<String, RequestError> {
    ns.enter(|| udp_in_current_ns(local, addr, timeout))?
}

/// Performs one request with protocol `proto` (see [`tcp_request`] and [`udp_request`]).
pub fn request(
    ns: &Netns,
    addr: SocketAddr,
    proto: Proto,
    timeout: Duration,
) -> Result<String, RequestError> {
    match proto {
        Proto::Tcp => tcp_request(ns, addr, timeout),
        Proto::Udp => udp_request(ns, addr, timeout),
    }
}

/// Performs `n` sequential requests to `addr` from inside `ns` (each with
/// [`DEFAULT_TIMEOUT`]) and counts the answers.
///
/// Successful answers are counted under their text (e.g. `pod-0`); failures under
/// [`RequestError::histogram_key`] (`<refused>`, `<timeout>`, `<error: ...>`). If the
/// namespace cannot be entered at all, all `n` requests are counted under that error.
pub fn histogram(ns: &Netns, addr: SocketAddr, n: usize, proto: Proto) -> BTreeMap<String, usize> {
    histogram_with_timeout(ns, addr, n, proto, DEFAULT_TIMEOUT)
}

/// Like [`histogram`] with an explicit per-request timeout.
pub fn histogram_with_timeout(
    ns: &Netns,
    addr: SocketAddr,
    n: usize,
    proto: Proto,
    timeout: Duration,
) -> BTreeMap<String, usize> {
    let counted = ns.enter(|| {
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            let result = match proto {
                Proto::Tcp => tcp_in_current_ns(addr, timeout),
                Proto::Udp => udp_in_current_ns(None, addr, timeout),
            };
            let key = match result {
                Ok(text) => text,
                Err(e) => e.histogram_key(),
            };
            *counts.entry(key).or_insert(0) += 1;
        }
        counts
    });
    counted.unwrap_or_else(|e| BTreeMap::from([(RequestError::Other(e).histogram_key(), n)]))
}

/// The unspecified address of `addr`'s family, for binding an ephemeral local socket.
fn unspecified_for(addr: SocketAddr) -> IpAddr {
    match addr {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

pub(crate) fn tcp_in_current_ns(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<String, RequestError> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(RequestError::from_io)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(RequestError::from_io)?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(RequestError::from_io)?;
    Ok(text.trim().to_owned())
}

fn udp_in_current_ns(
    local: Option<IpAddr>,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<String, RequestError> {
    let bind = local.unwrap_or_else(|| unspecified_for(addr));
    let socket = UdpSocket::bind((bind, 0)).map_err(RequestError::from_io)?;
    socket.connect(addr).map_err(RequestError::from_io)?;
    socket
        .set_read_timeout(Some(timeout))
        .map_err(RequestError::from_io)?;
    socket.send(UDP_PING).map_err(RequestError::from_io)?;
    let mut buf = [0u8; 2048];
    let n = socket.recv(&mut buf).map_err(RequestError::from_io)?;
    Ok(String::from_utf8_lossy(buf.get(..n).unwrap_or_default())
        .trim()
        .to_owned())
}

/// A long-running UDP "connection": one socket, bound to a fixed local address inside a
/// namespace and connected to a service, so every datagram belongs to the same conntrack
/// flow for as long as the flow keeps sending.
#[derive(Debug)]
pub struct UdpFlow {
    socket: UdpSocket,
    local: SocketAddr,
    remote: SocketAddr,
}

impl UdpFlow {
    /// Binds `local` inside `ns` and connects to `remote`. The socket keeps belonging to `ns`
    /// and can be used from any thread.
    pub fn open(ns: &Netns, local: SocketAddr, remote: SocketAddr) -> io::Result<UdpFlow> {
        let socket = ns.enter(|| -> io::Result<UdpSocket> {
            let socket = UdpSocket::bind(local)?;
            socket.connect(remote)?;
            Ok(socket)
        })??;
        let local = socket.local_addr()?;
        Ok(UdpFlow {
            socket,
            local,
            remote,
        })
    }

    /// The local (client) address, as conntrack shows it as the original source.
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// The service address the flow sends to.
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// Sends one datagram and returns the trimmed text of the answer. Answers to earlier,
    /// timed-out datagrams that arrive late are skipped only if they were already queued.
    pub fn ping(&self, timeout: Duration) -> Result<String, RequestError> {
        // Drop anything left over from an earlier ping that timed out.
        self.socket
            .set_nonblocking(true)
            .map_err(RequestError::from_io)?;
        let mut buf = [0u8; 2048];
        while self.socket.recv(&mut buf).is_ok() {}
        self.socket
            .set_nonblocking(false)
            .map_err(RequestError::from_io)?;
        self.socket
            .set_read_timeout(Some(timeout))
            .map_err(RequestError::from_io)?;
        self.socket.send(UDP_PING).map_err(RequestError::from_io)?;
        let n = self.socket.recv(&mut buf).map_err(RequestError::from_io)?;
        Ok(String::from_utf8_lossy(buf.get(..n).unwrap_or_default())
            .trim()
            .to_owned())
    }
}
