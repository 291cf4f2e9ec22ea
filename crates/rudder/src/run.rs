//! `rudder run`: program the kernel and keep it in sync with manifest files or with a
//! Kubernetes API server.

use std::process::ExitCode;

use anyhow::Context;
use rudder_compiler::Compiler;
use rudder_controller::{
    Dataplane, DataplaneError, DriftNotice, Failure, LoopConfig, NodeContextFn, SyncLoop,
};
use rudder_nft::Transaction;
use rudder_nft_backend::{NftBackend, Notice, WriteMode};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::cli::RunArgs;
use crate::proxier::{self, Settings};

/// The conntrack table, through conntrack netlink.
struct KernelConntrack(rudder_conntrack::ConntrackSocket);

impl rudder_controller::conntrack::Conntrack for KernelConntrack {
    fn udp_flows(
        &mut self,
        family: rudder_model::IpFamily,
    ) -> Result<Vec<rudder_model::UdpFlow>, DataplaneError> {
        Ok(self.0.udp_flows(family)?)
    }

    fn delete(&mut self, flows: &[rudder_model::UdpFlow]) -> Result<usize, DataplaneError> {
        let mut n = 0;
        for f in flows {
            n += usize::from(self.0.delete(f)?);
        }
        Ok(n)
    }
}

/// The kernel, through the nftables backend.
struct Kernel(NftBackend);

impl Dataplane for Kernel {
    fn apply(&mut self, tx: &Transaction) -> Result<usize, DataplaneError> {
        Ok(self.0.apply(tx)?.bytes)
    }

    fn supports_dry_runs(&self) -> bool {
        true
    }

    fn check(&mut self, tx: &Transaction) -> Option<Result<(), DataplaneError>> {
        Some(self.0.check(tx).map_err(|e| Box::new(e) as DataplaneError))
    }

    fn classify(&self, error: &DataplaneError) -> Failure {
        match error.downcast_ref::<rudder_nft_backend::Error>() {
            Some(e) if e.is_not_found() => Failure::NotFound,
            Some(e) if NftBackend::is_refusal(e) => Failure::Refused,
            _ => Failure::Other,
        }
    }

    fn read(
        &mut self,
        table: &rudder_nft::TableRef,
        expected: Option<&rudder_nft::Table>,
    ) -> Option<Result<Option<rudder_nft::Table>, DataplaneError>> {
        // Over netlink dumps, whichever writer is used: no `nft` program.
        Some(
            self.0
                .read_table(table, expected)
                .map_err(|e| Box::new(e) as DataplaneError),
        )
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(run_async(args))
}

async fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = sigterm.recv() => info!("SIGTERM: exiting, rules stay in place"),
            _ = sigint.recv() => info!("SIGINT: exiting, rules stay in place"),
        }
    })
}

/// The sync loop's timing. In IPVS mode the periods are `--ipvs-min-sync-period` and
/// `--ipvs-sync-period` (`ipvs.minSyncPeriod`, `ipvs.syncPeriod`), as kube-proxy's IPVS proxier
/// takes them, with kube-proxy's validation of them; otherwise `--iptables-*`.
fn loop_config(args: &RunArgs, mode: proxier::Mode) -> anyhow::Result<LoopConfig> {
    let (min_sync_period, sync_period) = match mode {
        proxier::Mode::Nftables => (args.min_sync_period, args.sync_period),
        proxier::Mode::Ipvs => {
            let (min, sync) = (args.ipvs_min_sync_period, args.ipvs_sync_period);
            if sync.is_zero() {
                anyhow::bail!("--ipvs-sync-period (ipvs.syncPeriod) must be more than 0");
            }
            if min > sync {
                anyhow::bail!(
                    "--ipvs-min-sync-period (ipvs.minSyncPeriod) {} must not be more than --ipvs-sync-period (ipvs.syncPeriod) {}",
                    crate::config::format_duration(min),
                    crate::config::format_duration(sync)
                );
            }
            (min, sync)
        }
    };
    Ok(LoopConfig {
        min_sync_period,
        sync_period,
        full_sync_period: args.full_sync_period,
        node_wait: args.node_wait,
    })
}

