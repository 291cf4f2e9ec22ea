//! `spec.externalIPs` deprecation (KEP-5707): with kube-proxy's `AllowServiceExternalIPs`
//! feature gate off, external IPs are not programmed and each Service that has some gets a
//! warning Event; the rest of the Service keeps working. With the gate on (the default) they
//! work as before (see `core::nodeport_loadbalancer_and_external_ip_from_outside_are_masqueraded`).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use rudder_e2e::{Daemon, EchoServers, TempDir, Topology, e2e_enabled, serve_pod, tcp_request};
use rudder_fake_apiserver::{Config, FakeApiServer};
use serde_json::json;

const TOKEN: &str = "rudder-e2e-token";
const API_ADDR: &str = "172.18.0.10:6443";
const SYNC_DONE: &str = "sync done";

fn rudder_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rudder"))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn node() -> Node {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"}]}
    }))
    .expect("node")
}

fn service(label: &str) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "default", "name": "ext", "labels": {"try": label}},
        "spec": {
            "clusterIP": "10.96.8.1", "clusterIPs": ["10.96.8.1"],
            "externalIPs": ["192.168.122.200"],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80}]
        }
    }))
    .expect("service")
}

fn slice() -> EndpointSlice {
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "default", "name": "ext-abc", "labels": {"kubernetes.io/service-name": "ext"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.244.1.2"], "nodeName": "node-1"}]
    }))
    .expect("slice")
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool, log: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "{what}\nlog:\n{}", log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn with_allow_service_external_ips_off_external_ips_are_not_programmed_and_warned_about() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new().expect("topology");
    let _servers: Vec<EchoServers> = vec![serve_pod(&topo.pods[0], "111", &[80]).expect("echo")];
    let listener = topo
        .client
        .enter(|| TcpListener::bind(API_ADDR))
        .expect("enter client netns")
        .expect("bind API server");
    let api = FakeApiServer::start(listener, Config::default().with_token(TOKEN)).expect("API");
    api.apply_node(node());
    api.apply_service(service("1"));
    api.apply_endpoint_slice(slice());
    let kubeconfig = TempDir::new("kubeconfig").expect("temp dir");
    kubeconfig
        .write("kubeconfig", &api.kubeconfig(Some(TOKEN)))
        .expect("kubeconfig");
    // The gate from the config file, as kube-proxy's `featureGates`.
    let config = kubeconfig
        .write(
            "config.yaml",
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nfeatureGates: {AllowServiceExternalIPs: false}\n",
        )
        .expect("config");
    let kc = kubeconfig.path().join("kubeconfig").display().to_string();
    let cfg = config.display().to_string();
    let mut daemon = Daemon::start(
        &rudder_bin(),
        &topo.node,
        &[
            "run",
            "--config",
            &cfg,
            "--kubeconfig",
            &kc,
            "--hostname-override",
            "node-1",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--iptables-min-sync-period",
            "100ms",
        ],
    )
    .expect("start rudder");
    daemon
        .wait_for(SYNC_DONE, 1, Duration::from_secs(20))
        .expect("first sync");
    // The ClusterIP works; the external IP is not programmed.
    assert_eq!(
        tcp_request(&topo.pods[1], addr("10.96.8.1:80"), Duration::from_secs(2)).ok(),
        Some("111".to_string())
    );
    let ext = tcp_request(
        &topo.client,
        addr("192.168.122.200:80"),
        Duration::from_millis(700),
    );
    assert!(ext.is_err(), "the external IP answers: {ext:?}");
    // A warning Event on the Service, once however often it is read again.
    let events = || {
        api.events()
            .into_iter()
            .filter(|e| e["reason"] == "ExternalIPsDisabled")
            .collect::<Vec<_>>()
    };
    wait_until(
        "no ExternalIPsDisabled event",
        || !events().is_empty(),
        || daemon.log(),
    );
    let e = &events()[0];
    assert_eq!(e["type"], "Warning", "{e}");
    assert_eq!(e["regarding"]["kind"], "Service", "{e}");
    assert_eq!(e["regarding"]["name"], "ext", "{e}");
    let note = e["note"].as_str().unwrap_or_default();
    assert!(note.contains("192.168.122.200"), "{e}");
    let syncs = daemon.count(SYNC_DONE);
    api.apply_service(service("2"));
    let _ = daemon.wait_for(SYNC_DONE, syncs + 1, Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(events().len(), 1, "one Event per Service, not per read");
    assert_eq!(daemon.count("ExternalIPsDisabled"), 1, "{}", daemon.log());

    // `rudder compile` follows the gate too.
    let dir = TempDir::new("ext-compile").expect("temp dir");
    let manifest = serde_json::to_string(&service("1")).expect("json");
    dir.write("svc.json", &manifest).expect("write");
    let node_yaml = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/nginx/node.yaml");
    for (gate, expect) in [("true", true), ("false", false)] {
        let out = std::process::Command::new(rudder_bin())
            .args([
                "compile",
                "--manifests",
                &dir.path().display().to_string(),
                "--manifests",
                &node_yaml.display().to_string(),
                "--hostname-override",
                "node-1",
                "--feature-gates",
                &format!("AllowServiceExternalIPs={gate}"),
            ])
            .output()
            .expect("compile");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.contains("192.168.122.200"), expect, "gate {gate}");
    }
}
