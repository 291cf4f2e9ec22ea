//! `Api::watch` semantics through kube-rs, plus the raw wire format.

mod common;

use std::time::Duration;

use common::{client, node, raw_request, svc, within};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use rudder_fake_apiserver::{Config, FakeApiServer};

type Events<K> = std::pin::Pin<Box<dyn Stream<Item = Result<WatchEvent<K>, kube::Error>> + Send>>;

async fn watch<K>(api: &Api<K>, wp: &WatchParams, rv: &str) -> anyhow::Result<Events<K>>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    Ok(api.watch(wp, rv).await?.boxed())
}

/// The next event, or an error if none arrives within 5 s.
async fn next<K>(s: &mut Events<K>) -> anyhow::Result<WatchEvent<K>> {
    match within(5, "watch event", s.next()).await? {
        Some(ev) => Ok(ev?),
        None => anyhow::bail!("watch stream ended"),
    }
}

/// The next non-bookmark event, rendered as "TYPE ns/name@rv".
async fn next_change<K: kube::Resource>(s: &mut Events<K>) -> anyhow::Result<String> {
    loop {
        let ev = next(s).await?;
        let (ty, o) = match &ev {
            WatchEvent::Added(o) => ("ADDED", o),
            WatchEvent::Modified(o) => ("MODIFIED", o),
            WatchEvent::Deleted(o) => ("DELETED", o),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => anyhow::bail!("watch error event: {e:?}"),
        };
        let m = o.meta();
        return Ok(format!(
            "{ty} {}/{}@{}",
            m.namespace.as_deref().unwrap_or_default(),
            m.name.as_deref().unwrap_or_default(),
            m.resource_version.as_deref().unwrap_or_default()
        ));
    }
}

fn rv_of<K: kube::Resource>(o: &K) -> String {
    o.meta().resource_version.clone().unwrap_or_default()
}

#[tokio::test]
async fn watch_from_list_rv_sees_changes_in_order() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local(Config::default())?;
    server.apply_service(svc("ns", "a", &[], 80));
    let client = client(&server, None).await?;
    let api = Api::<Service>::namespaced(client.clone(), "ns");
    let list = api.list(&ListParams::default()).await?;
    let list_rv = list.metadata.resource_version.unwrap_or_default();

    // Made between the list and the watch: must be replayed from history.
    let b = server.apply_service(svc("ns", "b", &[], 80));
    let mut s = watch(&api, &WatchParams::default().disable_bookmarks(), &list_rv).await?;
    assert_eq!(
        next_change(&mut s).await?,
        format!("ADDED ns/b@{}", rv_of(&b))
    );

    // Live changes; ones in other namespaces or kinds must not show up.
    server.apply_service(svc("other", "a", &[], 80));
    server.apply_node(node("n1", &[]));
    let a2 = server.apply_service(svc("ns", "a", &[], 81));
    assert!(server.delete_service("ns", "b"));
    let del_rv = server.resource_version();
    let c = server.apply_service(svc("ns", "c", &[], 80));
    assert_eq!(
        next_change(&mut s).await?,
        format!("MODIFIED ns/a@{}", rv_of(&a2))
    );
    assert_eq!(next_change(&mut s).await?, format!("DELETED ns/b@{del_rv}"));
    assert_eq!(
        next_change(&mut s).await?,
        format!("ADDED ns/c@{}", rv_of(&c))
    );

    // A second watch from the same list RV replays the identical sequence.
    let mut s2 = watch(&api, &WatchParams::default().disable_bookmarks(), &list_rv).await?;
    let mut replay = Vec::new();
    for _ in 0..4 {
        replay.push(next_change(&mut s2).await?);
    }
    assert_eq!(
        replay,
        [
            format!("ADDED ns/b@{}", rv_of(&b)),
            format!("MODIFIED ns/a@{}", rv_of(&a2)),
            format!("DELETED ns/b@{del_rv}"),
            format!("ADDED ns/c@{}", rv_of(&c)),
        ]
    );

    // Cluster-scoped and all-namespace watches work the same way.
    let nodes = Api::<Node>::all(client.clone());
    let mut ns = watch(&nodes, &WatchParams::default(), "0").await?;
    assert_eq!(
        next_change(&mut ns).await?,
        format!("ADDED /n1@{}", rv_of(&server.nodes()[0]))
    );
    let slices = Api::<EndpointSlice>::all(client.clone());
    let mut ss = watch(
        &slices,
        &WatchParams::default(),
        &server.resource_version().to_string(),
    )
    .await?;
    let sl = server.apply_endpoint_slice(common::slice("x", "web-1", "web", &["10.0.0.1"]));
    assert_eq!(
        next_change(&mut ss).await?,
        format!("ADDED x/web-1@{}", rv_of(&sl))
    );
    assert_eq!(server.request_count("watch", "services"), 2);
    Ok(())
}

