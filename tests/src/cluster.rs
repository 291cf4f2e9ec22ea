//! A dual-stack two-node cluster made of network namespaces, for tests where "local" and
//! "remote" endpoints differ (`externalTrafficPolicy: Local`, `internalTrafficPolicy: Local`).
//!
//! ```text
//!                        lan: bridge br0 (layer 2 only, no addresses)
//!            ┌──────────────────────┬──────────────────────┬─────────────────────┐
//!   eth0 172.18.0.2          eth0 172.18.0.3          eth0 172.18.0.10
//!        node-0                   node-1                   client
//!   cbr0 10.244.1.1          cbr0 10.244.2.1          (no default route, no route to pods)
//!    ├─ pod-0 eth0 10.244.1.2 ├─ pod-2 eth0 10.244.2.2
//!    └─ pod-1 eth0 10.244.1.3 └─ pod-3 eth0 10.244.2.3
//! ```
//!
//! * The "cluster network" is a Linux bridge `br0` in a dedicated `lan` namespace; node 0,
//!   node 1 and the client each have an `eth0` plugged into it (veth pairs whose `lan` ends
//!   `to-node0`, `to-node1`, `to-client` are `br0` ports). IPv6 on it is
//!   `fc00:f853:ccd:e793::/64` (nodes `::2`, `::3`, client `::10`).
//! * Each node has a bridge `cbr0` holding its pods' gateway addresses (`10.244.{n+1}.1/24`,
//!   `fd00:10:244:{n+1}::1/64`), with the node ends of the pods' veth pairs (`vpod{i}`) as
//!   ports, like the kindnet/bridge CNIs. Pods on one node talk to each other over `cbr0` at
//!   layer 2; everything else goes through their node's routing.
//! * Pod subnets are routed between the nodes over the LAN without any NAT: node 0 has
//!   `10.244.2.0/24 via 172.18.0.3` and `fd00:10:244:2::/64 via fc00:f853:ccd:e793::3`, node 1
//!   the mirror routes. Nodes forward (IPv4 and IPv6), have `rp_filter` off, do not send ICMP
//!   redirects, and have a default route via the client (like a node behind its docker
//!   bridge), so service VIPs are routable on them before DNAT.
//! * The client is a plain external host: it reaches the nodes' LAN addresses only. Routes
//!   towards service VIPs or load-balancer IPs are added per test with
//!   [`TwoNodes::client_route_via`], which chooses the node that receives the traffic.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use crate::netns::{Netns, ip};
use crate::topo::{ETH0, address, default_route, link_pair};

/// Number of node namespaces in a [`TwoNodes`].
pub const NODE_COUNT: usize = 2;

/// Number of pods on each node of a [`TwoNodes`].
pub const PODS_PER_NODE: usize = 2;

/// Total number of pod namespaces in a [`TwoNodes`].
pub const POD_COUNT: usize = NODE_COUNT * PODS_PER_NODE;

/// Name of the LAN bridge inside the `lan` namespace.
pub const LAN_BRIDGE: &str = "br0";

/// Name of the pod bridge inside each node namespace.
pub const POD_BRIDGE: &str = "cbr0";

/// Sysctls applied to every namespace (all of them are per-namespace).
const COMMON_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.icmp_ratelimit", "0"),
    ("net.ipv6.icmp.ratelimit", "0"),
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
];

/// Sysctls applied to the node namespaces, before their interfaces are created (so the
/// `default` values apply to them).
///
/// ICMP redirects are off because a node that forwards DNATed traffic to another node goes
/// back out of the interface the traffic came in on; a redirect would make the client's
/// routing depend on what earlier tests did.
const NODE_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
    ("net.ipv4.conf.all.send_redirects", "0"),
    ("net.ipv4.conf.default.send_redirects", "0"),
];

