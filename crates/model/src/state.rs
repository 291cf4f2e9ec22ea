//! The proxy's current view of Services and EndpointSlices, with change tracking.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::{Endpoint, EndpointSlice, IpFamily, Service, ServiceKey, ServicePort, SliceKey};

/// One endpoint of one service port, resolved from the service's EndpointSlices: the
/// endpoint as its slice lists it, and the port number the slice gives for that service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedEndpoint<'a> {
    /// The endpoint (address, conditions, node, zone, hints).
    pub endpoint: &'a Endpoint,
    /// The endpoint's port for this service port.
    pub port: u16,
}

/// Services and EndpointSlices as last seen, and which services changed since the last
/// [`ProxyState::take_dirty`].
///
/// Every update compares the new object with the stored one: an update that changes nothing
/// (a resync, or the same content with a new resourceVersion) marks nothing dirty.
#[derive(Debug, Clone, Default)]
pub struct ProxyState {
    services: BTreeMap<ServiceKey, Service>,
    slices: BTreeMap<SliceKey, EndpointSlice>,
    by_service: BTreeMap<ServiceKey, BTreeSet<SliceKey>>,
    dirty: BTreeSet<ServiceKey>,
    service_changes: u64,
    slice_changes: u64,
}

impl ProxyState {
    /// An empty state.
    pub fn new() -> ProxyState {
        ProxyState::default()
    }

    /// Adds or replaces a service. Returns whether anything changed.
    pub fn upsert_service(&mut self, svc: Service) -> bool {
        if self.services.get(&svc.key) == Some(&svc) {
            return false;
        }
        self.dirty.insert(svc.key.clone());
        self.services.insert(svc.key.clone(), svc);
        self.service_changes += 1;
        true
    }

    /// Removes a service. Returns whether it existed.
    pub fn remove_service(&mut self, key: &ServiceKey) -> bool {
        let existed = self.services.remove(key).is_some();
        if existed {
            self.dirty.insert(key.clone());
            self.service_changes += 1;
        }
        existed
    }

    /// Adds or replaces an EndpointSlice. Returns whether anything changed. A slice that moves
    /// to another service (its label changed) marks both services.
    pub fn upsert_slice(&mut self, slice: EndpointSlice) -> bool {
        if let Some(old) = self.slices.get(&slice.key) {
            if *old == slice {
                return false;
            }
            let old_service = old.service.clone();
            self.unlink(&old_service, &slice.key);
            self.dirty.insert(old_service);
        }
        self.dirty.insert(slice.service.clone());
        self.by_service
            .entry(slice.service.clone())
            .or_default()
            .insert(slice.key.clone());
        self.slices.insert(slice.key.clone(), slice);
        self.slice_changes += 1;
        true
    }

    /// Removes an EndpointSlice. Returns whether it existed.
    pub fn remove_slice(&mut self, key: &SliceKey) -> bool {
        match self.slices.remove(key) {
            Some(old) => {
                self.unlink(&old.service, key);
                self.dirty.insert(old.service);
                self.slice_changes += 1;
                true
            }
            None => false,
        }
    }

    fn unlink(&mut self, service: &ServiceKey, slice: &SliceKey) {
        if let Some(set) = self.by_service.get_mut(service) {
            set.remove(slice);
            if set.is_empty() {
                self.by_service.remove(service);
            }
        }
    }

    /// Replaces the whole content (after a re-list or a reload of manifests). Only services
    /// whose Service or slices really changed are marked dirty.
    pub fn replace_all(&mut self, services: Vec<Service>, slices: Vec<EndpointSlice>) {
        self.replace_services(services);
        self.replace_slices(slices);
    }

    /// Replaces every Service (after a re-list); slices are kept. Only real changes are
    /// marked dirty.
    pub fn replace_services(&mut self, services: Vec<Service>) {
        let keep: BTreeSet<ServiceKey> = services.iter().map(|s| s.key.clone()).collect();
        let gone: Vec<ServiceKey> = self
            .services
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            self.remove_service(&k);
        }
        for s in services {
            self.upsert_service(s);
        }
    }

    /// Replaces every EndpointSlice (after a re-list); services are kept. Only real changes
    /// are marked dirty.
    pub fn replace_slices(&mut self, slices: Vec<EndpointSlice>) {
        let keep: BTreeSet<SliceKey> = slices.iter().map(|s| s.key.clone()).collect();
        let gone: Vec<SliceKey> = self
            .slices
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            self.remove_slice(&k);
        }
        for s in slices {
            self.upsert_slice(s);
        }
    }

    /// Marks every known service dirty (used for full syncs).
    pub fn mark_all_dirty(&mut self) {
        self.dirty.extend(self.services.keys().cloned());
        self.dirty.extend(self.by_service.keys().cloned());
    }

    /// Marks one service dirty again: its changes were taken but not programmed (the sync
    /// loop ran out of time to decide on them), so the next sync must recompile it.
    pub fn mark_dirty(&mut self, key: ServiceKey) {
        self.dirty.insert(key);
    }

    /// How many Service and EndpointSlice changes (real ones) the state has seen.
    pub fn change_counts(&self) -> (u64, u64) {
        (self.service_changes, self.slice_changes)
    }

    /// Returns and clears the set of services changed since the last call.
    pub fn take_dirty(&mut self) -> BTreeSet<ServiceKey> {
        std::mem::take(&mut self.dirty)
    }

    /// Services changed since the last [`ProxyState::take_dirty`], without clearing them.
    pub fn dirty(&self) -> &BTreeSet<ServiceKey> {
        &self.dirty
    }

    /// A service by key.
    pub fn service(&self, key: &ServiceKey) -> Option<&Service> {
        self.services.get(key)
    }

    /// All services, sorted by key.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    /// Number of services.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// All EndpointSlices, sorted by key.
    pub fn slices(&self) -> impl Iterator<Item = &EndpointSlice> {
        self.slices.values()
    }

    /// The EndpointSlices of a service, sorted by slice key.
    pub fn slices_for<'a>(
        &'a self,
        key: &ServiceKey,
    ) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
        self.by_service
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k))
    }

    /// The endpoints of one service port in one family, from every slice of the service:
    /// slices of that family whose port of the same name and protocol has a number.
    ///
    /// Duplicates of the same `ip:port` are merged; a non-terminating entry wins over a
    /// terminating one, otherwise the first in slice-name order is kept. The result is sorted
    /// by address and port.
    pub fn endpoints_for(
        &self,
        svc: &Service,
        port: &ServicePort,
        family: IpFamily,
    ) -> Vec<ResolvedEndpoint<'_>> {
        let mut out: BTreeMap<(IpAddr, u16), ResolvedEndpoint> = BTreeMap::new();
        for slice in self.slices_for(&svc.key) {
            if slice.family != family {
                continue;
            }
            let Some(sp) = slice
                .ports
                .iter()
                .find(|p| p.name == port.name && p.protocol == port.protocol)
            else {
                continue;
            };
            for ep in &slice.endpoints {
                let resolved = ResolvedEndpoint {
                    endpoint: ep,
                    port: sp.port,
                };
                match out.get(&(ep.address, sp.port)) {
                    Some(existing) if !existing.endpoint.terminating || ep.terminating => {}
                    _ => {
                        out.insert((ep.address, sp.port), resolved);
                    }
                }
            }
        }
        out.into_values().collect()
    }
}
