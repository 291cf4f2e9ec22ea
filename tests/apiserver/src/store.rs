//! The in-memory object store: current state, one global resource-version
//! counter (like etcd's revision), and a bounded event history that watches
//! replay from and paginated lists reconstruct snapshots from.

use std::collections::{BTreeMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

/// The watchable resource kinds this server knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    Service,
    EndpointSlice,
    Node,
    ServiceCidr,
}

impl Kind {
    pub(crate) const ALL: [Kind; 4] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Node,
        Kind::ServiceCidr,
    ];

    /// Lower-case plural resource name, as used in URLs and RBAC rules.
    pub(crate) fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Node => "nodes",
            Kind::ServiceCidr => "servicecidrs",
        }
    }

    pub(crate) fn singular(self) -> &'static str {
        match self {
            Kind::Service => "service",
            Kind::EndpointSlice => "endpointslice",
            Kind::Node => "node",
            Kind::ServiceCidr => "servicecidr",
        }
    }

    /// API group ("" for the core group).
    pub(crate) fn group(self) -> &'static str {
        match self {
            Kind::Service | Kind::Node => "",
            Kind::EndpointSlice => "discovery.k8s.io",
            Kind::ServiceCidr => "networking.k8s.io",
        }
    }

    pub(crate) fn api_version(self) -> &'static str {
        match self {
            Kind::Service | Kind::Node => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::ServiceCidr => "networking.k8s.io/v1",
        }
    }

    pub(crate) fn kind(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
            Kind::ServiceCidr => "ServiceCIDR",
        }
    }

    pub(crate) fn list_kind(self) -> &'static str {
        match self {
            Kind::Service => "ServiceList",
            Kind::EndpointSlice => "EndpointSliceList",
            Kind::Node => "NodeList",
            Kind::ServiceCidr => "ServiceCIDRList",
        }
    }

    pub(crate) fn namespaced(self) -> bool {
        !matches!(self, Kind::Node | Kind::ServiceCidr)
    }

    pub(crate) fn short_names(self) -> &'static [&'static str] {
        match self {
            Kind::Service => &["svc"],
            Kind::EndpointSlice | Kind::ServiceCidr => &[],
            Kind::Node => &["no"],
        }
    }
}

/// Object key: (namespace, name); namespace is "" for cluster-scoped kinds.
pub(crate) type Key = (String, String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change in the history.
#[derive(Clone, Debug)]
pub(crate) struct HistEvent {
    pub(crate) rv: u64,
    pub(crate) kind: Kind,
    pub(crate) key: Key,
    pub(crate) ty: EventType,
    /// ADDED/MODIFIED: the new object. DELETED: the last state of the object
    /// with `metadata.resourceVersion` set to the deletion's RV (as the real
    /// apiserver reports it).
    pub(crate) object: Value,
    /// MODIFIED/DELETED: the object as it was before this change.
    pub(crate) prev: Option<Value>,
}

/// The history no longer covers the requested resource version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Expired {
    /// The requested RV.
    pub(crate) requested: u64,
    /// The oldest RV a watch can still start from.
    pub(crate) oldest: u64,
}

pub(crate) struct Store {
    rv: u64,
    uid_seed: u64,
    uid_counter: u64,
    objects: BTreeMap<Kind, BTreeMap<Key, Value>>,
    history: VecDeque<HistEvent>,
    /// Every change with RV > `compacted_rv` is in `history`.
    compacted_rv: u64,
    history_limit: usize,
    events: Vec<Value>,
}

