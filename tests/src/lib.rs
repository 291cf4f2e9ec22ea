//! Test-support library for Rudder's end-to-end tests.
//!
//! This crate owns everything an end-to-end test needs to exercise Rudder against a real
//! kernel without touching the machine it runs on:
//!
//! * [`netns`]: throwaway network namespaces ([`Netns`]) that are deleted on drop, even when a
//!   test panics, plus helpers to run commands or closures inside them;
//! * [`topo`]: a small cluster-like [`Topology`] (a node, three pods and an external client)
//!   wired together with veth pairs, dual-stack;
//! * [`cluster`]: two nodes of one cluster with two pods each, an external client and the LAN
//!   joining them ([`TwoNodes`]), for tests where local and remote endpoints differ;
//! * [`serve`]: TCP and UDP echo servers ([`EchoServers`]) that answer with a pod name and
//!   record the peers they saw;
//! * [`client`]: TCP and UDP request helpers and answer histograms run from inside a
//!   namespace;
//! * [`conntrack`]: reading a namespace's conntrack table (`conntrack -L`);
//! * [`nft`]: reading and loading nftables rulesets inside a namespace;
//! * [`daemon`]: the real `rudder` binary running in a namespace ([`Daemon`]) and temporary
//!   directories ([`TempDir`]);
//! * [`root`]: the root-privilege gate ([`e2e_enabled`]);
//! * [`fuzz`]: a mutation fuzzer for the stable toolchain, run by `cargo test` and
//!   `cargo xtask fuzz`;
//! * [`soak`]: the chaos soak (random churn and faults, a steady probe that must never fail),
//!   run by `cargo test` for a minute and by `cargo xtask soak` for as long as wanted;
//! * [`vm`]: a throwaway qemu VM booting Debian's kernel (IPVS, dummy links and the nf_tables
//!   modules), for kernel features the test machine's own kernel lacks.
//! * [`bench_state`]: the synthetic N services × M endpoints state every benchmark programs.
//!
//! # Safety rules
//!
//! The library must never touch the root namespace's firewall and must never send traffic
//! outside namespaces it created itself. Every `nft`, `sysctl` and address change goes through
//! `ip netns exec <name>` or `ip -n <name>` for a namespace created by [`Netns::new`], and every
//! socket is created on a thread that first joined such a namespace ([`Netns::enter`]). Veth
//! pairs are created with both ends placed directly into their target namespaces, so no
//! interface ever appears in the root namespace.

#![deny(missing_docs)]

pub mod bench_state;
pub mod client;
pub mod cluster;
pub mod conntrack;
pub mod daemon;
pub mod fuzz;
pub mod netns;
pub mod nft;
pub mod root;
pub mod serve;
pub mod soak;
pub mod topo;
pub mod vm;

pub use client::{Proto, RequestError, histogram, tcp_request, udp_request};
pub use cluster::TwoNodes;
pub use daemon::{Daemon, TempDir};
pub use netns::Netns;
pub use root::{e2e_enabled, require_root};
pub use serve::EchoServers;
pub use serve::serve_pod;
pub use topo::Topology;
