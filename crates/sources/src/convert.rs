//! Kubernetes objects into the model: the one code path every source takes.
//!
//! The API watchers convert each object as it arrives ([`service_applied`] and friends), the
//! manifest source converts every object of a read ([`convert`]); both go through the same
//! per-object functions ([`service`], [`slice`], [`node`], [`service_cidrs`]), which log and
//! report what they skip ([`rudder_controller::change::report_problems`]), so a Service is
//! converted once, alike, whatever the source.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rudder_controller::change::{Change, report_problems};
use rudder_model::{
    EndpointSlice, Node, ObjectKind, Problem, Reason, Rejected, Service, ServiceKey, SliceKey, k8s,
};
use tracing::debug;

use crate::manifests::Objects;

/// The CIDRs of a ServiceCIDR object (`spec.cidrs`), without the invalid or refused ones,
/// which are logged and counted (see [`rudder_model::k8s::service_cidr`]).
pub fn service_cidrs(s: &k8s_openapi::api::networking::v1::ServiceCIDR) -> Vec<rudder_model::Cidr> {
    let (cidrs, problems) = k8s::service_cidr(s);
    report_problems(&problems);
    cidrs
}

/// What converting one object gave.
#[derive(Debug)]
pub enum Conversion<T> {
    /// The object in the model, and the fields of it that were dropped.
    Used(T, Vec<Problem>),
    /// Not one for Rudder (another proxy's Service, a headless service's slice).
    Ignored,
    /// Invalid as a whole.
    Invalid(Problem),
}

impl<T> Conversion<T> {
    /// The object, after reporting what was skipped.
    fn reported(self) -> Option<T> {
        match self {
            Conversion::Used(t, problems) => {
                report_problems(&problems);
                Some(t)
            }
            Conversion::Ignored => None,
            Conversion::Invalid(p) => {
                report_problems(&[p]);
                None
            }
        }
    }
}

/// Converts a Service.
pub fn service_of(s: &core::Service) -> Conversion<Service> {
    match k8s::service(s) {
        Ok((svc, problems)) => Conversion::Used(svc, problems),
        Err(Rejected::Ignored(why)) => {
            debug!(namespace = ?s.metadata.namespace, name = ?s.metadata.name, "ignoring service: {why}");
            Conversion::Ignored
        }
        Err(Rejected::Invalid(p)) => Conversion::Invalid(p),
    }
}

/// Converts an EndpointSlice.
pub fn slice_of(s: &discovery::EndpointSlice) -> Conversion<EndpointSlice> {
    match k8s::endpoint_slice(s) {
        Ok((slice, problems)) => Conversion::Used(slice, problems),
        Err(Rejected::Ignored(_)) => Conversion::Ignored,
        Err(Rejected::Invalid(p)) => Conversion::Invalid(p),
    }
}

/// Converts a Service, reporting problems; `None` when it is ignored or invalid.
pub fn service(s: &core::Service) -> Option<Service> {
    service_of(s).reported()
}

/// Converts an EndpointSlice, reporting problems; `None` when it is ignored or invalid.
pub fn slice(s: &discovery::EndpointSlice) -> Option<EndpointSlice> {
    slice_of(s).reported()
}

/// Converts a Node, reporting problems.
pub fn node(n: &core::Node) -> Node {
    let (node, problems) = k8s::node(n);
    report_problems(&problems);
    node
}

/// The change for a Service that was created or updated. An object that cannot be used
/// (invalid, or now labelled for another proxy) becomes a deletion, so its old rules go.
pub fn service_applied(s: &core::Service) -> Option<Change> {
    match service(s) {
        Some(svc) => Some(Change::ServiceApplied(Box::new(svc))),
        None => service_key(s).map(Change::ServiceDeleted),
    }
}

/// The change for a deleted Service.
pub fn service_deleted(s: &core::Service) -> Option<Change> {
    service_key(s).map(Change::ServiceDeleted)
}

/// The change for an EndpointSlice that was created or updated (or became unusable).
pub fn slice_applied(s: &discovery::EndpointSlice) -> Option<Change> {
    match slice(s) {
        Some(sl) => Some(Change::SliceApplied(Box::new(sl))),
        None => slice_key(s).map(Change::SliceDeleted),
    }
}

/// The change for a deleted EndpointSlice.
pub fn slice_deleted(s: &discovery::EndpointSlice) -> Option<Change> {
    slice_key(s).map(Change::SliceDeleted)
}

fn service_key(s: &core::Service) -> Option<ServiceKey> {
    match (&s.metadata.namespace, &s.metadata.name) {
        (Some(ns), Some(n)) => Some(ServiceKey::new(ns, n)),
        _ => None,
    }
}

fn slice_key(s: &discovery::EndpointSlice) -> Option<SliceKey> {
    match (&s.metadata.namespace, &s.metadata.name) {
        (Some(ns), Some(n)) => Some(SliceKey {
            namespace: ns.clone(),
            name: n.clone(),
        }),
        _ => None,
    }
}

