//! `cargo xtask bench-ipvs [--quick] [--sizes N,N,...] [--changes K]`: the IPVS mode at
//! scale, in the test VM (`rudder_e2e::vm`: Debian's 6.1 kernel under qemu, software
//! emulation), one boot per size.
//!
//! For N services × 10 endpoints (ClusterIPs, `bench_state::Shape::cluster_ips`, written as
//! the YAML manifests `--manifests` reads), the static daemon runs `--proxy-mode ipvs` in a
//! namespace of the guest and the benchmark measures:
//! - start to the end of the first sync (every virtual server, real server and VIP
//!   programmed: checked with `ipvsadm -Ln` and `ip addr` afterwards), with the sync's own
//!   compile and apply (kernel) times from its `sync done` log line;
//! - K one-endpoint changes (one EndpointSlice file rewritten: one endpoint goes, one comes):
//!   each partial sync's apply time, from the log;
//! - the daemon's VmHWM and VmRSS after the first sync and after the changes;
//! - `ipvsadm -Ln` (a dump of every virtual server and, per virtual server, of its real
//!   servers: the reads kube-proxy's IPVS mode does on every sync) and a restart, whose
//!   first sync reads the kernel the same way and finds nothing to write to IPVS;
//! - where the time goes: the same first sync, one change and restart again in a fresh
//!   namespace with ftrace's function_graph tracer on a few kernel functions ([`FUNCTIONS`]:
//!   the netlink entry point, the handlers of address adds, IPVS commands, dumps and
//!   nf_tables batches, RCU waits): how many requests of each kind reach the kernel and how
//!   long the kernel spends in each. The traced run's own times are slower (tracing costs);
//!   the headline figures come from the untraced run.
//!
//! Quick: 1,000 and 2,500 services, 10 changes; default: 1,000, 2,500, 5,000 and 10,000, 20
//! changes. The static `rudder` is `RUDDER_VM_RUDDER` when set, else built as `cargo xtask
//! dist` builds it. The report (Markdown, for `docs/performance.md`) goes to stdout; the
//! console goes to stderr.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rudder_e2e::TempDir;
use rudder_e2e::bench_state::{self, Shape};
use rudder_e2e::vm::{self, Vm};
use rudder_model::{EndpointSlice, IpFamily, Service};

/// Services per manifest file.
const CHUNK: usize = 500;

