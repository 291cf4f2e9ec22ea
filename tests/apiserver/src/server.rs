//! The HTTP side: accept loop, connection killing/refusal, routing, auth,
//! and the list / get / watch / create handlers.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{EventType, Expired, HistEvent, Key, Kind, Store};
use crate::{Config, RequestRecord};

type RespBody = UnsyncBoxBody<Bytes, Infallible>;

/// Largest request body accepted (events only).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// State shared between the control API and the HTTP tasks.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) addr: SocketAddr,
    pub(crate) store: Mutex<Store>,
    /// Bumped (with the new RV) after every store mutation; wakes watches.
    rv_tx: watch::Sender<u64>,
    /// Bumped to end every open watch stream.
    watch_gen: watch::Sender<u64>,
    /// Bumped to close every open connection.
    conn_gen: watch::Sender<u64>,
    refuse_until: Mutex<Option<Instant>>,
    counts: Mutex<HashMap<(String, String), usize>>,
    requests: Mutex<Vec<RequestRecord>>,
    open_watches: AtomicUsize,
    refused: AtomicUsize,
}

/// Lock ignoring poisoning: a panicking test thread must not wedge the server.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn new(config: Config, addr: SocketAddr) -> Self {
        let store = Store::new(config.history_limit);
        let rv = store.rv();
        Shared {
            config,
            addr,
            store: Mutex::new(store),
            rv_tx: watch::channel(rv).0,
            watch_gen: watch::channel(0).0,
            conn_gen: watch::channel(0).0,
            refuse_until: Mutex::new(None),
            counts: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            open_watches: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
        }
    }

    /// Run `f` on the store, then wake every watch.
    pub(crate) fn mutate<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        let (r, rv) = {
            let mut s = lock(&self.store);
            let r = f(&mut s);
            (r, s.rv())
        };
        self.rv_tx.send_replace(rv);
        r
    }

    pub(crate) fn drop_watches(&self) {
        self.watch_gen.send_modify(|g| *g += 1);
    }

    pub(crate) fn close_connections(&self) {
        self.conn_gen.send_modify(|g| *g += 1);
    }

    pub(crate) fn refuse_for(&self, d: Duration) {
        *lock(&self.refuse_until) = Some(Instant::now() + d);
        self.close_connections();
    }

    fn refusing(&self) -> bool {
        let mut r = lock(&self.refuse_until);
        match *r {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                *r = None;
                false
            }
            None => false,
        }
    }

    pub(crate) fn request_count(&self, verb: &str, resource: &str) -> usize {
        lock(&self.counts)
            .get(&(verb.to_owned(), resource.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.requests).clone()
    }

    pub(crate) fn open_watches(&self) -> usize {
        self.open_watches.load(Ordering::SeqCst)
    }

    pub(crate) fn refused_connections(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

/// Accept connections until `shutdown` flips (or its sender is dropped).
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new());
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                warn!("fake-apiserver accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        // Subscribe before checking refusal so a refusal that starts right
        // now still closes this connection.
        let mut kill = shared.conn_gen.subscribe();
        if shared.refusing() {
            // SO_LINGER 0 makes the close send a RST instead of a FIN: the
            // client sees "connection reset", as close to "refused" as a
            // still-listening socket gets.
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            drop(stream);
            shared.refused.fetch_add(1, Ordering::SeqCst);
            debug!(%peer, "refused connection");
            continue;
        }
        let _ = stream.set_nodelay(true);
        let svc_shared = Arc::clone(&shared);
        let conn = builder.serve_connection(
            TokioIo::new(stream),
            service_fn(move |req| handle(Arc::clone(&svc_shared), req)),
        );
        tokio::spawn(async move {
            tokio::pin!(conn);
            tokio::select! {
                // Kill first: once close_connections() returned, no further
                // byte of this connection may reach the client.
                biased;
                _ = kill.changed() => debug!(%peer, "closing connection on request"),
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        debug!(%peer, "connection ended with error: {e}");
                    }
                }
            }
        });
    }
}

