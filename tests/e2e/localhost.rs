//! Localhost node ports (KEP-6032): with `--nodeport-addresses` listing the loopback
//! addresses, connections from the node to `127.0.0.1:<nodePort>` and `[::1]:<nodePort>`
//! reach the service through Rudder's userspace proxy, never through `route_localnet`.
//!
//! Every connection here is made from inside the node namespace to its own loopback
//! addresses; the endpoints are the pods of `rudder_e2e::Topology`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rudder_e2e::client::histogram_with_timeout;
use rudder_e2e::{
    Daemon, EchoServers, Netns, Proto, RequestError, TempDir, Topology, e2e_enabled, serve_pod,
    tcp_request, udp_request,
};

const NAMES: [&str; 3] = ["111", "222", "333"];
const SYNC_DONE: &str = "sync done";
/// The port of the stream servers in the pods (see [`StreamServer`]).
const STREAM_PORT: u16 = 7000;

fn rudder_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rudder"))
}

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/nginx")
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test socket address")
}

/// An endpoint line for an EndpointSlice.
fn ep(ip: &str, node: &str) -> String {
    format!("- addresses: [\"{ip}\"]\n  nodeName: {node}\n")
}

/// A NodePort Service (with its ClusterIPs) and one EndpointSlice per family given.
fn node_port_service(
    name: &str,
    cluster_ips: &[&str],
    proto: &str,
    node_port: u16,
    target: u16,
    extra_spec: &str,
    slices: &[(&str, Vec<String>)],
) -> String {
    let ips: Vec<String> = cluster_ips.iter().map(|ip| format!("\"{ip}\"")).collect();
    let mut out = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  type: NodePort
  clusterIP: \"{first}\"
  clusterIPs: [{ips}]
{extra_spec}  ports:
  - {{name: p, port: 80, protocol: {proto}, targetPort: {target}, nodePort: {node_port}}}
",
        first = cluster_ips[0],
        ips = ips.join(", ")
    );
    for (family, eps) in slices {
        out.push_str(&format!(
            "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-{family}
  namespace: default
  labels: {{kubernetes.io/service-name: {name}}}
addressType: {family}
ports: [{{name: p, port: {target}, protocol: {proto}}}]
{}",
            if eps.is_empty() {
                "endpoints: []\n".to_string()
            } else {
                format!("endpoints:\n{}", eps.concat())
            }
        ));
    }
    out
}

/// The services of these tests (see each test for what it expects of them).
fn services(stream_endpoints: &[usize], topo: &Topology) -> String {
    let all4: Vec<String> = (0..3)
        .map(|i| ep(&topo.pod_ipv4(i).to_string(), "node-1"))
        .collect();
    let all6: Vec<String> = (0..3)
        .map(|i| ep(&topo.pod_ipv6(i).to_string(), "node-1"))
        .collect();
    let stream: Vec<String> = stream_endpoints
        .iter()
        .map(|i| ep(&topo.pod_ipv4(*i).to_string(), "node-1"))
        .collect();
    [
        node_port_service(
            "web",
            &["10.96.50.1", "fd00:10:96::50:1"],
            "TCP",
            30080,
            80,
            "  ipFamilies: [IPv4, IPv6]\n  ipFamilyPolicy: RequireDualStack\n",
            &[("IPv4", all4), ("IPv6", all6)],
        ),
        node_port_service(
            "stream",
            &["10.96.50.2"],
            "TCP",
            30070,
            STREAM_PORT,
            "",
            &[("IPv4", stream)],
        ),
        // externalTrafficPolicy: Local: pod 0 is on this node, pods 1 and 2 elsewhere.
        node_port_service(
            "local",
            &["10.96.50.3"],
            "TCP",
            30081,
            80,
            "  externalTrafficPolicy: Local\n",
            &[(
                "IPv4",
                vec![
                    ep(&topo.pod_ipv4(0).to_string(), "node-1"),
                    ep(&topo.pod_ipv4(1).to_string(), "node-2"),
                    ep(&topo.pod_ipv4(2).to_string(), "node-2"),
                ],
            )],
        ),
        // Local, with endpoints only elsewhere.
        node_port_service(
            "nolocal",
            &["10.96.50.4"],
            "TCP",
            30082,
            80,
            "  externalTrafficPolicy: Local\n",
            &[("IPv4", vec![ep(&topo.pod_ipv4(1).to_string(), "node-2")])],
        ),
        // No endpoints at all.
        node_port_service("empty", &["10.96.50.5"], "TCP", 30083, 80, "", &[]),
        // UDP: not proxied, rejected on loopback.
        node_port_service(
            "dns",
            &["10.96.50.6"],
            "UDP",
            30053,
            5353,
            "",
            &[("IPv4", vec![ep(&topo.pod_ipv4(0).to_string(), "node-1")])],
        ),
    ]
    .join("---\n")
}

