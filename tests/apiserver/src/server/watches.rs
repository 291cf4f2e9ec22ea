//! Watches: the streaming body, start points, bookmarks, `410 Gone`, the event loop.

use super::*;

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

pub(super) fn watch(
    shared: &Arc<Shared>,
    kind: Kind,
    ns: Option<String>,
    q: &Query,
) -> Response<RespBody> {
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
