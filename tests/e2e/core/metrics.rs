//! The metrics and health endpoints, as kube-proxy serves them.

use super::*;

#[test]
fn metrics_and_health_endpoints_behave_like_kube_proxy() {
    if !e2e_enabled() {
        return;
    }
    let mut c = Cluster::start(&[]);
    // The metrics server listens on 127.0.0.1:10249 inside the node.
    let (code, _, text) =
        http_get_path(&c.topo.node, "127.0.0.1:10249", "/metrics").expect("metrics");
    assert_eq!(code, 200);
    for (name, kind) in [
        ("kubeproxy_sync_proxy_rules_duration_seconds", "histogram"),
        (
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "histogram",
        ),
        (
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "histogram",
        ),
        ("kubeproxy_sync_proxy_rules_last_timestamp_seconds", "gauge"),
        (
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "gauge",
        ),
        (
            "kubeproxy_network_programming_duration_seconds",
            "histogram",
        ),
        (
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            "gauge",
        ),
        (
            "kubeproxy_sync_proxy_rules_endpoint_changes_total",
            "counter",
        ),
        (
            "kubeproxy_sync_proxy_rules_service_changes_pending",
            "gauge",
        ),
        (
            "kubeproxy_sync_proxy_rules_service_changes_total",
            "counter",
        ),
        (
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
            "counter",
        ),
        (
            "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total",
            "counter",
        ),
        (
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "gauge",
        ),
        ("rudder_sync_objects_total", "counter"),
        ("rudder_sync_transaction_bytes_total", "counter"),
        ("rudder_sync_compile_duration_seconds", "histogram"),
        ("kubeproxy_proxy_healthz_total", "counter"),
        ("kubeproxy_proxy_livez_total", "counter"),
        (
            "kubeproxy_conntrack_reconciler_sync_duration_seconds",
            "histogram",
        ),
        (
            "kubeproxy_conntrack_reconciler_deleted_entries_total",
            "counter",
        ),
        ("process_resident_memory_bytes", "gauge"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}")),
            "missing {name} ({kind}):\n{text}"
        );
    }
    assert!(text.contains("kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0.001\"}"), "{text}");
    assert!(
        text.contains("le=\"16.384\""),
        "exponential buckets up to 16.384 s"
    );
    // Label sets, per family (the node has both).
    for family in ["IPv4", "IPv6"] {
        for series in [
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family=\"F\",le=\"0.001\"}",
            "kubeproxy_sync_partial_proxy_rules_duration_seconds_count{ip_family=\"F\"}",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"F\"}",
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family=\"F\"}",
            "kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"F\",le=\"0.25\"}",
            "kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"F\",le=\"300\"}",
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family=\"F\"}",
            "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total{ip_family=\"F\"}",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"F\",traffic_policy=\"internal\"}",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"F\",traffic_policy=\"external\"}",
            "kubeproxy_conntrack_reconciler_sync_duration_seconds_count{ip_family=\"F\"}",
            "kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=\"F\"}",
        ] {
            let series = series.replace('F', family);
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{series} "))),
                "missing series {series}:\n{text}"
            );
        }
    }
    for series in [
        "kubeproxy_sync_proxy_rules_endpoint_changes_total",
        "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
        "kubeproxy_sync_proxy_rules_service_changes_total",
        "kubeproxy_sync_proxy_rules_service_changes_pending",
        "kubeproxy_proxy_healthz_total{code=\"200\"}",
        "kubeproxy_proxy_livez_total{code=\"503\"}",
        "rudder_syncs_total{kind=\"full\",result=\"success\"}",
        "rudder_sync_elements_total{op=\"add\"}",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{series} "))),
            "missing series {series}:\n{text}"
        );
    }
    assert_eq!(
        http_get_path(&c.topo.node, "127.0.0.1:10249", "/proxyMode")
            .expect("proxyMode")
            .2,
        "nftables"
    );
    assert_eq!(
        http_get_path(&c.topo.node, "127.0.0.1:10249", "/healthz")
            .expect("healthz")
            .2,
        "ok"
    );
    // Values move with syncs.
    let before =
        metric(&text, "kubeproxy_sync_proxy_rules_endpoint_changes_total").expect("counter");
    c.edit("nginx.yaml", |t| {
        t.replacen(
            "- addresses: [10.244.3.2]\n  conditions: {ready: true}",
            "- addresses: [10.244.3.2]\n  conditions: {ready: false}",
            1,
        )
    });
    let (_, _, text) = http_get_path(&c.topo.node, "127.0.0.1:10249", "/metrics").expect("metrics");
    assert!(
        metric(&text, "kubeproxy_sync_proxy_rules_endpoint_changes_total").expect("counter")
            > before,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "kubeproxy_sync_partial_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}"
        )
        .expect("count")
            >= 1.0
    );
    assert_eq!(
        metric(&text, "kubeproxy_sync_proxy_rules_endpoint_changes_pending"),
        Some(0.0)
    );
    // A service with `Local` policies whose only endpoint is on another node counts in
    // no_local_endpoints, per policy and family; it goes back to zero when the endpoint moves here.
    const NO_LOCAL_INTERNAL: &str = "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"IPv4\",traffic_policy=\"internal\"}";
    const NO_LOCAL_EXTERNAL: &str = "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"IPv4\",traffic_policy=\"external\"}";
    assert_eq!(metric(&text, NO_LOCAL_INTERNAL), Some(0.0), "{text}");
    assert_eq!(metric(&text, NO_LOCAL_EXTERNAL), Some(0.0), "{text}");
    let local_svc = |node: &str| {
        format!(
            "apiVersion: v1
kind: Service
metadata: {{name: local-only, namespace: default}}
spec:
  type: NodePort
  clusterIP: 10.96.60.1
  internalTrafficPolicy: Local
  externalTrafficPolicy: Local
  ports: [{{name: http, port: 80, nodePort: 30060}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: local-only-1, namespace: default, labels: {{kubernetes.io/service-name: local-only}}}}
addressType: IPv4
ports: [{{name: http, port: 80}}]
endpoints: [{{addresses: [10.244.1.2], nodeName: {node}}}]
"
        )
    };
    let syncs = c.daemon.count(SYNC_DONE);
    c.manifests
        .write("local-only.yaml", &local_svc("other-node"))
        .expect("write");
    c.daemon
        .wait_for(SYNC_DONE, syncs + 1, Duration::from_secs(5))
        .expect("sync after the new manifest");
    let (_, _, text) = http_get_path(&c.topo.node, "127.0.0.1:10249", "/metrics").expect("metrics");
    assert_eq!(metric(&text, NO_LOCAL_INTERNAL), Some(1.0), "{text}");
    assert_eq!(metric(&text, NO_LOCAL_EXTERNAL), Some(1.0), "{text}");
    c.edit("local-only.yaml", |_| local_svc("node-1"));
    let (_, _, text) = http_get_path(&c.topo.node, "127.0.0.1:10249", "/metrics").expect("metrics");
    assert_eq!(metric(&text, NO_LOCAL_INTERNAL), Some(0.0), "{text}");
    assert_eq!(metric(&text, NO_LOCAL_EXTERNAL), Some(0.0), "{text}");
    // Invalid input is counted by reason.
    const INVALID_PORT: &str = "rudder_invalid_input_skipped_total{reason=\"invalid_port\"}";
    assert_eq!(metric(&text, INVALID_PORT), None, "{text}");
    let syncs = c.daemon.count(SYNC_DONE);
    c.manifests
        .write(
            "bad.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: bad-port, namespace: default}\nspec: {clusterIP: 10.96.61.1, ports: [{name: a, port: 80}, {name: b, port: 70000}]}\n",
        )
        .expect("write");
    c.daemon
        .wait_for(SYNC_DONE, syncs + 1, Duration::from_secs(5))
        .expect("sync after the bad manifest");
    let (_, _, text) = http_get_path(&c.topo.node, "127.0.0.1:10249", "/metrics").expect("metrics");
    assert!(metric(&text, INVALID_PORT) >= Some(1.0), "{text}");
    // Health server on 0.0.0.0:10256, reachable from outside the node.
    let (code, head, body) =
        http_get_path(&c.topo.client, "172.18.0.2:10256", "/healthz").expect("healthz");
    assert_eq!(code, 200, "{head}\n{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["healthy"], true);
    assert_eq!(json["nodeEligible"], true);
    assert!(
        json["status"]["IPv4"]["healthy"].as_bool() == Some(true)
            && json["lastUpdated"].is_string(),
        "{json}"
    );
    let (code, _, body) =
        http_get_path(&c.topo.client, "172.18.0.2:10256", "/livez").expect("livez");
    assert_eq!(code, 200);
    assert!(!body.contains("nodeEligible"), "{body}");
    // A node being deleted is not eligible: /healthz 503, /livez still 200.
    c.edit_unsynced("node.yaml", |t| {
        t.replace(
            "  name: node-1\n",
            "  name: node-1\n  deletionTimestamp: \"2026-01-01T00:00:00Z\"\n",
        )
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let (code, body) = loop {
        let (code, _, body) =
            http_get_path(&c.topo.client, "172.18.0.2:10256", "/healthz").expect("healthz");
        if code == 503 || std::time::Instant::now() >= deadline {
            break (code, body);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"nodeEligible\":false"), "{body}");
    assert_eq!(
        http_get_path(&c.topo.client, "172.18.0.2:10256", "/livez")
            .expect("livez")
            .0,
        200
    );
    let (_, _, text) = http_get_path(&c.topo.node, "127.0.0.1:10249", "/metrics").expect("metrics");
    assert!(
        metric(&text, "kubeproxy_proxy_healthz_total{code=\"503\"}").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(metric(&text, "kubeproxy_proxy_healthz_total{code=\"200\"}").unwrap_or(0.0) >= 1.0);
}