/// A response body fed by a channel: one chunk per watch event.
struct ChannelBody(mpsc::UnboundedReceiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn full(b: impl Into<Bytes>) -> RespBody {
    Full::new(b.into()).boxed_unsync()
}

fn json_response(code: StatusCode, v: &Value) -> Response<RespBody> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = code;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A `meta/v1` `Status` failure object.
pub(crate) fn status_object(
    code: u16,
    reason: &str,
    message: &str,
    details: Option<Value>,
) -> Value {
    let mut s = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(d) = details {
        s["details"] = d;
    }
    s
}

fn status_response(
    code: StatusCode,
    reason: &str,
    message: &str,
    details: Option<Value>,
) -> Response<RespBody> {
    json_response(
        code,
        &status_object(code.as_u16(), reason, message, details),
    )
}

fn bad_request(message: &str) -> Response<RespBody> {
    status_response(StatusCode::BAD_REQUEST, "BadRequest", message, None)
}

fn not_found_path() -> Response<RespBody> {
    status_response(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server could not find the requested resource",
        Some(json!({})),
    )
}

fn method_not_allowed() -> Response<RespBody> {
    status_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
        Some(json!({})),
    )
}

fn invalid(field: &str, detail: &str) -> Response<RespBody> {
    status_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        &format!("ListOptions.meta.k8s.io \"\" is invalid: {field}: Forbidden: {detail}"),
        Some(
            json!({"group": "meta.k8s.io", "kind": "ListOptions", "causes": [
                {"reason": "FieldValueForbidden", "message": format!("Forbidden: {detail}"), "field": field}
            ]}),
        ),
    )
}

fn expired_continue() -> Response<RespBody> {
    status_response(
        StatusCode::GONE,
        "Expired",
        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue value from the response to get a consistent result.",
        None,
    )
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decoded query parameters; the first occurrence of a key wins.
struct Query(HashMap<String, String>);

impl Query {
    fn parse(q: &str) -> Self {
        let mut m = HashMap::new();
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            m.entry(percent_decode(k))
                .or_insert_with(|| percent_decode(v));
        }
        Query(m)
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("1" | "true" | "True"))
    }
}

#[derive(Debug)]
enum Route {
    Healthz,
    Version,
    ApiVersions,
    ApiGroupList,
    CoreResources,
    Group(&'static str),
    GroupResources(&'static str),
    Collection {
        kind: Kind,
        ns: Option<String>,
    },
    Object {
        kind: Kind,
        ns: Option<String>,
        name: String,
    },
    Events {
        api_version: &'static str,
        ns: String,
        name: Option<String>,
    },
    NotFound,
}

const GROUPS: [&str; 3] = ["discovery.k8s.io", "events.k8s.io", "networking.k8s.io"];

fn known_group(g: &str) -> Option<&'static str> {
    GROUPS.iter().copied().find(|x| *x == g)
}

fn parse_route(path: &str) -> Route {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["healthz" | "livez" | "readyz"] => Route::Healthz,
        ["version"] => Route::Version,
        ["api"] => Route::ApiVersions,
        ["apis"] => Route::ApiGroupList,
        ["api", "v1"] => Route::CoreResources,
        ["apis", g] => known_group(g).map_or(Route::NotFound, Route::Group),
        ["apis", g, "v1"] => known_group(g).map_or(Route::NotFound, Route::GroupResources),
        ["api", "v1", rest @ ..] => resource_route("", rest),
        ["apis", g, "v1", rest @ ..] => match known_group(g) {
            Some(g) => resource_route(g, rest),
            None => Route::NotFound,
        },
        _ => Route::NotFound,
    }
}

