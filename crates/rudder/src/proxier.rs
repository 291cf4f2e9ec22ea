//! Wiring: settings from flags, and the node context.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, bail};
use rudder_compiler::{Config, LocalDetector, NodeContext, NodePortIps};
use rudder_model::{Cidr, IpFamily, Node, parse_ip};
use rudder_nft::{IfaceName, Name};

use crate::cli::ProxyArgs;

/// How node ports are exposed: `--nodeport-addresses` (kube-proxy 1.37's syntax: CIDRs and
/// the keywords `primary`, `localhost` and `all`, in any combination).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePortSpec {
    /// `primary` was given (or nothing at all): the node's primary IPs accept node ports.
    pub primary: bool,
    /// The CIDRs given, with `localhost` read as `127.0.0.0/8,::1/128` and `all` as
    /// `0.0.0.0/0,::/0`: local addresses inside them accept node ports (loopback excepted:
    /// the kernel cannot DNAT it).
    pub cidrs: Vec<Cidr>,
    /// The `KubeProxyNFTablesLocalhostNodePorts` gate is off: no localhost node ports.
    pub localhost_disabled: bool,
}

impl Default for NodePortSpec {
    fn default() -> NodePortSpec {
        NodePortSpec {
            primary: true,
            cidrs: Vec::new(),
            localhost_disabled: false,
        }
    }
}

impl NodePortSpec {
    /// Parses the flag's (or the config field's) entries. Keywords are case-sensitive and
    /// may each appear once, as kube-proxy validates them.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> anyhow::Result<NodePortSpec> {
        let entries: Vec<&str> = entries
            .into_iter()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if entries.is_empty() {
            return Ok(NodePortSpec::default());
        }
        let mut spec = NodePortSpec {
            primary: false,
            cidrs: Vec::new(),
            localhost_disabled: false,
        };
        let mut keywords: Vec<&str> = Vec::new();
        for raw in entries {
            let expanded: &[&str] = match raw {
                "primary" => &[],
                "localhost" => &["127.0.0.0/8", "::1/128"],
                "all" => &["0.0.0.0/0", "::/0"],
                _ => {
                    spec.cidrs.push(raw.parse::<Cidr>().map_err(|_| {
                        anyhow::anyhow!(
                            "--nodeport-addresses: {raw:?} is neither a CIDR nor one of the keywords primary, localhost, all"
                        )
                    })?);
                    continue;
                }
            };
            if keywords.contains(&raw) {
                bail!("--nodeport-addresses: the keyword {raw:?} is given twice");
            }
            keywords.push(raw);
            spec.primary |= raw == "primary";
            for c in expanded {
                spec.cidrs.push(c.parse::<Cidr>()?);
            }
        }
        Ok(spec)
    }

    /// The families whose loopback address is explicitly listed, so that their
    /// `127.0.0.1:<nodePort>` / `[::1]:<nodePort>` are served by the localhost proxy
    /// (KEP-6032): `localhost`, or a CIDR inside the loopback range that contains
    /// `127.0.0.1` (`::1`). Zero CIDRs and `all` are not explicit (kube-proxy's
    /// `ContainsExplicitLoopback`), and a prefix such as `127.0.0.2/32` that leaves out the
    /// address the proxy listens on enables nothing (kubernetes#142129).
    pub fn localhost_families(&self) -> Vec<IpFamily> {
        let mut out = Vec::new();
        if self.localhost_disabled {
            return out;
        }
        for (family, listen) in [
            (IpFamily::V4, IpAddr::V4(Ipv4Addr::LOCALHOST)),
            (IpFamily::V6, IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ] {
            if self
                .cidrs
                .iter()
                .any(|c| c.addr().is_loopback() && c.contains(&listen))
            {
                out.push(family);
            }
        }
        out
    }
}