/// Sets `--ipvs-tcp-timeout`, `--ipvs-tcpfin-timeout` and `--ipvs-udp-timeout` (those not 0),
/// logging the kernel's values before and after; a failure is a warning, as in kube-proxy.
fn set_ipvs_timeouts(kernel: &mut crate::ipvs::IpvsKernel, wanted: rudder_ipvs::types::Config) {
    use crate::ipvs::timeout_change;
    match kernel.set_timeouts(wanted) {
        Ok(None) => {}
        Ok(Some((old, new))) => info!(
            tcp = %timeout_change(old.tcp, new.tcp),
            tcpfin = %timeout_change(old.tcp_fin, new.tcp_fin),
            udp = %timeout_change(old.udp, new.udp),
            "set the IPVS timeouts"
        ),
        Err(e) => warn!(
            "cannot set the IPVS timeouts (--ipvs-tcp-timeout, --ipvs-tcpfin-timeout, --ipvs-udp-timeout): the kernel's stay: {:#}",
            anyhow::Error::new(e)
        ),
    }
}

async fn run_async(args: RunArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::from_args(&args.proxy)?;
    let loop_config = loop_config(&args, settings.mode)?;
    // The `--ipvs-*` values are checked in IPVS mode only, where they are used (kube-proxy).
    let ipvs_timeouts = match settings.mode {
        proxier::Mode::Nftables => rudder_ipvs::types::Config::default(),
        proxier::Mode::Ipvs => crate::ipvs::timeouts(
            args.ipvs_tcp_timeout,
            args.ipvs_tcpfin_timeout,
            args.ipvs_udp_timeout,
        )?,
    };
    // Before anything touches the kernel: one Rudder per table and network namespace.
    let lock = crate::lock::acquire(
        settings.config.table.as_str(),
        Some(format!(
            "pid={} metrics={}",
            std::process::id(),
            args.metrics_bind_address.trim()
        )),
    )
    .map_err(|e| match e {
        crate::lock::LockError::Held { .. } => {
            anyhow::anyhow!("{e}: stop it first, or give this one another --nftables-table")
        }
        e => anyhow::Error::new(e),
    })?;
    if let Some(s) = lock.squatter() {
        warn!(
            pid = s.pid,
            uid = s.uid,
            "the lock of the `{}` tables is held by a process of another user, not a Rudder: running without it",
            settings.config.table
        );
    }
    let mode = if args.nft_writer == "nft" {
        WriteMode::Program
    } else {
        WriteMode::Netlink
    };
    let backend = NftBackend::with_program(&args.nft_path).write_mode(mode);
    // The monitor shares the writer's identity, to tell Rudder's own commits from others'.
    let monitor_backend = backend.clone();
    // The `nft` program is needed only to write with it.
    let version = if mode == WriteMode::Program {
        backend
            .check_version()
            .context("checking the nft program (--nft-writer nft)")?
    } else {
        "not used".to_owned()
    };
    let families = proxier::families(proxier::ipv6_available());
    let source = if args.proxy.manifests.is_empty() {
        "api-server"
    } else {
        "manifests"
    };
    info!(node = %settings.hostname, nft = %version, writer = %args.nft_writer, families = ?families, table = %settings.config.table, source, "starting Rudder");

    // IPVS mode: a kernel without IPVS stops the daemon here, before anything is changed.
    let ipvs_kernel = match settings.mode {
        proxier::Mode::Nftables => None,
        proxier::Mode::Ipvs => {
            let mut kernel = crate::ipvs::IpvsKernel::new(settings.ipvs.exclude.clone())?;
            crate::ipvs::set_sysctls(args.ipvs_strict_arp);
            set_ipvs_timeouts(&mut kernel, ipvs_timeouts);
            Some(kernel)
        }
    };

    // kube-proxy's conntrack settings, before the first sync.
    let ct = rudder_conntrack::sysctl::ConntrackSettings {
        max_per_core: args.conntrack_max_per_core,
        min: args.conntrack_min,
        tcp_established: Some(args.conntrack_tcp_established),
        tcp_close_wait: Some(args.conntrack_tcp_close_wait),
        tcp_be_liberal: args.conntrack_tcp_be_liberal,
        udp: Some(args.conntrack_udp),
        udp_stream: Some(args.conntrack_udp_stream),
    };
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    for o in rudder_conntrack::sysctl::apply(&ct, cpus, &Default::default()) {
        match o.result {
            Ok(Some((old, new))) => info!(sysctl = o.name, old, new, "set conntrack sysctl"),
            Ok(None) => {}
            Err(e) => warn!(
                sysctl = o.name,
                "cannot set conntrack sysctl (set it on the host, or use --conntrack-max-per-core 0 in containers that cannot): {e}"
            ),
        }
    }

    let ctx_settings = settings.clone();
    let node_context: NodeContextFn =
        Box::new(move |node| ctx_settings.node_context(node, Some(&proxier::local_addresses())));
    match ipvs_kernel {
        None => {
            let compiler = Compiler::new(&families, settings.config.clone(), node_context(None));
            let tables = compiler.tables();
            let sync_loop = SyncLoop::new(compiler, Kernel(backend), node_context, loop_config);
            serve(
                &args,
                &settings,
                families,
                sync_loop,
                Some((monitor_backend, tables)),
            )
            .await
        }
        Some(kernel) => {
            info!(
                scheduler = %settings.ipvs.scheduler,
                interface = crate::ipvs::DUMMY,
                min_sync_period = ?loop_config.min_sync_period,
                sync_period = ?loop_config.sync_period,
                "IPVS mode"
            );
            let compiler = rudder_ipvs_compiler::IpvsCompiler::new(
                &families,
                settings.ipvs_options(),
                node_context(None),
            );
            let tables = compiler.tables();
            let mode = rudder_controller::ipvs::IpvsMode::new(compiler, kernel, Kernel(backend));
            let sync_loop = SyncLoop::with_mode(mode, node_context, loop_config);
            serve(
                &args,
                &settings,
                families,
                sync_loop,
                Some((monitor_backend, tables)),
            )
            .await
        }
    }
}

