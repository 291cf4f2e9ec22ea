//! `--config FILE`: a kube-proxy `KubeProxyConfiguration` (`kubeproxy.config.k8s.io/v1alpha1`).
//!
//! The fields Rudder honours set the same options as their flags; a flag given explicitly on
//! the command line wins over the file. Fields Rudder knows but does not implement, and
//! unknown fields, are named in warnings; invalid values are errors.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::ArgMatches;
use clap::parser::ValueSource;
use serde_json::Value;

use crate::cli::{RunArgs, parse_duration};

/// Fields of KubeProxyConfiguration that Rudder reads but does not act on (yet), with why.
const IGNORED: &[(&str, &str)] = &[
    ("bindAddressHardFail", "Rudder binds no proxy sockets"),
    (
        "clientConnection.acceptContentTypes",
        "Rudder always uses JSON",
    ),
    ("clientConnection.contentType", "Rudder always uses JSON"),
    ("clientConnection.qps", "not implemented"),
    ("clientConnection.burst", "not implemented"),
    (
        "configSyncPeriod",
        "watches never need a periodic resync; Rudder repairs rules with --full-sync-period",
    ),
    ("enableProfiling", "not implemented"),
    ("iptables", "iptables mode is not implemented"),
    ("ipvs", "IPVS mode is not implemented"),
    ("logging", "use -v and --logging-format"),
    ("oomScoreAdj", "set it in the DaemonSet"),
    ("portRange", "userspace mode does not exist any more"),
    ("showHiddenMetricsForVersion", "not used by Rudder"),
    ("winkernel", "Windows is not supported"),
    ("windowsRunAsService", "Windows is not supported"),
    ("healthzBindAddress", ""),
];

fn explicit(m: &ArgMatches, id: &str) -> bool {
    m.value_source(id) == Some(ValueSource::CommandLine)
}

fn mapping<'a>(v: &'a Value, field: &str) -> anyhow::Result<&'a serde_json::Map<String, Value>> {
    v.as_object()
        .with_context(|| format!("config field {field} must be a mapping"))
}

fn as_str<'a>(v: &'a Value, field: &str) -> anyhow::Result<&'a str> {
    v.as_str()
        .with_context(|| format!("config field {field} must be a string"))
}

/// Reads `path` and applies it to `args` (flags given on the command line win). Returns the
/// warnings to log.
pub fn apply(path: &Path, matches: &ArgMatches, args: &mut RunArgs) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --config {}", path.display()))?;
    apply_text(&text, path, matches, args)
}

