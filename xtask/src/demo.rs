//! `cargo xtask demo`: Rudder's main job on the embedded nginx example, in namespaces.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use rudder_e2e::client::request;
use rudder_e2e::{Daemon, Proto, Topology, serve_pod};

use crate::{cargo, install_deps, run};

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds the `rudder` binary and returns its path.
pub fn build_rudder(release: bool) -> anyhow::Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--quiet", "-p", "rudder"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    Ok(target
        .join(if release { "release" } else { "debug" })
        .join("rudder"))
}

fn show(topo: &Topology, from: &str, target: &str, proto: Proto, n: usize) -> anyhow::Result<()> {
    let ns = match from {
        "client" => &topo.client,
        "node" => &topo.node,
        _ => &topo.pods[0],
    };
    let addr: SocketAddr = target.parse().context("demo address")?;
    let mut answers = Vec::new();
    for _ in 0..n {
        answers.push(match request(ns, addr, proto, Duration::from_secs(1)) {
            Ok(a) => a,
            Err(e) => e.histogram_key(),
        });
    }
    println!(
        "  {proto} {target:<24} from {from:<8} -> {}",
        answers.join(" ")
    );
    Ok(())
}

pub fn demo() -> anyhow::Result<()> {
    if !rudder_e2e::root::is_root() {
        bail!("the demo creates network namespaces and must run as root");
    }
    install_deps()?;
    let rudder = build_rudder(false)?;
    let topo = Topology::new().context("creating the demo namespaces")?;
    let names = ["111", "222", "333"];
    let _servers: Vec<_> = (0..3)
        .map(|i| serve_pod(&topo.pods[i], names[i], &[80, 5353, 5432]))
        .collect::<Result<_, _>>()
        .context("starting the backends")?;
    let manifests = workspace_root().join("examples/nginx");
    let dir = manifests.display().to_string();
    println!(
        "Rudder demo: node namespace {} (172.18.0.2), pods 10.244.1.2=111 10.244.2.2=222 10.244.3.2=333,",
        topo.node.name()
    );
    println!("client 172.18.0.10; manifests {}\n", manifests.display());
    let mut daemon = Daemon::start(
        &rudder,
        &topo.node,
        &[
            "run",
            "--manifests",
            &dir,
            "--hostname-override",
            "node-1",
            "--cluster-cidr",
            "10.244.0.0/16,fd00:10:244::/56",
        ],
    )
    .context("starting rudder")?;
    daemon
        .wait_for("sync done", 1, Duration::from_secs(30))
        .context("waiting for the first sync")?;
    if let Some(line) = daemon.log().lines().find(|l| l.contains("sync done")) {
        println!("rudder: {}\n", line.trim());
    }
    println!("Which backend answered each request:");
    show(&topo, "pod-111", "10.96.100.100:80", Proto::Tcp, 12)?;
    show(&topo, "pod-111", "10.96.100.100:53", Proto::Udp, 12)?;
    show(&topo, "pod-111", "[fd00:10:96::100]:80", Proto::Tcp, 12)?;
    show(&topo, "node", "10.96.100.100:80", Proto::Tcp, 12)?;
    show(&topo, "client", "172.18.0.2:30001", Proto::Tcp, 12)?;
    show(&topo, "client", "192.168.122.111:80", Proto::Tcp, 12)?;
    show(&topo, "client", "192.168.122.200:80", Proto::Tcp, 12)?;
    show(&topo, "pod-111", "10.96.100.110:5432", Proto::Tcp, 6)?;
    show(&topo, "pod-111", "10.96.100.120:80", Proto::Tcp, 3)?;
    println!(
        "\n(10.96.100.110 is a selectorless service with a hand-written EndpointSlice: only 222;"
    );
    println!(" 10.96.100.120 has no endpoints: connections are refused at once.)");
    let terminated = daemon.terminate(Duration::from_secs(5))?;
    println!(
        "\nrudder stopped ({}); namespaces are removed now.",
        if terminated { "clean exit" } else { "killed" }
    );
    Ok(())
}