/// Runs the daemon around `sync_loop`, whatever its proxy mode: sources, Events, metrics and
/// health servers, the localhost proxy, signals. `monitor` (nftables mode) follows the
/// kernel's change notifications for Rudder's tables.
async fn serve<M: rudder_controller::ProxyMode>(
    args: &RunArgs,
    settings: &Settings,
    families: Vec<rudder_model::IpFamily>,
    mut sync_loop: SyncLoop<M>,
    monitor: Option<(NftBackend, Vec<rudder_nft::TableRef>)>,
) -> anyhow::Result<ExitCode> {
    match rudder_conntrack::ConntrackSocket::new() {
        Ok(ct) => sync_loop = sync_loop.with_conntrack(Box::new(KernelConntrack(ct))),
        Err(e) => warn!("no conntrack netlink, stale UDP flows will not be cleaned: {e}"),
    }
    // The API client comes first: Events (and the health servers that record some) need it.
    let client = if args.proxy.manifests.is_empty() {
        Some(
            rudder_sources::client::connect(args.kubeconfig.as_deref(), args.master.as_deref())
                .await?,
        )
    } else {
        None
    };
    let (events, events_task) = match &client {
        Some(c) => {
            let (events, task) = rudder_sources::events::spawn(c.clone(), &settings.hostname);
            (events, Some(task))
        }
        None => (rudder_sources::events::Events::disabled(), None),
    };
    events.record(rudder_sources::events::ProxyEvent::Starting);
    let health_servers = tokio::spawn(crate::health::run(
        sync_loop.service_health(),
        sync_loop.proxy_health(),
        events.clone(),
    ));
    let metrics =
        std::sync::Arc::new(crate::metrics::Metrics::new().context("registering metrics")?);
    metrics.init_families(&families);
    metrics.set_identity(
        std::process::id(),
        settings.config.table.as_str(),
        sync_loop.mode().name(),
    );
    let problem_metrics = metrics.clone();
    // Every skipped piece of input: counted, and (with an API server) a warning Event on the
    // object, at most one per problem and ten minutes.
    let problem_events = events.clone();
    rudder_controller::change::on_problem(Box::new(move |p| {
        problem_metrics.invalid_input(p.reason.label());
        if !p.name.is_empty() {
            problem_events.record(rudder_sources::events::ProxyEvent::SkippedInvalidInput {
                kind: p.kind,
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                reason: p.reason.label().into(),
                message: p.to_string(),
            });
        }
    }));
    let (explain_tx, explain_rx) = tokio::sync::mpsc::unbounded_channel();
    let live_explain = crate::explain::Live::new(explain_tx);
    let observer_metrics = metrics.clone();
    let mut sync_loop = sync_loop
        .with_observer(Box::new(move |e| observer_metrics.observe(e)))
        .with_explain(explain_rx);
    // Changes others make to Rudder's tables, as the kernel reports them.
    let mut _monitor = None;
    if let (true, Some((monitor_backend, tables))) = (args.watch_tables, monitor) {
        let (drift_tx, drift_rx) = tokio::sync::mpsc::unbounded_channel();
        let lost_metrics = metrics.clone();
        let notify = move |n: Notice| {
            let d = match n {
                Notice::Changed { changes, deleted } => DriftNotice::Changed {
                    changes,
                    tables_missing: !deleted.is_empty(),
                },
                Notice::Lost => {
                    lost_metrics.monitor_lost();
                    DriftNotice::Lost
                }
            };
            drift_tx.send(d).is_ok()
        };
        match monitor_backend.monitor(tables, notify) {
            Ok(m) => {
                info!("watching Rudder's tables for changes made by others");
                _monitor = Some(m);
                sync_loop = sync_loop.with_drift(drift_rx);
            }
            Err(e) => warn!(
                "cannot follow nf_tables change notifications, changes made by others are repaired at the next periodic full resync only: {e}"
            ),
        }
    }
    let (sync_loop, localhost_proxy) = localhost_proxy(sync_loop, settings, &families, &metrics)?;
    let mut servers = Vec::new();
    for (flag, addr, handler) in [
        (
            "--metrics-bind-address",
            &args.metrics_bind_address,
            crate::metrics::metrics_handler(metrics.clone(), Some(live_explain.clone())),
        ),
        (
            "--healthz-bind-address",
            &args.healthz_bind_address,
            crate::metrics::health_handler(
                sync_loop.proxy_health(),
                metrics.clone(),
                families.clone(),
            ),
        ),
    ] {
        if addr.trim().is_empty() {
            continue;
        }
        let sock: std::net::SocketAddr = addr
            .parse()
            .with_context(|| format!("{flag} {addr:?} is not IP:PORT"))?;
        servers.push(
            crate::http::serve(sock, handler)
                .with_context(|| format!("{flag}: cannot listen on {sock}"))?,
        );
        info!(%sock, "serving {}", if flag.starts_with("--metrics") { "metrics" } else { "health checks" });
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let shutdown = shutdown_signal().await?;

    // Manifest files are read on a thread of their own: nothing the file system does can stall
    // the runtime's threads, which serve /healthz, /metrics and /status.
    let mut follower_thread = None;
    let tasks = if let Some(client) = client {
        let mut tasks =
            rudder_sources::watch::spawn(client.clone(), &settings.hostname, tx.clone());
        tasks.push(rudder_sources::watch::spawn_service_cidrs(client, tx));
        tasks
    } else {
        let follower = crate::follow::Follower::new(
            args.proxy.manifests.clone(),
            crate::follow::Settings::new(args.full_sync_period),
        );
        follower_thread = Some(
            crate::follow::spawn(
                follower,
                settings.hostname.clone(),
                args.poll_interval,
                tx,
                metrics.clone(),
            )
            .context("starting the manifest follower")?,
        );
        Vec::new()
    };
    // AllowServiceExternalIPs off: external IPs never reach the loop.
    let (rx, gate_task) = if settings.gates.allow_service_external_ips {
        (rx, None)
    } else {
        info!(
            "the AllowServiceExternalIPs feature gate is off: spec.externalIPs are not programmed"
        );
        let (rx, task) = crate::gates::filter(rx, crate::gates::ExternalIps::new(events.clone()));
        (rx, Some(task))
    };
    let _ = sync_loop.run(rx, shutdown).await;
    if let Some(t) = gate_task {
        t.abort();
    }
    for t in tasks {
        t.abort();
    }
    health_servers.abort();
    if let Some(t) = localhost_proxy {
        t.abort();
    }
    if let Some(t) = events_task {
        t.abort();
    }
    for s in servers {
        s.abort();
    }
    // The follower ends at its next poll, once it sees the loop gone.
    drop(follower_thread);
    Ok(ExitCode::SUCCESS)
}

/// Starts the localhost node port proxy when `--nodeport-addresses` lists a loopback address
/// explicitly (KEP-6032), following what each sync programmed.
fn localhost_proxy<M: rudder_controller::ProxyMode>(
    sync_loop: SyncLoop<M>,
    settings: &Settings,
    families: &[rudder_model::IpFamily],
    metrics: &crate::metrics::Metrics,
) -> anyhow::Result<(SyncLoop<M>, Option<tokio::task::JoinHandle<()>>)> {
    use rudder_controller::localhost::LocalhostNodePorts;
    let enabled: Vec<_> = settings
        .nodeport
        .localhost_families()
        .into_iter()
        .filter(|f| families.contains(f))
        .collect();
    if enabled.is_empty() {
        return Ok((sync_loop, None));
    }
    let nofile = raise_nofile_limit();
    let max_connections = crate::localhost::max_connections(nofile);
    let addrs: Vec<String> = enabled
        .iter()
        .map(|f| crate::localhost::loopback(*f).to_string())
        .collect();
    info!(addresses = ?addrs, max_connections, "localhost node ports: TCP node ports are proxied on the loopback addresses");
    let lm = crate::localhost::LocalhostMetrics::register(metrics.registry(), &enabled)
        .context("registering the localhost node port metrics")?;
    let (tx, rx) = tokio::sync::watch::channel(LocalhostNodePorts::default());
    let sync_loop = sync_loop.with_synced_observer(Box::new(move |synced| {
        let desired =
            LocalhostNodePorts::compute(synced.state, synced.node, &enabled, synced.refused);
        tx.send_if_modified(|current| {
            let changed = *current != desired;
            *current = desired;
            changed
        });
    }));
    let task = tokio::spawn(crate::localhost::run(rx, lm, max_connections));
    Ok((sync_loop, Some(task)))
}

/// Raises the soft limit of open files to the hard limit (as Go programs such as kube-proxy do
/// at start), and returns the soft limit in force.
fn raise_nofile_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                warn!("cannot raise the open files limit from {soft} to {hard}: {e}");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            warn!("cannot read the open files limit: {e}");
            1024
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn args(extra: &[&str]) -> RunArgs {
        let argv = ["rudder", "run", "--manifests", "/m"]
            .into_iter()
            .chain(extra.iter().copied());
        match Cli::try_parse_from(argv).expect("flags parse").command {
            Command::Run(a) => a,
            _ => panic!("not run"),
        }
    }

    #[test]
    fn ipvs_mode_syncs_on_the_ipvs_periods() {
        let a = args(&[
            "--iptables-min-sync-period",
            "2s",
            "--iptables-sync-period",
            "40s",
            "--ipvs-sync-period",
            "50s",
        ]);
        let nft = loop_config(&a, proxier::Mode::Nftables).expect("valid");
        assert_eq!(
            (nft.min_sync_period, nft.sync_period),
            (Duration::from_secs(2), Duration::from_secs(40))
        );
        let ipvs = loop_config(&a, proxier::Mode::Ipvs).expect("valid");
        assert_eq!(
            (ipvs.min_sync_period, ipvs.sync_period),
            (Duration::ZERO, Duration::from_secs(50)),
            "--ipvs-min-sync-period's default is kube-proxy's 0"
        );
        assert_eq!(ipvs.full_sync_period, nft.full_sync_period);
        // Defaults: 0s and 30s.
        let d = loop_config(&args(&[]), proxier::Mode::Ipvs).expect("valid");
        assert_eq!(
            (d.min_sync_period, d.sync_period),
            (Duration::ZERO, Duration::from_secs(30))
        );
    }

    #[test]
    fn ipvs_periods_are_validated_like_kube_proxy() {
        let e = loop_config(&args(&["--ipvs-sync-period", "0s"]), proxier::Mode::Ipvs)
            .expect_err("0 sync period");
        assert!(e.to_string().contains("--ipvs-sync-period"), "{e}");
        let e = loop_config(
            &args(&["--ipvs-sync-period", "10s", "--ipvs-min-sync-period", "1m"]),
            proxier::Mode::Ipvs,
        )
        .expect_err("min above sync");
        assert!(
            e.to_string()
                .contains("--ipvs-min-sync-period (ipvs.minSyncPeriod) 1m0s"),
            "{e}"
        );
        // Not checked in nftables mode, where they are not used.
        assert!(
            loop_config(
                &args(&["--ipvs-sync-period", "0s"]),
                proxier::Mode::Nftables
            )
            .is_ok()
        );
    }

    #[test]
    fn ipvs_flags_parse_like_kube_proxys() {
        let a = args(&[
            "--ipvs-tcp-timeout",
            "15m",
            "--ipvs-tcpfin-timeout",
            "30s",
            "--ipvs-udp-timeout",
            "1m",
            "--ipvs-strict-arp",
        ]);
        assert!(a.ipvs_strict_arp);
        assert_eq!(
            crate::ipvs::timeouts(
                a.ipvs_tcp_timeout,
                a.ipvs_tcpfin_timeout,
                a.ipvs_udp_timeout
            )
            .expect("valid"),
            rudder_ipvs::types::Config {
                tcp: Some(900),
                tcp_fin: Some(30),
                udp: Some(60),
            }
        );
        assert!(!args(&["--ipvs-strict-arp=false"]).ipvs_strict_arp);
        assert!(args(&["--ipvs-strict-arp=true"]).ipvs_strict_arp);
        let d = args(&[]);
        assert!(!d.ipvs_strict_arp);
        assert_eq!(
            crate::ipvs::timeouts(
                d.ipvs_tcp_timeout,
                d.ipvs_tcpfin_timeout,
                d.ipvs_udp_timeout
            )
            .expect("valid"),
            rudder_ipvs::types::Config::default(),
            "by default the kernel's timeouts stay"
        );
        assert!(Cli::try_parse_from(["rudder", "run", "--ipvs-tcp-timeout", "forever"]).is_err());
    }
}
