//! A fake Kubernetes API server for Rudder's tests.
//!
//! # What this crate owns
//!
//! A small but *faithful* list/watch test server: a real HTTP/1.1 server
//! (plain HTTP, no TLS) that speaks the Kubernetes API wire protocol for
//! exactly the resources Rudder consumes, backed by an in-memory store that
//! tests drive through [`FakeApiServer`]'s synchronous control API. It is
//! faithful enough that unmodified kube-rs clients (`Api::list`,
//! `Api::watch`, `kube::runtime::watcher` + `reflector`) work against it, and
//! it can inject the failures a controller must survive: dropped watches,
//! compacted history (HTTP 410 "Expired"), refused connections, missing or
//! wrong credentials and RBAC denials.
//!
//! # What it must not be
//!
//! * **Shipped in the Rudder binary.** This is a dev/test-only crate
//!   (`publish = false`); production code must never depend on it.
//! * **A general API server.** It knows Services, EndpointSlices, Nodes and
//!   ServiceCIDRs (get/list/watch), accepts Event creation, and serves just enough
//!   discovery (`/version`, `/api`, `/apis`, …) to keep clients happy. No
//!   admission, validation, defaulting, PUT/PATCH/DELETE over HTTP, protobuf,
//!   TLS or aggregated discovery. Tests change state through the Rust
//!   control API, not through HTTP writes.
//!
//! # Protocol summary
//!
//! | Path | Verbs |
//! | --- | --- |
//! | `/api/v1/services`, `/api/v1/namespaces/{ns}/services[/{name}]` | list, watch, get |
//! | `/apis/discovery.k8s.io/v1/endpointslices`, `…/namespaces/{ns}/endpointslices[/{name}]` | list, watch, get |
//! | `/api/v1/nodes[/{name}]` | list, watch, get |
//! | `/apis/networking.k8s.io/v1/servicecidrs[/{name}]` | list, watch, get |
//! | `POST /api/v1/namespaces/{ns}/events`, `POST /apis/events.k8s.io/v1/namespaces/{ns}/events` | create (201) |
//! | `/version`, `/api`, `/apis`, `/api/v1`, `/apis/{group}[/v1]`, `/healthz`, `/livez`, `/readyz` | discovery / health |
//!
//! Anything else answers 404 with a `Status` object; a wrong method on a
//! known path answers 405.
//!
//! **Store.** One global resource-version (RV) counter shared by all kinds,
//! like etcd's revision. Every [`FakeApiServer::apply_service`] (and
//! friends) bumps it and records an ADDED or MODIFIED event (always, even if
//! nothing changed); every delete records DELETED carrying the object's last
//! state with the deletion's RV. `uid` and `creationTimestamp` are set on
//! create and kept on update; namespaced objects without a namespace land in
//! `default`. History keeps the last [`Config::history_limit`] changes;
//! [`FakeApiServer::compact`] forgets all of it.
//!
//! **Lists** return `{Kind}List` documents whose `metadata.resourceVersion`
//! is the current global RV, items sorted by (namespace, name). The
//! `resourceVersion` query parameter is accepted and ignored (`""`, `"0"` or
//! a number all serve the latest state), except together with
//! `resourceVersionMatch=Exact`, which serves the exact historical snapshot
//! (410 if compacted). `limit` + `continue` paginate over a consistent
//! snapshot reconstructed from history; the opaque continue token encodes the
//! snapshot RV and the last key, and answers 410 "Expired" once that RV has
//! been compacted. `metadata.remainingItemCount` is set on partial pages
//! without selectors. `labelSelector` supports `k=v`, `k==v`, `k!=v`,
//! `k in (a,b)`, `k notin (a,b)`, `k`, `!k` (comma = AND); `fieldSelector`
//! supports `metadata.name` and `metadata.namespace` with `=`, `==`, `!=`.
//! Anything else is a 400 `Status`.
//!
//! **Watches** (`watch=1|true`) stream one JSON `WatchEvent` per line
//! (chunked, one chunk per event). `resourceVersion=N` replays every change
//! after N from history, then streams live; unset, `""` or `"0"` first sends
//! ADDED for every current object. If N predates the history the response is
//! still 200 but carries a single `ERROR` event with a 410 `Expired` `Status`
//! ("too old resource version: N (M)") and ends, as the real apiserver does.
//! `allowWatchBookmarks=true` adds a BOOKMARK right after the initial replay
//! and then every [`Config::bookmark_interval`]. `timeoutSeconds` ends the
//! stream (capped by [`Config::max_watch_timeout`], which is also the
//! default). Selectors apply per watcher like the real cacher: an object
//! that starts matching arrives as ADDED, one that stops matching arrives as
//! DELETED (previous content, new RV). Streaming lists are supported:
//! `sendInitialEvents=true` (which requires
//! `resourceVersionMatch=NotOlderThan` and `allowWatchBookmarks=true`, else
//! 422) sends ADDED for the current state and then a BOOKMARK annotated
//! `k8s.io/initial-events-end: "true"`.
//!
//! **Auth.** With [`Config::token`] set, every request needs
//! `Authorization: Bearer <token>` (else 401 `Unauthorized`). With
//! [`Config::allowed`] set, resource requests outside the allowed
//! (verb, resource) pairs get 403 `Forbidden` with the real apiserver's
//! message format. Discovery and health paths need only authentication.
//!
//! # Example
//!
//! ```no_run
//! use rudder_fake_apiserver::{Config, FakeApiServer};
//! let server = FakeApiServer::start_local(Config::default().with_token("secret"))?;
//! let kubeconfig_yaml = server.kubeconfig(Some("secret"));
//! # let _ = kubeconfig_yaml;
//! # Ok::<(), std::io::Error>(())
//! ```

