//! Which endpoints a service port uses: kube-proxy's `CategorizeEndpoints`.

use rudder_model::{ResolvedEndpoint, Service, TrafficPolicy};

/// The endpoints of one service port, split by the policy that uses them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Categorized<'a> {
    /// Endpoints for `Cluster` policies: ready ones, or, when none is ready, the serving and
    /// terminating ones.
    pub cluster: Vec<&'a ResolvedEndpoint>,
    /// Endpoints on this node for `Local` policies, with the same terminating fallback.
    pub local: Vec<&'a ResolvedEndpoint>,
    /// Whether any endpoint is usable anywhere (ready, or serving and terminating).
    pub has_any: bool,
}

fn pick<'a>(eps: impl Iterator<Item = &'a ResolvedEndpoint> + Clone) -> Vec<&'a ResolvedEndpoint> {
    let ready: Vec<_> = eps.clone().filter(|e| e.ready).collect();
    if !ready.is_empty() {
        return ready;
    }
    eps.filter(|e| e.serving && e.terminating).collect()
}

/// Splits `endpoints` (sorted, deduplicated) by policy for the node `node_name`.
///
/// Topology hints are not applied yet: every cluster endpoint is used.
pub fn categorize<'a>(
    svc: &Service,
    endpoints: &'a [ResolvedEndpoint],
    node_name: &str,
) -> Categorized<'a> {
    let uses_local = svc.internal_traffic_policy == TrafficPolicy::Local
        || (svc.external_traffic_policy == TrafficPolicy::Local && svc.externally_accessible());
    let cluster = pick(endpoints.iter());
    let local = if uses_local {
        pick(
            endpoints
                .iter()
                .filter(|e| e.node_name.as_deref() == Some(node_name)),
        )
    } else {
        Vec::new()
    };
    let has_any = endpoints
        .iter()
        .any(|e| e.ready || (e.serving && e.terminating));
    Categorized {
        cluster,
        local,
        has_any,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rudder_model::{ServiceKey, ServiceType};

    fn ep(ip: &str, ready: bool, serving: bool, terminating: bool, node: &str) -> ResolvedEndpoint {
        ResolvedEndpoint {
            ip: ip.parse().unwrap(),
            port: 80,
            ready,
            serving,
            terminating,
            node_name: Some(node.into()),
            zone: None,
            zone_hints: None,
            node_hints: None,
        }
    }

    fn svc() -> Service {
        Service {
            key: ServiceKey::new("ns", "s"),
            service_type: ServiceType::ClusterIp,
            cluster_ips: vec!["10.0.0.1".parse().unwrap()],
            external_ips: vec![],
            load_balancer_ips: vec![],
            load_balancer_source_ranges: vec![],
            external_traffic_policy: TrafficPolicy::Cluster,
            internal_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: None,
            session_affinity_timeout: None,
            ports: vec![],
        }
    }

    #[test]
    fn ready_endpoints_win_over_terminating_ones() {
        let eps = vec![
            ep("10.0.0.1", true, true, false, "a"),
            ep("10.0.0.2", false, true, true, "b"),
        ];
        let c = categorize(&svc(), &eps, "a");
        assert_eq!(c.cluster.len(), 1);
        assert_eq!(c.cluster[0].ip.to_string(), "10.0.0.1");
        assert!(
            c.local.is_empty(),
            "Cluster policies do not compute local endpoints"
        );
        assert!(c.has_any);
    }

    #[test]
    fn serving_terminating_endpoints_are_the_fallback() {
        let eps = vec![
            ep("10.0.0.1", false, false, true, "a"),
            ep("10.0.0.2", false, true, true, "b"),
        ];
        let c = categorize(&svc(), &eps, "a");
        assert_eq!(
            c.cluster
                .iter()
                .map(|e| e.ip.to_string())
                .collect::<Vec<_>>(),
            vec!["10.0.0.2"]
        );
        let none = vec![ep("10.0.0.1", false, false, false, "a")];
        let c = categorize(&svc(), &none, "a");
        assert!(c.cluster.is_empty() && !c.has_any);
    }

    #[test]
    fn local_policy_keeps_only_this_nodes_endpoints() {
        let mut s = svc();
        s.internal_traffic_policy = TrafficPolicy::Local;
        let eps = vec![
            ep("10.0.0.1", true, true, false, "a"),
            ep("10.0.0.2", true, true, false, "b"),
        ];
        let c = categorize(&s, &eps, "b");
        assert_eq!(
            c.local.iter().map(|e| e.ip.to_string()).collect::<Vec<_>>(),
            vec!["10.0.0.2"]
        );
        assert_eq!(c.cluster.len(), 2);
    }
}
