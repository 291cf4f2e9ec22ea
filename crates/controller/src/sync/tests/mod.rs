//! Sync loop tests against the in-memory kernel model.

use std::time::Duration;

use rudder_compiler::{Compiler, Config, NodeContext, NodePortIps};
use rudder_model::IpFamily;
use rudder_nft::Ruleset;
use serde_json::json;
use tokio::sync::mpsc;

use super::*;

mod drift;
mod refusals;
mod timing;

fn node_of(n: &k8s_openapi::api::core::v1::Node) -> Node {
    rudder_model::k8s::node(n).0
}
use crate::nftables::MAX_DRY_RUNS;
use rudder_nft::Transaction;

fn svc(name: &str, ip: &str) -> Box<rudder_model::Service> {
    let k: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "metadata": {"namespace": "ns", "name": name},
        "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]}
    }))
    .unwrap();
    Box::new(rudder_model::k8s::service(&k).unwrap().0)
}

fn slice(name: &str, svc: &str, ips: &[&str]) -> Box<rudder_model::EndpointSlice> {
    let eps: Vec<_> = ips.iter().map(|ip| json!({"addresses": [ip]})).collect();
    let k: k8s_openapi::api::discovery::v1::EndpointSlice = serde_json::from_value(json!({
        "metadata": {"namespace": "ns", "name": name, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}], "endpoints": eps
    }))
    .unwrap();
    Box::new(rudder_model::k8s::endpoint_slice(&k).unwrap().0)
}

fn new_loop(config: LoopConfig) -> SyncLoop<NftMode<Ruleset>> {
    let node = NodeContext::new("n1".into(), NodePortIps::Only(vec![]));
    let compiler = Compiler::new(&[IpFamily::V4], Config::default(), node.clone());
    let ctx: NodeContextFn = Box::new(move |n: Option<&Node>| {
        NodeContext::new(
            "n1".into(),
            NodePortIps::Only(n.map(|n| n.addresses.clone()).unwrap_or_default()),
        )
    });
    SyncLoop::new(compiler, Ruleset::new(), ctx, config)
}

fn elements(rs: &Ruleset, set: &str) -> Vec<String> {
    rs.tables
        .values()
        .flat_map(|t| t.sets.iter())
        .filter(|(n, _)| n.as_str() == set)
        .flat_map(|(_, s)| s.elements.keys().map(|k| k.to_string()))
        .collect()
}

fn services(n: u32) -> Vec<rudder_model::Service> {
    (0..n)
        .map(|i| {
            *svc(
                &format!("s{i:04}"),
                &format!("10.96.{}.{}", 1 + i / 200, 1 + i % 200),
            )
        })
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}
