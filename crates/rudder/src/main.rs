//! The `rudder` binary: glue between the command line, manifest files, the rule compiler and
//! the nftables backend.
//!
//! It owns process concerns only: flags, logging, signals, the sync loop's timing, and exit
//! codes. Rule semantics live in `rudder-compiler`, kernel access in `rudder-nft-backend`.

mod cli;
mod config;
mod explain;
#[cfg(test)]
mod fuzz_targets;
mod gates;
mod health;
mod http;
mod ipvs;
mod localhost;
mod lock;
mod logfmt;
mod metrics;
mod proxier;
mod run;

// The sources crate's modules, under the names the binary's modules use.
#[cfg(test)]
use rudder_sources::nesting;
use rudder_sources::{convert, files, follow, manifests};

use std::process::ExitCode;

use rudder_compiler::Compiler;
use rudder_model::IpFamily;
use rudder_nft::{Family, Name, Op, TableRef, Transaction};
use rudder_nft_backend::NftBackend;

use crate::cli::{Cli, Command, LogArgs, LogFormat};

// A full compile allocates and frees hundreds of thousands of small objects; mimalloc halves
// its cost compared with glibc's allocator (see docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in the vendored mimalloc v3 header (`enum mi_option_e`); the test
/// below checks it against the option's documented default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Makes mimalloc return freed memory to the OS at once instead of after a second, and then only
/// when the freeing thread allocates again. Rudder allocates in bursts (the initial lists of
/// every Service and EndpointSlice, then a full compile) with idle threads in between, so
/// without this the pages freed by the lists stay resident under the compile's: about 15 MiB
/// more peak RSS at 10,000 services, for no measurable speed gain (docs/performance.md).
#[allow(unsafe_code)]
fn tune_allocator() {
    // SAFETY: `mi_option_set` stores an integer in mimalloc's option table; it takes no
    // pointers and is safe to call at any time from any thread.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
}

fn init_logging(log: &LogArgs) {
    let level = match log.verbosity {
        0..=2 => "info",
        3..=4 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUDDER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colours only on a terminal: log files and collectors get plain text. Control
    // characters from input are escaped either way (see `logfmt`).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match log.logging_format {
        LogFormat::Json => builder
            .with_writer(|| logfmt::JsonSafe(std::io::stderr()))
            .json()
            .init(),
        LogFormat::Text => builder
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .fmt_fields(logfmt::EscapedFields)
            .init(),
    }
}

