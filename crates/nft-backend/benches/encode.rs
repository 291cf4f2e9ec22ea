//! The netlink encoder: a full 10,000 × 10 transaction and a one-endpoint change, encoded as
//! nf_tables batches (what each sync costs in CPU before the kernel sees it). No socket.
//!
//! `cargo bench -p rudder-nft-backend`; results are recorded in `docs/performance.md`.

use std::collections::BTreeSet;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use rudder_compiler::{Compiler, Config, NodeContext, NodePortIps};
use rudder_model::{IpFamily, ServiceKey};
use rudder_nft_backend::NetlinkWriter;

#[path = "../../compiler/benches/common/mod.rs"]
mod common;
use common::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench(c: &mut Criterion) {
    let st = state();
    let node = NodeContext::new(
        "node-0".into(),
        NodePortIps::Only(vec!["172.18.0.2".parse().expect("ip")]),
    );
    let mut comp = Compiler::new(&[IpFamily::V4], Config::default(), node);
    let full = comp.full(&st);
    let writer = NetlinkWriter::new();
    let mut g = c.benchmark_group("encode");
    g.sample_size(20);
    g.bench_function("full 10000x10 transaction", |b| {
        b.iter(|| black_box(writer.encode(black_box(&full)).map(|b| b.bytes.len())))
    });
    g.bench_function(
        "full 10000x10 rendered as nft -f text (for comparison)",
        |b| b.iter(|| black_box(full.render().len())),
    );
    let mut st2 = st.clone();
    st2.upsert_slice(slice(SERVICES / 2, 1));
    let dirty: BTreeSet<ServiceKey> = st2.take_dirty();
    let one = comp.update(&st2, &dirty);
    g.bench_function("one endpoint change", |b| {
        b.iter(|| black_box(writer.encode(black_box(&one)).map(|b| b.bytes.len())))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
