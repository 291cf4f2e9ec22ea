//! What the compiler refuses to program because of the node it compiles for: service
//! addresses that are the node's own, and service CIDRs that would cover the node or the pod
//! network. The model refuses what is wrong on its face (loopback, multicast, `/0`, ...); these
//! checks need the [`NodeContext`], which only the compiler has, and run again whenever it
//! changes (a node context change is always a full compile).
//!
//! Refusals are returned as [`Problem`]s (see [`crate::Compiler::take_problems`]): the compiler
//! does no logging, its caller logs and counts them.

use std::net::IpAddr;

use rudder_model::{
    AddressField, Cidr, ObjectKind, Problem, Reason, Service, service_cidr_refusal,
};

use crate::{LocalDetector, NodeContext, NodePortIps};

/// The node's own addresses as far as the context knows them: its primary IPs and, when they
/// are listed, the node-port addresses. A service address equal to one of them would capture
/// the node's own traffic on that port (and a ClusterIP, through `cluster-ips-check`, every
/// other port too).
pub fn node_addresses(node: &NodeContext) -> Vec<IpAddr> {
    let mut out = node.ips.clone();
    if let NodePortIps::Only(ips) = &node.node_port_ips {
        out.extend(ips.iter().copied());
    }
    out.sort();
    out.dedup();
    out
}

/// The service CIDRs that may be programmed, and a problem for each one refused: broader than
/// /8 (IPv4) or /64 (IPv6), overlapping a special range, containing one of the node's
/// addresses, or overlapping the pod network (the local detector's CIDRs: `--cluster-cidr`, or
/// the Node's podCIDRs). The union of ServiceCIDR objects no longer has their names, so the
/// problems carry only the prefix.
pub fn service_cidrs(node: &NodeContext) -> (Vec<Cidr>, Vec<Problem>) {
    let addrs = node_addresses(node);
    let pods: &[Cidr] = match &node.local_detector {
        LocalDetector::Cidrs(c) => c,
        _ => &[],
    };
    let mut ok = Vec::new();
    let mut problems = Vec::new();
    for cidr in &node.service_cidrs {
        let reason = service_cidr_refusal(cidr)
            .or_else(|| {
                addrs
                    .iter()
                    .find(|a| cidr.contains(a))
                    .map(|a| Reason::ServiceCidrCoversNode {
                        cidr: *cidr,
                        address: *a,
                    })
            })
            .or_else(|| {
                pods.iter()
                    .find(|p| p.overlaps(cidr))
                    .map(|p| Reason::ServiceCidrOverlapsPods {
                        cidr: *cidr,
                        pods: *p,
                    })
            });
        match reason {
            Some(reason) => problems.push(Problem {
                kind: ObjectKind::ServiceCidr,
                namespace: String::new(),
                name: String::new(),
                reason,
            }),
            None => ok.push(*cidr),
        }
    }
    (ok, problems)
}

/// The ClusterIP of `svc` that is one of `node_addrs` (see [`node_addresses`]), if any: the
/// compiler then refuses the whole service.
pub fn refused_cluster_ip(svc: &Service, node_addrs: &[IpAddr]) -> Option<IpAddr> {
    svc.cluster_ips
        .iter()
        .find(|ip| node_addrs.contains(ip))
        .copied()
}

/// The problem for a service address that is one of the node's.
pub(crate) fn node_address_problem(svc: &Service, field: AddressField, address: IpAddr) -> Problem {
    Problem {
        kind: ObjectKind::Service,
        namespace: svc.key.namespace.clone(),
        name: svc.key.name.clone(),
        reason: Reason::NodeAddress { field, address },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_cidrs_covering_the_node_or_the_pods_are_refused() {
        let c = |s: &str| s.parse::<Cidr>().unwrap();
        let mut node = NodeContext::new(
            "n".into(),
            NodePortIps::Only(vec!["192.168.7.7".parse().unwrap()]),
        );
        node.ips = vec!["10.0.0.5".parse().unwrap()];
        node.local_detector = LocalDetector::Cidrs(vec![c("10.244.0.0/16")]);
        node.service_cidrs = vec![
            c("10.96.0.0/12"),
            c("10.0.0.0/24"),
            c("192.168.0.0/16"),
            c("10.244.128.0/20"),
            c("10.0.0.0/8"),
            c("0.0.0.0/0"),
            c("fd00:10:96::/112"),
        ];
        let (ok, problems) = service_cidrs(&node);
        assert_eq!(ok, vec![c("10.96.0.0/12"), c("fd00:10:96::/112")]);
        let labels: Vec<&str> = problems.iter().map(|p| p.reason.label()).collect();
        assert_eq!(
            labels,
            [
                "service_cidr_covers_node",
                "service_cidr_covers_node",
                "service_cidr_overlaps_pod_network",
                "service_cidr_covers_node",
                "service_cidr_too_broad"
            ]
        );
        assert_eq!(
            problems[1].to_string(),
            "ServiceCIDR: 192.168.0.0/16 contains this node's address 192.168.7.7: refused"
        );
    }
}
