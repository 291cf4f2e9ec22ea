//! Watchers for Services, EndpointSlices and this node's Node, turned into [`Change`]s.
//!
//! Each watcher lists, then watches from the list's resourceVersion; on any error (the API
//! server unreachable, a dropped connection) it retries with exponential backoff, and on
//! `410 Gone` it lists again. A (re-)list is buffered until it is complete and then sent as
//! one `…Listed` change that *replaces* that kind of object, so objects deleted while Rudder
//! was disconnected disappear, and a list interrupted half-way never removes anything.
//! While the API server is away nothing is sent at all: the rules stay as they are.

use std::fmt::Debug;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::convert as change;
use rudder_controller::change::Change;

/// Services handed to another proxy carry this label; the API server filters them out.
pub const SERVICE_LABEL_SELECTOR: &str = "!service.kubernetes.io/service-proxy-name";
/// EndpointSlices of headless services carry this label; the API server filters them out.
pub const SLICE_LABEL_SELECTOR: &str = "!service.kubernetes.io/headless";

/// Starts the three watchers on the current tokio runtime. They run until `changes` is
/// closed or the tasks are aborted.
pub fn spawn(
    client: Client,
    node_name: &str,
    changes: UnboundedSender<Change>,
) -> Vec<JoinHandle<()>> {
    let services = Api::<Service>::all(client.clone());
    let slices = Api::<EndpointSlice>::all(client.clone());
    let nodes = Api::<Node>::all(client);
    vec![
        tokio::spawn(watch(
            services,
            watcher::Config::default()
                .labels(SERVICE_LABEL_SELECTOR)
                .page_size(PAGE_SIZE),
            changes.clone(),
            change::service,
            change::service_applied,
            change::service_deleted,
            Change::ServicesListed,
        )),
        tokio::spawn(watch(
            slices,
            watcher::Config::default()
                .labels(SLICE_LABEL_SELECTOR)
                .page_size(PAGE_SIZE),
            changes.clone(),
            change::slice,
            change::slice_applied,
            change::slice_deleted,
            Change::SlicesListed,
        )),
        tokio::spawn(watch(
            nodes,
            watcher::Config::default().fields(&format!("metadata.name={node_name}")),
            changes,
            |n| Some(change::node(n)),
            |n| Some(Change::NodeApplied(Box::new(change::node(n)))),
            |_| Some(Change::NodeDeleted),
            |mut list: Vec<rudder_model::Node>| match list.pop() {
                Some(n) => Change::NodeApplied(Box::new(n)),
                None => Change::NodeDeleted,
            },
        )),
    ]
}

/// Watches ServiceCIDR objects and sends the union of their CIDRs whenever it changes. A
/// cluster without the API (before Kubernetes 1.33) or without permission only gets retries
/// and debug log lines: ServiceCIDRs are optional and never hold up a sync.
pub fn spawn_service_cidrs(client: Client, changes: UnboundedSender<Change>) -> JoinHandle<()> {
    use k8s_openapi::api::networking::v1::ServiceCIDR;
    tokio::spawn(async move {
        let api = Api::<ServiceCIDR>::all(client);
        let mut stream = watcher::watcher(api, watcher::Config::default())
            .backoff(Reconnect::default())
            .boxed();
        let mut current: std::collections::BTreeMap<String, Vec<rudder_model::Cidr>> =
            Default::default();
        let mut listing: std::collections::BTreeMap<String, Vec<rudder_model::Cidr>> =
            Default::default();
        let mut sent: Option<Vec<rudder_model::NamedCidr>> = None;
        while let Some(event) = stream.next().await {
            let name = |o: &ServiceCIDR| o.metadata.name.clone().unwrap_or_default();
            match event {
                Ok(Event::Init) => listing.clear(),
                Ok(Event::InitApply(o)) => {
                    listing.insert(name(&o), change::service_cidrs(&o));
                }
                Ok(Event::InitDone) => current = std::mem::take(&mut listing),
                Ok(Event::Apply(o)) => {
                    current.insert(name(&o), change::service_cidrs(&o));
                }
                Ok(Event::Delete(o)) => {
                    current.remove(&name(&o));
                }
                Err(e) => {
                    if !report_malformed(rudder_model::ObjectKind::ServiceCidr, &e) {
                        debug!("ServiceCIDR watch failed, retrying: {e}");
                    }
                    continue;
                }
            }
            let all: Vec<rudder_model::NamedCidr> = current
                .iter()
                .flat_map(|(object, cidrs)| {
                    cidrs.iter().map(|cidr| rudder_model::NamedCidr {
                        cidr: *cidr,
                        object: object.clone(),
                    })
                })
                .collect();
            if sent.as_ref() != Some(&all) {
                sent = Some(all.clone());
                if changes.send(Change::ServiceCidrs(all)).is_err() {
                    return;
                }
            }
        }
    })
}

