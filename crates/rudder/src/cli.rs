//! Command-line interface. Flag names follow kube-proxy's where kube-proxy has the option.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Rudder: a kube-proxy replacement that programs nftables.
#[derive(Debug, Parser)]
#[command(name = "rudder", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: boxing the large variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the complete ruleset for the objects in manifest files, as `nft -f` input.
    Compile(CompileArgs),
    /// Program this network namespace's kernel and keep it in sync with manifest files.
    Run(RunArgs),
    /// Remove everything Rudder created (its `ip` and `ip6` tables), and nothing else.
    Cleanup(CleanupArgs),
    /// Explain what this node does with one packet, from manifest files: which Service and port
    /// match, which policy applies, the candidate endpoints, masquerading, or why it is dropped.
    Explain(ExplainArgs),
    /// Ask the running daemon how it is doing: services programmed, syncs, failures. Exits 1
    /// when the daemon cannot be reached, has not synced yet, or its last sync failed.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The daemon's metrics address (its --metrics-bind-address).
    #[arg(
        long = "metrics-bind-address",
        value_name = "IP:PORT",
        default_value = "127.0.0.1:10249"
    )]
    pub address: String,

    /// Print the raw JSON of `/status`.
    #[arg(long)]
    pub json: bool,

    /// Name of Rudder's nftables tables: names the lock whose holder is reported.
    #[arg(long = "nftables-table", value_name = "NAME", default_value = rudder_compiler::DEFAULT_TABLE)]
    pub table: String,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub proxy: ProxyArgs,

    /// Destination: `IP:PORT`, `[IPv6]:PORT`, optionally followed by `/tcp`, `/udp` or `/sctp`
    /// (default tcp).
    #[arg(long = "to", value_name = "IP:PORT[/PROTO]")]
    pub to: String,

    /// Source address of the packet.
    #[arg(long = "from", value_name = "IP")]
    pub from: Option<String>,

    /// Where the packet comes from: `pod` (a pod on this node), `node` (this node itself) or
    /// `external`. Guessed from --from when absent.
    #[arg(long = "via", value_name = "pod|node|external")]
    pub via: Option<String>,

    /// Ask the running daemon instead of reading manifests: it answers from its current
    /// state over its metrics server.
    #[arg(long, conflicts_with = "manifests")]
    pub live: bool,

    /// The daemon's metrics address, for --live.
    #[arg(
        long = "metrics-bind-address",
        value_name = "IP:PORT",
        default_value = "127.0.0.1:10249"
    )]
    pub metrics_address: String,
}

#[derive(Debug, Clone, Args)]
pub struct ProxyArgs {
    /// YAML or JSON files, or directories of them, holding Services, EndpointSlices and Nodes.
    /// `rudder run` without it follows a Kubernetes API server instead.
    #[arg(long = "manifests", value_name = "PATH")]
    pub manifests: Vec<PathBuf>,

    /// The name of this node: endpoints with this nodeName are local, and its Node object
    /// gives the node IPs. Defaults to the host name, lower-cased.
    #[arg(long = "hostname-override", value_name = "NAME")]
    pub hostname_override: Option<String>,

    /// The node's IPs (at most one per family, comma-separated). Overrides the addresses in
    /// the Node object.
    #[arg(long = "node-ip", value_name = "IP[,IP6]", value_delimiter = ',')]
    pub node_ip: Vec<String>,

