//! The chaos soak: the real `rudder` binary follows the test API server in a node namespace
//! while services and EndpointSlices churn at random and faults are injected at random —
//! `kill -9` restarts, API server disconnects, dropped watches, `410 Gone` re-lists, and
//! tampering with the kernel's tables. All along, a steady probe connects over TCP to a
//! service that never changes (its ClusterIP from the external client and from a pod, its
//! NodePort from the client) and keeps two long-running UDP flows to it (ClusterIP and
//! NodePort); it must see **zero** failures, and every UDP flow must stay on its backend.
//!
//! The soak runs in three phases:
//!
//! 1. **Chaos** for [`SoakConfig::duration`]: a change every 20–200 ms, a fault every
//!    1.5–4.5 s. The daemon runs with a short `--full-sync-period`
//!    ([`SoakConfig::full_sync_period`]), which is when it repairs tampering.
//! 2. **Repair**: no more changes or faults; the kernel's tables must come to equal a fresh
//!    `rudder compile` of the API server's final objects (loaded into a fresh namespace and
//!    both listed with `nft -j -s`, see [`compare`]).
//! 3. **Incremental**: a `kill -9`, a daemon whose full resyncs are an hour apart, and
//!    [`SoakConfig::final_changes`] more changes: only partial syncs may follow its first
//!    sync, none may fail, and the tables must again equal a fresh compile — up to what
//!    partial syncs leave different on purpose until the next full sync (unused endpoint
//!    classes, endpoint slot order; see [`compare::canonicalize_equivalent`]). This is what
//!    proves the incremental path, since in phase 2 a full resync may have hidden a mistake.
//!
//! Every random choice comes from one seeded generator ([`rng::Rng`]); the seed is printed
//! first, so a failure can be replayed with the same sequence of changes and faults (timing
//! still varies).
//!
//! What tampering never touches: anything the steady service's packets go through (the
//! `ip rudder` table itself, its NAT and masquerading chains, the steady elements), since
//! Rudder only repairs at its next full sync — until then such traffic would fail. The
//! `ip6 rudder` table is fair game (the probes are IPv4), and so are chains, elements, rules
//! and verdicts that only churned services use.

mod churn;
pub mod compare;
mod probe;
pub mod rng;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rudder_fake_apiserver::{Config, FakeApiServer};

pub use churn::ChangeCounts;
pub use probe::{Count, Failure};

use crate::client::UdpFlow;
use crate::daemon::{Daemon, TempDir};
use crate::netns::Netns;
use crate::serve::{EchoServers, serve_pod};
use crate::topo::Topology;
use churn::Churn;
use probe::ProbeLog;
use rng::Rng;

/// The pods' names, which their echo servers answer with.
const BACKENDS: [&str; 3] = ["111", "222", "333"];
/// Where the test API server listens: inside the client namespace.
const API_ADDR: &str = "172.18.0.10:6443";
const TOKEN: &str = "rudder-soak-token";
const CLUSTER_CIDRS: &str = "10.244.0.0/16,fd00:10:244::/56";
const SYNC_DONE: &str = "sync done";

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// The `rudder` binary.
    pub rudder: PathBuf,
    /// Length of the chaos phase.
    pub duration: Duration,
    /// Seed of every random choice.
    pub seed: u64,
    /// The daemon's `--full-sync-period` during the chaos (how soon tampering is repaired).
    pub full_sync_period: Duration,
    /// Size of the pool of churned services.
    pub services: usize,
    /// Changes made in the incremental phase.
    pub final_changes: usize,
    /// Print progress to stderr every ten seconds.
    pub progress: bool,
    /// Print every fault and restart to stderr as it happens.
    pub verbose: bool,
}

impl SoakConfig {
    /// The defaults: full resyncs every 5 s, 12 churned services, 150 changes at the end.
    pub fn new(rudder: impl Into<PathBuf>, duration: Duration, seed: u64) -> SoakConfig {
        SoakConfig {
            rudder: rudder.into(),
            duration,
            seed,
            full_sync_period: Duration::from_secs(5),
            services: 12,
            final_changes: 150,
            progress: true,
            verbose: false,
        }
    }
}

/// A seed from the clock and the process id, for runs that were not given one.
pub fn random_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    Rng::new(nanos ^ (u64::from(std::process::id()) << 32)).next_u64() >> 11
}

