//! List, get, selectors, pagination, discovery and event creation, all
//! through kube-rs's own client.

mod common;

use common::{TOKEN, api_code, client, node, slice, svc};
use k8s_openapi::api::core::v1::{Event, Node, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, PostParams};
use rudder_fake_apiserver::{Config, FakeApiServer};

fn names<K: kube::Resource>(items: &[K]) -> Vec<String> {
    items
        .iter()
        .map(|o| {
            let m = o.meta();
            match &m.namespace {
                Some(ns) => format!("{ns}/{}", m.name.as_deref().unwrap_or_default()),
                None => m.name.clone().unwrap_or_default(),
            }
        })
        .collect()
}

#[tokio::test]
async fn list_and_get_every_kind() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local(Config::default().with_token(TOKEN))?;
    // Applied out of order: lists must come back sorted by namespace/name.
    server.apply_service(svc("b", "web", &[], 80));
    server.apply_service(svc("a", "zeta", &[], 80));
    server.apply_service(svc("a", "alpha", &[], 80));
    server.apply_endpoint_slice(slice("b", "web-1", "web", &["10.0.0.1"]));
    server.apply_endpoint_slice(slice("a", "zeta-1", "zeta", &["10.0.0.2", "10.0.0.3"]));
    server.apply_node(node("node-b", &[]));
    server.apply_node(node("node-a", &[]));
    let client = client(&server, Some(TOKEN)).await?;

    let all = Api::<Service>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    assert_eq!(names(&all.items), ["a/alpha", "a/zeta", "b/web"]);
    assert_eq!(
        all.metadata.resource_version.as_deref(),
        Some(server.resource_version().to_string().as_str())
    );
    assert_eq!(all.metadata.continue_, None);
    for s in &all.items {
        let m = &s.metadata;
        assert!(m.uid.as_deref().is_some_and(|u| u.len() == 36), "{m:?}");
        assert!(m.creation_timestamp.is_some(), "{m:?}");
        let rv: u64 = m.resource_version.as_deref().unwrap_or_default().parse()?;
        assert!(rv > 1 && rv <= server.resource_version());
    }
    // Per-object RVs come from one global counter: all distinct.
    let mut rvs: Vec<_> = all
        .items
        .iter()
        .map(|s| s.metadata.resource_version.clone())
        .collect();
    rvs.dedup();
    assert_eq!(rvs.len(), 3);

    let in_a = Api::<Service>::namespaced(client.clone(), "a")
        .list(&ListParams::default())
        .await?;
    assert_eq!(names(&in_a.items), ["a/alpha", "a/zeta"]);
    let in_none = Api::<Service>::namespaced(client.clone(), "nope")
        .list(&ListParams::default())
        .await?;
    assert!(in_none.items.is_empty());

    let slices = Api::<EndpointSlice>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    assert_eq!(names(&slices.items), ["a/zeta-1", "b/web-1"]);
    assert_eq!(slices.items[0].endpoints.as_ref().map(Vec::len), Some(2));
    let slices_b = Api::<EndpointSlice>::namespaced(client.clone(), "b")
        .list(&ListParams::default())
        .await?;
    assert_eq!(names(&slices_b.items), ["b/web-1"]);

    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    assert_eq!(names(&nodes.items), ["node-a", "node-b"]);

    // Single GETs, and a 404 that kube maps to None.
    let web = Api::<Service>::namespaced(client.clone(), "b")
        .get("web")
        .await?;
    assert_eq!(web.spec.and_then(|s| s.ports).map(|p| p[0].port), Some(80));
    let zeta = Api::<EndpointSlice>::namespaced(client.clone(), "a")
        .get("zeta-1")
        .await?;
    assert_eq!(zeta.address_type, "IPv4");
    let node_a = Api::<Node>::all(client.clone()).get("node-a").await?;
    assert_eq!(node_a.metadata.namespace, None);
    assert!(
        Api::<Service>::namespaced(client.clone(), "a")
            .get_opt("web")
            .await?
            .is_none()
    );
    let err = Api::<Node>::all(client.clone())
        .get("missing")
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("expected 404"))?;
    match err {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"));
            assert_eq!(s.message, "nodes \"missing\" not found");
        }
        other => anyhow::bail!("unexpected error {other:?}"),
    }

    // Deletes and updates show up in the next list.
    assert!(server.delete_service("a", "zeta"));
    assert!(!server.delete_service("a", "zeta"));
    server.apply_service(svc("a", "alpha", &[], 8080));
    let all = Api::<Service>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    assert_eq!(names(&all.items), ["a/alpha", "b/web"]);
    let alpha = &all.items[0];
    assert_eq!(
        alpha
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .map(|p| p[0].port),
        Some(8080)
    );
    assert_eq!(
        alpha.metadata.uid, in_a.items[0].metadata.uid,
        "uid survives updates"
    );
    assert!(server.delete_node("node-b"));
    assert!(server.delete_endpoint_slice("b", "web-1"));
    assert_eq!(server.nodes().len(), 1);
    assert_eq!(server.endpoint_slices().len(), 1);
    assert_eq!(server.request_count("list", "services"), 4);
    assert_eq!(server.request_count("get", "nodes"), 2);
    Ok(())
}

