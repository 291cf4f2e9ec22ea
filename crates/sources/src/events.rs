//! Kubernetes Events about what this node's proxy does, as kube-proxy records them:
//! `Starting` on the Node when the daemon starts, and `FailedToStartServiceHealthcheck` on a
//! Service whose health check node port cannot be served; and Rudder's own
//! `SkippedInvalidInput` (a warning on the object whose field or whole self was skipped, with
//! the `rudder_invalid_input_skipped_total` reason in the note).
//!
//! Events are fire-and-forget: they go through a channel to one task that publishes them
//! (`events.k8s.io/v1`), and a failure to publish is logged, never retried in a loop and never
//! blocks a sync. Without an API server (`--manifests`), [`Events::disabled`] drops them: the
//! same facts are in the logs.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use rudder_model::{ObjectKind, ServiceKey};
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
    /// A Service has `spec.externalIPs`, which are not programmed because the
    /// `AllowServiceExternalIPs` feature gate is off (KEP-5707).
    ExternalIpsDisabled {
        /// The service.
        service: ServiceKey,
        /// Its external IPs.
        ips: Vec<std::net::IpAddr>,
    },
    /// Part of an object, or all of it, was skipped as invalid (see `rudder_model::Problem`).
    SkippedInvalidInput {
        /// The object's kind.
        kind: ObjectKind,
        /// Its namespace (empty for cluster-scoped objects).
        namespace: String,
        /// Its name.
        name: String,
        /// The `reason` label of `rudder_invalid_input_skipped_total`.
        reason: String,
        /// What is wrong, as logged.
        message: String,
    },
}

