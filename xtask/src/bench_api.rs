//! `cargo xtask bench-api [SERVICES] [ENDPOINTS] [CHANGES]`: the real daemon (release build)
//! against the test API server, in a throwaway namespace.
//!
//! Measures: time from starting the daemon to its first full sync; for each of CHANGES
//! EndpointSlice updates (with `--iptables-min-sync-period 0`), the time from the update at the
//! API server to the end of the sync that programmed it (the daemon logs each sync's end with a
//! timestamp); and the daemon's peak RSS.

use std::net::TcpListener;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use rudder_e2e::{Daemon, Netns, TempDir};
use rudder_fake_apiserver::{Config, FakeApiServer};
use serde_json::json;

use crate::demo::build_rudder;
use crate::install_deps;

fn service(i: usize) -> anyhow::Result<Service> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "bench", "name": format!("svc-{i}")},
        "spec": {"clusterIP": format!("10.96.{}.{}", i / 250, i % 250 + 1), "ports": [{"name": "http", "port": 80}]}
    }))?)
}

fn slice(i: usize, eps: usize, shift: usize) -> anyhow::Result<EndpointSlice> {
    let endpoints: Vec<_> = (0..eps)
        .map(|e| json!({"addresses": [format!("10.{}.{}.{}", 1 + i / 250, i % 250, e + shift + 1)], "nodeName": format!("node-{}", (i + e) % 100)}))
        .collect();
    Ok(serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "bench", "name": format!("svc-{i}-x"), "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}], "endpoints": endpoints
    }))?)
}

/// Parses the RFC 3339 timestamp that starts a default `tracing` log line, as seconds since
/// the epoch (UTC, `2026-11-23T17:24:02.123456Z`).
pub(crate) fn log_time(line: &str) -> Option<f64> {
    let t: jiff::Timestamp = line.split_whitespace().next()?.parse().ok()?;
    Some(t.as_duration().as_secs_f64())
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn sync_lines(d: &Daemon) -> Vec<String> {
    d.log()
        .lines()
        .filter(|l| l.contains("sync done"))
        .map(str::to_owned)
        .collect()
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn bench_api(args: &[String]) -> anyhow::Result<()> {
    if !rudder_e2e::root::is_root() {
        bail!("bench-api programs nftables in a network namespace and must run as root");
    }
    install_deps()?;
    let services: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let eps: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let changes: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(100);
    let rudder = build_rudder(true)?;

    let ns = Netns::new("benchapi").context("netns")?;
    let listener = ns
        .enter(|| TcpListener::bind("127.0.0.1:6443"))?
        .context("bind")?;
    let api = FakeApiServer::start(listener, Config::default().with_token("bench"))
        .context("API server")?;
    let node: Node = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-0"},
        "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"}]}}),
    )?;
    api.apply_node(node);
    let t = Instant::now();
    for i in 0..services {
        api.apply_service(service(i)?);
        api.apply_endpoint_slice(slice(i, eps, 0)?);
    }
    eprintln!(
        "xtask: loaded {services} services × {eps} endpoints into the API server in {:?}",
        t.elapsed()
    );
    let dir = TempDir::new("benchapi")?;
    let kubeconfig = dir.write("kubeconfig", &api.kubeconfig(Some("bench")))?;
    let kc = kubeconfig.display().to_string();
    let start = Instant::now();
    let mut daemon = Daemon::start(
        &rudder,
        &ns,
        &[
            "run",
            "--kubeconfig",
            &kc,
            "--hostname-override",
            "node-0",
            "--iptables-min-sync-period",
            "0s",
            "--node-wait",
            "5s",
        ],
    )?;
    daemon.wait_for("sync done", 1, Duration::from_secs(120))?;
    let first_sync = start.elapsed();
    let log = daemon.log();
    let first_line = log
        .lines()
        .find(|l| l.contains("sync done"))
        .unwrap_or_default()
        .to_owned();
    let started_line = log
        .lines()
        .find(|l| l.contains("starting Rudder"))
        .and_then(log_time);
    eprintln!("xtask: first sync: {first_line}");
    for l in log.lines().filter(|l| {
        l.contains("listed") || l.contains("starting Rudder") || l.contains("using the Kubernetes")
    }) {
        eprintln!("xtask:   {l}");
    }
    if let (Some(s0), Some(s1)) = (started_line, log_time(&first_line)) {
        eprintln!(
            "xtask: from the daemon's first log line to the end of the first sync: {:.0} ms",
            (s1 - s0) * 1e3
        );
    }

    let mut latencies = Vec::with_capacity(changes);
    for c in 0..changes {
        let before = sync_lines(&daemon).len();
        let i = (c * 7919) % services;
        let sent = now_secs();
        api.apply_endpoint_slice(slice(i, eps, c % 2 + 1)?);
        daemon.wait_for("sync done", before + 1, Duration::from_secs(30))?;
        let lines = sync_lines(&daemon);
        let line = lines.get(before).cloned().unwrap_or_default();
        let done =
            log_time(&line).with_context(|| format!("parsing the sync log line {line:?}"))?;
        latencies.push(((done - sent) * 1e3).max(0.0));
        // Separate the changes so each gets its own sync.
        std::thread::sleep(Duration::from_millis(20));
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    let rss = daemon.pid().and_then(peak_rss_kib).unwrap_or(0);
    let ok = daemon.terminate(Duration::from_secs(5))?;
    println!(
        "API-server benchmark: {services} services × {eps} endpoints, {changes} changes, release build\n"
    );
    println!("| measurement | value |\n|---|---|");
    println!(
        "| daemon start to first full sync | {:.0} ms |",
        first_sync.as_secs_f64() * 1e3
    );
    println!(
        "| one EndpointSlice change to rules in the kernel, p50 | {:.1} ms |",
        pct(0.5)
    );
    println!("| same, p99 | {:.1} ms |", pct(0.99));
    println!("| same, max | {:.1} ms |", pct(1.0));
    println!("| daemon peak RSS | {:.1} MiB |", rss as f64 / 1024.0);
    println!("| clean exit on SIGTERM | {ok} |");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_lines_start_with_their_time() {
        let t =
            super::log_time("2026-01-02T03:04:05.250000Z  INFO rudder: sync done").expect("a time");
        assert!((t - 1_767_323_045.25).abs() < 1e-6, "{t}");
        assert_eq!(super::log_time("INFO no time"), None);
    }
}
