//! A thin synchronous handle over a `NETLINK_GENERIC` socket: resolves the `IPVS` family,
//! sends [`Request`]s, reads dumps to their end and acknowledgements, and turns the kernel's
//! errors into [`Error::Kernel`]. The only module of the crate that does I/O.
//!
//! # Batches and what the kernel promises
//!
//! IPVS has **no transactions**. [`Handle::batch`] sends many change requests back to back in
//! one datagram; the kernel (`genl_rcv` → `netlink_rcv_skb`) runs them one after the other,
//! in order, under the IPVS mutex, and acknowledges each. A failed command does not stop the
//! ones after it and nothing is rolled back: the batch's result is one outcome per request,
//! and after a failure the kernel holds every other change of the batch. What batching buys
//! is fewer system calls, not atomicity. A caller that needs to know the kernel's state after
//! an error it did not expect dumps it ([`Handle::services`], [`Handle::dests`]).
//!
//! Acknowledgements are queued on the socket while the kernel works through the datagram; if
//! the receive buffer overflowed, acknowledgements would be lost and the next receive fails
//! with `ENOBUFS` ([`Error::Io`]), after which the batch's outcome is unknown. So batches are
//! cut into datagrams of at most [`BATCH_MESSAGES`] messages and [`BATCH_BYTES`] bytes, each
//! fully acknowledged before the next is sent, and the socket asks for short error
//! acknowledgements (`NETLINK_CAP_ACK`: the header of the failed request, not all of it).

use std::io;

use netlink_packet_core::DecodeError;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};

use crate::message::Command;
use crate::reply::{self, FamilyReply, KernelError, Reply};
use crate::request::{Request, family_request};
use crate::types::{Config, RealServerEntry, ServiceKey, VirtualServerEntry};

/// Most messages in one batch datagram.
pub const BATCH_MESSAGES: usize = 64;
/// Most bytes in one batch datagram (the kernel refuses a datagram above the socket's send
/// buffer, 208 KiB by default).
pub const BATCH_BYTES: usize = 32 * 1024;

const ENOENT: i32 = 2;

