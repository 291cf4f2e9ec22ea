//! Rudder's nf_tables netlink codec: [`Transaction`](rudder_nft::Transaction)s encoded as
//! nf_tables netlink batches, and what the kernel sends back decoded.
//!
//! What it owns:
//!
//! - **Encoding** ([`encode`], [`encode_dry_run`]): every IR statement becomes the same kernel
//!   expressions `nft` 1.0.6 generates for its text form, sets carry the userdata `nft`
//!   writes, anonymous sets are created in the batch with `nft`'s interval merging, element
//!   lists are split below the 64 KiB attribute limit, and the last message asks for an
//!   acknowledgement. The modules follow the batch: framing ([`batch`](crate::batch) and
//!   the standalone [`encode_get_generation`] request), set declarations and their userdata
//!   (`set`), elements (`element`), anonymous sets (`anon`), rules and expressions (`expr`),
//!   all written through [`wire`].
//! - **Decoding** ([`decode`]): the kernel's replies to a batch (acknowledgements, errors with
//!   the failing message, the errno and the extended acknowledgement's message), its reply to
//!   `GETGEN`, and its change notifications, parsed with rust-netlink's
//!   `netlink-packet-core` buffers.
//! - **Reading back** ([`dump`]): the dump requests for one table (chains, rules, sets,
//!   elements), the gathering of their answers, and their decoding into the IR: chains, sets
//!   and elements decoded exactly, rules compared in canonical form ([`canon`]) with the
//!   encoding of the rules Rudder means.
//!
//! What it must not do: any I/O (no sockets, no `nix`, no `netlink-sys`), hold locks, or
//! carry state from one transaction to the next. What a batch depends on beyond the
//! transaction is passed in by the caller: the first sequence number, and the catalogue of
//! interval sets declared by earlier transactions ([`IntervalSets`], kept up to date with the
//! pure [`track_interval_sets`]). The same input always gives the same bytes, which the
//! byte-exact vectors under `tests/vectors/` hold it to.

#![deny(missing_docs)]

mod anon;
mod batch;
pub mod canon;
pub mod decode;
pub mod dump;
mod element;
mod expr;
mod set;
pub mod wire;

pub use batch::{Batch, EncodeError, encode, encode_dry_run, encode_get_generation};
pub use set::{IntervalSets, track_interval_sets};