#[tokio::test]
async fn label_selectors_every_operator() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local(Config::default())?;
    server.apply_service(svc(
        "ns",
        "web",
        &[("app", "web"), ("tier", "frontend")],
        80,
    ));
    server.apply_service(svc("ns", "api", &[("app", "api"), ("tier", "backend")], 80));
    server.apply_service(svc("ns", "db", &[("app", "db")], 5432));
    server.apply_service(svc("ns", "bare", &[], 1));
    server.apply_node(node("n1", &[("zone", "a")]));
    server.apply_node(node("n2", &[("zone", "b")]));
    let client = client(&server, None).await?;
    let api = Api::<Service>::all(client.clone());
    let cases: &[(&str, &[&str])] = &[
        ("app=web", &["ns/web"]),
        ("app==api", &["ns/api"]),
        ("app!=web", &["ns/api", "ns/bare", "ns/db"]),
        ("app in (web,db)", &["ns/db", "ns/web"]),
        ("app notin (web, db)", &["ns/api", "ns/bare"]),
        ("tier", &["ns/api", "ns/web"]),
        ("!tier", &["ns/bare", "ns/db"]),
        ("app,!tier", &["ns/db"]),
        ("app in (web,api),tier=backend", &["ns/api"]),
        ("app=nothing", &[]),
    ];
    for (sel, want) in cases {
        let got = api.list(&ListParams::default().labels(sel)).await?;
        assert_eq!(names(&got.items), *want, "labelSelector {sel:?}");
    }
    let zone_b = Api::<Node>::all(client.clone())
        .list(&ListParams::default().labels("zone notin (a)"))
        .await?;
    assert_eq!(names(&zone_b.items), ["n2"]);
    for bad in ["app in (web", "app=x=y=(", "a b"] {
        let err = api.list(&ListParams::default().labels(bad)).await.err();
        assert_eq!(
            err.as_ref().and_then(api_code),
            Some(400),
            "{bad:?}: {err:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn field_selectors() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local(Config::default())?;
    server.apply_service(svc("a", "x", &[], 80));
    server.apply_service(svc("a", "y", &[], 80));
    server.apply_service(svc("b", "x", &[], 80));
    server.apply_endpoint_slice(slice("b", "x-1", "x", &["10.1.1.1"]));
    server.apply_node(node("n1", &[]));
    let client = client(&server, None).await?;
    let api = Api::<Service>::all(client.clone());
    let cases: &[(&str, &[&str])] = &[
        ("metadata.name=x", &["a/x", "b/x"]),
        ("metadata.name==y", &["a/y"]),
        ("metadata.name!=x", &["a/y"]),
        ("metadata.namespace=b", &["b/x"]),
        ("metadata.namespace!=b", &["a/x", "a/y"]),
        ("metadata.namespace=a,metadata.name!=y", &["a/x"]),
    ];
    for (sel, want) in cases {
        let got = api.list(&ListParams::default().fields(sel)).await?;
        assert_eq!(names(&got.items), *want, "fieldSelector {sel:?}");
    }
    let slices = Api::<EndpointSlice>::all(client.clone())
        .list(&ListParams::default().fields("metadata.name=x-1"))
        .await?;
    assert_eq!(names(&slices.items), ["b/x-1"]);
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default().fields("metadata.name=n1"))
        .await?;
    assert_eq!(names(&nodes.items), ["n1"]);
    match api
        .list(&ListParams::default().fields("spec.clusterIP=1.2.3.4"))
        .await
    {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (400, "BadRequest"));
            assert!(s.message.contains("spec.clusterIP"), "{}", s.message);
        }
        other => anyhow::bail!("expected 400, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn pagination_is_complete_and_consistent() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local(Config::default())?;
    for i in 0..23 {
        let ns = if i % 2 == 0 { "even" } else { "odd" };
        server.apply_service(svc(ns, &format!("svc-{i:02}"), &[("app", "paged")], 80));
    }
    let client = client(&server, None).await?;
    let api = Api::<Service>::all(client.clone());
    let expected = names(&server.services());
    assert_eq!(expected.len(), 23);
    let list_rv = server.resource_version().to_string();

    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    let mut changed = false;
    loop {
        let mut lp = ListParams::default().limit(5);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = api.list(&lp).await?;
        pages += 1;
        assert!(page.items.len() <= 5);
        // Every page is served from the first page's snapshot.
        assert_eq!(
            page.metadata.resource_version.as_deref(),
            Some(list_rv.as_str())
        );
        seen.extend(page.items.iter().map(|s| {
            (
                format!(
                    "{}/{}",
                    s.metadata.namespace.as_deref().unwrap_or_default(),
                    s.metadata.name.as_deref().unwrap_or_default()
                ),
                s.spec
                    .as_ref()
                    .and_then(|s| s.ports.as_ref())
                    .map(|p| p[0].port),
            )
        }));
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        match &token {
            Some(_) => {
                let remaining = page.metadata.remaining_item_count.unwrap_or(-1);
                assert_eq!(remaining as usize, 23 - seen.len());
            }
            None => break,
        }
        if !changed {
            // Changes after the first page must not leak into later pages.
            changed = true;
            server.apply_service(svc("odd", "svc-21", &[], 9999));
            server.apply_service(svc("odd", "svc-99", &[], 80));
            server.delete_service("odd", "svc-23");
            server.delete_service("odd", "svc-19");
        }
    }
    assert_eq!(pages, 5);
    let seen_names: Vec<_> = seen.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(seen_names, expected, "every item exactly once, in order");
    assert!(
        seen.iter().all(|(_, p)| *p == Some(80)),
        "snapshot content: {seen:?}"
    );

    // A selector with a limit pages over matching items only.
    let sel = api
        .list(&ListParams::default().labels("app=paged").limit(100))
        .await?;
    assert_eq!(
        sel.items.len(),
        21,
        "svc-19 deleted, svc-21 relabelled away, svc-99 unlabelled"
    );

    // A continue token whose snapshot was compacted is 410 Expired.
    let first = api.list(&ListParams::default().limit(5)).await?;
    let tok = first
        .metadata
        .continue_
        .ok_or_else(|| anyhow::anyhow!("no continue"))?;
    server.apply_service(svc("even", "bump", &[], 80));
    server.compact();
    match api
        .list(&ListParams::default().limit(5).continue_token(&tok))
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (410, "Expired")),
        other => anyhow::bail!("expected 410, got {other:?}"),
    }
    match api
        .list(&ListParams::default().limit(5).continue_token("not-hex"))
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 400),
        other => anyhow::bail!("expected 400, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn discovery_version_and_events() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local(Config::default().with_token(TOKEN))?;
    let client = client(&server, Some(TOKEN)).await?;
    let info = client.apiserver_version().await?;
    assert_eq!((info.major.as_str(), info.minor.as_str()), ("1", "33"));
    let core = client.list_core_api_versions().await?;
    assert_eq!(core.versions, ["v1"]);
    let groups = client.list_api_groups().await?;
    let group_names: Vec<_> = groups.groups.iter().map(|g| g.name.as_str()).collect();
    assert!(group_names.contains(&"discovery.k8s.io"), "{group_names:?}");
    let res = client
        .list_api_group_resources("discovery.k8s.io/v1")
        .await?;
    assert!(
        res.resources
            .iter()
            .any(|r| r.name == "endpointslices" && r.namespaced)
    );
    let core_res = client.list_core_api_resources("v1").await?;
    assert!(
        core_res
            .resources
            .iter()
            .any(|r| r.name == "nodes" && !r.namespaced)
    );

    // Core v1 events.
    let events = Api::<Event>::namespaced(client.clone(), "kube-system");
    let ev = Event {
        metadata: ObjectMeta {
            generate_name: Some("rudder-".to_owned()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            kind: Some("Service".to_owned()),
            name: Some("web".to_owned()),
            namespace: Some("kube-system".to_owned()),
            ..ObjectReference::default()
        },
        reason: Some("Synced".to_owned()),
        message: Some("programmed 3 endpoints".to_owned()),
        type_: Some("Normal".to_owned()),
        ..Event::default()
    };
    let created = events.create(&PostParams::default(), &ev).await?;
    let name = created.metadata.name.clone().unwrap_or_default();
    assert!(name.starts_with("rudder-") && name.len() > 7, "{name}");
    assert!(created.metadata.uid.is_some() && created.metadata.resource_version.is_some());

    // events.k8s.io/v1 events.
    let new_events =
        Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), "default");
    let ev2 = k8s_openapi::api::events::v1::Event {
        metadata: ObjectMeta {
            name: Some("node-ready.1".to_owned()),
            ..ObjectMeta::default()
        },
        reason: Some("Ready".to_owned()),
        action: Some("Sync".to_owned()),
        reporting_controller: Some("rudder".to_owned()),
        reporting_instance: Some("rudder-1".to_owned()),
        ..Default::default()
    };
    let created2 = new_events.create(&PostParams::default(), &ev2).await?;
    assert_eq!(created2.metadata.namespace.as_deref(), Some("default"));

    let stored = server.events();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0]["apiVersion"], "v1");
    assert_eq!(stored[0]["reason"], "Synced");
    assert_eq!(stored[0]["metadata"]["namespace"], "kube-system");
    assert_eq!(stored[1]["apiVersion"], "events.k8s.io/v1");
    assert_eq!(stored[1]["metadata"]["name"], "node-ready.1");
    assert_eq!(server.request_count("create", "events"), 2);
    Ok(())
}