/// The guest's part: `N`, `K`, `WAIT`, `VIP`, `FUNCTIONS` and `KERNEL_TESTS` are set before
/// it.
const SCRIPT: &str = r##"
set -e
now() { date +%s.%N; }
LOG=/tmp/rudder.log
count() { grep -c 'sync done' $LOG 2>/dev/null || true; }
wait_syncs() {
    i=0
    until [ "$(count)" -ge "$1" ]; do
        i=$((i + 1))
        if [ $i -gt "$2" ]; then
            tail -n 40 $LOG
            echo "BENCH-FAIL no sync number $1 within $(($2 / 5)) s"
            exit 1
        fi
        sleep 0.2
    done
}
mem() { grep -E '^(VmHWM|VmRSS):' /proc/$pid/status | sed "s/^/BENCH-MEM $1 /"; }
# CPU time of each of the daemon's threads since it started (ticks of 10 ms), and the
# guest's idle time (field 5 of /proc/stat's cpu line).
cpu() {
    for t in /proc/$pid/task/*; do echo "BENCH-CPU $1 $(cut -d' ' -f2,14,15 $t/stat)"; done
    echo "BENCH-IDLE $1 $(head -1 /proc/stat | tr -s ' ' | cut -d' ' -f5)"
}
setup_ns() {
    ip netns add $1
    ip -n $1 link set lo up
    ip -n $1 link add eth0 type dummy
    ip -n $1 addr add 172.18.0.2/24 dev eth0
    ip -n $1 link set eth0 up
}
ARGS="run --proxy-mode ipvs --manifests /b/m --hostname-override node-0 --cluster-cidr 10.0.0.0/12 --iptables-min-sync-period 0s"
start_rudder() {
    ip netns exec $1 rudder $ARGS >>$LOG 2>&1 &
    pid=$!
}
stop_rudder() {
    kill $pid
    wait $pid || true
}
echo "BENCH-FACT kernel $(uname -r) cpus $(nproc) memory_kib $(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2)"
echo "BENCH-FACT sysctl ip_vs_conn_tab_size $(grep -o 'size=[0-9]*' /proc/net/ip_vs | head -1)"

echo "== first sync of $N services"
setup_ns node
echo "BENCH-IDLE start $(head -1 /proc/stat | tr -s ' ' | cut -d' ' -f5)"
echo "BENCH-START $(now)"
start_rudder node
wait_syncs 1 $WAIT
cpu first
mem first
ip netns exec node ipvsadm -Ln >/tmp/ln
echo "BENCH-KERNEL $(grep -c '^TCP' /tmp/ln || true) $(grep -c -- '-> 10\.' /tmp/ln || true) $(ip -n node -4 addr show dev kube-ipvs0 | grep -c 'inet ' || true)"

echo "== $K one-endpoint changes"
k=1
while [ $k -le $K ]; do
    n=$(count)
    cp /b/alt/change-$k.yaml /b/m/.change.tmp
    echo "BENCH-CHANGE $k $(now)"
    mv /b/m/.change.tmp /b/m/zz-change.yaml
    wait_syncs $((n + 1)) 600
    sleep 0.3
    k=$((k + 1))
done
mem changes
ip netns exec node ipvsadm -Ln -t $VIP:80

echo "== what kube-proxy reads on every sync: every virtual server and its real servers"
for r in 1 2 3; do
    t0=$(now)
    ip netns exec node ipvsadm -Ln >/tmp/ln
    t1=$(now)
    echo "BENCH-DUMP $t0 $t1 $(wc -l </tmp/ln)"
done

echo "== restart over the programmed kernel"
stop_rudder
n=$(count)
echo "BENCH-IDLE restart-start $(head -1 /proc/stat | tr -s ' ' | cut -d' ' -f5)"
echo "BENCH-RESTART $(now)"
start_rudder node
wait_syncs $((n + 1)) $WAIT
cpu restart
mem restart
stop_rudder
# Empty the namespace: IPVS's table of virtual servers and the list of IPv4 addresses the
# kernel's lifetime check walks are shared by all namespaces.
ip netns exec node ipvsadm -C
ip -n node link del kube-ipvs0

echo "== the same again, traced: which kernel handlers the time goes to"
mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
T=/sys/kernel/tracing
for f in $FUNCTIONS; do echo $f >>$T/set_ftrace_filter || echo "no $f to trace"; done
echo 131072 >$T/buffer_size_kb
echo function_graph >$T/current_tracer
echo 1 >$T/options/funcgraph-tail
echo 0 >$T/options/funcgraph-irqs
summary() {
    echo 0 >$T/tracing_on
    awk -v phase=$1 '
        /\| +[a-z_0-9.]+( \[[a-z_0-9]+\])?\(\) \{$/ {
            x = $0; sub(/.*\| +/, "", x); sub(/ \[[a-z_0-9]+\]/, "", x); sub(/\(\) \{$/, "", x)
            st[++depth] = x
            next
        }
        / us +\|/ {
            s = $0; sub(/ us +\|.*/, "", s); k = split(s, a, " "); d = a[k] + 0
            x = $0; sub(/.*\| +/, "", x); sub(/ \[[a-z_0-9]+\]/, "", x)
            if (x ~ /^\} \/\* /) {
                sub(/^\} \/\* /, "", x); sub(/ \*\/.*/, "", x)
                if (depth > 0) depth--
            } else if (x ~ /\(\);$/) sub(/\(\);$/, "", x)
            else next
            c[x]++; t[x] += d
            # Where the RCU waits are: under which traced function.
            if (x ~ /^synchronize/) { p = x "<" (depth > 0 ? st[depth] : "top"); c[p]++; t[p] += d }
        }
        END { for (f in c) printf "BENCH-FTRACE %s %s %d %.0f\n", phase, f, c[f], t[f] }' $T/trace
    grep -c . $T/trace | sed "s/^/BENCH-FTRACE-LINES $1 /"
    echo >$T/trace
}
LOG=/tmp/rudder-traced.log
setup_ns ft
echo >$T/trace
echo 1 >$T/tracing_on
start_rudder ft
wait_syncs 1 $WAIT
summary first
n=$(count)
cp /b/alt/change-$((K - 1)).yaml /b/m/.change.tmp
echo 1 >$T/tracing_on
mv /b/m/.change.tmp /b/m/zz-change.yaml
wait_syncs $((n + 1)) 600
summary change
stop_rudder
n=$(count)
echo 1 >$T/tracing_on
start_rudder ft
wait_syncs $((n + 1)) $WAIT
summary restart
stop_rudder
echo nop >$T/current_tracer
ip netns exec ft ipvsadm -C
ip -n ft link del kube-ipvs0

echo "== IPVS requests without the daemon: one by one, and batched"
RUDDER_IPVS_MEASURE_SERVICES=$N $KERNEL_TESTS --ignored --exact measure_one_by_one_and_batched \
    --nocapture --test-threads 1 >/tmp/batch.out 2>&1 || { cat /tmp/batch.out; exit 1; }
grep BENCH-BATCH /tmp/batch.out
sed 's/^/BENCH-TRACED-LOG /' $LOG
sed 's/^/BENCH-LOG /' /tmp/rudder.log
echo BENCH-OK
"##;

/// A service of the benchmark state as a manifest.
fn service_yaml(svc: &Service) -> String {
    let ip = svc.cluster_ips.first().map(ToString::to_string);
    let mut s = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {}, namespace: {}}}\nspec:\n  type: ClusterIP\n  clusterIP: {}\n  ports:\n",
        svc.key.name,
        svc.key.namespace,
        ip.unwrap_or_default()
    );
    for p in &svc.ports {
        let _ = writeln!(
            s,
            "  - {{name: {}, port: {}, protocol: {}, targetPort: {}}}",
            p.name,
            p.port,
            p.protocol.as_str().to_uppercase(),
            p.name
        );
    }
    s
}

/// An EndpointSlice of the benchmark state as a manifest.
fn slice_yaml(slice: &EndpointSlice) -> String {
    let family = match slice.family {
        IpFamily::V4 => "IPv4",
        IpFamily::V6 => "IPv6",
    };
    let mut s = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {}\n  namespace: {}\n  labels: {{kubernetes.io/service-name: {}}}\naddressType: {family}\nports:\n",
        slice.key.name, slice.key.namespace, slice.service.name
    );
    for p in &slice.ports {
        let _ = writeln!(
            s,
            "- {{name: {}, port: {}, protocol: {}}}",
            p.name,
            p.port,
            p.protocol.as_str().to_uppercase()
        );
    }
    s.push_str("endpoints:\n");
    for e in &slice.endpoints {
        let _ = writeln!(
            s,
            "- {{addresses: [\"{}\"], conditions: {{ready: true}}, nodeName: {}}}",
            e.address,
            e.node_name.as_deref().unwrap_or("node-0")
        );
    }
    s
}

