//! Proof for the deployment artifacts in `deploy/`, as far as this machine can go without a
//! cluster: every manifest parses into its k8s-openapi type with no unknown field, the
//! DaemonSet's command line and ConfigMap run the real binary, and the ClusterRole is enough
//! (and each of its rules necessary) against an API server that enforces it.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use rudder_e2e::{Daemon, Netns, TempDir, e2e_enabled};
use rudder_fake_apiserver::{Config, FakeApiServer};
use serde::Deserialize;
use serde_json::{Value, json};

fn rudder_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rudder"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("manifest file");
    serde_norway::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// Deserializes `doc` as `T` and checks that serializing it back gives the same JSON: a field
/// the type does not know (a typo) would be dropped and make the comparison fail.
fn strict<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) -> T {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("does not parse: {e}\n{doc:#}"));
    let back = serde_json::to_value(&typed).expect("serializes");
    assert_eq!(
        &back, doc,
        "unknown or misspelt fields (left: what the type kept)"
    );
    typed
}

struct Deploy {
    role: ClusterRole,
    config_yaml: String,
    daemonset: DaemonSet,
}

fn load() -> Deploy {
    let mut role = None;
    let mut config_yaml = None;
    let mut daemonset = None;
    let mut kinds = BTreeSet::new();
    for doc in documents(&repo().join("deploy/rudder.yaml")) {
        let kind = doc["kind"].as_str().expect("kind").to_owned();
        match kind.as_str() {
            "ServiceAccount" => {
                strict::<ServiceAccount>(&doc);
            }
            "ClusterRole" => role = Some(strict::<ClusterRole>(&doc)),
            "ClusterRoleBinding" => {
                strict::<ClusterRoleBinding>(&doc);
            }
            "ConfigMap" => {
                let cm = strict::<ConfigMap>(&doc);
                config_yaml = cm.data.and_then(|d| d.get("config.yaml").cloned());
            }
            "DaemonSet" => daemonset = Some(strict::<DaemonSet>(&doc)),
            other => panic!("unexpected kind {other}"),
        }
        assert_eq!(
            doc["metadata"]["namespace"]
                .as_str()
                .unwrap_or("kube-system"),
            "kube-system"
        );
        kinds.insert(kind);
    }
    assert_eq!(kinds.len(), 5, "{kinds:?}");
    Deploy {
        role: role.expect("ClusterRole"),
        config_yaml: config_yaml.expect("config.yaml in the ConfigMap"),
        daemonset: daemonset.expect("DaemonSet"),
    }
}

#[test]
fn manifests_parse_strictly_and_a_typo_is_caught() {
    let d = load();
    let spec = d.daemonset.spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(spec.host_network, Some(true));
    assert_eq!(
        spec.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let c = &spec.containers[0];
    let caps = c
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .expect("capabilities");
    assert_eq!(caps.add.as_deref(), Some(&["NET_ADMIN".to_string()][..]));
    assert_eq!(
        c.liveness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .map(|h| h.path.clone()),
        Some(Some("/livez".into()))
    );
    assert_eq!(
        c.readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .map(|h| h.path.clone()),
        Some(Some("/healthz".into()))
    );
    // The strictness check catches a typo.
    let mut doc = serde_json::to_value(&d.daemonset).expect("json");
    doc["spec"]["template"]["spec"]["hostNetwrok"] = json!(true);
    let caught = std::panic::catch_unwind(|| strict::<DaemonSet>(&doc));
    assert!(caught.is_err(), "a misspelt field must fail");
    // kind configs are plain YAML with kube-proxy disabled.
    for f in [
        "deploy/kind/cluster.yaml",
        "deploy/kind/cluster-dual-stack.yaml",
    ] {
        let docs = documents(&repo().join(f));
        assert_eq!(docs[0]["networking"]["kubeProxyMode"], "none", "{f}");
    }
}

/// The DaemonSet's command line with `$(NODE_NAME)` expanded and the config path pointed at
/// a copy of the ConfigMap's file.
fn daemon_args(d: &Deploy, config: &Path) -> Vec<String> {
    let c = &d
        .daemonset
        .spec
        .template
        .spec
        .as_ref()
        .expect("pod spec")
        .containers[0];
    assert_eq!(
        c.command.as_deref(),
        Some(&["/usr/local/bin/rudder".to_string()][..])
    );
    c.args
        .clone()
        .expect("args")
        .into_iter()
        .map(|a| {
            a.replace("$(NODE_NAME)", "node-1")
                .replace("/etc/rudder/config.yaml", &config.display().to_string())
        })
        .collect()
}

/// The ClusterRole's rules as (verb, resource) pairs for the test API server.
fn permissions(role: &ClusterRole) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for rule in role.rules.iter().flatten() {
        for verb in &rule.verbs {
            for res in rule.resources.iter().flatten() {
                out.push((verb.clone(), res.clone()));
            }
        }
    }
    out
}

