//! Compiler benchmarks: a full compile of N services × M endpoints, and the incremental
//! update for one endpoint change at that size (what a partial sync costs in CPU).
//!
//! `cargo bench -p rudder-compiler`; results are recorded in `docs/performance.md`.

use std::collections::BTreeSet;
use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use rudder_compiler::{Compiler, Config, NodeContext, NodePortIps};
use rudder_model::{IpFamily, ServiceKey};

// The same allocator as the `rudder` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "common/mod.rs"]
mod common;
use common::*;

fn compiler() -> Compiler {
    let node = NodeContext::new(
        "node-0".into(),
        NodePortIps::Only(vec!["172.18.0.2".parse().expect("bench IP")]),
    );
    Compiler::new(&[IpFamily::V4], Config::default(), node)
}

fn benches(c: &mut Criterion) {
    let st = state();
    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    g.bench_function("full 10000x10 (compile + render)", |b| {
        b.iter(|| {
            let mut comp = compiler();
            let tx = comp.full(black_box(&st));
            black_box(tx.render().len())
        })
    });
    let mut resync = compiler();
    resync.full(&st);
    g.bench_function(
        "full resync 10000x10 (compile + render, warm compiler)",
        |b| b.iter(|| black_box(resync.full(black_box(&st)).render().len())),
    );
    // The compiler and its transaction are dropped outside the measurement: the daemon builds
    // one compiler and keeps it (a resync reuses it, measured above with its drops).
    g.bench_function("full 10000x10 (compile only)", |b| {
        b.iter_with_large_drop(|| {
            let mut comp = compiler();
            let tx = comp.full(black_box(&st));
            (comp, tx)
        })
    });
    g.finish();

    let mut g = c.benchmark_group("update");
    let mut comp = compiler();
    comp.full(&st);
    let mut shift = 0;
    g.bench_function("one endpoint change in 10000x10 (update + render)", |b| {
        b.iter_batched(
            || {
                shift += 1;
                let mut s2 = st.clone();
                s2.take_dirty();
                s2.upsert_slice(slice(SERVICES / 2, shift % 2));
                let dirty: BTreeSet<ServiceKey> = s2.take_dirty();
                (s2, dirty)
            },
            |(s2, dirty)| {
                let tx = comp.update(&s2, &dirty);
                let len = black_box(tx.render().len());
                // Returned, so dropping the cloned state is not timed.
                (s2, len)
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(compile, benches);
criterion_main!(compile);
