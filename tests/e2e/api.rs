//! End-to-end tests against a live list/watch API server: the real `rudder` binary runs in a
//! node namespace with a kubeconfig (bearer token) pointing at the fake API server, which
//! listens inside the client namespace (reached over the node's veth). Changes made through
//! the server must show up in the kernel, proven by real connections.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use rudder_e2e::client::histogram_with_timeout;
use rudder_e2e::{
    Daemon, EchoServers, Netns, Proto, TempDir, Topology, e2e_enabled, serve_pod, tcp_request,
};
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
        "metadata": {"name": "node-1", "labels": {"topology.kubernetes.io/zone": "zone-a"}},
        "status": {"addresses": [
            {"type": "InternalIP", "address": "172.18.0.2"},
            {"type": "InternalIP", "address": "fc00:f853:ccd:e793::2"}
        ]}
    }))
    .expect("node")
}

/// A Service `default/NAME` with one TCP port; `kind` decides type, node port and LB status.
fn service(name: &str, cluster_ip: &str, port: u16, kind: &str) -> Service {
    let mut spec = json!({
        "type": kind, "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
        "ports": [{"name": "http", "port": port, "protocol": "TCP", "targetPort": 80}]
    });
    if kind != "ClusterIP" {
        spec["ports"][0]["nodePort"] = json!(30080);
    }
    let mut svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": name}, "spec": spec});
    if kind == "LoadBalancer" {
        svc["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.168.122.111"}]}});
    }
    serde_json::from_value(svc).expect("service")
}

/// The EndpointSlice of `default/SVC` with the given pod IPs on port 80.
fn slice(svc: &str, ips: &[&str]) -> EndpointSlice {
    let eps: Vec<_> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "nodeName": "node-1", "conditions": {"ready": true}}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "default", "name": format!("{svc}-abc"), "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        "endpoints": eps
    }))
    .expect("slice")
}

struct Live {
    daemon: Daemon,
    api: Option<FakeApiServer>,
    _kubeconfig: TempDir,
    _servers: Vec<EchoServers>,
    topo: Topology,
}

fn bind_api(topo: &Topology) -> TcpListener {
    topo.client
        .enter(|| TcpListener::bind(API_ADDR))
        .expect("enter client netns")
        .expect("bind API server")
}

/// Starts `rudder run` against the kubeconfig; `min_sync` is `--iptables-min-sync-period`.
fn start_daemon(topo: &Topology, kubeconfig: &TempDir, min_sync: &str) -> Daemon {
    let path = kubeconfig.path().join("kubeconfig").display().to_string();
    let args = [
        "run",
        "--kubeconfig",
        &path,
        "--hostname-override",
        "node-1",
        "--cluster-cidr",
        "10.244.0.0/16",
        "--iptables-min-sync-period",
        min_sync,
        "--iptables-sync-period",
        "2s",
    ];
    Daemon::start(&rudder_bin(), &topo.node, &args).expect("start rudder")
}

impl Live {
    /// Topology, backends 111/222/333, the API server with a node, and the daemon.
    fn start(min_sync: &str) -> Live {
        let topo = Topology::new().expect("topology");
        let servers = (0..3)
            .map(|i| serve_pod(&topo.pods[i], ["111", "222", "333"][i], &[80]).expect("echo"))
            .collect();
        let api = FakeApiServer::start(bind_api(&topo), Config::default().with_token(TOKEN))
            .expect("API server");
        api.apply_node(node());
        let kubeconfig = TempDir::new("kubeconfig").expect("temp dir");
        kubeconfig
            .write("kubeconfig", &api.kubeconfig(Some(TOKEN)))
            .expect("kubeconfig");
        let mut daemon = start_daemon(&topo, &kubeconfig, min_sync);
        daemon
            .wait_for(SYNC_DONE, 1, Duration::from_secs(20))
            .expect("first sync");
        Live {
            daemon,
            api: Some(api),
            _kubeconfig: kubeconfig,
            _servers: servers,
            topo,
        }
    }

    fn api(&self) -> &FakeApiServer {
        self.api.as_ref().expect("API server running")
    }