impl Store {
    pub(crate) fn new(history_limit: usize) -> Self {
        let uid_seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed)
            ^ u64::from(std::process::id()).rotate_left(32);
        Store {
            rv: 1,
            uid_seed,
            uid_counter: 0,
            objects: Kind::ALL.iter().map(|k| (*k, BTreeMap::new())).collect(),
            history: VecDeque::new(),
            compacted_rv: 1,
            history_limit: history_limit.max(1),
            events: Vec::new(),
        }
    }

    pub(crate) fn rv(&self) -> u64 {
        self.rv
    }

    pub(crate) fn compacted_rv(&self) -> u64 {
        self.compacted_rv
    }

    fn objects_mut(&mut self, kind: Kind) -> &mut BTreeMap<Key, Value> {
        self.objects.entry(kind).or_default()
    }

    pub(crate) fn objects(&self, kind: Kind) -> impl Iterator<Item = (&Key, &Value)> {
        self.objects.get(&kind).into_iter().flat_map(|m| m.iter())
    }

    pub(crate) fn get(&self, kind: Kind, key: &Key) -> Option<&Value> {
        self.objects.get(&kind).and_then(|m| m.get(key))
    }

    fn next_uid(&mut self) -> String {
        self.uid_counter += 1;
        let x = self
            .uid_seed
            .wrapping_add(self.uid_counter.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (x >> 32) as u32,
            (x >> 16) as u16,
            (x >> 4) as u16 & 0xfff,
            self.uid_counter as u16 & 0xfff,
            self.uid_counter & 0xffff_ffff_ffff
        )
    }

    fn push_history(&mut self, ev: HistEvent) {
        self.history.push_back(ev);
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted_rv = old.rv;
            }
        }
    }

    /// Create or replace an object. The incoming object's `resourceVersion`,
    /// `uid` and `creationTimestamp` are ignored; `uid` and
    /// `creationTimestamp` survive updates. Every call bumps the RV and
    /// produces an ADDED or MODIFIED event (no no-op detection).
    ///
    /// Returns `Err` with a message when the object has no `metadata.name`.
    pub(crate) fn apply(&mut self, kind: Kind, mut obj: Value) -> Result<Value, String> {
        let Some(root) = obj.as_object_mut() else {
            return Err("object is not a JSON object".into());
        };
        root.insert("apiVersion".into(), kind.api_version().into());
        root.insert("kind".into(), kind.kind().into());
        let meta = root
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        if !meta.is_object() {
            *meta = Value::Object(Map::new());
        }
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if name.is_empty() {
            return Err(format!("{} has no metadata.name", kind.kind()));
        }
        let namespace = if kind.namespaced() {
            let ns = meta
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .unwrap_or("default")
                .to_owned();
            meta["namespace"] = Value::String(ns.clone());
            ns
        } else {
            if let Some(m) = meta.as_object_mut() {
                m.remove("namespace");
            }
            String::new()
        };
        let key = (namespace, name);
        let prev = self.get(kind, &key).cloned();
        let (uid, created) = match &prev {
            Some(p) => (
                p["metadata"]["uid"].as_str().unwrap_or_default().to_owned(),
                p["metadata"]["creationTimestamp"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ),
            None => (self.next_uid(), now_rfc3339()),
        };
        self.rv += 1;
        let rv = self.rv;
        meta["uid"] = Value::String(uid);
        meta["creationTimestamp"] = Value::String(created);
        meta["resourceVersion"] = Value::String(rv.to_string());
        self.objects_mut(kind).insert(key.clone(), obj.clone());
        let ty = if prev.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.push_history(HistEvent {
            rv,
            kind,
            key,
            ty,
            object: obj.clone(),
            prev,
        });
        Ok(obj)
    }

    /// Delete an object; `false` if it did not exist.
    pub(crate) fn delete(&mut self, kind: Kind, key: &Key) -> bool {
        let Some(prev) = self.objects_mut(kind).remove(key) else {
            return false;
        };
        self.rv += 1;
        let rv = self.rv;
        let mut object = prev.clone();
        object["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        self.push_history(HistEvent {
            rv,
            kind,
            key: key.clone(),
            ty: EventType::Deleted,
            object,
            prev: Some(prev),
        });
        true
    }

    /// Forget all history: a watch or continue token from an RV older than
    /// the current one is now expired.
    pub(crate) fn compact(&mut self) {
        self.history.clear();
        self.compacted_rv = self.rv;
    }

    /// Changes of `kind` after `rv`, plus the RV they bring the caller up to.
    pub(crate) fn events_after(
        &self,
        kind: Kind,
        rv: u64,
    ) -> Result<(Vec<HistEvent>, u64), Expired> {
        if rv < self.compacted_rv {
            return Err(Expired {
                requested: rv,
                oldest: self.compacted_rv,
            });
        }
        // History is sorted by RV: skip the prefix we've already seen.
        let start = self.history.partition_point(|e| e.rv <= rv);
        let evs = self
            .history
            .range(start..)
            .filter(|e| e.kind == kind)
            .cloned()
            .collect();
        Ok((evs, self.rv.max(rv)))
    }

    /// The objects of `kind` as they were at `rv` (reconstructed by undoing
    /// history), for consistent paginated lists.
    /// Whether no object of `kind` changed after `rv` (other kinds, and Events, may have):
    /// the live objects are then the snapshot at `rv`, and a paginated list need not copy
    /// them.
    pub(crate) fn unchanged_since(&self, kind: Kind, rv: u64) -> bool {
        rv >= self.compacted_rv
            && self
                .history
                .iter()
                .rev()
                .take_while(|ev| ev.rv > rv)
                .all(|ev| ev.kind != kind)
    }

    pub(crate) fn snapshot_at(&self, kind: Kind, rv: u64) -> Result<BTreeMap<Key, Value>, Expired> {
        if rv < self.compacted_rv {
            return Err(Expired {
                requested: rv,
                oldest: self.compacted_rv,
            });
        }
        let mut map = self.objects.get(&kind).cloned().unwrap_or_default();
        for ev in self.history.iter().rev() {
            if ev.rv <= rv {
                break;
            }
            if ev.kind != kind {
                continue;
            }
            match (&ev.ty, &ev.prev) {
                (EventType::Added, _) => {
                    map.remove(&ev.key);
                }
                (EventType::Modified | EventType::Deleted, Some(prev)) => {
                    map.insert(ev.key.clone(), prev.clone());
                }
                (_, None) => {}
            }
        }
        Ok(map)
    }

    /// Store a posted Event object; sets server-side metadata. Events bump
    /// the global RV but are not watchable.
    pub(crate) fn create_event(
        &mut self,
        api_version: &str,
        namespace: &str,
        mut obj: Value,
    ) -> Result<Value, String> {
        let Some(root) = obj.as_object_mut() else {
            return Err("body is not a JSON object".into());
        };
        root.insert("apiVersion".into(), api_version.into());
        root.insert("kind".into(), "Event".into());
        let meta = root
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        if !meta.is_object() {
            return Err("metadata is not a JSON object".into());
        }
        if let Some(ns) = meta.get("namespace").and_then(Value::as_str)
            && !ns.is_empty()
            && ns != namespace
        {
            return Err(format!(
                "the namespace of the provided object does not match the namespace sent on the request ({ns} != {namespace})"
            ));
        }
        let name = meta.get("name").and_then(Value::as_str).unwrap_or_default();
        if name.is_empty() {
            let Some(prefix) = meta.get("generateName").and_then(Value::as_str) else {
                return Err(
                    "metadata.name: Required value: name or generateName is required".into(),
                );
            };
            let suffix = format!(
                "{:05x}",
                (self.uid_seed ^ self.rv.wrapping_mul(0x2545_F491)) & 0xfffff
            );
            meta["name"] = Value::String(format!("{prefix}{suffix}"));
        }
        self.rv += 1;
        let uid = self.next_uid();
        meta["namespace"] = Value::String(namespace.to_owned());
        meta["uid"] = Value::String(uid);
        meta["creationTimestamp"] = Value::String(now_rfc3339());
        meta["resourceVersion"] = Value::String(self.rv.to_string());
        self.events.push(obj.clone());
        Ok(obj)
    }

    pub(crate) fn events(&self) -> Vec<Value> {
        self.events.clone()
    }
}