/// Servers in a pod on [`STREAM_PORT`]: each connection first gets `"{name}\n"`, then
/// everything it sends is echoed back until it closes its side.
struct StreamServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StreamServer {
    fn start(pod: &Netns, name: &str) -> StreamServer {
        let listener = pod
            .enter(|| TcpListener::bind(("0.0.0.0", STREAM_PORT)))
            .expect("enter pod")
            .expect("bind stream server");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let name = format!("{name}\n");
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let name = name.clone();
                        std::thread::spawn(move || {
                            let _ = s.set_nonblocking(false);
                            let _ = s.write_all(name.as_bytes());
                            let mut buf = vec![0u8; 64 * 1024];
                            loop {
                                match s.read(&mut buf) {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => {
                                        if s.write_all(&buf[..n]).is_err() {
                                            break;
                                        }
                                    }
                                }
                            }
                            let _ = s.shutdown(std::net::Shutdown::Write);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_micros(100)),
                }
            }
        });
        StreamServer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for StreamServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A long-lived connection made from the node namespace.
struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(node: &Netns, to: SocketAddr) -> std::io::Result<Conn> {
        let s = node.enter(|| TcpStream::connect_timeout(&to, Duration::from_secs(2)))??;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        Ok(Conn {
            reader: BufReader::new(s),
        })
    }

    fn line(&mut self) -> std::io::Result<String> {
        let mut l = String::new();
        let n = self.reader.read_line(&mut l)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(l.trim().to_owned())
    }

    /// Sends a line and reads its echo.
    fn echo(&mut self, text: &str) -> std::io::Result<String> {
        self.reader
            .get_mut()
            .write_all(format!("{text}\n").as_bytes())?;
        self.line()
    }
}

/// Rudder on the node of a topology, with servers in its pods and editable manifests.
struct Node {
    daemon: Option<Daemon>,
    manifests: TempDir,
    _servers: Vec<EchoServers>,
    _streams: Vec<StreamServer>,
}

impl Node {
    fn new(topo: &Topology) -> Node {
        let servers = (0..3)
            .map(|i| serve_pod(&topo.pods[i], NAMES[i], &[80, 5353]).expect("echo servers"))
            .collect();
        let streams = (0..3)
            .map(|i| StreamServer::start(&topo.pods[i], NAMES[i]))
            .collect();
        let manifests = TempDir::new("localhost").expect("temp dir");
        let node = std::fs::read_to_string(example_dir().join("node.yaml")).expect("node.yaml");
        manifests.write("node.yaml", &node).expect("write node");
        manifests
            .write("services.yaml", &services(&[0, 1], topo))
            .expect("write services");
        Node {
            daemon: None,
            manifests,
            _servers: servers,
            _streams: streams,
        }
    }

    fn start(&mut self, topo: &Topology, nodeport_addresses: &str) {
        let listeners =
            nodeport_addresses.contains("localhost") || nodeport_addresses.contains("127.0.0.1/");
        self.start_with(
            topo,
            &["--nodeport-addresses", nodeport_addresses],
            listeners,
        );
    }

    /// Starts the daemon with `extra` arguments; `listeners`: wait for the first localhost
    /// listener too.
    fn start_with(&mut self, topo: &Topology, extra: &[&str], listeners: bool) {
        let dir = self.manifests.path().display().to_string();
        let mut args = vec![
            "run",
            "--manifests",
            &dir,
            "--hostname-override",
            "node-1",
            "--cluster-cidr",
            "10.244.0.0/16,fd00:10:244::/56",
            "--iptables-min-sync-period",
            "100ms",
            "--manifests-poll-interval",
            "50ms",
        ];
        args.extend_from_slice(extra);
        let mut daemon = Daemon::start(&rudder_bin(), &topo.node, &args).expect("start");
        daemon
            .wait_for(SYNC_DONE, 1, Duration::from_secs(20))
            .expect("first sync");
        // The listeners start right after the sync, on a task of their own.
        if listeners {
            daemon
                .wait_for("serving localhost node port", 1, Duration::from_secs(5))
                .expect("localhost listeners");
        }
        self.daemon = Some(daemon);
    }

