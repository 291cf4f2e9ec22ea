//! Localhost node ports (KEP-6032): which loopback listeners the userspace proxy should run,
//! and where each one sends its connections, as computed after every successful sync.
//!
//! Loopback traffic cannot be DNATed to a pod without `route_localnet`, which kube-proxy and
//! Rudder refuse to set (CVE-2020-8558), so kube-proxy 1.37 serves `127.0.0.1:<nodePort>` and
//! `[::1]:<nodePort>` with a userspace TCP proxy. This module is the pure half: from the
//! state that was just programmed it derives, per IP family and TCP node port, the endpoints
//! to connect to, with kube-proxy's rules (`pkg/proxy/localnodeportproxy`,
//! `BuildDesiredNodePorts`):
//!
//! - only TCP node ports get a listener (UDP and SCTP are rejected by the ruleset instead);
//! - the endpoints are the ones the kernel rules use for the service port: cluster
//!   endpoints (topology hints and the serving-terminating fallback applied), or with
//!   `externalTrafficPolicy: Local` only this node's;
//! - a port without such endpoints gets no listener, so connections are refused at once;
//! - a node port several services claim is the one the compiler programs (its claims);
//! - with ClientIP affinity every connection comes from the same loopback address, so the
//!   listener pins one endpoint for the affinity timeout (a sliding window).
//!
//! The binary runs the listeners (`crates/rudder/src/localhost.rs`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use rudder_compiler::NodeContext;
use rudder_compiler::categorize;
use rudder_model::{IpFamily, Protocol, ProxyState, Service, ServicePortName, TrafficPolicy};

/// Where one listener sends its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The service port behind the node port.
    pub service: ServicePortName,
    /// Endpoints to choose from (never empty), sorted.
    pub endpoints: Vec<SocketAddr>,
    /// ClientIP affinity timeout, if the service has affinity.
    pub affinity: Option<Duration>,
}

/// The listeners that should run: (family, node port) → target. Families not in the
/// configured set get none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalhostNodePorts {
    /// By family and TCP node port.
    pub listeners: BTreeMap<(IpFamily, u16), Target>,
    /// The families localhost node ports are enabled for (listeners or not).
    pub families: Vec<IpFamily>,
}