#[tokio::test]
async fn watch_without_rv_sends_current_state_first() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local(Config::default())?;
    let a = server.apply_service(svc("ns", "a", &[], 80));
    let b = server.apply_service(svc("ns", "b", &[], 80));
    let client = client(&server, None).await?;
    let api = Api::<Service>::all(client);
    for rv in ["0", ""] {
        let mut s = watch(&api, &WatchParams::default().disable_bookmarks(), rv).await?;
        assert_eq!(
            next_change(&mut s).await?,
            format!("ADDED ns/a@{}", rv_of(&a))
        );
        assert_eq!(
            next_change(&mut s).await?,
            format!("ADDED ns/b@{}", rv_of(&b))
        );
        let c = server.apply_service(svc("ns", "c", &[], 80));
        assert_eq!(
            next_change(&mut s).await?,
            format!("ADDED ns/c@{}", rv_of(&c))
        );
        server.delete_service("ns", "c");
    }
    Ok(())
}

#[tokio::test]
async fn bookmarks_only_when_requested() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local(
        Config::default().with_bookmark_interval(Duration::from_millis(150)),
    )?;
    server.apply_service(svc("ns", "a", &[], 80));
    let client = client(&server, None).await?;
    let api = Api::<Service>::all(client);
    let rv0 = server.resource_version();

    let mut s = watch(&api, &WatchParams::default(), &rv0.to_string()).await?;
    // Right after the (empty) replay.
    match next(&mut s).await? {
        WatchEvent::Bookmark(bm) => {
            assert_eq!(bm.metadata.resource_version, rv0.to_string());
            assert_eq!(bm.types.kind, "Service");
            assert_eq!(bm.types.api_version, "v1");
        }
        other => anyhow::bail!("expected bookmark, got {other:?}"),
    }
    // Changes to other kinds advance the bookmark RV (the point of bookmarks).
    server.apply_node(node("n1", &[]));
    let rv1 = server.resource_version().to_string();
    let mut periodic = 0;
    loop {
        match next(&mut s).await? {
            WatchEvent::Bookmark(bm) => {
                periodic += 1;
                if bm.metadata.resource_version == rv1 {
                    break;
                }
            }
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    assert!(periodic >= 1);

    // Without allowWatchBookmarks: no bookmark, the first event is the change.
    let mut quiet = watch(&api, &WatchParams::default().disable_bookmarks(), &rv1).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = server.apply_service(svc("ns", "b", &[], 80));
    match next(&mut quiet).await? {
        WatchEvent::Added(o) => assert_eq!(rv_of(&o), rv_of(&b)),
        other => anyhow::bail!("expected ADDED, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn too_old_resource_version_is_an_expired_error_event() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local(Config::default())?;
    server.apply_service(svc("ns", "a", &[], 80));
    let old = server.resource_version();
    server.apply_service(svc("ns", "a", &[], 81));
    let client = client(&server, None).await?;
    let api = Api::<Service>::all(client);

    // Not compacted yet: replay works.
    let mut s = watch(
        &api,
        &WatchParams::default().disable_bookmarks(),
        &old.to_string(),
    )
    .await?;
    assert!(next_change(&mut s).await?.starts_with("MODIFIED ns/a@"));

    server.compact();
    let now = server.resource_version();
    let mut s = watch(&api, &WatchParams::default(), &old.to_string()).await?;
    match next(&mut s).await? {
        WatchEvent::Error(e) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
            assert_eq!(
                e.message,
                format!("too old resource version: {old} ({now})")
            );
        }
        other => anyhow::bail!("expected 410 error event, got {other:?}"),
    }
    assert!(
        within(5, "stream end", s.next()).await?.is_none(),
        "stream closes after the error"
    );
    // Watching from the compaction point itself is fine.
    let mut s = watch(
        &api,
        &WatchParams::default().disable_bookmarks(),
        &now.to_string(),
    )
    .await?;
    let c = server.apply_service(svc("ns", "c", &[], 80));
    assert_eq!(
        next_change(&mut s).await?,
        format!("ADDED ns/c@{}", rv_of(&c))
    );
    Ok(())
}

#[tokio::test]
async fn selectors_turn_transitions_into_added_and_deleted() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local(Config::default())?;
    server.apply_service(svc("ns", "a", &[("app", "web")], 80));
    let client = client(&server, None).await?;
    let api = Api::<Service>::all(client);
    let rv = server.resource_version().to_string();
    let mut s = watch(
        &api,
        &WatchParams::default().disable_bookmarks().labels("app=web"),
        &rv,
    )
    .await?;
    let mut by_name = watch(
        &api,
        &WatchParams::default()
            .disable_bookmarks()
            .fields("metadata.name=a"),
        &rv,
    )
    .await?;

    let m = server.apply_service(svc("ns", "a", &[("app", "web")], 81)); // still matches
    server.apply_service(svc("ns", "other", &[("app", "db")], 80)); // never matches
    let gone = server.apply_service(svc("ns", "a", &[("app", "db")], 81)); // stops matching
    let back = server.apply_service(svc("ns", "a", &[("app", "web")], 82)); // matches again
    assert_eq!(
        next_change(&mut s).await?,
        format!("MODIFIED ns/a@{}", rv_of(&m))
    );
    // The DELETED carries the last matching content with the new RV.
    match next(&mut s).await? {
        WatchEvent::Deleted(o) => {
            assert_eq!(rv_of(&o), rv_of(&gone));
            assert_eq!(
                o.metadata
                    .labels
                    .and_then(|l| l.get("app").cloned())
                    .as_deref(),
                Some("web")
            );
        }
        other => anyhow::bail!("expected DELETED, got {other:?}"),
    }
    assert_eq!(
        next_change(&mut s).await?,
        format!("ADDED ns/a@{}", rv_of(&back))
    );

    // The field-selected watch sees every change to "a" as MODIFIED.
    for want in [&m, &gone, &back] {
        assert_eq!(
            next_change(&mut by_name).await?,
            format!("MODIFIED ns/a@{}", rv_of(want))
        );
    }
    Ok(())
}

#[tokio::test]
async fn timeout_seconds_and_drop_watches_end_streams() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local(Config::default())?;
    let client = client(&server, None).await?;
    let api = Api::<Service>::all(client);
    let started = std::time::Instant::now();
    let mut s = watch(&api, &WatchParams::default().timeout(1), "0").await?;
    while let Some(ev) = within(5, "timeout", s.next()).await? {
        assert!(matches!(ev?, WatchEvent::Bookmark(_)));
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );

    let mut s = watch(&api, &WatchParams::default().disable_bookmarks(), "0").await?;
    common::wait_until(Duration::from_secs(2), "watch open", || {
        server.open_watches() == 1
    })
    .await?;
    server.drop_watches();
    assert!(within(5, "drop", s.next()).await?.is_none());
    common::wait_until(Duration::from_secs(2), "watch closed", || {
        server.open_watches() == 0
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn streaming_list_initial_events() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local(Config::default())?;
    let a = server.apply_service(svc("ns", "a", &[], 80));
    let client = client(&server, None).await?;
    let api = Api::<Service>::all(client);
    let rv = server.resource_version().to_string();
    let mut s = watch(&api, &WatchParams::streaming_lists(), "0").await?;
    assert_eq!(
        next_change(&mut s).await?,
        format!("ADDED ns/a@{}", rv_of(&a))
    );
    match next(&mut s).await? {
        WatchEvent::Bookmark(bm) => {
            assert_eq!(bm.metadata.resource_version, rv);
            assert_eq!(
                bm.metadata
                    .annotations
                    .get("k8s.io/initial-events-end")
                    .map(String::as_str),
                Some("true")
            );
        }
        other => anyhow::bail!("expected initial-events-end bookmark, got {other:?}"),
    }
    // Invalid combinations are rejected like the real apiserver (422).
    let r = raw_request(
        server.addr(),
        "GET",
        "/api/v1/services?watch=1&sendInitialEvents=true&allowWatchBookmarks=true",
        None,
        None,
    )?;
    assert_eq!(r.status, 422);
    assert_eq!(r.json()?["reason"], "Invalid");
    let r = raw_request(
        server.addr(),
        "GET",
        "/api/v1/services?sendInitialEvents=true",
        None,
        None,
    )?;
    assert_eq!(r.status, 422);
    Ok(())
}

#[test]
fn wire_format_is_one_json_event_per_chunk() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local(Config::default())?;
    server.apply_service(svc("ns", "a", &[], 80));
    server.apply_service(svc("ns", "b", &[], 80));
    let r = raw_request(
        server.addr(),
        "GET",
        "/api/v1/namespaces/ns/services?watch=true&timeoutSeconds=1&allowWatchBookmarks=true",
        None,
        None,
    )?;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert!(r.chunks.len() >= 3, "{:?}", r.chunks);
    for c in &r.chunks {
        assert!(
            c.ends_with('\n') && c.matches('\n').count() == 1,
            "one event per chunk: {c:?}"
        );
        let v: serde_json::Value = serde_json::from_str(c)?;
        assert!(v["object"].is_object());
    }
    let types: Vec<_> = r
        .body
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .map(|v| v["type"].as_str().unwrap_or_default().to_owned())
        })
        .collect::<Result<_, _>>()?;
    assert_eq!(&types[..3], ["ADDED", "ADDED", "BOOKMARK"]);

    // Plain list wire format.
    let r = raw_request(server.addr(), "GET", "/api/v1/services?limit=1", None, None)?;
    let v = r.json()?;
    assert_eq!(v["kind"], "ServiceList");
    assert_eq!(v["apiVersion"], "v1");
    assert_eq!(v["metadata"]["remainingItemCount"], 1);
    assert_eq!(v["items"][0]["kind"], "Service");
    Ok(())
}
