//! A small dual-stack cluster-like topology made of network namespaces.
//!
//! ```text
//!   pod-0 eth0 10.244.1.2 ─── vpod0 10.244.1.1 ┐
//!   pod-1 eth0 10.244.2.2 ─── vpod1 10.244.2.1 ├─ node ── eth0 172.18.0.2 ─── eth0 172.18.0.10 client
//!   pod-2 eth0 10.244.3.2 ─── vpod2 10.244.3.1 ┘
//! ```
//!
//! IPv6 mirrors IPv4: pods use `fd00:10:244:{i+1}::2/64` (node side `::1`), the client link is
//! `fc00:f853:ccd:e793::/64` (node `::2`, client `::10`). Pods and the client route everything
//! via the node, which forwards, so service VIPs (e.g. `10.96.0.1`, `fd00:10:96::1`) reached
//! from the client or a pod pass through the node's netfilter hooks.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::netns::{Netns, ip};

/// Number of pod namespaces in a [`Topology`].
pub const POD_COUNT: usize = 3;

/// Name of the node's interface towards the client, and of every pod's and the client's
/// interface towards the node.
pub const ETH0: &str = "eth0";

/// Sysctls applied to every namespace of the topology (all of them are per-namespace).
const COMMON_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.icmp_ratelimit", "0"),
    ("net.ipv6.icmp.ratelimit", "0"),
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
];

/// Sysctls applied to the node namespace only, before its interfaces are created (so the
/// `default` values apply to them).
const NODE_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
];

/// A node, three pods and an external client, each in its own namespace, wired with veth
/// pairs. Dropping it deletes all namespaces (and with them all interfaces and rules).
#[derive(Debug)]
pub struct Topology {
    /// The node namespace: routes between pods and the client and is where Rudder's
    /// nftables rules go. Interfaces: `eth0` (client side), `vpod0`..`vpod2` (pod side).
    pub node: Netns,
    /// The pod namespaces, `pods[i]` being `pod-{i}`; each has a single `eth0`.
    pub pods: Vec<Netns>,
    /// The external client namespace; its `eth0` faces the node's `eth0`.
    pub client: Netns,
}

impl Topology {
    /// Creates and wires the five namespaces.
    ///
    /// On any failure the namespaces created so far are deleted before the error is returned.
    pub fn new() -> io::Result<Topology> {
        let node = Netns::new("rdr-node")?;
        let mut pods = Vec::with_capacity(POD_COUNT);
        for i in 0..POD_COUNT {
            pods.push(Netns::new(&format!("rdr-pod{i}"))?);
        }
        let client = Netns::new("rdr-client")?;
        let topo = Topology { node, pods, client };
        topo.wire()?;
        Ok(topo)
    }

    fn wire(&self) -> io::Result<()> {
        for ns in self.all() {
            for (key, value) in COMMON_SYSCTLS {
                ns.sysctl(key, value)?;
            }
        }
        for (key, value) in NODE_SYSCTLS {
            self.node.sysctl(key, value)?;
        }

        let node = self.node.name();
        for (i, pod) in self.pods.iter().enumerate() {
            let node_if = format!("vpod{i}");
            link_pair(node, &node_if, pod.name(), ETH0)?;
            let (pod4, node4) = (self.pod_ipv4(i), pod_gateway_ipv4(i));
            let (pod6, node6) = (self.pod_ipv6(i), pod_gateway_ipv6(i));
            address(node, &node_if, &format!("{node4}/24"))?;
            address(node, &node_if, &format!("{node6}/64"))?;
            address(pod.name(), ETH0, &format!("{pod4}/24"))?;
            address(pod.name(), ETH0, &format!("{pod6}/64"))?;
            default_route(pod.name(), &node4.to_string())?;
            default_route(pod.name(), &node6.to_string())?;
        }

        let client = self.client.name();
        link_pair(node, ETH0, client, ETH0)?;
        address(node, ETH0, &format!("{}/24", self.node_ipv4()))?;
        address(node, ETH0, &format!("{}/64", self.node_ipv6()))?;
        address(client, ETH0, &format!("{}/24", self.client_ipv4()))?;
        address(client, ETH0, &format!("{}/64", self.client_ipv6()))?;
        default_route(client, &self.node_ipv4().to_string())?;
        default_route(client, &self.node_ipv6().to_string())?;
        // Like a real node (kind's node behind its docker bridge), the node has a default
        // route: traffic to service VIPs must be routable before it is DNATed, and replies to
        // off-node clients need a way out.
        let node = self.node.name();
        default_route(node, &self.client_ipv4().to_string())?;
        default_route(node, &self.client_ipv6().to_string())?;
        Ok(())
    }

