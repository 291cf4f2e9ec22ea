//! The VM harness's smoke test (`rudder_e2e::vm`): Debian's kernel under qemu, with what this
//! machine's kernel lacks.
//!
//! - `ipvs_in_the_guest`: ip_vs and dummy load (`IPVS: ipvs loaded` in dmesg,
//!   `IP Virtual Server version` in `/proc/net/ip_vs`), a dummy link holds a VIP, a veth pair leads into a namespace, and
//!   `ipvsadm` programs a virtual server with a real server that answers real TCP connections
//!   through the VIP;
//! - `rudder_in_the_guest`: the static `rudder` runs in the guest (`--version`, `compile`), then
//!   `rudder run` on `examples/nginx` in a node namespace with three pods and a client, and real
//!   TCP connections go through the ClusterIP (IPv4 and IPv6), the NodePort, and a service
//!   without endpoints is rejected: nftables mode on the guest's 6.1 kernel;
//! - `harness_reports_status_failures_panics_and_timeouts`: the harness's own promises.
//!
//! Both skip themselves (with a message) only when qemu cannot be installed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rudder_e2e::vm::{self, Prepared, Vm, VmError};

/// The prepared kernel, or `None` (with a message) when the VM cannot run here.
fn prepared() -> Option<Prepared> {
    if std::env::var(rudder_e2e::root::SKIP_ENV).is_ok_and(|v| v == "1") {
        return None;
    }
    match vm::prepare() {
        Ok(p) => {
            eprintln!(
                "vm: {} ({}) prepared in {:.1?}",
                p.package, p.release, p.took
            );
            Some(p)
        }
        Err(VmError::Unavailable(why)) => {
            eprintln!("SKIPPED: the IPVS VM tests need qemu: {why}");
            None
        }
        Err(e) => panic!("preparing the VM: {e}"),
    }
}

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/nginx")
}

/// The answers the guest printed after `tag` (one line each).
fn answers(out: &vm::VmOutput, tag: &str) -> Vec<String> {
    out.output
        .lines()
        .filter_map(|l| l.strip_prefix(tag))
        .map(|a| a.trim().to_owned())
        .collect()
}

/// Each `(tag, n)`: exactly `n` answers, every one from a backend (`111`, `222`, `333`).
fn assert_answers(out: &vm::VmOutput, expected: &[(&str, usize)]) {
    for &(tag, n) in expected {
        let got = answers(out, tag);
        assert_eq!(got.len(), n, "{tag}: {got:?}\n{}", out.output);
        assert!(
            got.iter()
                .all(|a| ["111", "222", "333"].contains(&a.as_str())),
            "{tag}answers {got:?}\n{}",
            out.output
        );
    }
}

fn report(name: &str, out: &vm::VmOutput, started: Instant) {
    eprintln!(
        "vm {name}: kernel booted to init in {:.2?} (guest uptime), {} modules loaded by {:.2?}, \
         initramfs {:.1} MiB, qemu {:.1?}, test {:.1?}",
        out.boot,
        out.loaded_modules.len(),
        out.ready,
        out.initramfs_bytes as f64 / (1024.0 * 1024.0),
        out.wall,
        started.elapsed()
    );
}

const IPVS_SCRIPT: &str = r#"
set -e
step() { echo "== $*"; }
step kernel; uname -r
step "ip_vs loaded"
dmesg | grep 'IPVS: ipvs loaded'
head -1 /proc/net/ip_vs | grep 'IP Virtual Server version'
for m in ip_vs ip_vs_rr ip_vs_wrr ip_vs_sh ip_vs_mh dummy veth nf_tables nft_ct; do
    grep -q "^$m " /proc/modules || { echo "module $m not loaded"; exit 1; }
done
step "dummy link"
ip link add kube-ipvs0 type dummy
ip addr add 10.96.0.1/32 dev kube-ipvs0
ip -d link show kube-ipvs0 | grep -q dummy
step "veth pair into a namespace"
ip netns add pod
ip link add vpod type veth peer name eth0 netns pod
ip addr add 10.244.1.1/24 dev vpod
ip link set vpod up
ip -n pod addr add 10.244.1.2/24 dev eth0
ip -n pod link set eth0 up
ip -n pod link set lo up
ip -n pod route add default via 10.244.1.1
mkdir -p /srv/pod
echo 111 >/srv/pod/index.html
ip netns exec pod httpd -p 80 -h /srv/pod
step "ipvsadm"
sysctl -w net.ipv4.vs.conntrack=1
ipvsadm -A -t 10.96.0.1:80 -s rr
ipvsadm -a -t 10.96.0.1:80 -r 10.244.1.2:80 -m -w 1
ipvsadm -A -u 10.96.0.1:53 -s sh
ipvsadm -a -u 10.96.0.1:53 -r 10.244.1.2:5353 -m
ipvsadm -Ln
step "a TCP connection through the virtual server"
answer=$(printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 10.96.0.1 80 | tail -n 1)
echo "answer: $answer"
test "$answer" = 111
ipvsadm -Ln --stats
ipvsadm -Lnc
step "ipvsadm -D"
ipvsadm -D -t 10.96.0.1:80
ipvsadm -C
test -z "$(ipvsadm -Sn)"
echo IPVS-SMOKE-OK
"#;