    fn stop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            assert!(d.terminate(Duration::from_secs(10)).expect("terminate"));
        }
    }

    fn daemon(&mut self) -> &mut Daemon {
        self.daemon.as_mut().expect("daemon running")
    }

    /// Rewrites the services and waits for the sync.
    fn set_stream_endpoints(&mut self, topo: &Topology, pods: &[usize]) {
        let text = services(pods, topo);
        let syncs = self.daemon().count(SYNC_DONE);
        self.manifests.write("services.yaml", &text).expect("write");
        self.daemon()
            .wait_for(SYNC_DONE, syncs + 1, Duration::from_secs(10))
            .expect("sync after the edit");
    }
}

fn hist(node: &Netns, to: &str, n: usize) -> BTreeMap<String, usize> {
    histogram_with_timeout(node, addr(to), n, Proto::Tcp, Duration::from_secs(2))
}

/// The whole HTTP/1.0 response to `GET path` from `to`, made from the node.
fn http_get(node: &Netns, to: &str, path: &str) -> String {
    node.enter(|| -> std::io::Result<String> {
        let mut s = TcpStream::connect(to)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .expect("enter node")
    .unwrap_or_else(|e| panic!("GET {to}{path}: {e}"))
}

fn metrics(node: &Netns) -> String {
    http_get(node, "127.0.0.1:10249", "/metrics")
}

fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// Asserts that a TCP connection to `to` from the node is refused, and at once.
fn assert_refused_at_once(node: &Netns, to: &str, what: &str) {
    let t0 = Instant::now();
    let r = tcp_request(node, addr(to), Duration::from_secs(2));
    let took = t0.elapsed();
    assert!(
        matches!(r, Err(RequestError::Refused)),
        "{what}: expected a refusal, got {r:?}"
    );
    assert!(
        took < Duration::from_millis(500),
        "{what}: refused only after {took:?}"
    );
}

fn assert_backends(hist: &BTreeMap<String, usize>, expected: &[&str], what: &str) {
    let keys: Vec<&str> = hist.keys().map(String::as_str).collect();
    assert_eq!(keys, expected, "{what}: got {hist:?}");
}

#[test]
fn localhost_node_ports_reach_services_and_follow_their_endpoints() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new().expect("topology");
    let node = &topo.node;
    let mut n = Node::new(&topo);
    n.start(&topo, "primary,localhost");

    // Both loopback addresses reach every backend; the node's primary IP still works from
    // outside, through the kernel's rules.
    assert_backends(&hist(node, "127.0.0.1:30080", 60), &NAMES, "127.0.0.1");
    assert_backends(&hist(node, "[::1]:30080", 60), &NAMES, "[::1]");
    assert_backends(
        &histogram_with_timeout(
            &topo.client,
            addr("172.18.0.2:30080"),
            30,
            Proto::Tcp,
            Duration::from_secs(2),
        ),
        &NAMES,
        "primary IP from the client",
    );
    // externalTrafficPolicy: Local: this node's endpoint only; none here: refused at once.
    assert_backends(&hist(node, "127.0.0.1:30081", 30), &["111"], "Local");
    assert_refused_at_once(node, "127.0.0.1:30082", "Local without local endpoints");
    assert_refused_at_once(node, "127.0.0.1:30083", "no endpoints");
    // A single-stack IPv4 service has no IPv6 listener.
    assert_refused_at_once(node, "[::1]:30081", "IPv4-only service on ::1");

    // UDP is not proxied (as in kube-proxy): a loopback node port is rejected, even though a
    // host process listens there; the node's primary IP serves it through the kernel.
    let host_udp = node
        .enter(|| UdpSocket::bind("127.0.0.1:30053"))
        .expect("enter")
        .expect("bind host UDP socket");
    host_udp
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    // (Rejected on the output path, so the sender's own send fails with EPERM at once.)
    let r = udp_request(node, addr("127.0.0.1:30053"), Duration::from_secs(1));
    assert!(
        matches!(&r, Err(RequestError::Other(e)) if e.kind() == std::io::ErrorKind::PermissionDenied),
        "UDP on a loopback node port: {r:?}"
    );
    let mut buf = [0u8; 16];
    assert!(
        host_udp.recv_from(&mut buf).is_err(),
        "the host socket must not see the datagram"
    );
    assert_eq!(
        udp_request(
            &topo.client,
            addr("172.18.0.2:30053"),
            Duration::from_secs(2)
        )
        .expect("UDP node port on the primary IP"),
        "111"
    );

    // Metrics: one listener per family and TCP node port with usable endpoints.
    let m = metrics(node);
    for name in [
        "kubeproxy_nftables_localhost_nodeport_listeners",
        "kubeproxy_localhost_nodeport_listeners",
    ] {
        assert_eq!(
            metric(&m, &format!("{name}{{ip_family=\"IPv4\"}}")),
            Some(3.0),
            "{name}\n{m}"
        );
        assert_eq!(
            metric(&m, &format!("{name}{{ip_family=\"IPv6\"}}")),
            Some(1.0),
            "{name}\n{m}"
        );
    }
    assert!(
        metric(
            &m,
            "rudder_localhost_nodeport_connections_total{ip_family=\"IPv4\",outcome=\"proxied\"}"
        )
        .is_some_and(|v| v >= 90.0),
        "{m}"
    );
    // Never route_localnet.
    let out = node
        .exec(&["cat", "/proc/sys/net/ipv4/conf/all/route_localnet"])
        .expect("read sysctl");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");

    // Endpoint changes while connected: an open connection keeps its endpoint, new ones
    // use only the new endpoints.
    let mut kept = Conn::open(node, addr("127.0.0.1:30070")).expect("connect");
    let first = kept.line().expect("greeting");
    assert_eq!(kept.echo("hello").expect("echo"), "hello");
    let (gone, other) = if first == "111" { (0, 1) } else { (1, 0) };
    assert!(first == NAMES[gone]);
    n.set_stream_endpoints(&topo, &[other, 2]);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let mut c = Conn::open(node, addr("127.0.0.1:30070")).expect("connect");
        seen.insert(c.line().expect("greeting"));
    }
    let expected: std::collections::BTreeSet<String> = [NAMES[other], NAMES[2]]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(seen, expected, "new connections use the new endpoints");
    assert_eq!(
        kept.echo("still there")
            .expect("the open connection keeps its endpoint"),
        "still there"
    );

    // No endpoints left: the listener goes, new connections are refused at once and the
    // open one is closed.
    n.set_stream_endpoints(&topo, &[]);
    assert_refused_at_once(node, "127.0.0.1:30070", "stream without endpoints");
    assert!(
        kept.echo("anyone?").is_err(),
        "the connection of a stopped listener is closed"
    );
    let m = metrics(node);
    assert_eq!(
        metric(
            &m,
            "kubeproxy_nftables_localhost_nodeport_listeners{ip_family=\"IPv4\"}"
        ),
        Some(2.0)
    );
    // And back.
    n.set_stream_endpoints(&topo, &[2]);
    let mut c = Conn::open(node, addr("127.0.0.1:30070")).expect("connect again");
    assert_eq!(c.line().expect("greeting"), "333");
    n.stop();
}

