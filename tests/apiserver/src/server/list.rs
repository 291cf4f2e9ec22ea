//! The list (pagination, selectors, continue tokens), get and create (Events) handlers.

use super::*;

/// Namespace + label + field filter shared by list and watch.
pub(super) struct Filter {
    ns: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    /// Parse the selectors; `Err` carries a 400 message.
    pub(super) fn from_query(ns: Option<String>, q: &Query) -> Result<Self, String> {
        let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or_default())
            .map_err(|e| format!("unable to parse requirement: {e}"))?;
        let fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or_default())?;
        Ok(Filter { ns, labels, fields })
    }

    pub(super) fn matches(&self, obj: &Value) -> bool {
        if let Some(ns) = &self.ns
            && obj["metadata"]["namespace"].as_str() != Some(ns.as_str())
        {
            return false;
        }
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

pub(super) fn encode_continue(rv: u64, key: &Key) -> String {
    let raw = format!("{rv}\0{}\0{}", key.0, key.1);
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn decode_continue(token: &str) -> Option<(u64, Key)> {
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

pub(super) fn list(shared: &Shared, kind: Kind, ns: Option<&str>, q: &Query) -> Response<RespBody> {
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

pub(super) fn get(
    shared: &Shared,
    kind: Kind,
    ns: Option<String>,
    name: String,
) -> Response<RespBody> {
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

pub(super) async fn create_event(
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