/// The kube-proxy feature gates Rudder reads (`--feature-gates`, `featureGates`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureGates {
    /// `AllowServiceExternalIPs` (KEP-5707; deprecated in 1.36, to be off by default in
    /// 1.40): program `spec.externalIPs`. On by default, as in kube-proxy 1.37.
    pub allow_service_external_ips: bool,
    /// `KubeProxyNFTablesLocalhostNodePorts` (KEP-6032): Rudder behaves as 1.38, where it is
    /// on by default; off, `--nodeport-addresses` may list loopback addresses to no effect.
    pub localhost_node_ports: bool,
}

impl Default for FeatureGates {
    fn default() -> FeatureGates {
        FeatureGates {
            allow_service_external_ips: true,
            localhost_node_ports: true,
        }
    }
}

impl FeatureGates {
    /// Parses `NAME=BOOL` entries (kube-proxy's `--feature-gates` syntax). Gates Rudder does
    /// not know are returned as warnings: they may be kube-proxy's, with no meaning here.
    pub fn parse<'a>(
        entries: impl IntoIterator<Item = &'a str>,
    ) -> anyhow::Result<(FeatureGates, Vec<String>)> {
        let mut gates = FeatureGates::default();
        let mut warnings = Vec::new();
        for raw in entries.into_iter().map(str::trim).filter(|s| !s.is_empty()) {
            let (name, value) = raw
                .split_once('=')
                .with_context(|| format!("--feature-gates: {raw:?} is not NAME=true|false"))?;
            let value = match value.trim() {
                "true" => true,
                "false" => false,
                other => bail!("--feature-gates: {name}={other:?} is neither true nor false"),
            };
            match name.trim() {
                "AllowServiceExternalIPs" => gates.allow_service_external_ips = value,
                "KubeProxyNFTablesLocalhostNodePorts" => gates.localhost_node_ports = value,
                other => warnings.push(format!(
                    "feature gate {other:?} is not one Rudder reads: ignored"
                )),
            }
        }
        Ok((gates, warnings))
    }
}

/// How local traffic is detected (`--detect-local-mode`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DetectLocal {
    /// `ClusterCIDR`: source inside `--cluster-cidr` (no detection without it).
    ClusterCidr(Vec<Cidr>),
    /// `NodeCIDR`: source inside the Node's `spec.podCIDRs`.
    NodeCidr,
    /// `BridgeInterface`: arrived on `--pod-bridge-interface`.
    Bridge(IfaceName),
    /// `InterfaceNamePrefix`: arrived on an interface named `--pod-interface-name-prefix*`.
    InterfacePrefix(IfaceName),
}

/// Validated settings shared by `compile` and `run`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: Mode,
    pub ipvs: IpvsSettings,
    pub hostname: String,
    pub node_ip_override: Vec<IpAddr>,
    pub nodeport: NodePortSpec,
    pub detect_local: DetectLocal,
    pub gates: FeatureGates,
    pub config: Config,
}

/// The proxy mode (`--proxy-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// nftables tables (the default).
    Nftables,
    /// IPVS virtual servers.
    Ipvs,
}

/// The IPVS mode's settings (`--ipvs-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsSettings {
    /// `--ipvs-scheduler`.
    pub scheduler: rudder_ipvs::types::Scheduler,
    /// `--ipvs-exclude-cidrs`.
    pub exclude: Vec<Cidr>,
}

impl Settings {
    /// The IPVS compiler's options: the scheduler, and the nftables part's table and
    /// masquerade settings.
    pub fn ipvs_options(&self) -> rudder_ipvs_compiler::Options {
        rudder_ipvs_compiler::Options {
            scheduler: self.ipvs.scheduler.clone(),
            table: rudder_ipvs_compiler::table::TableConfig {
                table: self.config.table.clone(),
                masquerade_all: self.config.masquerade_all,
                masquerade_bit: self.config.masquerade_bit,
            },
        }
    }
}

