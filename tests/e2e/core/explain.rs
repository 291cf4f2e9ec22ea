//! `rudder explain` predicts where packets go.

use super::*;

/// Runs `rudder explain` with the daemon's flags on the cluster's manifests.
fn explain(c: &Cluster, to: &str, from: &str) -> String {
    let out = std::process::Command::new(rudder_bin())
        .arg("explain")
        .arg("--manifests")
        .arg(c.manifests.path())
        .args([
            "--hostname-override",
            "node-1",
            "--cluster-cidr",
            "10.244.0.0/16,fd00:10:244::/56",
            "--to",
            to,
            "--from",
            from,
        ])
        .output()
        .expect("rudder explain");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The backends named by an explanation's endpoint lines (`  10.244.N.2:PORT ...`).
fn explained_backends(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|a| a.parse::<SocketAddr>().ok())
        .filter_map(|a| match a.ip() {
            std::net::IpAddr::V4(v4) => NAMES.get(usize::from(v4.octets()[2]).wrapping_sub(1)),
            std::net::IpAddr::V6(_) => None,
        })
        .map(|s| (*s).to_owned())
        .collect();
    names.sort();
    names
}

/// `rudder explain` offline on the example manifests, with `extra` flags.
fn explain_offline(extra: &[&str], to: &str) -> String {
    let out = std::process::Command::new(rudder_bin())
        .arg("explain")
        .arg("--manifests")
        .arg(example_dir())
        .args([
            "--hostname-override",
            "node-1",
            "--to",
            to,
            "--from",
            "172.18.0.10",
        ])
        .args(extra)
        .output()
        .expect("rudder explain");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Offline, `--proxy-mode ipvs` explains what IPVS mode programs (no root needed).
#[test]
fn offline_explain_follows_the_proxy_mode() {
    let ipvs = explain_offline(
        &["--proxy-mode", "ipvs", "--cluster-cidr", "10.244.0.0/16"],
        "172.18.0.2:30001",
    );
    assert!(ipvs.contains("picked by IPVS's rr scheduler"), "{ipvs}");
    assert!(ipvs.contains("IPVS virtual server"), "{ipvs}");
    let nft = explain_offline(&["--cluster-cidr", "10.244.0.0/16"], "172.18.0.2:30001");
    assert!(!nft.contains("IPVS"), "{nft}");
    assert!(nft.contains("verdict:     DNAT"), "{nft}");
}

#[test]
fn explain_predicts_where_packets_go() {
    if !e2e_enabled() {
        return;
    }
    let mut c = Cluster::start(&[]);
    // Make pod-2's endpoint not ready: both the kernel and the explanation must leave it out.
    c.edit("nginx.yaml", |t| {
        t.replacen(
            "- addresses: [10.244.3.2]\n  conditions: {ready: true}",
            "- addresses: [10.244.3.2]\n  conditions: {ready: false}",
            1,
        )
    });
    let client_ip = "172.18.0.10";
    for (to, from_pod, expect_masq, expected) in [
        (
            "10.96.100.100:80",
            true,
            "masquerade:  no",
            &["111", "222"][..],
        ),
        (
            "172.18.0.2:30001",
            false,
            "masquerade:  yes",
            &["111", "222", "333"][..],
        ),
    ] {
        let (ns, from) = if from_pod {
            (&c.topo.pods[0], "10.244.1.2")
        } else {
            (&c.topo.client, client_ip)
        };
        let text = explain(&c, to, from);
        let predicted = explained_backends(&text);
        assert!(text.contains("verdict:     DNAT"), "{text}");
        assert!(text.contains(expect_masq), "{text}");
        let observed: Vec<String> = c
            .hist(ns, to, 30, Proto::Tcp)
            .into_keys()
            .collect::<Vec<_>>();
        assert_eq!(predicted, observed, "{to} from {from}:\n{text}");
        assert_eq!(predicted, expected, "{text}");
    }
    // Live, from the running daemon: the same answer as from the same manifests offline.
    for (to, from) in [
        ("10.96.100.100:80", "10.244.1.2"),
        ("172.18.0.2:30001", client_ip),
        ("[fd00:10:96::100]:53/udp", "fd00:10:244:1::2"),
        ("10.96.100.100:81", "10.244.1.2"),
    ] {
        let out = c
            .topo
            .node
            .command(&rudder_bin().display().to_string())
            .args(["explain", "--live", "--to", to, "--from", from])
            .output()
            .expect("explain --live");
        let live = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(live, explain(&c, to, from), "{to} from {from}");
    }
    // A port the ClusterIP does not have: explained as rejected, and the kernel rejects it.
    let text = explain(&c, "10.96.100.100:81", "10.244.1.2");
    assert!(text.contains("verdict:     rejected"), "{text}");
    let r = tcp_request(
        &c.topo.pods[0],
        addr("10.96.100.100:81"),
        Duration::from_millis(500),
    );
    assert!(
        matches!(r, Err(RequestError::Refused)),
        "expected a reject, got {r:?}"
    );
}
