//! The binary's commands and lifecycle: SIGTERM and `cleanup`, `--write-config-to`, `compile` against `run`, invalid config files, IPVS mode on a kernel without IPVS.

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

/// Whether this kernel has IPVS or could load it (the generic netlink lookup Rudder does would
/// autoload an `ip_vs` module): the test below is for kernels that cannot.
fn kernel_may_have_ipvs() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let modules = Path::new("/lib/modules").join(release.trim());
    let lists = |name: &str| {
        std::fs::read_to_string(modules.join(name)).is_ok_and(|t| t.contains("/ip_vs.ko"))
    };
    Path::new("/proc/net/ip_vs").exists()
        || Path::new("/sys/module/ip_vs").exists()
        || lists("modules.dep")
        || lists("modules.builtin")
}

#[test]
fn ipvs_mode_on_a_kernel_without_ipvs_exits_at_once_naming_ip_vs_and_changes_nothing() {
    if !e2e_enabled() {
        return;
    }
    if kernel_may_have_ipvs() {
        eprintln!("SKIPPED: this kernel has IPVS (the VM tests cover the IPVS mode)");
        return;
    }
    let ns = rudder_e2e::Netns::new("noipvs").expect("netns");
    let manifests = TempDir::new("noipvs").expect("temp dir");
    for f in ["node.yaml", "nginx.yaml"] {
        let text = std::fs::read_to_string(example_dir().join(f)).expect("example manifest");
        manifests.write(f, &text).expect("copy manifest");
    }
    // What the daemon would set first (conntrack, IPVS and strict-ARP sysctls), read back after.
    let sysctls = [
        "net.ipv4.ip_forward",
        "net.ipv4.conf.all.arp_ignore",
        "net.ipv4.conf.all.arp_announce",
        "net.netfilter.nf_conntrack_tcp_timeout_established",
        "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
    ];
    let read = || -> Vec<String> {
        sysctls
            .iter()
            .map(|k| match ns.exec(&["sysctl", "-n", k]) {
                Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
                Err(_) => "(absent)".to_owned(),
            })
            .collect()
    };
    let before = read();
    let dir = manifests.path().display().to_string();
    let started = Instant::now();
    let mut daemon = Daemon::start(
        &rudder_bin(),
        &ns,
        &[
            "run",
            "--proxy-mode",
            "ipvs",
            "--manifests",
            &dir,
            "--hostname-override",
            "node-1",
            "--ipvs-strict-arp",
            "--ipvs-tcp-timeout",
            "1h",
        ],
    )
    .expect("start rudder");
    let status = loop {
        if let Some(status) = daemon.exited().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still running on a kernel without IPVS:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = daemon.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("this kernel has no IPVS") && log.contains("modprobe ip_vs"),
        "the error names the missing module:\n{log}"
    );
    assert!(!log.contains("sync done"), "{log}");
    // Nothing was half-programmed: no sysctl changed, no table, no dummy interface.
    assert_eq!(read(), before, "sysctls {sysctls:?} changed:\n{log}");
    let tables = ns.exec(&["nft", "list", "tables"]).expect("nft");
    assert!(
        String::from_utf8_lossy(&tables.stdout).trim().is_empty(),
        "{tables:?}"
    );
    let links = ns.exec(&["ip", "-o", "link"]).expect("ip link");
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("kube-ipvs0"),
        "{links:?}"
    );
}