/// How long the same Event is not published again: problems are found again at every
/// relist and every full sync, and one Event per problem is what an operator needs.
const REPEAT_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

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
        ProxyEvent::ExternalIpsDisabled { service, ips } => (
            Event {
                type_: EventType::Warning,
                reason: "ExternalIPsDisabled".into(),
                note: Some(truncate(
                    format!(
                        "node {node} does not program spec.externalIPs {} of this Service: the AllowServiceExternalIPs feature gate is off (externalIPs are deprecated, KEP-5707); use a LoadBalancer Service instead",
                        ips.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    1024,
                )),
                action: "Skip".into(),
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
        ProxyEvent::SkippedInvalidInput {
            kind,
            namespace,
            name,
            reason,
            message,
        } => (
            Event {
                type_: EventType::Warning,
                reason: "SkippedInvalidInput".into(),
                // Shown by kubectl as it is: control characters from names are escaped.
                note: Some(truncate(
                    rudder_model::escape_controls(&format!(
                        "node {node} skipped invalid input ({reason}): {message}"
                    ))
                    .into_owned(),
                    1024,
                )),
                action: "Skip".into(),
                secondary: None,
            },
            ObjectReference {
                api_version: Some(api_version(*kind).into()),
                kind: Some(kind.to_string()),
                namespace: (!namespace.is_empty()).then(|| namespace.clone()),
                name: Some(name.clone()),
                ..ObjectReference::default()
            },
        ),
    }
}

/// Remembers what was published recently, so that a problem found again and again makes
/// one Event per [`REPEAT_AFTER`].
#[derive(Debug, Default)]
struct Recent {
    seen: std::collections::HashMap<String, std::time::Instant>,
}

impl Recent {
    /// Whether `e` should be published at `now` (and remembers it if so).
    fn admit(&mut self, e: &ProxyEvent, now: std::time::Instant) -> bool {
        if !matches!(
            e,
            ProxyEvent::SkippedInvalidInput { .. } | ProxyEvent::ExternalIpsDisabled { .. }
        ) {
            return true;
        }
        let key = format!("{e:?}");
        if let Some(t) = self.seen.get(&key) {
            if now.duration_since(*t) < REPEAT_AFTER {
                return false;
            }
        }
        if self.seen.len() >= 10_000 {
            self.seen
                .retain(|_, t| now.duration_since(*t) < REPEAT_AFTER);
        }
        self.seen.insert(key, now);
        true
    }
}

fn api_version(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Service | ObjectKind::Node => "v1",
        ObjectKind::EndpointSlice => "discovery.k8s.io/v1",
        ObjectKind::ServiceCidr => "networking.k8s.io/v1",
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
        let mut recent = Recent::default();
        while let Some(e) = rx.recv().await {
            if !recent.admit(&e, std::time::Instant::now()) {
                continue;
            }
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

    fn skipped(name: &str) -> ProxyEvent {
        ProxyEvent::SkippedInvalidInput {
            kind: ObjectKind::EndpointSlice,
            namespace: "ns".into(),
            name: name.into(),
            reason: "invalid_address".into(),
            message: "EndpointSlice ns/x: invalid endpoint address \"a\\nb\"".into(),
        }
    }

    #[test]
    fn skipped_input_is_a_warning_on_the_object() {
        let (e, r) = to_event(&skipped("web\u{1b}[31m"), "node-1");
        assert_eq!(e.type_, EventType::Warning);
        assert_eq!(e.reason, "SkippedInvalidInput");
        let note = e.note.expect("note");
        assert!(note.starts_with("node node-1 skipped invalid input (invalid_address): "));
        assert!(!note.chars().any(char::is_control), "{note:?}");
        assert_eq!(r.api_version.as_deref(), Some("discovery.k8s.io/v1"));
        assert_eq!(r.kind.as_deref(), Some("EndpointSlice"));
        assert_eq!(r.namespace.as_deref(), Some("ns"));
        let (_, r) = to_event(
            &ProxyEvent::SkippedInvalidInput {
                kind: ObjectKind::ServiceCidr,
                namespace: String::new(),
                name: "all".into(),
                reason: "service_cidr_too_broad".into(),
                message: String::new(),
            },
            "node-1",
        );
        assert_eq!(r.namespace, None);
        assert_eq!(r.kind.as_deref(), Some("ServiceCIDR"));
        assert_eq!(r.api_version.as_deref(), Some("networking.k8s.io/v1"));
    }

    #[test]
    fn services_with_disabled_external_ips_get_a_warning_once_per_period() {
        let e = ProxyEvent::ExternalIpsDisabled {
            service: ServiceKey::new("ns", "web"),
            ips: vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
        };
        let (ev, r) = to_event(&e, "node-1");
        assert_eq!(ev.type_, EventType::Warning);
        assert_eq!(ev.reason, "ExternalIPsDisabled");
        let note = ev.note.expect("note");
        assert!(
            note.starts_with("node node-1 does not program spec.externalIPs 192.0.2.1, 2001:db8::1 of this Service: the AllowServiceExternalIPs feature gate is off"),
            "{note}"
        );
        assert_eq!(r.kind.as_deref(), Some("Service"));
        assert_eq!(r.name.as_deref(), Some("web"));
        let mut recent = Recent::default();
        let t0 = std::time::Instant::now();
        assert!(recent.admit(&e, t0));
        assert!(!recent.admit(&e, t0 + REPEAT_AFTER / 2));
        assert!(recent.admit(&e, t0 + REPEAT_AFTER));
    }

    #[test]
    fn the_same_problem_makes_one_event_per_period() {
        let mut recent = Recent::default();
        let t0 = std::time::Instant::now();
        assert!(recent.admit(&skipped("a"), t0));
        assert!(!recent.admit(&skipped("a"), t0 + REPEAT_AFTER / 2));
        assert!(recent.admit(&skipped("b"), t0 + REPEAT_AFTER / 2));
        assert!(recent.admit(&skipped("a"), t0 + REPEAT_AFTER));
        // Other Events are never held back.
        assert!(recent.admit(&ProxyEvent::Starting, t0));
        assert!(recent.admit(&ProxyEvent::Starting, t0));
    }
}
