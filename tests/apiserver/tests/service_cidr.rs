//! ServiceCIDRs (`networking.k8s.io/v1`, cluster-scoped) through kube-rs's
//! own client: list / get / selectors / pagination, discovery, RBAC, watch
//! and `kube::runtime::watcher` + `reflector`.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{
    FastBackoff, TOKEN, client, node, raw_request, service_cidr, svc, wait_until, within,
};
use futures::{Stream, StreamExt};
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use rudder_fake_apiserver::{Config, FakeApiServer};

fn names(items: &[ServiceCIDR]) -> Vec<String> {
    items
        .iter()
        .map(|c| c.metadata.name.clone().unwrap_or_default())
        .collect()
}

fn cidrs_of(c: &ServiceCIDR) -> Vec<String> {
    c.spec
        .as_ref()
        .and_then(|s| s.cidrs.clone())
        .unwrap_or_default()
}

fn rv_of(c: &ServiceCIDR) -> String {
    c.metadata.resource_version.clone().unwrap_or_default()
}

#[tokio::test]
async fn list_get_selectors_and_pagination() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local(Config::default().with_token(TOKEN))?;
    // Applied out of order; a namespace on a cluster-scoped object is dropped.
    server.apply_service_cidr(service_cidr(
        "kubernetes",
        &[("origin", "default")],
        &["10.96.0.0/16", "fd00:10:96::/112"],
    ));
    let mut extra = service_cidr("extra-b", &[("origin", "user")], &["10.100.0.0/24"]);
    extra.metadata.namespace = Some("ignored".to_owned());
    server.apply_service_cidr(extra);
    server.apply_service_cidr(service_cidr(
        "extra-a",
        &[("origin", "user")],
        &["10.99.0.0/24"],
    ));
    // Other kinds do not show up in ServiceCIDR lists and vice versa.
    server.apply_node(node("n1", &[]));
    server.apply_service(svc("default", "kubernetes", &[], 443));
    let client = client(&server, Some(TOKEN)).await?;
    let api = Api::<ServiceCIDR>::all(client.clone());

    let all = api.list(&ListParams::default()).await?;
    assert_eq!(names(&all.items), ["extra-a", "extra-b", "kubernetes"]);
    assert_eq!(
        all.metadata.resource_version.as_deref(),
        Some(server.resource_version().to_string().as_str())
    );
    for c in &all.items {
        let m = &c.metadata;
        assert_eq!(m.namespace, None, "{m:?}");
        assert!(m.uid.as_deref().is_some_and(|u| u.len() == 36), "{m:?}");
        assert!(m.creation_timestamp.is_some(), "{m:?}");
    }
    assert_eq!(
        cidrs_of(&all.items[2]),
        ["10.96.0.0/16", "fd00:10:96::/112"]
    );
    assert_eq!(names(&server.service_cidrs()), names(&all.items));
    assert_eq!(server.nodes().len(), 1);
    assert_eq!(server.services().len(), 1);

    // The raw list document names the right kind and group version.
    let raw = raw_request(
        server.addr(),
        "GET",
        "/apis/networking.k8s.io/v1/servicecidrs?limit=1",
        Some(TOKEN),
        None,
    )?;
    assert_eq!(raw.status, 200);
    let doc = raw.json()?;
    assert_eq!(doc["kind"], "ServiceCIDRList");
    assert_eq!(doc["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(doc["items"][0]["kind"], "ServiceCIDR");
    assert_eq!(doc["items"][0]["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(doc["metadata"]["remainingItemCount"], 2);
    // Cluster-scoped: there is no namespaced path.
    let raw = raw_request(
        server.addr(),
        "GET",
        "/apis/networking.k8s.io/v1/namespaces/default/servicecidrs",
        Some(TOKEN),
        None,
    )?;
    assert_eq!(raw.status, 404);

    // Get, and the 404 for a missing one.
    let k = api.get("kubernetes").await?;
    assert_eq!(k.metadata.namespace, None);
    assert_eq!(cidrs_of(&k)[0], "10.96.0.0/16");
    match api.get("missing").await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"));
            assert_eq!(s.message, "servicecidrs \"missing\" not found");
        }
        other => anyhow::bail!("expected 404, got {other:?}"),
    }
    assert!(api.get_opt("missing").await?.is_none());

    // Selectors.
    let user = api
        .list(&ListParams::default().labels("origin=user"))
        .await?;
    assert_eq!(names(&user.items), ["extra-a", "extra-b"]);
    let not_default = api
        .list(&ListParams::default().labels("origin,origin!=default"))
        .await?;
    assert_eq!(names(&not_default.items), ["extra-a", "extra-b"]);
    let by_name = api
        .list(&ListParams::default().fields("metadata.name=kubernetes"))
        .await?;
    assert_eq!(names(&by_name.items), ["kubernetes"]);
    let others = api
        .list(&ListParams::default().fields("metadata.name!=kubernetes"))
        .await?;
    assert_eq!(names(&others.items), ["extra-a", "extra-b"]);

    // Pagination over a consistent snapshot.
    let list_rv = server.resource_version().to_string();
    let first = api.list(&ListParams::default().limit(2)).await?;
    assert_eq!(names(&first.items), ["extra-a", "extra-b"]);
    assert_eq!(first.metadata.remaining_item_count, Some(1));
    let tok = first
        .metadata
        .continue_
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no continue"))?;
    // Changed after the first page: the second page must not see it.
    server.apply_service_cidr(service_cidr("kubernetes", &[], &["10.0.0.0/8"]));
    server.apply_service_cidr(service_cidr("zzz", &[], &["10.1.0.0/24"]));
    let second = api
        .list(&ListParams::default().limit(2).continue_token(&tok))
        .await?;
    assert_eq!(names(&second.items), ["kubernetes"]);
    assert_eq!(cidrs_of(&second.items[0])[0], "10.96.0.0/16");
    assert_eq!(
        second.metadata.resource_version.as_deref(),
        Some(list_rv.as_str())
    );
    assert!(second.metadata.continue_.is_none_or(|t| t.is_empty()));

    // Deletes show up in the next list; a compacted continue token is 410.
    assert!(server.delete_service_cidr("extra-b"));
    assert!(!server.delete_service_cidr("extra-b"));
    assert_eq!(
        names(&api.list(&ListParams::default()).await?.items),
        ["extra-a", "kubernetes", "zzz"]
    );
    server.compact();
    match api
        .list(&ListParams::default().limit(2).continue_token(&tok))
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (410, "Expired")),
        other => anyhow::bail!("expected 410, got {other:?}"),
    }
    assert_eq!(server.request_count("get", "servicecidrs"), 3);
    assert_eq!(server.request_count("list", "servicecidrs"), 10);
    assert_eq!(server.request_count("list", "nodes"), 0);
    Ok(())
}

