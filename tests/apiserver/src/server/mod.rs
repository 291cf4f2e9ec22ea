//! The HTTP side: accept loop, connection killing/refusal, routing, auth,
//! and the list / get / watch / create handlers.
//!
//! Here: the state shared with the control API ([`Shared`]), the accept loop and the per-request
//! entry point. Routing and auth are in `route`, discovery documents in `discovery`, the list,
//! get and create handlers in `list`, watches in `watches`, response helpers in `respond`.

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

mod discovery;
mod list;
mod respond;
mod route;
mod watches;

use self::{discovery::*, list::*, respond::*, route::*, watches::*};

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
