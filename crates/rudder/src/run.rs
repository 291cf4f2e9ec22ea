//! `rudder run`: program the kernel and keep it in sync with manifest files or with a
//! Kubernetes API server.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use rudder_compiler::Compiler;
use rudder_controller::{Change, Dataplane, DataplaneError, LoopConfig, NodeContextFn, SyncLoop};
use rudder_nft::Transaction;
use rudder_nft_backend::{NftBackend, WriteMode};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{info, warn};

use crate::cli::RunArgs;
use crate::manifests::{self, Objects};
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

    fn shape(
        &mut self,
        table: &rudder_nft::TableRef,
    ) -> Option<Result<rudder_controller::Shape, DataplaneError>> {
        Some(match self.0.list_table(table) {
            // A deleted table: every chain and set is missing.
            Ok(None) => Ok(rudder_controller::Shape::new()),
            Ok(Some(listing)) => {
                let mut s = rudder_controller::Shape::new();
                for (name, chain) in listing.chains {
                    s.insert(format!("chain {name}"), chain.rules);
                }
                for (name, set) in listing.sets {
                    s.insert(format!("set {name}"), set.elements.len());
                }
                Ok(s)
            }
            Err(e) => Err(Box::new(e)),
        })
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

async fn run_async(args: RunArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::from_args(&args.proxy)?;
    let mode = if args.nft_writer == "nft" {
        WriteMode::Program
    } else {
        WriteMode::Netlink
    };
    let backend = NftBackend::with_program(&args.nft_path).write_mode(mode);
    let version = backend
        .check_version()
        .context("checking the nft program")?;
    let families = proxier::families(proxier::ipv6_available());
    let source = if args.proxy.manifests.is_empty() {
        "api-server"
    } else {
        "manifests"
    };
    info!(node = %settings.hostname, nft = %version, writer = %args.nft_writer, families = ?families, table = %settings.config.table, source, "starting Rudder");

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
    let compiler = Compiler::new(&families, settings.config.clone(), node_context(None));
    let loop_config = LoopConfig {
        min_sync_period: args.min_sync_period,
        sync_period: args.sync_period,
        full_sync_period: args.full_sync_period,
        node_wait: args.node_wait,
    };
    let mut sync_loop = SyncLoop::new(compiler, Kernel(backend), node_context, loop_config);
    match rudder_conntrack::ConntrackSocket::new() {
        Ok(ct) => sync_loop = sync_loop.with_conntrack(Box::new(KernelConntrack(ct))),
        Err(e) => warn!("no conntrack netlink, stale UDP flows will not be cleaned: {e}"),
    }
    // The API client comes first: Events (and the health servers that record some) need it.
    let client = if args.proxy.manifests.is_empty() {
        Some(kube_client(&args).await?)
    } else {
        None
    };
    let (events, events_task) = match &client {
        Some(c) => {
            let (events, task) = rudder_controller::events::spawn(c.clone(), &settings.hostname);
            (events, Some(task))
        }
        None => (rudder_controller::events::Events::disabled(), None),
    };
    events.record(rudder_controller::events::ProxyEvent::Starting);
    let health_servers = tokio::spawn(crate::health::run(
        sync_loop.service_health(),
        sync_loop.proxy_health(),
        events.clone(),
    ));
    let metrics =
        std::sync::Arc::new(crate::metrics::Metrics::new().context("registering metrics")?);
    metrics.init_families(&families);
    let problem_metrics = metrics.clone();
    rudder_controller::change::on_problem(Box::new(move |p| {
        problem_metrics.invalid_input(p.reason.label())
    }));
    let (explain_tx, explain_rx) = tokio::sync::mpsc::unbounded_channel();
    let live_explain = crate::explain::Live::new(explain_tx);
    let observer_metrics = metrics.clone();
    let sync_loop = sync_loop
        .with_observer(Box::new(move |e| observer_metrics.observe(e)))
        .with_explain(explain_rx);
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

    let tasks = if let Some(client) = client {
        let mut tasks =
            rudder_controller::watch::spawn(client.clone(), &settings.hostname, tx.clone());
        tasks.push(rudder_controller::watch::spawn_service_cidrs(client, tx));
        tasks
    } else {
        let source = Source {
            paths: args.proxy.manifests.clone(),
            fingerprint: BTreeMap::new(),
            files: BTreeMap::new(),
        };
        vec![tokio::spawn(follow_manifests(
            source,
            settings.hostname.clone(),
            args.poll_interval,
            tx,
        ))]
    };
    let _ = sync_loop.run(rx, shutdown).await;
    for t in tasks {
        t.abort();
    }
    health_servers.abort();
    if let Some(t) = events_task {
        t.abort();
    }
    for s in servers {
        s.abort();
    }
    Ok(ExitCode::SUCCESS)
}

/// A client from `--kubeconfig` / `--master`, or the in-cluster (or default) configuration.
async fn kube_client(args: &RunArgs) -> anyhow::Result<kube::Client> {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let mut config = match &args.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        None => match &args.master {
            Some(master) => kube::Config::new(
                master
                    .parse()
                    .with_context(|| format!("--master {master:?} is not a URL"))?,
            ),
            None => kube::Config::infer()
                .await
                .context("no --kubeconfig, --master or in-cluster configuration")?,
        },
    };
    if let (Some(_), Some(master)) = (&args.kubeconfig, &args.master) {
        config.cluster_url = master
            .parse()
            .with_context(|| format!("--master {master:?} is not a URL"))?;
    }
    if config.cluster_url.scheme_str() != Some("https")
        && config.cluster_url.scheme_str() != Some("http")
    {
        bail!(
            "API server URL {} must be http or https",
            config.cluster_url
        );
    }
    info!(server = %config.cluster_url, "using the Kubernetes API server");
    kube::Client::try_from(config).context("creating the Kubernetes client")
}