#[test]
fn localhost_listeners_start_only_for_explicit_loopback_and_come_back_after_restarts() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new().expect("topology");
    let node = &topo.node;
    let mut n = Node::new(&topo);
    // A host process listens on the loopback addresses on a node port.
    let bind_host = || {
        [addr("127.0.0.1:30080"), addr("[::1]:30080")].map(|a| {
            let l = node
                .enter(|| TcpListener::bind(a))
                .expect("enter")
                .expect("bind host listener");
            l.set_nonblocking(true).expect("nonblocking");
            l
        })
    };
    let host = bind_host();
    let host_accepts = |host: &[TcpListener; 2]| {
        host.iter()
            .map(|l| {
                let mut n = 0;
                while l.accept().is_ok() {
                    n += 1;
                }
                n
            })
            .collect::<Vec<usize>>()
    };
    // Without a loopback address: no listener (and no localhost metrics), and with the gate
    // on (the default) loopback node ports are rejected for every protocol, so the host
    // process never sees the connections (kube-proxy 1.37: TCP is rejected when the
    // localhost proxy is not running).
    n.start(&topo, "primary");
    assert_refused_at_once(node, "127.0.0.1:30080", "primary only");
    assert_refused_at_once(node, "[::1]:30080", "primary only, IPv6");
    assert_eq!(
        host_accepts(&host),
        [0, 0],
        "rejected before reaching the host"
    );
    assert_eq!(
        metric(
            &metrics(node),
            "kubeproxy_nftables_localhost_nodeport_listeners{ip_family=\"IPv4\"}"
        ),
        None
    );
    n.stop();
    drop(host);
    // Restarted with localhost straight from `primary`, whose reject rules for loopback node
    // ports are still in the kernel (kube-proxy's reproduction of kubernetes#142183): the
    // listeners come up and are reached, and again after another restart (the ports are
    // bound anew while old connections linger); the second time from `nodePortAddresses`
    // in a `--config` file.
    let config_dir = TempDir::new("localhost-config").expect("temp dir");
    let config = config_dir
        .write(
            "config.yaml",
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nnodePortAddresses: [primary, localhost]\n",
        )
        .expect("write config");
    let config = config.display().to_string();
    for round in 0..2 {
        if round == 0 {
            n.start(&topo, "primary,localhost");
        } else {
            n.start_with(&topo, &["--config", &config], true);
        }
        assert_backends(
            &hist(node, "127.0.0.1:30080", 30),
            &NAMES,
            &format!("after restart {round}"),
        );
        assert_backends(
            &hist(node, "[::1]:30080", 30),
            &NAMES,
            &format!("IPv6 after restart {round}"),
        );
        n.stop();
    }
    // The gate off: loopback traffic is left alone, and reaches the host process.
    let host = bind_host();
    n.start_with(
        &topo,
        &[
            "--nodeport-addresses",
            "primary",
            "--feature-gates",
            "KubeProxyNFTablesLocalhostNodePorts=false",
        ],
        false,
    );
    for to in ["127.0.0.1:30080", "[::1]:30080"] {
        node.enter(|| TcpStream::connect_timeout(&addr(to), Duration::from_secs(2)))
            .expect("enter")
            .unwrap_or_else(|e| panic!("{to} with the gate off: {e}"));
    }
    assert_eq!(host_accepts(&host), [1, 1], "the host process is reached");
    n.stop();
    drop(host);
    // A loopback prefix without 127.0.0.1, and `all`: no listener (kubernetes#142129;
    // `all` is no explicit loopback in kube-proxy 1.37).
    for flag in ["primary,127.0.0.2/32", "all"] {
        n.start(&topo, flag);
        assert_refused_at_once(node, "127.0.0.1:30080", flag);
        n.stop();
    }
    // A loopback CIDR next to the zero CIDR enables it, for its family only.
    n.start(&topo, "0.0.0.0/0,127.0.0.1/32");
    assert_backends(
        &hist(node, "127.0.0.1:30080", 30),
        &NAMES,
        "0.0.0.0/0,127.0.0.1/32",
    );
    assert_refused_at_once(node, "[::1]:30080", "IPv6 not listed");
    n.stop();
}

