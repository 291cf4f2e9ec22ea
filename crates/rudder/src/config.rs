//! `--config FILE`: a kube-proxy `KubeProxyConfiguration` (`kubeproxy.config.k8s.io/v1alpha1`).
//!
//! The fields Rudder honours set the same options as their flags; a flag given explicitly on
//! the command line wins over the file. The file is read into serde-derived types
//! ([`KubeProxyConfiguration`]); fields Rudder knows but does not implement, and unknown
//! fields, are what `serde_ignored` reports, named in warnings; invalid values are errors that
//! name the field (`serde_path_to_error`), whether or not a flag overrides it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::ArgMatches;
use clap::parser::ValueSource;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::cli::{RunArgs, parse_duration};

const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
const KIND: &str = "KubeProxyConfiguration";

/// Fields of KubeProxyConfiguration that Rudder reads but does not act on (yet), with why.
/// Every other field the types below do not name is reported as unknown.
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
    ("logging", "use -v and --logging-format"),
    ("oomScoreAdj", "set it in the DaemonSet"),
    ("portRange", "userspace mode does not exist any more"),
    ("showHiddenMetricsForVersion", "not used by Rudder"),
    ("winkernel", "Windows is not supported"),
    ("windowsRunAsService", "Windows is not supported"),
];

/// The fields of a `KubeProxyConfiguration` that Rudder honours. Absent fields keep the
/// flags' values; fields not named here are reported (see [`IGNORED`]).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeProxyConfiguration {
    /// `kubeproxy.config.k8s.io/v1alpha1`.
    #[serde(default)]
    pub api_version: String,
    /// `KubeProxyConfiguration`.
    #[serde(default)]
    pub kind: String,
    /// `--proxy-mode`: `nftables` (or empty) or `ipvs`; anything else is a warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The IPVS mode's settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipvs: Option<Ipvs>,
    /// A specific address is the node IP (`--node-ip`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_address: Option<String>,
    /// `--cluster-cidr`, comma-separated.
    #[serde(
        rename = "clusterCIDR",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cluster_cidr: Option<String>,
    /// `--hostname-override`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname_override: Option<String>,
    /// `--healthz-bind-address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthz_bind_address: Option<String>,
    /// `--metrics-bind-address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_bind_address: Option<String>,
    /// `--nodeport-addresses`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port_addresses: Option<Vec<String>>,
    /// `--feature-gates`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_gates: Option<BTreeMap<String, bool>>,
    /// `--detect-local-mode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detect_local_mode: Option<String>,
    /// `--pod-bridge-interface`, `--pod-interface-name-prefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detect_local: Option<DetectLocal>,
    /// The nftables mode's periods and masquerading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nftables: Option<Nftables>,
    /// kube-proxy's conntrack sysctls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrack: Option<Conntrack>,
    /// Only the kubeconfig.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_connection: Option<ClientConnection>,
}

/// `detectLocal`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DetectLocal {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge_interface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_name_prefix: Option<String>,
}

/// `ipvs`: every field of kube-proxy's `KubeProxyIPVSConfiguration`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ipvs {
    /// `--ipvs-sync-period` (used in IPVS mode only, as kube-proxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_period: Option<GoDuration>,
    /// `--ipvs-min-sync-period` (used in IPVS mode only, as kube-proxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_sync_period: Option<GoDuration>,
    /// `--ipvs-scheduler`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<String>,
    /// `--ipvs-exclude-cidrs`.
    #[serde(
        rename = "excludeCIDRs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub exclude_cidrs: Option<Vec<String>>,
    /// `--ipvs-strict-arp`.
    #[serde(rename = "strictARP", default, skip_serializing_if = "Option::is_none")]
    pub strict_arp: Option<bool>,
    /// `--ipvs-tcp-timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_timeout: Option<GoDuration>,
    /// `--ipvs-tcpfin-timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_fin_timeout: Option<GoDuration>,
    /// `--ipvs-udp-timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_timeout: Option<GoDuration>,
}

/// `nftables`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Nftables {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_period: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_sync_period: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masquerade_all: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masquerade_bit: Option<MasqueradeBit>,
}

/// `conntrack`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Conntrack {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_core: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_established_timeout: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_close_wait_timeout: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_be_liberal: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_timeout: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_stream_timeout: Option<GoDuration>,
}

