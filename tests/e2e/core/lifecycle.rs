//! The binary's commands and lifecycle: SIGTERM and `cleanup`, `--write-config-to`, `compile` against `run`, invalid config files.

use super::*;

#[test]
fn sigterm_leaves_rules_in_place_and_cleanup_restores_the_namespace() {
    if !e2e_enabled() {
        return;
    }
    let topo_only = Topology::new().expect("topology");
    // A table of someone else's, which cleanup must leave alone.
    nft::load(
        &topo_only.node,
        "add table inet other\nadd chain inet other c { type filter hook input priority 0 ; }\n",
    )
    .expect("foreign table");
    let before = nft::list_ruleset(&topo_only.node).expect("ruleset before");
    drop(topo_only);

    let mut c = Cluster::start(&[]);
    nft::load(
        &c.topo.node,
        "add table inet other\nadd chain inet other c { type filter hook input priority 0 ; }\n",
    )
    .expect("foreign table");
    assert!(
        c.daemon
            .terminate(Duration::from_secs(5))
            .expect("terminate"),
        "clean exit on SIGTERM"
    );
    // Rules survive the daemon.
    assert_all_backends(
        &c.hist(&c.topo.pods[0], "10.96.100.100:80", 30, Proto::Tcp),
        "after SIGTERM",
    );
    let out = c
        .topo
        .node
        .command(&rudder_bin().display().to_string())
        .arg("cleanup")
        .output()
        .expect("cleanup");
    assert!(
        out.status.success(),
        "cleanup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = nft::list_ruleset(&c.topo.node).expect("ruleset after");
    assert_same_text(&after, &before, "cleanup leaves exactly the foreign table");
    let r = tcp_request(
        &c.topo.pods[0],
        addr("10.96.100.100:80"),
        Duration::from_millis(300),
    );
    assert!(r.is_err(), "no rules after cleanup: {r:?}");
    // Cleanup of nothing succeeds.
    let out = c
        .topo
        .node
        .command(&rudder_bin().display().to_string())
        .arg("cleanup")
        .output()
        .expect("cleanup");
    assert!(out.status.success());
    // kube-proxy's spelling, `run --cleanup`, does the same and starts nothing.
    nft::load(
        &c.topo.node,
        "add table ip rudder\nadd chain ip rudder c\nadd table ip6 rudder\n",
    )
    .expect("leftover tables");
    let out = c
        .topo
        .node
        .command(&rudder_bin().display().to_string())
        .args(["run", "--cleanup", "--manifests", "/nonexistent"])
        .output()
        .expect("run --cleanup");
    assert!(
        out.status.success(),
        "run --cleanup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = nft::list_ruleset(&c.topo.node).expect("ruleset after --cleanup");
    assert_same_text(
        &after,
        &before,
        "--cleanup leaves exactly the foreign table",
    );
}

#[test]
fn write_config_to_writes_the_effective_config_and_exits() {
    let dir = rudder_e2e::TempDir::new("write-config").expect("tempdir");
    let input = dir.path().join("in.yaml");
    std::fs::write(
        &input,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nclusterCIDR: 10.244.0.0/16\nnftables: {syncPeriod: 1m, masqueradeAll: true}\n",
    )
    .expect("write input");
    let output = dir.path().join("out.yaml");
    // No netns: this must not touch the kernel, and it must not wait for an API server.
    let out = std::process::Command::new(rudder_bin())
        .arg("run")
        .arg("--config")
        .arg(&input)
        .args(["--iptables-min-sync-period", "3s", "--write-config-to"])
        .arg(&output)
        .output()
        .expect("run --write-config-to");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read_to_string(&output).expect("written config");
    let doc: serde_norway::Value = serde_norway::from_str(&written).expect("YAML");
    let get = |path: &[&str]| {
        let mut v = &doc;
        for k in path {
            v = &v[*k];
        }
        v.clone()
    };
    assert_eq!(
        get(&["kind"]),
        serde_norway::Value::from("KubeProxyConfiguration")
    );
    assert_eq!(
        get(&["clusterCIDR"]),
        serde_norway::Value::from("10.244.0.0/16")
    );
    assert_eq!(
        get(&["nftables", "syncPeriod"]),
        serde_norway::Value::from("1m0s")
    );
    assert_eq!(
        get(&["nftables", "minSyncPeriod"]),
        serde_norway::Value::from("3s"),
        "the flag wins"
    );
    assert_eq!(
        get(&["nftables", "masqueradeAll"]),
        serde_norway::Value::from(true)
    );
    assert_eq!(
        get(&["metricsBindAddress"]),
        serde_norway::Value::from("127.0.0.1:10249")
    );
}

#[test]
fn compile_output_loads_and_matches_what_run_programs() {
    if !e2e_enabled() {
        return;
    }
    let c = Cluster::start(&[]);
    let out = std::process::Command::new(rudder_bin())
        .args(["compile", "--manifests"])
        .arg(example_dir())
        .args([
            "--hostname-override",
            "node-1",
            "--cluster-cidr",
            "10.244.0.0/16,fd00:10:244::/56",
        ])
        .output()
        .expect("compile");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let compiled = String::from_utf8(out.stdout).expect("utf-8");
    let running = nft::list_ruleset(&c.topo.node).expect("ruleset");
    // Load the compiled text into a fresh namespace: the kernel lists the same ruleset.
    let fresh = rudder_e2e::Netns::new("compiled").expect("netns");
    nft::load(&fresh, &compiled).expect("compiled output loads");
    assert_same_text(
        &nft::list_ruleset(&fresh).expect("ruleset"),
        &running,
        "compiled vs running",
    );
    // Loading it again replaces the tables atomically instead of failing.
    nft::load(&fresh, &compiled).expect("compiled output reloads");
    assert_same_text(
        &nft::list_ruleset(&fresh).expect("ruleset"),
        &running,
        "reloaded vs running",
    );
}

#[test]
fn an_invalid_config_file_exits_with_code_1_and_names_the_field() {
    let dir = TempDir::new("config").expect("temp dir");
    let path = dir
        .write(
            "kube-proxy.yaml",
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nnftables: {masqueradeBit: 99}\n",
        )
        .expect("write");
    let out = std::process::Command::new(rudder_bin())
        .args(["run", "--manifests", "/nonexistent", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("masqueradeBit"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
