//! Comments never exceed what the kernel and `nft` take (kubernetes#139516: kube-proxy's
//! comments, built from service names, grew past 128 bytes and made whole transactions
//! fail). Rudder's comments are fixed texts, and the only way to make one,
//! `Comment::sanitize`, cuts anything at 128 bytes; here both writers load the longest one
//! into a real kernel, `nft` itself shows that one byte more is refused, and a ruleset
//! compiled from the longest names the API allows carries no comment longer than that.

use rudder_compiler::{Compiler, Config, NodeContext, NodePortIps};
use rudder_e2e::{Netns, e2e_enabled};
use rudder_model::{
    Endpoint, EndpointPort, EndpointSlice, IpFamily, Protocol, ProxyState, Service, ServiceKey,
    ServicePort, ServiceType,
};
use rudder_nft::{
    ChainDecl, ChainType, Comment, Family, Hook, MAX_COMMENT_LEN, Name, Rule, Stmt, TableRef,
    Transaction, Verdict,
};
use rudder_nft_backend::{NftBackend, WriteMode};

fn name(s: &str) -> Name {
    Name::new(s).expect("name")
}

/// Every `comment "…"` in a rendered ruleset or listing.
fn comments(text: &str) -> Vec<String> {
    text.split("comment \"")
        .skip(1)
        .filter_map(|rest| rest.split_once('"').map(|(c, _)| c.to_owned()))
        .collect()
}

#[test]
fn the_longest_comment_loads_through_both_writers_and_one_byte_more_does_not() {
    if !e2e_enabled() {
        return;
    }
    // Hostile and far too long: quotes, backslashes, newlines, non-ASCII.
    let hostile = format!("ns/{}\" ; flush ruleset ; \\\n\u{202e}", "é".repeat(400));
    let comment = Comment::sanitize(&hostile);
    assert_eq!(comment.as_str().len(), MAX_COMMENT_LEN);
    for mode in [WriteMode::Netlink, WriteMode::Program] {
        let ns = Netns::new("cmt").expect("netns");
        let t = TableRef::new(Family::Ip, name("rudder"));
        let mut tx = Transaction::new();
        tx.add_table(t.clone());
        tx.add_chain(
            &t,
            ChainDecl::base(name("out"), ChainType::Filter, Hook::Output, 0),
        );
        tx.add_rule(
            &t,
            &name("out"),
            Rule::new(vec![Stmt::Verdict(Verdict::Accept)]).with_comment(&hostile),
        );
        ns.enter(|| NftBackend::new().write_mode(mode).apply(&tx).map(|_| ()))
            .expect("enter")
            .unwrap_or_else(|e| panic!("{mode:?}: the kernel refused a 128-byte comment: {e}"));
        let out = ns
            .exec(&["nft", "list", "table", "ip", "rudder"])
            .expect("list");
        let listed = comments(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(listed, vec![comment.as_str().to_owned()], "{mode:?}");
        // The limit is real: nft refuses a comment of 129 bytes.
        let too_long = format!("comment \"{}\"", "x".repeat(MAX_COMMENT_LEN + 1));
        let refused = ns.exec(&["nft", &format!("add rule ip rudder out accept {too_long}")]);
        assert!(refused.is_err(), "nft took a 129-byte comment");
    }
}

/// A name of `len` characters that is a valid Kubernetes name (DNS label or subdomain).
fn long_name(prefix: &str, len: usize) -> String {
    let mut s = prefix.to_owned();
    while s.len() < len {
        s.push('x');
    }
    s
}

#[test]
fn rulesets_compiled_from_the_longest_names_keep_every_comment_within_the_limit() {
    // Namespaces are DNS labels (63), Service names too (63), slice and port names up to 253
    // and 63: none of them reaches a comment, and every comment stays within the limit.
    let ns = long_name("ns-", 63);
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for (i, ty) in [
        ServiceType::ClusterIp,
        ServiceType::NodePort,
        ServiceType::LoadBalancer,
    ]
    .into_iter()
    .enumerate()
    {
        let svc_name = long_name(&format!("svc{i}-"), 63);
        let port_name = long_name("port-", 63);
        let mut s = Service::new(
            ServiceKey::new(&ns, &svc_name),
            vec![format!("10.96.0.{}", i + 1).parse().expect("ip")],
        );
        s.service_type = ty;
        s.session_affinity_timeout = (i == 1).then_some(60);
        s.external_ips = vec![format!("192.0.2.{}", i + 1).parse().expect("ip")];
        s.ports = vec![ServicePort {
            node_port: (ty != ServiceType::ClusterIp).then_some(30000 + i as u16),
            ..ServicePort::new(&port_name, Protocol::Tcp, 80)
        }];
        services.push(s);
        slices.push(EndpointSlice::new(
            &ns,
            &long_name(&format!("slice{i}-"), 253),
            &svc_name,
            IpFamily::V4,
            vec![EndpointPort {
                name: port_name,
                protocol: Protocol::Tcp,
                port: 8080,
            }],
            vec![Endpoint::new(format!("10.244.1.{}", i + 2).parse().expect("ip")).on_node("n1")],
        ));
    }
    let mut st = ProxyState::new();
    st.replace_all(services, slices);
    let mut node = NodeContext::new("n1".into(), NodePortIps::All);
    node.ips = vec!["172.18.0.2".parse().expect("ip")];
    let config = Config {
        masquerade_all: true,
        localhost_node_ports: vec![IpFamily::V4],
        localhost_gate: true,
        ..Config::default()
    };
    let mut c = Compiler::new(&[IpFamily::V4, IpFamily::V6], config, node);
    let text = c.full(&st).render();
    let found = comments(&text);
    assert!(!found.is_empty());
    for cm in &found {
        assert!(cm.len() <= MAX_COMMENT_LEN, "{} bytes: {cm}", cm.len());
        assert!(!cm.contains("xxxx"), "a name reached a comment: {cm}");
    }
    assert!(!text.contains(&ns), "names never reach the ruleset");
}