fn resource_route(group: &'static str, rest: &[&str]) -> Route {
    let (ns, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        _ => (None, rest),
    };
    let (plural, name) = match rest {
        [p] => (*p, None),
        [p, n] => (*p, Some((*n).to_owned())),
        _ => return Route::NotFound,
    };
    if plural == "events" && (group.is_empty() || group == "events.k8s.io") {
        let api_version = if group.is_empty() {
            "v1"
        } else {
            "events.k8s.io/v1"
        };
        return match ns {
            Some(ns) => Route::Events {
                api_version,
                ns,
                name,
            },
            None => Route::NotFound,
        };
    }
    let Some(kind) = Kind::ALL
        .iter()
        .copied()
        .find(|k| k.group() == group && k.plural() == plural)
    else {
        return Route::NotFound;
    };
    if ns.is_some() && !kind.namespaced() {
        return Route::NotFound;
    }
    match name {
        None => Route::Collection { kind, ns },
        Some(name) => Route::Object { kind, ns, name },
    }
}

/// The request as RBAC sees it.
struct Attributes {
    verb: &'static str,
    resource: &'static str,
    group: &'static str,
    ns: Option<String>,
    name: Option<String>,
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let (resp, attrs) = dispatch(&shared, req).await;
    let status = resp.status().as_u16();
    debug!(%method, %path, %query, status, "fake-apiserver request");
    lock(&shared.requests).push(RequestRecord {
        method,
        path,
        query,
        verb: attrs.as_ref().map(|a| a.verb.to_owned()),
        resource: attrs.as_ref().map(|a| a.resource.to_owned()),
        status,
    });
    Ok(resp)
}

async fn dispatch(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
) -> (Response<RespBody>, Option<Attributes>) {
    if let Some(token) = &shared.config.token {
        let ok = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .is_some_and(|t| t.trim() == token);
        if !ok {
            return (
                status_response(
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized",
                    "Unauthorized",
                    None,
                ),
                None,
            );
        }
    }
    let query = Query::parse(req.uri().query().unwrap_or_default());
    let route = parse_route(req.uri().path());
    let is_get = req.method() == Method::GET;
    let attrs = match &route {
        Route::Collection { kind, ns } => Attributes {
            verb: if query.flag("watch") { "watch" } else { "list" },
            resource: kind.plural(),
            group: kind.group(),
            ns: ns.clone(),
            name: None,
        },
        Route::Object { kind, ns, name } => Attributes {
            verb: "get",
            resource: kind.plural(),
            group: kind.group(),
            ns: ns.clone(),
            name: Some(name.clone()),
        },
        Route::Events {
            api_version,
            ns,
            name,
        } => Attributes {
            verb: "create",
            resource: "events",
            group: if *api_version == "v1" {
                ""
            } else {
                "events.k8s.io"
            },
            ns: Some(ns.clone()),
            name: name.clone(),
        },
        Route::NotFound => return (not_found_path(), None),
        other => {
            if !is_get {
                return (method_not_allowed(), None);
            }
            return (discovery(shared, other), None);
        }
    };
    let method_ok = match &route {
        Route::Events { name, .. } => req.method() == Method::POST && name.is_none(),
        _ => is_get,
    };
    if !method_ok {
        return (method_not_allowed(), Some(attrs));
    }
    if let Some(allowed) = &shared.config.allowed
        && !allowed.contains(&(attrs.verb.to_owned(), attrs.resource.to_owned()))
    {
        return (forbidden(&shared.config.user, &attrs), Some(attrs));
    }
    *lock(&shared.counts)
        .entry((attrs.verb.to_owned(), attrs.resource.to_owned()))
        .or_default() += 1;
    let resp = match route {
        Route::Collection { kind, ns } if attrs.verb == "watch" => watch(shared, kind, ns, &query),
        Route::Collection { kind, ns } => list(shared, kind, ns.as_deref(), &query),
        Route::Object { kind, ns, name } => get(shared, kind, ns, name),
        Route::Events {
            api_version, ns, ..
        } => create_event(shared, api_version, &ns, req).await,
        _ => not_found_path(),
    };
    (resp, Some(attrs))
}