    fn hist(&self, from: &Netns, to: &str, n: usize) -> BTreeMap<String, usize> {
        histogram_with_timeout(from, addr(to), n, Proto::Tcp, Duration::from_millis(500))
    }

    /// Waits until requests from `from` to `to` are answered by exactly `expected` backends.
    fn converge(&self, from: &Netns, to: &str, expected: &[&str], within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let h = self.hist(from, to, 24);
            let keys: Vec<&str> = h.keys().map(String::as_str).collect();
            if keys == expected {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{to}: expected {expected:?}, still {h:?}\nlog:\n{}",
                    self.daemon.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `to` stops answering (refused or timing out).
    fn converge_gone(&self, from: &Netns, to: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while tcp_request(from, addr(to), Duration::from_millis(300)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "{to} still answers\nlog:\n{}",
                self.daemon.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

const SOON: Duration = Duration::from_secs(5);

#[test]
fn services_follow_the_api_server_through_their_lifecycle() {
    if !e2e_enabled() {
        return;
    }
    let live = Live::start("100ms");
    let pod = &live.topo.pods[0];
    let client = &live.topo.client;

    live.api()
        .apply_service(service("web", "10.96.7.1", 80, "ClusterIP"));
    live.api()
        .apply_endpoint_slice(slice("web", &["10.244.1.2", "10.244.2.2"]));
    live.converge(pod, "10.96.7.1:80", &["111", "222"], SOON);
    // Scale up, then down.
    live.api()
        .apply_endpoint_slice(slice("web", &["10.244.1.2", "10.244.2.2", "10.244.3.2"]));
    live.converge(pod, "10.96.7.1:80", &["111", "222", "333"], SOON);
    live.api()
        .apply_endpoint_slice(slice("web", &["10.244.3.2"]));
    live.converge(pod, "10.96.7.1:80", &["333"], SOON);
    // Change the port.
    live.api()
        .apply_service(service("web", "10.96.7.1", 8080, "ClusterIP"));
    live.converge(pod, "10.96.7.1:8080", &["333"], SOON);
    live.converge_gone(pod, "10.96.7.1:80", SOON);
    // ClusterIP → NodePort → LoadBalancer.
    live.api()
        .apply_service(service("web", "10.96.7.1", 8080, "NodePort"));
    live.converge(client, "172.18.0.2:30080", &["333"], SOON);
    live.api()
        .apply_service(service("web", "10.96.7.1", 8080, "LoadBalancer"));
    live.converge(client, "192.168.122.111:8080", &["333"], SOON);
    live.converge(client, "172.18.0.2:30080", &["333"], SOON);
    // Delete the service: everything stops answering.
    live.api().delete_service("default", "web");
    live.converge_gone(pod, "10.96.7.1:8080", SOON);
    live.converge_gone(client, "192.168.122.111:8080", SOON);
    live.converge_gone(client, "172.18.0.2:30080", SOON);
    assert!(
        live.daemon.log().contains("partial"),
        "changes are applied as partial syncs"
    );
}

#[test]
fn outages_keep_traffic_flowing_and_changes_apply_after_reconnection() {
    if !e2e_enabled() {
        return;
    }
    let live = Live::start("100ms");
    let pod = &live.topo.pods[1];
    live.api()
        .apply_service(service("web", "10.96.7.1", 80, "ClusterIP"));
    live.api()
        .apply_endpoint_slice(slice("web", &["10.244.1.2", "10.244.3.2"]));
    live.converge(pod, "10.96.7.1:80", &["111", "333"], SOON);

    // 1. Every watch dropped: nothing changes for traffic, new changes still arrive.
    live.api().drop_watches();
    live.converge(
        pod,
        "10.96.7.1:80",
        &["111", "333"],
        Duration::from_millis(100),
    );
    live.api()
        .apply_endpoint_slice(slice("web", &["10.244.1.2", "10.244.2.2", "10.244.3.2"]));
    live.converge(pod, "10.96.7.1:80", &["111", "222", "333"], SOON);

    // 2. The API server refuses connections for 10 s; changes are made meanwhile.
    live.api().refuse_connections_for(Duration::from_secs(10));
    live.api()
        .apply_endpoint_slice(slice("web", &["10.244.2.2"]));
    live.api()
        .apply_service(service("db", "10.96.7.2", 80, "ClusterIP"));
    live.api()
        .apply_endpoint_slice(slice("db", &["10.244.1.2"]));
    let outage_end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < outage_end {
        // Traffic never stops: the programmed rules stay while Rudder is disconnected.
        let h = live.hist(pod, "10.96.7.1:80", 6);
        assert!(
            !h.keys().any(|k| k.starts_with('<')),
            "traffic failed during the outage: {h:?}"
        );
        std::thread::sleep(Duration::from_millis(400));
    }
    live.converge(pod, "10.96.7.1:80", &["222"], Duration::from_secs(20));
    live.converge(pod, "10.96.7.2:80", &["111"], SOON);
    assert!(
        live.api().refused_connections() > 0,
        "the daemon did try to reconnect during the outage"
    );

    // 3. A deletion happens while Rudder is disconnected, then the history is compacted: the
    //    resumed watch gets 410 Gone, Rudder re-lists, and the deletion is applied.
    let lists_before = live.api().request_count("list", "services");
    live.api().refuse_connections_for(Duration::from_secs(2));
    live.api().delete_service("default", "db");
    live.api().compact();
    live.converge_gone(pod, "10.96.7.2:80", Duration::from_secs(20));
    live.converge(pod, "10.96.7.1:80", &["222"], SOON);
    assert!(
        live.api().request_count("list", "services") > lists_before,
        "re-listed after reconnecting"
    );
}

#[test]
fn rapid_endpoint_changes_coalesce_into_few_syncs() {
    if !e2e_enabled() {
        return;
    }
    let live = Live::start("1s");
    let pod = &live.topo.pods[2];
    live.api()
        .apply_service(service("web", "10.96.7.1", 80, "ClusterIP"));
    live.api()
        .apply_endpoint_slice(slice("web", &["10.244.1.2"]));
    live.converge(pod, "10.96.7.1:80", &["111"], SOON);
    let syncs_before = live.daemon.count(SYNC_DONE);
    let choices: [&[&str]; 4] = [
        &["10.244.1.2"],
        &["10.244.2.2"],
        &["10.244.1.2", "10.244.3.2"],
        &["10.244.2.2", "10.244.3.2"],
    ];
    let start = Instant::now();
    for i in 0..200 {
        live.api()
            .apply_endpoint_slice(slice("web", choices[i % 4]));
    }
    let burst = start.elapsed();
    // The last state: 200 % 4 == 0, so choices[3] was applied last.
    live.converge(pod, "10.96.7.1:80", &["222", "333"], SOON);
    std::thread::sleep(Duration::from_millis(1500));
    let syncs = live.daemon.count(SYNC_DONE) - syncs_before;
    // With a 1 s minimum period, a burst lasting `burst` can cause at most one sync per
    // started second, plus the one that applies the tail.
    let bound = burst.as_secs() as usize + 2;
    assert!(
        syncs >= 1 && syncs <= bound,
        "{syncs} syncs for 200 changes in {burst:?} (bound {bound})"
    );
    // Exactly the right rules: one frontend, two endpoints.
    let rules = rudder_e2e::nft::list_ruleset(&live.topo.node).expect("ruleset");
    assert!(
        rules.contains("10.96.7.1 . tcp . 80 . 0 : 10.244.2.2 . 80")
            || rules.contains("10.96.7.1 . tcp . 80 . 1 : 10.244.2.2 . 80"),
        "{rules}"
    );
    assert!(
        !rules.contains("10.244.1.2 . 80"),
        "stale endpoint left in the rules:\n{rules}"
    );
}

#[test]
fn a_daemon_started_before_the_api_server_converges() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new().expect("topology");
    let _servers: Vec<_> = (0..3)
        .map(|i| serve_pod(&topo.pods[i], ["111", "222", "333"][i], &[80]).expect("echo"))
        .collect();
    // Write a kubeconfig for an API server that does not exist yet.
    let kubeconfig = TempDir::new("kubeconfig").expect("temp dir");
    let placeholder =
        FakeApiServer::start_local(Config::default().with_token(TOKEN)).expect("placeholder");
    let text = placeholder
        .kubeconfig(Some(TOKEN))
        .replace(&placeholder.url(), &format!("http://{API_ADDR}"));
    drop(placeholder);
    kubeconfig.write("kubeconfig", &text).expect("kubeconfig");
    let mut daemon = start_daemon(&topo, &kubeconfig, "100ms");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        daemon.count(SYNC_DONE),
        0,
        "nothing is programmed before the lists arrive"
    );
    assert!(
        rudder_e2e::nft::list_ruleset(&topo.node)
            .expect("ruleset")
            .is_empty()
    );

    let api = FakeApiServer::start(bind_api(&topo), Config::default().with_token(TOKEN))
        .expect("API server");
    api.apply_node(node());
    api.apply_service(service("web", "10.96.7.1", 80, "ClusterIP"));
    api.apply_endpoint_slice(slice("web", &["10.244.1.2", "10.244.2.2"]));
    daemon
        .wait_for(SYNC_DONE, 1, Duration::from_secs(30))
        .expect("sync after the API server appeared");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h = histogram_with_timeout(
            &topo.pods[0],
            addr("10.96.7.1:80"),
            12,
            Proto::Tcp,
            Duration::from_millis(500),
        );
        if h.keys().map(String::as_str).collect::<Vec<_>>() == ["111", "222"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no convergence: {h:?}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_wrong_token_is_reported_and_nothing_is_programmed() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new().expect("topology");
    let api = FakeApiServer::start(bind_api(&topo), Config::default().with_token(TOKEN))
        .expect("API server");
    api.apply_node(node());
    let kubeconfig = TempDir::new("kubeconfig").expect("temp dir");
    kubeconfig
        .write("kubeconfig", &api.kubeconfig(Some("not-the-token")))
        .expect("kubeconfig");
    let mut daemon = start_daemon(&topo, &kubeconfig, "100ms");
    daemon
        .wait_for("401", 1, Duration::from_secs(10))
        .expect("the 401 is logged");
    assert_eq!(daemon.count(SYNC_DONE), 0);
    assert!(
        rudder_e2e::nft::list_ruleset(&topo.node)
            .expect("ruleset")
            .is_empty()
    );
}

#[test]
fn service_cidrs_from_the_api_server_are_applied() {
    if !e2e_enabled() {
        return;
    }
    let live = Live::start("100ms");
    live.api()
        .apply_service(service("web", "10.96.7.1", 80, "ClusterIP"));
    live.api()
        .apply_endpoint_slice(slice("web", &["10.244.1.2"]));
    live.converge(&live.topo.pods[0], "10.96.7.1:80", &["111"], SOON);
    let cidr: k8s_openapi::api::networking::v1::ServiceCIDR = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": "kubernetes"}, "spec": {"cidrs": ["10.96.0.0/16"]}
    }))
    .expect("ServiceCIDR");
    live.api().apply_service_cidr(cidr);
    let deadline = Instant::now() + SOON;
    loop {
        let rules = rudder_e2e::nft::list_ruleset(&live.topo.node).expect("ruleset");
        if rules.contains("ip daddr 10.96.0.0/16 drop") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ServiceCIDR not applied:\n{rules}\n{}",
            live.daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    live.converge(&live.topo.pods[0], "10.96.7.1:80", &["111"], SOON);
    live.api().delete_service_cidr("kubernetes");
    let deadline = Instant::now() + SOON;
    while rudder_e2e::nft::list_ruleset(&live.topo.node)
        .expect("ruleset")
        .contains("10.96.0.0/16 drop")
    {
        assert!(
            Instant::now() < deadline,
            "ServiceCIDR deletion not applied"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A ServiceCIDR over the pod network is refused by the compiler (which sees only the
    // prefix); the warning Event still lands on the object that holds it.
    let bad: k8s_openapi::api::networking::v1::ServiceCIDR = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": "over-the-pods"}, "spec": {"cidrs": ["10.244.0.0/20"]}
    }))
    .expect("ServiceCIDR");
    live.api().apply_service_cidr(bad);
    let e = wait_event(&live, "SkippedInvalidInput");
    assert_eq!(e["regarding"]["kind"], "ServiceCIDR", "{e}");
    assert_eq!(e["regarding"]["apiVersion"], "networking.k8s.io/v1", "{e}");
    assert_eq!(e["regarding"]["name"], "over-the-pods", "{e}");
    let note = e["note"].as_str().unwrap_or_default();
    assert!(
        note.starts_with("node node-1 skipped invalid input (service_cidr_overlaps_pod_network): "),
        "{e}"
    );
    assert!(
        !rudder_e2e::nft::list_ruleset(&live.topo.node)
            .expect("ruleset")
            .contains("10.244.0.0/20"),
        "a refused ServiceCIDR is not programmed"
    );
    live.converge(&live.topo.pods[0], "10.96.7.1:80", &["111"], SOON);
}

#[test]
fn policies_and_affinity_through_the_api_server() {
    if !e2e_enabled() {
        return;
    }
    let live = Live::start("100ms");
    // externalTrafficPolicy: Local with one endpoint here (node-1) and one elsewhere.
    let mut svc = service("local", "10.96.7.3", 80, "NodePort");
    svc.spec.as_mut().expect("spec").external_traffic_policy = Some("Local".into());
    live.api().apply_service(svc);
    let mut sl = slice("local", &["10.244.1.2", "10.244.2.2"]);
    if let Some(ep) = sl.endpoints.as_mut().and_then(|e| e.get_mut(1)) {
        ep.node_name = Some("node-2".into());
    }
    live.api().apply_endpoint_slice(sl);
    live.converge(&live.topo.client, "172.18.0.2:30080", &["111"], SOON);
    // ClientIP affinity.
    let mut sticky = service("sticky", "10.96.7.4", 80, "ClusterIP");
    sticky.spec.as_mut().expect("spec").session_affinity = Some("ClientIP".into());
    live.api().apply_service(sticky);
    live.api()
        .apply_endpoint_slice(slice("sticky", &["10.244.1.2", "10.244.2.2", "10.244.3.2"]));
    let deadline = Instant::now() + SOON;
    let h = loop {
        let h = live.hist(&live.topo.pods[0], "10.96.7.4:80", 20);
        if !h.keys().any(|k| k.starts_with('<')) {
            break h;
        }
        assert!(
            Instant::now() < deadline,
            "sticky service never answered: {h:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(h.len(), 1, "one client, one endpoint: {h:?}");
}

/// Waits for an Event with this reason and returns it.
fn wait_event(live: &Live, reason: &str) -> serde_json::Value {
    let deadline = Instant::now() + SOON;
    loop {
        if let Some(e) = live
            .api()
            .events()
            .into_iter()
            .find(|e| e["reason"] == reason)
        {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no {reason} event; events: {:?}\nlog:\n{}",
            live.api().events(),
            live.daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn events_are_recorded_like_kube_proxys() {
    if !e2e_enabled() {
        return;
    }
    let live = Live::start("100ms");
    // `Starting` on the Node, once.
    let e = wait_event(&live, "Starting");
    assert_eq!(e["type"], "Normal", "{e}");
    assert_eq!(e["regarding"]["kind"], "Node", "{e}");
    assert_eq!(e["regarding"]["name"], "node-1", "{e}");
    assert_eq!(e["reportingController"], "rudder", "{e}");
    assert_eq!(e["reportingInstance"], "node-1", "{e}");
    // A health check node port that is already taken on this node (by Rudder's own health
    // server, 0.0.0.0:10256): a warning Event on the Service, and the rest keeps working.
    let mut svc = service("hc-clash", "10.96.7.9", 80, "LoadBalancer");
    let spec = svc.spec.as_mut().expect("spec");
    spec.external_traffic_policy = Some("Local".into());
    spec.health_check_node_port = Some(10256);
    live.api().apply_service(svc);
    live.api()
        .apply_endpoint_slice(slice("hc-clash", &["10.244.1.2"]));
    live.converge(&live.topo.pods[0], "10.96.7.9:80", &["111"], SOON);
    let e = wait_event(&live, "FailedToStartServiceHealthcheck");
    assert_eq!(e["type"], "Warning", "{e}");
    assert_eq!(e["regarding"]["kind"], "Service", "{e}");
    assert_eq!(e["regarding"]["namespace"], "default", "{e}");
    assert_eq!(e["regarding"]["name"], "hc-clash", "{e}");
    let note = e["note"].as_str().unwrap_or_default();
    assert!(
        note.starts_with(
            "node node-1 failed to start healthcheck \"default/hc-clash\" on port 10256: "
        ),
        "{e}"
    );
    // A Service on a loopback address is refused: a warning Event on it, once, however often
    // it is read again (an update of it, a relist).
    live.api()
        .apply_service(service("on-loopback", "127.0.0.1", 80, "ClusterIP"));
    let e = wait_event(&live, "SkippedInvalidInput");
    assert_eq!(e["type"], "Warning", "{e}");
    assert_eq!(e["regarding"]["kind"], "Service", "{e}");
    assert_eq!(e["regarding"]["apiVersion"], "v1", "{e}");
    assert_eq!(e["regarding"]["namespace"], "default", "{e}");
    assert_eq!(e["regarding"]["name"], "on-loopback", "{e}");
    let note = e["note"].as_str().unwrap_or_default();
    assert!(
        note.starts_with("node node-1 skipped invalid input (special_cluster_ip): "),
        "{e}"
    );
    let mut again = service("on-loopback", "127.0.0.1", 80, "ClusterIP");
    again.metadata.labels = Some([("touched".to_owned(), "yes".to_owned())].into());
    live.api().apply_service(again);
    // The update is seen (a later, valid change is applied after it)...
    live.api()
        .apply_service(service("after-loopback", "10.96.7.10", 80, "ClusterIP"));
    live.api()
        .apply_endpoint_slice(slice("after-loopback", &["10.244.1.2"]));
    live.converge(&live.topo.pods[0], "10.96.7.10:80", &["111"], SOON);
    // ... and made no second Event.
    let skipped = live
        .api()
        .events()
        .iter()
        .filter(|e| e["reason"] == "SkippedInvalidInput" && e["regarding"]["name"] == "on-loopback")
        .count();
    assert_eq!(skipped, 1);
    let starting = live
        .api()
        .events()
        .iter()
        .filter(|e| e["reason"] == "Starting")
        .count();
    assert_eq!(starting, 1);
}

#[test]
fn a_frontend_conflict_is_a_warning_event_on_the_loser_and_the_winner_keeps_answering() {
    if !e2e_enabled() {
        return;
    }
    let live = Live::start("100ms");
    // `owner` has 10.96.7.20:80; `thief` repeats it as an external IP. The ClusterIP wins
    // (it is allocated by the API server): `owner`'s backend answers, and `thief` gets a
    // SkippedInvalidInput warning naming the rule.
    live.api()
        .apply_service(service("owner", "10.96.7.20", 80, "ClusterIP"));
    live.api()
        .apply_endpoint_slice(slice("owner", &["10.244.1.2"]));
    let mut thief = service("thief", "10.96.7.21", 80, "ClusterIP");
    thief.spec.as_mut().expect("spec").external_ips = Some(vec!["10.96.7.20".into()]);
    live.api().apply_service(thief);
    live.api()
        .apply_endpoint_slice(slice("thief", &["10.244.2.2"]));
    live.converge(&live.topo.pods[2], "10.96.7.21:80", &["222"], SOON);
    let e = wait_event(&live, "SkippedInvalidInput");
    assert_eq!(e["type"], "Warning", "{e}");
    assert_eq!(e["regarding"]["kind"], "Service", "{e}");
    assert_eq!(e["regarding"]["name"], "thief", "{e}");
    let note = e["note"].as_str().unwrap_or_default();
    assert!(
        note.starts_with("node node-1 skipped invalid input (frontend_conflict): "),
        "{e}"
    );
    assert!(note.contains("10.96.7.20"), "{e}");
    // The winner keeps its frontend, whatever the order the objects arrived in.
    live.converge(&live.topo.pods[2], "10.96.7.20:80", &["111"], SOON);
    // No Event for the winner.
    let on_owner = live
        .api()
        .events()
        .iter()
        .filter(|e| e["reason"] == "SkippedInvalidInput" && e["regarding"]["name"] == "owner")
        .count();
    assert_eq!(on_owner, 0);
}