const NODE_YAML: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: node-0}\nstatus:\n  addresses:\n  - {type: InternalIP, address: 172.18.0.2}\n";

/// The service whose endpoints change: in the middle.
fn changed(services: usize) -> usize {
    services / 2
}

/// Writes the manifests (`m/`: the node, the services in files of [`CHUNK`], the changed
/// service's slice alone in `zz-change.yaml`) and the changes (`alt/change-K.yaml`: its slice
/// with the endpoints moved up by K, one endpoint different from change K-1) under `dir`.
fn write_inputs(dir: &Path, shape: &Shape, changes: usize) -> anyhow::Result<()> {
    let n = shape.services;
    let c = changed(n);
    for sub in ["m", "alt"] {
        std::fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating {sub}"))?;
    }
    std::fs::write(dir.join("m/node.yaml"), NODE_YAML)?;
    for (chunk, start) in (0..n).step_by(CHUNK).enumerate() {
        let mut text = String::new();
        for i in start..(start + CHUNK).min(n) {
            text.push_str("---\n");
            text.push_str(&service_yaml(&bench_state::service(shape, i)));
            if i != c {
                text.push_str("---\n");
                text.push_str(&slice_yaml(&bench_state::slice(shape, i, 0)));
            }
        }
        std::fs::write(dir.join(format!("m/svc-{chunk:03}.yaml")), text)?;
    }
    std::fs::write(
        dir.join("m/zz-change.yaml"),
        slice_yaml(&bench_state::slice(shape, c, 0)),
    )?;
    for k in 0..=changes {
        std::fs::write(
            dir.join(format!("alt/change-{k}.yaml")),
            slice_yaml(&bench_state::slice(shape, c, k)),
        )?;
    }
    Ok(())
}

/// The `key=value` fields of a log line (quotes removed).
fn fields(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
        .collect()
}

fn field(line: &str, key: &str) -> Option<f64> {
    fields(line).get(key).and_then(|v| v.parse().ok())
}

/// One `sync done` line.
#[derive(Debug, Clone, Default)]
struct Sync {
    at: f64,
    kind: String,
    compile_ms: f64,
    apply_ms: f64,
    objects: u64,
    added: u64,
    deleted: u64,
}

fn sync_of(line: &str) -> Option<Sync> {
    if !line.contains("sync done") {
        return None;
    }
    let f = fields(line);
    let num = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Some(Sync {
        at: crate::bench_api::log_time(line)?,
        kind: f.get("kind").cloned().unwrap_or_default(),
        compile_ms: field(line, "compile_ms")?,
        apply_ms: field(line, "apply_ms")?,
        objects: num("objects"),
        added: num("elements_added"),
        deleted: num("elements_deleted"),
    })
}

/// The kernel functions the traced run times (ftrace's function_graph): the netlink entry
/// point, each request's handler, and the parts of an address add and of IPVS's own work.
const FUNCTIONS: &[&str] = &[
    "netlink_sendmsg",
    "__netlink_dump_start",
    "inet_rtm_newaddr",
    "__inet_insert_ifa",
    "rtmsg_ifa",
    "fib_add_ifaddr",
    "check_lifetime",
    "inet_dump_ifaddr",
    "ip_vs_genl_set_cmd",
    "ip_vs_genl_get_cmd",
    "ip_vs_add_service",
    "ip_vs_add_dest",
    "ip_vs_genl_dump_services",
    "ip_vs_genl_dump_dests",
    "nfnetlink_rcv",
    "synchronize_rcu",
    "synchronize_net",
];

/// Calls and total time (µs) of a traced function in a phase.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Traced {
    calls: u64,
    us: f64,
}

/// What one size's boot measured.
#[derive(Debug, Default)]
struct SizeResult {
    services: usize,
    /// The host's load average (1 min) before and after the boot.
    host_load: (f64, f64),
    /// Script time before starting the daemon to the first sync's log time (s).
    first_sync: f64,
    first: Sync,
    /// The daemon's "starting Rudder" line to the first sync (s).
    from_log_start: f64,
    /// Virtual servers, real servers and VIPs in the kernel after the first sync.
    kernel: (u64, u64, u64),
    changes: Vec<Sync>,
    /// File renamed to the change's sync done (s).
    change_latency: Vec<f64>,
    /// (phase, VmHWM KiB, VmRSS KiB).
    memory: Vec<(String, u64, u64)>,
    /// `ipvsadm -Ln` durations (s) and lines.
    dumps: Vec<f64>,
    dump_lines: u64,
    restart: Sync,
    restart_total: f64,
    /// (phase, function) → calls and time, in the traced run.
    ftrace: BTreeMap<(String, String), Traced>,
    /// The traced run's syncs: first, change, restart.
    traced: Vec<Sync>,
    /// (phase, thread name) → user and system CPU ticks (10 ms) since the daemon started.
    cpu: BTreeMap<(String, String), (u64, u64)>,
    /// phase → the guest's idle ticks at that point.
    idle: BTreeMap<String, u64>,
    /// Start to the log line of the first snapshot's arrival ("node context changed") (s).
    loaded: f64,
    /// `measure_one_by_one_and_batched`: what → (requests, seconds).
    batch: BTreeMap<String, (u64, f64)>,
    facts: Vec<String>,
    wall: Duration,
}