/// [`apply`] for the text of the file at `path` (named in messages).
pub fn apply_text(
    text: &str,
    path: &Path,
    matches: &ArgMatches,
    args: &mut RunArgs,
) -> anyhow::Result<Vec<String>> {
    let doc: Value = serde_norway::from_str(text)
        .with_context(|| format!("--config {}: invalid YAML", path.display()))?;
    let obj = doc
        .as_object()
        .with_context(|| format!("--config {}: not a mapping", path.display()))?;
    match (
        obj.get("apiVersion").and_then(Value::as_str),
        obj.get("kind").and_then(Value::as_str),
    ) {
        (Some("kubeproxy.config.k8s.io/v1alpha1"), Some("KubeProxyConfiguration")) => {}
        (api, kind) => bail!(
            "--config {}: expected apiVersion kubeproxy.config.k8s.io/v1alpha1, kind KubeProxyConfiguration, found {api:?} {kind:?}",
            path.display()
        ),
    }
    let mut warnings = Vec::new();
    let set = |id: &str| !explicit(matches, id);
    for (key, value) in obj {
        match key.as_str() {
            "apiVersion" | "kind" => {}
            "mode" => {
                let mode = as_str(value, "mode")?;
                if !mode.is_empty() && mode != "nftables" {
                    warnings.push(format!(
                        "mode {mode:?}: Rudder implements the nftables mode, which it uses"
                    ));
                }
            }
            "clusterCIDR" if set("cluster_cidr") => {
                args.proxy.cluster_cidr = as_str(value, key)?
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .collect();
            }
            "hostnameOverride" if set("hostname_override") => {
                let h = as_str(value, key)?;
                if !h.is_empty() {
                    args.proxy.hostname_override = Some(h.to_owned());
                }
            }
            "bindAddress" if set("node_ip") => {
                // kube-proxy uses a specific bindAddress as the node IP.
                let b = as_str(value, key)?;
                if !b.is_empty() && b != "0.0.0.0" && b != "::" {
                    args.proxy.node_ip = vec![b.to_owned()];
                }
            }
            "healthzBindAddress" if set("healthz_bind_address") => {
                args.healthz_bind_address = as_str(value, key)?.to_owned();
            }
            "metricsBindAddress" if set("metrics_bind_address") => {
                args.metrics_bind_address = as_str(value, key)?.to_owned();
            }
            "nodePortAddresses" if set("nodeport_addresses") => {
                let list = value
                    .as_array()
                    .context("config field nodePortAddresses must be a list")?;
                args.proxy.nodeport_addresses = list
                    .iter()
                    .map(|v| as_str(v, "nodePortAddresses").map(str::to_owned))
                    .collect::<anyhow::Result<_>>()?;
            }
            "featureGates" if set("feature_gates") => {
                let gates = mapping(value, key)?;
                args.proxy.feature_gates = gates
                    .iter()
                    .map(|(name, v)| {
                        v.as_bool().map(|b| format!("{name}={b}")).with_context(|| {
                            format!("config field featureGates.{name} must be true or false")
                        })
                    })
                    .collect::<anyhow::Result<_>>()?;
            }
            "detectLocalMode" if set("detect_local_mode") => {
                let m = as_str(value, key)?;
                if !m.is_empty() {
                    args.proxy.detect_local_mode = m.to_owned();
                }
            }
            "detectLocal" => {
                for (k, v) in mapping(value, "detectLocal")? {
                    match k.as_str() {
                        "bridgeInterface" if set("pod_bridge_interface") => {
                            args.proxy.pod_bridge_interface =
                                Some(as_str(v, k)?.to_owned()).filter(|s| !s.is_empty());
                        }
                        "interfaceNamePrefix" if set("pod_interface_name_prefix") => {
                            args.proxy.pod_interface_name_prefix =
                                Some(as_str(v, k)?.to_owned()).filter(|s| !s.is_empty());
                        }
                        "bridgeInterface" | "interfaceNamePrefix" => {}
                        other => warnings.push(format!("unknown field detectLocal.{other}")),
                    }
                }
            }
            "nftables" => {
                for (k, v) in mapping(value, "nftables")? {
                    match k.as_str() {
                        "syncPeriod" if set("sync_period") => {
                            args.sync_period = parse_duration(as_str(v, k)?)
                                .map_err(|e| anyhow::anyhow!("nftables.syncPeriod: {e}"))?;
                        }
                        "minSyncPeriod" if set("min_sync_period") => {
                            args.min_sync_period = parse_duration(as_str(v, k)?)
                                .map_err(|e| anyhow::anyhow!("nftables.minSyncPeriod: {e}"))?;
                        }
                        "masqueradeAll" if set("masquerade_all") => {
                            args.proxy.masquerade_all = v
                                .as_bool()
                                .context("nftables.masqueradeAll must be true or false")?;
                        }
                        "masqueradeBit" if set("masquerade_bit") => {
                            let bit = v
                                .as_u64()
                                .filter(|b| *b <= 31)
                                .context("nftables.masqueradeBit must be 0-31")?;
                            args.proxy.masquerade_bit = bit as u8;
                        }
                        "syncPeriod" | "minSyncPeriod" | "masqueradeAll" | "masqueradeBit" => {}
                        other => warnings.push(format!("unknown field nftables.{other}")),
                    }
                }
            }
            "conntrack" => {
                for (k, v) in mapping(value, "conntrack")? {
                    let dur = |v: &Value| -> anyhow::Result<Duration> {
                        parse_duration(as_str(v, k)?)
                            .map_err(|e| anyhow::anyhow!("conntrack.{k}: {e}"))
                    };
                    let count = |v: &Value| -> anyhow::Result<u32> {
                        v.as_u64()
                            .and_then(|n| u32::try_from(n).ok())
                            .with_context(|| {
                                format!("conntrack.{k} must be a non-negative integer")
                            })
                    };
                    match k.as_str() {
                        "maxPerCore" if set("conntrack_max_per_core") => {
                            args.conntrack_max_per_core = count(v)?;
                        }
                        "min" if set("conntrack_min") => args.conntrack_min = count(v)?,
                        "tcpEstablishedTimeout" if set("conntrack_tcp_established") => {
                            args.conntrack_tcp_established = dur(v)?;
                        }
                        "tcpCloseWaitTimeout" if set("conntrack_tcp_close_wait") => {
                            args.conntrack_tcp_close_wait = dur(v)?;
                        }
                        "tcpBeLiberal" if set("conntrack_tcp_be_liberal") => {
                            args.conntrack_tcp_be_liberal = v
                                .as_bool()
                                .context("conntrack.tcpBeLiberal must be true or false")?;
                        }
                        "udpTimeout" if set("conntrack_udp") => args.conntrack_udp = dur(v)?,
                        "udpStreamTimeout" if set("conntrack_udp_stream") => {
                            args.conntrack_udp_stream = dur(v)?;
                        }
                        "maxPerCore"
                        | "min"
                        | "tcpEstablishedTimeout"
                        | "tcpCloseWaitTimeout"
                        | "tcpBeLiberal"
                        | "udpTimeout"
                        | "udpStreamTimeout" => {}
                        other => warnings.push(format!("unknown field conntrack.{other}")),
                    }
                }
            }
            "clientConnection" => {
                for (k, v) in mapping(value, "clientConnection")? {
                    match k.as_str() {
                        "kubeconfig" if set("kubeconfig") => {
                            let p = as_str(v, k)?;
                            if !p.is_empty() {
                                args.kubeconfig = Some(p.into());
                            }
                        }
                        "kubeconfig" => {}
                        other => match IGNORED
                            .iter()
                            .find(|(n, _)| *n == format!("clientConnection.{other}"))
                        {
                            Some((n, why)) => {
                                warnings.push(format!("config field {n} is ignored: {why}"))
                            }
                            None => {
                                warnings.push(format!("unknown field clientConnection.{other}"))
                            }
                        },
                    }
                }
            }
            "clusterCIDR" | "hostnameOverride" | "bindAddress" | "healthzBindAddress"
            | "metricsBindAddress" | "nodePortAddresses" | "detectLocalMode" | "featureGates" => {}
            other => match IGNORED.iter().find(|(n, _)| *n == other) {
                Some((n, why)) if !why.is_empty() => {
                    warnings.push(format!("config field {n} is ignored: {why}"))
                }
                Some(_) => {}
                None => warnings.push(format!("unknown config field {other:?}")),
            },
        }
    }
    Ok(warnings)
}