fn forbidden(user: &str, a: &Attributes) -> Response<RespBody> {
    let subject = match &a.name {
        Some(n) => format!("{} \"{n}\"", a.resource),
        None => a.resource.to_owned(),
    };
    let scope = match &a.ns {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_owned(),
    };
    let message = format!(
        "{subject} is forbidden: User \"{user}\" cannot {} resource \"{}\" in API group \"{}\" {scope}",
        a.verb, a.resource, a.group
    );
    let mut details = json!({"kind": a.resource});
    if !a.group.is_empty() {
        details["group"] = a.group.into();
    }
    if let Some(n) = &a.name {
        details["name"] = n.as_str().into();
    }
    status_response(StatusCode::FORBIDDEN, "Forbidden", &message, Some(details))
}

fn resource_doc(kind: Kind) -> Value {
    json!({
        "name": kind.plural(),
        "singularName": kind.singular(),
        "namespaced": kind.namespaced(),
        "kind": kind.kind(),
        "verbs": ["get", "list", "watch"],
        "shortNames": kind.short_names(),
    })
}

fn events_doc() -> Value {
    json!({
        "name": "events",
        "singularName": "event",
        "namespaced": true,
        "kind": "Event",
        "verbs": ["create"],
        "shortNames": ["ev"],
    })
}

fn group_doc(g: &str) -> Value {
    let gv = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
    json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
}

fn discovery(shared: &Shared, route: &Route) -> Response<RespBody> {
    let v = match route {
        Route::Healthz => {
            let mut r = Response::new(full("ok"));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            return r;
        }
        Route::Version => json!({
            "major": "1",
            "minor": "33",
            "emulationMajor": "1",
            "emulationMinor": "33",
            "minCompatibilityMajor": "1",
            "minCompatibilityMinor": "32",
            "gitVersion": "v1.33.0-rudder-fake",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2025-04-23T00:00:00Z",
            "goVersion": "go1.24.2",
            "compiler": "gc",
            "platform": "linux/amd64",
        }),
        Route::ApiVersions => json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": shared.addr.to_string()}],
        }),
        Route::ApiGroupList => json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": GROUPS.iter().map(|g| group_doc(g)).collect::<Vec<_>>(),
        }),
        Route::Group(g) => {
            let mut d = group_doc(g);
            d["kind"] = "APIGroup".into();
            d["apiVersion"] = "v1".into();
            d
        }
        Route::CoreResources => json!({
            "kind": "APIResourceList",
            "groupVersion": "v1",
            "resources": [resource_doc(Kind::Node), resource_doc(Kind::Service), events_doc()],
        }),
        Route::GroupResources(g) => {
            let resources = if *g == "events.k8s.io" {
                vec![events_doc()]
            } else {
                Kind::ALL
                    .iter()
                    .filter(|k| k.group() == *g)
                    .map(|k| resource_doc(*k))
                    .collect()
            };
            json!({
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": format!("{g}/v1"),
                "resources": resources,
            })
        }
        _ => return not_found_path(),
    };
    json_response(StatusCode::OK, &v)
}

