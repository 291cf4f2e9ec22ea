//! Compiler benchmarks: a full compile of N services × M endpoints, and the incremental
//! update for one endpoint change at that size (what a partial sync costs in CPU).
//!
//! `cargo bench -p rudder-compiler`; results are recorded in `docs/performance.md`.

use std::collections::BTreeSet;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use rudder_compiler::{Compiler, Config, NodeContext, NodePortIps};
use rudder_model::{
    Endpoint, EndpointPort, EndpointSlice, IpFamily, Protocol, ProxyState, Service, ServiceKey,
    ServicePort, ServiceType,
};

// The same allocator as the `rudder` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SERVICES: usize = 10_000;
const ENDPOINTS: usize = 10;

fn service(i: usize) -> Service {
    let mut svc = Service::new(
        ServiceKey::new("bench", &format!("svc-{i}")),
        vec![IpAddr::V4(Ipv4Addr::from(0x0a60_0000u32 + i as u32))],
    );
    svc.service_type = ServiceType::NodePort;
    // Every fourth service also has a node port.
    let node_port = (i % 4 == 0 && i / 4 < 2768).then(|| 30000 + (i / 4) as u16);
    svc.ports = vec![ServicePort {
        node_port,
        ..ServicePort::new("http", Protocol::Tcp, 80)
    }];
    svc
}

fn slice(i: usize, shift: u32) -> EndpointSlice {
    let endpoints = (0..ENDPOINTS as u32)
        .map(|e| {
            Endpoint::new(IpAddr::V4(Ipv4Addr::from(
                0x0a00_0000u32 + (i as u32) * 64 + e + shift + 1,
            )))
            .on_node(&format!("node-{}", e % 5))
        })
        .collect();
    let ports = vec![EndpointPort {
        name: "http".into(),
        protocol: Protocol::Tcp,
        port: 8080,
    }];
    EndpointSlice::new(
        "bench",
        &format!("svc-{i}-x"),
        &format!("svc-{i}"),
        IpFamily::V4,
        ports,
        endpoints,
    )
}

fn state() -> ProxyState {
    let mut st = ProxyState::new();
    st.replace_all(
        (0..SERVICES).map(service).collect(),
        (0..SERVICES).map(|i| slice(i, 0)).collect(),
    );
    st.take_dirty();
    st
}

fn compiler() -> Compiler {
    let node = NodeContext::new(
        "node-0".into(),
        NodePortIps::Only(vec!["172.18.0.2".parse().unwrap()]),
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
    g.bench_function("full 10000x10 (compile only)", |b| {
        b.iter(|| {
            let mut comp = compiler();
            black_box(comp.full(black_box(&st)).len())
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