#[test]
fn ipvs_in_the_guest() {
    let started = Instant::now();
    let Some(prepared) = prepared() else { return };
    let out = Vm::new(&prepared)
        .modules(&vm::default_modules())
        .host_binary("/usr/sbin/ipvsadm")
        .host_binary("/usr/sbin/ip")
        .timeout(Duration::from_secs(240))
        .run(IPVS_SCRIPT)
        .expect("booting the VM");
    report("ipvs", &out, started);
    out.assert_success();
    assert!(
        out.output.contains("IP Virtual Server version"),
        "{}",
        out.output
    );
    assert!(
        out.output.contains("TCP  10.96.0.1:80 rr")
            && out.output.contains("-> 10.244.1.2:80")
            && out.output.contains("Masq")
            && out.output.contains("UDP  10.96.0.1:53 sh"),
        "ipvsadm -Ln did not show the services:\n{}",
        out.output
    );
    assert!(out.output.contains("IPVS-SMOKE-OK"), "{}", out.output);
}

/// The example's topology (`rudder_e2e::topo`, by hand with `ip`): node `172.18.0.2`, pods
/// `10.244.{1,2,3}.2` answering `111`, `222`, `333` over HTTP (busybox httpd), client
/// `172.18.0.10`.
const RUDDER_HEAD: &str = r#"
set -e
step() { echo "== $*"; }
step "static rudder"
rudder --version
rudder compile --manifests /m --hostname-override node-1 --cluster-cidr 10.244.0.0/16 >/tmp/rules.nft
grep -c . /tmp/rules.nft
grep -q 10.96.100.100 /tmp/rules.nft
nft -c -f /tmp/rules.nft
"#;

/// Five namespaces: a node routing for three pods (each serving its index, `111`, `222`,
/// `333`, on port 80) and a client off the cluster.
const TOPOLOGY: &str = r#"
step topology
for ns in node pod0 pod1 pod2 client; do
    ip netns add $ns
    ip -n $ns link set lo up
    ip netns exec $ns sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
done
ip netns exec node sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
    net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
for i in 0 1 2; do
    n=$((i + 1))
    ip -n node link add vpod$i type veth peer name eth0 netns pod$i
    ip -n node addr add 10.244.$n.1/24 dev vpod$i
    ip -n node addr add fd00:10:244:$n::1/64 dev vpod$i nodad
    ip -n node link set vpod$i up
    ip -n pod$i addr add 10.244.$n.2/24 dev eth0
    ip -n pod$i addr add fd00:10:244:$n::2/64 dev eth0 nodad
    ip -n pod$i link set eth0 up
    ip -n pod$i route add default via 10.244.$n.1
    ip -n pod$i -6 route add default via fd00:10:244:$n::1
    mkdir -p /srv/pod$i
    echo "$n$n$n" >/srv/pod$i/index.html
    ip netns exec pod$i httpd -p 80 -h /srv/pod$i
done
ip -n node link add eth0 type veth peer name eth0 netns client
ip -n node addr add 172.18.0.2/24 dev eth0
ip -n node link set eth0 up
ip -n client addr add 172.18.0.10/24 dev eth0
ip -n client link set eth0 up
ip -n client route add default via 172.18.0.2
ip -n node route add default via 172.18.0.10
"#;

const RUDDER_TAIL: &str = r#"
step "rudder run"
ip netns exec node rudder run --manifests /m --hostname-override node-1 \
    --cluster-cidr 10.244.0.0/16,fd00:10:244::/56 >/tmp/rudder.log 2>&1 &
rudder=$!
i=0
until grep -q 'sync done' /tmp/rudder.log; do
    i=$((i + 1))
    if [ $i -gt 600 ]; then cat /tmp/rudder.log; echo "no sync within 60 s"; exit 1; fi
    sleep 0.1
done
grep 'sync done' /tmp/rudder.log | head -1
ip netns exec node nft list tables
# busybox-static's wget crashes (Debian's build); nc speaks HTTP/1.0 to busybox httpd.
get() { printf 'GET / HTTP/1.0\r\n\r\n' | ip netns exec $1 nc -w 5 $2 $3 | tail -n 1; }
step "ClusterIP from a pod"
for i in 1 2 3 4 5 6 7 8 9; do echo "clusterip-v4 $(get pod0 10.96.100.100 80)"; done
step "ClusterIP over IPv6 from a pod"
for i in 1 2 3; do echo "clusterip-v6 $(get pod1 fd00:10:96::100 80)"; done
step "ClusterIP from the node"
for i in 1 2 3; do echo "node-clusterip $(get node 10.96.100.100 80)"; done
step "NodePort from the client"
for i in 1 2 3; do echo "nodeport $(get client 172.18.0.2 30001)"; done
step "no endpoints: rejected"
if ip netns exec pod0 nc -w 5 10.96.100.120 80 </dev/null 2>/tmp/reject.err; then echo "10.96.100.120 answered"; exit 1; fi
cat /tmp/reject.err
grep -qi refused /tmp/reject.err
step "rudder cleanup"
kill $rudder
wait $rudder || true
ip netns exec node rudder cleanup
test -z "$(ip netns exec node nft list tables)"
echo RUDDER-SMOKE-OK
"#;

