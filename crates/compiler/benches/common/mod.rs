//! The benchmark state: N services × M endpoints, shared by the compiler's and the netlink
//! encoder's benchmarks. It is [`Shape::CRITERION`] of the one benchmark state generator,
//! `rudder_e2e::bench_state` (which `cargo xtask bench` uses too), included here by path so
//! that the benchmarks do not build the test kit's dependencies.
#![allow(dead_code, unused_imports)]

use rudder_model::{EndpointSlice, ProxyState, Service};

#[path = "../../../../tests/src/bench_state.rs"]
mod bench_state;
pub use bench_state::{SERVICES, Shape};

pub fn service(i: usize) -> Service {
    bench_state::service(&Shape::CRITERION, i)
}

pub fn slice(i: usize, shift: u32) -> EndpointSlice {
    bench_state::slice(&Shape::CRITERION, i, shift as usize)
}

pub fn state() -> ProxyState {
    bench_state::state(&Shape::CRITERION)
}