#![deny(missing_docs)]

mod selector;
mod server;
mod store;

use std::collections::BTreeSet;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use server::{Shared, lock};
use store::Kind;

/// The user name RBAC denials are reported for by default.
pub const DEFAULT_USER: &str = "system:serviceaccount:kube-system:rudder";

/// Server configuration. Start from [`Config::default`] and adjust.
#[derive(Clone, Debug)]
pub struct Config {
    /// Required bearer token; `None` accepts every request (the default).
    pub token: Option<String>,
    /// RBAC-style allow-list of (verb, resource) pairs, e.g.
    /// `("list", "services")`, `("watch", "endpointslices")`,
    /// `("get", "nodes")`, `("list", "servicecidrs")`, `("create", "events")`.
    /// `None` (the default)
    /// allows everything.
    pub allowed: Option<BTreeSet<(String, String)>>,
    /// The user named in 403 messages; defaults to [`DEFAULT_USER`].
    pub user: String,
    /// Period of BOOKMARK events on watches that asked for them (default 1 s).
    pub bookmark_interval: Duration,
    /// Longest a watch stays open, and the default when the client sends no
    /// `timeoutSeconds` (default 300 s).
    pub max_watch_timeout: Duration,
    /// How many changes the history keeps before the oldest are compacted
    /// away (default 100 000).
    pub history_limit: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            token: None,
            allowed: None,
            user: DEFAULT_USER.to_owned(),
            bookmark_interval: Duration::from_secs(1),
            max_watch_timeout: Duration::from_secs(300),
            history_limit: 100_000,
        }
    }
}

impl Config {
    /// Require `Authorization: Bearer <token>`.
    #[must_use]
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Switch to allow-list RBAC (if not already) and allow `verb` on
    /// `resource` (plural, e.g. `"services"`).
    #[must_use]
    pub fn allow(mut self, verb: &str, resource: &str) -> Self {
        self.allowed
            .get_or_insert_with(BTreeSet::new)
            .insert((verb.to_owned(), resource.to_owned()));
        self
    }

    /// Switch to allow-list RBAC with nothing allowed yet.
    #[must_use]
    pub fn deny_all(mut self) -> Self {
        self.allowed = Some(BTreeSet::new());
        self
    }

    /// Set the bookmark period.
    #[must_use]
    pub fn with_bookmark_interval(mut self, d: Duration) -> Self {
        self.bookmark_interval = d;
        self
    }

    /// Set the longest / default watch duration.
    #[must_use]
    pub fn with_max_watch_timeout(mut self, d: Duration) -> Self {
        self.max_watch_timeout = d;
        self
    }
}

/// One HTTP request the server answered, for assertions on what a client did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method, e.g. `"GET"`.
    pub method: String,
    /// Request path, e.g. `"/api/v1/services"`.
    pub path: String,
    /// Raw (still percent-encoded) query string, without `?`.
    pub query: String,
    /// `get`, `list`, `watch` or `create` for resource requests that got past
    /// authentication.
    pub verb: Option<String>,
    /// Plural resource name for resource requests that got past
    /// authentication.
    pub resource: Option<String>,
    /// HTTP status code of the response (for watches: of the response head).
    pub status: u16,
}

/// A running fake API server. Dropping it (or [`FakeApiServer::shutdown`])
/// closes every connection and joins its background thread.
///
/// All methods take `&self`, are thread-safe and never block on the network,
/// so they can be called from sync and async test code alike.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer")
            .field("addr", &self.shared.addr)
            .finish_non_exhaustive()
    }
}