/// Reports an object the API server sent that does not deserialize (a field of the wrong
/// type) as a `malformed_document` problem: logged and counted like other invalid input.
/// Returns whether `e` was such an error.
///
/// kube-rs deserializes a list page as a whole, so one such object fails the whole (re-)list,
/// which the watcher retries with backoff: the rules stay as they are, and the problem is
/// counted at every attempt until the object is fixed. A malformed watch event is skipped
/// and the watch goes on. (A real API server validates field types and never serves these.)
///
/// kube-rs does not always say so: a watch event line that does not deserialize is parsed
/// again as a `Status`, which has only optional fields, so it comes back as an API error with
/// an empty status (code 0, no message, no reason) instead of the serde error. An error line
/// from the API server is a well-formed `ERROR` watch event and never takes that path.
fn report_malformed(kind: rudder_model::ObjectKind, e: &watcher::Error) -> bool {
    let what = match e {
        watcher::Error::InitialListFailed(kube::Error::SerdeError(s)) => {
            format!("{s} in a list (the list is retried; the current rules stay)")
        }
        watcher::Error::WatchFailed(kube::Error::SerdeError(s)) => {
            format!("{s} in a watch event (skipped)")
        }
        watcher::Error::WatchFailed(kube::Error::Api(status))
            if status.code == 0 && status.message.is_empty() && status.reason.is_empty() =>
        {
            "a watch event that does not deserialize (skipped)".to_owned()
        }
        _ => return false,
    };
    rudder_controller::change::report_problems(&[rudder_model::Problem {
        kind,
        namespace: String::new(),
        name: String::new(),
        reason: rudder_model::Reason::Malformed(what),
    }]);
    true
}

/// Objects per page of the initial list. Larger pages than kube-rs's default of 500 cut the
/// number of round trips at scale; objects are converted page by page either way.
const PAGE_SIZE: u32 = 2000;

async fn watch<K, M>(
    api: Api<K>,
    config: watcher::Config,
    changes: UnboundedSender<Change>,
    convert: impl Fn(&K) -> Option<M>,
    applied: impl Fn(&K) -> Option<Change>,
    deleted: impl Fn(&K) -> Option<Change>,
    listed: impl Fn(Vec<M>) -> Change,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
{
    let kind = K::kind(&Default::default()).to_string();
    let mut stream = watcher::watcher(api, config)
        .backoff(Reconnect::default())
        .boxed();
    // A (re-)list in progress, already converted.
    let mut buffer: Vec<M> = Vec::new();
    while let Some(event) = stream.next().await {
        let change = match event {
            Ok(Event::Init) => {
                buffer.clear();
                continue;
            }
            Ok(Event::InitApply(obj)) => {
                buffer.extend(convert(&obj));
                continue;
            }
            Ok(Event::InitDone) => {
                debug!(kind, count = buffer.len(), "listed");
                Some(listed(std::mem::take(&mut buffer)))
            }
            Ok(Event::Apply(obj)) => applied(&obj),
            Ok(Event::Delete(obj)) => deleted(&obj),
            Err(e) => {
                let malformed = match kind.as_str() {
                    "Service" => Some(rudder_model::ObjectKind::Service),
                    "EndpointSlice" => Some(rudder_model::ObjectKind::EndpointSlice),
                    "Node" => Some(rudder_model::ObjectKind::Node),
                    _ => None,
                }
                .is_some_and(|k| report_malformed(k, &e));
                if !malformed {
                    warn!(
                        kind,
                        "watch failed, keeping the current rules and retrying: {e}"
                    );
                }
                continue;
            }
        };
        if let Some(change) = change {
            if changes.send(change).is_err() {
                return;
            }
        }
    }
}

/// The watchers' retry delays: 250 ms doubling to 10 s, with ±25 % jitter so that many nodes
/// do not reconnect in lockstep, and back to 250 ms after any successful event.
///
/// kube-rs's default grows to 30 s and only resets after two minutes; a node proxy should
/// converge sooner after an API server outage, while the jitter and the 10 s cap still keep a
/// large cluster's reconnection load bounded.
#[derive(Debug)]
struct Reconnect {
    next: std::time::Duration,
    attempt: u64,
    seed: std::collections::hash_map::RandomState,
}

impl Reconnect {
    const MIN: std::time::Duration = std::time::Duration::from_millis(250);
    const MAX: std::time::Duration = std::time::Duration::from_secs(10);
}

impl Default for Reconnect {
    fn default() -> Reconnect {
        Reconnect {
            next: Reconnect::MIN,
            attempt: 0,
            seed: Default::default(),
        }
    }
}

impl Iterator for Reconnect {
    type Item = std::time::Duration;

    fn next(&mut self) -> Option<std::time::Duration> {
        use std::hash::BuildHasher;
        self.attempt += 1;
        // A fraction in [0.75, 1.25) from a per-process random hash of the attempt number.
        let r = (self.seed.hash_one(self.attempt) % 1000) as f64 / 1000.0;
        let delay = self.next.mul_f64(0.75 + r / 2.0);
        self.next = (self.next * 2).min(Reconnect::MAX);
        Some(delay)
    }
}

impl Backoff for Reconnect {
    fn reset(&mut self) {
        self.next = Reconnect::MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_grow_jittered_to_a_cap_and_reset() {
        let mut b = Reconnect::default();
        let first = b.next().unwrap();
        assert!(
            first >= std::time::Duration::from_millis(187)
                && first < std::time::Duration::from_millis(313),
            "{first:?}"
        );
        let delays: Vec<_> = (0..10).map(|_| b.next().unwrap()).collect();
        assert!(delays.iter().all(|d| *d <= Reconnect::MAX.mul_f64(1.25)));
        assert!(
            delays[9] >= Reconnect::MAX.mul_f64(0.75),
            "capped at 10 s: {delays:?}"
        );
        b.reset();
        assert!(b.next().unwrap() < std::time::Duration::from_millis(313));
    }
}