fn api_objects(api: &FakeApiServer) {
    api.apply_node(
        serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"},
            "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}}),
        )
        .expect("node"),
    );
    api.apply_service(
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": "web"},
            "spec": {"clusterIP": "10.96.9.9", "ports": [{"name": "http", "port": 80}]}}))
        .expect("service"),
    );
    api.apply_endpoint_slice(
        serde_json::from_value(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": "default", "name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}], "endpoints": [{"addresses": ["10.244.0.9"]}]}))
        .expect("slice"),
    );
}

/// Starts the daemon with the DaemonSet's args in a fresh namespace, against an API server
/// that allows exactly `allowed`.
fn run_with(
    d: &Deploy,
    allowed: &[(String, String)],
    dir: &TempDir,
) -> (Netns, FakeApiServer, Daemon) {
    let ns = Netns::new("deploy").expect("netns");
    let listener = ns
        .enter(|| TcpListener::bind("127.0.0.1:6443"))
        .expect("enter")
        .expect("bind");
    let mut config = Config::default().with_token("sa-token");
    for (verb, res) in allowed {
        config = config.allow(verb, res);
    }
    let api = FakeApiServer::start(listener, config).expect("API server");
    api_objects(&api);
    let config_path = dir.write("config.yaml", &d.config_yaml).expect("config");
    let kubeconfig = dir
        .write("kubeconfig", &api.kubeconfig(Some("sa-token")))
        .expect("kubeconfig");
    let mut args = daemon_args(d, &config_path);
    args.push(format!("--kubeconfig={}", kubeconfig.display()));
    args.push("--node-wait=2s".into());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = Daemon::start(&rudder_bin(), &ns, &argv).expect("start");
    (ns, api, daemon)
}