/// Namespace + label + field filter shared by list and watch.
struct Filter {
    ns: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    /// Parse the selectors; `Err` carries a 400 message.
    fn from_query(ns: Option<String>, q: &Query) -> Result<Self, String> {
        let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or_default())
            .map_err(|e| format!("unable to parse requirement: {e}"))?;
        let fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or_default())?;
        Ok(Filter { ns, labels, fields })
    }

    fn matches(&self, obj: &Value) -> bool {
        if let Some(ns) = &self.ns
            && obj["metadata"]["namespace"].as_str() != Some(ns.as_str())
        {
            return false;
        }
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

fn encode_continue(rv: u64, key: &Key) -> String {
    let raw = format!("{rv}\0{}\0{}", key.0, key.1);
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_continue(token: &str) -> Option<(u64, Key)> {
    if !token.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    let raw = String::from_utf8(bytes?).ok()?;
    let mut parts = raw.split('\0');
    let rv = parts.next()?.parse().ok()?;
    let ns = parts.next()?.to_owned();
    let name = parts.next()?.to_owned();
    if parts.next().is_some() {
        return None;
    }
    Some((rv, (ns, name)))
}

fn list(shared: &Shared, kind: Kind, ns: Option<&str>, q: &Query) -> Response<RespBody> {
    if q.flag("sendInitialEvents") {
        return invalid(
            "sendInitialEvents",
            "sendInitialEvents is forbidden for list",
        );
    }
    let filter = match Filter::from_query(ns.map(str::to_owned), q) {
        Ok(f) => f,
        Err(msg) => return bad_request(&msg),
    };
    let limit = match q.get("limit").filter(|s| !s.is_empty()) {
        None => 0usize,
        Some(s) => match s.parse::<i64>() {
            Ok(n) => usize::try_from(n.max(0)).unwrap_or(0),
            Err(_) => return bad_request(&format!("invalid limit: {s:?}")),
        },
    };
    let exact_rv = if q.get("resourceVersionMatch") == Some("Exact") {
        match q.get("resourceVersion").and_then(|s| s.parse::<u64>().ok()) {
            Some(rv) if rv > 0 => Some(rv),
            _ => {
                return invalid(
                    "resourceVersionMatch",
                    "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\" or unset",
                );
            }
        }
    } else {
        None
    };
    let store = lock(&shared.store);
    let (snapshot_rv, after) = match q.get("continue").filter(|s| !s.is_empty()) {
        Some(tok) => match decode_continue(tok) {
            Some((rv, key)) => (rv, Some(key)),
            None => return bad_request(&format!("continue key is not valid: {tok}")),
        },
        None => (exact_rv.unwrap_or_else(|| store.rv()), None),
    };
    let snapshot;
    let objects: Box<dyn Iterator<Item = (&Key, &Value)>> =
        if snapshot_rv == store.rv() || store.unchanged_since(kind, snapshot_rv) {
            Box::new(store.objects(kind))
        } else {
            match store.snapshot_at(kind, snapshot_rv) {
                Ok(s) => {
                    snapshot = s;
                    Box::new(snapshot.iter())
                }
                Err(_) if after.is_some() => return expired_continue(),
                Err(e) => {
                    return status_response(
                        StatusCode::GONE,
                        "Expired",
                        &format!("too old resource version: {} ({})", e.requested, e.oldest),
                        None,
                    );
                }
            }
        };
    let mut matching = objects
        .filter(|(k, _)| after.as_ref().is_none_or(|a| *k > a))
        .filter(|(_, v)| filter.matches(v));
    // Items are serialized straight from the store (no copies): a page of thousands of
    // objects would otherwise be cloned and then serialized again.
    let mut items: Vec<u8> = Vec::with_capacity(64 * 1024);
    items.push(b'[');
    let mut count = 0usize;
    let mut last_key = None;
    for (k, v) in matching.by_ref() {
        if count > 0 {
            items.push(b',');
        }
        if serde_json::to_writer(&mut items, v).is_err() {
            return status_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "cannot serialize a stored object",
                None,
            );
        }
        count += 1;
        last_key = Some(k);
        if limit > 0 && count == limit {
            break;
        }
    }
    items.push(b']');
    let remaining = if limit > 0 {
        matching.count()
    } else {
        drop(matching);
        0
    };
    let mut meta = json!({"resourceVersion": snapshot_rv.to_string()});
    if remaining > 0
        && let Some(k) = last_key
    {
        meta["continue"] = encode_continue(snapshot_rv, k).into();
        if filter.labels.is_empty() && filter.fields.is_empty() {
            meta["remainingItemCount"] = remaining.into();
        }
    }
    drop(store);
    let head = json!({
        "apiVersion": kind.api_version(),
        "kind": kind.list_kind(),
        "metadata": meta,
    });
    // `{"apiVersion":…,"metadata":{…}` + `,"items":[…]}`
    let mut body = serde_json::to_vec(&head).unwrap_or_default();
    body.pop();
    body.extend_from_slice(b",\"items\":");
    body.extend_from_slice(&items);
    body.push(b'}');
    let mut resp = Response::new(full(body));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn get(shared: &Shared, kind: Kind, ns: Option<String>, name: String) -> Response<RespBody> {
    let key = (ns.unwrap_or_default(), name);
    let obj = lock(&shared.store).get(kind, &key).cloned();
    match obj {
        Some(o) => json_response(StatusCode::OK, &o),
        None => {
            let mut details = json!({"name": key.1, "kind": kind.plural()});
            if !kind.group().is_empty() {
                details["group"] = kind.group().into();
            }
            status_response(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{} \"{}\" not found", kind.plural(), key.1),
                Some(details),
            )
        }
    }
}

async fn create_event(
    shared: &Shared,
    api_version: &str,
    ns: &str,
    req: Request<Incoming>,
) -> Response<RespBody> {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return bad_request(&format!("reading body: {e}")),
    };
    let obj: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(&format!("decoding body: {e}")),
    };
    match shared.mutate(|s| s.create_event(api_version, ns, obj)) {
        Ok(stored) => json_response(StatusCode::CREATED, &stored),
        Err(msg) => bad_request(&msg),
    }
}

