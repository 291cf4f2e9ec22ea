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
use rudder_model::MALFORMED_DOCUMENT;

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
            metrics: metrics.clone(),
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
    /// Counts the documents that could not be read as objects.
    metrics: std::sync::Arc<crate::metrics::Metrics>,
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
            if e.document > 0 {
                // A document that is not an object: bad syntax, no kind, a field of the wrong
                // type (`port: "http"`).
                warn!(file = %e.file.display(), document = e.document, reason = MALFORMED_DOCUMENT, "skipping manifest: {}", e.message);
                self.metrics.invalid_input(MALFORMED_DOCUMENT);
            } else {
                warn!(file = %e.file.display(), "skipping manifest: {}", e.message);
            }
        }
        self.fingerprint = fingerprint;
        self.files = files;
        Some(manifests::merge(&self.files))
    }
}

/// The snapshot of one read of the manifests, and what was skipped: the same conversion
/// (and the same rule for duplicates) as `rudder compile`'s, [`proxier::convert`].
fn snapshot(objs: &Objects, hostname: &str) -> (Change, Vec<rudder_model::Problem>) {
    let conv = proxier::convert(objs, hostname);
    let snapshot = Change::Snapshot {
        services: conv.services,
        slices: conv.slices,
        node: conv.node.map(Box::new),
        service_cidrs: conv.service_cidrs,
    };
    (snapshot, conv.problems)
}

/// Sends a snapshot at start and whenever the files change.
async fn follow_manifests(
    mut source: Source,
    hostname: String,
    interval: Duration,
    changes: UnboundedSender<Change>,
) {
    let mut force = true;
    loop {
        if let Some(objs) = source.poll(force) {
            force = false;
            let (snapshot, problems) = snapshot(&objs, &hostname);
            rudder_controller::change::report_problems(&problems);
            if matches!(&snapshot, Change::Snapshot { node: None, .. }) {
                warn!(node = %hostname, "no Node object for this node in the manifests");
            }
            if changes.send(snapshot).is_err() {
                return;
            }
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Two Nodes named like this node (in two files), two Services and two ServiceCIDRs with
    /// the same names: the later one of each wins.
    const FIRST: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-1}
status: {addresses: [{type: InternalIP, address: 10.0.0.1}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
---
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: kubernetes}
spec: {cidrs: [10.96.0.0/16]}
"#;
    const SECOND: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: NODE-1}
status: {addresses: [{type: InternalIP, address: 10.0.0.2}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.0.2, ports: [{port: 80}]}
---
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: kubernetes}
spec: {cidrs: [10.97.0.0/16]}
"#;

    fn objects(files: &[(&str, &str)]) -> Objects {
        let mut all = BTreeMap::new();
        for (name, text) in files {
            let (objs, errors) = manifests::parse_str(Path::new(name), text).expect("parses");
            assert!(errors.is_empty(), "{errors:?}");
            all.insert(PathBuf::from(name), objs);
        }
        manifests::merge(&all)
    }

    #[test]
    fn compile_and_run_resolve_duplicate_objects_alike() {
        let objs = objects(&[("a.yaml", FIRST), ("b.yaml", SECOND)]);
        // What `rudder compile` uses...
        let conv = proxier::convert(&objs, "node-1");
        // ... and what `rudder run` sends to the sync loop.
        let (snap, problems) = snapshot(&objs, "node-1");
        let Change::Snapshot {
            services,
            node,
            service_cidrs,
            ..
        } = snap
        else {
            panic!("not a snapshot");
        };
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(
            node.as_ref().map(|n| n.addresses.clone()),
            Some(vec![ip("10.0.0.2")])
        );
        assert_eq!(conv.node.map(|n| n.addresses), Some(vec![ip("10.0.0.2")]));
        assert_eq!(services.len(), 1);
        assert_eq!(services[0].cluster_ips, vec![ip("10.96.0.2")]);
        assert_eq!(conv.services, services);
        assert_eq!(service_cidrs, vec!["10.97.0.0/16".parse().unwrap()]);
        assert_eq!(conv.service_cidrs, service_cidrs);
        let labels: Vec<String> = problems
            .iter()
            .map(|p| format!("{} {}", p.kind, p.reason.label()))
            .collect();
        assert_eq!(
            labels,
            [
                "Service duplicate_object",
                "Node duplicate_object",
                "ServiceCIDR duplicate_object"
            ]
        );
        assert_eq!(problems, conv.problems);
        // In the other file order, the other one wins: the rule is the order, not the content.
        let swapped = objects(&[("a.yaml", SECOND), ("b.yaml", FIRST)]);
        let (snap, _) = snapshot(&swapped, "node-1");
        assert!(matches!(
            snap,
            Change::Snapshot { node: Some(n), .. } if n.addresses == vec![ip("10.0.0.1")]
        ));
    }

    #[test]
    fn a_later_invalid_duplicate_replaces_the_earlier_object() {
        let bad = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec: {clusterIP: 127.0.0.1, ports: [{port: 80}]}\n";
        let objs = objects(&[("a.yaml", FIRST), ("b.yaml", bad)]);
        let (snap, problems) = snapshot(&objs, "node-1");
        assert!(matches!(snap, Change::Snapshot { services, .. } if services.is_empty()));
        let labels: Vec<&str> = problems.iter().map(|p| p.reason.label()).collect();
        assert_eq!(labels, ["duplicate_object", "special_cluster_ip"]);
    }

    #[test]
    fn documents_with_fields_of_the_wrong_type_are_counted() {
        let dir = std::env::temp_dir().join(format!("rudder-malformed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let svc = |i: usize, port: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: default}}\nspec: {{clusterIP: 10.96.0.9, ports: [{{port: {port}}}]}}\n"
            )
        };
        let text = [
            svc(1, "\"http\""),
            svc(2, "80.5"),
            svc(3, "true"),
            svc(4, "80"),
        ]
        .join("---\n");
        std::fs::write(dir.join("m.yaml"), text).unwrap();
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new().unwrap());
        let mut source = Source {
            paths: vec![dir.clone()],
            fingerprint: BTreeMap::new(),
            files: BTreeMap::new(),
            metrics: metrics.clone(),
        };
        let objs = source.poll(true).expect("read");
        let _ = std::fs::remove_dir_all(&dir);
        // The good document is used; the three others are counted, as often as they are read.
        assert_eq!(objs.services.len(), 1);
        let sample = "rudder_invalid_input_skipped_total{reason=\"malformed_document\"} 3";
        let text = metrics.render();
        assert!(text.contains(sample), "{text}");
    }
}