/// The current time as a Kubernetes `Time` string (RFC 3339, seconds, UTC).
pub(crate) fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

fn rfc3339(unix_secs: u64) -> String {
    let t = i64::try_from(unix_secs)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .unwrap_or(jiff::Timestamp::MAX);
    // Whole seconds: no fraction, as Kubernetes writes `Time`.
    format!("{t:.0}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_735_689_599), "2024-12-31T23:59:59Z");
    }

    fn svc(ns: &str, name: &str, port: u16) -> Value {
        json!({"metadata": {"name": name, "namespace": ns}, "spec": {"ports": [{"port": port}]}})
    }

    #[test]
    fn apply_sets_metadata_and_keeps_uid_on_update() {
        let mut s = Store::new(100);
        let a = s.apply(Kind::Service, svc("ns", "a", 80)).expect("apply");
        assert_eq!(a["apiVersion"], "v1");
        assert_eq!(a["kind"], "Service");
        assert_eq!(a["metadata"]["resourceVersion"], "2");
        let uid = a["metadata"]["uid"].clone();
        assert!(uid.as_str().is_some_and(|u| u.len() == 36));
        let b = s.apply(Kind::Service, svc("ns", "a", 81)).expect("apply");
        assert_eq!(b["metadata"]["uid"], uid);
        assert_eq!(b["metadata"]["resourceVersion"], "3");
        let c = s
            .apply(Kind::Service, json!({"metadata": {"name": "c"}}))
            .expect("apply");
        assert_eq!(c["metadata"]["namespace"], "default");
        assert!(s.apply(Kind::Service, json!({"metadata": {}})).is_err());
    }

    #[test]
    fn cluster_scoped_kinds_drop_the_namespace() {
        let mut s = Store::new(100);
        let c = s
            .apply(
                Kind::ServiceCidr,
                json!({"metadata": {"name": "kubernetes", "namespace": "ns"},
                       "spec": {"cidrs": ["10.96.0.0/16"]}}),
            )
            .expect("apply");
        assert_eq!(c["apiVersion"], "networking.k8s.io/v1");
        assert_eq!(c["kind"], "ServiceCIDR");
        assert!(c["metadata"].get("namespace").is_none());
        assert!(
            s.get(Kind::ServiceCidr, &(String::new(), "kubernetes".into()))
                .is_some()
        );
        assert_eq!(s.objects(Kind::Node).count(), 0);
        assert!(s.delete(Kind::ServiceCidr, &(String::new(), "kubernetes".into())));
        let (evs, _) = s.events_after(Kind::ServiceCidr, 1).expect("events");
        assert_eq!(
            evs.iter().map(|e| e.ty).collect::<Vec<_>>(),
            [EventType::Added, EventType::Deleted]
        );
        assert!(
            s.events_after(Kind::Service, 1)
                .expect("events")
                .0
                .is_empty()
        );
    }

    #[test]
    fn snapshot_undoes_later_changes() {
        let mut s = Store::new(100);
        s.apply(Kind::Service, svc("ns", "a", 80)).expect("apply");
        s.apply(Kind::Service, svc("ns", "b", 80)).expect("apply");
        let at = s.rv();
        s.apply(Kind::Service, svc("ns", "a", 99)).expect("apply");
        s.delete(Kind::Service, &("ns".into(), "b".into()));
        s.apply(Kind::Service, svc("ns", "c", 80)).expect("apply");
        s.apply(Kind::Node, json!({"metadata": {"name": "n1"}}))
            .expect("apply");
        let snap = s.snapshot_at(Kind::Service, at).expect("snapshot");
        let names: Vec<_> = snap.keys().map(|k| k.1.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(
            snap[&("ns".to_owned(), "a".to_owned())]["spec"]["ports"][0]["port"],
            80
        );
        s.compact();
        assert!(s.snapshot_at(Kind::Service, at).is_err());
        assert!(s.snapshot_at(Kind::Service, s.rv()).is_ok());
    }

    #[test]
    fn unchanged_since_ignores_other_kinds_only() {
        let mut s = Store::new(100);
        s.apply(Kind::Service, svc("ns", "a", 80)).expect("apply");
        let at = s.rv();
        assert!(s.unchanged_since(Kind::Service, at));
        s.apply(Kind::Node, json!({"metadata": {"name": "n1"}}))
            .expect("apply");
        assert!(
            s.unchanged_since(Kind::Service, at),
            "a Node changed, not a Service"
        );
        assert!(!s.unchanged_since(Kind::Node, at));
        s.apply(Kind::Service, svc("ns", "b", 80)).expect("apply");
        assert!(!s.unchanged_since(Kind::Service, at));
        assert!(s.unchanged_since(Kind::Service, s.rv()));
        s.compact();
        assert!(
            !s.unchanged_since(Kind::Service, at),
            "compacted history proves nothing"
        );
    }

    #[test]
    fn events_after_and_history_limit() {
        let mut s = Store::new(3);
        for i in 0..5 {
            s.apply(Kind::Service, svc("ns", &format!("s{i}"), 80))
                .expect("apply");
        }
        // RVs 2..=6; only the last 3 kept, so RV 3 is the oldest resumable.
        assert_eq!(s.compacted_rv(), 3);
        assert!(s.events_after(Kind::Service, 2).is_err());
        let (evs, cur) = s.events_after(Kind::Service, 4).expect("events");
        assert_eq!(evs.iter().map(|e| e.rv).collect::<Vec<_>>(), [5, 6]);
        assert_eq!(cur, 6);
        assert!(s.delete(Kind::Service, &("ns".into(), "s0".into())));
        assert!(!s.delete(Kind::Service, &("ns".into(), "s0".into())));
        let (evs, _) = s.events_after(Kind::Service, 6).expect("events");
        assert_eq!(evs[0].ty, EventType::Deleted);
        assert_eq!(evs[0].object["metadata"]["resourceVersion"], "7");
    }
}
