//! UDP frontends that went away: the conntrack entries of a deleted service (kubernetes#141371).
//!
//! [`crate::conntrack::stale_udp_flows`] looks at the services that exist: a flow to one of
//! their frontends whose endpoint is gone is deleted. A service that was deleted (or lost a
//! UDP port, address or node port) is not there to look at, yet a client that keeps sending
//! to its old ClusterIP keeps its conntrack entry, and with it the DNAT to the old endpoint,
//! for as long as it sends: the service is gone but its traffic still flows. The sync loop
//! therefore records, as changes arrive, the UDP frontends services had and have no more, and
//! after the next successful sync deletes the flows still DNATed through them.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use rudder_model::{IpFamily, Protocol, ProxyState, Service, UdpFlow};

/// A UDP frontend: an address and port, or a node port (on any address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UdpFrontend {
    /// A ClusterIP, external IP or load balancer IP on a service port.
    Addr(SocketAddr),
    /// A node port.
    NodePort(u16),
}

/// The UDP frontends of a service, in every family.
pub fn udp_frontends(svc: &Service) -> BTreeSet<UdpFrontend> {
    let mut out = BTreeSet::new();
    for port in svc.ports.iter().filter(|p| p.protocol == Protocol::Udp) {
        let ips: Vec<IpAddr> = svc
            .cluster_ips
            .iter()
            .chain(&svc.external_ips)
            .chain(&svc.load_balancer_ips)
            .copied()
            .collect();
        out.extend(
            ips.into_iter()
                .map(|ip| UdpFrontend::Addr(SocketAddr::new(ip, port.port))),
        );
        if let Some(np) = port.node_port {
            out.insert(UdpFrontend::NodePort(np));
        }
    }
    out
}

/// The UDP frontends withdrawn since the last conntrack cleanup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Withdrawn(BTreeSet<UdpFrontend>);

impl Withdrawn {
    /// Records the change of one service from `old` to `new` (`None`: absent).
    pub fn note(&mut self, old: Option<&Service>, new: Option<&Service>) {
        let Some(old) = old else {
            return;
        };
        let before = udp_frontends(old);
        if before.is_empty() {
            return;
        }
        let after = new.map(udp_frontends).unwrap_or_default();
        self.0.extend(before.difference(&after).copied());
    }

