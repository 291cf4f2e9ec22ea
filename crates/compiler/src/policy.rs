//! Which endpoints a service port uses: kube-proxy's `CategorizeEndpoints`
//! (`pkg/proxy/topology.go`), including topology hints and the terminating fallback.

use rudder_model::{ResolvedEndpoint, Service, TrafficPolicy};

/// The endpoints of one service port, split by the policy that uses them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Categorized<'a> {
    /// Endpoints for `Cluster` policies: ready ones (filtered by topology hints when they
    /// apply), or, when none is ready, the serving and terminating ones. Empty when the service
    /// uses no cluster endpoints.
    pub cluster: Vec<ResolvedEndpoint<'a>>,
    /// Endpoints on this node for `Local` policies: ready ones, or the serving and terminating
    /// ones when no local endpoint is ready. Empty when the service uses no local endpoints.
    pub local: Vec<ResolvedEndpoint<'a>>,
    /// Whether any endpoint is usable anywhere (ready, or serving and terminating).
    pub has_any: bool,
    /// The topology hints applied to the cluster endpoints, if any.
    pub topology: Topology,
}

/// Which topology hints were used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Topology {
    /// All endpoints are candidates.
    #[default]
    None,
    /// Only endpoints hinted for this node (`hints.forNodes`).
    SameNode,
    /// Only endpoints hinted for this node's zone (`hints.forZones`).
    SameZone,
}

/// Whether a service uses cluster-wide endpoints: for `internalTrafficPolicy: Cluster`, and
/// whenever it is externally accessible (short-circuited traffic uses them).
pub fn uses_cluster_endpoints(svc: &Service) -> bool {
    svc.internal_traffic_policy == TrafficPolicy::Cluster || svc.externally_accessible()
}

/// Whether a service uses node-local endpoints.
pub fn uses_local_endpoints(svc: &Service) -> bool {
    svc.internal_traffic_policy == TrafficPolicy::Local
        || (svc.external_traffic_policy == TrafficPolicy::Local && svc.externally_accessible())
}

