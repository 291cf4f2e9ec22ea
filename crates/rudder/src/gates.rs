//! What kube-proxy's feature gates change outside the rules: with `AllowServiceExternalIPs`
//! off (KEP-5707), Services lose their `spec.externalIPs` before the sync loop sees them, and
//! each Service that has some is named in a warning (log and Event) when they appear or
//! change, not at every re-list.

use std::collections::HashMap;
use std::net::IpAddr;

use rudder_controller::Change;
use rudder_model::{Service, ServiceKey};
use rudder_sources::events::{Events, ProxyEvent};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tracing::warn;

/// Removes the external IPs of a service; returns them (empty: it had none).
pub fn strip_external_ips(svc: &mut Service) -> Vec<IpAddr> {
    std::mem::take(&mut svc.external_ips)
}

/// Strips external IPs from changes and reports each service once per change of its list.
#[derive(Debug)]
pub struct ExternalIps {
    reported: HashMap<ServiceKey, Vec<IpAddr>>,
    events: Events,
}

impl ExternalIps {
    /// A filter that records its Events through `events`.
    pub fn new(events: Events) -> ExternalIps {
        ExternalIps {
            reported: HashMap::new(),
            events,
        }
    }

    fn strip(&mut self, svc: &mut Service) {
        let ips = strip_external_ips(svc);
        if ips.is_empty() {
            self.reported.remove(&svc.key);
            return;
        }
        if self.reported.get(&svc.key) == Some(&ips) {
            return;
        }
        warn!(
            service = %svc.key,
            external_ips = ?ips,
            reason = "ExternalIPsDisabled",
            "spec.externalIPs are not programmed: the AllowServiceExternalIPs feature gate is off"
        );
        self.events.record(ProxyEvent::ExternalIpsDisabled {
            service: svc.key.clone(),
            ips: ips.clone(),
        });
        self.reported.insert(svc.key.clone(), ips);
    }

    fn strip_all(&mut self, services: &mut [Service]) {
        for s in services.iter_mut() {
            self.strip(s);
        }
        self.reported
            .retain(|k, _| services.iter().any(|s| s.key == *k));
    }

    /// Applies the gate to one change.
    pub fn apply(&mut self, change: &mut Change) {
        match change {
            Change::ServiceApplied(s) => self.strip(s),
            Change::ServiceDeleted(key) => {
                self.reported.remove(key);
            }
            Change::ServicesListed(list) => self.strip_all(list),
            Change::Snapshot { services, .. } => self.strip_all(services),
            _ => {}
        }
    }
}

/// Passes every change from `rx` on, through `gate`.
pub fn filter(
    mut rx: UnboundedReceiver<Change>,
    mut gate: ExternalIps,
) -> (UnboundedReceiver<Change>, tokio::task::JoinHandle<()>) {
    let (tx, out) = unbounded_channel();
    let task = tokio::spawn(async move {
        while let Some(mut c) = rx.recv().await {
            gate.apply(&mut c);
            if tx.send(c).is_err() {
                break;
            }
        }
    });
    (out, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, ext: &[&str]) -> Service {
        let mut s = Service::new(
            ServiceKey::new("ns", name),
            vec!["10.96.0.1".parse().unwrap()],
        );
        s.external_ips = ext.iter().map(|e| e.parse().unwrap()).collect();
        s
    }

    #[test]
    fn external_ips_are_stripped_and_each_service_reported_once_per_change() {
        let mut g = ExternalIps::new(Events::disabled());
        let mut list = vec![svc("a", &["192.0.2.1"]), svc("b", &[])];
        let mut c = Change::ServicesListed(list.clone());
        g.apply(&mut c);
        let Change::ServicesListed(out) = &c else {
            panic!()
        };
        assert!(out.iter().all(|s| s.external_ips.is_empty()));
        assert_eq!(g.reported.len(), 1);
        // The same list again: nothing new to report.
        g.apply(&mut Change::ServicesListed(list.clone()));
        assert_eq!(g.reported.len(), 1);
        // A changed list is reported again; a service that drops them is forgotten.
        list[0] = svc("a", &["192.0.2.2"]);
        let mut c = Change::ServiceApplied(Box::new(list[0].clone()));
        g.apply(&mut c);
        assert_eq!(
            g.reported.get(&ServiceKey::new("ns", "a")),
            Some(&vec!["192.0.2.2".parse().unwrap()])
        );
        g.apply(&mut Change::ServiceApplied(Box::new(svc("a", &[]))));
        assert!(g.reported.is_empty());
        let Change::ServiceApplied(s) = c else {
            panic!()
        };
        assert!(s.external_ips.is_empty());
    }
}
