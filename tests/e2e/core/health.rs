//! Health-check node ports and the proxy's own health, with `rudder status`.

use super::*;

fn health_checked_service(hc_port: u16, policy: &str, node: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: hc, namespace: default}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.100.150
  externalTrafficPolicy: {policy}
  healthCheckNodePort: {hc_port}
  ports: [{{name: http, port: 80, nodePort: 30004}}]
status: {{loadBalancer: {{ingress: [{{ip: 192.168.122.150}}]}}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: hc-1, namespace: default, labels: {{kubernetes.io/service-name: hc}}}}
addressType: IPv4
ports: [{{name: http, port: 80}}]
endpoints:
- {{addresses: [10.244.1.2], nodeName: {node}}}
- {{addresses: [10.244.2.2], nodeName: {node}}}
- {{addresses: [10.244.3.2], nodeName: other-node, conditions: {{ready: true}}}}
"#
    )
}

#[test]
fn health_check_node_ports_follow_services() {
    if !e2e_enabled() {
        return;
    }
    let mut c = Cluster::start(&[]);
    let syncs = c.daemon.count(SYNC_DONE);
    c.manifests
        .write("hc.yaml", &health_checked_service(32100, "Local", "node-1"))
        .expect("write");
    c.daemon
        .wait_for(SYNC_DONE, syncs + 1, Duration::from_secs(5))
        .expect("sync");
    let probe = |c: &Cluster, port: u16| {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match http_get(&c.topo.client, &format!("172.18.0.2:{port}")) {
                Ok(r) => return Ok(r),
                Err(e) if std::time::Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    };
    // Two local ready endpoints (the third is on another node): 200, weight 2.
    let (code, head, body) = probe(&c, 32100).expect("health check answers");
    assert_eq!(code, 200, "{head}\n{body}");
    assert!(
        head.contains("X-Load-Balancing-Endpoint-Weight: 2"),
        "{head}"
    );
    assert!(
        head.contains("Content-Type: application/json")
            && head.contains("X-Content-Type-Options: nosniff")
    );
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(
        json,
        serde_json::json!({"service": {"namespace": "default", "name": "hc"}, "localEndpoints": 2, "serviceProxyHealthy": true})
    );
    // No local endpoint any more: 503 with 0.
    c.edit("hc.yaml", |_| {
        health_checked_service(32100, "Local", "node-9")
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (code, _, body) = probe(&c, 32100).expect("still answers");
        if code == 503 {
            assert!(body.contains("\"localEndpoints\":0"), "{body}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never went 503: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The port moves.
    c.edit("hc.yaml", |_| {
        health_checked_service(32101, "Local", "node-1")
    });
    assert_eq!(probe(&c, 32101).expect("new port").0, 200);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        http_get(&c.topo.client, "172.18.0.2:32100").is_err(),
        "old port still served"
    );
    // externalTrafficPolicy: Cluster: no health check server.
    c.edit("hc.yaml", |_| {
        health_checked_service(32101, "Cluster", "node-1")
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        http_get(&c.topo.client, "172.18.0.2:32101").is_err(),
        "Cluster policy still served"
    );
}

#[test]
fn health_check_reports_an_unhealthy_proxy() {
    if !e2e_enabled() {
        return;
    }
    // An nft that starts failing when a marker file exists; writes go through it with
    // `--nft-writer nft`.
    let dir = TempDir::new("nftwrap").expect("temp dir");
    let marker = dir.path().join("fail");
    let script = format!(
        "#!/bin/sh\n[ -e {} ] && {{ echo injected failure >&2; exit 1; }}\nexec nft \"$@\"\n",
        marker.display()
    );
    let wrapper = dir.write("nft", &script).expect("wrapper");
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&wrapper)
        .status()
        .expect("chmod");
    let wrapper = wrapper.display().to_string();
    let mut c = Cluster::start(&[
        "--iptables-sync-period",
        "1s",
        "--nft-writer",
        "nft",
        "--nft-path",
        &wrapper,
    ]);
    let syncs = c.daemon.count(SYNC_DONE);
    c.manifests
        .write("hc.yaml", &health_checked_service(32102, "Local", "node-1"))
        .expect("write");
    c.daemon
        .wait_for(SYNC_DONE, syncs + 1, Duration::from_secs(5))
        .expect("sync");
    let (code, _, body) = http_get(&c.topo.client, "172.18.0.2:32102").expect("health check");
    assert_eq!(code, 200, "{body}");
    // `rudder status` asks the daemon: all well.
    let (ok, text) = rudder_status(&c, false);
    assert!(ok, "{text}");
    assert!(text.contains("last failure:        never"), "{text}");
    assert!(text.contains("last sync:           partial"), "{text}");
    let (_, json) = rudder_status(&c, true);
    let st: serde_json::Value = serde_json::from_str(&json).expect("status JSON");
    let services = st["services"].as_u64().expect("services");
    assert!(services >= 4, "{json}");
    assert!(st["fullSyncs"].as_u64() >= Some(1), "{json}");
    assert_eq!(st["lastSync"]["servicesChanged"], 1, "{json}");
    // Syncs start failing; a change is queued and never programmed.
    std::fs::write(&marker, "").expect("marker");
    c.edit_unsynced("hc.yaml", |_| {
        health_checked_service(32102, "Local", "node-1").replace("10.244.3.2", "10.244.3.3")
    });
    c.daemon
        .wait_for("sync failed", 1, Duration::from_secs(5))
        .expect("sync fails");
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    loop {
        let (code, _, body) = http_get(&c.topo.client, "172.18.0.2:32102").expect("still answers");
        if code == 503 {
            assert!(body.contains("\"serviceProxyHealthy\":false"), "{body}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never reported unhealthy: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, text) = rudder_status(&c, false);
    assert!(!ok, "status must fail while syncs fail:\n{text}");
    assert!(text.contains("in a row"), "{text}");
    // Programming works again: healthy again after the retry.
    std::fs::remove_file(&marker).expect("remove marker");
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    while http_get(&c.topo.client, "172.18.0.2:32102").map(|r| r.0) != Ok(200) {
        assert!(std::time::Instant::now() < deadline, "never healthy again");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The status turns good with the first successful sync after the failures.
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    let text = loop {
        let (ok, text) = rudder_status(&c, false);
        if ok {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(text.contains("last failure:        "), "{text}");
    assert!(!text.contains("last failure:        never"), "{text}");
    assert!(
        text.contains(&format!("services:            {services}\n")),
        "{text}"
    );
}

/// `rudder status` run on the node: (exit success, stdout).
fn rudder_status(c: &Cluster, json: bool) -> (bool, String) {
    let mut cmd = c.topo.node.command(&rudder_bin().display().to_string());
    cmd.arg("status");
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("rudder status");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}
