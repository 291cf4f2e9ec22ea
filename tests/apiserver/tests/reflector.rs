//! `kube::runtime::watcher` + `reflector` against the fake server, including
//! every failure the control API can inject.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{FastBackoff, client, node, svc, wait_until};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use rudder_fake_apiserver::{Config, FakeApiServer};

/// A running reflector: its read side, the errors its watcher reported, and
/// the task driving it (aborted on drop).
struct Reflected {
    reader: Store<Service>,
    errors: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Reflected {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Reflected {
    fn errors(&self) -> Vec<String> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

fn reflect(api: Api<Service>, wc: watcher::Config) -> Reflected {
    let (reader, writer) = reflector::store();
    let errors = Arc::new(Mutex::new(Vec::new()));
    let errs = Arc::clone(&errors);
    let stream = reflector::reflector(writer, watcher(api, wc)).backoff(FastBackoff);
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
    Reflected {
        reader,
        errors,
        task,
    }
}

/// ns/name -> resourceVersion.
fn state<'a>(items: impl IntoIterator<Item = &'a Service>) -> BTreeMap<String, String> {
    items
        .into_iter()
        .map(|s| {
            (
                format!(
                    "{}/{}",
                    s.metadata.namespace.as_deref().unwrap_or_default(),
                    s.metadata.name.as_deref().unwrap_or_default()
                ),
                s.metadata.resource_version.clone().unwrap_or_default(),
            )
        })
        .collect()
}

async fn converge(server: &FakeApiServer, r: &Reflected, what: &str) -> anyhow::Result<()> {
    wait_until(Duration::from_secs(8), what, || {
        let ours = r.reader.state();
        state(ours.iter().map(|a| a.as_ref())) == state(&server.services())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}; reflector errors: {:?}", r.errors()))
}

fn seed(server: &FakeApiServer) {
    for (ns, name) in [("a", "one"), ("a", "two"), ("b", "three")] {
        server.apply_service(svc(ns, name, &[], 80));
    }
}

fn churn(server: &FakeApiServer, tag: &str) {
    server.apply_service(svc("a", &format!("new-{tag}"), &[], 80));
    server.apply_service(svc("a", "one", &[("rev", tag)], 81));
    let victim = server
        .services()
        .into_iter()
        .find(|s| s.metadata.name.as_deref() != Some("one"))
        .and_then(|s| Some((s.metadata.namespace?, s.metadata.name?)));
    if let Some((ns, name)) = victim {
        assert!(server.delete_service(&ns, &name));
    }
}

#[tokio::test]
async fn reflector_converges_and_survives_dropped_watches() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local(Config::default().with_token(common::TOKEN))?;
    seed(&server);
    let client = client(&server, Some(common::TOKEN)).await?;
    let r = reflect(Api::all(client), watcher::Config::default());
    converge(&server, &r, "initial list").await?;
    churn(&server, "1");
    converge(&server, &r, "live changes").await?;

    for round in 2..4 {
        let watches = server.request_count("watch", "services");
        server.drop_watches();
        churn(&server, &round.to_string());
        converge(&server, &r, "changes after drop_watches").await?;
        wait_until(Duration::from_secs(5), "re-watch", || {
            server.request_count("watch", "services") > watches
        })
        .await?;
    }
    // Resumed from its resource version each time: never re-listed.
    assert_eq!(server.request_count("list", "services"), 1);
    assert!(r.errors().is_empty(), "{:?}", r.errors());
    Ok(())
}

#[tokio::test]
async fn compaction_forces_a_relist() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local(Config::default())?;
    seed(&server);
    let client = client(&server, None).await?;
    // Without bookmarks the watcher's RV stays at the list RV while other
    // kinds move the global RV on; that RV then falls behind a compaction.
    let r = reflect(
        Api::all(client),
        watcher::Config::default().disable_bookmarks(),
    );
    converge(&server, &r, "initial list").await?;
    wait_until(Duration::from_secs(5), "watch open", || {
        server.open_watches() == 1
    })
    .await?;
    assert_eq!(server.request_count("list", "services"), 1);

    server.apply_node(node("n1", &[]));
    server.compact();
    server.drop_watches();
    // Changed after the drop: only a fresh list can deliver these.
    churn(&server, "x");
    converge(&server, &r, "after compaction").await?;
    wait_until(Duration::from_secs(5), "re-list", || {
        server.request_count("list", "services") == 2
    })
    .await?;
    let errors = r.errors();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("410") && e.contains("Expired")),
        "watcher saw the 410: {errors:?}"
    );
    // And it keeps following live changes afterwards.
    churn(&server, "y");
    converge(&server, &r, "live after re-list").await?;
    assert_eq!(server.request_count("list", "services"), 2);
    Ok(())
}

#[tokio::test]
async fn bookmarks_let_a_watcher_survive_compaction() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local(
        Config::default().with_bookmark_interval(Duration::from_millis(100)),
    )?;
    seed(&server);
    let client = client(&server, None).await?;
    let r = reflect(Api::all(client), watcher::Config::default());
    converge(&server, &r, "initial list").await?;
    server.apply_node(node("n1", &[]));
    // Give a periodic bookmark time to carry the new RV to the watcher.
    tokio::time::sleep(Duration::from_millis(600)).await;
    server.compact();
    server.drop_watches();
    churn(&server, "x");
    converge(&server, &r, "after compaction").await?;
    assert_eq!(
        server.request_count("list", "services"),
        1,
        "{:?}",
        r.errors()
    );
    Ok(())
}

#[tokio::test]
async fn reflector_recovers_from_refused_connections() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local(Config::default())?;
    seed(&server);
    let client = client(&server, None).await?;
    let r = reflect(Api::all(client), watcher::Config::default());
    converge(&server, &r, "initial list").await?;

    let outage = Instant::now();
    server.refuse_connections_for(Duration::from_secs(2));
    churn(&server, "during-outage");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // The watch connection was cut: the reflector cannot have seen these.
    let ours = state(r.reader.state().iter().map(|a| a.as_ref()));
    assert!(!ours.contains_key("a/new-during-outage"), "{ours:?}");
    assert!(
        server.refused_connections() > 0,
        "the watcher kept retrying"
    );

    converge(&server, &r, "after the outage").await?;
    assert!(outage.elapsed() >= Duration::from_secs(2));
    churn(&server, "after");
    converge(&server, &r, "live after the outage").await?;
    Ok(())
}

#[tokio::test]
async fn refused_connections_with_compaction_relists() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local(Config::default())?;
    seed(&server);
    let client = client(&server, None).await?;
    let r = reflect(Api::all(client), watcher::Config::default());
    converge(&server, &r, "initial list").await?;
    server.refuse_connections_for(Duration::from_secs(1));
    churn(&server, "gap");
    server.compact();
    converge(&server, &r, "after outage + compaction").await?;
    assert_eq!(
        server.request_count("list", "services"),
        2,
        "{:?}",
        r.errors()
    );
    Ok(())
}

#[tokio::test]
async fn streaming_list_watcher_converges() -> anyhow::Result<()> {
    let server = FakeApiServer::start_local(Config::default())?;
    seed(&server);
    let client = client(&server, None).await?;
    let r = reflect(
        Api::all(client),
        watcher::Config::default().streaming_lists(),
    );
    converge(&server, &r, "initial streaming list").await?;
    churn(&server, "1");
    converge(&server, &r, "live").await?;
    server.drop_watches();
    churn(&server, "2");
    converge(&server, &r, "after drop").await?;
    assert_eq!(server.request_count("list", "services"), 0);
    assert!(server.request_count("watch", "services") >= 2);
    Ok(())
}