#[test]
fn rudder_in_the_guest() {
    let started = Instant::now();
    let Some(prepared) = prepared() else { return };
    let rudder = vm::static_rudder().expect("the static rudder binary");
    let out = Vm::new(&prepared)
        .modules(&vm::default_modules())
        .file(&rudder, "/usr/bin/rudder")
        .file(example_dir().join("nginx.yaml"), "/m/nginx.yaml")
        .file(example_dir().join("node.yaml"), "/m/node.yaml")
        .file(example_dir().join("others.yaml"), "/m/others.yaml")
        .host_binary("/usr/sbin/ip")
        .host_binary("/usr/sbin/nft")
        .timeout(Duration::from_secs(300))
        .run(&[RUDDER_HEAD, TOPOLOGY, RUDDER_TAIL].concat())
        .expect("booting the VM");
    report("rudder", &out, started);
    out.assert_success();
    assert_answers(
        &out,
        &[
            ("clusterip-v4 ", 9),
            ("clusterip-v6 ", 3),
            ("node-clusterip ", 3),
            ("nodeport ", 3),
        ],
    );
    assert!(out.output.contains("RUDDER-SMOKE-OK"), "{}", out.output);
}

/// The harness itself: the script's exit status and output come back, a module that cannot
/// load is reported (KVM's: no VMX under emulation), a kernel panic is an error rather than a
/// status, and a guest that outlives its timeout is killed (its pid is gone afterwards).
#[test]
fn harness_reports_status_failures_panics_and_timeouts() {
    let Some(prepared) = prepared() else { return };
    let out = Vm::new(&prepared)
        .modules(&["dummy", "kvm_intel"])
        .timeout(Duration::from_secs(120))
        .run("echo hello from the guest; exit 3")
        .expect("booting the VM");
    assert_eq!(out.status, 3, "{}", out.console);
    assert_eq!(out.output.trim(), "hello from the guest", "{}", out.console);
    assert_eq!(out.failed_modules, ["kvm_intel"], "{}", out.console);
    assert!(out.loaded_modules.iter().any(|m| m == "dummy"));
    assert!(out.boot > Duration::ZERO && out.ready >= out.boot);

    let err = Vm::new(&prepared)
        .timeout(Duration::from_secs(120))
        .run("echo c >/proc/sysrq-trigger; sleep 100")
        .expect_err("a kernel panic reports no status");
    assert!(
        matches!(&err, VmError::NoExitStatus { console, .. } if console.contains("Kernel panic")),
        "{err}"
    );

    let started = Instant::now();
    let err = Vm::new(&prepared)
        .timeout(Duration::from_secs(15))
        .run("sleep 600")
        .expect_err("the timeout");
    let VmError::Timeout { pid, .. } = err else {
        panic!("expected a timeout: {err}");
    };
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "qemu (pid {pid}) still exists after the timeout"
    );
}

/// The same topology as the nftables test ([`TOPOLOGY`]), with `rudder run --proxy-mode ipvs`: the VIPs on
/// `kube-ipvs0`, a virtual server per frontend (`ipvsadm -Ln`), real TCP through the ClusterIP
/// (from the node and from off the cluster) and the NodePort, an endpoint change applied
/// incrementally, and a virtual server deleted behind Rudder's back restored by the periodic
/// full sync, which repairs by difference; at start, the IPVS timeouts (`ipvsadm -L --timeout`),
/// strict ARP's sysctls, and `conn_reuse_mode` left at the kernel's value (6.1, from 5.9).
const RUDDER_IPVS_HEAD: &str = r#"
set -e
step() { echo "== $*"; }
"#;

const RUDDER_IPVS_TAIL: &str = r#"
step "shapes only the IPVS mode's nftables part serves"
cat >/m/shapes.yaml <<'YAML'
apiVersion: v1
kind: Service
metadata: {name: fw-deny, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 10.96.100.130
  loadBalancerSourceRanges: [198.51.100.0/24]
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 80, nodePort: 30003}]
status: {loadBalancer: {ingress: [{ip: 192.168.122.130}]}}
---
apiVersion: v1
kind: Service
metadata: {name: fw-allow, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 10.96.100.131
  loadBalancerSourceRanges: [172.18.0.0/24]
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 80, nodePort: 30004}]
status: {loadBalancer: {ingress: [{ip: 192.168.122.131}]}}
---
apiVersion: v1
kind: Service
metadata: {name: local, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 10.96.100.140
  externalTrafficPolicy: Local
  healthCheckNodePort: 32140
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 80, nodePort: 30005}]
status: {loadBalancer: {ingress: [{ip: 192.168.122.140}]}}
---
apiVersion: v1
kind: Service
metadata: {name: local-none, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 10.96.100.141
  externalTrafficPolicy: Local
  healthCheckNodePort: 32141
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 80, nodePort: 30006}]
status: {loadBalancer: {ingress: [{ip: 192.168.122.141}]}}
---
apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: default}
spec:
  clusterIP: 10.96.100.160
  sessionAffinity: ClientIP
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: itp-local, namespace: default}
spec:
  clusterIP: 10.96.100.161
  internalTrafficPolicy: Local
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: long, namespace: default}
spec:
  clusterIP: 10.96.100.162
  ports: [{name: echo, port: 7000, protocol: TCP, targetPort: 7000}]