enum Start {
    /// Send the current state as ADDED events, then live changes.
    Current,
    /// Replay every change after this RV, then live changes.
    From(u64),
}

struct WatchSpec {
    kind: Kind,
    filter: Filter,
    start: Start,
    bookmarks: bool,
    initial_events: bool,
    timeout: Duration,
    bookmark_interval: Duration,
}

fn watch(shared: &Arc<Shared>, kind: Kind, ns: Option<String>, q: &Query) -> Response<RespBody> {
    let filter = match Filter::from_query(ns, q) {
        Ok(f) => f,
        Err(msg) => return bad_request(&msg),
    };
    let bookmarks = q.flag("allowWatchBookmarks");
    let initial_events = q.flag("sendInitialEvents");
    let rv_match = q.get("resourceVersionMatch").filter(|s| !s.is_empty());
    if initial_events {
        if rv_match != Some("NotOlderThan") {
            return invalid(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            );
        }
        if !bookmarks {
            return invalid(
                "allowWatchBookmarks",
                "sendInitialEvents requires setting allowWatchBookmarks to true",
            );
        }
    } else if rv_match.is_some() {
        return invalid(
            "resourceVersionMatch",
            "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
        );
    }
    let start = match q.get("resourceVersion").unwrap_or_default() {
        "" | "0" => Start::Current,
        _ if initial_events => Start::Current,
        s => match s.parse::<u64>() {
            Ok(rv) => Start::From(rv),
            Err(_) => return bad_request(&format!("invalid resource version: {s:?}")),
        },
    };
    let max = shared.config.max_watch_timeout;
    let timeout = match q.get("timeoutSeconds").filter(|s| !s.is_empty()) {
        None => max,
        Some(s) => match s.parse::<u64>() {
            Ok(0) => max,
            Ok(t) => Duration::from_secs(t).min(max),
            Err(_) => return bad_request(&format!("invalid timeoutSeconds: {s:?}")),
        },
    };
    let spec = WatchSpec {
        kind,
        filter,
        start,
        bookmarks,
        initial_events,
        timeout,
        bookmark_interval: shared.config.bookmark_interval,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    // Subscribe before the handler returns so no change or drop request made
    // after the watch request was answered is missed.
    let rv_rx = shared.rv_tx.subscribe();
    let drop_rx = shared.watch_gen.subscribe();
    tokio::spawn(run_watch(Arc::clone(shared), spec, tx, rv_rx, drop_rx));
    let mut resp = Response::new(ChannelBody(rx).boxed_unsync());
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache, private"));
    resp
}

#[derive(Serialize)]
struct WatchLine<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    object: &'a Value,
}

