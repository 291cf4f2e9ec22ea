//! `cargo xtask bench`: programs a real kernel (in a throwaway namespace) at scale.
//!
//! Measures, side by side in one run, for N services × M endpoints:
//! - Rudder, through the netlink writer and through `nft -f`: full apply, a one-endpoint
//!   change and a full resync over the existing table;
//! - the same state in kube-proxy 1.36's layout (a chain and an anonymous numgen map per
//!   service), generated here for comparison: full load and a one-endpoint change.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rudder_compiler::{Compiler, Config, NodeContext, NodePortIps};
use rudder_e2e::Netns;
use rudder_e2e::bench_state::{self, Shape, endpoint_ip};
use rudder_model::{IpFamily, ServiceKey};
use rudder_nft_backend::{NftBackend, WriteMode};

use crate::install_deps;

/// kube-proxy 1.36's per-service layout for the same state (chains, anonymous numgen maps,
/// `service-ips` verdict map), enough to measure what the kernel and `nft` pay for it.
fn kube_proxy_script(services: usize, eps: usize) -> String {
    let mut s = String::from(
        "add table ip kube-proxy\nadd chain ip kube-proxy services\nadd map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }\n\
         add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }\nadd rule ip kube-proxy nat-prerouting jump services\n\
         add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips\n",
    );
    for i in 0..services {
        s.push_str(&kube_proxy_service(i, eps, 0));
    }
    s
}

fn kube_proxy_service(i: usize, eps: usize, bump: usize) -> String {
    let chain = format!("service-{i:08}-bench/svc-{i}/tcp/http");
    let map: Vec<String> = (0..eps)
        .map(|e| format!("{e} : {} . 8080", endpoint_ip(i, e + bump)))
        .collect();
    let vip = std::net::Ipv4Addr::from(0x0a60_0000u32 + i as u32);
    format!(
        "add chain ip kube-proxy {chain}\nflush chain ip kube-proxy {chain}\nadd rule ip kube-proxy {chain} meta l4proto tcp dnat ip addr . port to numgen random mod {eps} map {{ {} }}\n\
         add element ip kube-proxy service-ips {{ {vip} . tcp . 80 : goto {chain} }}\n",
        map.join(" , ")
    )
}

fn time<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, Duration)> {
    let t = Instant::now();
    let r = f()?;
    Ok((r, t.elapsed()))
}

fn nft_load(ns: &Netns, script: &str) -> anyhow::Result<()> {
    rudder_e2e::nft::load(ns, script).context("nft -f")
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

pub fn bench(args: &[String]) -> anyhow::Result<()> {
    if !rudder_e2e::root::is_root() {
        bail!("kernel benchmarks program nftables in a network namespace and must run as root");
    }
    install_deps()?;
    let services: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let eps: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let rounds = 3;

    let node = NodeContext::new(
        "node-0".into(),
        NodePortIps::Only(vec!["172.18.0.2".parse()?]),
    );
    let shape = Shape::cluster_ips(services, eps);
    let state = bench_state::state(&shape);
    let netlink = NftBackend::new();
    let program = NftBackend::new().write_mode(WriteMode::Program);
    let mut rows: Vec<(String, Vec<Duration>)> = Vec::new();
    let mut push = |name: &str, d: Duration| match rows.iter_mut().find(|(n, _)| n == name) {
        Some((_, v)) => v.push(d),
        None => rows.push((name.to_owned(), vec![d])),
    };
    let mut bytes = 0;
    let mut batch_bytes = 0;
    for round in 0..rounds {
        // Rudder, through each write path.
        for (label, backend) in [("netlink", &netlink), ("nft -f", &program)] {
            let ns = Netns::new("bench").context("netns")?;
            let mut compiler = Compiler::new(&[IpFamily::V4], Config::default(), node.clone());
            // (Compile times are measured by `cargo bench -p rudder-compiler`, in release mode.)
            let tx = compiler.full(&state);
            let (applied, d) = time(|| ns.enter(|| backend.apply(&tx))?.context("apply"))?;
            if label == "netlink" {
                batch_bytes = applied.bytes;
            } else {
                bytes = applied.bytes;
            }
            push(&format!("Rudder ({label}): apply full ruleset"), d);
            let mut st = state.clone();
            st.upsert_slice(bench_state::slice(&shape, services / 2, 1 + round));
            let dirty: BTreeSet<ServiceKey> = st.take_dirty();
            let tx1 = compiler.update(&st, &dirty);
            let (_, d) = time(|| ns.enter(|| backend.apply(&tx1))?.context("apply change"))?;
            push(&format!("Rudder ({label}): apply one-endpoint change"), d);
            let tx2 = compiler.full(&st);
            let (_, d) = time(|| ns.enter(|| backend.apply(&tx2))?.context("apply resync"))?;
            push(
                &format!("Rudder ({label}): full resync over an existing table"),
                d,
            );
            drop(ns);
        }

        // kube-proxy layout, same state.
        let ns = Netns::new("benchkp").context("netns")?;
        let script = kube_proxy_script(services, eps);
        let (_, d) = time(|| nft_load(&ns, &script))?;
        push("kube-proxy layout: load full ruleset (nft -f)", d);
        let change = kube_proxy_service(services / 2, eps, 1 + round);
        let (_, d) = time(|| nft_load(&ns, &change))?;
        push("kube-proxy layout: rewrite one service's chain", d);
    }
    println!(
        "Kernel benchmark: {services} services × {eps} endpoints, IPv4, {rounds} rounds (median shown); Rudder full netlink batch {:.1} MiB, nft -f script {:.1} MiB\n",
        batch_bytes as f64 / 1048576.0,
        bytes as f64 / 1048576.0
    );
    println!("| measurement | median | min | max |\n|---|---|---|---|");
    for (name, mut v) in rows {
        v.sort();
        println!(
            "| {name} | {} | {} | {} |",
            ms(v[v.len() / 2]),
            ms(v[0]),
            ms(v[v.len() - 1])
        );
    }
    Ok(())
}