/// Parses `90s`, `10m`, `1h`, `500ms` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    match unit {
        "" | "s" => Some(Duration::from_secs(n)),
        "ms" => Some(Duration::from_millis(n)),
        "m" => Some(Duration::from_secs(n * 60)),
        "h" => Some(Duration::from_secs(n * 3600)),
        _ => None,
    }
}

/// What a soak did and saw.
#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    /// The seed.
    pub seed: u64,
    /// Length of the chaos phase.
    pub chaos: Duration,
    /// Length of the whole soak, set-up included.
    pub total: Duration,
    /// Changes made through the API server in the chaos and repair phases.
    pub changes: ChangeCounts,
    /// Changes made in the incremental phase.
    pub final_changes: usize,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, usize>,
    /// Tampering attempts that found nothing to tamper with (not counted as faults).
    pub tampers_missed: usize,
    /// Probes per target.
    pub probes: BTreeMap<String, Count>,
    /// Failed probes (at most 200 kept).
    pub failures: Vec<Failure>,
    /// Syncs, from every daemon's log: full, partial, failed.
    pub syncs: (usize, usize, usize),
    /// Drift the daemons reported before periodic full resyncs.
    pub drift_reports: usize,
    /// Stale UDP conntrack cleanups the daemons logged.
    pub conntrack_cleanups: usize,
    /// Lists of Services the API server answered (the first list of every daemon, and
    /// re-lists).
    pub service_lists: usize,
    /// From the end of the chaos until the kernel equalled a fresh compile.
    pub repaired_after: Duration,
    /// From the last change of the incremental phase until the kernel equalled a fresh
    /// compile.
    pub incremental_converged_after: Duration,
    /// Everything that went wrong except probe failures: a daemon that exited by itself,
    /// tables that did not converge, failed syncs in the incremental phase.
    pub problems: Vec<String>,
}

impl SoakReport {
    /// Probes sent and failed, over all targets (TCP connections and UDP datagrams).
    pub fn probe_totals(&self) -> (usize, usize) {
        self.probes
            .values()
            .fold((0, 0), |(s, f), c| (s + c.sent, f + c.failed))
    }

    /// Faults injected, over all kinds.
    pub fn fault_total(&self) -> usize {
        self.faults.values().sum()
    }

    /// Whether the soak passed: no failed probe and no problem.
    pub fn passed(&self) -> bool {
        self.probe_totals().1 == 0 && self.problems.is_empty()
    }
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (sent, failed) = self.probe_totals();
        writeln!(
            f,
            "soak seed {}: {} of chaos, {:.0?} in all — {}",
            self.seed,
            fmt_duration(self.chaos),
            self.total,
            if self.passed() { "PASSED" } else { "FAILED" }
        )?;
        let c = &self.changes;
        writeln!(
            f,
            "  changes: {} ({} service upserts, {} service deletes, {} slice upserts, {} slice deletes) + {} in the incremental phase",
            c.total(),
            c.service_upserts,
            c.service_deletes,
            c.slice_upserts,
            c.slice_deletes,
            self.final_changes
        )?;
        let kinds: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(
            f,
            "  faults: {} ({}); tampering that found nothing to tamper with: {}",
            self.fault_total(),
            kinds.join(", "),
            self.tampers_missed
        )?;
        writeln!(f, "  probes: {sent} sent, {failed} failed")?;
        for (target, count) in &self.probes {
            let backend = count
                .backend
                .as_deref()
                .map(|b| format!(", on backend {b}"))
                .unwrap_or_default();
            writeln!(
                f,
                "    {target}: {} sent, {} failed{backend}",
                count.sent, count.failed
            )?;
        }
        writeln!(
            f,
            "  syncs: {} full, {} partial, {} failed; drift reports {}; stale UDP cleanups {}; service lists {}",
            self.syncs.0,
            self.syncs.1,
            self.syncs.2,
            self.drift_reports,
            self.conntrack_cleanups,
            self.service_lists
        )?;
        writeln!(
            f,
            "  kernel = fresh compile: {:.1?} after the chaos; {:.1?} after the last incremental change",
            self.repaired_after, self.incremental_converged_after
        )?;
        for p in &self.problems {
            writeln!(f, "  PROBLEM: {p}")?;
        }
        Ok(())
    }
}

/// `2026-12-03T10:13:06.164321Z`, the daemons' timestamp format.
fn rfc3339(t: SystemTime) -> String {
    let t = jiff::Timestamp::try_from(t).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    format!("{t:.6}")
}

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

