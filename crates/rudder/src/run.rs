//! `rudder run`: program the kernel from manifest files and follow their changes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use anyhow::Context;
use rudder_compiler::Compiler;
use rudder_model::ProxyState;
use rudder_nft_backend::NftBackend;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::cli::RunArgs;
use crate::manifests::{self, Objects};
use crate::proxier::{self, Settings, Syncer};

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

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(run_async(args))
}

async fn run_async(args: RunArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::from_args(&args.proxy)?;
    let backend = NftBackend::with_program(&args.nft_path);
    let version = backend
        .check_version()
        .context("checking the nft program")?;
    let families = proxier::families(proxier::ipv6_available());
    info!(node = %settings.hostname, nft = %version, families = ?families, table = %settings.config.table, "starting Rudder");

    let mut source = Source {
        paths: args.proxy.manifests.clone(),
        fingerprint: BTreeMap::new(),
        files: BTreeMap::new(),
    };
    let mut state = ProxyState::new();
    let mut node = None;
    let objs = source.poll(true).unwrap_or_default();
    apply_objects(&objs, &settings, &mut state, &mut node);
    let local = proxier::local_addresses();
    let node_ctx = settings.node_context(node.as_ref(), Some(&local));
    let compiler = Compiler::new(&families, settings.config.clone(), node_ctx.clone());
    let mut syncer = Syncer::new(compiler, backend, args.full_sync_period);
    let mut current_ctx = node_ctx;

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut last_sync_end: Option<Instant> = None;
    let mut retry_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let min_ok = last_sync_end.is_none_or(|t| now.duration_since(t) >= args.min_sync_period);
        let retry_ok = retry_at.is_none_or(|t| now >= t);
        if syncer.pending(&state) && min_ok && retry_ok {
            match syncer.sync(&mut state) {
                Ok(_) => retry_at = None,
                Err(e) => {
                    error!("{e:#}; retrying in {:?}", args.sync_period);
                    retry_at = Some(Instant::now() + args.sync_period);
                }
            }
            last_sync_end = Some(Instant::now());
        }
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: exiting, rules stay in place"); break; }
            _ = sigint.recv() => { info!("SIGINT: exiting, rules stay in place"); break; }
            _ = tokio::time::sleep(args.poll_interval) => {}
        }
        if let Some(objs) = source.poll(false) {
            apply_objects(&objs, &settings, &mut state, &mut node);
            let ctx = settings.node_context(node.as_ref(), Some(&proxier::local_addresses()));
            if ctx != current_ctx {
                info!("node addresses changed: next sync is a full one");
                syncer
                    .compiler
                    .reconfigure(settings.config.clone(), ctx.clone());
                syncer.needs_full = true;
                current_ctx = ctx;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn apply_objects(
    objs: &Objects,
    settings: &Settings,
    state: &mut ProxyState,
    node: &mut Option<rudder_model::Node>,
) {
    let conv = proxier::convert(objs, &settings.hostname);
    proxier::log_problems(&conv.problems);
    if conv.node.is_none() && settings.node_ip_override.is_empty() {
        warn!(node = %settings.hostname, "no Node object for this node and no --node-ip: node ports listen on no address");
    }
    *node = conv.node;
    state.replace_all(conv.services, conv.slices);
}
