//! Which endpoints a service port uses: kube-proxy's `CategorizeEndpoints`.

use rudder_model::{ResolvedEndpoint, Service, TrafficPolicy};

/// The endpoints of one service port, split by the policy that uses them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Categorized<'a> {
    /// Endpoints for `Cluster` policies: ready ones, or, when none is ready, the serving and
    /// terminating ones.
    pub cluster: Vec<ResolvedEndpoint<'a>>,
    /// Endpoints on this node for `Local` policies, with the same terminating fallback.
    pub local: Vec<ResolvedEndpoint<'a>>,
    /// Whether any endpoint is usable anywhere (ready, or serving and terminating).
    pub has_any: bool,
}

fn pick<'a>(
    eps: impl Iterator<Item = &'a ResolvedEndpoint<'a>> + Clone,
) -> Vec<ResolvedEndpoint<'a>> {
    let ready: Vec<_> = eps.clone().filter(|e| e.endpoint.ready).copied().collect();
    if !ready.is_empty() {
        return ready;
    }
    eps.filter(|e| e.endpoint.serving && e.endpoint.terminating)
        .copied()
        .collect()
}

/// Splits `endpoints` (sorted, deduplicated) by policy for the node `node_name`.
///
/// Topology hints are not applied yet: every cluster endpoint is used.
pub fn categorize<'a>(
    svc: &Service,
    endpoints: &'a [ResolvedEndpoint<'a>],
    node_name: &str,
) -> Categorized<'a> {
    let uses_local = svc.internal_traffic_policy == TrafficPolicy::Local
        || (svc.external_traffic_policy == TrafficPolicy::Local && svc.externally_accessible());
    let cluster = pick(endpoints.iter());
    let local = if uses_local {
        pick(
            endpoints
                .iter()
                .filter(|e| e.endpoint.node_name.as_deref() == Some(node_name)),
        )
    } else {
        Vec::new()
    };
    let has_any = endpoints
        .iter()
        .any(|e| e.endpoint.ready || (e.endpoint.serving && e.endpoint.terminating));
    Categorized {
        cluster,
        local,
        has_any,
    }
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
        let c = categorize(&svc(), &eps, "a");
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
            ips(&categorize(&svc(), &eps, "a").cluster),
            vec!["10.0.0.2"]
        );
        let none = [ep("10.0.0.1", false, false, false, "a")];
        let eps = resolve(&none);
        let c = categorize(&svc(), &eps, "a");
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
        let c = categorize(&s, &eps, "b");
        assert_eq!(ips(&c.local), vec!["10.0.0.2"]);
        assert_eq!(c.cluster.len(), 2);
    }
}