/// A failed soak: its report, what happened around each failure, and the daemons' logs.
#[derive(Debug)]
pub struct SoakFailure {
    /// The report, with its problems and failures.
    pub report: SoakReport,
    /// Faults and restarts with their times.
    pub timeline: Vec<(Duration, String)>,
    /// The end of the daemons' logs.
    pub log_tail: String,
    /// A file with the timeline and every daemon's whole log.
    pub log_file: Option<PathBuf>,
}

impl fmt::Display for SoakFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.report)?;
        if !self.report.failures.is_empty() {
            writeln!(f, "failed probes (with the three events before each):")?;
        }
        for failure in self.report.failures.iter().take(30) {
            writeln!(
                f,
                "  at {:.2?}: {}: {}",
                failure.at, failure.target, failure.error
            )?;
            let before: Vec<&(Duration, String)> = self
                .timeline
                .iter()
                .filter(|(t, _)| *t <= failure.at)
                .collect();
            for (t, what) in before.iter().rev().take(3).rev() {
                writeln!(f, "      {t:.2?} {what}")?;
            }
        }
        writeln!(
            f,
            "replay: cargo xtask soak --seed {} --duration {}s",
            self.report.seed,
            self.report.chaos.as_secs()
        )?;
        if let Some(path) = &self.log_file {
            writeln!(f, "timeline and whole logs: {}", path.display())?;
        }
        writeln!(f, "last lines of the daemons' logs:\n{}", self.log_tail)
    }
}

impl std::error::Error for SoakFailure {}

/// Sets the flag when dropped, so probe threads stop even when the soak bails out early.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

struct Soak<'a> {
    cfg: &'a SoakConfig,
    topo: &'a Topology,
    api: &'a FakeApiServer,
    kubeconfig: PathBuf,
    daemon: Option<Daemon>,
    /// Logs of the daemons killed so far.
    logs: Vec<String>,
    timeline: Vec<(Duration, String)>,
    /// The node's ruleset and conntrack table right after the first failed probes.
    snapshots: Vec<(Duration, String)>,
    start: Instant,
    start_wall: SystemTime,
    report: SoakReport,
}