    /// Pod CIDRs of the cluster (comma-separated, one per family). Traffic to a ClusterIP
    /// from outside these ranges is masqueraded.
    #[arg(
        long = "cluster-cidr",
        value_name = "CIDR[,CIDR]",
        value_delimiter = ','
    )]
    pub cluster_cidr: Vec<String>,

    /// How traffic from local pods is recognised: `ClusterCIDR` (source in --cluster-cidr),
    /// `NodeCIDR` (source in the Node's podCIDRs), `BridgeInterface` (arrived on
    /// --pod-bridge-interface) or `InterfaceNamePrefix` (arrived on an interface whose name
    /// starts with --pod-interface-name-prefix).
    #[arg(
        long = "detect-local-mode",
        value_name = "MODE",
        default_value = "ClusterCIDR"
    )]
    pub detect_local_mode: String,

    /// The bridge pods are attached to, for --detect-local-mode BridgeInterface.
    #[arg(long = "pod-bridge-interface", value_name = "NAME")]
    pub pod_bridge_interface: Option<String>,

    /// The name prefix of pods' host-side interfaces, for --detect-local-mode
    /// InterfaceNamePrefix.
    #[arg(long = "pod-interface-name-prefix", value_name = "PREFIX")]
    pub pod_interface_name_prefix: Option<String>,

    /// Masquerade all traffic sent to ClusterIPs.
    #[arg(long = "masquerade-all")]
    pub masquerade_all: bool,

    /// Addresses that accept NodePort traffic, comma-separated: CIDRs and the keywords
    /// `primary` (the node IPs, the default), `localhost` (`127.0.0.1` and `::1`, served by
    /// Rudder's userspace TCP proxy) and `all` (every local address except the loopback ones:
    /// `all,localhost` serves those too).
    #[arg(
        long = "nodeport-addresses",
        value_name = "primary|localhost|all|CIDR,...",
        value_delimiter = ','
    )]
    pub nodeport_addresses: Vec<String>,

    /// kube-proxy's feature gates that Rudder reads, as `NAME=true|false` (comma-separated):
    /// `AllowServiceExternalIPs` (default true; false: `spec.externalIPs` are not programmed,
    /// and each Service that has some gets a warning Event, KEP-5707) and
    /// `KubeProxyNFTablesLocalhostNodePorts` (default true: new connections to a loopback
    /// address on a node port are served by the localhost proxy where `--nodeport-addresses`
    /// lists that family's loopback address, and rejected elsewhere; false: loopback traffic
    /// is left alone and there are no localhost node ports). Other gates are ignored with a
    /// warning.
    #[arg(
        long = "feature-gates",
        value_name = "NAME=BOOL,...",
        value_delimiter = ','
    )]
    pub feature_gates: Vec<String>,

    /// Proxy mode: `nftables` (the default) or `ipvs` (virtual servers over generic netlink,
    /// VIPs on the dummy interface `kube-ipvs0`).
    #[arg(long = "proxy-mode", value_name = "MODE", default_value = "nftables")]
    pub proxy_mode: String,

    /// The IPVS scheduler (`--proxy-mode ipvs`): rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed,
    /// nq, mh.
    #[arg(long = "ipvs-scheduler", value_name = "NAME", default_value = "rr")]
    pub ipvs_scheduler: String,

    /// Virtual servers on addresses in these CIDRs are not Rudder's: it never changes or
    /// deletes them (`--proxy-mode ipvs`).
    #[arg(
        long = "ipvs-exclude-cidrs",
        value_name = "CIDRS",
        value_delimiter = ','
    )]
    pub ipvs_exclude_cidrs: Vec<String>,

    /// Name of Rudder's nftables tables (one `ip` and one `ip6` table).
    #[arg(long = "nftables-table", value_name = "NAME", default_value = rudder_compiler::DEFAULT_TABLE)]
    pub table: String,

    /// Bit of the packet mark used to request masquerading (kube-proxy's masqueradeBit).
    #[arg(long = "masquerade-bit", value_name = "0-31", default_value_t = 14)]
    pub masquerade_bit: u8,

    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log verbosity: 0–2 info, 3–4 debug, 5 and more trace (like kube-proxy's `-v`).
    #[arg(
        short = 'v',
        long = "v",
        value_name = "N",
        default_value_t = 0,
        global = true
    )]
    pub verbosity: u8,

    /// Log format.
    #[arg(long = "logging-format", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub logging_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct CompileArgs {
    #[command(flatten)]
    pub proxy: ProxyArgs,

    /// Fail (exit code 1) if any document is invalid, instead of skipping it.
    #[arg(long)]
    pub strict: bool,

    /// With `--proxy-mode ipvs`: what to print. `ipvsadm`: the virtual and real servers as
    /// `ipvsadm -S -n` lists them (`ipvsadm -R` reads it); `nft`: the mode's nftables part
    /// (`nft -f` reads it); `addresses`: the VIPs bound to `kube-ipvs0`, one per line.
    #[arg(long = "ipvs-output", value_name = "WHAT", default_value = "ipvsadm", value_parser = ["ipvsadm", "nft", "addresses"])]
    pub ipvs_output: String,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub proxy: ProxyArgs,

    /// A kube-proxy configuration file (`KubeProxyConfiguration`, kubeproxy.config.k8s.io/v1alpha1).
    /// Flags given on the command line win over its fields.
    #[arg(long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Write the effective configuration (--config and flags merged) to FILE as a
    /// KubeProxyConfiguration, then exit without touching the kernel (kube-proxy's flag).
    #[arg(long = "write-config-to", value_name = "FILE")]
    pub write_config_to: Option<PathBuf>,

    /// Remove Rudder's tables and exit, like `rudder cleanup` (kube-proxy's `--cleanup`).
    #[arg(long = "cleanup")]
    pub cleanup: bool,

    /// Path to a kubeconfig file. Without it (and without --manifests) Rudder uses the
    /// in-cluster configuration, like kube-proxy.
    #[arg(long = "kubeconfig", value_name = "PATH", conflicts_with = "manifests")]
    pub kubeconfig: Option<PathBuf>,

    /// The address of the Kubernetes API server (overrides any value in the kubeconfig).
    #[arg(long = "master", value_name = "URL", conflicts_with = "manifests")]
    pub master: Option<String>,

    /// Address of the metrics server (`/metrics`, `/healthz`, `/proxyMode`); empty to disable.
    #[arg(
        long = "metrics-bind-address",
        value_name = "IP:PORT",
        default_value = "127.0.0.1:10249"
    )]
    pub metrics_bind_address: String,

    /// Address of the health server (`/healthz`, `/livez`); empty to disable.
    #[arg(
        long = "healthz-bind-address",
        value_name = "IP:PORT",
        default_value = "0.0.0.0:10256"
    )]
    pub healthz_bind_address: String,

    /// How long to wait at startup for this node's Node object (for the node IPs).
    #[arg(long = "node-wait", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub node_wait: Duration,

    /// Minimum time between two syncs: bursts of changes coalesce into one sync.
    #[arg(long = "iptables-min-sync-period", value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub min_sync_period: Duration,

    /// Retry interval after a failed sync.
    #[arg(long = "iptables-sync-period", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub sync_period: Duration,

    /// Minimum time between two syncs in IPVS mode (`--proxy-mode ipvs` uses it instead of
    /// --iptables-min-sync-period, as kube-proxy does).
    #[arg(long = "ipvs-min-sync-period", value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub ipvs_min_sync_period: Duration,

    /// Retry interval after a failed sync in IPVS mode (`--proxy-mode ipvs` uses it instead of
    /// --iptables-sync-period, as kube-proxy does); must be more than 0.
    #[arg(long = "ipvs-sync-period", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub ipvs_sync_period: Duration,

    /// Idle timeout of IPVS TCP connections (`ipvsadm --set`, IPVS_CMD_SET_CONFIG), set at
    /// start in IPVS mode; 0 leaves the kernel's value.
    #[arg(long = "ipvs-tcp-timeout", value_name = "DURATION", default_value = "0", value_parser = parse_duration)]
    pub ipvs_tcp_timeout: Duration,

    /// Timeout of IPVS TCP connections after a FIN, set at start in IPVS mode; 0 leaves the
    /// kernel's value.
    #[arg(long = "ipvs-tcpfin-timeout", value_name = "DURATION", default_value = "0", value_parser = parse_duration)]
    pub ipvs_tcpfin_timeout: Duration,

    /// Timeout of IPVS UDP flows, set at start in IPVS mode; 0 leaves the kernel's value.
    #[arg(long = "ipvs-udp-timeout", value_name = "DURATION", default_value = "0", value_parser = parse_duration)]
    pub ipvs_udp_timeout: Duration,

    /// Strict ARP in IPVS mode: set `net.ipv4.conf.all.arp_ignore=1` and `arp_announce=2`, so
    /// the node does not answer ARP for the VIPs on `kube-ipvs0` (MetalLB's L2 mode needs it).
    #[arg(
        long = "ipvs-strict-arp",
        value_name = "BOOL",
        default_value_t = false,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub ipvs_strict_arp: bool,

    /// Maximum conntrack entries per CPU (`nf_conntrack_max` = max(this × CPUs,
    /// --conntrack-min), only ever raised); 0 leaves the kernel's value.
    #[arg(
        long = "conntrack-max-per-core",
        value_name = "N",
        default_value_t = 32768
    )]
    pub conntrack_max_per_core: u32,

    /// Minimum of `nf_conntrack_max` when --conntrack-max-per-core is set.
    #[arg(long = "conntrack-min", value_name = "N", default_value_t = 131072)]
    pub conntrack_min: u32,

    /// Idle timeout of established TCP connections (`nf_conntrack_tcp_timeout_established`);
    /// 0 leaves the kernel's value.
    #[arg(long = "conntrack-tcp-timeout-established", value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub conntrack_tcp_established: Duration,

    /// Timeout of TCP connections in CLOSE_WAIT (`nf_conntrack_tcp_timeout_close_wait`); 0
    /// leaves the kernel's value.
    #[arg(long = "conntrack-tcp-timeout-close-wait", value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub conntrack_tcp_close_wait: Duration,

    /// Set `nf_conntrack_tcp_be_liberal` (accept out-of-window TCP packets).
    #[arg(long = "conntrack-tcp-be-liberal")]
    pub conntrack_tcp_be_liberal: bool,

    /// Idle timeout of UDP flows (`nf_conntrack_udp_timeout`); 0 leaves the kernel's value.
    #[arg(long = "conntrack-udp-timeout", value_name = "DURATION", default_value = "0", value_parser = parse_duration)]
    pub conntrack_udp: Duration,

    /// Idle timeout of UDP streams (`nf_conntrack_udp_timeout_stream`); 0 leaves the kernel's
    /// value.
    #[arg(long = "conntrack-udp-timeout-stream", value_name = "DURATION", default_value = "0", value_parser = parse_duration)]
    pub conntrack_udp_stream: Duration,

    /// Interval of full resyncs, which also repair rules changed behind Rudder's back.
    #[arg(long = "full-sync-period", value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub full_sync_period: Duration,

    /// Follow the kernel's nf_tables change notifications and repair Rudder's tables at once
    /// when someone else changes them (`--watch-tables=false`: only the check before each
    /// periodic full resync sees such changes).
    #[arg(
        long = "watch-tables",
        value_name = "BOOL",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub watch_tables: bool,

    /// How often manifest files are checked for changes.
    #[arg(long = "manifests-poll-interval", value_name = "DURATION", default_value = "200ms", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// Path of the nft program, used only to write with `--nft-writer nft` (tables are read
    /// back over netlink).
    #[arg(long = "nft-path", value_name = "PATH", default_value = "nft")]
    pub nft_path: PathBuf,

    /// How rule changes reach the kernel: `netlink` sends each transaction as one nf_tables
    /// netlink batch (the default); `nft` pipes the rendered transaction to `nft -f` (slower;
    /// for debugging and comparison).
    #[arg(long = "nft-writer", value_name = "MODE", default_value = "netlink", value_parser = ["netlink", "nft"])]
    pub nft_writer: String,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Name of Rudder's nftables tables.
    #[arg(long = "nftables-table", value_name = "NAME", default_value = rudder_compiler::DEFAULT_TABLE)]
    pub table: String,

    /// Path of the nft program (accepted for compatibility: cleanup uses netlink only).
    #[arg(long = "nft-path", value_name = "PATH", default_value = "nft")]
    pub nft_path: PathBuf,

    /// Virtual servers on addresses in these CIDRs are not Rudder's: cleanup leaves them,
    /// as the daemon does (give the daemon's `--ipvs-exclude-cidrs`).
    #[arg(
        long = "ipvs-exclude-cidrs",
        value_name = "CIDRS",
        value_delimiter = ','
    )]
    pub ipvs_exclude_cidrs: Vec<String>,

    #[command(flatten)]
    pub log: LogArgs,
}