---
apiVersion: v1
kind: Service
metadata: {name: dual, namespace: default}
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIPs: [10.96.100.170, "fd00:10:96::170"]
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 80, nodePort: 30007}]
YAML
cat >/m/udp.yaml <<'YAML'
apiVersion: v1
kind: Service
metadata: {name: udp1, namespace: default}
spec:
  clusterIP: 10.96.100.151
  ports: [{name: dns, port: 53, protocol: UDP, targetPort: 5353}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: udp1-1
  namespace: default
  labels: {kubernetes.io/service-name: udp1}
addressType: IPv4
ports: [{name: dns, port: 5353, protocol: UDP}]
endpoints: [{addresses: [10.244.1.2], nodeName: node-1}, {addresses: [10.244.2.2], nodeName: node-1}]
YAML
cat >/m/long.yaml <<'YAML'
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: long-1
  namespace: default
  labels: {kubernetes.io/service-name: long}
addressType: IPv4
ports: [{name: echo, port: 7000, protocol: TCP}]
endpoints: [{addresses: [10.244.3.2], nodeName: node-1}]
YAML
for s in fw-deny:10.244.1.2:node-1 fw-allow:10.244.1.2:node-1 local:10.244.1.2:node-1 \
         local:10.244.2.2:node-2 local-none:10.244.2.2:node-2 sticky:10.244.1.2:node-1 \
         sticky:10.244.2.2:node-1 sticky:10.244.3.2:node-1 itp-local:10.244.1.2:node-1 \
         itp-local:10.244.2.2:node-2 dual:10.244.1.2:node-1; do
    name=${s%%:*}; rest=${s#*:}; addr=${rest%%:*}; node=${rest#*:}
    cat >>/m/shapes.yaml <<YAML
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: $name-$node
  namespace: default
  labels: {kubernetes.io/service-name: $name}
addressType: IPv4
ports: [{name: http, port: 80, protocol: TCP}]
endpoints: [{addresses: [$addr], nodeName: $node}]
YAML
done
step "what is not Rudder's: an address and a virtual server in an excluded CIDR"
ip -n node link add kube-ipvs0 type dummy
ip -n node addr add 10.200.0.1/32 dev kube-ipvs0
ip netns exec node ipvsadm -A -t 10.200.0.1:80 -s wlc
start_rudder() {
    ip netns exec node rudder run --proxy-mode ipvs --manifests /m --hostname-override node-1 \
        --cluster-cidr 10.244.0.0/16 --full-sync-period 3s --ipvs-min-sync-period 100ms \
        --ipvs-tcp-timeout 1h --ipvs-udp-timeout 1m --ipvs-strict-arp \
        --ipvs-exclude-cidrs 10.200.0.0/16 >>/tmp/rudder.log 2>&1 &
    rudder=$!
}
cat >>/m/shapes.yaml <<'YAML'
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dual-v6
  namespace: default
  labels: {kubernetes.io/service-name: dual}
addressType: IPv6
ports: [{name: http, port: 80, protocol: TCP}]
endpoints: [{addresses: ["fd00:10:244:1::2"], nodeName: node-1}]
YAML
step "UDP and long-lived TCP servers in the pods, IPv6 between the client and the node"
for i in 0 1 2; do
    n=$((i + 1))
    ip netns exec pod$i socat UDP-RECVFROM:5353,fork SYSTEM:"echo $n$n$n" &
done
ip netns exec pod2 socat TCP-LISTEN:7000,fork,reuseaddr EXEC:cat &
ip -n node addr add fc00:f853:ccd:e793::2/64 dev eth0 nodad
ip -n client addr add fc00:f853:ccd:e793::10/64 dev eth0 nodad
ip -n client -6 route add default via fc00:f853:ccd:e793::2
step "rudder run --proxy-mode ipvs"
start_rudder
i=0
until grep -q 'sync done' /tmp/rudder.log; do
    i=$((i + 1))
    if [ $i -gt 600 ]; then cat /tmp/rudder.log; echo "no sync within 60 s"; exit 1; fi
    sleep 0.1
done
grep 'sync done' /tmp/rudder.log | head -1
ip netns exec node ipvsadm -Ln
ip -n node addr show kube-ipvs0
ip netns exec node ipvsadm -Ln | grep -q 'TCP  10.96.100.100:80 rr'
ip netns exec node ipvsadm -Ln | grep -q 'TCP  172.18.0.2:30001 rr'
ip -n node addr show kube-ipvs0 | grep -q 'inet 10.96.100.100/32'
step "IPVS timeouts, strict ARP, conn_reuse_mode (left as it is from kernel 5.9)"
ip netns exec node ipvsadm -L --timeout | tee /tmp/timeouts
echo "ipvs-timeouts $(sed -n 's/^Timeout (tcp tcpfin udp): //p' /tmp/timeouts)"
grep 'IPVS timeouts\|IPVS sysctl\|conn_reuse_mode' /tmp/rudder.log || true
echo "ipvs-timeouts-logged $(grep -c 'tcp=900s->3600s tcpfin=120s udp=300s->60s' /tmp/rudder.log)"
echo "ipvs-strict-arp $(ip netns exec node cat /proc/sys/net/ipv4/conf/all/arp_ignore) $(ip netns exec node cat /proc/sys/net/ipv4/conf/all/arp_announce)"
echo "ipvs-conn-reuse $(ip netns exec node cat /proc/sys/net/ipv4/vs/conn_reuse_mode)"
get() { printf 'GET / HTTP/1.0\r\n\r\n' | ip netns exec $1 nc -w 5 $2 $3 | tail -n 1; }
step "ClusterIP from the node"
for i in 1 2 3 4 5 6; do echo "ipvs-node-clusterip $(get node 10.96.100.100 80)"; done
step "ClusterIP from off the cluster"
for i in 1 2 3; do echo "ipvs-client-clusterip $(get client 10.96.100.100 80)"; done
step "NodePort from the client"
for i in 1 2 3; do echo "ipvs-nodeport $(get client 172.18.0.2 30001)"; done
step "external IP from the client"
for i in 1 2 3; do echo "ipvs-external-ip $(get client 192.168.122.200 80)"; done
step "/proxyMode on the metrics address (no curl in the guest)"
echo "ipvs-proxy-mode $(printf 'GET /proxyMode HTTP/1.0\r\n\r\n' | ip netns exec node nc -w 5 127.0.0.1 10249 | tail -n 1)"
ip netns exec node nft list table ip rudder
step "ClusterIP from a pod, which may be its own endpoint (hairpin)"
for i in 1 2 3 4 5 6; do echo "ipvs-pod-clusterip $(get pod0 10.96.100.100 80)"; done
step "off-cluster traffic to a ClusterIP is masqueraded"
ip netns exec node conntrack -L -s 172.18.0.10 -d 10.96.100.100 2>/dev/null | tee /tmp/ct
grep -q 'src=10.244.[0-9].2 dst=10.244.[0-9].1 ' /tmp/ct
step "no endpoints: refused at once"
ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }
t0=$(ms)
if ip netns exec client nc -w 5 10.96.100.120 80 </dev/null 2>/tmp/reject.err; then echo "10.96.100.120 answered"; exit 1; fi
t1=$(ms)
cat /tmp/reject.err
grep -qi refused /tmp/reject.err
echo "ipvs-refused-ms $((t1 - t0))"
step "a VIP port that is no service: refused, while the node's own address answers"
mkdir -p /srv/host; echo host >/srv/host/index.html
ip netns exec node httpd -p 0.0.0.0:2222 -h /srv/host
echo "ipvs-host-port $(get client 172.18.0.2 2222)"
if ip netns exec client nc -w 5 10.96.100.100 2222 </dev/null 2>/tmp/vip.err; then echo "a VIP port answered"; exit 1; fi
grep -qi refused /tmp/vip.err
echo "ipvs-vip-filtered"
step "loadBalancerSourceRanges"
echo "ipvs-fw-allow $(get client 192.168.122.131 80)"
if [ -n "$(get client 192.168.122.130 80)" ]; then echo "a source outside the ranges got in"; exit 1; fi
echo "ipvs-fw-denied"
step "externalTrafficPolicy Local: the local endpoint, the client's source kept"
for i in 1 2 3; do echo "ipvs-local $(get client 192.168.122.140 80)"; done
ip netns exec node conntrack -L -s 172.18.0.10 -d 192.168.122.140 2>/dev/null | tee /tmp/ct
grep -q 'src=10.244.1.2 dst=172.18.0.10 ' /tmp/ct
step "externalTrafficPolicy Local without local endpoints: dropped from outside, served to pods"
if [ -n "$(get client 192.168.122.141 80)" ]; then echo "an outside client got a remote endpoint"; exit 1; fi
echo "ipvs-local-none-dropped"
echo "ipvs-local-none-pod $(get pod0 192.168.122.141 80)"
step "UDP through the ClusterIP"
for i in 1 2 3; do echo "ipvs-udp $(echo q | ip netns exec client socat -T2 - UDP:10.96.100.100:53)"; done
step "UDP: the same flow moves on when its endpoint goes (IPVS expires its connection and conntrack entry, expire_nodest_conn=1)"
ask() { echo q | ip netns exec client socat -T2 - UDP:10.96.100.151:53,sourceport=4000; }
first=$(ask)
echo "ipvs-udp-flow-first $first"
case $first in 111) keep=10.244.2.2 ;; *) keep=10.244.1.2 ;; esac
sed "s/^endpoints: .*/endpoints: [{addresses: [$keep], nodeName: node-1}]/" /m/udp.yaml >/tmp/udp.yaml
mv /tmp/udp.yaml /m/udp.yaml
i=0
until [ "$(ip netns exec node ipvsadm -Ln -u 10.96.100.151:53 | grep -c '\-> 10.244')" = 1 ]; do
    i=$((i + 1))
    if [ $i -gt 100 ]; then ip netns exec node ipvsadm -Ln; echo "the UDP endpoint was not removed"; exit 1; fi
    sleep 0.1
