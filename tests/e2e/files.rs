//! End-to-end tests of the manifest file source and of the one-daemon-per-namespace lock
//! (issue 10, items 5, 6 and 8): hostile trees, edits that used to lose rules, and two daemons
//! in one network namespace. The real binary, a real kernel in throwaway namespaces, and real
//! connections to an unrelated service that must keep working throughout.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rudder_e2e::{
    Daemon, EchoServers, Netns, Proto, TempDir, Topology, e2e_enabled, histogram, nft, serve_pod,
};

const NAMES: [&str; 3] = ["111", "222", "333"];
const SYNC_DONE: &str = "sync done";
const CLUSTER_IP: &str = "10.96.100.100:80";
/// The example's slice lists pod 3 with this line; dropping it removes backend 333.
const POD3: &str = "- addresses: [10.244.3.2]\n  conditions: {ready: true}\n  nodeName: node-1\n";

fn rudder_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rudder"))
}

fn example(name: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/nginx");
    std::fs::read_to_string(dir.join(name)).expect("example manifest")
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test socket address")
}

/// The example manifests in a directory of their own.
fn manifests() -> TempDir {
    let dir = TempDir::new("files").expect("temp dir");
    for f in ["node.yaml", "nginx.yaml", "others.yaml"] {
        dir.write(f, &example(f)).expect("copy manifest");
    }
    dir
}

