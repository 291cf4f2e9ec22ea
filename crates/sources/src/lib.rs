//! Where Rudder's state comes from: the Kubernetes API server and manifest files.
//!
//! This crate owns every source of input and the one conversion of Kubernetes objects into
//! the model ([`convert`]): building the API client from `--kubeconfig`, `--master` or the
//! in-cluster configuration ([`client`]); the watchers for Services, EndpointSlices, this
//! node's Node and ServiceCIDRs, with their re-list and backoff behaviour ([`watch`]);
//! Kubernetes Events ([`events`]); and the manifest file source: parsing ([`manifests`]),
//! reading files safely ([`files`], with the depth pre-scan in [`nesting`]) and following
//! them with debounce and last good content ([`follow`]). Every source sends
//! [`rudder_controller::change::Change`]s to the sync loop, already converted.
//!
//! It is the only crate of the workspace that depends on `kube` (`cargo xtask test` checks
//! it). What it must not do: touch the kernel, know nftables or IPVS, or decide what is
//! programmed; problems in the input are reported
//! ([`rudder_controller::change::report_problems`]) and the object skipped, never fatal.

#![deny(missing_docs)]

pub mod client;
pub mod convert;
pub mod events;
pub mod files;
pub mod follow;
pub mod manifests;
pub mod nesting;
pub mod watch;