/// Two nodes of one cluster with two pods each, an external client, and the LAN joining
/// nodes and client, each in its own namespace (eight in total). Dropping it deletes all
/// namespaces, and with them every interface, route and nftables rule they hold.
#[derive(Debug)]
pub struct TwoNodes {
    /// The node namespaces, `nodes[n]` being `node-{n}`: where a proxy runs. Interfaces:
    /// `eth0` (LAN), `cbr0` (pod bridge), `vpod{i}` (ports of `cbr0`, one per local pod).
    pub nodes: Vec<Netns>,
    /// The pod namespaces, `pods[i]` being `pod-{i}`; pods 0 and 1 run on node 0, pods 2 and
    /// 3 on node 1 (see [`TwoNodes::pod_node`]). Each has a single `eth0`.
    pub pods: Vec<Netns>,
    /// The external client namespace; its `eth0` is plugged into the LAN.
    pub client: Netns,
    /// The namespace holding the LAN bridge `br0` and its ports `to-node0`, `to-node1` and
    /// `to-client`. It has no addresses and no routes; useful for capturing LAN traffic.
    pub lan: Netns,
}

impl TwoNodes {
    /// Creates and wires the eight namespaces.
    ///
    /// On any failure the namespaces created so far are deleted before the error is returned.
    pub fn new() -> io::Result<TwoNodes> {
        let lan = Netns::new("rdr-tn-lan")?;
        let nodes = (0..NODE_COUNT)
            .map(|n| Netns::new(&format!("rdr-tn-node{n}")))
            .collect::<io::Result<Vec<_>>>()?;
        let pods = (0..POD_COUNT)
            .map(|i| Netns::new(&format!("rdr-tn-pod{i}")))
            .collect::<io::Result<Vec<_>>>()?;
        let client = Netns::new("rdr-tn-client")?;
        let cluster = TwoNodes {
            nodes,
            pods,
            client,
            lan,
        };
        cluster.wire()?;
        Ok(cluster)
    }

    fn wire(&self) -> io::Result<()> {
        for ns in self.all() {
            for (key, value) in COMMON_SYSCTLS {
                ns.sysctl(key, value)?;
            }
        }
        for node in &self.nodes {
            for (key, value) in NODE_SYSCTLS {
                node.sysctl(key, value)?;
            }
        }

        // The LAN: br0 in its own namespace, with node 0, node 1 and the client plugged in.
        let lan = self.lan.name();
        add_bridge(lan, LAN_BRIDGE)?;
        for (n, node) in self.nodes.iter().enumerate() {
            let port = format!("to-node{n}");
            plug(lan, &port, node.name())?;
            address(node.name(), ETH0, &format!("{}/24", self.node_ipv4(n)))?;
            address(node.name(), ETH0, &format!("{}/64", self.node_ipv6(n)))?;
        }
        let client = self.client.name();
        plug(lan, "to-client", client)?;
        address(client, ETH0, &format!("{}/24", self.client_ipv4()))?;
        address(client, ETH0, &format!("{}/64", self.client_ipv6()))?;

        for (n, node_ns) in self.nodes.iter().enumerate() {
            let node = node_ns.name();
            // The pod bridge gets its addresses once its ports are up, so its routes are
            // usable straight away.
            add_bridge(node, POD_BRIDGE)?;
            for i in self.pods_on_node(n) {
                let pod = self.pod(i)?.name();
                let port = format!("vpod{i}");
                link_pair(node, &port, pod, ETH0)?;
                ip(&["-n", node, "link", "set", &port, "master", POD_BRIDGE])?;
                address(pod, ETH0, &format!("{}/24", self.pod_ipv4(i)))?;
                address(pod, ETH0, &format!("{}/64", self.pod_ipv6(i)))?;
            }
            let (gw4, gw6) = (self.pod_gateway_ipv4(n), self.pod_gateway_ipv6(n));
            address(node, POD_BRIDGE, &format!("{gw4}/24"))?;
            address(node, POD_BRIDGE, &format!("{gw6}/64"))?;
            for i in self.pods_on_node(n) {
                let pod = self.pod(i)?.name();
                default_route(pod, &gw4.to_string())?;
                default_route(pod, &gw6.to_string())?;
            }

            // The other node's pod subnet, over the LAN, without NAT.
            for other in (0..NODE_COUNT).filter(|&m| m != n) {
                route(
                    node,
                    &self.pod_cidr_ipv4(other),
                    &self.node_ipv4(other).to_string(),
                )?;
                route(
                    node,
                    &self.pod_cidr_ipv6(other),
                    &self.node_ipv6(other).to_string(),
                )?;
            }
            default_route(node, &self.client_ipv4().to_string())?;
            default_route(node, &self.client_ipv6().to_string())?;
        }
        Ok(())
    }