fn line(ty: &str, object: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&WatchLine { ty, object }).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn expired_line(e: Expired) -> Bytes {
    line(
        "ERROR",
        &status_object(
            410,
            "Expired",
            &format!("too old resource version: {} ({})", e.requested, e.oldest),
            None,
        ),
    )
}

fn bookmark_line(kind: Kind, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        "BOOKMARK",
        &json!({"kind": kind.kind(), "apiVersion": kind.api_version(), "metadata": meta}),
    )
}

/// What one history event looks like to a watcher with `filter`, following
/// the real apiserver's cacher: an object that starts matching is ADDED, one
/// that stops matching is DELETED (with its previous content and the new RV).
fn convert(ev: &HistEvent, filter: &Filter) -> Option<(&'static str, Value)> {
    match ev.ty {
        EventType::Added => filter
            .matches(&ev.object)
            .then(|| ("ADDED", ev.object.clone())),
        EventType::Deleted => filter
            .matches(&ev.object)
            .then(|| ("DELETED", ev.object.clone())),
        EventType::Modified => {
            let old = ev.prev.as_ref().is_some_and(|p| filter.matches(p));
            let new = filter.matches(&ev.object);
            match (old, new) {
                (true, true) => Some((EventType::Modified.as_str(), ev.object.clone())),
                (false, true) => Some(("ADDED", ev.object.clone())),
                (true, false) => {
                    let mut o = ev.prev.clone().unwrap_or_default();
                    o["metadata"]["resourceVersion"] = ev.rv.to_string().into();
                    Some(("DELETED", o))
                }
                (false, false) => None,
            }
        }
    }
}

struct WatchGuard<'a>(&'a AtomicUsize);

