//! API discovery documents (`/api`, `/apis`, group and resource lists).

use super::*;

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

pub(super) fn discovery(shared: &Shared, route: &Route) -> Response<RespBody> {
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