    /// All namespaces: nodes, pods, client, then the LAN.
    pub fn all(&self) -> impl Iterator<Item = &Netns> {
        self.nodes
            .iter()
            .chain(self.pods.iter())
            .chain([&self.client, &self.lan])
    }

    /// Makes the client send traffic for `prefix` (CIDR notation, IPv4 or IPv6, e.g.
    /// `10.96.0.0/12`, `fd00:10:96::/112` or a load-balancer range such as
    /// `192.168.122.0/24`) to node `node`'s LAN address of the same family.
    ///
    /// Uses `ip route replace`, so calling it again for the same prefix moves the traffic to
    /// another node. Fails with [`io::ErrorKind::InvalidInput`] for a node index other than 0
    /// or 1.
    pub fn client_route_via(&self, prefix: &str, node: usize) -> io::Result<()> {
        if node >= NODE_COUNT {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("node index {node} out of range (0..{NODE_COUNT})"),
            ));
        }
        let gateway = if prefix.contains(':') {
            self.node_ipv6(node).to_string()
        } else {
            self.node_ipv4(node).to_string()
        };
        let family = family(prefix);
        ip(&[
            "-n",
            self.client.name(),
            family,
            "route",
            "replace",
            prefix,
            "via",
            &gateway,
        ])?;
        Ok(())
    }

    /// Removes a route added with [`TwoNodes::client_route_via`]; the client then has no
    /// route for `prefix` any more.
    pub fn remove_client_route(&self, prefix: &str) -> io::Result<()> {
        ip(&[
            "-n",
            self.client.name(),
            family(prefix),
            "route",
            "del",
            prefix,
        ])?;
        Ok(())
    }

    /// The node's name, `node-{n}` (what a proxy running there would call its node).
    pub fn node_name(&self, n: usize) -> String {
        format!("node-{n}")
    }

    /// The pod's name as used by its echo servers: `pod-{i}`.
    pub fn pod_name(&self, i: usize) -> String {
        format!("pod-{i}")
    }

    /// Index of the node pod `i` runs on: 0 for pods 0 and 1, 1 for pods 2 and 3.
    pub fn pod_node(&self, i: usize) -> usize {
        i / PODS_PER_NODE
    }

    /// Indices of the pods running on node `n` (`0..2` for node 0, `2..4` for node 1).
    pub fn pods_on_node(&self, n: usize) -> Range<usize> {
        n * PODS_PER_NODE..(n + 1) * PODS_PER_NODE
    }

    /// Node `n`'s IPv4 address on the LAN, `172.18.0.{n+2}`.
    pub fn node_ipv4(&self, n: usize) -> Ipv4Addr {
        Ipv4Addr::new(172, 18, 0, octet(n + 2))
    }

    /// Node `n`'s IPv6 address on the LAN, `fc00:f853:ccd:e793::{n+2}`.
    pub fn node_ipv6(&self, n: usize) -> Ipv6Addr {
        lan_ipv6(u16::from(octet(n + 2)))
    }

    /// The client's IPv4 address on the LAN, `172.18.0.10`.
    pub fn client_ipv4(&self) -> Ipv4Addr {
        Ipv4Addr::new(172, 18, 0, 10)
    }

    /// The client's IPv6 address on the LAN, `fc00:f853:ccd:e793::10`.
    pub fn client_ipv6(&self) -> Ipv6Addr {
        lan_ipv6(0x10)
    }

    /// Pod `i`'s IPv4 address, `10.244.{n+1}.{k+2}` where `n` is its node and `k` its index
    /// on that node (`10.244.1.2`, `10.244.1.3`, `10.244.2.2`, `10.244.2.3`).
    pub fn pod_ipv4(&self, i: usize) -> Ipv4Addr {
        let (n, k) = (self.pod_node(i), i % PODS_PER_NODE);
        Ipv4Addr::new(10, 244, octet(n + 1), octet(k + 2))
    }

    /// Pod `i`'s IPv6 address, `fd00:10:244:{n+1}::{k+2}` (see [`TwoNodes::pod_ipv4`]).
    pub fn pod_ipv6(&self, i: usize) -> Ipv6Addr {
        let (n, k) = (self.pod_node(i), i % PODS_PER_NODE);
        pod_ipv6(n, u16::from(octet(k + 2)))
    }

    /// Node `n`'s address on its pod bridge `cbr0` (its pods' gateway), `10.244.{n+1}.1`.
    pub fn pod_gateway_ipv4(&self, n: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, octet(n + 1), 1)
    }

    /// Node `n`'s IPv6 address on `cbr0`, `fd00:10:244:{n+1}::1`.
    pub fn pod_gateway_ipv6(&self, n: usize) -> Ipv6Addr {
        pod_ipv6(n, 1)
    }

    /// Node `n`'s IPv4 pod subnet, `10.244.{n+1}.0/24`.
    pub fn pod_cidr_ipv4(&self, n: usize) -> String {
        format!("10.244.{}.0/24", octet(n + 1))
    }

    /// Node `n`'s IPv6 pod subnet, `fd00:10:244:{n+1}::/64`.
    pub fn pod_cidr_ipv6(&self, n: usize) -> String {
        format!("{}/64", pod_ipv6(n, 0))
    }

    fn pod(&self, i: usize) -> io::Result<&Netns> {
        self.pods
            .get(i)
            .ok_or_else(|| io::Error::other(format!("no pod namespace {i}")))
    }
}