#[test]
fn a_loopback_port_taken_by_another_process_is_logged_counted_and_retried() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new().expect("topology");
    let node = &topo.node;
    let mut n = Node::new(&topo);
    // Another process holds 127.0.0.1:30081 (the node port of `local`) before Rudder starts.
    let taken = node
        .enter(|| TcpListener::bind("127.0.0.1:30081"))
        .expect("enter")
        .expect("bind 127.0.0.1:30081");
    n.start(&topo, "primary,localhost");
    let d = n.daemon();
    d.wait_for(
        "cannot listen for localhost node port connections",
        1,
        Duration::from_secs(5),
    )
    .expect("the failed listener is logged");
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("cannot listen for localhost node port connections"))
        .unwrap_or_default();
    assert!(
        line.contains("127.0.0.1:30081") && line.contains("default/local"),
        "the log names the address and the service: {line}"
    );
    let m = metrics(node);
    assert_eq!(
        metric(
            &m,
            "kubeproxy_nftables_localhost_nodeport_listener_creation_failures_total{ip_family=\"IPv4\"}"
        ),
        Some(1.0),
        "{m}"
    );
    // The other listeners run: 3 IPv4 node ports with endpoints, one of them not bound.
    assert_eq!(
        metric(
            &m,
            "kubeproxy_nftables_localhost_nodeport_listeners{ip_family=\"IPv4\"}"
        ),
        Some(2.0),
        "{m}"
    );
    assert_backends(
        &hist(node, "127.0.0.1:30080", 30),
        &NAMES,
        "another listener",
    );
    assert_backends(&hist(node, "[::1]:30080", 30), &NAMES, "IPv6");
    // The node's own address still serves that node port through the kernel, the daemon
    // is healthy, and connections to the taken port reach the process that holds it.
    assert_backends(
        &histogram_with_timeout(
            &topo.client,
            addr("172.18.0.2:30081"),
            10,
            Proto::Tcp,
            Duration::from_secs(2),
        ),
        &["111"],
        "primary IP of the taken port, from the client",
    );
    let health = http_get(node, "127.0.0.1:10256", "/healthz");
    assert!(
        health.starts_with("HTTP/1.0 200") || health.starts_with("HTTP/1.1 200"),
        "{health}"
    );
    node.enter(|| TcpStream::connect_timeout(&addr("127.0.0.1:30081"), Duration::from_secs(2)))
        .expect("enter")
        .expect("the holder of the port accepts");
    taken.set_nonblocking(true).expect("nonblocking");
    assert!(taken.accept().is_ok(), "the connection went to the holder");
    assert!(
        n.daemon().exited().expect("status").is_none(),
        "still running"
    );
    // The other process goes: within a retry (5 s) the listener comes up and serves.
    let serving = n.daemon().count("serving localhost node port");
    drop(taken);
    n.daemon()
        .wait_for(
            "serving localhost node port",
            serving + 1,
            Duration::from_secs(8),
        )
        .expect("the listener is retried");
    assert_backends(
        &hist(node, "127.0.0.1:30081", 20),
        &["111"],
        "after the retry",
    );
    let m = metrics(node);
    assert_eq!(
        metric(
            &m,
            "kubeproxy_nftables_localhost_nodeport_listeners{ip_family=\"IPv4\"}"
        ),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "kubeproxy_nftables_localhost_nodeport_listener_creation_failures_total{ip_family=\"IPv4\"}"
        ),
        Some(1.0),
        "counted once, not at every retry: {m}"
    );
    assert_eq!(
        n.daemon()
            .count("cannot listen for localhost node port connections"),
        1,
        "logged once, not at every retry"
    );
    n.stop();
}