/// Every hostile kind of entry, next to the good files. Returns how many there are.
fn add_hostile_entries(dir: &Path) -> usize {
    use std::os::unix::fs::symlink;
    nix::unistd::mkfifo(&dir.join("fifo.yaml"), nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    symlink("/dev/zero", dir.join("zero.yaml")).expect("symlink");
    symlink("loop2.yaml", dir.join("loop1.yaml")).expect("symlink");
    symlink("loop1.yaml", dir.join("loop2.yaml")).expect("symlink");
    symlink("nowhere.yaml", dir.join("dangling.yaml")).expect("symlink");
    std::fs::write(dir.join("deep.yaml"), "[".repeat(100_000)).expect("write");
    // Sparse: 65 MiB by its size, nothing on disk.
    let big = std::fs::File::create(dir.join("big.yaml")).expect("create");
    big.set_len(65 << 20).expect("set_len");
    7
}

/// The reasons expected for the entries of [`add_hostile_entries`].
const HOSTILE: [(&str, &str); 7] = [
    ("big.yaml", "file_too_large"),
    ("dangling.yaml", "broken_symlink"),
    ("deep.yaml", "too_deeply_nested"),
    ("fifo.yaml", "not_regular_file"),
    ("loop1.yaml", "broken_symlink"),
    ("loop2.yaml", "broken_symlink"),
    ("zero.yaml", "not_regular_file"),
];

fn start(topo_node: &Netns, dir: &Path, extra: &[&str]) -> Daemon {
    let dir = dir.display().to_string();
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
    let mut d = Daemon::start(&rudder_bin(), topo_node, &args).expect("start rudder");
    d.wait_for(SYNC_DONE, 1, Duration::from_secs(20))
        .expect("first sync");
    d
}

fn pods(topo: &Topology) -> Vec<EchoServers> {
    (0..3)
        .map(|i| serve_pod(&topo.pods[i], NAMES[i], &[80]).expect("echo servers"))
        .collect()
}

fn backends(topo: &Topology) -> BTreeMap<String, usize> {
    histogram(&topo.pods[0], addr(CLUSTER_IP), 30, Proto::Tcp)
}

fn answered_by(hist: &BTreeMap<String, usize>) -> Vec<&str> {
    hist.keys().map(String::as_str).collect()
}

/// A plain HTTP GET from inside `ns`: status code and body.
fn http_get(ns: &Netns, to: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let to = addr(to);
    ns.enter(|| {
        let mut s =
            std::net::TcpStream::connect_timeout(&to, Duration::from_secs(1)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        let (head, body) = out.split_once("\r\n\r\n").expect("header end");
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status code");
        (code, body.to_owned())
    })
    .expect("enter namespace")
}

/// `rudder <args>` run in `ns`: (success, stdout + stderr).
fn rudder(ns: &Netns, args: &[&str]) -> (bool, String) {
    let out = ns
        .command(&rudder_bin().display().to_string())
        .args(args)
        .output()
        .expect("run rudder");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Waits until `/status` lists `n` skipped files.
fn wait_skipped(node: &Netns, n: usize) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = http_get(node, "127.0.0.1:10249", "/status");
        let st: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
        let len = st["skippedInput"].as_array().map_or(0, Vec::len);
        if len == n {
            return st;
        }
        assert!(Instant::now() < deadline, "{len} skipped, not {n}: {st}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn compile_skips_each_hostile_file_with_a_reason_and_prints_the_rest() {
    if !e2e_enabled() {
        return;
    }
    let dir = manifests();
    add_hostile_entries(dir.path());
    let started = Instant::now();
    let (ok, out) = rudder(
        &Netns::new("fcompile").expect("netns"),
        &[
            "compile",
            "--manifests",
            &dir.path().display().to_string(),
            "--hostname-override",
            "node-1",
        ],
    );
    let took = started.elapsed();
    assert!(ok, "{out}");
    assert!(took < Duration::from_secs(5), "compile took {took:?}");
    assert!(
        out.contains("10.96.100.100"),
        "the good files are compiled:\n{out}"
    );
    for (file, reason) in HOSTILE {
        assert!(
            out.lines().any(|l| l.starts_with("rudder: skipping")
                && l.contains(file)
                && l.contains(reason)),
            "no skip line for {file} ({reason}):\n{out}"
        );
    }
    let (strict, _) = rudder(
        &Netns::new("fstrict").expect("netns"),
        &[
            "compile",
            "--strict",
            "--manifests",
            &dir.path().display().to_string(),
        ],
    );
    assert!(!strict, "--strict refuses skipped files");
}

#[test]
fn hostile_files_are_skipped_while_everything_else_keeps_flowing() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new().expect("topology");
    let _pods = pods(&topo);
    let dir = manifests();
    let hostile = add_hostile_entries(dir.path());
    // They are there from the start: the first sync still happens.
    let mut d = start(&topo.node, dir.path(), &[]);
    assert_eq!(
        answered_by(&backends(&topo)),
        NAMES,
        "first sync with hostile files"
    );
    let st = wait_skipped(&topo.node, hostile);
    let mut reasons: Vec<(String, String)> = st["skippedInput"]
        .as_array()
        .expect("list")
        .iter()
        .map(|s| {
            let file = s["file"].as_str().expect("file");
            let name = Path::new(file).file_name().expect("name").to_string_lossy();
            (
                name.into_owned(),
                s["reason"].as_str().expect("reason").to_owned(),
            )
        })
        .collect();
    reasons.sort();
    let expected: Vec<(String, String)> = HOSTILE
        .iter()
        .map(|(f, r)| ((*f).to_owned(), (*r).to_owned()))
        .collect();
    assert_eq!(reasons, expected);
    // /healthz answers, healthy, and says input is skipped.
    let (code, body) = http_get(&topo.client, "172.18.0.2:10256", "/healthz");
    assert_eq!(code, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(health["skippedInputFiles"], hostile, "{health}");
    let (_, text) = http_get(&topo.node, "127.0.0.1:10249", "/metrics");
    for reason in [
        "not_regular_file",
        "file_too_large",
        "too_deeply_nested",
        "broken_symlink",
    ] {
        let m = format!("rudder_invalid_input_skipped_total{{reason=\"{reason}\"}}");
        assert!(metric(&text, &m) >= 1.0, "{m}:\n{text}");
    }
    let (_, status) = rudder(&topo.node, &["status"]);
    assert!(
        status.contains(&format!("skipped input:       {hostile} file(s)"))
            && status.contains("fifo.yaml (not_regular_file): a FIFO"),
        "{status}"
    );
    // Updates of the good files are still applied.
    let syncs = d.count(SYNC_DONE);
    let nginx = dir.path().join("nginx.yaml");
    let text = std::fs::read_to_string(&nginx).expect("read");
    dir.write("nginx.yaml", &text.replacen(POD3, "", 1))
        .expect("write");
    d.wait_for(SYNC_DONE, syncs + 1, Duration::from_secs(5))
        .expect("the edit is applied");
    assert_eq!(answered_by(&backends(&topo)), ["111", "222"]);
    // Removing a bad file recovers it; the others stay skipped.
    std::fs::remove_file(dir.path().join("fifo.yaml")).expect("rm fifo");
    wait_skipped(&topo.node, hostile - 1);
}

#[test]
fn truncating_and_writing_back_a_file_never_drops_its_rules() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new().expect("topology");
    let _pods = pods(&topo);
    let dir = manifests();
    let d = start(&topo.node, dir.path(), &[]);
    let nginx = dir.path().join("nginx.yaml");
    let text = std::fs::read_to_string(&nginx).expect("read");
    let syncs = d.count(SYNC_DONE);
    // Truncate in place, write back 300 ms later (as `> file; sleep .3; cat new > file`),
    // while a client keeps connecting.
    let writer = std::thread::spawn({
        let nginx = nginx.clone();
        let text = text.clone();
        move || {
            std::fs::File::create(&nginx).expect("truncate");
            std::thread::sleep(Duration::from_millis(300));
            std::fs::write(&nginx, text).expect("write back");
        }
    });
    let until = Instant::now() + Duration::from_millis(3000);
    let mut probes = 0;
    while Instant::now() < until {
        let h = histogram(&topo.pods[0], addr(CLUSTER_IP), 5, Proto::Tcp);
        assert!(
            h.keys().all(|k| NAMES.contains(&k.as_str())),
            "a connection failed during the rewrite: {h:?}"
        );
        probes += 5;
    }
    writer.join().expect("writer");
    assert!(probes >= 20, "{probes}");
    assert_eq!(
        d.count(SYNC_DONE),
        syncs,
        "same content back: nothing to sync"
    );
}

#[test]
fn an_edit_that_keeps_size_and_mtime_is_applied() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new().expect("topology");
    let _pods = pods(&topo);
    let dir = manifests();
    let mut d = start(&topo.node, dir.path(), &[]);
    assert_eq!(answered_by(&backends(&topo)), NAMES);
    let nginx = dir.path().join("nginx.yaml");
    let text = std::fs::read_to_string(&nginx).expect("read");
    let mtime = std::fs::metadata(&nginx)
        .expect("stat")
        .modified()
        .expect("mtime");
    let syncs = d.count(SYNC_DONE);
    // Pod 3's address becomes pod 2's: same size. Then `touch -r` the old time back.
    let edited = text.replacen("[10.244.3.2]", "[10.244.2.2]", 1);
    assert_eq!(edited.len(), text.len());
    std::fs::write(&nginx, &edited).expect("write");
    std::fs::File::options()
        .write(true)
        .open(&nginx)
        .expect("open")
        .set_modified(mtime)
        .expect("touch -r");
    let meta = std::fs::metadata(&nginx).expect("stat");
    assert_eq!(
        (meta.len(), meta.modified().expect("mtime")),
        (text.len() as u64, mtime)
    );
    d.wait_for(SYNC_DONE, syncs + 1, Duration::from_secs(5))
        .expect("the edit is applied");
    assert_eq!(answered_by(&backends(&topo)), ["111", "222"]);
}

#[test]
fn a_second_daemon_in_the_same_namespace_refuses_to_start() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new().expect("topology");
    let _pods = pods(&topo);
    let dir = manifests();
    let mut first = start(&topo.node, dir.path(), &[]);
    let pid = first.pid().expect("pid");
    let before = nft::list_ruleset(&topo.node).expect("ruleset");
    // Another metrics and health port, the same tables: refused, naming the holder.
    let mut second = Daemon::start(
        &rudder_bin(),
        &topo.node,
        &[
            "run",
            "--manifests",
            &dir.path().display().to_string(),
            "--hostname-override",
            "node-1",
            "--metrics-bind-address",
            "127.0.0.1:10250",
            "--healthz-bind-address",
            "127.0.0.1:10257",
        ],
    )
    .expect("start the second");
    second
        .wait_for(
            "already manages the `rudder` tables",
            1,
            Duration::from_secs(10),
        )
        .expect("the second refuses");
    let log = second.log();
    assert!(
        log.contains(&format!("pid {pid}, metrics at 127.0.0.1:10249")),
        "{log}"
    );
    assert!(
        !second.terminate(Duration::from_secs(5)).expect("reap"),
        "the second exited with an error"
    );
    assert!(!log.contains(SYNC_DONE), "{log}");
    // `rudder status` says who holds the lock; `rudder cleanup` refuses under its feet.
    let (ok, status) = rudder(&topo.node, &["status"]);
    assert!(ok, "{status}");
    assert!(
        status.contains(&format!(
            "lock:                holds the `rudder` tables of this network namespace (pid {pid})"
        )),
        "{status}"
    );
    let (ok, cleanup) = rudder(&topo.node, &["cleanup"]);
    assert!(!ok, "{cleanup}");
    assert!(
        cleanup.contains("refusing to delete the tables")
            && cleanup.contains(&format!("pid {pid}")),
        "{cleanup}"
    );
    assert_eq!(nft::list_ruleset(&topo.node).expect("ruleset"), before);
    assert_eq!(
        answered_by(&backends(&topo)),
        NAMES,
        "the first keeps working"
    );
    // In another network namespace, another daemon starts while the first runs.
    let other = Netns::new("flock").expect("netns");
    let mut elsewhere = start(&other, dir.path(), &["--node-ip", "172.18.0.2"]);
    assert!(
        elsewhere
            .terminate(Duration::from_secs(5))
            .expect("terminate")
    );
    assert!(first.terminate(Duration::from_secs(5)).expect("terminate"));
    // Once the holder is gone, cleanup proceeds.
    let (ok, cleanup) = rudder(&topo.node, &["cleanup"]);
    assert!(ok, "{cleanup}");
}
