//! Routing: paths and query strings parsed into routes, RBAC-style attributes and denials,
//! dispatch to the handlers.

use super::*;

pub(super) fn percent_decode(s: &str) -> String {
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
pub(super) struct Query(HashMap<String, String>);

impl Query {
    pub(super) fn parse(q: &str) -> Self {
        let mut m = HashMap::new();
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            m.entry(percent_decode(k))
                .or_insert_with(|| percent_decode(v));
        }
        Query(m)
    }

    pub(super) fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    pub(super) fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("1" | "true" | "True"))
    }
}

#[derive(Debug)]
pub(super) enum Route {
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

pub(super) const GROUPS: [&str; 3] = ["discovery.k8s.io", "events.k8s.io", "networking.k8s.io"];

fn known_group(g: &str) -> Option<&'static str> {
    GROUPS.iter().copied().find(|x| *x == g)
}

pub(super) fn parse_route(path: &str) -> Route {
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
pub(super) struct Attributes {
    pub(super) verb: &'static str,
    pub(super) resource: &'static str,
    group: &'static str,
    ns: Option<String>,
    name: Option<String>,
}

pub(super) async fn dispatch(
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

pub(super) fn forbidden(user: &str, a: &Attributes) -> Response<RespBody> {
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
