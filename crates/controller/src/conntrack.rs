//! Stale UDP conntrack entries (kube-proxy's `pkg/proxy/conntrack/cleanup.go`).
//!
//! UDP has no connection end, so a client that keeps sending to a service keeps its conntrack
//! entry — and its DNAT to an endpoint that may be gone — for as long as it sends. After the
//! endpoints of a UDP service change, flows whose original destination is one of the
//! service's frontends but whose replies come from an address that is no longer a serving
//! endpoint are deleted, so the next datagram is load-balanced afresh.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;

use rudder_model::{IpFamily, Protocol, ProxyState, Service, ServicePort, UdpFlow};

use crate::change::Change;
use crate::mode::DataplaneError;
use crate::observer::{LoopEvent, SyncObserver, Synced};
use crate::withdrawn::Withdrawn;

/// Access to the kernel's conntrack table.
pub trait Conntrack: Send {
    /// Every UDP flow of a family.
    fn udp_flows(&mut self, family: IpFamily) -> Result<Vec<UdpFlow>, DataplaneError>;
    /// Deletes flows; returns how many were deleted (flows already gone are not errors).
    fn delete(&mut self, flows: &[UdpFlow]) -> Result<usize, DataplaneError>;
}

/// Whether any of these services has a UDP port (only then is cleanup needed).
pub fn has_udp<'a>(
    state: &ProxyState,
    services: impl IntoIterator<Item = &'a rudder_model::ServiceKey>,
) -> bool {
    services
        .into_iter()
        .filter_map(|k| state.service(k))
        .any(|s| s.ports.iter().any(|p| p.protocol == Protocol::Udp))
}

/// The serving endpoints of one service port in one family.
fn serving(
    state: &ProxyState,
    svc: &Service,
    port: &ServicePort,
    family: IpFamily,
) -> BTreeSet<SocketAddr> {
    state
        .endpoints_for(svc, port, family)
        .iter()
        .filter(|e| e.endpoint.serving)
        .map(|e| SocketAddr::new(e.endpoint.address, e.port))
        .collect()
}

/// Keeps, per key, the best-ranked claim and its serving endpoints.
fn keep_best<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, (rudder_compiler::ClaimRank, BTreeSet<SocketAddr>)>,
    key: K,
    rank: rudder_compiler::ClaimRank,
    serving: impl FnOnce() -> BTreeSet<SocketAddr>,
) {
    if map.get(&key).is_none_or(|(best, _)| rank < *best) {
        map.insert(key, (rank, serving()));
    }
}