#[test]
fn the_daemonset_command_line_and_config_run_with_exactly_the_cluster_role() {
    if !e2e_enabled() {
        return;
    }
    let d = load();
    let dir = TempDir::new("deploy").expect("temp dir");
    let allowed = permissions(&d.role);
    let (ns, _api, mut daemon) = run_with(&d, &allowed, &dir);
    daemon
        .wait_for("sync done", 1, Duration::from_secs(20))
        .expect("syncs with the ClusterRole's permissions");
    let log = daemon.log();
    assert!(
        !log.contains("unknown") && !log.contains("is ignored"),
        "the shipped config has no ignored fields:\n{log}"
    );
    assert!(
        !log.contains("conntrack sysctl"),
        "the shipped config leaves the conntrack sysctls to the node:\n{log}"
    );
    let rules = rudder_e2e::nft::list_ruleset(&ns).expect("ruleset");
    assert!(rules.contains("10.96.9.9 . tcp . 80"), "{rules}");
    // The config's bind addresses are in use.
    assert!(
        log.contains("0.0.0.0:10249") && log.contains("0.0.0.0:10256"),
        "{log}"
    );
    assert!(daemon.terminate(Duration::from_secs(5)).expect("terminate"));

    // A wrong flag fails at once.
    let out = std::process::Command::new(rudder_bin())
        .args(["run", "--no-such-flag"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn every_cluster_role_rule_for_reading_is_needed_and_a_missing_one_is_reported() {
    if !e2e_enabled() {
        return;
    }
    let d = load();
    let all = permissions(&d.role);
    for missing in [("list", "endpointslices"), ("watch", "services")] {
        let dir = TempDir::new("deploy").expect("temp dir");
        let allowed: Vec<(String, String)> = all
            .iter()
            .filter(|(v, r)| (v.as_str(), r.as_str()) != missing)
            .cloned()
            .collect();
        assert!(
            allowed.len() < all.len(),
            "{missing:?} is in the ClusterRole"
        );
        let (ns, _api, mut daemon) = run_with(&d, &allowed, &dir);
        daemon
            .wait_for("forbidden", 1, Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("{missing:?}: {e}"));
        let log = daemon.log();
        assert!(
            log.contains(missing.1),
            "the log names the resource {}:\n{log}",
            missing.1
        );
        if missing.0 == "list" {
            // Without the initial list nothing may be programmed.
            std::thread::sleep(Duration::from_secs(1));
            assert_eq!(daemon.count("sync done"), 0, "{log}");
            assert!(
                rudder_e2e::nft::list_ruleset(&ns)
                    .expect("ruleset")
                    .is_empty()
            );
        }
    }
}

/// Renders a Helm template written in the small subset the chart uses: `{{ .Values.a.b }}`,
/// `{{ range .Values.list }}` (with `{{ . }}` and `{{ .field }}` inside), `{{ if .field }}`,
/// `{{ end }}`, and `{{-` / `-}}` whitespace trimming. Anything else fails the test, which
/// keeps the chart within what this check understands. (`helm` itself cannot be installed
/// here.)
fn render(template: &str, values: &Value) -> String {
    #[derive(Debug)]
    enum Tok {
        Text(String),
        Action(String),
    }
    let mut toks = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let mut text = rest[..start].to_string();
        let after = &rest[start + 2..];
        let end = after.find("}}").expect("unclosed action");
        let mut action = &after[..end];
        if let Some(a) = action.strip_prefix('-') {
            text = text.trim_end().to_string();
            action = a;
        }
        let mut next = &after[end + 2..];
        if let Some(a) = action.strip_suffix('-') {
            action = a;
            next = next.trim_start();
        }
        toks.push(Tok::Text(text));
        toks.push(Tok::Action(action.trim().to_string()));
        rest = next;
    }
    toks.push(Tok::Text(rest.to_string()));

    fn lookup<'a>(path: &str, values: &'a Value, dot: Option<&'a Value>) -> Option<&'a Value> {
        if path == "." {
            return dot;
        }
        let (mut v, fields) = match path.strip_prefix(".Values.") {
            Some(p) => (values, p),
            None => (dot?, path.strip_prefix('.').expect("a field")),
        };
        for f in fields.split('.') {
            v = v.get(f)?;
        }
        Some(v)
    }
    fn scalar(v: Option<&Value>) -> String {
        match v {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        }
    }
    fn truthy(v: Option<&Value>) -> bool {
        match v {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
        }
    }
    // Returns the output and the index after the matching `end`.
    fn run(
        toks: &[Tok],
        mut i: usize,
        values: &Value,
        dot: Option<&Value>,
        out: &mut String,
    ) -> usize {
        while i < toks.len() {
            match &toks[i] {
                Tok::Text(t) => out.push_str(t),
                Tok::Action(a) if a == "end" => return i + 1,
                Tok::Action(a) => {
                    if let Some(path) = a.strip_prefix("range ") {
                        let items = lookup(path.trim(), values, dot)
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_default();
                        let mut body_end = None;
                        for item in &items {
                            body_end = Some(run(toks, i + 1, values, Some(item), out));
                        }
                        i = body_end
                            .unwrap_or_else(|| run(toks, i + 1, values, dot, &mut String::new()));
                        continue;
                    } else if let Some(path) = a.strip_prefix("if ") {
                        let mut body = String::new();
                        let next = run(toks, i + 1, values, dot, &mut body);
                        // `eq PATH "text"` and `ne PATH "text"`, or a value's truth.
                        let cond = path.trim();
                        let compare = |c: &str| {
                            let (p, lit) = c.split_once(' ').expect("eq/ne PATH \"text\"");
                            let lit = lit
                                .trim()
                                .strip_prefix('"')
                                .and_then(|l| l.strip_suffix('"'));
                            scalar(lookup(p, values, dot)) == lit.expect("a quoted string")
                        };
                        let yes = if let Some(c) = cond.strip_prefix("eq ") {
                            compare(c)
                        } else if let Some(c) = cond.strip_prefix("ne ") {
                            !compare(c)
                        } else {
                            truthy(lookup(cond, values, dot))
                        };
                        if yes {
                            out.push_str(&body);
                        }
                        i = next;
                        continue;
                    } else if a.starts_with('.') {
                        out.push_str(&scalar(lookup(a, values, dot)));
                    } else {
                        panic!("template action outside the supported subset: {a:?}");
                    }
                }
            }
            i += 1;
        }
        i
    }
    let mut out = String::new();
    run(&toks, 0, values, None, &mut out);
    out
}

fn chart_values() -> Value {
    let text =
        std::fs::read_to_string(repo().join("helm/rudder/values.yaml")).expect("values.yaml");
    serde_norway::from_str(&text).expect("values")
}

fn chart_objects(values: &Value) -> Vec<Value> {
    let template = std::fs::read_to_string(repo().join("helm/rudder/templates/rudder.yaml"))
        .expect("template");
    let text = render(&template, values);
    serde_norway::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("rendered YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn the_helm_chart_defaults_render_exactly_deploy() {
    let rendered = chart_objects(&chart_values());
    let deploy = documents(&repo().join("deploy/rudder.yaml"));
    assert_eq!(
        rendered, deploy,
        "helm/rudder with default values differs from deploy/rudder.yaml"
    );
    let chart: Value = serde_norway::from_str(
        &std::fs::read_to_string(repo().join("helm/rudder/Chart.yaml")).expect("Chart.yaml"),
    )
    .expect("yaml");
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "rudder");
}

#[test]
fn helm_values_change_the_objects_and_they_still_parse_strictly() {
    let mut values = chart_values();
    values["image"]["tag"] = json!("9.9.9");
    values["clusterCIDR"] = json!("10.0.0.0/8,fd00::/56");
    values["nodePortAddresses"] = json!(["192.168.0.0/16", "10.0.0.0/8"]);
    values["syncPeriod"] = json!("45s");
    values["resources"]["requests"]["cpu"] = json!("250m");
    values["tolerations"] = json!([{"operator": "Exists", "key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]);
    values["extraArgs"] = json!(["--v=3", "--logging-format=json"]);
    values["mode"] = json!("ipvs");
    values["ipvs"]["strictARP"] = json!(true);
    values["ipvs"]["tcpTimeout"] = json!("15m");
    values["ipvs"]["excludeCIDRs"] = json!(["10.0.0.0/8"]);
    let objs = chart_objects(&values);
    let ds: DaemonSet = strict(
        objs.iter()
            .find(|o| o["kind"] == "DaemonSet")
            .expect("DaemonSet"),
    );
    let cm: ConfigMap = strict(
        objs.iter()
            .find(|o| o["kind"] == "ConfigMap")
            .expect("ConfigMap"),
    );
    let pod = ds.spec.template.spec.expect("pod");
    let c = &pod.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some("ghcr.io/rudder-proxy/rudder:9.9.9")
    );
    // IPVS mode sets sysctls: privileged, as kube-proxy's DaemonSet (a writable /proc/sys).
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_eq!(sc.privileged, Some(true), "{sc:?}");
    assert_eq!(sc.capabilities, None, "{sc:?}");
    // nftables mode (the default) stays unprivileged, with CAP_NET_ADMIN only.
    let default_ds: DaemonSet = strict(
        chart_objects(&chart_values())
            .iter()
            .find(|o| o["kind"] == "DaemonSet")
            .expect("DaemonSet"),
    );
    let default_pod = default_ds.spec.template.spec.expect("pod");
    let dsc = default_pod.containers[0]
        .security_context
        .as_ref()
        .expect("securityContext");
    assert_eq!(dsc.privileged, None, "{dsc:?}");
    assert_eq!(dsc.allow_privilege_escalation, Some(false), "{dsc:?}");
    assert_eq!(
        dsc.capabilities.as_ref().and_then(|c| c.add.clone()),
        Some(vec!["NET_ADMIN".to_string()])
    );
    assert!(
        c.args
            .as_ref()
            .expect("args")
            .ends_with(&["--v=3".to_string(), "--logging-format=json".to_string()])
    );
    assert_eq!(
        pod.tolerations.expect("tolerations")[0].key.as_deref(),
        Some("node-role.kubernetes.io/control-plane")
    );
    let config = cm.data.expect("data")["config.yaml"].clone();
    assert!(
        config.contains("clusterCIDR: 10.0.0.0/8,fd00::/56") && config.contains("syncPeriod: 45s"),
        "{config}"
    );
    assert!(
        config.contains("excludeCIDRs:\n  - \"10.0.0.0/8\"\n"),
        "{config}"
    );
    // The rendered configuration and arguments are accepted by Rudder itself.
    let dir = TempDir::new("helmcfg").expect("temp dir");
    let path = dir.write("config.yaml", &config).expect("write");
    // Every field of it is read (the ipvs block included), without a warning.
    let effective = dir.path().join("effective.yaml");
    let out = std::process::Command::new(rudder_bin())
        .args(["run", "--config"])
        .arg(&path)
        .arg("--write-config-to")
        .arg(&effective)
        .output()
        .expect("run --write-config-to");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("WARN"), "{stderr}");
    let effective = std::fs::read_to_string(&effective).expect("effective config");
    for line in [
        "mode: ipvs",
        "strictARP: true",
        "tcpTimeout: 15m0s",
        "syncPeriod: 45s",
    ] {
        assert!(effective.contains(line), "{line}:\n{effective}");
    }
    let out = std::process::Command::new(rudder_bin())
        .args(["compile", "--manifests", "/nonexistent-dir"])
        .output()
        .expect("run");
    assert!(
        !out.status.success(),
        "sanity: compile of a missing directory fails"
    );
    let out = std::process::Command::new(rudder_bin())
        .args([
            "run",
            "--manifests",
            "/nonexistent-dir",
            "--iptables-sync-period",
            "x",
        ])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad flag value is rejected by the parser"
    );
    let mut argv: Vec<String> = c.args.clone().expect("args");
    argv = argv
        .into_iter()
        .map(|a| {
            a.replace("$(NODE_NAME)", "n1")
                .replace("/etc/rudder/config.yaml", &path.display().to_string())
        })
        .collect();
    argv.push("--help".into());
    let out = std::process::Command::new(rudder_bin())
        .args(&argv)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "the rendered arguments parse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn helm_node_port_address_keywords_render_into_the_config_rudder_reads() {
    // The chart's `nodePortAddresses` list becomes the config file's `nodePortAddresses`
    // list, keywords and IPv6 CIDRs included (an entry such as `::1/128` must be quoted in
    // YAML), and Rudder reads that list back as it is (`--write-config-to` writes what
    // Rudder will run with).
    for value in [
        vec!["primary"],
        vec!["primary", "localhost"],
        vec!["localhost"],
        vec!["all"],
        vec!["all", "localhost"],
        vec!["primary", "127.0.0.1/32", "::1/128"],
        vec!["::/0", "fd00::/8"],
    ] {
        let expected = value.clone();
        let mut values = chart_values();
        values["nodePortAddresses"] = json!(value);
        let objs = chart_objects(&values);
        let cm: ConfigMap = strict(
            objs.iter()
                .find(|o| o["kind"] == "ConfigMap")
                .expect("ConfigMap"),
        );
        let config = cm.data.expect("data")["config.yaml"].clone();
        let parsed: Value = serde_norway::from_str(&config).expect("config YAML");
        assert_eq!(
            parsed["nodePortAddresses"],
            json!(expected),
            "{value:?}: {config}"
        );
        let dir = TempDir::new("helmnpa").expect("temp dir");
        let path = dir.write("config.yaml", &config).expect("write");
        let written = dir.path().join("effective.yaml");
        let out = std::process::Command::new(rudder_bin())
            .arg("run")
            .arg("--config")
            .arg(&path)
            .arg("--write-config-to")
            .arg(&written)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{value:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let effective: Value =
            serde_norway::from_str(&std::fs::read_to_string(&written).expect("written config"))
                .expect("effective YAML");
        assert_eq!(
            effective["nodePortAddresses"],
            json!(expected),
            "{value:?}: what Rudder runs with"
        );
    }
}