/// The host name, lower-cased, as kube-proxy defaults `--hostname-override`.
fn default_hostname() -> anyhow::Result<String> {
    let h = nix::unistd::gethostname()
        .context("cannot read the host name; pass --hostname-override")?;
    Ok(h.to_string_lossy().trim().to_lowercase())
}

impl Settings {
    pub fn from_args(args: &ProxyArgs) -> anyhow::Result<Settings> {
        let mode = match args.proxy_mode.as_str() {
            "nftables" | "" => Mode::Nftables,
            "ipvs" => Mode::Ipvs,
            other => bail!(
                "--proxy-mode {other:?} is not supported: Rudder implements \"nftables\" and \"ipvs\""
            ),
        };
        let scheduler = rudder_ipvs::types::Scheduler::from_name(args.ipvs_scheduler.trim())
            .map_err(|e| anyhow::anyhow!("--ipvs-scheduler {:?}: {e}", args.ipvs_scheduler))?;
        let mut exclude = Vec::new();
        for raw in args
            .ipvs_exclude_cidrs
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
        {
            exclude.push(
                raw.parse::<Cidr>()
                    .map_err(|e| anyhow::anyhow!("--ipvs-exclude-cidrs {raw:?}: {e}"))?,
            );
        }
        let hostname = match &args.hostname_override {
            Some(h) if !h.trim().is_empty() => h.trim().to_lowercase(),
            _ => default_hostname()?,
        };
        let mut node_ip_override: Vec<IpAddr> = Vec::new();
        for raw in args
            .node_ip
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
        {
            let ip = parse_ip(raw)
                .with_context(|| format!("--node-ip: {raw:?} is not an IP address"))?;
            if node_ip_override
                .iter()
                .any(|o| IpFamily::of(o) == IpFamily::of(&ip))
            {
                bail!("--node-ip: at most one address per IP family");
            }
            node_ip_override.push(ip);
        }
        let mut cluster_cidrs = Vec::new();
        for raw in args
            .cluster_cidr
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
        {
            cluster_cidrs.push(
                raw.parse::<Cidr>()
                    .with_context(|| format!("--cluster-cidr: {raw:?} is not a CIDR"))?,
            );
        }
        let mut nodeport = NodePortSpec::parse(args.nodeport_addresses.iter().map(String::as_str))?;
        let detect_local = match args.detect_local_mode.as_str() {
            "ClusterCIDR" | "" => DetectLocal::ClusterCidr(cluster_cidrs),
            "NodeCIDR" => DetectLocal::NodeCidr,
            "BridgeInterface" => {
                let name = args.pod_bridge_interface.as_deref().unwrap_or("");
                DetectLocal::Bridge(IfaceName::new(name).filter(|_| !name.ends_with('*')).with_context(|| {
                    format!("--detect-local-mode BridgeInterface needs a valid --pod-bridge-interface, got {name:?}")
                })?)
            }
            "InterfaceNamePrefix" => {
                let prefix = args.pod_interface_name_prefix.as_deref().unwrap_or("");
                let name = IfaceName::new(&format!("{prefix}*"))
                    .filter(|_| !prefix.is_empty() && !prefix.contains('*'));
                DetectLocal::InterfacePrefix(name.with_context(|| {
                    format!("--detect-local-mode InterfaceNamePrefix needs a valid --pod-interface-name-prefix, got {prefix:?}")
                })?)
            }
            other => bail!(
                "--detect-local-mode {other:?} is not one of ClusterCIDR, NodeCIDR, BridgeInterface, InterfaceNamePrefix"
            ),
        };
        let table = Name::new(&args.table).map_err(|e| anyhow::anyhow!("--nftables-table: {e}"))?;
        if args.masquerade_bit > 31 {
            bail!("--masquerade-bit must be between 0 and 31");
        }
        let (gates, gate_warnings) =
            FeatureGates::parse(args.feature_gates.iter().map(String::as_str))?;
        for w in gate_warnings {
            tracing::warn!("{w}");
        }
        if !gates.localhost_node_ports {
            nodeport.localhost_disabled = true;
        }
        let localhost_node_ports = nodeport.localhost_families();
        let localhost_gate = gates.localhost_node_ports;
        Ok(Settings {
            mode,
            ipvs: IpvsSettings { scheduler, exclude },
            hostname,
            node_ip_override,
            nodeport,
            detect_local,
            gates,
            config: Config {
                table,
                masquerade_all: args.masquerade_all,
                masquerade_bit: args.masquerade_bit,
                localhost_node_ports,
                localhost_gate,
            },
        })
    }

