//! `rudder explain` in the IPVS mode: the nftables mode's explanation (the same service
//! matching, endpoint categorization, source ranges and masquerade rules), corrected where
//! the IPVS mode differs, from what this compiler made.
//!
//! - The candidates are the real servers of the virtual server the packet reaches, picked by
//!   its scheduler, for every source: IPVS cannot short-circuit pods and the node to all
//!   endpoints under `externalTrafficPolicy: Local` as the nftables mode does.
//! - A bound VIP on a port that is no service is rejected by the VIP filter; an address in a
//!   service CIDR that is no ClusterIP is not bound, and Rudder does not touch it.
//! - Under `externalTrafficPolicy: Local` the node's own traffic is not masqueraded.

use std::net::SocketAddr;

use rudder_compiler::explain::{Candidate, Explanation, Frontend, Query, Verdict, Via, explain};
use rudder_model::{IpFamily, ProxyState, TrafficPolicy};

use crate::{IpvsCompiler, vs_key};

impl IpvsCompiler {
    /// What this node does with the packet `q` in the IPVS mode.
    pub fn explain(&self, state: &ProxyState, q: &Query) -> Explanation {
        let config = rudder_compiler::Config {
            table: self.options.table.table.clone(),
            masquerade_all: self.options.table.masquerade_all,
            masquerade_bit: self.options.table.masquerade_bit,
            ..rudder_compiler::Config::default()
        };
        let mut out = explain(state, &config, &self.node, q);
        let key = vs_key(q.protocol, SocketAddr::new(q.to, q.port));
        let Some(server) = self.target.servers.get(&key) else {
            if self.target.addresses.contains(&q.to) {
                out.verdict = Verdict::Reject(format!(
                    "{} is a VIP on kube-ipvs0, but no virtual server has {}/{}: the VIP filter rejects it",
                    q.to, q.protocol, q.port
                ));
            } else if matches!(out.verdict, Verdict::Drop(_)) && out.matched.is_none() {
                out.verdict = Verdict::NotAService(format!(
                    "{} is no ClusterIP: in IPVS mode it is not bound, and routed as any address",
                    q.to
                ));
            }
            return out;
        };
        let vs = &server.service;
        let mut how = format!("IPVS's {} scheduler", vs.scheduler);
        if let Some(p) = &vs.persistence {
            how.push_str(&format!(
                " (persistent: a client keeps its real server for {} s)",
                p.timeout
            ));
        }
        out.policy.push(format!(
            "IPVS virtual server {} {} with {} real server(s)",
            q.protocol,
            SocketAddr::new(q.to, q.port),
            server.real.values().filter(|w| **w > 0).count()
        ));
        if matches!(out.verdict, Verdict::Reject(_) | Verdict::Drop(_)) {
            // Rejected or dropped before IPVS (nftables part): the explanation stands.
            return out;
        }
        let external = !matches!(out.matched, Some((_, Frontend::ClusterIp)));
        // The real servers, described from the endpoints of the service port they serve.
        let endpoints = server
            .owner
            .as_ref()
            .and_then(|o| {
                let svc = state.service(&o.service)?;
                let port = svc
                    .ports
                    .iter()
                    .find(|p| p.name == o.port && p.protocol == o.protocol)?;
                Some(state.endpoints_for(svc, port, IpFamily::of(&q.to)))
            })
            .unwrap_or_default();
        out.candidates = server
            .real
            .iter()
            .filter(|(_, w)| **w > 0)
            .map(|(a, _)| {
                let e = endpoints
                    .iter()
                    .find(|e| e.endpoint.address == a.ip() && e.port == a.port());
                Candidate {
                    address: a.ip(),
                    port: a.port(),
                    node: e.and_then(|e| e.endpoint.node_name.clone()),
                    local: e.is_some_and(|e| {
                        e.endpoint.node_name.as_deref() == Some(self.node.name.as_str())
                    }),
                    ready: e.is_none_or(|e| e.endpoint.ready),
                }
            })
            .collect();
        out.picked_by = Some(how);
        let local_policy = server.owner.as_ref().is_some_and(|o| {
            state
                .service(&o.service)
                .is_some_and(|s| s.external_traffic_policy == TrafficPolicy::Local)
        });
        if external && local_policy && matches!(out.via, Via::Pod | Via::Node) {
            out.policy.push(
                "IPVS picks among the virtual server's real servers whatever the source (no short-circuit to all endpoints)"
                    .into(),
            );
            if out.via == Via::Node {
                out.masquerade = Some((
                    false,
                    "externalTrafficPolicy: Local is never masqueraded in IPVS mode".into(),
                ));
            }
        }
        if out.candidates.is_empty() {
            out.verdict = Verdict::Reject("the virtual server has no real server".into());
        }
        out
    }
}
