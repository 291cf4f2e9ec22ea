//! The hostile-input corpus (`tests/hostile/`, see its README) run through `rudder compile`
//! and a running `rudder run`, plus cases that cannot live in git (FIFOs, symlinks to
//! devices, loops, very deep documents). For every case: no panic, no hang, nothing of the
//! hostile text in any ruleset, and the example's services keep answering real connections.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rudder_e2e::{
    Daemon, EchoServers, Netns, Proto, TempDir, Topology, e2e_enabled, nft, serve_pod,
};

const NAMES: [&str; 3] = ["111", "222", "333"];
/// The example's ClusterIP and NodePort (examples/nginx), which no case may disturb.
const CLUSTER_IP: &str = "10.96.100.100:80";
const NODE_PORT: &str = "172.18.0.2:30001";
const COMPILE_DEADLINE: Duration = Duration::from_secs(30);
const RUN_DEADLINE: Duration = Duration::from_secs(20);

fn rudder_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rudder"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test socket address")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The file is read: its canary Service is programmed.
    Canary,
    /// The whole file is refused and listed in /status.
    SkippedFile,
}

/// How a case is put on disk.
#[derive(Debug, Clone)]
enum Body {
    /// A regular file with this content.
    Text(Vec<u8>),
    /// A FIFO.
    Fifo,
    /// A symlink to this target.
    Symlink(PathBuf),
    /// Two symlinks pointing at each other (the case's name and `<name>.loop`).
    SymlinkLoop,
}

#[derive(Debug, Clone)]
struct Case {
    /// File name in the manifest directory.
    file: String,
    body: Body,
    markers: Vec<String>,
    expect: Expect,
}

impl Case {
    /// The canary Service appended to a `Canary` case: its ClusterIP is unique per case.
    fn canary_ip(&self, index: usize) -> String {
        format!("10.96.251.{}", index + 1)
    }

    fn write(&self, dir: &Path, index: usize) {
        let path = dir.join(&self.file);
        match &self.body {
            Body::Text(bytes) => {
                let mut bytes = bytes.clone();
                if self.expect == Expect::Canary {
                    bytes.extend_from_slice(
                        format!(
                            "\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: canary-{index}, namespace: canary}}\nspec: {{clusterIP: {}, ports: [{{port: 80}}]}}\n",
                            self.canary_ip(index)
                        )
                        .as_bytes(),
                    );
                }
                // Written beside and renamed: the daemon never sees half a case.
                let tmp = dir.join(format!(".{}.tmp", self.file));
                std::fs::write(&tmp, bytes).expect("write case");
                std::fs::rename(&tmp, &path).expect("rename case");
            }
            Body::Fifo => {
                let st = Command::new("mkfifo").arg(&path).status().expect("mkfifo");
                assert!(st.success(), "mkfifo {}", path.display());
            }
            Body::Symlink(target) => {
                std::os::unix::fs::symlink(target, &path).expect("symlink");
            }
            Body::SymlinkLoop => {
                let other = dir.join(format!("{}.loop", self.file));
                std::os::unix::fs::symlink(&other, &path).expect("symlink");
                std::os::unix::fs::symlink(&path, &other).expect("symlink");
            }
        }
    }

    fn remove(&self, dir: &Path) {
        let _ = std::fs::remove_file(dir.join(&self.file));
        let _ = std::fs::remove_file(dir.join(format!("{}.loop", self.file)));
    }
}