    /// The node context for the compiler. `local_addrs` are the addresses of the local
    /// interfaces (`None` when compiling offline: node IPs stand in for them).
    pub fn node_context(&self, node: Option<&Node>, local_addrs: Option<&[IpAddr]>) -> NodeContext {
        let node_ips = self.node_ips(node);
        let candidates: &[IpAddr] = match local_addrs {
            Some(a) => a,
            None => &node_ips,
        };
        let mut local_ips = Vec::new();
        let node_port_ips = if self.nodeport.cidrs.iter().any(Cidr::is_all) {
            // IPVS mode makes a virtual server per node-port address, so it needs them
            // listed; nftables mode matches any local address and leaves them out (a change
            // of them is no reason for a full sync there).
            if self.mode == Mode::Ipvs {
                local_ips = candidates
                    .iter()
                    .copied()
                    .filter(|ip| !ip.is_loopback())
                    .collect();
                local_ips.sort();
                local_ips.dedup();
            }
            NodePortIps::All
        } else {
            let mut ips: Vec<IpAddr> = Vec::new();
            if self.nodeport.primary {
                ips.extend(node_ips.iter().copied());
            }
            if !self.nodeport.cidrs.is_empty() {
                ips.extend(candidates.iter().copied().filter(|ip| {
                    !ip.is_loopback() && self.nodeport.cidrs.iter().any(|c| c.contains(ip))
                }));
            }
            // Loopback cannot be DNATed without route_localnet (which Rudder never sets):
            // the localhost proxy serves it instead.
            ips.retain(|ip| !ip.is_loopback());
            ips.sort();
            ips.dedup();
            NodePortIps::Only(ips)
        };
        let local_detector = match &self.detect_local {
            DetectLocal::ClusterCidr(c) if c.is_empty() => LocalDetector::None,
            DetectLocal::ClusterCidr(c) => LocalDetector::Cidrs(c.clone()),
            DetectLocal::NodeCidr => match node {
                Some(n) if !n.pod_cidrs.is_empty() => LocalDetector::Cidrs(n.pod_cidrs.clone()),
                _ => LocalDetector::None,
            },
            DetectLocal::Bridge(i) => LocalDetector::Bridge(i.clone()),
            DetectLocal::InterfacePrefix(i) => LocalDetector::InterfacePrefix(i.clone()),
        };
        NodeContext {
            name: self.hostname.clone(),
            node_port_ips,
            ips: self.node_ips(node),
            local_ips,
            service_cidrs: Vec::new(),
            zone: node.and_then(|n| n.zone.clone()),
            local_detector,
        }
    }

    /// The node's IPs: `--node-ip`, else the Node object's primary addresses.
    pub fn node_ips(&self, node: Option<&Node>) -> Vec<IpAddr> {
        if !self.node_ip_override.is_empty() {
            return self.node_ip_override.clone();
        }
        node.map(|n| n.addresses.clone()).unwrap_or_default()
    }
}

