//! Kubernetes Events about what this node's proxy does, as kube-proxy records them:
//! `Starting` on the Node when the daemon starts, and `FailedToStartServiceHealthcheck` on a
//! Service whose health check node port cannot be served.
//!
//! Events are fire-and-forget: they go through a channel to one task that publishes them
//! (`events.k8s.io/v1`), and a failure to publish is logged, never retried in a loop and never
//! blocks a sync. Without an API server (`--manifests`), [`Events::disabled`] drops them: the
//! same facts are in the logs.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use rudder_model::ServiceKey;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// The reporting controller named in Rudder's Events.
pub const REPORTER: &str = "rudder";

/// An Event Rudder records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyEvent {
    /// The daemon started (on this node's Node object).
    Starting,
    /// A Service's health check node port could not be served on this node.
    FailedToStartServiceHealthcheck {
        /// The service.
        service: ServiceKey,
        /// Its `healthCheckNodePort`.
        port: u16,
        /// Why (the listen error).
        error: String,
    },
}

/// Where Events go: a cheap handle to clone into any task.
#[derive(Debug, Clone, Default)]
pub struct Events {
    tx: Option<UnboundedSender<ProxyEvent>>,
}

impl Events {
    /// A handle that drops every Event (no API server).
    pub fn disabled() -> Events {
        Events { tx: None }
    }

    /// Queues an Event for publication; never blocks.
    pub fn record(&self, e: ProxyEvent) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(e);
        }
    }
}

/// The Event kube-proxy would record, and the object it is about.
pub fn to_event(e: &ProxyEvent, node: &str) -> (Event, ObjectReference) {
    match e {
        ProxyEvent::Starting => (
            Event {
                type_: EventType::Normal,
                reason: "Starting".into(),
                note: None,
                action: "StartRudder".into(),
                secondary: None,
            },
            // kube-proxy's node reference: cluster-scoped, the node name as UID.
            ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.to_owned()),
                uid: Some(node.to_owned()),
                ..ObjectReference::default()
            },
        ),
        ProxyEvent::FailedToStartServiceHealthcheck {
            service,
            port,
            error,
        } => (
            Event {
                type_: EventType::Warning,
                reason: "FailedToStartServiceHealthcheck".into(),
                note: Some(truncate(
                    format!(
                        "node {node} failed to start healthcheck \"{service}\" on port {port}: {error}"
                    ),
                    1024,
                )),
                action: "Listen".into(),
                secondary: None,
            },
            ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Service".into()),
                namespace: Some(service.namespace.clone()),
                name: Some(service.name.clone()),
                ..ObjectReference::default()
            },
        ),
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary (the API's limit for notes).
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Starts the task that publishes Events for `node` through `client`.
pub fn spawn(client: Client, node: &str) -> (Events, JoinHandle<()>) {
    let (tx, mut rx) = unbounded_channel::<ProxyEvent>();
    let node = node.to_owned();
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: REPORTER.into(),
            instance: Some(node.clone()),
        },
    );
    let task = tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            let (event, reference) = to_event(&e, &node);
            match recorder.publish(&event, &reference).await {
                Ok(()) => debug!(reason = %event.reason, "recorded event"),
                Err(err) => warn!(reason = %event.reason, "cannot record the event: {err}"),
            }
        }
    });
    (Events { tx: Some(tx) }, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_look_like_kube_proxys() {
        let (e, r) = to_event(&ProxyEvent::Starting, "node-1");
        assert_eq!(e.reason, "Starting");
        assert_eq!(e.type_, EventType::Normal);
        assert_eq!(r.kind.as_deref(), Some("Node"));
        assert_eq!(r.name.as_deref(), Some("node-1"));
        assert_eq!(r.namespace, None);

        let (e, r) = to_event(
            &ProxyEvent::FailedToStartServiceHealthcheck {
                service: ServiceKey::new("ns", "web"),
                port: 30000,
                error: "address in use".repeat(200),
            },
            "node-1",
        );
        assert_eq!(e.reason, "FailedToStartServiceHealthcheck");
        assert_eq!(e.type_, EventType::Warning);
        assert_eq!(e.action, "Listen");
        let note = e.note.expect("note");
        assert!(
            note.starts_with("node node-1 failed to start healthcheck \"ns/web\" on port 30000: "),
            "{note}"
        );
        assert!(note.len() <= 1024);
        assert_eq!(r.kind.as_deref(), Some("Service"));
        assert_eq!(r.namespace.as_deref(), Some("ns"));
    }
}
