//! Wiring: settings from flags, Kubernetes objects into the model, the node context, and
//! the sync step (compile, apply, account).

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{Context, bail};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rudder_compiler::{Config, LocalDetector, NodeContext, NodePortIps};
use rudder_model::{Cidr, IpFamily, Node, ObjectKind, Problem, Reason, Rejected, k8s, parse_ip};
use rudder_nft::{IfaceName, Name};
use tracing::debug;

use crate::cli::ProxyArgs;
use crate::manifests::Objects;

/// How node ports are exposed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodePortSpec {
    /// The node's primary IPs.
    Primary,
    /// Local addresses inside these CIDRs.
    Cidrs(Vec<Cidr>),
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
    pub hostname: String,
    pub node_ip_override: Vec<IpAddr>,
    pub nodeport: NodePortSpec,
    pub detect_local: DetectLocal,
    pub config: Config,
}

/// The host name, lower-cased, as kube-proxy defaults `--hostname-override`.
fn default_hostname() -> anyhow::Result<String> {
    let h = nix::unistd::gethostname()
        .context("cannot read the host name; pass --hostname-override")?;
    Ok(h.to_string_lossy().trim().to_lowercase())
}

impl Settings {
    pub fn from_args(args: &ProxyArgs) -> anyhow::Result<Settings> {
        if args.proxy_mode != "nftables" {
            bail!(
                "--proxy-mode {:?} is not supported: Rudder implements \"nftables\"",
                args.proxy_mode
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
        let nodeport = match args
            .nodeport_addresses
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
        {
            v if v.is_empty() || v == ["primary"] => NodePortSpec::Primary,
            v => {
                let mut cidrs = Vec::new();
                for raw in v {
                    cidrs.push(raw.parse::<Cidr>().with_context(|| {
                        format!("--nodeport-addresses: {raw:?} is neither \"primary\" nor a CIDR")
                    })?);
                }
                NodePortSpec::Cidrs(cidrs)
            }
        };
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
        Ok(Settings {
            hostname,
            node_ip_override,
            nodeport,
            detect_local,
            config: Config {
                table,
                masquerade_all: args.masquerade_all,
                masquerade_bit: args.masquerade_bit,
            },
        })
    }

    /// The node context for the compiler. `local_addrs` are the addresses of the local
    /// interfaces (`None` when compiling offline: node IPs stand in for them).
    pub fn node_context(&self, node: Option<&Node>, local_addrs: Option<&[IpAddr]>) -> NodeContext {
        let node_ips = self.node_ips(node);
        let node_port_ips = match &self.nodeport {
            NodePortSpec::Primary => NodePortIps::Only(node_ips),
            NodePortSpec::Cidrs(cidrs) if cidrs.iter().any(Cidr::is_all) => NodePortIps::All,
            NodePortSpec::Cidrs(cidrs) => {
                let candidates: Vec<IpAddr> = match local_addrs {
                    Some(a) => a.to_vec(),
                    None => node_ips,
                };
                let mut ips: Vec<IpAddr> = candidates
                    .into_iter()
                    .filter(|ip| !ip.is_loopback() && cidrs.iter().any(|c| c.contains(ip)))
                    .collect();
                ips.sort();
                ips.dedup();
                NodePortIps::Only(ips)
            }
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

/// Addresses of the local interfaces of this network namespace.
pub fn local_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            if let Some(addr) = a.address {
                if let Some(v4) = addr.as_sockaddr_in() {
                    out.push(IpAddr::V4(v4.ip()));
                } else if let Some(v6) = addr.as_sockaddr_in6() {
                    out.push(IpAddr::V6(v6.ip()));
                }
            }
        }
    }
    out
}

/// Whether this network namespace has IPv6.
pub fn ipv6_available() -> bool {
    std::path::Path::new("/proc/net/if_inet6").exists()
}

/// The model objects converted from manifests, with what was skipped.
#[derive(Debug, Default)]
pub struct Converted {
    pub services: Vec<rudder_model::Service>,
    pub slices: Vec<rudder_model::EndpointSlice>,
    pub node: Option<Node>,
    /// The service CIDRs of every ServiceCIDR object, sorted, without the refused ones.
    pub service_cidrs: Vec<Cidr>,
    pub problems: Vec<Problem>,
    pub ignored: usize,
}

/// The objects of `items` that are used: of several with the same key (kind, namespace and
/// name), the last one in file and document order; objects without a key are all kept. The
/// earlier duplicates are reported as problems. `key` is `None` for objects without a name.
fn last_of_each<'a, T>(
    items: impl IntoIterator<Item = &'a T>,
    kind: ObjectKind,
    key: impl Fn(&T) -> Option<(String, String)>,
    problems: &mut Vec<Problem>,
) -> Vec<&'a T>
where
    T: 'a,
{
    let items: Vec<&T> = items.into_iter().collect();
    let mut last: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        if let Some(k) = key(item)
            && last.insert(k.clone(), i).is_some()
        {
            problems.push(Problem {
                kind,
                namespace: k.0,
                name: k.1,
                reason: Reason::Duplicate,
            });
        }
    }
    items
        .iter()
        .enumerate()
        .filter(|(i, item)| key(item).is_none_or(|k| last.get(&k) == Some(i)))
        .map(|(_, item)| *item)
        .collect()
}

