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
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::change::{self, Change};

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
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
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
                warn!(
                    kind,
                    "watch failed, keeping the current rules and retrying: {e}"
                );
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
