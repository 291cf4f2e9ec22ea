//! Rudder's nf_tables netlink codec (work in progress: the encoder moved verbatim).

pub mod encode;
pub mod wire;

pub use encode::{Batch, EncodeError, IntervalSets, encode, encode_dry_run, track_interval_sets};