/// The flows to delete among `flows` (of one family): for every UDP frontend — a ClusterIP,
/// external IP or load balancer IP on a service port, or a node port on any address — the
/// flows to it whose reply source is not a serving endpoint of the service port that holds
/// it. Traffic policies, topology and terminating state are deliberately ignored, as in
/// kube-proxy: any serving endpoint is a legitimate destination, and a flow to an endpoint
/// that still serves is never deleted (so a restart or a full resync, which run this over the
/// complete state, keep every flow whose endpoint is still there).
///
/// A service port without serving endpoints is no exception (kube-proxy skipped those until
/// kubernetes#139629): a flow DNATed to the endpoint it lost would otherwise keep reaching
/// it for as long as the client keeps sending, since the reject rule sees only new flows. On
/// its node port only flows that were DNATed are deleted then: a flow to that port elsewhere
/// whose reply comes from where it was sent is not the service's.
///
/// Frontends are the compiler's ([`rudder_compiler::claimed_frontends`]): what it refuses
/// because it is one of the node's addresses (`node_addrs`, see `rudder_compiler::guard`) is
/// no frontend (a service with such a ClusterIP is left out entirely, an external or load
/// balancer IP that is one is not a frontend: flows to the node's own services on those
/// addresses are the node's, not stale), and a frontend several service ports claim is the
/// winner's alone: flows still DNATed to a loser's endpoints (from before the winner came)
/// are stale.
pub fn stale_udp_flows(
    state: &ProxyState,
    family: IpFamily,
    flows: &[UdpFlow],
    node_addrs: &[std::net::IpAddr],
) -> Vec<UdpFlow> {
    // Frontend (or node port) → the best claim on it and that port's serving endpoints.
    type Best = (rudder_compiler::ClaimRank, BTreeSet<SocketAddr>);
    let mut by_frontend: HashMap<SocketAddr, Best> = HashMap::new();
    let mut by_node_port: HashMap<u16, Best> = HashMap::new();
    for svc in state.services() {
        for claim in rudder_compiler::claimed_frontends(svc, family, node_addrs) {
            let Some(port) = svc.ports.get(claim.port) else {
                continue;
            };
            if port.protocol != Protocol::Udp {
                continue;
            }
            let serving = || serving(state, svc, port, family);
            match claim.frontend.address {
                Some(ip) => keep_best(
                    &mut by_frontend,
                    SocketAddr::new(ip, claim.frontend.port),
                    claim.rank,
                    serving,
                ),
                // Node ports: keyed by the port alone, on any address.
                None => keep_best(&mut by_node_port, claim.frontend.port, claim.rank, serving),
            }
        }
    }
    let serving_by_frontend: HashMap<SocketAddr, BTreeSet<SocketAddr>> = by_frontend
        .into_iter()
        .map(|(fe, (_, s))| (fe, s))
        .collect();
    let serving_by_node_port: HashMap<u16, BTreeSet<SocketAddr>> = by_node_port
        .into_iter()
        .map(|(np, (_, s))| (np, s))
        .collect();
    let frontends: HashSet<SocketAddr> = serving_by_frontend.keys().copied().collect();
    flows
        .iter()
        .filter(|f| {
            let by_frontend = serving_by_frontend
                .get(&f.orig_dst)
                .map(|s| !s.contains(&f.reply_src));
            let by_node_port = (!frontends.contains(&f.orig_dst))
                .then(|| {
                    serving_by_node_port.get(&f.orig_dst.port()).map(|s| {
                        if s.is_empty() {
                            f.reply_src.ip() != f.orig_dst.ip()
                        } else {
                            !s.contains(&f.reply_src)
                        }
                    })
                })
                .flatten();
            by_frontend.or(by_node_port).unwrap_or(false)
        })
        .copied()
        .collect()
}

/// Cleans stale UDP conntrack entries after the syncs that changed UDP services (an observer
/// of the loop, see [`crate::SyncLoop::with_conntrack`]).
pub struct ConntrackCleaner {
    conntrack: Box<dyn Conntrack>,
    /// UDP frontends services lost since the last cleanup.
    withdrawn: Withdrawn,
}

impl ConntrackCleaner {
    /// A cleaner working through `conntrack`.
    pub fn new(conntrack: Box<dyn Conntrack>) -> ConntrackCleaner {
        ConntrackCleaner {
            conntrack,
            withdrawn: Withdrawn::default(),
        }
    }
}

impl SyncObserver for ConntrackCleaner {
    fn change(&mut self, state: &ProxyState, change: &Change) {
        match change {
            Change::ServiceApplied(s) => self.withdrawn.note(state.service(&s.key), Some(s)),
            Change::ServiceDeleted(key) => self.withdrawn.note(state.service(key), None),
            Change::ServicesListed(list) => self.withdrawn.note_replaced(state.services(), list),
            Change::Snapshot { services, .. } => {
                self.withdrawn.note_replaced(state.services(), services)
            }
            _ => {}
        }
    }