done
sleep 0.5
for i in 1 2; do echo "ipvs-udp-flow-after $(ask)"; done
step "sessionAffinity ClientIP: persistence"
ip netns exec node ipvsadm -Ln -t 10.96.100.160:80 | grep -q 'persistent 10800'
for i in 1 2 3 4 5 6; do echo "ipvs-sticky $(get client 10.96.100.160 80)"; done
step "internalTrafficPolicy Local: only the endpoint on this node"
for i in 1 2 3 4; do echo "ipvs-itp-local $(get pod2 10.96.100.161 80)"; done
step "a dual-stack NodePort over IPv6"
for i in 1 2 3; do echo "ipvs-nodeport-v6 $(get client fc00:f853:ccd:e793::2 30007)"; done
ip netns exec node ipvsadm -Ln | grep -q 'TCP  \[fc00:f853:ccd:e793::2\]:30007 rr'
step "graceful termination: an established connection outlives its endpoint"
(echo one; sleep 8; echo two) | ip netns exec client socat -T15 - TCP:10.96.100.162:7000 >/tmp/long.out &
talker=$!
i=0
until grep -q one /tmp/long.out; do
    i=$((i + 1)); if [ $i -gt 100 ]; then echo "no first line"; exit 1; fi; sleep 0.1
done
sed 's/endpoints: .*/endpoints: []/' /m/long.yaml >/tmp/long.yaml
mv /tmp/long.yaml /m/long.yaml
i=0
until ip netns exec node ipvsadm -Ln -t 10.96.100.162:7000 | grep -q '10.244.3.2:7000 *Masq *0 *1'; do
    i=$((i + 1))
    if [ $i -gt 100 ]; then ip netns exec node ipvsadm -Ln; cat /tmp/rudder.log; echo "not drained"; exit 1; fi
    sleep 0.1