#[tokio::test]
async fn discovery_and_rbac() -> anyhow::Result<()> {
    let config = Config::default()
        .with_token(TOKEN)
        .allow("list", "servicecidrs")
        .allow("watch", "nodes");
    let server = FakeApiServer::start_local(config)?;
    server.apply_service_cidr(service_cidr("kubernetes", &[], &["10.96.0.0/16"]));
    let client = client(&server, Some(TOKEN)).await?;

    // Discovery: the group, its preferred version and the resource.
    let groups = client.list_api_groups().await?;
    let networking = groups
        .groups
        .iter()
        .find(|g| g.name == "networking.k8s.io")
        .ok_or_else(|| anyhow::anyhow!("no networking.k8s.io in {groups:?}"))?;
    assert_eq!(
        networking
            .preferred_version
            .as_ref()
            .map(|v| v.group_version.as_str()),
        Some("networking.k8s.io/v1")
    );
    let res = client
        .list_api_group_resources("networking.k8s.io/v1")
        .await?;
    assert_eq!(res.group_version, "networking.k8s.io/v1");
    let r = res
        .resources
        .iter()
        .find(|r| r.name == "servicecidrs")
        .ok_or_else(|| anyhow::anyhow!("no servicecidrs in {res:?}"))?;
    assert!(!r.namespaced);
    assert_eq!(r.kind, "ServiceCIDR");
    assert_eq!(r.singular_name, "servicecidr");
    assert_eq!(r.verbs, ["get", "list", "watch"]);
    let group = raw_request(
        server.addr(),
        "GET",
        "/apis/networking.k8s.io",
        Some(TOKEN),
        None,
    )?;
    let group = group.json()?;
    assert_eq!(group["kind"], "APIGroup");
    assert_eq!(group["name"], "networking.k8s.io");
    assert_eq!(group["versions"][0]["groupVersion"], "networking.k8s.io/v1");
    // The core group does not list it.
    let core = client.list_core_api_resources("v1").await?;
    assert!(core.resources.iter().all(|r| r.name != "servicecidrs"));

    // RBAC: list allowed, watch and get denied with the real message.
    let api = Api::<ServiceCIDR>::all(client.clone());
    assert_eq!(
        names(&api.list(&ListParams::default()).await?.items),
        ["kubernetes"]
    );
    let user = "system:serviceaccount:kube-system:rudder";
    match api.watch(&WatchParams::default(), "0").await.map(|_| ()) {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
            assert_eq!(
                s.message,
                format!(
                    "servicecidrs is forbidden: User \"{user}\" cannot watch resource \"servicecidrs\" in API group \"networking.k8s.io\" at the cluster scope"
                )
            );
        }
        other => anyhow::bail!("expected 403, got {other:?}"),
    }
    match api.get("kubernetes").await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
            assert_eq!(
                s.message,
                format!(
                    "servicecidrs \"kubernetes\" is forbidden: User \"{user}\" cannot get resource \"servicecidrs\" in API group \"networking.k8s.io\" at the cluster scope"
                )
            );
        }
        other => anyhow::bail!("expected 403, got {other:?}"),
    }
    let raw = raw_request(
        server.addr(),
        "GET",
        "/apis/networking.k8s.io/v1/servicecidrs/kubernetes",
        Some(TOKEN),
        None,
    )?;
    assert_eq!(raw.status, 403);
    let details = &raw.json()?["details"];
    assert_eq!(details["kind"], "servicecidrs");
    assert_eq!(details["group"], "networking.k8s.io");
    assert_eq!(details["name"], "kubernetes");
    assert_eq!(server.request_count("list", "servicecidrs"), 1);
    assert_eq!(server.request_count("watch", "servicecidrs"), 0);
    assert_eq!(server.request_count("get", "servicecidrs"), 0);
    Ok(())
}