/// Everything read from the manifest files.
struct Source {
    paths: Vec<PathBuf>,
    fingerprint: BTreeMap<PathBuf, (SystemTime, u64)>,
    files: BTreeMap<PathBuf, Objects>,
}

impl Source {
    /// Re-reads the files if any changed. Returns the merged objects when something changed.
    fn poll(&mut self, force: bool) -> Option<Objects> {
        let fingerprint = match manifests::scan(&self.paths) {
            Ok(f) => f,
            Err(e) => {
                // A path that vanished (an editor replacing a file): keep the last content.
                warn!("cannot scan manifests, keeping the last content: {e}");
                return None;
            }
        };
        if !force && fingerprint == self.fingerprint {
            return None;
        }
        let (files, errors) = match manifests::load(&self.paths, &self.files) {
            Ok(r) => r,
            Err(e) => {
                warn!("cannot read manifests, keeping the last content: {e}");
                return None;
            }
        };
        for e in &errors {
            warn!(file = %e.file.display(), document = e.document, "skipping manifest: {}", e.message);
        }
        self.fingerprint = fingerprint;
        self.files = files;
        Some(manifests::merge(&self.files))
    }
}

/// Sends a snapshot at start and whenever the files change.
async fn follow_manifests(
    mut source: Source,
    hostname: String,
    interval: Duration,
    changes: UnboundedSender<Change>,
) {
    use rudder_controller::change;
    let mut force = true;
    loop {
        if let Some(objs) = source.poll(force) {
            force = false;
            let node = objs.nodes.iter().find(|n| {
                n.metadata.name.as_deref().map(str::to_lowercase).as_deref()
                    == Some(hostname.as_str())
            });
            if node.is_none() {
                warn!(node = %hostname, "no Node object for this node in the manifests");
            }
            let snapshot = Change::Snapshot {
                services: objs.services.iter().filter_map(change::service).collect(),
                slices: objs.slices.iter().filter_map(change::slice).collect(),
                node: node.map(|n| Box::new(change::node(n))),
                service_cidrs: objs
                    .service_cidrs
                    .iter()
                    .flat_map(change::service_cidrs)
                    .collect(),
            };
            if changes.send(snapshot).is_err() {
                return;
            }
        }
        tokio::time::sleep(interval).await;
    }
}