/// The checked-in corpus, then the generated cases.
fn cases() -> Vec<Case> {
    let dir = repo().join("tests/hostile");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/hostile")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("case");
        let mut markers = Vec::new();
        let mut expect = Expect::Canary;
        for line in text.lines().take_while(|l| l.starts_with('#')) {
            if let Some(m) = line.strip_prefix("# marker:") {
                markers.push(m.trim().to_owned());
            } else if let Some(e) = line.strip_prefix("# expect:") {
                expect = match e.trim() {
                    "canary" => Expect::Canary,
                    "skipped-file" => Expect::SkippedFile,
                    other => panic!("{}: unknown expectation {other:?}", path.display()),
                };
            }
        }
        out.push(Case {
            file: format!("case-{}", path.file_name().expect("name").to_string_lossy()),
            body: Body::Text(text.into_bytes()),
            markers,
            expect,
        });
    }
    assert!(out.len() >= 15, "the corpus is there");
    let skipped = |file: &str, body: Body| Case {
        file: file.into(),
        body,
        markers: Vec::new(),
        expect: Expect::SkippedFile,
    };
    out.extend([
        // 200,000 nested flow sequences: refused in linear time, before the parser.
        skipped(
            "gen-deep-nesting.yaml",
            Body::Text(format!("a: {}\n", "[".repeat(200_000)).into_bytes()),
        ),
        skipped(
            "gen-deep-nesting.json",
            Body::Text(format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes()),
        ),
        // Not UTF-8 at all.
        skipped(
            "gen-binary.yaml",
            Body::Text(vec![0xff, 0xfe, 0x00, 0x80, b'\n', 0xc3, 0x28, 0x00]),
        ),
        skipped("gen-fifo.yaml", Body::Fifo),
        skipped("gen-zero.yaml", Body::Symlink("/dev/zero".into())),
        skipped("gen-urandom.yaml", Body::Symlink("/dev/urandom".into())),
        skipped(
            "gen-dangling.yaml",
            Body::Symlink("/nonexistent/rudder".into()),
        ),
        skipped("gen-loop.yaml", Body::SymlinkLoop),
    ]);
    out
}

/// Runs `cmd` to its end or kills it at `deadline`: (status, stdout, stderr, elapsed).
fn run_bounded(mut cmd: Command, deadline: Duration) -> (Option<i32>, String, String, Duration) {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break Some(st);
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    let out = String::from_utf8_lossy(&out.join().expect("stdout reader")).into_owned();
    let err = String::from_utf8_lossy(&err.join().expect("stderr reader")).into_owned();
    let code = status.map(|s| {
        use std::os::unix::process::ExitStatusExt;
        s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
    });
    (code, out, err, elapsed)
}

fn copy_example(dir: &Path) {
    for f in ["node.yaml", "nginx.yaml"] {
        let text = std::fs::read_to_string(repo().join("examples/nginx").join(f)).expect("example");
        std::fs::write(dir.join(f), text).expect("copy example");
    }
}

fn assert_no_markers(what: &str, case: &Case, text: &str) {
    for m in &case.markers {
        assert!(
            !text.contains(m.as_str()),
            "{}: {what} contains the hostile text {m:?}",
            case.file
        );
    }
}