    /// Records the replacement of every service in `old` by the list `new` (a re-list).
    pub fn note_replaced<'a>(&mut self, old: impl Iterator<Item = &'a Service>, new: &[Service]) {
        for svc in old {
            self.note(Some(svc), new.iter().find(|n| n.key == svc.key));
        }
    }

    /// Whether nothing was withdrawn.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Forgets what was withdrawn (after a cleanup).
    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// The flows among `flows` (of one family) that were DNATed through a withdrawn
    /// frontend that no service of `state` has now: sent to a withdrawn address and port,
    /// or to any address on a withdrawn node port, and answered from another address than
    /// the one they were sent to. A flow that was not DNATed (answered by the address it was
    /// sent to: a real host behind a former external IP, or a process on the node) is left
    /// alone, and so is a frontend another service has taken over (the usual cleanup judges
    /// its flows by that service's endpoints).
    pub fn stale_flows(
        &self,
        state: &ProxyState,
        family: IpFamily,
        flows: &[UdpFlow],
    ) -> Vec<UdpFlow> {
        if self.0.is_empty() {
            return Vec::new();
        }
        let current: BTreeSet<UdpFrontend> = state.services().flat_map(udp_frontends).collect();
        let gone = |fe: UdpFrontend| self.0.contains(&fe) && !current.contains(&fe);
        flows
            .iter()
            .filter(|f| IpFamily::of(&f.orig_dst.ip()) == family)
            .filter(|f| f.reply_src.ip() != f.orig_dst.ip())
            .filter(|f| {
                gone(UdpFrontend::Addr(f.orig_dst))
                    || gone(UdpFrontend::NodePort(f.orig_dst.port()))
            })
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rudder_model::{ServiceKey, ServicePort, ServiceType};

    fn flow(src: &str, dst: &str, reply: &str) -> UdpFlow {
        UdpFlow {
            orig_src: src.parse().unwrap(),
            orig_dst: dst.parse().unwrap(),
            reply_src: reply.parse().unwrap(),
        }
    }

    fn dns(name: &str, ip: &str, node_port: Option<u16>) -> Service {
        let mut s = Service::new(ServiceKey::new("ns", name), vec![ip.parse().unwrap()]);
        s.service_type = ServiceType::NodePort;
        s.external_ips = vec!["192.0.2.10".parse().unwrap()];
        s.ports = vec![
            ServicePort {
                node_port,
                ..ServicePort::new("dns", Protocol::Udp, 53)
            },
            ServicePort::new("web", Protocol::Tcp, 80),
        ];
        s
    }

    #[test]
    fn a_deleted_services_dnated_flows_are_stale() {
        let mut w = Withdrawn::default();
        let old = dns("dns", "10.96.0.10", Some(30053));
        w.note(None, Some(&old));
        assert!(w.is_empty(), "a new service withdraws nothing");
        w.note(Some(&old), Some(&old));
        assert!(w.is_empty(), "nor does an unchanged one");
        w.note(Some(&old), None);
        let st = ProxyState::new();
        let flows = vec![
            flow("10.1.0.1:4000", "10.96.0.10:53", "10.244.0.5:5353"), // DNATed: delete
            flow("10.1.0.1:4001", "192.0.2.10:53", "10.244.0.5:5353"), // external IP: delete
            flow("10.1.0.1:4002", "192.0.2.10:53", "192.0.2.10:53"),   // a real host: keep
            flow("10.1.0.1:4003", "172.18.0.2:30053", "10.244.0.5:5353"), // node port: delete
            flow("10.1.0.1:4004", "172.18.0.2:30053", "172.18.0.2:30053"), // the node's: keep
            flow("10.1.0.1:4005", "10.96.0.10:80", "10.244.0.5:80"),   // TCP port's number: keep
            flow("10.1.0.1:4006", "10.96.0.11:53", "10.244.0.6:5353"), // another IP: keep
        ];
        let stale = w.stale_flows(&st, IpFamily::V4, &flows);
        let ports: Vec<u16> = stale.iter().map(|f| f.orig_src.port()).collect();
        assert_eq!(ports, vec![4000, 4001, 4003]);
        assert!(w.stale_flows(&st, IpFamily::V6, &flows).is_empty());
        // A frontend another service has now is that service's business.
        let mut st = ProxyState::new();
        st.replace_all(vec![dns("new", "10.96.0.10", None)], vec![]);
        let ports: Vec<u16> = w
            .stale_flows(&st, IpFamily::V4, &flows)
            .iter()
            .map(|f| f.orig_src.port())
            .collect();
        assert_eq!(ports, vec![4003], "only the node port is still withdrawn");
        w.clear();
        assert!(w.stale_flows(&st, IpFamily::V4, &flows).is_empty());
    }

    #[test]
    fn lost_ports_addresses_and_relists_withdraw_what_went() {
        let old = dns("dns", "10.96.0.10", Some(30053));
        let mut new = old.clone();
        new.external_ips.clear();
        if let Some(p) = new.ports.get_mut(0) {
            p.node_port = None;
        }
        let mut w = Withdrawn::default();
        w.note(Some(&old), Some(&new));
        let expected: BTreeSet<UdpFrontend> = [
            UdpFrontend::Addr("192.0.2.10:53".parse().unwrap()),
            UdpFrontend::NodePort(30053),
        ]
        .into();
        assert_eq!(w.0, expected);
        // A re-list without the service withdraws all of it.
        let mut w = Withdrawn::default();
        w.note_replaced([old.clone()].iter(), &[]);
        assert_eq!(w.0, udp_frontends(&old));
        let mut w = Withdrawn::default();
        w.note_replaced([old.clone()].iter(), &[old]);
        assert!(w.is_empty());
    }

    /// Conntrack with fixed flows that records what is deleted.
    struct FakeConntrack {
        flows: Vec<UdpFlow>,
        deleted: std::sync::Arc<std::sync::Mutex<Vec<UdpFlow>>>,
    }

    impl crate::conntrack::Conntrack for FakeConntrack {
        fn udp_flows(&mut self, family: IpFamily) -> Result<Vec<UdpFlow>, crate::DataplaneError> {
            Ok(self
                .flows
                .iter()
                .filter(|f| IpFamily::of(&f.orig_dst.ip()) == family)
                .copied()
                .collect())
        }

        fn delete(&mut self, flows: &[UdpFlow]) -> Result<usize, crate::DataplaneError> {
            self.deleted.lock().unwrap().extend_from_slice(flows);
            Ok(flows.len())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn deleting_a_udp_service_deletes_its_flows_after_the_sync() {
        use rudder_compiler::{Compiler, Config, NodeContext, NodePortIps};
        let node = NodeContext::new("n1".into(), NodePortIps::Only(vec![]));
        let deleted = std::sync::Arc::default();
        let ct = FakeConntrack {
            flows: vec![
                flow("10.1.0.1:4000", "10.96.0.10:53", "10.244.0.5:5353"),
                flow("10.1.0.1:4001", "10.96.0.20:53", "10.244.0.6:5353"),
            ],
            deleted: std::sync::Arc::clone(&deleted),
        };
        let n2 = node.clone();
        let mut l = crate::SyncLoop::new(
            Compiler::new(&[IpFamily::V4], Config::default(), node),
            rudder_nft::Ruleset::new(),
            Box::new(move |_| n2.clone()),
            crate::LoopConfig {
                node_wait: std::time::Duration::ZERO,
                min_sync_period: std::time::Duration::ZERO,
                ..crate::LoopConfig::default()
            },
        )
        .with_conntrack(Box::new(ct));
        let slice = |svc: &str, ep: &str| {
            rudder_model::EndpointSlice::new(
                "ns",
                &format!("{svc}-1"),
                svc,
                IpFamily::V4,
                vec![rudder_model::EndpointPort {
                    name: "dns".into(),
                    protocol: Protocol::Udp,
                    port: 5353,
                }],
                vec![rudder_model::Endpoint::new(ep.parse().unwrap())],
            )
        };
        l.apply_change(crate::Change::ServicesListed(vec![
            dns("dns", "10.96.0.10", None),
            dns("other", "10.96.0.20", None),
        ]));
        l.apply_change(crate::Change::SlicesListed(vec![
            slice("dns", "10.244.0.5"),
            slice("other", "10.244.0.6"),
        ]));
        l.sync().expect("runs").expect("succeeds");
        assert!(
            deleted.lock().unwrap().is_empty(),
            "every flow's endpoint serves"
        );
        l.apply_change(crate::Change::ServiceDeleted(ServiceKey::new("ns", "dns")));
        l.sync().expect("runs").expect("succeeds");
        let gone: Vec<u16> = deleted
            .lock()
            .unwrap()
            .iter()
            .map(|f| f.orig_src.port())
            .collect();
        assert_eq!(gone, vec![4000], "only the deleted service's flow");
    }
}
