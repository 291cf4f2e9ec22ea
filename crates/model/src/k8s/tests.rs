use serde_json::json;

use super::*;
use crate::ProxyState;

fn svc(v: serde_json::Value) -> core::Service {
    serde_json::from_value(v).expect("valid Service JSON")
}

fn slice(v: serde_json::Value) -> discovery::EndpointSlice {
    serde_json::from_value(v).expect("valid EndpointSlice JSON")
}

#[test]
fn converts_a_load_balancer_service() {
    let (s, problems) = service(&svc(json!({
        "metadata": {"namespace": "ns", "name": "web"},
        "spec": {
            "type": "LoadBalancer", "clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1", "fd00::1"],
            "externalIPs": ["1.2.3.4", "bogus"],
            "ports": [
                {"name": "http", "port": 80, "targetPort": "web", "nodePort": 30080},
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353},
                {"name": "bad", "port": 70000},
                {"name": "icmp", "port": 1, "protocol": "ICMP"}
            ],
            "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
            "sessionAffinity": "ClientIP",
            "loadBalancerSourceRanges": [" 10.0.0.0/8 ", "192.168.0.0/16,nonsense"]
        },
        "status": {"loadBalancer": {"ingress": [
            {"ip": "5.6.7.8"}, {"ip": "5.6.7.9", "ipMode": "Proxy"}, {"hostname": "lb.example"}, {"ip": "x"}
        ]}}
    })))
    .expect("service converts");
    assert_eq!(s.service_type, ServiceType::LoadBalancer);
    assert_eq!(s.cluster_ips.len(), 2);
    assert_eq!(s.cluster_ip(IpFamily::V6), Some("fd00::1".parse().unwrap()));
    assert_eq!(s.external_ips, vec!["1.2.3.4".parse::<IpAddr>().unwrap()]);
    assert_eq!(
        s.load_balancer_ips,
        vec!["5.6.7.8".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(s.load_balancer_source_ranges.len(), 2);
    assert_eq!(s.ports.len(), 2);
    assert_eq!(s.ports[0].node_port, Some(30080));
    assert_eq!(s.ports[0].target_port, Some(TargetPort::Name("web".into())));
    assert_eq!(s.ports[1].protocol, Protocol::Udp);
    assert_eq!(s.external_traffic_policy, TrafficPolicy::Local);
    assert_eq!(s.health_check_node_port, Some(32000));
    assert_eq!(
        s.session_affinity_timeout,
        Some(DEFAULT_AFFINITY_TIMEOUT_SECS)
    );
    let labels: Vec<&str> = problems.iter().map(|p| p.reason.label()).collect();
    assert_eq!(
        labels,
        vec![
            "invalid_external_ip",
            "invalid_ingress_ip",
            "invalid_source_range",
            "invalid_port",
            "unknown_protocol"
        ]
    );
    assert!(
        problems[0]
            .to_string()
            .starts_with("Service ns/web: invalid externalIP")
    );
}

#[test]
fn ignores_what_a_node_proxy_must_not_program() {
    let headless =
        svc(json!({"metadata": {"namespace": "a", "name": "h"}, "spec": {"clusterIP": "None"}}));
    assert_eq!(
        service(&headless).unwrap_err(),
        Rejected::Ignored(Ignored::Headless)
    );
    let ext = svc(json!({"metadata": {"namespace": "a", "name": "e"},
        "spec": {"type": "ExternalName", "externalName": "example.com"}}));
    assert_eq!(
        service(&ext).unwrap_err(),
        Rejected::Ignored(Ignored::ExternalName)
    );
    let other = svc(json!({"metadata": {"namespace": "a", "name": "o",
        "labels": {"service.kubernetes.io/service-proxy-name": "cilium"}}, "spec": {"clusterIP": "10.0.0.1"}}));
    assert!(matches!(
        service(&other).unwrap_err(),
        Rejected::Ignored(Ignored::OtherProxy(_))
    ));
    let bad = svc(
        json!({"metadata": {"namespace": "a", "name": "b"}, "spec": {"clusterIP": "10.0.0.300"}}),
    );
    match service(&bad).unwrap_err() {
        Rejected::Invalid(p) => assert_eq!(p.reason, Reason::InvalidClusterIp("10.0.0.300".into())),
        other => panic!("unexpected {other:?}"),
    }
    let unnamed = svc(json!({"spec": {"clusterIP": "10.0.0.1"}}));
    assert!(matches!(
        service(&unnamed).unwrap_err(),
        Rejected::Invalid(Problem {
            reason: Reason::MissingName,
            ..
        })
    ));
}

#[test]
fn converts_slices_and_skips_bad_endpoints() {
    let (s, problems) = endpoint_slice(&slice(json!({
        "metadata": {"namespace": "ns", "name": "web-abc", "labels": {"kubernetes.io/service-name": "web"},
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2026-01-01T00:00:00Z"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}, {"name": "nope"}, {"name": "bad", "port": -1}],
        "endpoints": [
            {"addresses": ["10.244.1.2"], "nodeName": "n1", "conditions": {"ready": false, "terminating": true}},
            {"addresses": ["fd00::5"]},
            {"addresses": ["not-an-ip"]},
            {"addresses": []},
            {"addresses": ["10.244.2.2"], "hints": {"forZones": [{"name": "z1"}]}}
        ]
    })))
    .expect("slice converts");
    assert_eq!(s.service, ServiceKey::new("ns", "web"));
    assert_eq!(
        s.ports,
        vec![EndpointPort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 8080
        }]
    );
    assert_eq!(s.endpoints.len(), 2);
    assert!(!s.endpoints[0].ready && s.endpoints[0].serving && s.endpoints[0].terminating);
    assert_eq!(s.endpoints[1].zone_hints, Some(vec!["z1".to_string()]));
    assert!(s.trigger_time.is_some());
    let labels: Vec<&str> = problems.iter().map(|p| p.reason.label()).collect();
    assert_eq!(
        labels,
        vec![
            "invalid_port",
            "address_family_mismatch",
            "invalid_address",
            "no_address"
        ]
    );

    let nolabel = slice(
        json!({"metadata": {"namespace": "ns", "name": "x"}, "addressType": "IPv4", "endpoints": []}),
    );
    assert!(matches!(
        endpoint_slice(&nolabel).unwrap_err(),
        Rejected::Invalid(Problem {
            reason: Reason::MissingServiceNameLabel,
            ..
        })
    ));
    let fqdn = slice(
        json!({"metadata": {"namespace": "ns", "name": "x"}, "addressType": "FQDN", "endpoints": []}),
    );
    assert_eq!(
        endpoint_slice(&fqdn).unwrap_err(),
        Rejected::Ignored(Ignored::Fqdn)
    );
    let many: Vec<serde_json::Value> = (0..1001)
        .map(|i| json!({"addresses": [format!("10.1.{}.{}", i / 256, i % 256)]}))
        .collect();
    let huge = slice(
        json!({"metadata": {"namespace": "ns", "name": "x", "labels": {"kubernetes.io/service-name": "w"}},
        "addressType": "IPv4", "endpoints": many}),
    );
    assert!(matches!(
        endpoint_slice(&huge).unwrap_err(),
        Rejected::Invalid(Problem {
            reason: Reason::TooManyEndpoints(1001),
            ..
        })
    ));
}

#[test]
fn node_addresses_prefer_internal_ips() {
    let n: core::Node = serde_json::from_value(json!({
        "metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "z1"}},
        "spec": {"podCIDRs": ["10.244.1.0/24", "garbage"]},
        "status": {"addresses": [
            {"type": "Hostname", "address": "n1"},
            {"type": "ExternalIP", "address": "1.1.1.1"},
            {"type": "InternalIP", "address": "172.18.0.2"},
            {"type": "InternalIP", "address": "fc00::2"},
            {"type": "InternalIP", "address": "oops"}
        ]}
    }))
    .unwrap();
    let (node, problems) = node(&n);
    assert_eq!(
        node.addresses,
        vec![
            "172.18.0.2".parse::<IpAddr>().unwrap(),
            "fc00::2".parse().unwrap()
        ]
    );
    assert_eq!(node.zone.as_deref(), Some("z1"));
    assert_eq!(node.pod_cidrs.len(), 1);
    assert_eq!(problems.len(), 2);
}

#[test]
fn state_tracks_changes_and_merges_duplicate_endpoints() {
    let (s, _) = service(&svc(json!({"metadata": {"namespace": "ns", "name": "web"},
        "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "http", "port": 80}]}})))
    .unwrap();
    let mk = |name: &str, term: bool| {
        endpoint_slice(&slice(json!({
            "metadata": {"namespace": "ns", "name": name, "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"terminating": term}}]
        })))
        .unwrap()
        .0
    };
    let mut st = ProxyState::new();
    assert!(st.upsert_service(s.clone()));
    assert!(
        !st.upsert_service(s.clone()),
        "same content is not a change"
    );
    assert!(st.upsert_slice(mk("a", true)));
    assert!(st.upsert_slice(mk("b", false)));
    assert_eq!(st.take_dirty().len(), 1);
    assert!(st.take_dirty().is_empty());
    let eps = st.endpoints_for(&s, &s.ports[0], IpFamily::V4);
    assert_eq!(eps.len(), 1);
    assert!(
        !eps[0].endpoint.terminating,
        "non-terminating duplicate wins"
    );
    assert!(!st.upsert_slice(mk("b", false)));
    assert!(st.remove_slice(&SliceKey {
        namespace: "ns".into(),
        name: "b".into()
    }));
    assert!(
        st.endpoints_for(&s, &s.ports[0], IpFamily::V4)[0]
            .endpoint
            .terminating
    );
    assert!(st.dirty().contains(&ServiceKey::new("ns", "web")));
    // replace_all marks only what changed.
    st.take_dirty();
    st.replace_all(vec![s.clone()], vec![mk("a", true)]);
    assert!(st.take_dirty().is_empty());
    st.replace_all(vec![], vec![mk("a", true)]);
    assert_eq!(
        st.take_dirty().into_iter().collect::<Vec<_>>(),
        vec![ServiceKey::new("ns", "web")]
    );
}

fn labels(problems: &[Problem]) -> Vec<&'static str> {
    problems.iter().map(|p| p.reason.label()).collect()
}

#[test]
fn special_addresses_are_refused_with_a_reason() {
    // A ClusterIP in a special range refuses the whole service.
    for ip in [
        "127.0.0.1",
        "0.0.0.0",
        "169.254.169.254",
        "224.0.0.1",
        "255.255.255.255",
    ] {
        let err = service(&svc(json!({
            "metadata": {"namespace": "ns", "name": "lo"},
            "spec": {"clusterIP": ip, "ports": [{"port": 80}]}
        })))
        .unwrap_err();
        match err {
            Rejected::Invalid(p) => {
                assert_eq!(p.reason.label(), "special_cluster_ip", "{ip}");
                assert!(p.to_string().contains(ip), "{p}");
            }
            other => panic!("{ip}: {other:?}"),
        }
    }
    // The second ClusterIP of a dual-stack service counts as much as the first.
    let err = service(&svc(json!({
        "metadata": {"namespace": "ns", "name": "dual"},
        "spec": {"clusterIPs": ["10.96.0.1", "::1"], "ports": [{"port": 80}]}
    })))
    .unwrap_err();
    assert!(matches!(err, Rejected::Invalid(p) if p.reason.label() == "special_cluster_ip"));
    // External and ingress IPs are dropped one by one; the good ones stay.
    let (s, problems) = service(&svc(json!({
        "metadata": {"namespace": "ns", "name": "lb"},
        "spec": {
            "type": "LoadBalancer", "clusterIP": "10.96.0.2", "ports": [{"port": 80}],
            "externalIPs": ["127.0.0.2", "1.2.3.4", "fe80::1", "::ffff:1.2.3.4", "ff02::1"]
        },
        "status": {"loadBalancer": {"ingress": [
            {"ip": "0.0.0.0"}, {"ip": "5.6.7.8"}, {"ip": "255.255.255.255"}, {"ip": "::1"}
        ]}}
    })))
    .unwrap();
    assert_eq!(s.external_ips, vec!["1.2.3.4".parse::<IpAddr>().unwrap()]);
    assert_eq!(
        s.load_balancer_ips,
        vec!["5.6.7.8".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        labels(&problems),
        [
            ["special_external_ip"; 2].as_slice(),
            // KEP-4858's strict parsing refuses the IPv4-mapped address first.
            ["non_standard_ip"].as_slice(),
            ["special_external_ip"].as_slice(),
            ["special_ingress_ip"; 3].as_slice()
        ]
        .concat()
    );
    assert_eq!(
        problems[0].to_string(),
        "Service ns/lb: externalIP 127.0.0.2 is loopback (127.0.0.0/8, ::1): refused"
    );
}

#[test]
fn affinity_timeouts_outside_the_api_range_use_the_default() {
    let with_timeout = |t: serde_json::Value| {
        service(&svc(json!({
            "metadata": {"namespace": "ns", "name": "a"},
            "spec": {
                "clusterIP": "10.96.0.3", "ports": [{"port": 80}],
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": t}}
            }
        })))
        .unwrap()
    };
    for (t, want, problem) in [
        (json!(1), 1, false),
        (json!(86400), 86400, false),
        (json!(60), 60, false),
        (json!(0), DEFAULT_AFFINITY_TIMEOUT_SECS, true),
        (json!(-5), DEFAULT_AFFINITY_TIMEOUT_SECS, true),
        (json!(86401), DEFAULT_AFFINITY_TIMEOUT_SECS, true),
        (json!(2147483647), DEFAULT_AFFINITY_TIMEOUT_SECS, true),
        (json!(null), DEFAULT_AFFINITY_TIMEOUT_SECS, false),
    ] {
        let (s, problems) = with_timeout(t.clone());
        assert_eq!(s.session_affinity_timeout, Some(want), "{t}");
        let expected: &[&str] = if problem {
            &["invalid_affinity_timeout"]
        } else {
            &[]
        };
        assert_eq!(labels(&problems), expected, "{t}");
    }
    let (_, problems) = with_timeout(json!(2147483647));
    assert!(
        problems[0].to_string().contains("2147483647"),
        "{}",
        problems[0]
    );
}

#[test]
fn service_cidrs_that_would_cut_off_the_node_are_refused() {
    let cidr = |cidrs: serde_json::Value| {
        let o: networking::ServiceCIDR = serde_json::from_value(json!({
            "metadata": {"name": "kubernetes"}, "spec": {"cidrs": cidrs}
        }))
        .unwrap();
        service_cidr(&o)
    };
    let (ok, problems) = cidr(json!(["10.96.0.0/12", "fd00:10:96::/112"]));
    assert_eq!(ok.len(), 2);
    assert!(problems.is_empty());
    let (ok, problems) = cidr(json!([
        "0.0.0.0/0",
        "::/0",
        "10.0.0.0/7",
        "2001:db8::/48",
        "127.0.0.0/16",
        "169.254.0.0/24",
        "::ffff:0:0/104",
        "nonsense",
        "10.0.0.0/8",
        "fd00::/64"
    ]));
    assert_eq!(
        ok.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["10.0.0.0/8", "fd00::/64"]
    );
    assert_eq!(
        labels(&problems),
        [
            "service_cidr_too_broad",
            "service_cidr_too_broad",
            "service_cidr_too_broad",
            "service_cidr_too_broad",
            "service_cidr_special",
            "service_cidr_special",
            "non_standard_ip",
            "invalid_service_cidr"
        ]
    );
    assert_eq!(
        problems[0].to_string(),
        "ServiceCIDR kubernetes: 0.0.0.0/0 is broader than /8: refused"
    );
}

#[test]
fn creation_timestamps_are_kept_in_seconds() {
    let (s, _) = service(&svc(json!({
        "metadata": {"namespace": "ns", "name": "old", "creationTimestamp": "2024-01-02T03:04:05Z"},
        "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}
    })))
    .expect("service converts");
    assert_eq!(s.creation_timestamp, Some(1_704_164_645));
    let (s, _) = service(&svc(json!({
        "metadata": {"namespace": "ns", "name": "none"},
        "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}
    })))
    .expect("service converts");
    assert_eq!(s.creation_timestamp, None);
}

#[test]
fn conflict_reasons_name_the_winner_and_have_stable_labels() {
    let winner = crate::ServicePortName {
        service: ServiceKey::new("ns", "a"),
        port: "http".into(),
        protocol: Protocol::Tcp,
    };
    let p = Problem {
        kind: ObjectKind::Service,
        namespace: "ns".into(),
        name: "b".into(),
        reason: Reason::FrontendConflict {
            port: "web".into(),
            kind: crate::FrontendKind::ExternalIp,
            frontend: crate::Frontend {
                address: Some("10.96.0.1".parse().unwrap()),
                protocol: Protocol::Tcp,
                port: 80,
            },
            winner: Box::new(winner.clone()),
            winner_kind: crate::FrontendKind::ClusterIp,
            rule: crate::ConflictRule::Precedence,
        },
    };
    assert_eq!(p.reason.label(), "frontend_conflict");
    assert_eq!(
        p.to_string(),
        "Service ns/b: port \"web\": externalIP 10.96.0.1:80/tcp is also the clusterIP of ns/a:http/tcp, \
         which keeps it (a clusterIP comes before load balancer IPs, and those before externalIPs): \
         not programmed for this service"
    );
    let node_port = crate::Frontend {
        address: None,
        protocol: Protocol::Udp,
        port: 30053,
    };
    assert_eq!(node_port.to_string(), "30053/udp");
    let v6 = crate::Frontend {
        address: Some("fd00::1".parse().unwrap()),
        protocol: Protocol::Tcp,
        port: 80,
    };
    assert_eq!(v6.to_string(), "[fd00::1]:80/tcp");
    let r = Reason::ObjectNameCollision {
        port: "http".into(),
        winner: Box::new(winner),
    };
    assert_eq!(r.label(), "object_name_collision");
    assert!(r.to_string().contains("ns/a:http/tcp"));
}

#[test]
fn non_standard_ips_are_refused_like_the_api_servers_strict_validation() {
    // KEP-4858: leading zeros (decimal to Go, octal to libc) and IPv4-mapped IPv6 addresses,
    // in every IP and CIDR field, are not used, with the reason non_standard_ip.
    let err = service(&svc(json!({
        "metadata": {"namespace": "ns", "name": "zeros"},
        "spec": {"clusterIP": "010.096.000.001", "ports": [{"port": 80}]}
    })))
    .unwrap_err();
    let Rejected::Invalid(p) = err else {
        panic!("refused as a whole")
    };
    assert_eq!(p.reason.label(), "non_standard_ip");
    assert_eq!(
        p.to_string(),
        "Service ns/zeros: clusterIP \"010.096.000.001\" is an IPv4 address with leading zeros, which the API server's strict IP validation refuses: use \"10.96.0.1\""
    );
    let (s, problems) = service(&svc(json!({
        "metadata": {"namespace": "ns", "name": "lb"},
        "spec": {
            "type": "LoadBalancer", "clusterIP": "10.96.0.2", "ports": [{"port": 80}],
            "externalIPs": ["1.2.3.4", "01.2.3.5"],
        },
        "status": {"loadBalancer": {"ingress": [{"ip": "5.6.7.8"}, {"ip": "::ffff:5.6.7.9"}]}}
    })))
    .unwrap();
    assert_eq!(s.external_ips, vec!["1.2.3.4".parse::<IpAddr>().unwrap()]);
    assert_eq!(
        s.load_balancer_ips,
        vec!["5.6.7.8".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(labels(&problems), ["non_standard_ip", "non_standard_ip"]);
    // A refused source range closes the load balancer instead of opening it to everyone.
    let (s, problems) = service(&svc(json!({
        "metadata": {"namespace": "ns", "name": "fw"},
        "spec": {
            "type": "LoadBalancer", "clusterIP": "10.96.0.3", "ports": [{"port": 80}],
            "loadBalancerSourceRanges": ["192.168.0.0/16", "010.0.0.0/8"]
        },
        "status": {"loadBalancer": {"ingress": [{"ip": "5.6.7.8"}]}}
    })))
    .unwrap();
    assert!(s.load_balancer_ips.is_empty() && s.load_balancer_source_ranges.is_empty());
    assert_eq!(labels(&problems), ["non_standard_ip"]);
    // Endpoints, node addresses and pod CIDRs.
    let (sl, problems) = endpoint_slice(&slice(json!({
        "metadata": {"namespace": "ns", "name": "s-1", "labels": {"kubernetes.io/service-name": "s"}},
        "addressType": "IPv4",
        "ports": [{"name": "p", "port": 80}],
        "endpoints": [{"addresses": ["10.244.1.2"]}, {"addresses": ["10.244.001.003"]}]
    })))
    .unwrap();
    assert_eq!(sl.endpoints.len(), 1);
    assert_eq!(labels(&problems), ["non_standard_ip"]);
    let n: core::Node = serde_json::from_value(json!({
        "metadata": {"name": "n1"},
        "spec": {"podCIDRs": ["10.244.01.0/24", "10.244.2.0/24"]},
        "status": {"addresses": [
            {"type": "InternalIP", "address": "172.018.0.2"},
            {"type": "InternalIP", "address": "172.18.0.3"}
        ]}
    }))
    .unwrap();
    let (node, problems) = super::node(&n);
    assert_eq!(
        node.addresses,
        vec!["172.18.0.3".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        node.pod_cidrs,
        vec!["10.244.2.0/24".parse::<Cidr>().unwrap()]
    );
    assert_eq!(labels(&problems), ["non_standard_ip", "non_standard_ip"]);
}

#[test]
fn cidr_fields_refuse_host_bits_and_service_cidrs_need_canonical_text_like_the_api_server() {
    // KEP-4858's strict validation of subnet fields (`IsValidCIDRForLegacyField`, strict):
    // no bits beyond the prefix length, so "10.0.0.1/8" (a subnet, or one address?) is not
    // used; non-canonical IPv6 text is still accepted there. ServiceCIDR (`IsValidCIDR`) also
    // needs the canonical text.
    let (s, problems) = service(&svc(json!({
        "metadata": {"namespace": "ns", "name": "fw"},
        "spec": {
            "type": "LoadBalancer", "clusterIP": "10.96.0.3", "ports": [{"port": 80}],
            "loadBalancerSourceRanges": ["192.168.0.0/16", " 10.0.0.1/8 "]
        },
        "status": {"loadBalancer": {"ingress": [{"ip": "5.6.7.8"}]}}
    })))
    .unwrap();
    // Refused: the load balancer is closed, not opened to 192.168.0.0/16 alone.
    assert!(s.load_balancer_ips.is_empty() && s.load_balancer_source_ranges.is_empty());
    assert_eq!(labels(&problems), ["non_standard_ip"]);
    assert!(
        problems[0].to_string().contains(
            "\"10.0.0.1/8\" is a CIDR with bits set beyond its prefix length (a subnet, or one address?), which the API server's strict IP validation refuses: use \"10.0.0.0/8\""
        ),
        "{}",
        problems[0]
    );
    // Padded with spaces and IPv6 in upper case: accepted, as the API server accepts them.
    let (s, problems) = service(&svc(json!({
        "metadata": {"namespace": "ns", "name": "fw6"},
        "spec": {
            "type": "LoadBalancer", "clusterIP": "10.96.0.4", "ports": [{"port": 80}],
            "loadBalancerSourceRanges": [" 192.168.0.0/16", "FD00:0::/64"]
        },
        "status": {"loadBalancer": {"ingress": [{"ip": "5.6.7.8"}]}}
    })))
    .unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(
        s.load_balancer_source_ranges,
        vec![
            "192.168.0.0/16".parse::<Cidr>().unwrap(),
            "fd00::/64".parse::<Cidr>().unwrap()
        ]
    );
    // podCIDRs: the entry with host bits is not used.
    let n: core::Node = serde_json::from_value(json!({
        "metadata": {"name": "n1"},
        "spec": {"podCIDRs": ["10.244.1.1/24", "fd00:244:1::/64"]},
    }))
    .unwrap();
    let (node, problems) = super::node(&n);
    assert_eq!(
        node.pod_cidrs,
        vec!["fd00:244:1::/64".parse::<Cidr>().unwrap()]
    );
    assert_eq!(labels(&problems), ["non_standard_ip"]);
    // ServiceCIDR: host bits and non-canonical text are refused, canonical text is used.
    let o: networking::ServiceCIDR = serde_json::from_value(json!({
        "metadata": {"name": "extra"},
        "spec": {"cidrs": ["10.97.0.1/16", "FD00:10:97::/112", "fd00:10:98:0::/112", "10.98.0.0/16"]}
    }))
    .unwrap();
    let (ok, problems) = service_cidr(&o);
    assert_eq!(
        ok.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["10.98.0.0/16"]
    );
    assert_eq!(
        labels(&problems),
        ["non_standard_ip", "non_standard_ip", "non_standard_ip"]
    );
    assert!(
        problems[1].to_string().contains(
            "\"FD00:10:97::/112\" is a CIDR not in canonical form, which the API server's strict IP validation refuses: use \"fd00:10:97::/112\""
        ),
        "{}",
        problems[1]
    );
}

#[test]
fn objects_of_newer_api_servers_convert_and_unknown_fields_are_ignored() {
    // Kubernetes 1.37's types (k8s-openapi `v1_37`): trafficDistribution's newer values are
    // the EndpointSlice controller's business (it writes the hints kube-proxy and Rudder
    // follow), fields Rudder does not know are ignored, and a slice may omit `endpoints`
    // (optional since 1.36).
    let (s, problems) = service(&svc(json!({
        "metadata": {"namespace": "ns", "name": "dns"},
        "spec": {
            "clusterIP": "10.96.0.10", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}],
            "trafficDistribution": "PreferSameNode",
            "someFieldFromKubernetes1_40": {"nested": [1, 2, 3]}
        },
        "status": {"conditions": [], "anotherNewField": true}
    })))
    .unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(s.ports.len(), 1);
    let (sl, problems) = endpoint_slice(&slice(json!({
        "metadata": {"namespace": "ns", "name": "dns-1", "labels": {"kubernetes.io/service-name": "dns"}},
        "addressType": "IPv4",
        "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}],
        "endpoints": [{
            "addresses": ["10.244.1.2"], "nodeName": "node-1",
            "hints": {"forNodes": [{"name": "node-1"}], "forZones": [{"name": "zone-a"}]},
            "newEndpointField": "x"
        }]
    })))
    .unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(
        sl.endpoints[0].node_hints.as_deref(),
        Some(["node-1".to_string()].as_slice())
    );
    let (empty, problems) = endpoint_slice(&slice(json!({
        "metadata": {"namespace": "ns", "name": "dns-2", "labels": {"kubernetes.io/service-name": "dns"}},
        "addressType": "IPv4",
        "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]
    })))
    .unwrap();
    assert!(problems.is_empty() && empty.endpoints.is_empty());
}