/// Formats a duration the way Go's `time.Duration.String` does (`1h0m0s`, `1m30s`, `1.5s`,
/// `200ms`), so that kube-proxy reads Rudder's output back.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000_000_000 {
        return if nanos % 1_000_000 == 0 {
            format!("{}ms", nanos / 1_000_000)
        } else if nanos % 1_000 == 0 {
            format!("{}us", nanos / 1_000)
        } else {
            format!("{nanos}ns")
        };
    }
    let secs = d.as_secs();
    let frac = d.subsec_nanos();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let s = if frac == 0 {
        s.to_string()
    } else {
        let f = format!("{frac:09}");
        format!("{s}.{}", f.trim_end_matches('0'))
    };
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// The effective configuration (flags and `--config` merged) as a `KubeProxyConfiguration`
/// YAML document, for `--write-config-to`. Only the fields Rudder honours are written; reading
/// the output back with `--config` gives the same settings.
pub fn effective(args: &RunArgs) -> String {
    let p = &args.proxy;
    let mut doc = serde_json::Map::new();
    let mut put = |k: &str, v: Value| {
        doc.insert(k.to_owned(), v);
    };
    put("apiVersion", "kubeproxy.config.k8s.io/v1alpha1".into());
    put("kind", "KubeProxyConfiguration".into());
    put("mode", "nftables".into());
    // kube-proxy's bindAddress holds one node IP; a dual-stack --node-ip has no equivalent.
    put(
        "bindAddress",
        match p.node_ip.as_slice() {
            [one] => one.clone().into(),
            _ => "0.0.0.0".into(),
        },
    );
    put("clusterCIDR", p.cluster_cidr.join(",").into());
    put(
        "hostnameOverride",
        p.hostname_override.clone().unwrap_or_default().into(),
    );
    put(
        "healthzBindAddress",
        args.healthz_bind_address.clone().into(),
    );
    put(
        "metricsBindAddress",
        args.metrics_bind_address.clone().into(),
    );
    put(
        "nodePortAddresses",
        Value::Array(
            p.nodeport_addresses
                .iter()
                .cloned()
                .map(Value::from)
                .collect(),
        ),
    );
    let mut gates = serde_json::Map::new();
    for g in &p.feature_gates {
        if let Some((name, value)) = g.split_once('=') {
            gates.insert(name.trim().to_owned(), Value::Bool(value.trim() == "true"));
        }
    }
    if !gates.is_empty() {
        put("featureGates", Value::Object(gates));
    }
    put("detectLocalMode", p.detect_local_mode.clone().into());
    put(
        "detectLocal",
        serde_json::json!({
            "bridgeInterface": p.pod_bridge_interface.clone().unwrap_or_default(),
            "interfaceNamePrefix": p.pod_interface_name_prefix.clone().unwrap_or_default(),
        }),
    );
    put(
        "nftables",
        serde_json::json!({
            "syncPeriod": format_duration(args.sync_period),
            "minSyncPeriod": format_duration(args.min_sync_period),
            "masqueradeAll": p.masquerade_all,
            "masqueradeBit": p.masquerade_bit,
        }),
    );
    put(
        "conntrack",
        serde_json::json!({
            "maxPerCore": args.conntrack_max_per_core,
            "min": args.conntrack_min,
            "tcpEstablishedTimeout": format_duration(args.conntrack_tcp_established),
            "tcpCloseWaitTimeout": format_duration(args.conntrack_tcp_close_wait),
            "tcpBeLiberal": args.conntrack_tcp_be_liberal,
            "udpTimeout": format_duration(args.conntrack_udp),
            "udpStreamTimeout": format_duration(args.conntrack_udp_stream),
        }),
    );
    put(
        "clientConnection",
        serde_json::json!({
            "kubeconfig": args.kubeconfig.as_ref().map(|k| k.display().to_string()).unwrap_or_default(),
        }),
    );
    serde_norway::to_string(&Value::Object(doc)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::{CommandFactory, FromArgMatches};

    use super::*;
    use crate::cli::{Cli, Command};

    fn run_args(argv: &[&str]) -> (ArgMatches, RunArgs) {
        let m = Cli::command()
            .try_get_matches_from(argv)
            .expect("argv parses");
        let Command::Run(args) = Cli::from_arg_matches(&m).expect("args").command else {
            panic!("not run")
        };
        (m.subcommand_matches("run").cloned().expect("run"), args)
    }

    /// A throwaway file for one test, removed when the first value is dropped.
    fn file(text: &str) -> (tempfile::NamedTempFile, std::path::PathBuf) {
        let f = tempfile::Builder::new()
            .prefix("rudder-config-")
            .suffix(".yaml")
            .tempfile()
            .expect("temp file");
        std::fs::write(f.path(), text).expect("write");
        let path = f.path().to_path_buf();
        (f, path)
    }

    const CONFIG: &str = "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clusterCIDR: 10.244.0.0/16,fd00:10:244::/56
metricsBindAddress: 0.0.0.0:10249
nodePortAddresses: [primary]
detectLocalMode: BridgeInterface
detectLocal: {bridgeInterface: cbr0}
nftables: {syncPeriod: 45s, minSyncPeriod: 2s, masqueradeAll: true, masqueradeBit: 15}
clientConnection: {kubeconfig: /etc/kubeconfig, qps: 50}
conntrack: {maxPerCore: 0}
featureGates: {AllowServiceExternalIPs: false}
someNewField: 1
";

    #[test]
    fn file_fields_apply_and_explicit_flags_win() {
        let (_g, path) = file(CONFIG);
        let (m, mut args) = run_args(&[
            "rudder",
            "run",
            "--config",
            "x",
            "--iptables-min-sync-period",
            "5s",
        ]);
        let warnings = apply(&path, &m, &mut args).expect("valid config");
        assert_eq!(
            args.proxy.cluster_cidr,
            vec!["10.244.0.0/16", "fd00:10:244::/56"]
        );
        assert_eq!(args.metrics_bind_address, "0.0.0.0:10249");
        assert_eq!(args.proxy.detect_local_mode, "BridgeInterface");
        assert_eq!(args.proxy.pod_bridge_interface.as_deref(), Some("cbr0"));
        assert_eq!(args.sync_period, Duration::from_secs(45));
        assert_eq!(
            args.min_sync_period,
            Duration::from_secs(5),
            "the explicit flag wins"
        );
        assert!(args.proxy.masquerade_all);
        assert_eq!(args.proxy.masquerade_bit, 15);
        assert_eq!(
            args.kubeconfig.as_deref(),
            Some(std::path::Path::new("/etc/kubeconfig"))
        );
        let text = warnings.join("\n");
        assert!(text.contains("someNewField"), "{text}");
        assert!(text.contains("clientConnection.qps"), "{text}");
        assert!(!text.contains("conntrack"), "conntrack is honoured: {text}");
        assert_eq!(args.conntrack_max_per_core, 0);
        assert_eq!(args.conntrack_min, 131072, "default kept");
        assert_eq!(
            args.proxy.feature_gates,
            vec!["AllowServiceExternalIPs=false".to_string()]
        );
        assert!(
            !text.contains("featureGates"),
            "featureGates are honoured: {text}"
        );
    }

    #[test]
    fn durations_format_like_go_and_parse_back() {
        for (d, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(200), "200ms"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_secs(30), "30s"),
        ] {
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text), Ok(d), "{text}");
        }
    }

    #[test]
    fn written_config_reads_back_to_the_same_settings() {
        let (_g, path) = file(CONFIG);
        let (m, mut args) = run_args(&[
            "rudder",
            "run",
            "--config",
            "x",
            "--iptables-min-sync-period",
            "5s",
            "--hostname-override",
            "node-a",
            "--node-ip",
            "192.0.2.7",
        ]);
        apply(&path, &m, &mut args).expect("valid config");
        let written = effective(&args);
        assert!(written.contains("minSyncPeriod: 5s"), "{written}");
        assert!(written.contains("masqueradeBit: 15"), "{written}");
        // Read it back into default arguments: every honoured setting comes back.
        let (_g2, path2) = file(&written);
        let (m2, mut back) = run_args(&["rudder", "run"]);
        let warnings = apply(&path2, &m2, &mut back).expect("written config is valid");
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(back.proxy.cluster_cidr, args.proxy.cluster_cidr);
        assert_eq!(back.proxy.hostname_override.as_deref(), Some("node-a"));
        assert_eq!(back.proxy.node_ip, vec!["192.0.2.7"]);
        assert_eq!(back.metrics_bind_address, args.metrics_bind_address);
        assert_eq!(back.healthz_bind_address, args.healthz_bind_address);
        assert_eq!(back.proxy.nodeport_addresses, args.proxy.nodeport_addresses);
        assert_eq!(back.proxy.detect_local_mode, "BridgeInterface");
        assert_eq!(back.proxy.pod_bridge_interface.as_deref(), Some("cbr0"));
        assert_eq!(back.proxy.pod_interface_name_prefix, None);
        assert_eq!(back.sync_period, Duration::from_secs(45));
        assert_eq!(back.min_sync_period, Duration::from_secs(5));
        assert!(back.proxy.masquerade_all);
        assert_eq!(back.proxy.masquerade_bit, 15);
        assert_eq!(back.kubeconfig, args.kubeconfig);
        assert_eq!(back.conntrack_max_per_core, 0);
        assert_eq!(back.conntrack_tcp_established, Duration::from_secs(86400));
        assert_eq!(back.conntrack_udp, Duration::ZERO);
        // And writing it again gives the same text.
        assert_eq!(effective(&back), written);
    }

    #[test]
    fn invalid_files_are_errors() {
        for bad in [
            "apiVersion: v1\nkind: ConfigMap\n",
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nnftables: {masqueradeBit: 40}\n",
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nnftables: {syncPeriod: forever}\n",
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nclusterCIDR: 7\n",
            "{ not yaml",
        ] {
            let (_g, path) = file(bad);
            let (m, mut args) = run_args(&["rudder", "run"]);
            assert!(apply(&path, &m, &mut args).is_err(), "accepted: {bad}");
        }
    }
}