impl SizeResult {
    fn traced(&self, phase: &str, function: &str) -> Traced {
        self.ftrace
            .get(&(phase.to_owned(), function.to_owned()))
            .copied()
            .unwrap_or_default()
    }
}

fn parse(services: usize, output: &str) -> anyhow::Result<SizeResult> {
    let mut r = SizeResult {
        services,
        ..SizeResult::default()
    };
    let mut start = None;
    let mut restart_at = None;
    let mut changes_at = Vec::new();
    let mut logs = Vec::new();
    for line in output.lines() {
        // A marker may follow other output on its line (the test harness's `test … ...`).
        let line = line.find("BENCH-").map_or(line, |i| &line[i..]);
        let mut w = line.split_whitespace();
        let tag = w.next().unwrap_or_default();
        let rest: Vec<&str> = w.collect();
        let num = |i: usize| rest.get(i).and_then(|v| v.parse::<f64>().ok());
        match tag {
            "BENCH-FACT" => r.facts.push(rest.join(" ")),
            "BENCH-START" => start = num(0),
            "BENCH-RESTART" => restart_at = num(0),
            "BENCH-CHANGE" => changes_at.extend(num(1)),
            "BENCH-KERNEL" => {
                let n = |i| num(i).unwrap_or(0.0) as u64;
                r.kernel = (n(0), n(1), n(2));
            }
            "BENCH-MEM" => {
                let phase = rest.first().copied().unwrap_or_default().to_owned();
                let kib = num(2).unwrap_or(0.0) as u64;
                let rss = rest.get(1) == Some(&"VmRSS:");
                let i = match r.memory.iter().position(|(p, ..)| *p == phase) {
                    Some(i) => i,
                    None => {
                        r.memory.push((phase, 0, 0));
                        r.memory.len() - 1
                    }
                };
                if rss {
                    r.memory[i].2 = kib;
                } else {
                    r.memory[i].1 = kib;
                }
            }
            "BENCH-DUMP" => {
                if let (Some(a), Some(b)) = (num(0), num(1)) {
                    r.dumps.push(b - a);
                }
                r.dump_lines = num(2).unwrap_or(0.0) as u64;
            }
            "BENCH-FTRACE" => {
                if let (Some(phase), Some(f), Some(calls), Some(us)) =
                    (rest.first(), rest.get(1), num(2), num(3))
                {
                    r.ftrace.insert(
                        ((*phase).to_owned(), (*f).to_owned()),
                        Traced {
                            calls: calls as u64,
                            us,
                        },
                    );
                }
            }
            "BENCH-CPU" => {
                if let (Some(phase), Some(comm), Some(u), Some(sy)) =
                    (rest.first(), rest.get(1), num(2), num(3))
                {
                    let e = r
                        .cpu
                        .entry((
                            (*phase).to_owned(),
                            comm.trim_matches(['(', ')']).to_owned(),
                        ))
                        .or_default();
                    e.0 += u as u64;
                    e.1 += sy as u64;
                }
            }
            "BENCH-IDLE" => {
                if let (Some(phase), Some(t)) = (rest.first(), num(1)) {
                    r.idle.insert((*phase).to_owned(), t as u64);
                }
            }
            "BENCH-BATCH" => {
                if let (Some(what), Some(n), Some(secs)) = (rest.first(), num(2), num(3)) {
                    r.batch.insert((*what).to_owned(), (n as u64, secs));
                }
            }
            "BENCH-TRACED-LOG" => r.traced.extend(sync_of(&rest.join(" "))),
            "BENCH-LOG" => logs.push(rest.join(" ")),
            _ => {}
        }
    }
    let syncs: Vec<Sync> = logs.iter().filter_map(|l| sync_of(l)).collect();
    let start = start.context("no BENCH-START")?;
    r.first = syncs.first().cloned().context("no sync done line")?;
    r.first_sync = r.first.at - start;
    if let Some(t) = logs
        .iter()
        .find(|l| l.contains("starting Rudder"))
        .and_then(|l| crate::bench_api::log_time(l))
    {
        r.from_log_start = r.first.at - t;
    }
    if let Some(t) = logs
        .iter()
        .find(|l| l.contains("node context changed"))
        .and_then(|l| crate::bench_api::log_time(l))
    {
        r.loaded = t - start;
    }
    for t in changes_at {
        if let Some(s) = syncs.iter().find(|s| s.at > t) {
            r.change_latency.push(s.at - t);
            r.changes.push(s.clone());
        }
    }
    if let Some(t) = restart_at
        && let Some(s) = syncs.iter().find(|s| s.at > t)
    {
        r.restart_total = s.at - t;
        r.restart = s.clone();
    }
    Ok(r)
}