impl FakeApiServer {
    /// Serve on an already-bound listener (e.g. bound inside a network
    /// namespace). Runs its own multi-threaded tokio runtime (2 workers) on
    /// background threads; callable from inside or outside another runtime.
    pub fn start(listener: TcpListener, config: Config) -> io::Result<FakeApiServer> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fake-apiserver")
            .enable_all()
            .build()?;
        let listener = {
            let _guard = rt.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let shared = Arc::new(Shared::new(config, addr));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let serve_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("fake-apiserver-main".into())
            .spawn(move || {
                rt.block_on(server::serve(serve_shared, listener, shutdown_rx));
                rt.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(FakeApiServer {
            shared,
            shutdown_tx,
            thread: Some(thread),
        })
    }

    /// Bind `127.0.0.1:0` and [`start`](FakeApiServer::start).
    pub fn start_local(config: Config) -> io::Result<FakeApiServer> {
        FakeApiServer::start(TcpListener::bind("127.0.0.1:0")?, config)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://ip:port` (IPv6 addresses bracketed).
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// A kubeconfig YAML document whose current context points at
    /// [`url`](FakeApiServer::url), authenticating with `token` if given, with
    /// `default` as the context namespace.
    pub fn kubeconfig(&self, token: Option<&str>) -> String {
        let user = match token {
            // A JSON string is a valid YAML double-quoted scalar.
            Some(t) => format!(
                "\n    token: {}",
                serde_json::to_string(t).unwrap_or_default()
            ),
            None => " {}".to_owned(),
        };
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: rudder-fake
  cluster:
    server: {url}
users:
- name: rudder-fake
  user:{user}
contexts:
- name: rudder-fake
  context:
    cluster: rudder-fake
    user: rudder-fake
    namespace: default
current-context: rudder-fake
preferences: {{}}
",
            url = self.url()
        )
    }

    fn apply_typed<T: Serialize + DeserializeOwned>(&self, kind: Kind, obj: &T) -> T {
        let value = serde_json::to_value(obj).expect("k8s-openapi objects serialize to JSON");
        let stored = self
            .shared
            .mutate(|s| s.apply(kind, value))
            .unwrap_or_else(|e| panic!("fake-apiserver: cannot apply: {e}"));
        serde_json::from_value(stored).expect("stored object deserializes as its type")
    }

    fn list_typed<T: DeserializeOwned>(&self, kind: Kind) -> Vec<T> {
        let values: Vec<_> = lock(&self.shared.store)
            .objects(kind)
            .map(|(_, v)| v.clone())
            .collect();
        values
            .into_iter()
            .map(|v| serde_json::from_value(v).expect("stored object deserializes as its type"))
            .collect()
    }

    fn delete(&self, kind: Kind, ns: &str, name: &str) -> bool {
        let ns = if kind.namespaced() { ns } else { "" };
        self.shared
            .mutate(|s| s.delete(kind, &(ns.to_owned(), name.to_owned())))
    }

    /// Create or replace a Service (ADDED or MODIFIED). A missing namespace
    /// means `default`; the incoming `resourceVersion`, `uid` and
    /// `creationTimestamp` are ignored. Returns the stored object with its
    /// new `resourceVersion`.
    ///
    /// # Panics
    /// If `metadata.name` is missing or empty.
    pub fn apply_service(&self, svc: Service) -> Service {
        self.apply_typed(Kind::Service, &svc)
    }

    /// Stores `obj` as a Service as it is (only `metadata` is filled in, as for any
    /// object), even when it does not deserialize as one: for tests of malformed objects,
    /// such as a port of the wrong type, which a real API server never serves. Returns the
    /// stored object.
    ///
    /// # Panics
    /// If `metadata.name` is missing or empty.
    pub fn apply_raw_service(&self, obj: serde_json::Value) -> serde_json::Value {
        self.shared
            .mutate(|s| s.apply(Kind::Service, obj))
            .unwrap_or_else(|e| panic!("fake-apiserver: cannot apply: {e}"))
    }

    /// Delete a Service; `false` if it did not exist.
    pub fn delete_service(&self, ns: &str, name: &str) -> bool {
        self.delete(Kind::Service, ns, name)
    }

    /// Create or replace an EndpointSlice; see
    /// [`apply_service`](FakeApiServer::apply_service).
    ///
    /// # Panics
    /// If `metadata.name` is missing or empty.
    pub fn apply_endpoint_slice(&self, slice: EndpointSlice) -> EndpointSlice {
        self.apply_typed(Kind::EndpointSlice, &slice)
    }

    /// Delete an EndpointSlice; `false` if it did not exist.
    pub fn delete_endpoint_slice(&self, ns: &str, name: &str) -> bool {
        self.delete(Kind::EndpointSlice, ns, name)
    }

    /// Create or replace a Node (cluster-scoped: any namespace is dropped);
    /// see [`apply_service`](FakeApiServer::apply_service).
    ///
    /// # Panics
    /// If `metadata.name` is missing or empty.
    pub fn apply_node(&self, node: Node) -> Node {
        self.apply_typed(Kind::Node, &node)
    }

    /// Delete a Node; `false` if it did not exist.
    pub fn delete_node(&self, name: &str) -> bool {
        self.delete(Kind::Node, "", name)
    }

    /// Create or replace a ServiceCIDR (`networking.k8s.io/v1`,
    /// cluster-scoped: any namespace is dropped); see
    /// [`apply_service`](FakeApiServer::apply_service).
    ///
    /// # Panics
    /// If `metadata.name` is missing or empty.
    pub fn apply_service_cidr(&self, cidr: ServiceCIDR) -> ServiceCIDR {
        self.apply_typed(Kind::ServiceCidr, &cidr)
    }

    /// Delete a ServiceCIDR; `false` if it did not exist.
    pub fn delete_service_cidr(&self, name: &str) -> bool {
        self.delete(Kind::ServiceCidr, "", name)
    }

    /// Every stored Service, sorted by namespace/name.
    pub fn services(&self) -> Vec<Service> {
        self.list_typed(Kind::Service)
    }

    /// Every stored EndpointSlice, sorted by namespace/name.
    pub fn endpoint_slices(&self) -> Vec<EndpointSlice> {
        self.list_typed(Kind::EndpointSlice)
    }

    /// Every stored Node, sorted by name.
    pub fn nodes(&self) -> Vec<Node> {
        self.list_typed(Kind::Node)
    }

    /// Every stored ServiceCIDR, sorted by name.
    pub fn service_cidrs(&self) -> Vec<ServiceCIDR> {
        self.list_typed(Kind::ServiceCidr)
    }

    /// The current global resource version.
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.store).rv()
    }