done
ip netns exec node ipvsadm -Ln -t 10.96.100.162:7000
if ip netns exec client nc -w 5 10.96.100.162 7000 </dev/null 2>/tmp/long.err; then echo "a new connection reached a drained server"; exit 1; fi
grep -qi refused /tmp/long.err
wait $talker || true
cat /tmp/long.out
grep -q two /tmp/long.out
echo "ipvs-drained-connection-kept"
# Closed, the connection lingers in IPVS as an inactive one (TIME_WAIT, 2 min): the real
# server stays at weight 0 until it is gone, as kube-proxy counts active and inactive ones.
ip netns exec node ipvsadm -Ln -t 10.96.100.162:7000 | grep -q '10.244.3.2:7000 *Masq *0 *0 *[1-9]'
echo "ipvs-drained-kept-while-inactive"
step "an endpoint change"
awk 'f == 0 && /- addresses: \[10.244.3.2\]/ { f = 1; print; next }
     f == 1 && /ready: true/ { sub(/ready: true/, "ready: false"); f = 2 }
     { print }' /m/nginx.yaml >/tmp/nginx.yaml
mv /tmp/nginx.yaml /m/nginx.yaml
i=0
until [ "$(ip netns exec node ipvsadm -Ln -t 10.96.100.100:80 | grep -c '\-> 10.244')" = 2 ] || \
      ip netns exec node ipvsadm -Ln -t 10.96.100.100:80 | grep -q '10.244.3.2:80 *Masq *0'; do
    i=$((i + 1))
    if [ $i -gt 100 ]; then ip netns exec node ipvsadm -Ln; cat /tmp/rudder.log; echo "endpoint change not applied"; exit 1; fi
    sleep 0.1
done
ip netns exec node ipvsadm -Ln -t 10.96.100.100:80
step "a virtual server deleted behind Rudder's back"
ip netns exec node ipvsadm -D -t 172.18.0.2:30001
i=0
until ip netns exec node ipvsadm -Ln | grep -q 'TCP  172.18.0.2:30001 rr'; do
    i=$((i + 1))
    if [ $i -gt 150 ]; then cat /tmp/rudder.log; echo "not repaired"; exit 1; fi
    sleep 0.1
done
echo "ipvs-repaired"
for i in 1 2 3; do echo "ipvs-nodeport-after $(get client 172.18.0.2 30001)"; done
ip netns exec node ipvsadm -Ln | grep -q 'TCP  10.200.0.1:80 wlc'
ip -n node addr show kube-ipvs0 | grep -q 'inet 10.200.0.1/32'
echo "ipvs-others-kept"
step "endpoint churn converges to what rudder compile says"
for i in 1 2 3 4 5 6 7 8 9 10; do
    case $((i % 3)) in
        0) eps='[]' ;;
        1) eps='[{addresses: [10.244.1.2], nodeName: node-1}]' ;;
        2) eps='[{addresses: [10.244.2.2], nodeName: node-1}, {addresses: [10.244.3.2], nodeName: node-1}]' ;;
    esac
    sed "s/endpoints: .*/endpoints: $eps/" /m/long.yaml >/tmp/long.yaml
    mv /tmp/long.yaml /m/long.yaml
    sleep 0.05
done
want() { rudder compile --proxy-mode ipvs --manifests /m --hostname-override node-1 2>/dev/null | sort; }
# Real servers at weight 0 are draining (their closed connections linger as inactive for up
# to 2 minutes): on their way out, not what the IR holds.
got() { ip netns exec node ipvsadm -Sn | grep -v 10.200.0.1 | grep -v ' -w 0$' | sort; }
i=0
until [ "$(want)" = "$(got)" ]; do
    i=$((i + 1))
    if [ $i -gt 150 ]; then want >/tmp/want; got >/tmp/got; diff /tmp/want /tmp/got; echo "IPVS is not what the IR says"; exit 1; fi
    sleep 0.1
done
echo "ipvs-matches-ir $(want | wc -l) lines"
ip netns exec node ipvsadm -Ln -t 10.96.100.162:7000
rudder compile --proxy-mode ipvs --manifests /m --hostname-override node-1 --ipvs-output addresses 2>/dev/null >/tmp/want-addr
ip -n node addr show kube-ipvs0 | awk '/inet/ { sub(/\/.*/, "", $2); print $2 }' | grep -v '^10.200.0.1$' | grep -v '^fe80' | sort >/tmp/got-addr
sort /tmp/want-addr | diff - /tmp/got-addr
echo "ipvs-addresses-match-ir"
step "restart: traffic flows while Rudder is down and after it is back"
kill $rudder
wait $rudder || true
for i in 1 2 3; do echo "ipvs-while-down $(get client 172.18.0.2 30001)"; done
syncs=$(grep -c 'sync done' /tmp/rudder.log)
start_rudder
i=0
until [ "$(grep -c 'sync done' /tmp/rudder.log)" -gt "$syncs" ]; do
    i=$((i + 1))
    if [ $i -gt 600 ]; then cat /tmp/rudder.log; echo "no sync after the restart"; exit 1; fi
    sleep 0.1