    fn synced(&mut self, synced: &Synced<'_>, events: &mut Vec<LoopEvent>) {
        let udp_changed =
            synced.full || has_udp(synced.state, synced.changed) || !self.withdrawn.is_empty();
        if !udp_changed {
            return;
        }
        let node_addrs = rudder_compiler::guard::node_addresses(synced.node);
        let withdrawn = std::mem::take(&mut self.withdrawn);
        let mut retry_withdrawn = false;
        for &family in synced.families {
            let flows = match self.conntrack.udp_flows(family) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(%family, "cannot list conntrack entries: {e}");
                    retry_withdrawn = true;
                    continue;
                }
            };
            let mut stale = stale_udp_flows(synced.state, family, &flows, &node_addrs);
            // The flows of frontends that went away with their service (kubernetes#141371).
            stale.extend(withdrawn.stale_flows(synced.state, family, &flows));
            stale.sort();
            stale.dedup();
            if stale.is_empty() {
                continue;
            }
            let t0 = std::time::Instant::now();
            match self.conntrack.delete(&stale) {
                Ok(n) => {
                    tracing::info!(%family, deleted = n, "deleted stale UDP conntrack entries");
                    events.push(LoopEvent::Conntrack {
                        family,
                        deleted: n,
                        duration: t0.elapsed(),
                    });
                }
                Err(e) => tracing::warn!(%family, "cannot delete stale conntrack entries: {e}"),
            }
        }
        if retry_withdrawn {
            // Tried again after the next sync.
            self.withdrawn = withdrawn;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rudder_model::{
        Endpoint, EndpointPort, EndpointSlice, Service, ServiceKey, ServicePort, ServiceType,
    };

    fn flow(src: &str, dst: &str, reply: &str) -> UdpFlow {
        UdpFlow {
            orig_src: src.parse().unwrap(),
            orig_dst: dst.parse().unwrap(),
            reply_src: reply.parse().unwrap(),
        }
    }

    #[test]
    fn selects_flows_whose_endpoint_is_gone() {
        let mut svc = Service::new(
            ServiceKey::new("ns", "dns"),
            vec!["10.96.0.10".parse().unwrap()],
        );
        svc.service_type = ServiceType::NodePort;
        svc.load_balancer_ips = vec!["192.0.2.10".parse().unwrap()];
        svc.ports = vec![ServicePort {
            node_port: Some(30053),
            ..ServicePort::new("dns", Protocol::Udp, 53)
        }];
        let mut tcp = Service::new(
            ServiceKey::new("ns", "web"),
            vec!["10.96.0.11".parse().unwrap()],
        );
        tcp.ports = vec![ServicePort::new("http", Protocol::Tcp, 80)];
        let ports = vec![EndpointPort {
            name: "dns".into(),
            protocol: Protocol::Udp,
            port: 5353,
        }];
        let mut terminating = Endpoint::new("10.0.0.3".parse().unwrap());
        terminating.ready = false;
        terminating.terminating = true;
        let slice = EndpointSlice::new(
            "ns",
            "dns-1",
            "dns",
            IpFamily::V4,
            ports,
            vec![Endpoint::new("10.0.0.1".parse().unwrap()), terminating],
        );
        // A UDP service without endpoints (its only one was removed).
        let mut quiet = Service::new(
            ServiceKey::new("ns", "quiet"),
            vec!["10.96.0.12".parse().unwrap()],
        );
        quiet.service_type = ServiceType::NodePort;
        quiet.ports = vec![ServicePort {
            node_port: Some(30054),
            ..ServicePort::new("dns", Protocol::Udp, 53)
        }];
        let mut st = ProxyState::new();
        st.replace_all(vec![svc, tcp, quiet], vec![slice]);
        let flows = vec![
            flow("10.1.0.1:4000", "10.96.0.10:53", "10.0.0.1:5353"), // live endpoint: keep
            flow("10.1.0.1:4001", "10.96.0.10:53", "10.0.0.2:5353"), // gone: delete
            flow("10.1.0.1:4002", "10.96.0.10:53", "10.0.0.3:5353"), // serving (terminating): keep
            flow("10.1.0.1:4003", "192.0.2.10:53", "10.0.0.9:5353"), // LB IP, gone: delete
            flow("10.1.0.1:4004", "172.18.0.2:30053", "10.0.0.9:5353"), // node port, gone: delete
            flow("10.1.0.1:4005", "10.96.0.11:80", "10.0.0.9:80"),   // not a UDP service: keep
            flow("10.1.0.1:4006", "8.8.8.8:53", "8.8.8.8:53"),       // not a service: keep
            // No endpoints left: what was DNATed to the removed one, or not DNATed at all, is
            // stale on the ClusterIP; on the node port only what was DNATed.
            flow("10.1.0.1:4007", "10.96.0.12:53", "10.0.0.7:5353"), // delete
            flow("10.1.0.1:4008", "10.96.0.12:53", "10.96.0.12:53"), // delete
            flow("10.1.0.1:4009", "172.18.0.2:30054", "10.0.0.7:5353"), // delete
            flow("10.1.0.1:4010", "8.8.4.4:30054", "8.8.4.4:30054"), // elsewhere: keep
        ];
        let stale = stale_udp_flows(&st, IpFamily::V4, &flows, &[]);
        let ports: Vec<u16> = stale.iter().map(|f| f.orig_src.port()).collect();
        assert_eq!(ports, vec![4001, 4003, 4004, 4007, 4008, 4009]);
        // When the LB IP is the node's own address, the compiler refuses that frontend: flows
        // to it are the node's (a DNS server on the node), not stale.
        let node = ["192.0.2.10".parse().unwrap()];
        let stale = stale_udp_flows(&st, IpFamily::V4, &flows, &node);
        let ports: Vec<u16> = stale.iter().map(|f| f.orig_src.port()).collect();
        assert_eq!(ports, vec![4001, 4004, 4007, 4008, 4009]);
        // When the ClusterIP is, the whole service is refused: nothing of it is stale.
        let node = ["10.96.0.10".parse().unwrap()];
        let stale = stale_udp_flows(&st, IpFamily::V4, &flows, &node);
        let ports: Vec<u16> = stale.iter().map(|f| f.orig_src.port()).collect();
        assert_eq!(ports, vec![4007, 4008, 4009]);
        assert!(has_udp(&st, [&ServiceKey::new("ns", "dns")]));
        assert!(!has_udp(&st, [&ServiceKey::new("ns", "web")]));
    }

    #[test]
    fn a_contested_frontend_is_the_winners_alone() {
        // `new` repeats `old`'s ClusterIP and port: `old` keeps it, so a flow still DNATed to
        // `new`'s endpoint (from before `old` came) is stale, and one to `old`'s is not.
        let dns = |name: &str, created: i64| {
            let mut s = Service::new(
                ServiceKey::new("ns", name),
                vec!["10.96.0.10".parse().unwrap()],
            );
            s.ports = vec![ServicePort::new("dns", Protocol::Udp, 53)];
            s.creation_timestamp = Some(created);
            s
        };
        let slice = |name: &str, ep: &str| {
            EndpointSlice::new(
                "ns",
                &format!("{name}-1"),
                name,
                IpFamily::V4,
                vec![EndpointPort {
                    name: "dns".into(),
                    protocol: Protocol::Udp,
                    port: 53,
                }],
                vec![Endpoint::new(ep.parse().unwrap())],
            )
        };
        let mut st = ProxyState::new();
        st.replace_all(
            vec![dns("old", 1), dns("a-new", 2)],
            vec![slice("old", "10.0.0.1"), slice("a-new", "10.0.0.2")],
        );
        let flows = vec![
            flow("10.1.0.1:4000", "10.96.0.10:53", "10.0.0.1:53"),
            flow("10.1.0.1:4001", "10.96.0.10:53", "10.0.0.2:53"),
        ];
        let stale = stale_udp_flows(&st, IpFamily::V4, &flows, &[]);
        let ports: Vec<u16> = stale.iter().map(|f| f.orig_src.port()).collect();
        assert_eq!(ports, vec![4001]);
    }
}