impl Soak<'_> {
    fn event(&mut self, what: impl Into<String>) {
        let what = what.into();
        if self.cfg.verbose {
            eprintln!("soak: {:>7.2?} {what}", self.start.elapsed());
        }
        self.timeline.push((self.start.elapsed(), what));
    }

    fn fault(&mut self, kind: &str) {
        *self.report.faults.entry(kind.to_owned()).or_default() += 1;
        self.event(kind.to_owned());
    }

    fn start_daemon(&mut self, full_sync_period: Duration) -> io::Result<()> {
        let kubeconfig = self.kubeconfig.display().to_string();
        let full = format!("{}ms", full_sync_period.as_millis());
        let args = [
            "run",
            "--kubeconfig",
            &kubeconfig,
            "--hostname-override",
            "node-1",
            "--cluster-cidr",
            CLUSTER_CIDRS,
            "--iptables-min-sync-period",
            "200ms",
            "--iptables-sync-period",
            "2s",
            "--full-sync-period",
            &full,
        ];
        self.daemon = Some(Daemon::start(&self.cfg.rudder, &self.topo.node, &args)?);
        self.event(format!("rudder started (full resyncs every {full})"));
        Ok(())
    }

    /// `kill -9` by pid; the log is kept.
    fn kill_daemon(&mut self) -> io::Result<()> {
        if let Some(mut d) = self.daemon.take() {
            d.kill()?;
            self.logs.push(d.log());
        }
        Ok(())
    }

    fn daemon_log(&self) -> String {
        self.daemon.as_ref().map(Daemon::log).unwrap_or_default()
    }

    /// Fails when the daemon exited by itself.
    fn check_alive(&mut self) -> Result<(), String> {
        if let Some(d) = self.daemon.as_mut()
            && let Some(status) = d.exited().map_err(|e| e.to_string())?
        {
            return Err(format!("rudder exited by itself ({status})"));
        }
        Ok(())
    }

    /// Waits until the daemon has logged `n` lines with `needle`.
    fn wait_log(&mut self, needle: &str, n: usize, within: Duration) -> Result<(), String> {
        match self.daemon.as_mut() {
            Some(d) => d.wait_for(needle, n, within).map_err(|e| {
                let text = e.to_string();
                text.lines().next().unwrap_or_default().to_owned()
            }),
            None => Err("no daemon running".into()),
        }
    }

    /// Polls until the kernel's tables equal `compiled`; returns how long it took.
    /// With `equivalent`, up to what partial syncs leave different on purpose (see
    /// [`compare::canonicalize_equivalent`]).
    fn converge(
        &mut self,
        compiled: &[String],
        within: Duration,
        equivalent: bool,
    ) -> Result<Duration, String> {
        let t0 = Instant::now();
        loop {
            self.check_alive()?;
            let kernel =
                compare::kernel_ruleset(&self.topo.node, equivalent).map_err(|e| e.to_string())?;
            match compare::difference(&kernel, compiled, 15) {
                None => return Ok(t0.elapsed()),
                Some(diff) if t0.elapsed() >= within => {
                    return Err(format!(
                        "the kernel's tables still differ from a fresh compile of the final state after {within:?}:\n{diff}"
                    ));
                }
                Some(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    }

    fn compiled(&self, equivalent: bool) -> Result<Vec<String>, String> {
        compare::compiled_ruleset(
            &self.cfg.rudder,
            self.api,
            &[
                "--hostname-override",
                "node-1",
                "--cluster-cidr",
                CLUSTER_CIDRS,
            ],
            equivalent,
        )
        .map_err(|e| e.to_string())
    }

    /// One tampering with the node's tables, chosen at random among what the steady service
    /// does not depend on; returns its kind, or `None` if there was nothing to tamper with.
    fn tamper(&mut self, rng: &mut Rng, churn: &Churn, n: usize) -> Option<&'static str> {
        let topo = self.topo;
        let node = &topo.node;
        let nft = |script: &str| crate::nft::load(node, script).is_ok();
        let keys = churn.element_keys();
        let from_keys = |rng: &mut Rng, f: &dyn Fn(&str) -> String| {
            (0..4).any(|_| !keys.is_empty() && nft(&f(rng.pick::<String>(&keys).as_str())))
        };
        match rng.weighted(&[2, 3, 3, 3, 2, 2, 2, 2, 1]) {
            0 => nft("delete table ip6 rudder\n").then_some("tamper: delete the ip6 table"),
            1 => {
                let chain = rng.pick(&[
                    "firewall-check",
                    "cluster-ips-check",
                    "nodeport-endpoints-check",
                    "service-endpoints-check",
                    "reject-chain",
                ]);
                nft(&format!("flush chain ip rudder {chain}\n")).then_some("tamper: flush a chain")
            }
            2 => {
                let deleted = if rng.chance(0.5) {
                    from_keys(rng, &|k| {
                        format!("delete element ip rudder service-ips {{ {k} }}\n")
                    })
                } else {
                    from_keys(rng, &|k| {
                        let ip = k.split(' ').next().unwrap_or_default();
                        format!("delete element ip rudder cluster-ips {{ {ip} }}\n")
                    })
                };
                deleted.then_some("tamper: delete an element")
            }
            3 => from_keys(rng, &|k| {
                format!(
                    "delete element ip rudder service-ips {{ {k} }}\nadd element ip rudder service-ips {{ {k} : drop }}\n"
                )
            })
            .then_some("tamper: change a verdict"),
            4 => nft(&format!(
                "add element ip rudder cluster-ips {{ 10.96.250.{} }}\nadd element ip rudder service-ips {{ 10.96.250.{} . tcp . 80 : goto reject-chain }}\n",
                n % 250 + 1,
                n % 250 + 1
            ))
            .then_some("tamper: add elements"),
            5 => nft("insert rule ip rudder services ip daddr 10.96.250.250 drop\n")
                .then_some("tamper: add a rule"),
            6 => {
                // Only a chain nothing refers to can go (the kernel refuses the others), and
                // no base chain is tried: an endpoint class that partial syncs keep, or a
                // chain added by earlier tampering.
                let chains = chains(node, false);
                (0..6)
                    .any(|_| {
                        !chains.is_empty()
                            && nft(&format!(
                                "delete chain ip rudder {}\n",
                                rng.pick::<String>(&chains)
                            ))
                    })
                    .then_some("tamper: delete a chain")
            }
            7 => {
                let chain = *rng.pick(&[
                    "firewall-check",
                    "cluster-ips-check",
                    "nodeport-endpoints-check",
                    "service-endpoints-check",
                ]);
                let handles = rule_handles(node, chain);
                (!handles.is_empty()
                    && nft(&format!(
                        "delete rule ip rudder {chain} handle {}\n",
                        rng.pick(&handles)
                    )))
                .then_some("tamper: delete a rule")
            }
            _ => nft(&format!(
                "add chain ip rudder intruder-{n}\nadd rule ip rudder intruder-{n} drop\n"
            ))
            .then_some("tamper: add a chain"),
        }
    }

    /// Keeps the node's ruleset and conntrack table for the log file, right after a probe
    /// failed (at most three times).
    fn snapshot_after_failure(&mut self, log: &ProbeLog) {
        let failed = log.failed();
        if failed <= self.report.failures.len() || self.snapshots.len() >= 3 {
            return;
        }
        self.report.failures = log.failures();
        let node = &self.topo.node;
        let run = |args: &[&str]| match node.exec(args) {
            Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
            Err(e) => format!("{}: {e}\n", args.join(" ")),
        };
        let text = format!(
            "## nft list ruleset\n{}## conntrack -L -p tcp\n{}",
            run(&["nft", "list", "ruleset"]),
            run(&["conntrack", "-L", "-p", "tcp"])
        );
        self.snapshots.push((self.start.elapsed(), text));
        self.event(format!(
            "{failed} failed probes so far: snapshot of ruleset and conntrack taken"
        ));
    }

    fn collect_logs(&mut self) {
        let mut all = self.logs.clone();
        all.push(self.daemon_log());
        let lines = || all.iter().flat_map(|l| l.lines());
        let count = |f: &dyn Fn(&str) -> bool| lines().filter(|l| f(l)).count();
        self.report.syncs = (
            count(&|l| l.contains(SYNC_DONE) && l.contains("\"full\"")),
            count(&|l| l.contains(SYNC_DONE) && l.contains("\"partial\"")),
            count(&|l| l.contains("sync failed")),
        );
        self.report.drift_reports = count(&|l| l.contains("drift:"));
        self.report.conntrack_cleanups = count(&|l| l.contains("deleted stale UDP conntrack"));
        self.report.service_lists = self.api.request_count("list", "services");
    }

    fn log_tail(&self) -> String {
        let mut all = self.logs.join("");
        all.push_str(&self.daemon_log());
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Writes the timeline (with wall-clock times, like the daemons' log lines) and every
    /// daemon's whole log to a file that outlives the soak; returns its path.
    fn write_logs(&self) -> Option<PathBuf> {
        let path = std::env::temp_dir().join(format!(
            "rudder-soak-{}-{}.log",
            self.report.seed,
            std::process::id()
        ));
        let mut text = String::from("# soak timeline\n");
        for (t, what) in &self.timeline {
            text.push_str(&format!(
                "{} +{t:.2?} {what}\n",
                rfc3339(self.start_wall + *t)
            ));
        }
        for (t, snapshot) in &self.snapshots {
            text.push_str(&format!(
                "# snapshot after a failed probe, {} +{t:.2?}\n{snapshot}\n",
                rfc3339(self.start_wall + *t)
            ));
        }
        let mut logs = self.logs.clone();
        logs.push(self.daemon_log());
        for (i, log) in logs.iter().enumerate() {
            text.push_str(&format!("# daemon {i}\n{log}"));
        }
        std::fs::write(&path, text).ok().map(|()| path)
    }
}

fn io_err(what: &str) -> impl Fn(io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Runs a soak. `Ok` only when every probe succeeded and the tables converged.
pub fn run(cfg: &SoakConfig) -> Result<SoakReport, Box<SoakFailure>> {
    let start = Instant::now();
    let start_wall = SystemTime::now();
    eprintln!(
        "soak: seed {} ({} of chaos; replay with `cargo xtask soak --seed {} --duration {}s`)",
        cfg.seed,
        fmt_duration(cfg.duration),
        cfg.seed,
        cfg.duration.as_secs()
    );
    let report = SoakReport {
        seed: cfg.seed,
        chaos: cfg.duration,
        ..SoakReport::default()
    };
    let fail = |mut report: SoakReport, problem: String| {
        report.problems.push(problem);
        report.total = start.elapsed();
        Box::new(SoakFailure {
            report,
            timeline: Vec::new(),
            log_tail: String::new(),
            log_file: None,
        })
    };
    let topo = match Topology::new() {
        Ok(t) => t,
        Err(e) => return Err(fail(report, format!("topology: {e}"))),
    };
    let servers: io::Result<Vec<EchoServers>> = (0..3)
        .map(|i| serve_pod(&topo.pods[i], BACKENDS[i], &churn::POD_PORTS))
        .collect();
    let _servers = match servers {
        Ok(s) => s,
        Err(e) => return Err(fail(report, format!("echo servers: {e}"))),
    };
    let api = match bind_api(&topo.client)
        .and_then(|l| FakeApiServer::start(l, Config::default().with_token(TOKEN)))
    {
        Ok(a) => a,
        Err(e) => return Err(fail(report, format!("API server: {e}"))),
    };
    let kubeconfig = match TempDir::new("soak-kubeconfig").and_then(|d| {
        d.write("kubeconfig", &api.kubeconfig(Some(TOKEN)))
            .map(|p| (d, p))
    }) {
        Ok(k) => k,
        Err(e) => return Err(fail(report, format!("kubeconfig: {e}"))),
    };
    let mut soak = Soak {
        cfg,
        topo: &topo,
        api: &api,
        kubeconfig: kubeconfig.1.clone(),
        daemon: None,
        logs: Vec::new(),
        timeline: Vec::new(),
        snapshots: Vec::new(),
        start,
        start_wall,
        report,
    };
    let result = phases(&mut soak);
    soak.collect_logs();
    soak.report.total = start.elapsed();
    if let Err(problem) = result {
        soak.report.problems.push(problem);
    }
    let _ = soak.kill_daemon();
    if soak.report.passed() {
        Ok(soak.report)
    } else {
        let log_tail = soak.log_tail();
        let log_file = soak.write_logs();
        Err(Box::new(SoakFailure {
            report: soak.report,
            timeline: soak.timeline,
            log_tail,
            log_file,
        }))
    }
}

/// The names of the `ip rudder` table's chains: base chains (with a hook) or the others.
fn chains(node: &Netns, base: bool) -> Vec<String> {
    nft_json(node, &["list", "chains", "ip"])
        .into_iter()
        .filter_map(|o| o.get("chain").cloned())
        .filter(|c| c["table"] == "rudder" && c.get("hook").is_some() == base)
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect()
}

/// The handles of the rules of one chain of the `ip rudder` table.
fn rule_handles(node: &Netns, chain: &str) -> Vec<u64> {
    nft_json(node, &["-a", "list", "chain", "ip", "rudder", chain])
        .into_iter()
        .filter_map(|o| o.get("rule").and_then(|r| r["handle"].as_u64()))
        .collect()
}

/// `nft -j ARGS` inside `node`: the objects of its `nftables` array (none on any error).
fn nft_json(node: &Netns, args: &[&str]) -> Vec<serde_json::Value> {
    let mut full = vec!["nft", "-j"];
    full.extend_from_slice(args);
    node.exec(&full)
        .ok()
        .and_then(|out| serde_json::from_slice::<serde_json::Value>(&out.stdout).ok())
        .and_then(|v| v.get("nftables").and_then(|a| a.as_array()).cloned())
        .unwrap_or_default()
}

fn bind_api(client: &Netns) -> io::Result<TcpListener> {
    client.enter(|| TcpListener::bind(API_ADDR))?
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("the soak's addresses parse")
}

/// The three phases, with the probes running throughout.
fn phases(soak: &mut Soak<'_>) -> Result<(), String> {
    let cfg = soak.cfg;
    let topo = soak.topo;
    let mut rng = Rng::new(cfg.seed);
    let (svc, slice) = churn::steady();
    soak.api.apply_node(churn::node());
    soak.api.apply_service(svc);
    soak.api.apply_endpoint_slice(slice);
    soak.start_daemon(cfg.full_sync_period)
        .map_err(io_err("start rudder"))?;
    soak.wait_log(SYNC_DONE, 1, Duration::from_secs(30))?;
    let cluster_ip = addr(&format!(
        "{}:{}",
        churn::STEADY_CLUSTER_IP,
        churn::STEADY_TCP_PORT
    ));
    let node_port = addr(&format!("172.18.0.2:{}", churn::STEADY_TCP_NODE_PORT));
    // The steady service answers before the probes start.
    let deadline = Instant::now() + Duration::from_secs(10);
    while crate::client::tcp_request(&topo.client, cluster_ip, Duration::from_millis(500)).is_err()
    {
        if Instant::now() >= deadline {
            return Err("the steady service never answered".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let client_ip = topo.client_ipv4();
    let flows = vec![
        (
            format!(
                "udp flow client → ClusterIP {}:{}",
                churn::STEADY_CLUSTER_IP,
                churn::STEADY_UDP_PORT
            ),
            UdpFlow::open(
                &topo.client,
                SocketAddr::new(client_ip.into(), 45000),
                addr(&format!(
                    "{}:{}",
                    churn::STEADY_CLUSTER_IP,
                    churn::STEADY_UDP_PORT
                )),
            )
            .map_err(io_err("UDP flow"))?,
        ),
        (
            format!(
                "udp flow client → NodePort 172.18.0.2:{}",
                churn::STEADY_UDP_NODE_PORT
            ),
            UdpFlow::open(
                &topo.client,
                SocketAddr::new(client_ip.into(), 45001),
                addr(&format!("172.18.0.2:{}", churn::STEADY_UDP_NODE_PORT)),
            )
            .map_err(io_err("UDP flow"))?,
        ),
    ];
    let probes: [(&Netns, String, SocketAddr); 3] = [
        (
            &topo.client,
            format!("tcp client → ClusterIP {cluster_ip}"),
            cluster_ip,
        ),
        (
            &topo.client,
            format!("tcp client → NodePort {node_port}"),
            node_port,
        ),
        (
            &topo.pods[0],
            format!("tcp pod-0 → ClusterIP {cluster_ip}"),
            cluster_ip,
        ),
    ];
    let stop = AtomicBool::new(false);
    let log = ProbeLog::new(soak.start);
    let result = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        for (ns, label, target) in &probes {
            let (stop, log) = (&stop, &log);
            s.spawn(move || {
                if let Err(e) = ns.enter(|| probe::tcp_probe(stop, log, label, *target, &BACKENDS))
                {
                    log_setup_failure(log, label, &e);
                }
            });
        }
        {
            let (stop, log, flows) = (&stop, &log, &flows);
            s.spawn(move || probe::udp_flows(stop, log, flows));
        }
        let mut churn = Churn::new(cfg.services);
        chaos(soak, &mut rng, &mut churn, &log)?;
        repair_and_incremental(soak, &mut rng, &mut churn)
    });
    soak.report.probes = log.counts();
    soak.report.failures = log.failures();
    result
}

fn log_setup_failure(log: &ProbeLog, label: &str, e: &io::Error) {
    log.record(label, Err(format!("the probe could not start: {e}")));
}

/// Phase 1: churn and faults.
fn chaos(
    soak: &mut Soak<'_>,
    rng: &mut Rng,
    churn: &mut Churn,
    log: &ProbeLog,
) -> Result<(), String> {
    let cfg = soak.cfg;
    let chaos_start = Instant::now();
    let chaos_end = chaos_start + cfg.duration;
    let mut next_fault = chaos_start + rng.millis(1500, 4500);
    let mut next_progress = chaos_start + Duration::from_secs(10);
    let mut restart_at: Option<Instant> = None;
    let mut compact_at: Option<Instant> = None;
    let mut tampers = 0usize;
    while Instant::now() < chaos_end {
        let now = Instant::now();
        if restart_at.is_some_and(|t| now >= t) {
            restart_at = None;
            soak.start_daemon(cfg.full_sync_period)
                .map_err(io_err("restart rudder"))?;
        }
        if compact_at.is_some_and(|t| now >= t) {
            compact_at = None;
            soak.api.compact();
            soak.event("history compacted: resumed watches get 410 Gone");
        }
        soak.check_alive()?;
        if now >= next_fault {
            next_fault = now + rng.millis(1500, 4500);
            match rng.weighted(&[3, 2, 1, 2, 4]) {
                0 if restart_at.is_none() => {
                    soak.kill_daemon().map_err(io_err("kill -9"))?;
                    soak.fault("kill -9 and restart");
                    restart_at = Some(now + rng.millis(0, 2500));
                }
                1 => {
                    let d = rng.millis(500, 4000);
                    soak.api.refuse_connections_for(d);
                    soak.fault("API server disconnect");
                }
                2 => {
                    soak.api.drop_watches();
                    soak.fault("watches dropped");
                }
                3 if compact_at.is_none() => {
                    // Cut off, changes meanwhile, history compacted: reconnecting watches
                    // resume from a compacted version, get 410 Gone, and re-list.
                    soak.api.refuse_connections_for(Duration::from_millis(1500));
                    compact_at = Some(now + Duration::from_millis(700));
                    soak.fault("410 Gone re-list");
                }
                _ => {
                    tampers += 1;
                    match soak.tamper(rng, churn, tampers) {
                        Some(kind) => soak.fault(kind),
                        None => soak.report.tampers_missed += 1,
                    }
                }
            }
        }
        churn.step(soak.api, rng);
        soak.snapshot_after_failure(log);
        if cfg.progress && now >= next_progress {
            next_progress = now + Duration::from_secs(10);
            let counts = log.counts();
            let (sent, failed) = counts
                .values()
                .fold((0, 0), |(s, f), c| (s + c.sent, f + c.failed));
            eprintln!(
                "soak: {:>4}s: {} changes, {} faults, {sent} probes, {failed} failed",
                chaos_start.elapsed().as_secs(),
                churn.counts.total(),
                soak.report.fault_total(),
            );
        }
        std::thread::sleep(rng.millis(20, 200));
    }
    if let Some(t) = compact_at {
        std::thread::sleep(t.saturating_duration_since(Instant::now()));
        soak.api.compact();
        soak.event("history compacted: resumed watches get 410 Gone");
    }
    if restart_at.is_some() {
        soak.start_daemon(cfg.full_sync_period)
            .map_err(io_err("restart rudder"))?;
    }
    soak.report.changes = churn.counts;
    Ok(())
}

/// Phases 2 and 3.
fn repair_and_incremental(
    soak: &mut Soak<'_>,
    rng: &mut Rng,
    churn: &mut Churn,
) -> Result<(), String> {
    let cfg = soak.cfg;
    soak.event("chaos over");
    // 2. Everything tampered with is repaired (at the latest by a full resync, after the
    //    watches have reconnected) and everything changed is programmed.
    let compiled = soak.compiled(false)?;
    let within = cfg.full_sync_period * 4 + Duration::from_secs(30);
    soak.report.repaired_after = soak.converge(&compiled, within, false)?;
    soak.event("kernel = fresh compile");
    if cfg.progress {
        eprintln!(
            "soak: repaired {:.1?} after the chaos; incremental phase",
            soak.report.repaired_after
        );
    }
    // 3. Only partial syncs after the first: the tables must still come out right.
    soak.kill_daemon().map_err(io_err("kill -9"))?;
    soak.fault("kill -9 and restart");
    soak.start_daemon(Duration::from_secs(3600))
        .map_err(io_err("restart rudder"))?;
    soak.wait_log(SYNC_DONE, 1, Duration::from_secs(30))?;
    let before = churn.counts.total();
    for _ in 0..cfg.final_changes {
        churn.step(soak.api, rng);
        std::thread::sleep(rng.millis(5, 60));
    }
    soak.report.final_changes = churn.counts.total() - before;
    // Partial syncs keep endpoint classes nothing uses any more until the next full sync, and
    // keep endpoints in their slots (docs/rules.md): compare up to that.
    let compiled = soak.compiled(true)?;
    soak.report.incremental_converged_after =
        soak.converge(&compiled, Duration::from_secs(30), true)?;
    // Let the last sync's log line be written.
    std::thread::sleep(Duration::from_millis(300));
    let log = soak.daemon_log();
    let full = log
        .lines()
        .filter(|l| l.contains(SYNC_DONE) && l.contains("\"full\""))
        .count();
    let failed: Vec<&str> = log.lines().filter(|l| l.contains("sync failed")).collect();
    if full != 1 || !failed.is_empty() {
        soak.report.problems.push(format!(
            "incremental phase: {full} full syncs (expected only the first), failed syncs: {failed:?}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("45"), Some(Duration::from_secs(45)));
        assert_eq!(parse_duration("ten"), None);
        assert_eq!(parse_duration("5d"), None);
    }

    #[test]
    fn timestamps_look_like_the_daemons() {
        let t = UNIX_EPOCH + Duration::from_micros(1_796_292_786_164_321);
        assert_eq!(rfc3339(t), "2026-12-03T10:13:06.164321Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn rudder_path_is_kept() {
        let cfg = SoakConfig::new(
            std::path::Path::new("/bin/rudder"),
            Duration::from_secs(1),
            7,
        );
        assert_eq!(cfg.rudder, PathBuf::from("/bin/rudder"));
        assert_eq!(cfg.seed, 7);
    }
}
