//! IPVS over generic netlink: a sans-IO codec for the kernel's `IPVS` family (version 1,
//! `include/uapi/linux/ip_vs.h`) and a thin synchronous socket handle.
//!
//! **What it owns.** The wire format of IPVS commands — add, edit, delete and get virtual
//! servers (`NEW/SET/DEL/GET_SERVICE`) and real servers (`NEW/SET/DEL/GET_DEST`), the global
//! timeouts (`SET/GET_CONFIG`), `FLUSH` — as typed data ([`types`]), their encoding to bytes
//! and the decoding of the kernel's answers (dumps, the timeouts, acknowledgements, errors);
//! the family id resolution (`CTRL_CMD_GETFAMILY` for `"IPVS"`); and, in [`handle`] only, a
//! socket that sends requests and collects answers.
//!
//! **What it must not do.** Decide what to program (that is the IPVS compiler's job), know
//! Kubernetes or Rudder's model, touch anything but IPVS (addresses on `kube-ipvs0`, sysctls
//! and nftables belong elsewhere), or do I/O outside [`handle`]: [`types`], [`nla`],
//! [`codec`], [`message`], [`request`] and [`reply`] never see a socket, so they can be
//! tested byte for byte without root and reused by a fake kernel.
//!
//! Layering: rust-netlink's `netlink-packet-core` frames messages and attributes (`Nla`,
//! `NlasIterator`, `DefaultNla`), `netlink-packet-generic` adds the generic netlink header
//! (the [`message::IpvsMessage`] payload implements its `GenlFamily`) and the controller's
//! messages for family resolution, and `netlink-sys` is the socket.
//!
//! # Example
//!
//! ```
//! use rudder_ipvs::{Request, RealServer, Scheduler, ServiceKey, VirtualServer, Weight};
//!
//! let key = ServiceKey::tcp("10.96.0.10:80".parse()?);
//! let add = Request::NewService(VirtualServer::new(key, Scheduler::RoundRobin));
//! let bytes = add.encode(0x22, 1); // family id as resolved, sequence number
//! assert_eq!(bytes.len(), 104);
//! assert_eq!(rudder_ipvs::Request::decode(&bytes)?, (add, 1));
//!
//! let dest = Request::NewDest(key, RealServer::masquerade("10.244.1.5:8080".parse()?, Weight::ONE));
//! assert_eq!(dest.encode(0x22, 2).len(), 140);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Against the kernel (root, a kernel with `ip_vs`):
//!
//! ```no_run
//! use rudder_ipvs::{Handle, Request, Scheduler, ServiceKey, VirtualServer};
//!
//! let mut ipvs = Handle::new()?;
//! let key = ServiceKey::udp("[fd00::10]:53".parse()?);
//! ipvs.apply(&Request::NewService(VirtualServer::new(key, Scheduler::RoundRobin).persistent(10800)))?;
//! for entry in ipvs.services()? {
//!     println!("{:?} {}", entry.server.key, entry.server.scheduler);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Encoded sizes
//!
//! Measured by `tests/vectors.rs` (`encoded_sizes`), whole netlink messages including the
//! 16-byte `nlmsghdr` and 4-byte `genlmsghdr`; IPv4 and IPv6 cost the same because addresses
//! are always the 16-byte `union nf_inet_addr`:
//!
//! | message | bytes |
//! |---|---|
//! | add or edit a virtual server, scheduler of up to 3 letters (`rr`, `wrr`, `sh`…) | 104 |
//! | the same with a 4-to-7-letter scheduler (`lblc`, `lblcr`, `twos`) | 108 |
//! | delete a virtual server (`DEL_SERVICE`, its key only) | 68 |
//! | add or edit a masqueraded real server (`NEW_DEST`/`SET_DEST`) | 140 |
//! | delete a real server (`DEL_DEST`) | 108 |
//! | the kernel's acknowledgement of any of them (`NETLINK_CAP_ACK`) | 36 |
//!
//! So a sync that creates a virtual server with *n* real servers sends `104 + 140·n` bytes
//! and reads `36·(n+1)`; 10,000 services × 10 endpoints is about 15 MB out in about 1,720
//! datagrams of at most 64 messages ([`handle::BATCH_MESSAGES`]).
//!
//! # Kernel requirements
//!
//! IPVS generic netlink since 2.6.28; destination `ADDR_FAMILY` since 3.18 (older kernels
//! reply without it and the decoder falls back to the service's family); 64-bit counters
//! (`STATS64`) since 4.1; tunnel types since 5.3. `IPVS` commands need `CAP_NET_ADMIN` and act
//! on the caller's network namespace.

#![deny(missing_docs)]

pub mod codec;
pub mod handle;
pub mod message;
pub mod nla;
pub mod reply;
pub mod request;
pub mod save;
pub mod types;

pub use handle::{Error, Handle};
pub use message::{Command, IpvsMessage};
pub use reply::{Frame, KernelError, Reply};
pub use request::{Request, encode_batch, family_request};
pub use types::{
    Config, Family, ForwardMethod, Name, Persistence, Protocol, RealServer, RealServerEntry,
    Scheduler, ServiceFlags, ServiceKey, Stats, Tunnel, TunnelChecksum, TunnelKind, VirtualServer,
    VirtualServerEntry, Weight,
};

/// Re-exported so users need not pin a matching version.
pub use netlink_packet_core::DecodeError;