/// Parses a Go-style duration: `1h30m`, `1s`, `500ms`, `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!("invalid duration {s:?}: expected a number"));
        }
        let value: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let secs = match unit {
            "h" => value * 3600.0,
            "m" => value * 60.0,
            "s" => value,
            "ms" => value / 1e3,
            "us" | "µs" => value / 1e6,
            "ns" => value / 1e9,
            "" => {
                return Err(format!(
                    "invalid duration {s:?}: missing unit (s, m, h, ms)"
                ));
            }
            u => return Err(format!("invalid duration {s:?}: unknown unit {u:?}")),
        };
        total +=
            Duration::try_from_secs_f64(secs).map_err(|_| format!("invalid duration {s:?}"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("1x").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn cli_parses_kube_proxy_flags() {
        let cli = Cli::try_parse_from([
            "rudder",
            "run",
            "--manifests",
            "/tmp/x",
            "--hostname-override",
            "n1",
            "--cluster-cidr",
            "10.244.0.0/16,fd00::/56",
            "--iptables-min-sync-period",
            "0s",
            "--masquerade-all",
            "--nodeport-addresses",
            "primary",
            "--v",
            "4",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.proxy.cluster_cidr.len(), 2);
        assert_eq!(run.min_sync_period, Duration::ZERO);
        assert!(run.proxy.masquerade_all);
        assert_eq!(run.proxy.log.verbosity, 4);
        assert!(
            Cli::try_parse_from(["rudder", "run", "--manifests", "x", "--no-such-flag"]).is_err()
        );
    }
}
