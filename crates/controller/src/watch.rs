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

use crate::change::Change;

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
            watcher::Config::default().labels(SERVICE_LABEL_SELECTOR),
            changes.clone(),
            |s| Change::ServiceApplied(Box::new(s)),
            |s| Change::ServiceDeleted(Box::new(s)),
            Change::ServicesListed,
        )),
        tokio::spawn(watch(
            slices,
            watcher::Config::default().labels(SLICE_LABEL_SELECTOR),
            changes.clone(),
            |s| Change::SliceApplied(Box::new(s)),
            |s| Change::SliceDeleted(Box::new(s)),
            Change::SlicesListed,
        )),
        tokio::spawn(watch(
            nodes,
            watcher::Config::default().fields(&format!("metadata.name={node_name}")),
            changes,
            |n| Change::NodeApplied(Box::new(n)),
            |_| Change::NodeDeleted,
            |mut list: Vec<Node>| match list.pop() {
                Some(n) => Change::NodeApplied(Box::new(n)),
                None => Change::NodeDeleted,
            },
        )),
    ]
}

async fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    changes: UnboundedSender<Change>,
    applied: impl Fn(K) -> Change,
    deleted: impl Fn(K) -> Change,
    listed: impl Fn(Vec<K>) -> Change,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
{
    let kind = K::kind(&Default::default()).to_string();
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut buffer: Vec<K> = Vec::new();
    while let Some(event) = stream.next().await {
        let change = match event {
            Ok(Event::Init) => {
                buffer.clear();
                continue;
            }
            Ok(Event::InitApply(obj)) => {
                buffer.push(obj);
                continue;
            }
            Ok(Event::InitDone) => {
                debug!(kind, count = buffer.len(), "listed");
                listed(std::mem::take(&mut buffer))
            }
            Ok(Event::Apply(obj)) => applied(obj),
            Ok(Event::Delete(obj)) => deleted(obj),
            Err(e) => {
                warn!(
                    kind,
                    "watch failed, keeping the current rules and retrying: {e}"
                );
                continue;
            }
        };
        if changes.send(change).is_err() {
            return;
        }
    }
}