/// What can go wrong talking to IPVS.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The socket failed (including `ENOBUFS`: answers were lost).
    #[error("IPVS netlink socket")]
    Io(#[from] io::Error),
    /// The kernel has no `IPVS` generic netlink family: no `CONFIG_IP_VS`, or the `ip_vs`
    /// module is not loaded.
    #[error(
        "the kernel has no IPVS (generic netlink family \"IPVS\" not found): load the ip_vs module"
    )]
    NoIpvs,
    /// The generic netlink controller refused to resolve the family.
    #[error("resolving the IPVS generic netlink family")]
    Resolve(#[source] KernelError),
    /// The kernel refused a request.
    #[error("IPVS {}", .command.describe())]
    Kernel {
        /// The refused command.
        command: Command,
        /// The kernel's error.
        #[source]
        error: KernelError,
    },
    /// The kernel's answer does not decode.
    #[error("decoding the kernel's IPVS answer")]
    Decode(#[from] DecodeError),
    /// A request whose answer is more than an acknowledgement was given to
    /// [`Handle::batch`].
    #[error("IPVS {} cannot be batched: its answer is more than an acknowledgement", .0.describe())]
    NotBatchable(Command),
    /// The kernel answered something the request does not explain.
    #[error("unexpected IPVS answer: {0}")]
    Unexpected(&'static str),
}

impl Error {
    /// The kernel's error, if the kernel refused the request.
    pub fn kernel(&self) -> Option<KernelError> {
        match self {
            Error::Kernel { error, .. } => Some(*error),
            _ => None,
        }
    }

    /// The kernel said the object does not exist (`ESRCH`, `ENOENT`).
    pub fn is_not_found(&self) -> bool {
        self.kernel().is_some_and(KernelError::is_not_found)
    }

    /// The kernel said the object exists already (`EEXIST`).
    pub fn is_exists(&self) -> bool {
        self.kernel().is_some_and(KernelError::is_exists)
    }
}

/// An IPVS connection in the current network namespace (IPVS state is per namespace).
pub struct Handle {
    socket: Socket,
    family_id: u16,
    seq: u32,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("family_id", &self.family_id)
            .field("seq", &self.seq)
            .finish()
    }
}

impl Handle {
    /// Opens a generic netlink socket and resolves the `IPVS` family id. Fails with
    /// [`Error::NoIpvs`] on a kernel without IPVS. Commands need `CAP_NET_ADMIN`
    /// (`EPERM` otherwise); resolving does not.
    pub fn new() -> Result<Handle, Error> {
        let mut socket = Socket::new(NETLINK_GENERIC)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        socket.set_cap_ack(true)?;
        let mut handle = Handle {
            socket,
            family_id: 0,
            seq: 0,
        };
        handle.family_id = handle.resolve()?;
        Ok(handle)
    }

    /// The `IPVS` family id this kernel assigned.
    pub fn family_id(&self) -> u16 {
        self.family_id
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn resolve(&mut self) -> Result<u16, Error> {
        let seq = self.next_seq();
        self.socket.send(&family_request(seq), 0)?;
        let mut id = None;
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            for msg in reply::split_messages(&data)? {
                match reply::decode_family_reply(msg)? {
                    (s, _) if s != seq => {}
                    (_, FamilyReply::Id(i)) => id = Some(i),
                    (_, FamilyReply::Ack) => {
                        return id.ok_or(Error::Unexpected("family acknowledged without its id"));
                    }
                    (_, FamilyReply::Error(e)) if e.errno == ENOENT => return Err(Error::NoIpvs),
                    (_, FamilyReply::Error(e)) => return Err(Error::Resolve(e)),
                }
            }
        }
    }

    /// Sends one request and returns the kernel's data replies: the dump's entries (up to
    /// `NLMSG_DONE`), or the messages before the acknowledgement. A kernel error is
    /// [`Error::Kernel`].
    pub fn execute(&mut self, request: &Request) -> Result<Vec<Reply>, Error> {
        let seq = self.next_seq();
        self.socket.send(&request.encode(self.family_id, seq), 0)?;
        let dump = request.is_dump();
        let mut out = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            for frame in reply::decode(&data)? {
                if frame.seq != seq {
                    // A late answer to an earlier request (the acknowledgement some kernels
                    // add after a dump's end): not ours.
                    continue;
                }
                match frame.reply {
                    Reply::Done if dump => return Ok(out),
                    Reply::Ack if !dump => return Ok(out),
                    Reply::Error(error) => {
                        return Err(Error::Kernel {
                            command: request.command(),
                            error,
                        });
                    }
                    Reply::Done | Reply::Ack | Reply::Noop => {}
                    data => out.push(data),
                }
            }
        }
    }

    /// Sends one change request and waits for its acknowledgement.
    pub fn apply(&mut self, request: &Request) -> Result<(), Error> {
        if !request.is_change() {
            return Err(Error::NotBatchable(request.command()));
        }
        self.execute(request).map(drop)
    }

    /// Every virtual server of the namespace (`ipvsadm -Ln`, without real servers).
    pub fn services(&mut self) -> Result<Vec<VirtualServerEntry>, Error> {
        self.execute(&Request::GetServices)?
            .into_iter()
            .map(|r| match r {
                Reply::Service(s) => Ok(s),
                _ => Err(Error::Unexpected("a service dump held something else")),
            })
            .collect()
    }

    /// One virtual server (`ESRCH` if it does not exist).
    pub fn service(&mut self, key: &ServiceKey) -> Result<VirtualServerEntry, Error> {
        match self.execute(&Request::GetService(*key))?.pop() {
            Some(Reply::Service(s)) => Ok(s),
            _ => Err(Error::Unexpected("no service in the answer to GET_SERVICE")),
        }
    }

    /// The real servers of a virtual server; empty when the service does not exist (the
    /// kernel's dump ends at once).
    pub fn dests(&mut self, key: &ServiceKey) -> Result<Vec<RealServerEntry>, Error> {
        self.execute(&Request::GetDests(*key))?
            .into_iter()
            .map(|r| match r {
                Reply::Dest(d) => Ok(d),
                _ => Err(Error::Unexpected("a destination dump held something else")),
            })
            .collect()
    }

    /// The global timeouts.
    pub fn config(&mut self) -> Result<Config, Error> {
        match self.execute(&Request::GetConfig)?.pop() {
            Some(Reply::Config(c)) => Ok(c),
            _ => Err(Error::Unexpected("no timeouts in the answer to GET_CONFIG")),
        }
    }

    /// Sends change requests back to back and collects one outcome per request, in order.
    /// The outer error is a socket or decoding failure (the outcome of the unacknowledged
    /// requests is then unknown); the inner ones are the kernel's refusals. See the module
    /// documentation: no transaction, no rollback.
    pub fn batch(&mut self, requests: &[Request]) -> Result<Vec<Result<(), KernelError>>, Error> {
        if let Some(r) = requests.iter().find(|r| !r.is_change()) {
            return Err(Error::NotBatchable(r.command()));
        }
        let mut outcomes = Vec::with_capacity(requests.len());
        let mut rest = requests;
        while !rest.is_empty() {
            let first = self.seq.wrapping_add(1);
            let mut datagram = Vec::new();
            let mut n = 0;
            while n < rest.len() && n < BATCH_MESSAGES {
                let before = datagram.len();
                rest[n].encode_into(self.family_id, first.wrapping_add(n as u32), &mut datagram);
                if datagram.len() > BATCH_BYTES && n > 0 {
                    datagram.truncate(before);
                    break;
                }
                n += 1;
            }
            self.seq = first.wrapping_add(n as u32 - 1);
            self.socket.send(&datagram, 0)?;
            let mut chunk: Vec<Option<Result<(), KernelError>>> = vec![None; n];
            let mut pending = n;
            while pending > 0 {
                let (data, _) = self.socket.recv_from_full()?;
                for frame in reply::decode(&data)? {
                    let i = frame.seq.wrapping_sub(first) as usize;
                    let outcome = match frame.reply {
                        Reply::Ack => Ok(()),
                        Reply::Error(e) => Err(e),
                        _ => continue,
                    };
                    if let Some(slot @ None) = chunk.get_mut(i) {
                        *slot = Some(outcome);
                        pending -= 1;
                    }
                }
            }
            outcomes.extend(chunk.into_iter().flatten());
            rest = &rest[n..];
        }
        Ok(outcomes)
    }
}