impl LocalhostNodePorts {
    /// Computes the listeners for `families` (the families whose `--nodeport-addresses`
    /// explicitly include their loopback address) from the synced `state` on the node
    /// `node`. Services for which `refused` is true (the compiler or the kernel refused them
    /// as a whole) get none.
    ///
    /// A node port several services claim goes to the claim the compiler programs
    /// ([`rudder_compiler::claimed_frontends`]: the older service, then namespace, name and
    /// port), so the loopback listener and the node's addresses lead to the same service.
    pub fn compute(
        state: &ProxyState,
        node: &NodeContext,
        families: &[IpFamily],
        refused: &dyn Fn(&Service) -> bool,
    ) -> LocalhostNodePorts {
        let node_addrs = rudder_compiler::guard::node_addresses(node);
        let mut listeners = BTreeMap::new();
        for &family in families {
            // Node port → the best claim on it and the service port that made it.
            let mut winners: BTreeMap<u16, (rudder_compiler::ClaimRank, &Service, usize)> =
                BTreeMap::new();
            for svc in state.services().filter(|s| !refused(s)) {
                for claim in rudder_compiler::claimed_frontends(svc, family, &node_addrs) {
                    let fe = &claim.frontend;
                    if fe.address.is_some() || fe.protocol != Protocol::Tcp {
                        continue;
                    }
                    if winners
                        .get(&fe.port)
                        .is_none_or(|(best, _, _)| claim.rank < *best)
                    {
                        winners.insert(fe.port, (claim.rank, svc, claim.port));
                    }
                }
            }
            for (node_port, (_, svc, port_index)) in winners {
                let Some(port) = svc.ports.get(port_index) else {
                    continue;
                };
                let endpoints = state.endpoints_for(svc, port, family);
                let cat = categorize(svc, &endpoints, &node.name, node.zone.as_deref());
                let chosen = if svc.external_traffic_policy == TrafficPolicy::Local {
                    &cat.local
                } else {
                    &cat.cluster
                };
                let mut addrs: Vec<SocketAddr> = chosen
                    .iter()
                    .map(|e| SocketAddr::new(e.endpoint.address, e.port))
                    .collect();
                addrs.sort();
                addrs.dedup();
                // No usable endpoint: no listener, so connections are refused at once.
                if addrs.is_empty() {
                    continue;
                }
                listeners.insert(
                    (family, node_port),
                    Target {
                        service: svc.port_name(port),
                        endpoints: addrs,
                        affinity: svc
                            .session_affinity_timeout
                            .map(|s| Duration::from_secs(u64::from(s))),
                    },
                );
            }
        }
        LocalhostNodePorts {
            listeners,
            families: families.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rudder_compiler::NodePortIps;
    use rudder_model::{
        Endpoint, EndpointPort, EndpointSlice, ServiceKey, ServicePort, ServiceType,
    };

    fn node_port_svc(name: &str, proto: Protocol, node_port: u16) -> Service {
        let mut s = Service::new(
            ServiceKey::new("ns", name),
            vec!["10.96.0.10".parse().unwrap(), "fd00::10".parse().unwrap()],
        );
        s.service_type = ServiceType::NodePort;
        s.ports = vec![ServicePort {
            node_port: Some(node_port),
            ..ServicePort::new("p", proto, 80)
        }];
        s
    }

    fn slice(svc: &str, family: IpFamily, proto: Protocol, eps: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice::new(
            "ns",
            &format!("{svc}-{family}"),
            svc,
            family,
            vec![EndpointPort {
                name: "p".into(),
                protocol: proto,
                port: 8080,
            }],
            eps,
        )
    }

    fn ep(ip: &str, node: &str) -> Endpoint {
        Endpoint::new(ip.parse().unwrap()).on_node(node)
    }

    fn node() -> NodeContext {
        NodeContext::new("n1".into(), NodePortIps::Only(vec![]))
    }

    fn targets(l: &LocalhostNodePorts) -> Vec<(IpFamily, u16, Vec<String>)> {
        l.listeners
            .iter()
            .map(|((f, p), t)| (*f, *p, t.endpoints.iter().map(|e| e.to_string()).collect()))
            .collect()
    }

    #[test]
    fn tcp_node_ports_with_endpoints_get_a_listener_per_family() {
        let mut local = node_port_svc("local", Protocol::Tcp, 30002);
        local.external_traffic_policy = TrafficPolicy::Local;
        let mut sticky = node_port_svc("sticky", Protocol::Tcp, 30005);
        sticky.session_affinity_timeout = Some(60);
        let mut st = ProxyState::new();
        st.replace_all(
            vec![
                node_port_svc("web", Protocol::Tcp, 30001),
                local,
                node_port_svc("dns", Protocol::Udp, 30003),
                node_port_svc("empty", Protocol::Tcp, 30004),
                sticky,
                node_port_svc("nolocal", Protocol::Tcp, 30006),
                Service::new(
                    ServiceKey::new("ns", "plain"),
                    vec!["10.96.0.11".parse().unwrap()],
                ),
            ],
            vec![
                slice(
                    "web",
                    IpFamily::V4,
                    Protocol::Tcp,
                    vec![ep("10.0.0.2", "n2"), ep("10.0.0.1", "n1")],
                ),
                slice(
                    "web",
                    IpFamily::V6,
                    Protocol::Tcp,
                    vec![ep("fd01::1", "n1")],
                ),
                slice(
                    "local",
                    IpFamily::V4,
                    Protocol::Tcp,
                    vec![ep("10.0.1.1", "n1"), ep("10.0.1.2", "n2")],
                ),
                slice(
                    "dns",
                    IpFamily::V4,
                    Protocol::Udp,
                    vec![ep("10.0.2.1", "n1")],
                ),
                slice(
                    "sticky",
                    IpFamily::V4,
                    Protocol::Tcp,
                    vec![ep("10.0.3.1", "n1")],
                ),
                slice(
                    "nolocal",
                    IpFamily::V4,
                    Protocol::Tcp,
                    vec![ep("10.0.4.1", "n2")],
                ),
            ],
        );
        let mut nolocal = st
            .service(&ServiceKey::new("ns", "nolocal"))
            .cloned()
            .unwrap();
        nolocal.external_traffic_policy = TrafficPolicy::Local;
        st.upsert_service(nolocal);
        let l =
            LocalhostNodePorts::compute(&st, &node(), &[IpFamily::V4, IpFamily::V6], &|_| false);
        assert_eq!(
            targets(&l),
            vec![
                (
                    IpFamily::V4,
                    30001,
                    vec!["10.0.0.1:8080".into(), "10.0.0.2:8080".into()]
                ),
                // externalTrafficPolicy: Local: this node's endpoints only.
                (IpFamily::V4, 30002, vec!["10.0.1.1:8080".into()]),
                // UDP (30003), no endpoints (30004) and Local without local endpoints
                // (30006): no listener.
                (IpFamily::V4, 30005, vec!["10.0.3.1:8080".into()]),
                (IpFamily::V6, 30001, vec!["[fd01::1]:8080".into()]),
            ]
        );
        let sticky = &l.listeners[&(IpFamily::V4, 30005)];
        assert_eq!(sticky.affinity, Some(Duration::from_secs(60)));
        assert_eq!(sticky.service.to_string(), "ns/sticky:p/tcp");
        // Only the configured families.
        let v4 = LocalhostNodePorts::compute(&st, &node(), &[IpFamily::V4], &|_| false);
        assert!(v4.listeners.keys().all(|(f, _)| *f == IpFamily::V4));
        // Refused services get nothing.
        let refused =
            LocalhostNodePorts::compute(&st, &node(), &[IpFamily::V4], &|s| s.key.name == "web");
        assert!(!refused.listeners.contains_key(&(IpFamily::V4, 30001)));
        // Nothing enabled: nothing.
        assert!(
            LocalhostNodePorts::compute(&st, &node(), &[], &|_| false)
                .listeners
                .is_empty()
        );
    }

    #[test]
    fn terminating_endpoints_are_the_fallback_and_a_contested_port_goes_to_the_kernels_winner() {
        let mut term = ep("10.0.0.9", "n1");
        term.ready = false;
        term.terminating = true;
        // `a` is older than `b` (and comes first by name too): it keeps the node port, in
        // the kernel's rules and here.
        let mut a = node_port_svc("a", Protocol::Tcp, 30001);
        a.creation_timestamp = Some(100);
        let mut b = node_port_svc("b", Protocol::Tcp, 30001);
        b.cluster_ips = vec!["10.96.0.11".parse().unwrap()];
        b.creation_timestamp = Some(200);
        let mut st = ProxyState::new();
        st.replace_all(
            vec![a.clone(), b.clone()],
            vec![
                slice("a", IpFamily::V4, Protocol::Tcp, vec![term]),
                slice("b", IpFamily::V4, Protocol::Tcp, vec![ep("10.0.0.1", "n1")]),
            ],
        );
        let l = LocalhostNodePorts::compute(&st, &node(), &[IpFamily::V4], &|_| false);
        let t = &l.listeners[&(IpFamily::V4, 30001)];
        assert_eq!(t.service.service.name, "a");
        assert_eq!(t.endpoints, vec!["10.0.0.9:8080".parse().unwrap()]);
        // Age wins over the name: a younger `a` loses to `b`.
        a.creation_timestamp = Some(300);
        st.upsert_service(a);
        let l = LocalhostNodePorts::compute(&st, &node(), &[IpFamily::V4], &|_| false);
        let t = &l.listeners[&(IpFamily::V4, 30001)];
        assert_eq!(t.service.service.name, "b");
        assert_eq!(t.endpoints, vec!["10.0.0.1:8080".parse().unwrap()]);
        // The compiler's own rules agree on the winner.
        let mut c = rudder_compiler::Compiler::new(
            &[IpFamily::V4],
            rudder_compiler::Config::default(),
            node(),
        );
        c.full(&st);
        let rules = c.ruleset().expect("ruleset").render();
        assert!(
            rules.contains("tcp . 30001 . 0 : 10.0.0.1 . 8080"),
            "{rules}"
        );
    }

    /// A loop dataplane that refuses every transaction while `fail` is set.
    struct Flaky {
        rules: rudder_nft::Ruleset,
        fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl crate::Dataplane for Flaky {
        fn apply(&mut self, tx: &rudder_nft::Transaction) -> Result<usize, crate::DataplaneError> {
            if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
                return Err("refused".into());
            }
            crate::Dataplane::apply(&mut self.rules, tx)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_sync_loop_shows_observers_only_what_it_programmed() {
        use std::sync::{Arc, Mutex};
        let mut ctx = node();
        // The node's own address as a ClusterIP: the compiler refuses that service.
        ctx.ips = vec!["10.96.0.99".parse().unwrap()];
        let compiler = rudder_compiler::Compiler::new(
            &[IpFamily::V4],
            rudder_compiler::Config::default(),
            ctx.clone(),
        );
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let dataplane = Flaky {
            rules: rudder_nft::Ruleset::new(),
            fail: fail.clone(),
        };
        let seen: Arc<Mutex<Vec<Vec<u16>>>> = Arc::default();
        let seen2 = seen.clone();
        let mut l = crate::SyncLoop::new(
            compiler,
            dataplane,
            Box::new(move |_| ctx.clone()),
            crate::LoopConfig {
                node_wait: Duration::ZERO,
                min_sync_period: Duration::ZERO,
                ..crate::LoopConfig::default()
            },
        )
        .with_synced_observer(Box::new(move |s| {
            let l = LocalhostNodePorts::compute(s.state, s.node, &[IpFamily::V4], s.refused);
            let ports = l.listeners.keys().map(|(_, p)| *p).collect();
            seen2.lock().unwrap().push(ports);
        }));
        let mut own = node_port_svc("own", Protocol::Tcp, 30009);
        own.cluster_ips = vec!["10.96.0.99".parse().unwrap()];
        l.apply_change(crate::Change::ServicesListed(vec![
            node_port_svc("web", Protocol::Tcp, 30001),
            own,
        ]));
        l.apply_change(crate::Change::SlicesListed(vec![
            slice(
                "web",
                IpFamily::V4,
                Protocol::Tcp,
                vec![ep("10.0.0.1", "n1")],
            ),
            slice(
                "own",
                IpFamily::V4,
                Protocol::Tcp,
                vec![ep("10.0.0.2", "n1")],
            ),
        ]));
        l.sync().expect("runs").expect("succeeds");
        assert_eq!(*seen.lock().unwrap(), vec![vec![30001]]);
        // A failed sync shows nothing: the listeners keep following what is programmed.
        fail.store(true, std::sync::atomic::Ordering::Relaxed);
        l.apply_change(crate::Change::SliceDeleted(rudder_model::SliceKey {
            namespace: "ns".into(),
            name: "web-IPv4".into(),
        }));
        assert!(l.sync().expect("runs").is_err());
        assert_eq!(seen.lock().unwrap().len(), 1);
        fail.store(false, std::sync::atomic::Ordering::Relaxed);
        tokio::time::advance(Duration::from_secs(31)).await;
        l.sync().expect("retried").expect("succeeds");
        assert_eq!(*seen.lock().unwrap(), vec![vec![30001], vec![]]);
    }
}
