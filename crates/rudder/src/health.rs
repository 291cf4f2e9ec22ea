//! The health-check node port servers (`spec.healthCheckNodePort`), as kube-proxy runs them.
//!
//! One listener per port on the node-port addresses (every address when those are all). Any
//! request gets kube-proxy's JSON body and headers: 200 with the number of local ready
//! endpoints when there are some and the proxy is healthy, 503 otherwise. Servers start, move
//! and stop as services change.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};

use rudder_controller::health::{ProxyHealth, ServiceHealth};
use rudder_model::ServiceKey;
use rudder_sources::events::{Events, ProxyEvent};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

type Table = Arc<RwLock<BTreeMap<u16, (ServiceKey, usize)>>>;

/// The response to a probe of `port`: status code and body, plus the endpoint count.
fn response(table: &Table, health: &ProxyHealth, port: u16) -> (u16, String, usize) {
    let entry = table.read().ok().and_then(|t| t.get(&port).cloned());
    let Some((key, count)) = entry else {
        return (503, "{}".to_owned(), 0);
    };
    let healthy = health.healthy();
    let body = serde_json::json!({
        "service": {"namespace": key.namespace, "name": key.name},
        "localEndpoints": count,
        "serviceProxyHealthy": healthy,
    })
    .to_string();
    (if count > 0 && healthy { 200 } else { 503 }, body, count)
}

/// Runs until `updates` closes: keeps one server per health-check node port.
pub async fn run(
    mut updates: watch::Receiver<ServiceHealth>,
    health: Arc<ProxyHealth>,
    events: Events,
) {
    let table: Table = Arc::default();
    let mut servers: BTreeMap<u16, (Vec<IpAddr>, Vec<JoinHandle<()>>)> = BTreeMap::new();
    loop {
        let snapshot = updates.borrow_and_update().clone();
        if let Ok(mut t) = table.write() {
            *t = snapshot.ports.clone();
        }
        // Stop servers for ports that went away or whose addresses changed.
        servers.retain(|port, (addrs, tasks)| {
            let keep = snapshot.ports.contains_key(port) && *addrs == snapshot.addresses;
            if !keep {
                info!(port, "stopping health check server");
                tasks.iter().for_each(JoinHandle::abort);
            }
            keep
        });
        for (port, (key, _)) in &snapshot.ports {
            if servers.contains_key(port) {
                continue;
            }
            let addrs: Vec<SocketAddr> = if snapshot.addresses.is_empty() {
                // `[::]` also accepts IPv4 unless the host forbids dual-stack sockets.
                vec![SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), *port)]
            } else {
                snapshot
                    .addresses
                    .iter()
                    .map(|ip| SocketAddr::new(*ip, *port))
                    .collect()
            };
            let mut tasks = Vec::new();
            for addr in addrs {
                let (table2, health2, port2) = (table.clone(), health.clone(), *port);
                let handler = crate::http::handler_sync(move |_| {
                    let (status, body, count) = response(&table2, &health2, port2);
                    let mut r = crate::http::Response::new(status, "application/json", body);
                    r.headers.push(("X-Content-Type-Options", "nosniff".into()));
                    r.headers
                        .push(("X-Load-Balancing-Endpoint-Weight", count.to_string()));
                    r
                });
                match crate::http::serve(addr, handler) {
                    Ok(task) => {
                        info!(%addr, service = %key, "serving health checks");
                        tasks.push(task);
                    }
                    Err(e) => {
                        warn!(
                            reason = "FailedToStartServiceHealthcheck",
                            %addr,
                            service = %key,
                            "cannot start the health check server: {e}"
                        );
                        events.record(ProxyEvent::FailedToStartServiceHealthcheck {
                            service: key.clone(),
                            port: *port,
                            error: format!("listen {addr}: {e}"),
                        });
                    }
                }
            }
            servers.insert(*port, (snapshot.addresses.clone(), tasks));
        }
        if updates.changed().await.is_err() {
            break;
        }
    }
    for (_, (_, tasks)) in servers {
        tasks.iter().for_each(JoinHandle::abort);
    }
}