    /// All namespaces of the topology: node, pods, client.
    pub fn all(&self) -> impl Iterator<Item = &Netns> {
        std::iter::once(&self.node)
            .chain(self.pods.iter())
            .chain(std::iter::once(&self.client))
    }

    /// The pod's name as used by its echo servers: `pod-{i}`.
    pub fn pod_name(&self, i: usize) -> String {
        format!("pod-{i}")
    }

    /// Pod `i`'s IPv4 address, `10.244.{i+1}.2`.
    pub fn pod_ipv4(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, subnet(i), 2)
    }

    /// Pod `i`'s IPv6 address, `fd00:10:244:{i+1}::2`.
    pub fn pod_ipv6(&self, i: usize) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x10, 0x244, u16::from(subnet(i)), 0, 0, 0, 2)
    }

    /// The node's IPv4 address on the client link, `172.18.0.2`.
    pub fn node_ipv4(&self) -> Ipv4Addr {
        Ipv4Addr::new(172, 18, 0, 2)
    }

    /// The node's IPv6 address on the client link, `fc00:f853:ccd:e793::2`.
    pub fn node_ipv6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfc00, 0xf853, 0xccd, 0xe793, 0, 0, 0, 2)
    }

    /// The client's IPv4 address, `172.18.0.10`.
    pub fn client_ipv4(&self) -> Ipv4Addr {
        Ipv4Addr::new(172, 18, 0, 10)
    }

    /// The client's IPv6 address, `fc00:f853:ccd:e793::10`.
    pub fn client_ipv6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfc00, 0xf853, 0xccd, 0xe793, 0, 0, 0, 0x10)
    }

    /// The node's IPv4 address on pod `i`'s link (the pod's gateway), `10.244.{i+1}.1`.
    pub fn pod_gateway_ipv4(&self, i: usize) -> Ipv4Addr {
        pod_gateway_ipv4(i)
    }

    /// The node's IPv6 address on pod `i`'s link (the pod's gateway), `fd00:10:244:{i+1}::1`.
    pub fn pod_gateway_ipv6(&self, i: usize) -> Ipv6Addr {
        pod_gateway_ipv6(i)
    }

    /// Adds an extra address (CIDR notation, IPv4 or IPv6) to the node's `eth0`, e.g. a
    /// load-balancer or external IP. IPv6 addresses are added with `nodad`.
    pub fn add_node_address(&self, cidr: &str) -> io::Result<()> {
        address(self.node.name(), ETH0, cidr)
    }
}

/// Third octet / fourth hextet of pod `i`'s subnet.
fn subnet(i: usize) -> u8 {
    u8::try_from(i + 1).unwrap_or(u8::MAX)
}

fn pod_gateway_ipv4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, subnet(i), 1)
}

fn pod_gateway_ipv6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0x244, u16::from(subnet(i)), 0, 0, 0, 1)
}

/// Creates a veth pair from inside namespace `ns_a` with its peer placed directly into
/// `ns_b`, so neither end ever exists in the root namespace, and brings both ends up.
pub(crate) fn link_pair(ns_a: &str, if_a: &str, ns_b: &str, if_b: &str) -> io::Result<()> {
    ip(&[
        "-n", ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b,
    ])?;
    ip(&["-n", ns_a, "link", "set", if_a, "up"])?;
    ip(&["-n", ns_b, "link", "set", if_b, "up"])?;
    Ok(())
}

/// Adds `cidr` to `dev` in namespace `ns`; IPv6 addresses get `nodad`.
pub(crate) fn address(ns: &str, dev: &str, cidr: &str) -> io::Result<()> {
    if cidr.contains(':') {
        ip(&["-n", ns, "-6", "addr", "add", cidr, "dev", dev, "nodad"])?;
    } else {
        ip(&["-n", ns, "-4", "addr", "add", cidr, "dev", dev])?;
    }
    Ok(())
}

/// Adds a default route via `gateway` (IPv4 or IPv6) in namespace `ns`.
pub(crate) fn default_route(ns: &str, gateway: &str) -> io::Result<()> {
    let family = if gateway.contains(':') { "-6" } else { "-4" };
    ip(&["-n", ns, family, "route", "add", "default", "via", gateway])?;
    Ok(())
}