    /// End every open watch stream now (cleanly: the chunked response is
    /// terminated, as when the real apiserver's watch times out). Clients
    /// re-watch from their last resource version.
    pub fn drop_watches(&self) {
        self.shared.drop_watches();
    }

    /// Simulate an unreachable apiserver for `d`: every open connection is
    /// closed at once (in-flight requests and watches are cut off mid-stream)
    /// and, until `d` has passed, every new TCP connection is accepted and
    /// immediately reset (closed with `SO_LINGER` 0, so the client sees
    /// "connection reset by peer" instead of a response). The listening
    /// socket itself stays open, so this also works for listeners bound in
    /// another network namespace; the port can never be lost.
    pub fn refuse_connections_for(&self, d: Duration) {
        self.shared.refuse_for(d);
    }

    /// How many connections have been reset by
    /// [`refuse_connections_for`](FakeApiServer::refuse_connections_for).
    pub fn refused_connections(&self) -> usize {
        self.shared.refused_connections()
    }

    /// Forget the whole history: a watch from any resource version older than
    /// the current one, or a continue token from an older list, now gets 410
    /// "Expired". Open watches that are caught up are unaffected.
    pub fn compact(&self) {
        self.shared.mutate(store::Store::compact);
    }

    /// How many requests with this verb (`get`, `list`, `watch`, `create`) on
    /// this plural resource were served (authenticated and authorized),
    /// e.g. `("list", "services")`.
    pub fn request_count(&self, verb: &str, resource: &str) -> usize {
        self.shared.request_count(verb, resource)
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.requests()
    }

    /// Number of watch streams currently open.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches()
    }

    /// Every Event created through the API (core `v1` and `events.k8s.io/v1`),
    /// oldest first, as stored (with server-set metadata).
    pub fn events(&self) -> Vec<serde_json::Value> {
        lock(&self.shared.store).events()
    }

    /// Stop the server: close every connection and join the background
    /// thread. Same as dropping it.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.shared.close_connections();
        self.shutdown_tx.send_replace(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_handle_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<FakeApiServer>();
        assert_send_sync::<Config>();
    }

    #[test]
    fn kubeconfig_quotes_the_token_and_starts_and_stops_cleanly() -> io::Result<()> {
        let server = FakeApiServer::start_local(Config::default())?;
        let url = server.url();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        let kc = server.kubeconfig(Some("a\"b"));
        assert!(kc.contains(&format!("server: {url}\n")), "{kc}");
        assert!(kc.contains("token: \"a\\\"b\"\n"), "{kc}");
        assert!(server.kubeconfig(None).contains("user: {}\n"));
        let addr = server.addr();
        server.shutdown();
        // The listener is gone once shutdown returns.
        assert!(std::net::TcpStream::connect(addr).is_err());
        Ok(())
    }
}