/// The `p` quantile (nearest rank) of `v`.
fn quantile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// Builds `rudder-ipvs`'s kernel tests (release), whose `measure_one_by_one_and_batched`
/// runs in the guest, and returns the test binary.
fn ipvs_kernel_tests() -> anyhow::Result<PathBuf> {
    let mut cmd = crate::cargo();
    cmd.current_dir(crate::demo::workspace_root())
        .args([
            "test",
            "--release",
            "--locked",
            "-p",
            "rudder-ipvs",
            "--test",
            "kernel",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(std::process::Stdio::inherit());
    eprintln!("xtask: running {cmd:?}");
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed with {}", out.status);
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "kernel")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .context("cargo named no test binary for rudder-ipvs's kernel tests")
}

fn run_size(
    prepared: &vm::Prepared,
    rudder: &Path,
    kernel_tests: &Path,
    services: usize,
    changes: usize,
) -> anyhow::Result<SizeResult> {
    let shape = Shape::cluster_ips(services, 10);
    let dir = TempDir::new("bench-ipvs").context("temporary directory")?;
    write_inputs(dir.path(), &shape, changes)?;
    let vip = bench_state::service(&shape, changed(services)).cluster_ips[0];
    let wait = 1500 + services / 5;
    let script = format!(
        "N={services}\nK={changes}\nWAIT={wait}\nVIP={vip}\nFUNCTIONS=\"{}\"\nKERNEL_TESTS={}\n{SCRIPT}",
        FUNCTIONS.join(" "),
        kernel_tests.display()
    );
    let machine = Vm::new(prepared)
        .modules(&vm::default_modules())
        .memory_mib(2048)
        .file(rudder, "/usr/bin/rudder")
        .dir(dir.path().join("m"), "/b/m")
        .dir(dir.path().join("alt"), "/b/alt")
        .host_binary("/usr/sbin/ip")
        .host_binary("/usr/sbin/ipvsadm")
        .host_binary("/usr/bin/date")
        .host_binary(kernel_tests)
        .timeout(Duration::from_secs(900 + services as u64 / 2));
    let t = Instant::now();
    eprintln!("xtask: bench-ipvs: {services} services × 10 endpoints, {changes} changes");
    let load_before = host_load();
    let out = machine.run(&script).context("running the VM")?;
    let load_after = host_load();
    if out.status != 0 || !out.output.contains("BENCH-OK") {
        bail!(
            "the benchmark's script failed (status {}); its output:\n{}",
            out.status,
            out.output
        );
    }
    let mut r = parse(services, &out.output)?;
    r.wall = t.elapsed();
    r.host_load = (load_before, load_after);
    let (vs, rs, ad) = r.kernel;
    if (vs, rs, ad) != (services as u64, 10 * services as u64, services as u64) {
        bail!(
            "after the first sync the kernel holds {vs} virtual servers, {rs} real servers and {ad} VIPs, not {services}, {} and {services}",
            10 * services
        );
    }
    Ok(r)
}

/// The host's 1-minute load average: qemu's one emulating thread shares the host's cores
/// with whatever else runs.
fn host_load() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn ms(s: f64) -> String {
    format!("{:.0} ms", s * 1e3)
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

/// The CPU columns of `phase` (user / system seconds of the manifests thread, the sync
/// loop's, the link thread's and the others'), and the guest's idle time since `since`.
fn cpu_columns(r: &SizeResult, phase: &str, since: &str) -> String {
    let mut groups = [(0u64, 0u64); 4];
    for ((p, comm), (u, sy)) in &r.cpu {
        if p != phase {
            continue;
        }
        let g = match comm.as_str() {
            "rudder-manifest" | "rudder-manifests" => 0,
            // The sync loop runs on the main thread.
            "rudder" => 1,
            "rudder-links" => 2,
            _ => 3,
        };
        groups[g].0 += u;
        groups[g].1 += sy;
    }
    let secs = |t: u64| t as f64 / 100.0;
    let mut cols: Vec<String> = groups
        .iter()
        .map(|(u, sy)| format!("{:.2} / {:.2} s", secs(*u), secs(*sy)))
        .collect();
    let idle = match (r.idle.get(phase), r.idle.get(since)) {
        (Some(b), Some(a)) => format!("{:.2} s", secs(b.saturating_sub(*a))),
        _ => "—".into(),
    };
    cols.push(idle);
    cols.join(" | ")
}

/// `calls × µs each = total`.
fn per_call(t: Traced) -> String {
    if t.calls == 0 {
        return "—".into();
    }
    format!(
        "{} × {:.0} µs = {:.0} ms",
        t.calls,
        t.us / t.calls as f64,
        t.us / 1e3
    )
}

fn report(results: &[SizeResult], changes: usize) -> String {
    let mut s = String::new();
    if let Some(r) = results.first() {
        let _ = writeln!(
            s,
            "IPVS-mode benchmark in the VM ({}), qemu TCG software emulation, 1 vCPU, 2 GiB; N ClusterIP services × 10 endpoints, static release rudder.\n",
            r.facts.join("; ")
        );
    }
    s.push_str("### First sync\n\n");
    s.push_str("| services | start → first sync done | per service | of which compile | of which apply (kernel) | apply per service | daemon log start → done | VmHWM | VmRSS |\n|---|---|---|---|---|---|---|---|---|\n");
    for r in results {
        let n = r.services as f64;
        let (hwm, rss) = r
            .memory
            .iter()
            .find(|m| m.0 == "first")
            .map_or((0, 0), |m| (m.1, m.2));
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} µs | {:.0} ms | {:.0} ms | {:.0} µs | {} | {} | {} |",
            r.services,
            ms(r.first_sync),
            r.first_sync * 1e6 / n,
            r.first.compile_ms,
            r.first.apply_ms,
            r.first.apply_ms * 1e3 / n,
            ms(r.from_log_start),
            mib(hwm),
            mib(rss)
        );
    }
    s.push_str("\n### First sync: the daemon's threads (CPU seconds since start, user / system) and the guest's idle time\n\n");
    s.push_str("| services | start → manifests in (first snapshot) | `rudder-manifests` (read, parse, convert) | main thread (`rudder`: the sync loop: compile, IPVS requests, nf_tables) | `rudder-links` (VIP address adds) | other threads | guest idle |\n|---|---|---|---|---|---|---|\n");
    for r in results {
        let _ = writeln!(
            s,
            "| {} | {} | {} |",
            r.services,
            ms(r.loaded),
            cpu_columns(r, "first", "start")
        );
    }
    let _ = writeln!(
        s,
        "\n### One-endpoint change ({changes} samples per size)\n"
    );
    s.push_str("| services | apply (kernel), median | p99 | max | compile, median | objects / added / deleted (median sync) | file renamed → sync done, median | VmHWM after | VmRSS after |\n|---|---|---|---|---|---|---|---|---|\n");
    for r in results {
        let apply: Vec<f64> = r.changes.iter().map(|c| c.apply_ms).collect();
        let compile: Vec<f64> = r.changes.iter().map(|c| c.compile_ms).collect();
        let mid = r
            .changes
            .iter()
            .find(|c| c.apply_ms == quantile(&apply, 0.5))
            .cloned()
            .unwrap_or_default();
        let (hwm, rss) = r
            .memory
            .iter()
            .find(|m| m.0 == "changes")
            .map_or((0, 0), |m| (m.1, m.2));
        let partial = r.changes.iter().all(|c| c.kind == "partial");
        let _ = writeln!(
            s,
            "| {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {} / {} / {}{} | {} | {} | {} |",
            r.services,
            quantile(&apply, 0.5),
            quantile(&apply, 0.99),
            quantile(&apply, 1.0),
            quantile(&compile, 0.5),
            mid.objects,
            mid.added,
            mid.deleted,
            if partial { "" } else { " (not all partial!)" },
            ms(quantile(&r.change_latency, 0.5)),
            mib(hwm),
            mib(rss)
        );
    }
    s.push_str("\n### Where the first sync's apply goes (traced run: ftrace function_graph, calls × mean = total, time inside each kernel handler)\n\n");
    s.push_str("| services | apply, traced | netlink sends (`netlink_sendmsg`) | VIP address adds (`inet_rtm_newaddr`) | of which route (`fib_add_ifaddr`) / notification (`rtmsg_ifa`) / the rest (address list walks) | lifetime check (`check_lifetime`, a kworker walking every IPv4 address) | IPVS changes (`ip_vs_genl_set_cmd`) | of which `ip_vs_add_dest` | nf_tables batches (`nfnetlink_rcv`) | dumps | RCU waits |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in results {
        let t = |f: &str| r.traced("first", f);
        let dumps = Traced {
            calls: t("__netlink_dump_start").calls,
            us: t("ip_vs_genl_dump_services").us
                + t("ip_vs_genl_dump_dests").us
                + t("inet_dump_ifaddr").us,
        };
        let rcu = Traced {
            calls: t("synchronize_rcu").calls + t("synchronize_net").calls,
            us: t("synchronize_rcu").us + t("synchronize_net").us,
        };
        let _ = writeln!(
            s,
            "| {} | {:.0} ms | {} | {} | {:.0} / {:.0} / {:.0} µs | {} | {} | {} | {} | {} | {} |",
            r.services,
            r.traced.first().map_or(f64::NAN, |x| x.apply_ms),
            per_call(t("netlink_sendmsg")),
            per_call(t("inet_rtm_newaddr")),
            t("fib_add_ifaddr").us / t("fib_add_ifaddr").calls.max(1) as f64,
            t("rtmsg_ifa").us / t("rtmsg_ifa").calls.max(1) as f64,
            (t("inet_rtm_newaddr").us - t("fib_add_ifaddr").us - t("rtmsg_ifa").us)
                / t("inet_rtm_newaddr").calls.max(1) as f64,
            per_call(t("check_lifetime")),
            per_call(t("ip_vs_genl_set_cmd")),
            per_call(t("ip_vs_add_dest")),
            per_call(t("nfnetlink_rcv")),
            per_call(dumps),
            per_call(rcu)
        );
    }
    s.push_str("\nRCU waits, by the traced function they were under (`top`: none of them):\n\n");
    for r in results {
        let waits: Vec<String> = r
            .ftrace
            .iter()
            .filter(|((_, f), _)| f.contains('<'))
            .map(|((phase, f), t)| format!("{phase} `{f}` {}", per_call(*t)))
            .collect();
        let _ = writeln!(s, "- {} services: {}", r.services, waits.join("; "));
    }
    s.push_str("\n### One change and a restart, traced: the requests and their kernel time\n\n");
    s.push_str("| services | change: apply, traced | change: netlink sends | change: IPVS changes | change: nf_tables batches | restart: apply, traced | restart: dumps started | restart: IPVS dump handlers | restart: nf_tables batches |\n|---|---|---|---|---|---|---|---|---|\n");
    for r in results {
        let c = |f: &str| r.traced("change", f);
        let x = |f: &str| r.traced("restart", f);
        let ipvs_dumps = Traced {
            calls: x("ip_vs_genl_dump_services").calls + x("ip_vs_genl_dump_dests").calls,
            us: x("ip_vs_genl_dump_services").us + x("ip_vs_genl_dump_dests").us,
        };
        let _ = writeln!(
            s,
            "| {} | {:.2} ms | {} | {} | {} | {:.0} ms | {} | {} | {} |",
            r.services,
            r.traced.get(1).map_or(f64::NAN, |x| x.apply_ms),
            per_call(c("netlink_sendmsg")),
            per_call(c("ip_vs_genl_set_cmd")),
            per_call(c("nfnetlink_rcv")),
            r.traced.get(2).map_or(f64::NAN, |x| x.apply_ms),
            x("__netlink_dump_start").calls,
            per_call(ipvs_dumps),
            per_call(x("nfnetlink_rcv"))
        );
    }
    s.push_str("\n### IPVS requests without the daemon (`rudder_ipvs::Handle`, `measure_one_by_one_and_batched` in `crates/ipvs/tests/kernel.rs`): N virtual + 10·N real servers\n\n");
    s.push_str("| services | one by one (`Handle::apply`, as the IPVS mode writes) | per request | batched (`Handle::batch`, 64 per datagram) | per request | read back (1 + N dumps) |\n|---|---|---|---|---|---|\n");
    for r in results {
        let b = |w: &str| r.batch.get(w).copied().unwrap_or((0, f64::NAN));
        let (n, one) = b("one-by-one");
        let (_, batched) = b("batched");
        let (_, dump) = b("dump");
        let per = |secs: f64| secs * 1e6 / n.max(1) as f64;
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} µs | {} | {:.0} µs | {} |",
            r.services,
            ms(one),
            per(one),
            ms(batched),
            per(batched),
            ms(dump)
        );
    }
    s.push_str("\n### Reading the kernel: what kube-proxy does on every sync, Rudder at start and once per full-sync period\n\n");
    s.push_str("| services | `ipvsadm -Ln` (1 + N dumps), median of 3 | lines | Rudder restart: apply of the first sync (nothing written to IPVS) | restart → sync done | kube-proxy reads per sync (requests / records) |\n|---|---|---|---|---|---|\n");
    for r in results {
        let n = r.services as u64;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} ms | {} | {} / {} |",
            r.services,
            ms(quantile(&r.dumps, 0.5)),
            r.dump_lines,
            r.restart.apply_ms,
            ms(r.restart_total),
            3 * n + 2,
            14 * n
        );
    }
    s.push_str("\nThe restart's daemon threads up to the end of its first sync (CPU seconds, user / system):\n\n");
    s.push_str("| services | `rudder-manifests` | sync loop | `rudder-links` | other threads | guest idle |\n|---|---|---|---|---|---|\n");
    for r in results {
        let _ = writeln!(
            s,
            "| {} | {} |",
            r.services,
            cpu_columns(r, "restart", "restart-start")
        );
    }
    s.push_str("\nBoots: ");
    let walls: Vec<String> = results
        .iter()
        .map(|r| {
            format!(
                "{} services {:.0} s (host load {:.1} → {:.1})",
                r.services,
                r.wall.as_secs_f64(),
                r.host_load.0,
                r.host_load.1
            )
        })
        .collect();
    s.push_str(&walls.join(", "));
    s.push_str(" (qemu start to power-off, on the host; the host's 1-minute load average before and after, on its 2 cores).\n");
    s
}