/// Addresses of the local interfaces of this network namespace, except those of IPVS's
/// dummy interface (`kube-ipvs0`): they are service addresses, not the node's (as node-port
/// addresses, or to the ClusterIP guard, they would make the node's services its own).
pub fn local_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        out = node_addresses_of(addrs.filter_map(|a| {
            let addr = a.address?;
            let ip = if let Some(v4) = addr.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else {
                IpAddr::V6(addr.as_sockaddr_in6()?.ip())
            };
            Some((a.interface_name, ip))
        }));
    }
    out
}

/// The addresses of (interface, address) pairs that are the node's: all but `kube-ipvs0`'s.
fn node_addresses_of(addrs: impl IntoIterator<Item = (String, IpAddr)>) -> Vec<IpAddr> {
    addrs
        .into_iter()
        .filter(|(iface, _)| iface != crate::ipvs::DUMMY)
        .map(|(_, ip)| ip)
        .collect()
}

/// Whether this network namespace has IPv6.
pub fn ipv6_available() -> bool {
    std::path::Path::new("/proc/net/if_inet6").exists()
}

/// Families to program: IPv4, plus IPv6 when the namespace has it.
pub fn families(ipv6: bool) -> Vec<IpFamily> {
    if ipv6 {
        vec![IpFamily::V4, IpFamily::V6]
    } else {
        vec![IpFamily::V4]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> anyhow::Result<NodePortSpec> {
        NodePortSpec::parse(s.split(','))
    }

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn nodeport_addresses_take_kube_proxy_1_37_keywords() {
        let node = Node {
            addresses: ips(&["172.18.0.2", "fc00::2"]),
            ..Node::default()
        };
        let local = ips(&["127.0.0.1", "::1", "172.18.0.2", "fc00::2", "10.0.0.5"]);
        let settings = |s: &str| Settings {
            mode: Mode::Nftables,
            ipvs: IpvsSettings {
                scheduler: rudder_ipvs::types::Scheduler::RoundRobin,
                exclude: Vec::new(),
            },
            hostname: "n1".into(),
            node_ip_override: Vec::new(),
            nodeport: spec(s).unwrap(),
            detect_local: DetectLocal::NodeCidr,
            gates: FeatureGates::default(),
            config: Config::default(),
        };
        let only = |s: &str| match settings(s)
            .node_context(Some(&node), Some(&local))
            .node_port_ips
        {
            NodePortIps::Only(v) => v.iter().map(|ip| ip.to_string()).collect::<Vec<_>>(),
            NodePortIps::All => vec!["all".to_string()],
        };
        let fams = |s: &str| spec(s).unwrap().localhost_families();
        use IpFamily::{V4, V6};
        // The default, and `primary` alone: the node's primary IPs, no localhost.
        assert_eq!(NodePortSpec::parse([]).unwrap(), NodePortSpec::default());
        assert_eq!(only("primary"), vec!["172.18.0.2", "fc00::2"]);
        assert!(fams("primary").is_empty());
        // `localhost`: the loopback addresses, which the kernel cannot DNAT: no kernel node
        // port address, but the localhost proxy for both families.
        assert!(only("localhost").is_empty());
        assert_eq!(fams("localhost"), vec![V4, V6]);
        assert_eq!(only("primary,localhost"), vec!["172.18.0.2", "fc00::2"]);
        assert_eq!(fams("primary,localhost"), vec![V4, V6]);
        // `primary` next to CIDRs.
        assert_eq!(
            only("primary,10.0.0.0/8"),
            vec!["10.0.0.5", "172.18.0.2", "fc00::2"]
        );
        // `all` is every address, and no explicit loopback (kube-proxy 1.37).
        assert_eq!(only("all"), vec!["all"]);
        assert!(fams("all").is_empty());
        assert!(fams("0.0.0.0/0,::/0").is_empty());
        assert_eq!(fams("all,localhost"), vec![V4, V6]);
        assert_eq!(fams("0.0.0.0/0,127.0.0.1/32"), vec![V4]);
        // Only the family whose loopback is listed; a loopback prefix without 127.0.0.1 (the
        // address the proxy listens on) enables nothing (kubernetes#142129).
        assert_eq!(fams("primary,127.0.0.1/32"), vec![V4]);
        assert_eq!(fams("127.0.0.0/30"), vec![V4]);
        assert_eq!(fams("::1/128"), vec![V6]);
        assert!(fams("127.0.0.2/32").is_empty());
        assert!(
            fams("96.0.0.0/3").is_empty(),
            "contains 127.0.0.1 but is no loopback prefix"
        );
        // Whitespace and empty entries are ignored, as before.
        assert_eq!(fams(" localhost ,"), vec![V4, V6]);
        // Errors: unknown or wrongly cased keywords, duplicates.
        for bad in [
            "Localhost",
            "primary,primary",
            "localhost,localhost",
            "all,all",
            "loopback",
        ] {
            assert!(spec(bad).is_err(), "{bad} must be refused");
        }
        let e = spec("Primary").unwrap_err().to_string();
        assert!(e.contains("primary, localhost, all"), "{e}");
    }

    #[test]
    fn ipvs_mode_lists_every_local_address_but_loopback_and_kube_ipvs0s_for_all() {
        let node = Node {
            addresses: ips(&["172.18.0.2"]),
            ..Node::default()
        };
        // kube-ipvs0's addresses are services' (a ClusterIP here), never the node's.
        let local = node_addresses_of(
            [
                ("lo", "127.0.0.1"),
                ("eth0", "172.18.0.2"),
                ("eth1", "10.0.0.5"),
                (crate::ipvs::DUMMY, "10.96.0.10"),
                ("eth0", "fc00::2"),
            ]
            .map(|(i, a)| (i.to_string(), a.parse().unwrap())),
        );
        assert_eq!(
            local,
            ips(&["127.0.0.1", "172.18.0.2", "10.0.0.5", "fc00::2"])
        );
        let settings = |mode: Mode, s: &str| Settings {
            mode,
            ipvs: IpvsSettings {
                scheduler: rudder_ipvs::types::Scheduler::RoundRobin,
                exclude: Vec::new(),
            },
            hostname: "n1".into(),
            node_ip_override: Vec::new(),
            nodeport: spec(s).unwrap(),
            detect_local: DetectLocal::NodeCidr,
            gates: FeatureGates::default(),
            config: Config::default(),
        };
        let ctx = settings(Mode::Ipvs, "all").node_context(Some(&node), Some(&local));
        assert_eq!(ctx.node_port_ips, NodePortIps::All);
        assert_eq!(ctx.local_ips, ips(&["10.0.0.5", "172.18.0.2", "fc00::2"]));
        // Offline, the node's IPs stand in for the local addresses.
        let ctx = settings(Mode::Ipvs, "0.0.0.0/0").node_context(Some(&node), None);
        assert_eq!(ctx.local_ips, ips(&["172.18.0.2"]));
        // nftables mode matches any local address and lists none; other specs list none.
        let ctx = settings(Mode::Nftables, "all").node_context(Some(&node), Some(&local));
        assert!(ctx.local_ips.is_empty());
        let ctx = settings(Mode::Ipvs, "10.0.0.0/8").node_context(Some(&node), Some(&local));
        assert!(ctx.local_ips.is_empty());
        assert_eq!(ctx.node_port_ips, NodePortIps::Only(ips(&["10.0.0.5"])));
        // A CIDR covering the service range takes no kube-ipvs0 address either.
        let ctx = settings(Mode::Ipvs, "10.96.0.0/12").node_context(Some(&node), Some(&local));
        assert_eq!(ctx.node_port_ips, NodePortIps::Only(Vec::new()));
    }

    /// Settings as `rudder compile` reads them from `args` (after the subcommand).
    fn compile_settings(args: &[&str]) -> anyhow::Result<Settings> {
        use clap::{CommandFactory, FromArgMatches};
        let mut argv = vec!["rudder", "compile", "--hostname-override", "n1"];
        argv.extend_from_slice(args);
        let m = crate::cli::Cli::command().try_get_matches_from(argv)?;
        let crate::cli::Command::Compile(c) = crate::cli::Cli::from_arg_matches(&m)?.command else {
            anyhow::bail!("not compile")
        };
        Settings::from_args(&c.proxy)
    }

    #[test]
    fn the_localhost_gate_and_proxy_families_reach_the_compiler() {
        use IpFamily::{V4, V6};
        let c = |args: &[&str]| {
            let s = compile_settings(args).unwrap();
            (s.config.localhost_gate, s.config.localhost_node_ports)
        };
        // The default (`primary`): the gate is on (Rudder behaves as 1.38), no proxy, so
        // loopback node ports are rejected in both families.
        assert_eq!(c(&[]), (true, vec![]));
        assert_eq!(c(&["--nodeport-addresses", "all"]), (true, vec![]));
        assert_eq!(
            c(&["--nodeport-addresses", "primary,localhost"]),
            (true, vec![V4, V6])
        );
        assert_eq!(
            c(&["--nodeport-addresses", "primary,127.0.0.1/32"]),
            (true, vec![V4])
        );
        // The gate off: neither the proxy nor the rejects.
        assert_eq!(
            c(&[
                "--nodeport-addresses",
                "primary,localhost",
                "--feature-gates",
                "KubeProxyNFTablesLocalhostNodePorts=false"
            ]),
            (false, vec![])
        );
    }

    #[test]
    fn flags_read_addresses_leniently_like_kube_proxys() {
        // KEP-4858 leaves flags and component configs alone: kube-proxy parses them with
        // ParseIPSloppy/ParseCIDRSloppy (leading zeros as decimal, host bits cleared), and so
        // does Rudder, unlike the API objects' fields.
        let s = compile_settings(&[
            "--cluster-cidr",
            "010.244.1.7/16",
            "--node-ip",
            "010.000.000.001",
            "--nodeport-addresses",
            "primary,10.0.0.1/8",
            "--ipvs-exclude-cidrs",
            "192.168.001.5/24",
        ])
        .unwrap();
        let cidr = |c: &str| c.parse::<Cidr>().unwrap();
        assert_eq!(
            s.detect_local,
            DetectLocal::ClusterCidr(vec![cidr("10.244.0.0/16")])
        );
        assert_eq!(s.node_ip_override, ips(&["10.0.0.1"]));
        assert_eq!(s.nodeport.cidrs, vec![cidr("10.0.0.0/8")]);
        assert_eq!(s.ipvs.exclude, vec![cidr("192.168.1.0/24")]);
    }

    #[test]
    fn feature_gates_take_kube_proxys_syntax() {
        let parse = |s: &str| FeatureGates::parse(s.split(','));
        let (g, w) = parse("").unwrap();
        assert_eq!(g, FeatureGates::default());
        assert!(g.allow_service_external_ips && g.localhost_node_ports && w.is_empty());
        let (g, w) = parse("AllowServiceExternalIPs=false, KubeProxyNFTablesLocalhostNodePorts=false,InPlacePodVerticalScaling=true").unwrap();
        assert!(!g.allow_service_external_ips && !g.localhost_node_ports);
        assert_eq!(w.len(), 1, "unknown gates are named: {w:?}");
        for bad in [
            "AllowServiceExternalIPs",
            "AllowServiceExternalIPs=no",
            "=true",
        ] {
            if bad == "=true" {
                // An empty name is just an unknown gate.
                assert!(parse(bad).is_ok());
                continue;
            }
            assert!(parse(bad).is_err(), "{bad}");
        }
        // The localhost gate off turns localhost node ports off whatever the addresses say.
        let mut spec = spec("primary,localhost").unwrap();
        spec.localhost_disabled = true;
        assert!(spec.localhost_families().is_empty());
    }
}
