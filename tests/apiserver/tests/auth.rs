//! Authentication (bearer token), RBAC-style denials and error documents.

mod common;

use common::{TOKEN, client, raw_request, svc};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, WatchParams};
use rudder_fake_apiserver::{Config, FakeApiServer};

fn expect_status<T: std::fmt::Debug>(
    r: Result<T, kube::Error>,
    code: u16,
    reason: &str,
) -> anyhow::Result<String> {
    match r {
        Err(kube::Error::Api(s)) => {
            anyhow::ensure!(
                (s.code, s.reason.as_str()) == (code, reason),
                "expected {code} {reason}, got {s:?}"
            );
            Ok(s.message)
        }
        other => anyhow::bail!("expected {code} {reason}, got {other:?}"),
    }
}

#[tokio::test]
async fn bearer_token_is_required() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local(Config::default().with_token(TOKEN))?;
    server.apply_service(svc("ns", "a", &[], 80));

    let good = client(&server, Some(TOKEN)).await?;
    assert_eq!(
        Api::<Service>::all(good)
            .list(&ListParams::default())
            .await?
            .items
            .len(),
        1
    );

    let wrong = client(&server, Some("not-the-token")).await?;
    let msg = expect_status(
        Api::<Service>::all(wrong.clone())
            .list(&ListParams::default())
            .await,
        401,
        "Unauthorized",
    )?;
    assert_eq!(msg, "Unauthorized");
    expect_status(
        Api::<Service>::all(wrong.clone())
            .watch(&WatchParams::default(), "0")
            .await
            .map(|_| ()),
        401,
        "Unauthorized",
    )?;
    expect_status(wrong.apiserver_version().await, 401, "Unauthorized")?;

    let anonymous = client(&server, None).await?;
    expect_status(
        Api::<Node>::all(anonymous)
            .list(&ListParams::default())
            .await,
        401,
        "Unauthorized",
    )?;
    // Rejected requests are not counted as served.
    assert_eq!(server.request_count("list", "services"), 1);
    assert_eq!(server.request_count("list", "nodes"), 0);

    let raw = raw_request(server.addr(), "GET", "/healthz", Some("nope"), None)?;
    assert_eq!(raw.status, 401);
    assert_eq!(raw.json()?["kind"], "Status");
    let raw = raw_request(server.addr(), "GET", "/healthz", Some(TOKEN), None)?;
    assert_eq!((raw.status, raw.body.as_str()), (200, "ok"));
    Ok(())
}

#[tokio::test]
async fn rbac_denials_name_verb_resource_and_scope() -> anyhow::Result<()> {
    let config = Config::default()
        .with_token(TOKEN)
        .allow("list", "services")
        .allow("watch", "endpointslices")
        .allow("get", "nodes");
    let server = FakeApiServer::start_local(config)?;
    server.apply_node(common::node("n1", &[]));
    let client = client(&server, Some(TOKEN)).await?;

    // Allowed.
    Api::<Service>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    Api::<Service>::namespaced(client.clone(), "ns")
        .list(&ListParams::default())
        .await?;
    Api::<Node>::all(client.clone()).get("n1").await?;
    let _watch = Api::<EndpointSlice>::all(client.clone())
        .watch(&WatchParams::default(), "0")
        .await?;

    let user = "system:serviceaccount:kube-system:rudder";
    let msg = expect_status(
        Api::<Service>::all(client.clone())
            .watch(&WatchParams::default(), "0")
            .await
            .map(|_| ()),
        403,
        "Forbidden",
    )?;
    assert_eq!(
        msg,
        format!(
            "services is forbidden: User \"{user}\" cannot watch resource \"services\" in API group \"\" at the cluster scope"
        )
    );
    let msg = expect_status(
        Api::<EndpointSlice>::namespaced(client.clone(), "kube-system")
            .list(&ListParams::default())
            .await,
        403,
        "Forbidden",
    )?;
    assert_eq!(
        msg,
        format!(
            "endpointslices is forbidden: User \"{user}\" cannot list resource \"endpointslices\" in API group \"discovery.k8s.io\" in the namespace \"kube-system\""
        )
    );
    let msg = expect_status(
        Api::<Service>::namespaced(client.clone(), "ns")
            .get("web")
            .await,
        403,
        "Forbidden",
    )?;
    assert_eq!(
        msg,
        format!(
            "services \"web\" is forbidden: User \"{user}\" cannot get resource \"services\" in API group \"\" in the namespace \"ns\""
        )
    );
    let msg = expect_status(
        Api::<Node>::all(client.clone())
            .list(&ListParams::default())
            .await,
        403,
        "Forbidden",
    )?;
    assert!(msg.starts_with("nodes is forbidden"), "{msg}");
    let ev = serde_json::json!({"metadata": {"generateName": "x-"}, "reason": "Test"}).to_string();
    let raw = raw_request(
        server.addr(),
        "POST",
        "/api/v1/namespaces/default/events",
        Some(TOKEN),
        Some(&ev),
    )?;
    assert_eq!(raw.status, 403);
    assert_eq!(raw.json()?["details"]["kind"], "events");
    assert!(server.events().is_empty());

    // Discovery is not subject to the allow-list.
    client.apiserver_version().await?;
    assert_eq!(server.request_count("watch", "services"), 0);
    assert_eq!(server.request_count("list", "services"), 2);
    Ok(())
}

#[test]
fn unknown_paths_and_methods_get_status_documents() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local(Config::default())?;
    for path in [
        "/api/v1/pods",
        "/apis/apps/v1/deployments",
        "/api/v1/namespaces/ns/nodes",
        "/api/v1/namespaces/ns/services/a/status",
        "/nope",
    ] {
        let r = raw_request(server.addr(), "GET", path, None, None)?;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v = r.json()?;
        assert_eq!(v["kind"], "Status");
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NotFound");
        assert_eq!(v["code"], 404);
        assert_eq!(
            v["message"],
            "the server could not find the requested resource"
        );
    }
    let r = raw_request(
        server.addr(),
        "DELETE",
        "/api/v1/namespaces/ns/services/a",
        None,
        None,
    )?;
    assert_eq!(r.status, 405);
    assert_eq!(r.json()?["reason"], "MethodNotAllowed");
    let r = raw_request(
        server.addr(),
        "POST",
        "/api/v1/namespaces/ns/events",
        None,
        Some("[1]"),
    )?;
    assert_eq!(r.status, 400);
    let r = raw_request(
        server.addr(),
        "GET",
        "/api/v1/services?labelSelector=a%20in%20(",
        None,
        None,
    )?;
    assert_eq!(
        (r.status, r.json()?["reason"].clone()),
        (400, "BadRequest".into())
    );
    let r = raw_request(server.addr(), "GET", "/version", None, None)?;
    assert_eq!(r.json()?["gitVersion"], "v1.33.0-rudder-fake");
    let r = raw_request(server.addr(), "GET", "/api", None, None)?;
    assert_eq!(r.json()?["kind"], "APIVersions");
    let r = raw_request(server.addr(), "GET", "/apis", None, None)?;
    assert_eq!(r.json()?["kind"], "APIGroupList");
    let log = server.requests();
    assert_eq!(log.len(), 11);
    assert_eq!(log[0].path, "/api/v1/pods");
    assert_eq!(log[0].status, 404);
    Ok(())
}