/// `clientConnection`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientConnection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<String>,
}

/// A duration in Go's notation (`1m30s`), as kube-proxy's `metav1.Duration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoDuration(pub Duration);

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(GoDuration)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

/// `nftables.masqueradeBit`: 0–31.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct MasqueradeBit(pub u8);

impl<'de> Deserialize<'de> for MasqueradeBit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bit = u64::deserialize(d)?;
        u8::try_from(bit)
            .ok()
            .filter(|b| *b <= 31)
            .map(MasqueradeBit)
            .ok_or_else(|| serde::de::Error::custom(format!("{bit}: must be 0-31")))
    }
}

fn explicit(m: &ArgMatches, id: &str) -> bool {
    m.value_source(id) == Some(ValueSource::CommandLine)
}

/// `detectLocal.bridgeInterface`: the names of the fields that lead to `path` (`serde_ignored`'s
/// `Display` also shows the `Option`s on the way, as `?`).
fn field_name(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    let join = |parent: &Path<'_>, name: String| match field_name(parent) {
        p if p.is_empty() => name,
        p => format!("{p}.{name}"),
    };
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => join(parent, index.to_string()),
        Path::Map { parent, key } => join(parent, key.clone()),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_name(parent),
    }
}

/// The warning for a field the types do not name.
fn ignored_field(path: &str) -> String {
    match IGNORED.iter().find(|(n, _)| *n == path) {
        Some((n, why)) => format!("config field {n} is ignored: {why}"),
        None if path.contains('.') => format!("unknown field {path}"),
        None => format!("unknown config field {path:?}"),
    }
}

