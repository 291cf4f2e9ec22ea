//! Hostile and invalid manifests are skipped and never reach the ruleset.

use super::*;

/// Manifests an attacker or a broken controller could produce: odd names, nft syntax in
/// every string, invalid IPs, ports and protocols, mismatched families, an oversized slice,
/// a document of the wrong shape. The valid service still compiles, everything else is
/// reported by file and document or by object, and nothing reaches the ruleset verbatim.
#[test]
fn hostile_and_invalid_input_is_skipped_and_never_reaches_the_ruleset() {
    if !e2e_enabled() {
        return;
    }
    let dir = TempDir::new("hostile").expect("temp dir");
    let evil = r#"x\" } ; flush ruleset ; add rule ip filter input drop ; {\""#;
    let many: Vec<String> = (0..1001)
        .map(|i| format!("  - addresses: [\"10.9.{}.{}\"]", i / 250, i % 250 + 1))
        .collect();
    let text = format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: "good", namespace: default}}
spec: {{clusterIP: 10.96.50.1, ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: good-1, namespace: default, labels: {{kubernetes.io/service-name: good}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints: [{{addresses: [10.244.1.2]}}, {{addresses: ["fd00::1"]}}, {{addresses: ["10.0.0.1; flush ruleset"]}}]
---
apiVersion: v1
kind: Service
metadata:
  name: "{evil}"
  namespace: "{evil}"
  annotations: {{note: "{evil}"}}
spec: {{clusterIP: 10.96.50.2, ports: [{{name: "{evil}", port: 80, protocol: TCP}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: bad-ip, namespace: default}}
spec: {{clusterIP: "10.96.50.300", ports: [{{port: 80}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: bad-ports, namespace: default}}
spec: {{clusterIP: 10.96.50.4, ports: [{{name: a, port: 70000}}, {{name: b, port: 0}}, {{name: c, port: 53, protocol: ICMP}}, {{name: d, port: 81, nodePort: 99999}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: huge, namespace: default, labels: {{kubernetes.io/service-name: good}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
{}
---
apiVersion: v1
kind: Service
metadata: {{name: wrong-shape, namespace: default}}
spec: "this is not a spec"
"#,
        many.join("\n")
    );
    dir.write("hostile.yaml", &text).expect("write");
    let out = std::process::Command::new(rudder_bin())
        .args(["compile", "--manifests"])
        .arg(dir.path())
        .args(["--hostname-override", "node-1", "--node-ip", "172.18.0.2"])
        .output()
        .expect("run compile");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "compile must not fail on bad input: {stderr}"
    );
    let rules = String::from_utf8(out.stdout).expect("utf-8");
    // The valid service is there; the hostile one's ClusterIP too (its names are only names).
    assert!(
        rules.contains("10.96.50.1 . tcp . 80 . 0 : 10.244.1.2 . 8080"),
        "{rules}"
    );
    assert!(
        rules.contains("10.96.50.2"),
        "hostile names do not stop a valid service"
    );
    assert!(
        !rules.contains("flush") && !rules.contains("filter input"),
        "input text reached the ruleset"
    );
    assert!(
        !rules.contains("10.96.50.300") && !rules.contains("70000") && !rules.contains("99999")
    );
    for expected in [
        "hostile.yaml (document 7): invalid Service",
        "invalid clusterIP \"10.96.50.300\"",
        "invalid port number 70000",
        "unknown protocol \"ICMP\"",
        "invalid nodePort 99999",
        "does not match addressType IPv4",
        "invalid endpoint address",
        "1001 endpoints in one slice",
    ] {
        assert!(
            stderr.contains(expected),
            "stderr lacks {expected:?}:\n{stderr}"
        );
    }
    // And the kernel accepts the output.
    let ns = rudder_e2e::Netns::new("hostile").expect("netns");
    nft::load(&ns, &rules).expect("output loads");
    // --strict turns the same input into an error.
    let strict = std::process::Command::new(rudder_bin())
        .args(["compile", "--strict", "--manifests"])
        .arg(dir.path())
        .args(["--hostname-override", "node-1"])
        .output()
        .expect("run compile");
    assert!(!strict.status.success());
}