fn namespaced_key(m: &ObjectMeta) -> Option<(String, String)> {
    match (&m.namespace, &m.name) {
        (Some(ns), Some(n)) if !ns.is_empty() && !n.is_empty() => Some((ns.clone(), n.clone())),
        _ => None,
    }
}

fn cluster_key(m: &ObjectMeta) -> Option<(String, String)> {
    m.name
        .as_ref()
        .filter(|n| !n.is_empty())
        .map(|n| (String::new(), n.clone()))
}

/// Converts Kubernetes objects into the model; `hostname` picks this node's Node object.
/// `rudder compile` and `rudder run` both read manifests through this function, so they
/// resolve them alike. Of several objects of one kind with the same namespace and name (Nodes
/// and ServiceCIDRs: the same name), the last one in file order (files sorted by path, then
/// document order) is used, as if each document were applied in turn; if that one is invalid
/// or ignored, so is the object. The earlier ones are reported (`duplicate_object`).
pub fn convert(objs: &Objects, hostname: &str) -> Converted {
    let mut out = Converted::default();
    let services = last_of_each(
        &objs.services,
        ObjectKind::Service,
        |s| namespaced_key(&s.metadata),
        &mut out.problems,
    );
    for s in services {
        match k8s::service(s) {
            Ok((svc, problems)) => {
                out.problems.extend(problems);
                out.services.push(svc);
            }
            Err(Rejected::Ignored(why)) => {
                debug!(namespace = ?s.metadata.namespace, name = ?s.metadata.name, "ignoring service: {why}");
                out.ignored += 1;
            }
            Err(Rejected::Invalid(p)) => out.problems.push(p),
        }
    }
    let slices = last_of_each(
        &objs.slices,
        ObjectKind::EndpointSlice,
        |s| namespaced_key(&s.metadata),
        &mut out.problems,
    );
    for s in slices {
        match k8s::endpoint_slice(s) {
            Ok((slice, problems)) => {
                out.problems.extend(problems);
                out.slices.push(slice);
            }
            Err(Rejected::Ignored(_)) => out.ignored += 1,
            Err(Rejected::Invalid(p)) => out.problems.push(p),
        }
    }
    // Node names are matched case-insensitively, as kube-proxy matches --hostname-override.
    let this_node = objs
        .nodes
        .iter()
        .filter(|n| n.metadata.name.as_deref().map(str::to_lowercase).as_deref() == Some(hostname));
    let nodes = last_of_each(
        this_node,
        ObjectKind::Node,
        |_| Some((String::new(), hostname.to_owned())),
        &mut out.problems,
    );
    if let Some(n) = nodes.last() {
        let (node, problems) = k8s::node(n);
        out.problems.extend(problems);
        out.node = Some(node);
    }
    let cidrs = last_of_each(
        &objs.service_cidrs,
        ObjectKind::ServiceCidr,
        |c| cluster_key(&c.metadata),
        &mut out.problems,
    );
    for s in cidrs {
        let (cidrs, problems) = k8s::service_cidr(s);
        out.service_cidrs.extend(cidrs);
        out.problems.extend(problems);
    }
    out.service_cidrs.sort();
    out.service_cidrs.dedup();
    out
}

/// Families to program: IPv4, plus IPv6 when the namespace has it.
pub fn families(ipv6: bool) -> Vec<IpFamily> {
    if ipv6 {
        vec![IpFamily::V4, IpFamily::V6]
    } else {
        vec![IpFamily::V4]
    }
}