done
for i in 1 2 3; do echo "ipvs-after-restart $(get client 10.96.100.100 80)"; done
kill $rudder
wait $rudder || true
step "rudder cleanup"
# Another tool's virtual server on the node's address, outside the node-port range.
ip netns exec node ipvsadm -A -t 172.18.0.2:8443 -s wlc
ip netns exec node rudder cleanup --ipvs-exclude-cidrs 10.200.0.0/16
ip netns exec node ipvsadm -Ln
ip -n node addr show kube-ipvs0
test "$(ip netns exec node ipvsadm -Sn | sort | tr '\n' ' ')" = "-A -t 10.200.0.1:80 -s wlc -A -t 172.18.0.2:8443 -s wlc "
test "$(ip -n node -4 addr show kube-ipvs0 | grep -c inet)" = 1
if ip netns exec node nft list tables | grep -q rudder; then echo "a table is left"; exit 1; fi
echo "ipvs-cleaned"
grep -c 'sync done' /tmp/rudder.log
echo RUDDER-IPVS-OK
"#;

#[test]
fn rudder_ipvs_mode_in_the_guest() {
    let started = Instant::now();
    let Some(prepared) = prepared() else { return };
    let rudder = vm::static_rudder().expect("the static rudder binary");
    let out = Vm::new(&prepared)
        .modules(&vm::default_modules())
        .file(&rudder, "/usr/bin/rudder")
        .file(example_dir().join("nginx.yaml"), "/m/nginx.yaml")
        .file(example_dir().join("node.yaml"), "/m/node.yaml")
        .file(example_dir().join("others.yaml"), "/m/others.yaml")
        .host_binary("/usr/sbin/ip")
        .host_binary("/usr/sbin/ipvsadm")
        .host_binary("/usr/sbin/nft")
        .host_binary("/usr/sbin/conntrack")
        .host_binary("/usr/bin/socat")
        .timeout(Duration::from_secs(300))
        .run(&[RUDDER_IPVS_HEAD, TOPOLOGY, RUDDER_IPVS_TAIL].concat())
        .expect("booting the VM");
    report("rudder-ipvs", &out, started);
    out.assert_success();
    assert_answers(
        &out,
        &[
            ("ipvs-node-clusterip ", 6),
            ("ipvs-client-clusterip ", 3),
            ("ipvs-nodeport ", 3),
            ("ipvs-external-ip ", 3),
            ("ipvs-nodeport-after ", 3),
            ("ipvs-pod-clusterip ", 6),
            ("ipvs-while-down ", 3),
            ("ipvs-after-restart ", 3),
            ("ipvs-udp ", 3),
            ("ipvs-nodeport-v6 ", 3),
            ("ipvs-fw-allow ", 1),
        ],
    );
    // The local endpoint is pod0 (111); pods reach a Local service without local endpoints
    // through the cluster's (pod1, 222); the host's own port answers on the node's address.
    assert_eq!(
        answers(&out, "ipvs-local "),
        ["111", "111", "111"],
        "{}",
        out.output
    );
    assert_eq!(
        answers(&out, "ipvs-local-none-pod "),
        ["222"],
        "{}",
        out.output
    );
    assert_eq!(answers(&out, "ipvs-host-port "), ["host"], "{}", out.output);
    // kube-proxy's /proxyMode names the mode.
    assert_eq!(
        answers(&out, "ipvs-proxy-mode "),
        ["ipvs"],
        "{}",
        out.output
    );
    // IPVS holds what the compiler says, line for line, after the churn.
    let lines: Vec<u32> = answers(&out, "ipvs-matches-ir ")
        .iter()
        .filter_map(|a| a.split(' ').next()?.parse().ok())
        .collect();
    assert!(
        lines.len() == 1 && lines[0] > 40,
        "{lines:?}\n{}",
        out.output
    );
    // The same UDP flow (client port 4000) after its endpoint went: the other endpoint.
    let first = answers(&out, "ipvs-udp-flow-first ");
    let after = answers(&out, "ipvs-udp-flow-after ");
    assert!(
        first.len() == 1 && ["111", "222"].contains(&first[0].as_str()),
        "{first:?}\n{}",
        out.output
    );
    let other = if first[0] == "111" { "222" } else { "111" };
    assert_eq!(after, [other, other], "{}", out.output);
    // Persistence: one client, one real server.
    let sticky: std::collections::BTreeSet<String> =
        answers(&out, "ipvs-sticky ").into_iter().collect();
    assert_eq!(sticky.len(), 1, "{sticky:?}\n{}", out.output);
    assert_eq!(answers(&out, "ipvs-sticky ").len(), 6, "{}", out.output);
    // internalTrafficPolicy Local: pod0 (111) is the endpoint on node-1.
    assert_eq!(
        answers(&out, "ipvs-itp-local "),
        ["111", "111", "111", "111"],
        "{}",
        out.output
    );
    // --ipvs-tcp-timeout 1h and --ipvs-udp-timeout 1m set (tcpfin kept at the kernel's 120 s),
    // logged old->new; --ipvs-strict-arp's sysctls; conn_reuse_mode at the kernel's 1 (6.1).
    for (tag, expected) in [
        ("ipvs-timeouts ", "3600 120 60"),
        ("ipvs-timeouts-logged ", "1"),
        ("ipvs-strict-arp ", "1 2"),
        ("ipvs-conn-reuse ", "1"),
    ] {
        assert_eq!(answers(&out, tag), [expected], "{tag}\n{}", out.output);
    }
    for tag in [
        "ipvs-vip-filtered",
        "ipvs-fw-denied",
        "ipvs-local-none-dropped",
        "ipvs-others-kept",
        "ipvs-drained-connection-kept",
        "ipvs-drained-kept-while-inactive",
        "ipvs-addresses-match-ir",
        "ipvs-cleaned",
    ] {
        assert!(out.output.contains(tag), "{tag}\n{}", out.output);
    }
    // Rejected by the nftables part, not by IPVS's rate-limited ICMP (1.3–2.3 s under
    // kube-proxy): well under a second even under emulation.
    let refused: Vec<u64> = answers(&out, "ipvs-refused-ms ")
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    assert!(
        refused.len() == 1 && refused[0] < 1000,
        "refused after {refused:?} ms\n{}",
        out.output
    );
    // rr over three real servers: six connections reach more than one.
    let spread: std::collections::BTreeSet<String> =
        answers(&out, "ipvs-node-clusterip ").into_iter().collect();
    assert!(spread.len() > 1, "rr spreads: {spread:?}\n{}", out.output);
    assert!(out.output.contains("RUDDER-IPVS-OK"), "{}", out.output);
}