/// `rudder compile` on the example plus one case at a time: bounded time, no panic, the
/// example compiled, nothing hostile in the output, and the output loads with `nft -c`.
#[test]
fn every_hostile_case_compiles_to_a_clean_ruleset_in_bounded_time() {
    if !e2e_enabled() {
        return;
    }
    let check_ns = Netns::new("hostile-check").expect("namespace");
    let mut report = Vec::new();
    for (i, case) in cases().iter().enumerate() {
        let dir = TempDir::new("hostile-compile").expect("temp dir");
        copy_example(dir.path());
        case.write(dir.path(), i);
        let mut cmd = Command::new(rudder_bin());
        cmd.args(["compile", "--manifests"])
            .arg(dir.path())
            .args(["--hostname-override", "node-1"]);
        let (code, out, err, took) = run_bounded(cmd, COMPILE_DEADLINE);
        case.remove(dir.path());
        let file = &case.file;
        assert!(
            code.is_some(),
            "{file}: compile hung (killed after {took:?})"
        );
        assert_eq!(code, Some(0), "{file}: compile failed: {err}");
        assert!(!err.contains("panicked"), "{file}: {err}");
        assert!(
            out.contains("10.96.100.100"),
            "{file}: the example is missing"
        );
        if case.expect == Expect::Canary {
            assert!(
                out.contains(&case.canary_ip(i)),
                "{file}: the canary is missing:\n{err}"
            );
        } else {
            assert!(
                err.contains(file.as_str()),
                "{file}: the skipped file is not named: {err}"
            );
        }
        assert_no_markers("compile output", case, &out);
        assert!(
            !out.chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t'),
            "{file}: control characters in the output"
        );
        // The kernel takes the output as it is (checked, not applied).
        let mut nft = check_ns
            .command("nft")
            .args(["-c", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nft -c");
        std::io::Write::write_all(&mut nft.stdin.take().expect("stdin"), out.as_bytes())
            .expect("feed nft");
        let checked = nft.wait_with_output().expect("nft -c");
        assert!(
            checked.status.success(),
            "{file}: nft -c refuses the output: {}",
            String::from_utf8_lossy(&checked.stderr)
        );
        report.push(format!("{file}: {took:?}"));
    }
    eprintln!("compile times:\n  {}", report.join("\n  "));
}

/// Polls `f` until it returns true or `deadline` passes.
fn eventually(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn http_get(ns: &Netns, to: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let to = addr(to);
    ns.enter(|| {
        let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: node\r\n\r\n").as_bytes())
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let (head, body) = out.split_once("\r\n\r\n")?;
        let code = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, body.to_owned()))
    })
    .ok()?
}

/// One daemon, one case at a time in its manifest directory: the case is read (or refused
/// as a whole), nothing hostile reaches the kernel, and the example keeps answering.
#[test]
fn a_running_daemon_survives_every_hostile_case() {
    if !e2e_enabled() {
        return;
    }
    let topo = Topology::new().expect("topology");
    let _servers: Vec<EchoServers> = (0..3)
        .map(|i| serve_pod(&topo.pods[i], NAMES[i], &[80]).expect("echo servers"))
        .collect();
    let manifests = TempDir::new("hostile-run").expect("temp dir");
    copy_example(manifests.path());
    let dir = manifests.path().display().to_string();
    let args = [
        "run",
        "--manifests",
        &dir,
        "--hostname-override",
        "node-1",
        "--cluster-cidr",
        "10.244.0.0/16,fd00:10:244::/56",
        "--iptables-min-sync-period",
        "50ms",
        "--manifests-poll-interval",
        "50ms",
    ];
    let mut daemon = Daemon::start(&rudder_bin(), &topo.node, &args).expect("start rudder");
    daemon
        .wait_for("sync done", 1, Duration::from_secs(20))
        .expect("first sync");
    let ruleset = || nft::list_ruleset(&topo.node).expect("ruleset");
    let answers = |from: &Netns, to: &str| {
        rudder_e2e::client::request(from, addr(to), Proto::Tcp, Duration::from_secs(2))
            .is_ok_and(|a| NAMES.contains(&a.as_str()))
    };
    assert!(answers(&topo.pods[0], CLUSTER_IP), "baseline ClusterIP");
    assert!(answers(&topo.client, NODE_PORT), "baseline NodePort");
    let mut report = Vec::new();
    for (i, case) in cases().iter().enumerate() {
        let file = &case.file;
        let started = Instant::now();
        case.write(manifests.path(), i);
        let read = match case.expect {
            Expect::Canary => {
                let ip = case.canary_ip(i);
                eventually(RUN_DEADLINE, || ruleset().contains(&ip))
            }
            Expect::SkippedFile => eventually(RUN_DEADLINE, || {
                http_get(&topo.node, "127.0.0.1:10249", "/status")
                    .is_some_and(|(_, body)| body.contains(file.as_str()))
            }),
        };
        let took = started.elapsed();
        assert!(
            read,
            "{file}: not handled within {RUN_DEADLINE:?}\n{}",
            daemon.log()
        );
        assert!(daemon.pid().is_some(), "{file}: the daemon is gone");
        let health = http_get(&topo.node, "127.0.0.1:10256", "/healthz");
        assert_eq!(health.map(|h| h.0), Some(200), "{file}: /healthz");
        assert_no_markers("the kernel's ruleset", case, &ruleset());
        assert!(answers(&topo.pods[0], CLUSTER_IP), "{file}: ClusterIP");
        assert!(answers(&topo.client, NODE_PORT), "{file}: NodePort");
        // Every case stays: at the end all of them are loaded at once.
        report.push(format!("{file}: {took:?}"));
    }
    let all = cases();
    let text = ruleset();
    for (i, case) in all.iter().enumerate() {
        if case.expect == Expect::Canary {
            assert!(
                text.contains(&case.canary_ip(i)),
                "{}: canary gone",
                case.file
            );
        }
    }
    assert!(answers(&topo.pods[0], CLUSTER_IP), "all cases: ClusterIP");
    assert!(answers(&topo.client, NODE_PORT), "all cases: NodePort");
    assert!(!daemon.log().contains("panicked"), "{}", daemon.log());
    eprintln!("time to handle each case:\n  {}", report.join("\n  "));
}