type Events =
    std::pin::Pin<Box<dyn Stream<Item = Result<WatchEvent<ServiceCIDR>, kube::Error>> + Send>>;

async fn watch(api: &Api<ServiceCIDR>, wp: &WatchParams, rv: &str) -> anyhow::Result<Events> {
    Ok(api.watch(wp, rv).await?.boxed())
}

/// The next event, or an error if none arrives within 5 s.
async fn next(s: &mut Events) -> anyhow::Result<WatchEvent<ServiceCIDR>> {
    match within(5, "watch event", s.next()).await? {
        Some(ev) => Ok(ev?),
        None => anyhow::bail!("watch stream ended"),
    }
}

/// The next non-bookmark event, rendered as "TYPE name@rv".
async fn next_change(s: &mut Events) -> anyhow::Result<String> {
    loop {
        let (ty, o) = match next(s).await? {
            WatchEvent::Added(o) => ("ADDED", o),
            WatchEvent::Modified(o) => ("MODIFIED", o),
            WatchEvent::Deleted(o) => ("DELETED", o),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => anyhow::bail!("watch error event: {e:?}"),
        };
        assert_eq!(o.metadata.namespace, None, "{o:?}");
        return Ok(format!(
            "{ty} {}@{}",
            o.metadata.name.as_deref().unwrap_or_default(),
            rv_of(&o)
        ));
    }
}