/// Parses a `KubeProxyConfiguration` document: the configuration and the warnings about the
/// fields it ignores (by name).
pub fn parse(text: &str, path: &Path) -> anyhow::Result<(KubeProxyConfiguration, Vec<String>)> {
    let doc: Value = serde_norway::from_str(text)
        .with_context(|| format!("--config {}: invalid YAML", path.display()))?;
    let obj = doc
        .as_object()
        .with_context(|| format!("--config {}: not a mapping", path.display()))?;
    match (
        obj.get("apiVersion").and_then(Value::as_str),
        obj.get("kind").and_then(Value::as_str),
    ) {
        (Some(API_VERSION), Some(KIND)) => {}
        (api, kind) => bail!(
            "--config {}: expected apiVersion {API_VERSION}, kind {KIND}, found {api:?} {kind:?}",
            path.display()
        ),
    }
    let mut warnings = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(&doc, &mut track);
    let config: KubeProxyConfiguration = serde_ignored::deserialize(de, |field| {
        warnings.push(ignored_field(&field_name(&field)));
    })
    .map_err(|e| {
        anyhow::anyhow!(
            "--config {}: config field {}: {e}",
            path.display(),
            track.path()
        )
    })?;
    if let Some(mode) = config
        .mode
        .as_deref()
        .filter(|m| !m.is_empty() && *m != "nftables" && *m != "ipvs")
    {
        warnings.push(format!(
            "mode {mode:?}: Rudder implements the nftables and ipvs modes; it uses nftables"
        ));
    }
    Ok((config, warnings))
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
    let (c, warnings) = parse(text, path)?;
    let set = |id: &str| !explicit(matches, id);
    let p = &mut args.proxy;
    let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    if let Some(cidrs) = c.cluster_cidr.filter(|_| set("cluster_cidr")) {
        p.cluster_cidr = cidrs.split(',').map(|s| s.trim().to_owned()).collect();
    }
    if let Some(h) = nonempty(&c.hostname_override).filter(|_| set("hostname_override")) {
        p.hostname_override = Some(h);
    }
    // kube-proxy uses a specific bindAddress as the node IP.
    if let Some(b) = nonempty(&c.bind_address).filter(|b| b != "0.0.0.0" && b != "::") {
        if set("node_ip") {
            p.node_ip = vec![b];
        }
    }
    if let Some(a) = c
        .healthz_bind_address
        .filter(|_| set("healthz_bind_address"))
    {
        args.healthz_bind_address = a;
    }
    if let Some(a) = c
        .metrics_bind_address
        .filter(|_| set("metrics_bind_address"))
    {
        args.metrics_bind_address = a;
    }
    if let Some(m) = nonempty(&c.mode)
        .filter(|m| m == "nftables" || m == "ipvs")
        .filter(|_| set("proxy_mode"))
    {
        p.proxy_mode = m;
    }
    if let Some(ipvs) = c.ipvs {
        if let Some(s) = nonempty(&ipvs.scheduler).filter(|_| set("ipvs_scheduler")) {
            p.ipvs_scheduler = s;
        }
        if let Some(list) = ipvs.exclude_cidrs.filter(|_| set("ipvs_exclude_cidrs")) {
            p.ipvs_exclude_cidrs = list;
        }
        if let Some(b) = ipvs.strict_arp.filter(|_| set("ipvs_strict_arp")) {
            args.ipvs_strict_arp = b;
        }
        for (v, id, to) in [
            (
                ipvs.sync_period,
                "ipvs_sync_period",
                &mut args.ipvs_sync_period,
            ),
            (
                ipvs.min_sync_period,
                "ipvs_min_sync_period",
                &mut args.ipvs_min_sync_period,
            ),
            (
                ipvs.tcp_timeout,
                "ipvs_tcp_timeout",
                &mut args.ipvs_tcp_timeout,
            ),
            (
                ipvs.tcp_fin_timeout,
                "ipvs_tcpfin_timeout",
                &mut args.ipvs_tcpfin_timeout,
            ),
            (
                ipvs.udp_timeout,
                "ipvs_udp_timeout",
                &mut args.ipvs_udp_timeout,
            ),
        ] {
            if let Some(d) = v.filter(|_| set(id)) {
                *to = d.0;
            }
        }
    }
    if let Some(list) = c.node_port_addresses.filter(|_| set("nodeport_addresses")) {
        p.nodeport_addresses = list;
    }
    if let Some(gates) = c.feature_gates.filter(|_| set("feature_gates")) {
        p.feature_gates = gates
            .into_iter()
            .map(|(name, on)| format!("{name}={on}"))
            .collect();
    }
    if let Some(m) = nonempty(&c.detect_local_mode).filter(|_| set("detect_local_mode")) {
        p.detect_local_mode = m;
    }
    if let Some(d) = c.detect_local {
        if d.bridge_interface.is_some() && set("pod_bridge_interface") {
            p.pod_bridge_interface = nonempty(&d.bridge_interface);
        }
        if d.interface_name_prefix.is_some() && set("pod_interface_name_prefix") {
            p.pod_interface_name_prefix = nonempty(&d.interface_name_prefix);
        }
    }
    if let Some(n) = c.nftables {
        if let Some(d) = n.sync_period.filter(|_| set("sync_period")) {
            args.sync_period = d.0;
        }
        if let Some(d) = n.min_sync_period.filter(|_| set("min_sync_period")) {
            args.min_sync_period = d.0;
        }
        if let Some(all) = n.masquerade_all.filter(|_| set("masquerade_all")) {
            args.proxy.masquerade_all = all;
        }
        if let Some(bit) = n.masquerade_bit.filter(|_| set("masquerade_bit")) {
            args.proxy.masquerade_bit = bit.0;
        }
    }
    if let Some(ct) = c.conntrack {
        let put_count = |v: Option<u32>, id: &str, to: &mut u32| {
            if let Some(v) = v.filter(|_| set(id)) {
                *to = v;
            }
        };
        put_count(
            ct.max_per_core,
            "conntrack_max_per_core",
            &mut args.conntrack_max_per_core,
        );
        put_count(ct.min, "conntrack_min", &mut args.conntrack_min);
        let put_dur = |v: Option<GoDuration>, id: &str, to: &mut Duration| {
            if let Some(v) = v.filter(|_| set(id)) {
                *to = v.0;
            }
        };
        put_dur(
            ct.tcp_established_timeout,
            "conntrack_tcp_established",
            &mut args.conntrack_tcp_established,
        );
        put_dur(
            ct.tcp_close_wait_timeout,
            "conntrack_tcp_close_wait",
            &mut args.conntrack_tcp_close_wait,
        );
        put_dur(ct.udp_timeout, "conntrack_udp", &mut args.conntrack_udp);
        put_dur(
            ct.udp_stream_timeout,
            "conntrack_udp_stream",
            &mut args.conntrack_udp_stream,
        );
        if let Some(b) = ct
            .tcp_be_liberal
            .filter(|_| set("conntrack_tcp_be_liberal"))
        {
            args.conntrack_tcp_be_liberal = b;
        }
    }
    if let Some(k) = c
        .client_connection
        .and_then(|cc| nonempty(&cc.kubeconfig))
        .filter(|_| set("kubeconfig"))
    {
        args.kubeconfig = Some(k.into());
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
    let gates: BTreeMap<String, bool> = p
        .feature_gates
        .iter()
        .filter_map(|g| g.split_once('='))
        .map(|(name, value)| (name.trim().to_owned(), value.trim() == "true"))
        .collect();
    let config = KubeProxyConfiguration {
        api_version: API_VERSION.into(),
        kind: KIND.into(),
        mode: Some(p.proxy_mode.clone()),
        ipvs: Some(Ipvs {
            sync_period: Some(GoDuration(args.ipvs_sync_period)),
            min_sync_period: Some(GoDuration(args.ipvs_min_sync_period)),
            scheduler: Some(p.ipvs_scheduler.clone()),
            exclude_cidrs: Some(p.ipvs_exclude_cidrs.clone()),
            strict_arp: Some(args.ipvs_strict_arp),
            tcp_timeout: Some(GoDuration(args.ipvs_tcp_timeout)),
            tcp_fin_timeout: Some(GoDuration(args.ipvs_tcpfin_timeout)),
            udp_timeout: Some(GoDuration(args.ipvs_udp_timeout)),
        }),
        // kube-proxy's bindAddress holds one node IP; a dual-stack --node-ip has no equivalent.
        bind_address: Some(match p.node_ip.as_slice() {
            [one] => one.clone(),
            _ => "0.0.0.0".into(),
        }),
        cluster_cidr: Some(p.cluster_cidr.join(",")),
        hostname_override: Some(p.hostname_override.clone().unwrap_or_default()),
        healthz_bind_address: Some(args.healthz_bind_address.clone()),
        metrics_bind_address: Some(args.metrics_bind_address.clone()),
        node_port_addresses: Some(p.nodeport_addresses.clone()),
        feature_gates: Some(gates).filter(|g| !g.is_empty()),
        detect_local_mode: Some(p.detect_local_mode.clone()),
        detect_local: Some(DetectLocal {
            bridge_interface: Some(p.pod_bridge_interface.clone().unwrap_or_default()),
            interface_name_prefix: Some(p.pod_interface_name_prefix.clone().unwrap_or_default()),
        }),
        nftables: Some(Nftables {
            sync_period: Some(GoDuration(args.sync_period)),
            min_sync_period: Some(GoDuration(args.min_sync_period)),
            masquerade_all: Some(p.masquerade_all),
            masquerade_bit: Some(MasqueradeBit(p.masquerade_bit)),
        }),
        conntrack: Some(Conntrack {
            max_per_core: Some(args.conntrack_max_per_core),
            min: Some(args.conntrack_min),
            tcp_established_timeout: Some(GoDuration(args.conntrack_tcp_established)),
            tcp_close_wait_timeout: Some(GoDuration(args.conntrack_tcp_close_wait)),
            tcp_be_liberal: Some(args.conntrack_tcp_be_liberal),
            udp_timeout: Some(GoDuration(args.conntrack_udp)),
            udp_stream_timeout: Some(GoDuration(args.conntrack_udp_stream)),
        }),
        client_connection: Some(ClientConnection {
            kubeconfig: Some(
                args.kubeconfig
                    .as_ref()
                    .map(|k| k.display().to_string())
                    .unwrap_or_default(),
            ),
        }),
    };
    serde_norway::to_string(&config).unwrap_or_default()
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
ipvs: {syncPeriod: 1m, minSyncPeriod: 2s, strictARP: true, tcpTimeout: 15m, tcpFinTimeout: 30s, udpTimeout: 1m}
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
    fn node_port_address_keywords_from_the_file_reach_the_settings() {
        use crate::proxier::Settings;
        use rudder_model::IpFamily::{V4, V6};
        let settings = |list: &str, argv: &[&str]| {
            let (_g, path) = file(&format!(
                "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nnodePortAddresses: {list}\n"
            ));
            let mut full = vec![
                "rudder",
                "run",
                "--config",
                "x",
                "--hostname-override",
                "n1",
            ];
            full.extend_from_slice(argv);
            let (m, mut args) = run_args(&full);
            let warnings = apply(&path, &m, &mut args).expect("valid config");
            assert!(warnings.is_empty(), "{warnings:?}");
            let nodeport = args.proxy.nodeport_addresses.clone();
            (nodeport, Settings::from_args(&args.proxy))
        };
        // (the entries as read, primary, whether every address is listed, localhost families)
        let read = |list: &str| {
            let (entries, s) = settings(list, &[]);
            let s = s.unwrap_or_else(|e| panic!("{list}: {e:#}"));
            (
                entries,
                s.nodeport.primary,
                s.nodeport.cidrs.iter().any(|c| c.is_all()),
                s.config.localhost_node_ports,
            )
        };
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            read("[primary, localhost]"),
            (
                strings(&["primary", "localhost"]),
                true,
                false,
                vec![V4, V6]
            )
        );
        assert_eq!(
            read("[localhost]"),
            (strings(&["localhost"]), false, false, vec![V4, V6])
        );
        // `all` alone is every address but serves no loopback one (kube-proxy 1.37).
        assert_eq!(read("[all]"), (strings(&["all"]), false, true, vec![]));
        assert_eq!(
            read("[all, localhost]"),
            (strings(&["all", "localhost"]), false, true, vec![V4, V6])
        );
        assert_eq!(
            read("[primary]"),
            (strings(&["primary"]), true, false, vec![])
        );
        // Keywords are checked as on the command line.
        for bad in ["[Localhost]", "[primary, primary]", "[loopback]"] {
            let (_, s) = settings(bad, &[]);
            assert!(s.is_err(), "{bad} must be refused");
        }
        // An explicit flag wins over the file.
        let (entries, s) = settings("[primary, localhost]", &["--nodeport-addresses", "all"]);
        assert_eq!(entries, strings(&["all"]));
        assert!(s.unwrap().config.localhost_node_ports.is_empty());
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
        assert!(written.contains("strictARP: true"), "{written}");
        assert!(written.contains("tcpFinTimeout: 30s"), "{written}");
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
        assert_eq!(back.ipvs_sync_period, Duration::from_secs(60));
        assert_eq!(back.ipvs_min_sync_period, Duration::from_secs(2));
        assert!(back.ipvs_strict_arp);
        assert_eq!(back.ipvs_tcp_timeout, Duration::from_secs(900));
        assert_eq!(back.ipvs_tcpfin_timeout, Duration::from_secs(30));
        assert_eq!(back.ipvs_udp_timeout, Duration::from_secs(60));
        // And writing it again gives the same text.
        assert_eq!(effective(&back), written);
    }

    #[test]
    fn unknown_and_ignored_fields_are_named() {
        let (_g, path) = file(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: ipvs
ipvs: {scheduler: rr, tcpTimeout: 5m, typo: 1}
oomScoreAdj: -999
clientConnection: {burst: 10, contentType: application/json, typo: 1}
detectLocal: {bridgeInterface: cbr0, other: x}
nftables: {syncPeriod: 1m, extra: true}
conntrack: {min: 1, tcpTimeout: 1s}
whatIsThis: {nested: [1, 2]}
",
        );
        let (m, mut args) = run_args(&["rudder", "run"]);
        let warnings = apply(&path, &m, &mut args).expect("valid config");
        // Sorted by field name (the order the mapping is read in).
        assert_eq!(
            warnings,
            [
                "config field clientConnection.burst is ignored: not implemented",
                "config field clientConnection.contentType is ignored: Rudder always uses JSON",
                "unknown field clientConnection.typo",
                "unknown field conntrack.tcpTimeout",
                "unknown field detectLocal.other",
                "unknown field ipvs.typo",
                "unknown field nftables.extra",
                "config field oomScoreAdj is ignored: set it in the DaemonSet",
                "unknown config field \"whatIsThis\"",
            ]
        );
        assert_eq!(args.sync_period, Duration::from_secs(60));
        assert_eq!(args.conntrack_min, 1);
        // `mode: ipvs` and the ipvs section are read like their flags.
        assert_eq!(args.proxy.proxy_mode, "ipvs");
        assert_eq!(args.proxy.ipvs_scheduler, "rr");
        assert_eq!(args.ipvs_tcp_timeout, Duration::from_secs(300));
        assert_eq!(args.proxy.pod_bridge_interface.as_deref(), Some("cbr0"));
    }

    #[test]
    fn the_ipvs_section_applies_and_explicit_flags_win() {
        let (_g, path) = file(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: ipvs
nftables: {syncPeriod: 45s, minSyncPeriod: 3s}
ipvs:
  syncPeriod: 1m
  minSyncPeriod: 2s
  scheduler: lc
  excludeCIDRs: [10.0.0.0/8]
  strictARP: true
  tcpTimeout: 15m
  tcpFinTimeout: 30s
  udpTimeout: 1m
",
        );
        let (m, mut args) = run_args(&[
            "rudder",
            "run",
            "--ipvs-udp-timeout",
            "10s",
            "--ipvs-strict-arp=false",
            "--ipvs-min-sync-period",
            "500ms",
        ]);
        let warnings = apply(&path, &m, &mut args).expect("valid config");
        assert!(
            warnings.is_empty(),
            "every ipvs field is honoured: {warnings:?}"
        );
        assert_eq!(args.proxy.proxy_mode, "ipvs");
        assert_eq!(args.proxy.ipvs_scheduler, "lc");
        assert_eq!(args.proxy.ipvs_exclude_cidrs, vec!["10.0.0.0/8"]);
        assert_eq!(args.ipvs_sync_period, Duration::from_secs(60));
        assert_eq!(
            args.ipvs_min_sync_period,
            Duration::from_millis(500),
            "the explicit flag wins"
        );
        assert!(!args.ipvs_strict_arp, "the explicit flag wins");
        assert_eq!(args.ipvs_tcp_timeout, Duration::from_secs(900));
        assert_eq!(args.ipvs_tcpfin_timeout, Duration::from_secs(30));
        assert_eq!(
            args.ipvs_udp_timeout,
            Duration::from_secs(10),
            "the explicit flag wins"
        );
        // The nftables section's periods stay theirs.
        assert_eq!(args.sync_period, Duration::from_secs(45));
        assert_eq!(args.min_sync_period, Duration::from_secs(3));

        // Without flags, the defaults are kube-proxy's: 30s, 0s, no strict ARP, timeouts 0.
        let (m, mut args) = run_args(&["rudder", "run"]);
        assert_eq!(args.ipvs_sync_period, Duration::from_secs(30));
        assert_eq!(args.ipvs_min_sync_period, Duration::ZERO);
        assert!(!args.ipvs_strict_arp);
        assert_eq!(args.ipvs_tcp_timeout, Duration::ZERO);
        let (_g, path) = file(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nipvs: {strictARP: true}\n",
        );
        apply(&path, &m, &mut args).expect("valid config");
        assert!(args.ipvs_strict_arp, "from the file when no flag is given");
        assert_eq!(
            args.ipvs_sync_period,
            Duration::from_secs(30),
            "absent: kept"
        );
    }

    #[test]
    fn errors_name_the_field() {
        for (bad, expected) in [
            (
                "clusterCIDR: 7",
                "config field clusterCIDR: invalid type: integer `7`, expected a string",
            ),
            (
                "nftables: {masqueradeBit: 40}",
                "config field nftables.masqueradeBit: 40: must be 0-31",
            ),
            (
                "nftables: {syncPeriod: forever}",
                "config field nftables.syncPeriod: invalid duration",
            ),
            (
                "conntrack: {min: -1}",
                "config field conntrack.min: invalid value: integer `-1`, expected u32",
            ),
            (
                "featureGates: {A: maybe}",
                "config field featureGates.A: invalid type: string \"maybe\", expected a boolean",
            ),
            (
                "nodePortAddresses: primary",
                "config field nodePortAddresses: invalid type: string \"primary\", expected a sequence",
            ),
            (
                "nftables: 3",
                "config field nftables: invalid type: integer `3`",
            ),
            (
                "ipvs: {tcpTimeout: 5}",
                "config field ipvs.tcpTimeout: invalid type: integer `5`, expected a string",
            ),
            (
                "ipvs: {strictARP: yes please}",
                "config field ipvs.strictARP: invalid type: string \"yes please\", expected a boolean",
            ),
        ] {
            let text = format!(
                "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n{bad}\n"
            );
            let (_g, path) = file(&text);
            let (m, mut args) = run_args(&["rudder", "run"]);
            let e = format!("{:#}", apply(&path, &m, &mut args).expect_err(bad));
            assert!(e.contains(expected), "{bad}: {e}");
            assert!(e.starts_with("--config "), "{e}");
        }
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