/// `v` as an address byte (saturating; only small indices are meaningful).
fn octet(v: usize) -> u8 {
    u8::try_from(v).unwrap_or(u8::MAX)
}

/// `fc00:f853:ccd:e793::{host}`.
fn lan_ipv6(host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfc00, 0xf853, 0xccd, 0xe793, 0, 0, 0, host)
}

/// `fd00:10:244:{n+1}::{host}`.
fn pod_ipv6(n: usize, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0x244, u16::from(octet(n + 1)), 0, 0, 0, host)
}

/// `-6` for an IPv6 prefix or address, `-4` otherwise.
fn family(prefix: &str) -> &'static str {
    if prefix.contains(':') { "-6" } else { "-4" }
}

/// Creates bridge `name` in namespace `ns` and brings it up. STP is off, so ports forward as
/// soon as they are up, and multicast snooping is off, so IPv6 neighbour discovery never
/// depends on MLD state.
fn add_bridge(ns: &str, name: &str) -> io::Result<()> {
    ip(&[
        "-n",
        ns,
        "link",
        "add",
        name,
        "type",
        "bridge",
        "stp_state",
        "0",
        "forward_delay",
        "0",
        "mcast_snooping",
        "0",
    ])?;
    ip(&["-n", ns, "link", "set", name, "up"])?;
    Ok(())
}

/// Plugs namespace `host` into the LAN: a veth pair with `port` in `lan` (a port of
/// [`LAN_BRIDGE`]) and `eth0` in `host`.
fn plug(lan: &str, port: &str, host: &str) -> io::Result<()> {
    link_pair(lan, port, host, ETH0)?;
    ip(&["-n", lan, "link", "set", port, "master", LAN_BRIDGE])?;
    Ok(())
}

/// Adds a route to `prefix` via `gateway` in namespace `ns`.
fn route(ns: &str, prefix: &str, gateway: &str) -> io::Result<()> {
    ip(&[
        "-n",
        ns,
        family(prefix),
        "route",
        "add",
        prefix,
        "via",
        gateway,
    ])?;
    Ok(())
}