#[tokio::test]
async fn watch_sees_added_modified_deleted() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local(
        Config::default().with_bookmark_interval(Duration::from_millis(100)),
    )?;
    let k = server.apply_service_cidr(service_cidr("kubernetes", &[], &["10.96.0.0/16"]));
    let client = client(&server, None).await?;
    let api = Api::<ServiceCIDR>::all(client.clone());
    let list = api.list(&ListParams::default()).await?;
    let list_rv = list.metadata.resource_version.unwrap_or_default();

    // Made between the list and the watch: replayed from history.
    let a = server.apply_service_cidr(service_cidr("extra", &[("tier", "a")], &["10.99.0.0/24"]));
    let mut s = watch(&api, &WatchParams::default().disable_bookmarks(), &list_rv).await?;
    assert_eq!(
        next_change(&mut s).await?,
        format!("ADDED extra@{}", rv_of(&a))
    );

    // Live changes; other kinds must not show up.
    server.apply_node(node("n1", &[]));
    server.apply_service(svc("default", "kubernetes", &[], 443));
    let m = server.apply_service_cidr(service_cidr("extra", &[("tier", "b")], &["10.99.0.0/24"]));
    assert!(server.delete_service_cidr("extra"));
    let del_rv = server.resource_version();
    assert_eq!(
        next_change(&mut s).await?,
        format!("MODIFIED extra@{}", rv_of(&m))
    );
    match next(&mut s).await? {
        WatchEvent::Deleted(o) => {
            // The last state, with the deletion's RV.
            assert_eq!(rv_of(&o), del_rv.to_string());
            assert_eq!(
                o.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("tier").cloned())
                    .as_deref(),
                Some("b")
            );
            assert_eq!(cidrs_of(&o), ["10.99.0.0/24"]);
        }
        other => anyhow::bail!("expected DELETED, got {other:?}"),
    }

    // From "0": the current state first, then a bookmark of the right kind.
    let mut s0 = watch(&api, &WatchParams::default(), "0").await?;
    assert_eq!(
        next_change(&mut s0).await?,
        format!("ADDED kubernetes@{}", rv_of(&k))
    );
    match next(&mut s0).await? {
        WatchEvent::Bookmark(bm) => {
            assert_eq!(bm.types.kind, "ServiceCIDR");
            assert_eq!(bm.types.api_version, "networking.k8s.io/v1");
            assert_eq!(bm.metadata.resource_version, del_rv.to_string());
        }
        other => anyhow::bail!("expected bookmark, got {other:?}"),
    }

    // Label-selected watch: transitions become ADDED / DELETED.
    let rv = server.resource_version().to_string();
    let mut sel = watch(
        &api,
        &WatchParams::default().disable_bookmarks().labels("tier=a"),
        &rv,
    )
    .await?;
    let added = server.apply_service_cidr(service_cidr("sel", &[("tier", "a")], &["10.1.0.0/24"]));
    server.apply_service_cidr(service_cidr("other", &[("tier", "b")], &["10.2.0.0/24"]));
    let gone = server.apply_service_cidr(service_cidr("sel", &[("tier", "b")], &["10.1.0.0/24"]));
    assert_eq!(
        next_change(&mut sel).await?,
        format!("ADDED sel@{}", rv_of(&added))
    );
    assert_eq!(
        next_change(&mut sel).await?,
        format!("DELETED sel@{}", rv_of(&gone))
    );

    // A compacted RV is a 410 ERROR event.
    let old = list_rv.parse::<u64>()?;
    server.compact();
    let now = server.resource_version();
    let mut expired = watch(&api, &WatchParams::default(), &list_rv).await?;
    match next(&mut expired).await? {
        WatchEvent::Error(e) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
            assert_eq!(
                e.message,
                format!("too old resource version: {old} ({now})")
            );
        }
        other => anyhow::bail!("expected 410 error event, got {other:?}"),
    }
    assert!(within(5, "stream end", expired.next()).await?.is_none());
    assert_eq!(server.request_count("watch", "servicecidrs"), 4);
    Ok(())
}