/// Throughput and latency through the localhost proxy compared with the kernel's DNAT of the
/// node's primary IP. A measurement, not a test: run it with `--ignored --nocapture`
/// (preferably `--release`).
#[test]
#[ignore]
fn measure_localhost_proxy_throughput_and_latency() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new().expect("topology");
    let node = &topo.node;
    let mut n = Node::new(&topo);
    n.set_stream_endpoints_unsynced(&topo, &[0]);
    n.start(&topo, "primary,localhost");
    let size: usize = std::env::var("RUDDER_MEASURE_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024)
        << 20;
    for (what, to) in [
        ("localhost proxy 127.0.0.1:30070", "127.0.0.1:30070"),
        ("kernel DNAT 172.18.0.2:30070", "172.18.0.2:30070"),
        ("direct to the pod 10.244.1.2:7000", "10.244.1.2:7000"),
    ] {
        // Throughput: stream `size` bytes through and read their echo back concurrently.
        let c = Conn::open(node, addr(to)).expect("connect");
        let mut stream = c.reader.into_inner();
        let mut greeting = [0u8; 4];
        stream.read_exact(&mut greeting).expect("greeting");
        let mut writer = stream.try_clone().expect("clone");
        let t0 = Instant::now();
        let w = std::thread::spawn(move || {
            let chunk = vec![7u8; 1 << 20];
            let mut left = size;
            while left > 0 {
                let k = left.min(chunk.len());
                writer.write_all(&chunk[..k]).expect("write");
                left -= k;
            }
            writer
                .shutdown(std::net::Shutdown::Write)
                .expect("shutdown");
        });
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 20];
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) => panic!("{what}: {e}"),
            }
        }
        w.join().expect("writer");
        let secs = t0.elapsed().as_secs_f64();
        assert_eq!(got, size);
        // Latency: connect, greeting, one echo, close; sequential, from one thread in the
        // node's namespace.
        let rounds = 1000;
        let target = addr(to);
        let per = node
            .enter(move || {
                let t1 = Instant::now();
                for _ in 0..rounds {
                    let s = TcpStream::connect(target).expect("connect");
                    s.set_nodelay(true).expect("nodelay");
                    let mut c = Conn {
                        reader: BufReader::new(s),
                    };
                    c.line().expect("greeting");
                    c.echo("x").expect("echo");
                }
                t1.elapsed() / rounds
            })
            .expect("enter");
        println!(
            "{what}: {:.0} MiB/s each way ({} MiB in {secs:.2} s); connect+greeting+echo {:.0} µs",
            (size >> 20) as f64 / secs,
            size >> 20,
            per.as_secs_f64() * 1e6
        );
    }
    n.stop();
}

impl Node {
    fn set_stream_endpoints_unsynced(&mut self, topo: &Topology, pods: &[usize]) {
        let text = services(pods, topo);
        self.manifests.write("services.yaml", &text).expect("write");
    }
}