pub fn bench_ipvs(args: &[String]) -> anyhow::Result<()> {
    let mut sizes = vec![1_000, 2_500, 5_000, 10_000];
    let mut changes = 20;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => {
                sizes = vec![1_000, 2_500];
                changes = 10;
            }
            "--sizes" => {
                sizes = it
                    .next()
                    .context("--sizes needs N,N,...")?
                    .split(',')
                    .map(|n| n.trim().replace('_', "").parse::<usize>())
                    .collect::<Result<_, _>>()
                    .context("--sizes needs N,N,...")?;
            }
            "--changes" => {
                changes = it
                    .next()
                    .context("--changes needs a number")?
                    .parse()
                    .context("--changes needs a number")?;
            }
            other => bail!(
                "unknown argument {other:?}; usage: cargo xtask bench-ipvs [--quick] [--sizes N,N,...] [--changes K]"
            ),
        }
    }
    if !(1..=50).contains(&changes) {
        bail!("--changes must be 1 to 50 (the endpoints move up by one per change)");
    }
    if sizes.iter().any(|&n| !(2..=60_000).contains(&n)) {
        bail!(
            "sizes must be 2 to 60,000 services (ClusterIPs 10.96.0.0 + i, endpoints 10.0.0.0 + 64·i)"
        );
    }
    let started = Instant::now();
    let prepared = vm::prepare().context("preparing the VM (cargo xtask vm-prepare)")?;
    let rudder = vm::static_rudder().context("the static rudder")?;
    let kernel_tests = ipvs_kernel_tests()?;
    let mut results = Vec::new();
    for &n in &sizes {
        let r = run_size(&prepared, &rudder, &kernel_tests, n, changes)?;
        eprintln!(
            "xtask: bench-ipvs: {n} services: first sync {}, apply {:.0} ms, change apply median {:.2} ms ({:.0} s)",
            ms(r.first_sync),
            r.first.apply_ms,
            quantile(
                &r.changes.iter().map(|c| c.apply_ms).collect::<Vec<_>>(),
                0.5
            ),
            r.wall.as_secs_f64()
        );
        results.push(r);
    }
    println!("{}", report(&results, changes));
    eprintln!(
        "xtask: bench-ipvs took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_name_every_field_the_source_reads() {
        let shape = Shape::cluster_ips(3, 2);
        let svc = service_yaml(&bench_state::service(&shape, 1));
        assert!(svc.contains("clusterIP: 10.96.0.1\n"), "{svc}");
        assert!(svc.contains("{name: http, port: 80, protocol: TCP, targetPort: http}"));
        let slice = slice_yaml(&bench_state::slice(&shape, 1, 1));
        assert!(slice.contains("name: svc-1-x\n"), "{slice}");
        assert!(slice.contains("labels: {kubernetes.io/service-name: svc-1}"));
        assert!(slice.contains("- {name: http, port: 8080, protocol: TCP}"));
        // Endpoints 64·i + e + shift + 1, on the nodes in turn.
        assert!(
            slice.contains(
                "- {addresses: [\"10.0.0.66\"], conditions: {ready: true}, nodeName: node-2}"
            ),
            "{slice}"
        );
    }

    #[test]
    fn the_log_and_markers_give_the_measurements() {
        let out = "\
BENCH-FACT kernel 6.1.0 cpus 1
BENCH-START 1767323040.0
BENCH-MEM first VmHWM: 2048 kB
BENCH-MEM first VmRSS: 1024 kB
BENCH-KERNEL 2 20 2
BENCH-CHANGE 1 1767323050.0
BENCH-DUMP 1767323060.0 1767323060.5 25
BENCH-RESTART 1767323070.0
BENCH-FTRACE first ip_vs_genl_set_cmd 22 4400
BENCH-IDLE start 1000
BENCH-CPU first (rudder-manifest) 150 20
BENCH-CPU first (rudder) 30 40
BENCH-CPU first (tokio-rt-worker) 1 2
BENCH-IDLE first 1050
test measure_one_by_one_and_batched ... BENCH-BATCH one-by-one 2 22 0.022
BENCH-BATCH batched 2 22 0.0022
BENCH-TRACED-LOG 2026-01-02T03:05:05.250000Z  INFO rudder_controller::sync: sync done kind=\"full\" services_changed=2 objects=4 elements_added=24 elements_deleted=0 bytes=100 compile_ms=1.5 apply_ms=900.5 quarantined=0
BENCH-LOG 2026-01-02T03:04:01.000000Z  INFO rudder: starting Rudder node=node-0
BENCH-LOG 2026-01-02T03:04:05.250000Z  INFO rudder_controller::sync: sync done kind=\"full\" services_changed=2 objects=4 elements_added=24 elements_deleted=0 bytes=100 compile_ms=1.5 apply_ms=300.25 quarantined=0
BENCH-LOG 2026-01-02T03:04:10.500000Z  INFO rudder_controller::sync: sync done kind=\"partial\" services_changed=1 objects=0 elements_added=1 elements_deleted=1 bytes=10 compile_ms=0.1 apply_ms=2.5 quarantined=0
BENCH-LOG 2026-01-02T03:04:31.000000Z  INFO rudder_controller::sync: sync done kind=\"full\" services_changed=2 objects=0 elements_added=0 elements_deleted=0 bytes=10 compile_ms=1.0 apply_ms=800.0 quarantined=0
";
        let r = parse(2, out).expect("parses");
        assert!((r.first_sync - 5.25).abs() < 1e-6, "{}", r.first_sync);
        assert!((r.from_log_start - 4.25).abs() < 1e-6);
        assert_eq!(r.first.kind, "full");
        assert_eq!((r.first.objects, r.first.added), (4, 24));
        assert!((r.first.apply_ms - 300.25).abs() < 1e-9);
        assert_eq!(r.changes.len(), 1);
        assert_eq!(r.changes[0].kind, "partial");
        assert!((r.change_latency[0] - 0.5).abs() < 1e-6);
        assert_eq!(r.memory, [("first".to_owned(), 2048, 1024)]);
        assert_eq!(r.kernel, (2, 20, 2));
        assert!((r.dumps[0] - 0.5).abs() < 1e-6 && r.dump_lines == 25);
        assert!((r.restart.apply_ms - 800.0).abs() < 1e-9);
        assert_eq!(
            r.traced("first", "ip_vs_genl_set_cmd"),
            Traced {
                calls: 22,
                us: 4400.0
            }
        );
        assert_eq!(r.traced.len(), 1);
        assert_eq!(r.cpu[&("first".to_owned(), "rudder".to_owned())], (30, 40));
        assert_eq!(
            cpu_columns(&r, "first", "start"),
            "1.50 / 0.20 s | 0.30 / 0.40 s | 0.00 / 0.00 s | 0.01 / 0.02 s | 0.50 s"
        );
        let text = report(&[r], 1);
        assert!(text.contains("| 2 | 5250 ms | 2625000 µs |"), "{text}");
        assert!(text.contains("| 2 | 900 ms |"), "{text}");
        assert!(text.contains("22 × 200 µs = 4 ms"), "{text}");
        assert!(
            text.contains("| 2 | 22 ms | 1000 µs | 2 ms | 100 µs |"),
            "{text}"
        );
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 10.0);
        assert_eq!(quantile(&v, 0.99), 20.0);
        assert_eq!(quantile(&[3.0], 0.99), 3.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