/// name -> resourceVersion.
fn state<'a>(items: impl IntoIterator<Item = &'a ServiceCIDR>) -> BTreeMap<String, String> {
    items
        .into_iter()
        .map(|c| (c.metadata.name.clone().unwrap_or_default(), rv_of(c)))
        .collect()
}

fn churn(server: &FakeApiServer, tag: &str) {
    server.apply_service_cidr(service_cidr(&format!("new-{tag}"), &[], &["10.200.0.0/24"]));
    server.apply_service_cidr(service_cidr(
        "kubernetes",
        &[("rev", tag)],
        &["10.96.0.0/16"],
    ));
    let victim = server
        .service_cidrs()
        .into_iter()
        .find(|c| c.metadata.name.as_deref() != Some("kubernetes"))
        .and_then(|c| c.metadata.name);
    if let Some(name) = victim {
        assert!(server.delete_service_cidr(&name));
    }
}

#[tokio::test]
async fn watcher_and_reflector_converge() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local(
        Config::default().with_bookmark_interval(Duration::from_millis(100)),
    )?;
    server.apply_service_cidr(service_cidr("kubernetes", &[], &["10.96.0.0/16"]));
    server.apply_service_cidr(service_cidr("extra", &[], &["10.99.0.0/24"]));
    let client = client(&server, None).await?;

    for (label, wc) in [
        ("list+watch", watcher::Config::default()),
        (
            "streaming list",
            watcher::Config::default().streaming_lists(),
        ),
    ] {
        let (reader, writer): (Store<ServiceCIDR>, _) = reflector::store();
        let errors = Arc::new(Mutex::new(Vec::<String>::new()));
        let errs = Arc::clone(&errors);
        let stream =
            reflector::reflector(writer, watcher(Api::<ServiceCIDR>::all(client.clone()), wc))
                .backoff(FastBackoff);
        let task = tokio::spawn(async move {
            stream
                .for_each(|ev| {
                    if let Err(e) = ev
                        && let Ok(mut v) = errs.lock()
                    {
                        v.push(format!("{e:?}"));
                    }
                    futures::future::ready(())
                })
                .await;
        });
        let converge = |what: &'static str| {
            let reader = reader.clone();
            let errors = Arc::clone(&errors);
            let server = &server;
            async move {
                wait_until(Duration::from_secs(8), what, || {
                    state(reader.state().iter().map(|c| c.as_ref()))
                        == state(&server.service_cidrs())
                })
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "{label}: {e}; watcher errors: {:?}",
                        errors.lock().map(|e| e.clone()).unwrap_or_default()
                    )
                })
            }
        };
        converge("initial state").await?;
        churn(&server, &format!("{label}-1"));
        converge("live changes").await?;
        server.drop_watches();
        churn(&server, &format!("{label}-2"));
        converge("after drop_watches").await?;
        // Other kinds move the global RV; bookmarks carry it to the watcher,
        // so a compaction does not force a re-list.
        server.apply_node(node(&format!("n-{}", label.len()), &[]));
        tokio::time::sleep(Duration::from_millis(400)).await;
        server.compact();
        server.drop_watches();
        churn(&server, &format!("{label}-3"));
        converge("after compaction").await?;
        task.abort();
        let errors = errors.lock().map(|e| e.clone()).unwrap_or_default();
        assert!(errors.is_empty(), "{label}: {errors:?}");
    }
    // One list for the list+watch round; the streaming round never lists.
    assert_eq!(server.request_count("list", "servicecidrs"), 1);
    assert!(server.request_count("watch", "servicecidrs") >= 6);
    Ok(())
}