/// Which hints apply: same-node when every ready endpoint has node hints and one names this
/// node; else same-zone when every ready endpoint has zone hints and one names this zone.
fn topology_mode(endpoints: &[ResolvedEndpoint<'_>], node: &str, zone: Option<&str>) -> Topology {
    let mut all_node_hints = true;
    let mut for_node = false;
    let mut all_zone_hints = true;
    let mut for_zone = false;
    let mut any_ready = false;
    for e in endpoints.iter().filter(|e| e.endpoint.ready) {
        any_ready = true;
        match &e.endpoint.node_hints {
            Some(h) if !h.is_empty() => for_node |= h.iter().any(|n| n == node),
            _ => all_node_hints = false,
        }
        match &e.endpoint.zone_hints {
            Some(h) if !h.is_empty() => for_zone |= zone.is_some_and(|z| h.iter().any(|x| x == z)),
            _ => all_zone_hints = false,
        }
    }
    if !any_ready {
        return Topology::None;
    }
    if all_node_hints && for_node {
        Topology::SameNode
    } else if all_zone_hints && for_zone {
        Topology::SameZone
    } else {
        Topology::None
    }
}

fn fits(e: &ResolvedEndpoint<'_>, topology: Topology, node: &str, zone: Option<&str>) -> bool {
    match topology {
        Topology::None => true,
        Topology::SameNode => e
            .endpoint
            .node_hints
            .as_ref()
            .is_some_and(|h| h.iter().any(|n| n == node)),
        Topology::SameZone => e
            .endpoint
            .zone_hints
            .as_ref()
            .is_some_and(|h| zone.is_some_and(|z| h.iter().any(|x| x == z))),
    }
}

/// Splits `endpoints` (sorted, deduplicated) by policy, for the node `node_name` in `zone`.
pub fn categorize<'a>(
    svc: &Service,
    endpoints: &'a [ResolvedEndpoint<'a>],
    node_name: &str,
    zone: Option<&str>,
) -> Categorized<'a> {
    let mut out = Categorized::default();
    if uses_cluster_endpoints(svc) {
        out.topology = topology_mode(endpoints, node_name, zone);
        out.cluster = endpoints
            .iter()
            .filter(|e| e.endpoint.ready && fits(e, out.topology, node_name, zone))
            .copied()
            .collect();
        if out.cluster.is_empty() {
            out.cluster = endpoints
                .iter()
                .filter(|e| e.endpoint.serving && e.endpoint.terminating)
                .copied()
                .collect();
        }
        out.has_any = !out.cluster.is_empty();
    }
    if !uses_local_endpoints(svc) {
        return out;
    }
    let is_local = |e: &&ResolvedEndpoint<'_>| e.endpoint.node_name.as_deref() == Some(node_name);
    out.has_any |= endpoints
        .iter()
        .any(|e| e.endpoint.ready || (e.endpoint.serving && e.endpoint.terminating));
    out.local = endpoints
        .iter()
        .filter(is_local)
        .filter(|e| e.endpoint.ready)
        .copied()
        .collect();
    if out.local.is_empty() {
        out.local = endpoints
            .iter()
            .filter(is_local)
            .filter(|e| e.endpoint.serving && e.endpoint.terminating)
            .copied()
            .collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rudder_model::{Endpoint, ServiceKey};

    fn ep(ip: &str, ready: bool, serving: bool, terminating: bool, node: &str) -> Endpoint {
        Endpoint {
            ready,
            serving,
            terminating,
            ..Endpoint::new(ip.parse().unwrap()).on_node(node)
        }
    }

    fn resolve(eps: &[Endpoint]) -> Vec<ResolvedEndpoint<'_>> {
        eps.iter()
            .map(|endpoint| ResolvedEndpoint { endpoint, port: 80 })
            .collect()
    }

    fn ips(eps: &[ResolvedEndpoint<'_>]) -> Vec<String> {
        eps.iter().map(|e| e.endpoint.address.to_string()).collect()
    }

    fn svc() -> Service {
        Service::new(
            ServiceKey::new("ns", "s"),
            vec!["10.0.0.1".parse().unwrap()],
        )
    }

    #[test]
    fn ready_endpoints_win_over_terminating_ones() {
        let raw = [
            ep("10.0.0.1", true, true, false, "a"),
            ep("10.0.0.2", false, true, true, "b"),
        ];
        let eps = resolve(&raw);
        let c = categorize(&svc(), &eps, "a", None);
        assert_eq!(ips(&c.cluster), vec!["10.0.0.1"]);
        assert!(
            c.local.is_empty(),
            "Cluster policies do not compute local endpoints"
        );
        assert!(c.has_any);
    }

    #[test]
    fn serving_terminating_endpoints_are_the_fallback() {
        let raw = [
            ep("10.0.0.1", false, false, true, "a"),
            ep("10.0.0.2", false, true, true, "b"),
        ];
        let eps = resolve(&raw);
        assert_eq!(
            ips(&categorize(&svc(), &eps, "a", None).cluster),
            vec!["10.0.0.2"]
        );
        let none = [ep("10.0.0.1", false, false, false, "a")];
        let eps = resolve(&none);
        let c = categorize(&svc(), &eps, "a", None);
        assert!(c.cluster.is_empty() && !c.has_any);
    }

    #[test]
    fn local_policy_keeps_only_this_nodes_endpoints() {
        let mut s = svc();
        s.internal_traffic_policy = TrafficPolicy::Local;
        let raw = [
            ep("10.0.0.1", true, true, false, "a"),
            ep("10.0.0.2", true, true, false, "b"),
        ];
        let eps = resolve(&raw);
        let c = categorize(&s, &eps, "b", None);
        assert_eq!(ips(&c.local), vec!["10.0.0.2"]);
        assert!(
            c.cluster.is_empty(),
            "internal Local without external access uses no cluster endpoints"
        );
        assert!(c.has_any);
        // Nothing local, but endpoints elsewhere: has_any stays true (traffic is dropped, not
        // rejected).
        let c = categorize(&s, &eps, "c", None);
        assert!(c.local.is_empty() && c.has_any);
        // Local fallback to serving-terminating endpoints of this node only.
        let raw = [
            ep("10.0.0.1", false, true, true, "b"),
            ep("10.0.0.2", true, true, false, "a"),
        ];
        let eps = resolve(&raw);
        assert_eq!(
            ips(&categorize(&s, &eps, "b", None).local),
            vec!["10.0.0.1"]
        );
    }

    fn hinted(ip: &str, node: &str, zones: &[&str], nodes: &[&str]) -> Endpoint {
        let mut e = ep(ip, true, true, false, node);
        e.zone_hints = (!zones.is_empty()).then(|| zones.iter().map(|z| z.to_string()).collect());
        e.node_hints = (!nodes.is_empty()).then(|| nodes.iter().map(|n| n.to_string()).collect());
        e
    }

    #[test]
    fn topology_hints_apply_only_when_every_ready_endpoint_has_them() {
        let raw = [
            hinted("10.0.0.1", "a", &["z1"], &["a"]),
            hinted("10.0.0.2", "b", &["z1"], &["b"]),
            hinted("10.0.0.3", "c", &["z2"], &["c"]),
        ];
        let eps = resolve(&raw);
        // Same-node wins when this node is named.
        let c = categorize(&svc(), &eps, "b", Some("z1"));
        assert_eq!(
            (c.topology, ips(&c.cluster)),
            (Topology::SameNode, vec!["10.0.0.2".to_string()])
        );
        // No node hint for this node: same zone.
        let c = categorize(&svc(), &eps, "d", Some("z1"));
        assert_eq!(
            (c.topology, ips(&c.cluster)),
            (
                Topology::SameZone,
                vec!["10.0.0.1".to_string(), "10.0.0.2".to_string()]
            )
        );
        // No hint for this zone, or no zone label: everything.
        assert_eq!(categorize(&svc(), &eps, "d", Some("z9")).cluster.len(), 3);
        assert_eq!(categorize(&svc(), &eps, "d", None).cluster.len(), 3);
        // One ready endpoint without hints disables them; a non-ready one does not count.
        let mut raw2 = raw.to_vec();
        raw2.push(hinted("10.0.0.4", "d", &[], &[]));
        assert_eq!(
            categorize(&svc(), &resolve(&raw2), "d", Some("z1")).topology,
            Topology::None
        );
        raw2[3].ready = false;
        raw2[3].serving = false;
        assert_eq!(
            categorize(&svc(), &resolve(&raw2), "d", Some("z1")).topology,
            Topology::SameZone
        );
    }
}