fn main() -> ExitCode {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        tune_allocator();
    }
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Compile(args) => {
            init_logging(&args.proxy.log);
            compile(args)
        }
        Command::Run(mut args) => {
            init_logging(&args.proxy.log);
            if let Some(path) = args.config.clone() {
                let sub = matches
                    .subcommand_matches("run")
                    .cloned()
                    .unwrap_or_default();
                match config::apply(&path, &sub, &mut args) {
                    Ok(warnings) => {
                        for w in warnings {
                            tracing::warn!("--config {}: {w}", path.display());
                        }
                    }
                    Err(e) => {
                        logfmt::say(format_args!("{e:#}"));
                        return ExitCode::FAILURE;
                    }
                }
            }
            if let Some(path) = args.write_config_to.clone() {
                let text = config::effective(&args);
                return match std::fs::write(&path, text) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "wrote the effective configuration");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        logfmt::say(format_args!("--write-config-to {}: {e}", path.display()));
                        ExitCode::FAILURE
                    }
                };
            }
            if args.cleanup {
                cleanup(cli::CleanupArgs {
                    table: args.proxy.table.clone(),
                    nft_path: args.nft_path.clone(),
                    ipvs_exclude_cidrs: args.proxy.ipvs_exclude_cidrs.clone(),
                    log: args.proxy.log.clone(),
                })
            } else {
                run::run(args)
            }
        }
        Command::Cleanup(args) => {
            init_logging(&args.log);
            cleanup(args)
        }
        Command::Status(args) => status(args),
        Command::Explain(args) => {
            init_logging(&args.proxy.log);
            explain(args)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            logfmt::say(format_args!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Loads manifests for the offline commands: the state, this node's context, and whether
/// anything was invalid (reported on stderr and skipped).
fn load_offline(
    proxy: &cli::ProxyArgs,
) -> anyhow::Result<(rudder_model::ProxyState, rudder_compiler::NodeContext, bool)> {
    let settings = proxier::Settings::from_args(proxy)?;
    if proxy.manifests.is_empty() {
        anyhow::bail!("--manifests is required");
    }
    let (files, errors, skipped) = files::load(&proxy.manifests);
    // A path given that cannot be walked is a usage error, not input to skip (`run` waits for
    // it instead).
    if let Some(s) = skipped.iter().find(|s| {
        proxy.manifests.contains(&s.path)
            && matches!(
                s.reason,
                files::Reason::UnreadableFile | files::Reason::BrokenSymlink
            )
    }) {
        anyhow::bail!("--manifests {}", s);
    }
    for s in &skipped {
        eprintln!("rudder: skipping {s}");
    }
    for e in &errors {
        logfmt::say(format_args!("skipping {e}"));
    }
    let objs = manifests::merge(&files);
    let mut conv = convert::convert(&objs, &settings.hostname);
    for p in &conv.problems {
        logfmt::say(format_args!("skipping invalid input: {p}"));
    }
    if conv.node.is_none() && settings.node_ip_override.is_empty() {
        eprintln!(
            "rudder: no Node named {:?} in the manifests and no --node-ip: node ports listen on no address",
            settings.hostname
        );
    }

    if !settings.gates.allow_service_external_ips {
        for svc in &mut conv.services {
            let ips = gates::strip_external_ips(svc);
            if !ips.is_empty() {
                logfmt::say(format_args!(
                    "Service {}: spec.externalIPs {ips:?} are not programmed: the AllowServiceExternalIPs feature gate is off",
                    svc.key
                ));
            }
        }
    }
    let mut node = settings.node_context(conv.node.as_ref(), None);
    node.service_cidrs = conv.service_cidrs.iter().map(|c| c.cidr).collect();
    node.service_cidrs.sort();
    node.service_cidrs.dedup();
    let mut state = rudder_model::ProxyState::new();
    state.replace_all(conv.services, conv.slices);
    let invalid = !errors.is_empty() || !skipped.is_empty() || !conv.problems.is_empty();
    Ok((state, node, invalid))
}

/// `rudder compile`: manifests in, `nft -f` text out.
fn compile(args: cli::CompileArgs) -> anyhow::Result<ExitCode> {
    let settings = proxier::Settings::from_args(&args.proxy)?;
    let (state, node, invalid) = load_offline(&args.proxy)?;
    if settings.mode == proxier::Mode::Ipvs {
        return compile_ipvs(&args, &settings, &state, node, invalid);
    }
    // Offline output is the same whatever the host: both families, always.
    let mut compiler = Compiler::new(&[IpFamily::V4, IpFamily::V6], settings.config.clone(), node);
    compiler.full(&state);
    // What the compiler refused because of this node (its own addresses as service
    // addresses, service CIDRs covering it).
    let refused = compiler.take_problems();
    for p in &refused {
        logfmt::say(format_args!("skipping invalid input: {p}"));
    }
    if args.strict && (invalid || !refused.is_empty()) {
        anyhow::bail!("invalid input (see above) and --strict is set");
    }
    // Check the output's consistency the way the kernel would, before printing it.
    compiler
        .ruleset()
        .map_err(|e| anyhow::anyhow!("internal error: inconsistent ruleset: {e}"))?;
    // The prologue makes the output replace Rudder's tables atomically when loaded with
    // `nft -f`, whether or not they exist.
    let mut prologue = Transaction::new();
    for t in compiler.tables() {
        prologue.push(Op::AddTable(t.clone()));
        prologue.push(Op::DeleteTable(t));
    }
    // The body is exactly what `rudder run` applies on a full sync, in the same order, so the
    // kernel lists both identically.
    print!(
        "{}{}",
        prologue.render(),
        compiler.create_transaction().render()
    );
    Ok(ExitCode::SUCCESS)
}

/// `rudder compile --proxy-mode ipvs`: what the IPVS mode programs (see `--ipvs-output`).
fn compile_ipvs(
    args: &cli::CompileArgs,
    settings: &proxier::Settings,
    state: &rudder_model::ProxyState,
    node: rudder_compiler::NodeContext,
    invalid: bool,
) -> anyhow::Result<ExitCode> {
    let mut compiler = rudder_ipvs_compiler::IpvsCompiler::new(
        &[IpFamily::V4, IpFamily::V6],
        settings.ipvs_options(),
        node,
    );
    compiler.full(state);
    let refused = compiler.take_problems();
    for p in &refused {
        logfmt::say(format_args!("skipping invalid input: {p}"));
    }
    if args.strict && (invalid || !refused.is_empty()) {
        anyhow::bail!("invalid input (see above) and --strict is set");
    }
    let mut out = String::new();
    match args.ipvs_output.as_str() {
        "nft" => {
            compiler
                .ruleset()
                .map_err(|e| anyhow::anyhow!("internal error: inconsistent ruleset: {e}"))?;
            let mut tx = Transaction::new();
            for t in compiler.tables() {
                tx.push(Op::AddTable(t.clone()));
                tx.push(Op::DeleteTable(t));
            }
            tx.extend(compiler.create_transaction());
            out = tx.render();
        }
        "addresses" => {
            for a in &compiler.target().addresses {
                out.push_str(&format!("{a}\n"));
            }
        }
        _ => {
            use rudder_ipvs::types::{RealServer, Weight};
            for (key, server) in &compiler.target().servers {
                out.push_str(&rudder_ipvs::save::service_line(&server.service));
                out.push('\n');
                for (addr, w) in &server.real {
                    let weight = Weight::new(*w).unwrap_or(Weight::ONE);
                    let rs = RealServer::masquerade(*addr, weight);
                    out.push_str(&rudder_ipvs::save::dest_line(key, &rs));
                    out.push('\n');
                }
            }
        }
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// `rudder explain`: one packet's fate, from manifests.
fn explain(args: cli::ExplainArgs) -> anyhow::Result<ExitCode> {
    let q = explain::query(&args.to, args.from.as_deref(), args.via.as_deref())
        .map_err(|e| anyhow::anyhow!(e))?;
    if args.live {
        let addr: std::net::SocketAddr = args.metrics_address.parse().map_err(|_| {
            anyhow::anyhow!(
                "--metrics-bind-address {:?} is not IP:PORT",
                args.metrics_address
            )
        })?;
        let target = explain::query_string(&args.to, args.from.as_deref(), args.via.as_deref());
        let (code, body) = http_get(addr, &target)
            .map_err(|e| anyhow::anyhow!("cannot reach Rudder at {addr}: {e}"))?;
        if code != 200 {
            anyhow::bail!("{addr}/explain answered {code}: {}", body.trim());
        }
        print!("{}", logfmt::multiline(&body));
        return Ok(ExitCode::SUCCESS);
    }
    let (state, node, _) = load_offline(&args.proxy)?;
    let settings = proxier::Settings::from_args(&args.proxy)?;
    if settings.mode == proxier::Mode::Ipvs {
        // What `rudder compile --proxy-mode ipvs` programs, and the packet through it.
        let mut compiler = rudder_ipvs_compiler::IpvsCompiler::new(
            &[IpFamily::V4, IpFamily::V6],
            settings.ipvs_options(),
            node,
        );
        compiler.full(&state);
        print!("{}", compiler.explain(&state, &q));
        return Ok(ExitCode::SUCCESS);
    }
    print!(
        "{}",
        rudder_compiler::explain::explain(&state, &settings.config, &node, &q)
    );
    Ok(ExitCode::SUCCESS)
}

/// `GET path` from Rudder's metrics server; returns the status code and body.
fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http::get_blocking(addr, path)
}

/// "3m12s ago"-style ages.
fn ago(then: f64, now: f64) -> String {
    let secs = (now - then).max(0.0);
    if secs < 60.0 {
        format!("{secs:.1} s ago")
    } else if secs < 3600.0 {
        format!("{}m{}s ago", (secs / 60.0) as u64, (secs % 60.0) as u64)
    } else {
        format!(
            "{}h{}m ago",
            (secs / 3600.0) as u64,
            ((secs % 3600.0) / 60.0) as u64
        )
    }
}

/// `rudder status`: the running daemon's `/status`, for people.
fn status(args: cli::StatusArgs) -> anyhow::Result<ExitCode> {
    let addr: std::net::SocketAddr = args
        .address
        .parse()
        .map_err(|_| anyhow::anyhow!("--metrics-bind-address {:?} is not IP:PORT", args.address))?;
    // Who holds this network namespace's lock, whatever the address asked.
    let holder = lock::holder(&args.table);
    let (code, body) = http_get(addr, "/status").map_err(|e| match &holder {
        Some(h) => anyhow::anyhow!(
            "cannot reach Rudder at {addr}: {e}; the `{}` tables of this network namespace are held by {h}",
            args.table
        ),
        None => anyhow::anyhow!("cannot reach Rudder at {addr}: {e}"),
    })?;
    if code != 200 {
        anyhow::bail!("{addr}/status answered {code}: is this Rudder?");
    }
    let st: metrics::Status = serde_json::from_str(&body)
        .map_err(|e| anyhow::anyhow!("{addr}/status: unexpected answer: {e}"))?;
    if args.json {
        println!("{}", logfmt::multiline(&body));
    } else {
        let now = metrics::now();
        let mode = if st.mode.is_empty() {
            "nftables"
        } else {
            st.mode.as_str()
        };
        println!(
            "rudder at {addr}: {} mode, started {}",
            rudder_model::escape_controls(mode),
            ago(st.started, now)
        );
        println!("services:            {}", st.services);
        println!(
            "syncs:               {} full, {} partial, {} failed",
            st.full_syncs, st.partial_syncs, st.failed_syncs
        );
        match &st.last_sync {
            Some(l) => println!(
                "last sync:           {} {}: {} service(s) changed, +{}/-{} elements, {} bytes, compile {:.2} ms, kernel {:.1} ms",
                l.kind,
                ago(l.at, now),
                l.services_changed,
                l.elements_added,
                l.elements_deleted,
                l.bytes,
                l.compile_ms,
                l.apply_ms
            ),
            None => println!("last sync:           none yet"),
        }
        match st.last_failure {
            Some(t) => println!(
                "last failure:        {} ({} in a row; see the daemon's log)",
                ago(t, now),
                st.consecutive_failures
            ),
            None => println!("last failure:        never"),
        }
        println!("pending changes:     {}", st.pending_changes);
        println!(
            "no local endpoints:  {} service port(s) with a Local policy drop traffic here",
            st.no_local_endpoints
        );
        match &holder {
            Some(h) if h.pid > 0 && u32::try_from(h.pid) == Ok(st.pid) => println!(
                "lock:                holds the `{}` tables of this network namespace (pid {})",
                args.table, st.pid
            ),
            Some(h) => println!(
                "lock:                the `{}` tables of this network namespace are held by {h}, not by this daemon (pid {})",
                args.table, st.pid
            ),
            None => println!(
                "lock:                nobody holds the `{}` tables of this network namespace (this daemon: pid {}, tables `{}`)",
                args.table, st.pid, st.table
            ),
        }
        if st.skipped_input.is_empty() {
            println!("skipped input:       none");
        } else {
            println!(
                "skipped input:       {} file(s), each keeping its last good content:",
                st.skipped_input.len()
            );
            for s in &st.skipped_input {
                println!("  {} ({}): {}", s.file, s.reason, s.message);
            }
        }
        if st.quarantined.is_empty() {
            println!("held back:           none");
        } else {
            println!(
                "held back:           {} service(s) whose rules the kernel refused (retried every sync period):",
                st.quarantined.len()
            );
            for q in &st.quarantined {
                println!(
                    "  {}: {}",
                    rudder_model::escape_controls(&q.service),
                    rudder_model::escape_controls(&q.reason)
                );
            }
        }
    }
    Ok(if st.last_sync.is_some() && st.consecutive_failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `rudder cleanup`: delete Rudder's tables, and what its IPVS mode made (virtual servers
/// outside `--ipvs-exclude-cidrs`, its addresses on `kube-ipvs0`).
fn cleanup(args: cli::CleanupArgs) -> anyhow::Result<ExitCode> {
    let name = Name::new(&args.table).map_err(|e| anyhow::anyhow!("--nftables-table: {e}"))?;
    // Never under a running daemon's feet: it would recreate the tables at its next sync.
    let _lock = lock::acquire(&args.table, None).map_err(|e| match e {
        lock::LockError::Held { .. } => {
            anyhow::anyhow!("refusing to delete the tables: {e}; stop it first")
        }
        e => anyhow::Error::new(e),
    })?;
    let backend = NftBackend::with_program(&args.nft_path);
    let tables = [
        TableRef::new(Family::Ip, name.clone()),
        TableRef::new(Family::Ip6, name),
    ];
    let deleted = backend.delete_tables(&tables)?;
    let exclude = args
        .ipvs_exclude_cidrs
        .iter()
        .map(|c| {
            c.parse::<rudder_model::Cidr>()
                .map_err(|e| anyhow::anyhow!("--ipvs-exclude-cidrs {c:?}: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ipvs = ipvs::cleanup(&exclude)?;
    if deleted.is_empty()
        && ipvs.services.is_empty()
        && ipvs.addresses.is_empty()
        && !ipvs.interface
    {
        tracing::info!("nothing to clean up");
    }
    for t in deleted {
        tracing::info!(table = %t, "deleted table");
    }
    for s in &ipvs.services {
        tracing::info!(virtual_server = %s, "deleted IPVS virtual server");
    }
    for a in &ipvs.addresses {
        tracing::info!(address = %a, interface = ipvs::DUMMY, "removed address");
    }
    if ipvs.interface {
        tracing::info!(interface = ipvs::DUMMY, "deleted the dummy interface");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod allocator_tests {
    #[test]
    #[allow(unsafe_code)]
    fn the_purge_delay_option_is_the_one_tuned() {
        use libmimalloc_sys::mi_option_get;
        // SAFETY: reads an integer from mimalloc's option table.
        let before = unsafe { mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(before, 1000, "mimalloc v3 default purge delay (ms)");
        }
        super::tune_allocator();
        // SAFETY: as above.
        assert_eq!(unsafe { mi_option_get(super::MI_OPTION_PURGE_DELAY) }, 0);
    }
}