impl Drop for WatchGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn run_watch(
    shared: Arc<Shared>,
    spec: WatchSpec,
    tx: mpsc::UnboundedSender<Bytes>,
    mut rv_rx: watch::Receiver<u64>,
    mut drop_rx: watch::Receiver<u64>,
) {
    shared.open_watches.fetch_add(1, Ordering::SeqCst);
    let _guard = WatchGuard(&shared.open_watches);
    let deadline = tokio::time::sleep(spec.timeout);
    tokio::pin!(deadline);
    macro_rules! send {
        ($b:expr) => {
            if tx.send($b).is_err() {
                return;
            }
        };
    }
    let mut cursor;
    {
        let mut initial = Vec::new();
        {
            let store = lock(&shared.store);
            match spec.start {
                Start::Current => {
                    cursor = store.rv();
                    for (_, obj) in store.objects(spec.kind) {
                        if spec.filter.matches(obj) {
                            initial.push(line("ADDED", obj));
                        }
                    }
                }
                Start::From(rv) => {
                    if rv < store.compacted_rv() {
                        initial.push(expired_line(Expired {
                            requested: rv,
                            oldest: store.compacted_rv(),
                        }));
                        drop(store);
                        for l in initial {
                            send!(l);
                        }
                        return;
                    }
                    cursor = rv;
                }
            }
        }
        for l in initial {
            send!(l);
        }
    }
    let mut first = true;
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + spec.bookmark_interval,
        spec.bookmark_interval.max(Duration::from_millis(10)),
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let caught_up = lock(&shared.store).events_after(spec.kind, cursor);
        match caught_up {
            Err(e) => {
                send!(expired_line(e));
                return;
            }
            Ok((events, now)) => {
                // A drop request that raced with this read must win: anything
                // applied after drop_watches() returned is never delivered on
                // this stream.
                if drop_rx.has_changed().unwrap_or(true) {
                    return;
                }
                for ev in &events {
                    if let Some((ty, obj)) = convert(ev, &spec.filter) {
                        send!(line(ty, &obj));
                    }
                }
                cursor = now;
            }
        }
        if first {
            first = false;
            if spec.bookmarks || spec.initial_events {
                send!(bookmark_line(spec.kind, cursor, spec.initial_events));
            }
        }
        tokio::select! {
            biased;
            _ = drop_rx.changed() => return,
            _ = &mut deadline => return,
            _ = tx.closed() => return,
            r = rv_rx.changed() => if r.is_err() { return },
            _ = ticker.tick(), if spec.bookmarks => send!(bookmark_line(spec.kind, cursor, false)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(matches!(
            parse_route("/api/v1/services"),
            Route::Collection {
                kind: Kind::Service,
                ns: None
            }
        ));
        assert!(matches!(
            parse_route("/api/v1/namespaces/x/services/y"),
            Route::Object {
                kind: Kind::Service,
                ns: Some(_),
                ..
            }
        ));
        assert!(matches!(
            parse_route("/apis/discovery.k8s.io/v1/namespaces/x/endpointslices"),
            Route::Collection {
                kind: Kind::EndpointSlice,
                ns: Some(_)
            }
        ));
        assert!(matches!(
            parse_route("/api/v1/nodes/n1"),
            Route::Object {
                kind: Kind::Node,
                ns: None,
                ..
            }
        ));
        assert!(matches!(
            parse_route("/api/v1/namespaces/x/nodes"),
            Route::NotFound
        ));
        assert!(matches!(
            parse_route("/apis/discovery.k8s.io/v1/services"),
            Route::NotFound
        ));
        assert!(matches!(
            parse_route("/api/v1/endpointslices"),
            Route::NotFound
        ));
        assert!(matches!(
            parse_route("/api/v1/namespaces/x/events"),
            Route::Events {
                api_version: "v1",
                ..
            }
        ));
        assert!(matches!(
            parse_route("/apis/events.k8s.io/v1/namespaces/x/events"),
            Route::Events {
                api_version: "events.k8s.io/v1",
                ..
            }
        ));
        assert!(matches!(parse_route("/api/v1/events"), Route::NotFound));
        assert!(matches!(
            parse_route("/apis/apps/v1/deployments"),
            Route::NotFound
        ));
        assert!(matches!(
            parse_route("/apis/discovery.k8s.io"),
            Route::Group(_)
        ));
        assert!(matches!(
            parse_route("/apis/networking.k8s.io/v1/servicecidrs"),
            Route::Collection {
                kind: Kind::ServiceCidr,
                ns: None
            }
        ));
        assert!(matches!(
            parse_route("/apis/networking.k8s.io/v1/servicecidrs/kubernetes"),
            Route::Object {
                kind: Kind::ServiceCidr,
                ns: None,
                ..
            }
        ));
        assert!(matches!(
            parse_route("/apis/networking.k8s.io/v1/namespaces/x/servicecidrs"),
            Route::NotFound
        ));
        assert!(matches!(
            parse_route("/api/v1/servicecidrs"),
            Route::NotFound
        ));
        assert!(matches!(
            parse_route("/apis/networking.k8s.io/v1/ingresses"),
            Route::NotFound
        ));
        assert!(matches!(
            parse_route("/apis/networking.k8s.io/v1"),
            Route::GroupResources("networking.k8s.io")
        ));
    }

    #[test]
    fn query_decoding() {
        let q = Query::parse("&labelSelector=app+in+%28a%2Cb%29&watch=true&x");
        assert_eq!(q.get("labelSelector"), Some("app in (a,b)"));
        assert!(q.flag("watch"));
        assert_eq!(q.get("x"), Some(""));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("a%3Db"), "a=b");
    }

    #[test]
    fn continue_tokens_round_trip() {
        let key = ("ns".to_owned(), "name-1".to_owned());
        let tok = encode_continue(42, &key);
        assert_eq!(decode_continue(&tok), Some((42, key)));
        assert_eq!(decode_continue("zz"), None);
        assert_eq!(decode_continue("abc"), None);
    }
}