/// The model objects converted from manifests, with what was skipped.
#[derive(Debug, Default)]
pub struct Converted {
    /// The Services used.
    pub services: Vec<rudder_model::Service>,
    /// The EndpointSlices used.
    pub slices: Vec<rudder_model::EndpointSlice>,
    /// This node's Node, if there is one.
    pub node: Option<Node>,
    /// The service CIDRs of every ServiceCIDR object, with the object's name, sorted, without
    /// the refused ones.
    pub service_cidrs: Vec<rudder_model::NamedCidr>,
    /// What was skipped (not reported yet: the caller decides, see [`convert`]).
    pub problems: Vec<Problem>,
    /// Objects ignored (meant for another proxy, headless).
    pub ignored: usize,
}

/// The objects of `items` that are used: of several with the same key (kind, namespace and
/// name), the last one in file and document order; objects without a key are all kept. The
/// earlier duplicates are reported as problems. `key` is `None` for objects without a name.
fn last_of_each<'a, T>(
    items: impl IntoIterator<Item = &'a T>,
    kind: ObjectKind,
    key: impl Fn(&T) -> Option<(String, String)>,
    problems: &mut Vec<Problem>,
) -> Vec<&'a T>
where
    T: 'a,
{
    let items: Vec<&T> = items.into_iter().collect();
    let mut last: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        if let Some(k) = key(item)
            && last.insert(k.clone(), i).is_some()
        {
            problems.push(Problem {
                kind,
                namespace: k.0,
                name: k.1,
                reason: Reason::Duplicate,
            });
        }
    }
    items
        .iter()
        .enumerate()
        .filter(|(i, item)| key(item).is_none_or(|k| last.get(&k) == Some(i)))
        .map(|(_, item)| *item)
        .collect()
}

fn namespaced_key(m: &ObjectMeta) -> Option<(String, String)> {
    match (&m.namespace, &m.name) {
        (Some(ns), Some(n)) if !ns.is_empty() && !n.is_empty() => Some((ns.clone(), n.clone())),
        _ => None,
    }
}

fn cluster_key(m: &ObjectMeta) -> Option<(String, String)> {
    m.name
        .as_ref()
        .filter(|n| !n.is_empty())
        .map(|n| (String::new(), n.clone()))
}

/// Converts manifest objects into the model; `hostname` picks this node's Node object.
/// `rudder compile` and `rudder run` both read manifests through this function, so they
/// resolve them alike, and it converts each object with the functions the API watchers use.
/// Problems are returned, not reported: `compile` prints them, the follower reports only
/// those it has not reported before. Of several objects of one kind with the same namespace and name (Nodes
/// and ServiceCIDRs: the same name), the last one in file order (files sorted by path, then
/// document order) is used, as if each document were applied in turn; if that one is invalid
/// or ignored, so is the object. The earlier ones are reported (`duplicate_object`).
pub fn convert(objs: &Objects, hostname: &str) -> Converted {
    let mut out = Converted::default();
    let services = last_of_each(
        &objs.services,
        ObjectKind::Service,
        |s| namespaced_key(&s.metadata),
        &mut out.problems,
    );
    for s in services {
        match service_of(s) {
            Conversion::Used(svc, problems) => {
                out.problems.extend(problems);
                out.services.push(svc);
            }
            Conversion::Ignored => out.ignored += 1,
            Conversion::Invalid(p) => out.problems.push(p),
        }
    }
    let slices = last_of_each(
        &objs.slices,
        ObjectKind::EndpointSlice,
        |s| namespaced_key(&s.metadata),
        &mut out.problems,
    );
    for s in slices {
        match slice_of(s) {
            Conversion::Used(slice, problems) => {
                out.problems.extend(problems);
                out.slices.push(slice);
            }
            Conversion::Ignored => out.ignored += 1,
            Conversion::Invalid(p) => out.problems.push(p),
        }
    }
    // Node names are matched case-insensitively, as kube-proxy matches --hostname-override.
    let this_node = objs
        .nodes
        .iter()
        .filter(|n| n.metadata.name.as_deref().map(str::to_lowercase).as_deref() == Some(hostname));
    let nodes = last_of_each(
        this_node,
        ObjectKind::Node,
        |_| Some((String::new(), hostname.to_owned())),
        &mut out.problems,
    );
    if let Some(n) = nodes.last() {
        let (node, problems) = k8s::node(n);
        out.problems.extend(problems);
        out.node = Some(node);
    }
    let cidrs = last_of_each(
        &objs.service_cidrs,
        ObjectKind::ServiceCidr,
        |c| cluster_key(&c.metadata),
        &mut out.problems,
    );
    for s in cidrs {
        let (cidrs, problems) = k8s::service_cidr(s);
        let object = s.metadata.name.clone().unwrap_or_default();
        out.service_cidrs
            .extend(cidrs.into_iter().map(|cidr| rudder_model::NamedCidr {
                cidr,
                object: object.clone(),
            }));
        out.problems.extend(problems);
    }
    out.service_cidrs.sort();
    out.service_cidrs.dedup();
    out
}