/// The IPVS codec against a real kernel: `crates/ipvs/tests/kernel.rs` runs in the guest as
/// root (every command round-tripped through IPVS, in a namespace of its own), and what the
/// kernel answered to the vectors' requests (`recapture`) is compared with the committed
/// captures (`crates/ipvs/tests/vectors/captured/`, which `tests/vectors.rs` decodes without
/// root), except what the kernel picks: the family id, the port id, and the order of a dump.
#[test]
fn ipvs_codec_against_the_guest_kernel() {
    let Some(prepared) = prepared() else { return };
    const GUEST_BIN: &str = "/usr/local/bin/rudder-ipvs-kernel-tests";
    let bin = vm::test_binary("rudder-ipvs", "kernel").expect("the IPVS kernel tests");
    let script = format!(
        "mkdir -p /tmp/cap\nRUDDER_IPVS_CAPTURE=/tmp/cap {GUEST_BIN} --ignored --test-threads 1; rc=$?\n\
         for f in /tmp/cap/*.hex; do echo \"== capture $(basename $f .hex)\"; grep -v '^#' $f; done\n\
         exit $rc\n"
    );
    let out = Vm::new(&prepared)
        .modules(&vm::default_modules())
        // Its shared libraries come with `host_binary`; the binary itself runs from a fixed
        // path, since the guest mounts a tmpfs on /tmp, which hides a checkout under /tmp.
        .host_binary(&bin)
        .file(&bin, GUEST_BIN)
        .host_binary("/usr/sbin/ip")
        .timeout(Duration::from_secs(180))
        .run(&script)
        .expect("booting the VM");
    out.assert_success();
    assert!(
        // kernel_round_trip, recapture and the measurement of batching.
        out.output.contains("test result: ok. 3 passed; 0 failed"),
        "{}",
        out.output
    );
    let mut captures: Vec<(String, Vec<u8>)> = Vec::new();
    for line in out.output.lines() {
        if let Some(name) = line.strip_prefix("== capture ") {
            captures.push((name.trim().to_owned(), Vec::new()));
        } else if let Some((_, bytes)) = captures.last_mut() {
            bytes.extend(
                line.split_whitespace()
                    .filter_map(|h| u8::from_str_radix(h, 16).ok()),
            );
        }
    }
    let names: Vec<&str> = captures.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.len() >= 8, "captures: {names:?}\n{}", out.output);
    let vectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ipvs/tests/vectors/captured");
    for (name, got) in &captures {
        let path = vectors.join(format!("{name}.hex"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            panic!("{name}: no committed vector {}", path.display());
        };
        let digits: String = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or(""))
            .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
            .collect();
        let want: Vec<u8> = (0..digits.len() / 2)
            .filter_map(|i| u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).ok())
            .collect();
        assert_eq!(
            normalized(got),
            normalized(&want),
            "{name}: the kernel's answer differs from the capture\n got {got:02x?}\nwant {want:02x?}"
        );
    }
}

/// A datagram of netlink messages with what the kernel picks zeroed: in each message's
/// header the port id, and the type when it is a generic-netlink family id (not `NLMSG_*`
/// or the controller); in an error's copy of the request, the same.
fn normalized(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    let mut at = 0;
    while at + 16 <= bytes.len() {
        let len = u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let len = (len as usize).max(16).min(bytes.len() - at);
        messages.push(normalized_message(&bytes[at..at + len]));
        at += (len + 3) & !3;
    }
    // A dump's entries come in the kernel's hash order.
    messages.sort();
    messages
}

fn normalized_message(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let mut at = 0;
    while at + 16 <= out.len() {
        let len = u32::from_ne_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]) as usize;
        let ty = u16::from_ne_bytes([out[at + 4], out[at + 5]]);
        if ty > 0x10 {
            out[at + 4] = 0;
            out[at + 5] = 0;
        }
        out[at + 12..at + 16].fill(0);
        if ty == 2 && at + 36 <= out.len() {
            // nlmsgerr: the error, then the request's header.
            let req = at + 20;
            let rty = u16::from_ne_bytes([out[req + 4], out[req + 5]]);
            if rty > 0x10 {
                out[req + 4] = 0;
                out[req + 5] = 0;
            }
            out[req + 12..req + 16].fill(0);
        }
        if len < 16 {
            break;
        }
        at += (len + 3) & !3;
    }
    out
}
