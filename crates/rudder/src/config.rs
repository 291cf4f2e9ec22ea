//! `--config FILE`: a kube-proxy `KubeProxyConfiguration` (`kubeproxy.config.k8s.io/v1alpha1`).
//!
//! The fields Rudder honours set the same options as their flags; a flag given explicitly on
//! the command line wins over the file. Fields Rudder knows but does not implement, and
//! unknown fields, are named in warnings; invalid values are errors.

use std::path::Path;

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
    ("conntrack", "conntrack sysctls are not set by Rudder yet"),
    ("enableProfiling", "not implemented"),
    ("featureGates", "not used by Rudder"),
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

fn as_str<'a>(v: &'a Value, field: &str) -> anyhow::Result<&'a str> {
    v.as_str()
        .with_context(|| format!("config field {field} must be a string"))
}

/// Reads `path` and applies it to `args` (flags given on the command line win). Returns the
/// warnings to log.
pub fn apply(path: &Path, matches: &ArgMatches, args: &mut RunArgs) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --config {}", path.display()))?;
    let doc: Value = serde_yaml::from_str(&text)
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
            "detectLocalMode" if set("detect_local_mode") => {
                let m = as_str(value, key)?;
                if !m.is_empty() {
                    args.proxy.detect_local_mode = m.to_owned();
                }
            }
            "detectLocal" => {
                for (k, v) in value
                    .as_object()
                    .context("config field detectLocal must be a mapping")?
                {
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
                for (k, v) in value
                    .as_object()
                    .context("config field nftables must be a mapping")?
                {
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
            "clientConnection" => {
                for (k, v) in value
                    .as_object()
                    .context("config field clientConnection must be a mapping")?
                {
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
            | "metricsBindAddress" | "nodePortAddresses" | "detectLocalMode" => {}
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

    fn file(text: &str) -> (tempfile_path::Guard, std::path::PathBuf) {
        tempfile_path::write(text)
    }

    /// A throwaway file for one test.
    mod tempfile_path {
        pub struct Guard(pub std::path::PathBuf);
        impl Drop for Guard {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        pub fn write(text: &str) -> (Guard, std::path::PathBuf) {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p =
                std::env::temp_dir().join(format!("rudder-config-{}-{n}.yaml", std::process::id()));
            std::fs::write(&p, text).expect("write");
            (Guard(p.clone()), p)
        }
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
        assert!(text.contains("conntrack"), "{text}");
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
