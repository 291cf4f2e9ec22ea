//! The objects of a soak: the steady services the probes use, which never change, and random
//! churn over a pool of other services and their EndpointSlices, through the test API server.
//!
//! Every churned service owns its addresses (ClusterIP `10.96.1.{i+1}`, node ports
//! `30100 + 4i + port`, load balancer `192.168.123.{i+1}`, external IP `192.168.124.{i+1}`,
//! health check node port `32000 + i`), so churn never takes a frontend of the steady
//! services or of another churned service; everything else is random: type, ports and
//! protocols (TCP, UDP, SCTP), families, affinity, traffic policies, source ranges (some
//! overlapping), ignored services (`service-proxy-name`, `ExternalName`), endpoints that are
//! ready, not ready, terminating, remote, on no pod, with zone hints, slices without a
//! service, slices whose ports match none of the service's.

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use rudder_fake_apiserver::FakeApiServer;
use serde_json::{Value, json};

use super::rng::Rng;

/// Namespace of the steady services.
pub const STEADY_NS: &str = "steady";
/// Namespace of the churned services.
pub const CHURN_NS: &str = "churn";
/// The steady service's ClusterIP.
pub const STEADY_CLUSTER_IP: &str = "10.96.0.10";
/// The steady service's TCP port (80 → 80) and node port.
pub const STEADY_TCP_PORT: u16 = 80;
/// Node port of the steady TCP port.
pub const STEADY_TCP_NODE_PORT: u16 = 30080;
/// The steady service's UDP port (53 → 5353) and node port.
pub const STEADY_UDP_PORT: u16 = 53;
/// Node port of the steady UDP port.
pub const STEADY_UDP_NODE_PORT: u16 = 30053;
/// Ports the pods' echo servers listen on (TCP and UDP each).
pub const POD_PORTS: [u16; 3] = [80, 5353, 8080];
/// The pods' IPv4 and IPv6 addresses (see `Topology`), which answer `111`, `222`, `333`.
pub const POD_IPS_V4: [&str; 3] = ["10.244.1.2", "10.244.2.2", "10.244.3.2"];
const POD_IPS_V6: [&str; 3] = ["fd00:10:244:1::2", "fd00:10:244:2::2", "fd00:10:244:3::2"];
/// Endpoint addresses where no pod answers (churned services are never probed).
const GHOST_IPS_V4: [&str; 2] = ["10.244.1.77", "10.244.5.5"];
const GHOST_IPS_V6: [&str; 1] = ["fd00:10:244:5::5"];

/// Service ports churned services choose from: name, protocol, port, target port.
const PORTS: [(&str, &str, u16, u16); 4] = [
    ("http", "TCP", 80, 80),
    ("alt", "TCP", 8080, 8080),
    ("dns", "UDP", 53, 5353),
    ("sig", "SCTP", 9000, 9000),
];

/// Source ranges churned load balancers choose from (some overlap, some contain the
/// load-balancer IP, one allows everything).
const SOURCE_RANGES: [&[&str]; 5] = [
    &["172.18.0.0/24"],
    &["10.0.0.0/8", "10.1.0.0/16"],
    &["192.168.0.0/16", "192.168.123.0/24"],
    &["0.0.0.0/0"],
    &["203.0.113.0/24", "198.51.100.7/32"],
];

fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("the soak builds valid Kubernetes objects")
}

/// The Node Rudder runs as (`node-1`), with the topology's node addresses.
pub fn node() -> Node {
    typed(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-1", "labels": {"topology.kubernetes.io/zone": "zone-a"}},
        "status": {"addresses": [
            {"type": "InternalIP", "address": "172.18.0.2"},
            {"type": "InternalIP", "address": "fc00:f853:ccd:e793::2"}
        ]}
    }))
}

/// The steady service: a NodePort with a TCP and a UDP port, and its EndpointSlice with the
/// three pods. The probes use it; nothing ever changes it.
pub fn steady() -> (Service, EndpointSlice) {
    let svc = typed(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": STEADY_NS, "name": "web"},
        "spec": {
            "type": "NodePort", "clusterIP": STEADY_CLUSTER_IP, "clusterIPs": [STEADY_CLUSTER_IP],
            "ports": [
                {"name": "http", "protocol": "TCP", "port": STEADY_TCP_PORT, "targetPort": 80, "nodePort": STEADY_TCP_NODE_PORT},
                {"name": "dns", "protocol": "UDP", "port": STEADY_UDP_PORT, "targetPort": 5353, "nodePort": STEADY_UDP_NODE_PORT}
            ]
        }
    }));
    let endpoints: Vec<Value> = POD_IPS_V4
        .iter()
        .map(|ip| json!({"addresses": [ip], "nodeName": "node-1", "conditions": {"ready": true}}))
        .collect();
    let slice = typed(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": STEADY_NS, "name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 80}, {"name": "dns", "protocol": "UDP", "port": 5353}],
        "endpoints": endpoints
    }));
    (svc, slice)
}

/// Changes applied, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ChangeCounts {
    /// Services created or replaced.
    pub service_upserts: usize,
    /// Services deleted.
    pub service_deletes: usize,
    /// EndpointSlices created or replaced.
    pub slice_upserts: usize,
    /// EndpointSlices deleted.
    pub slice_deletes: usize,
}

impl ChangeCounts {
    /// All changes.
    pub fn total(&self) -> usize {
        self.service_upserts + self.service_deletes + self.slice_upserts + self.slice_deletes
    }
}

/// What the churn knows of one service of the pool.
#[derive(Debug, Clone, Default)]
struct Slot {
    exists: bool,
    dual_stack: bool,
    /// Indexes into [`PORTS`].
    ports: Vec<usize>,
    slices: [bool; 2],
}

/// Random changes over a pool of services.
#[derive(Debug)]
pub struct Churn {
    slots: Vec<Slot>,
    /// Changes applied so far.
    pub counts: ChangeCounts,
}

impl Churn {
    /// A pool of `services` services, none created yet.
    pub fn new(services: usize) -> Churn {
        Churn {
            slots: vec![Slot::default(); services.max(1)],
            counts: ChangeCounts::default(),
        }
    }

    /// Applies one random change (sometimes a burst of slice updates) and returns a short
    /// description of it.
    pub fn step(&mut self, api: &FakeApiServer, rng: &mut Rng) -> String {
        let i = rng.below(self.slots.len());
        match rng.weighted(&[30, 45, 9, 9, 7]) {
            0 => self.upsert_service(api, rng, i),
            1 => {
                let j = rng.below(2);
                self.upsert_slice(api, rng, i, j)
            }
            2 => {
                let j = rng.below(2);
                self.delete_slice(api, i, j)
            }
            3 => {
                let with_slices = rng.chance(0.5);
                self.delete_service(api, i, with_slices)
            }
            _ => {
                let n = 5 + rng.below(10);
                for _ in 0..n {
                    let i = rng.below(self.slots.len());
                    self.upsert_slice(api, rng, i, 0);
                }
                format!("burst of {n} slice updates")
            }
        }
    }

    fn name(i: usize) -> String {
        format!("svc-{i}")
    }

    fn upsert_service(&mut self, api: &FakeApiServer, rng: &mut Rng, i: usize) -> String {
        let slot = &mut self.slots[i];
        let mut ports = rng.subset(&[0, 1, 2, 3], 0.45);
        if ports.is_empty() {
            ports.push(rng.below(PORTS.len()));
        }
        let dual = rng.chance(0.3);
        let kind = *rng.pick(&["ClusterIP", "ClusterIP", "NodePort", "LoadBalancer"]);
        let ip4 = format!("10.96.1.{}", i + 1);
        let ip6 = format!("fd00:10:96::1:{:x}", i + 1);
        let mut cluster_ips = vec![ip4.clone()];
        let mut families = vec!["IPv4"];
        if dual {
            cluster_ips.push(ip6);
            families.push("IPv6");
        }
        let port_specs: Vec<Value> = ports
            .iter()
            .map(|&p| {
                let (name, proto, port, target) = PORTS[p];
                let mut spec =
                    json!({"name": name, "protocol": proto, "port": port, "targetPort": target});
                if kind != "ClusterIP" {
                    spec["nodePort"] = json!(30100 + 4 * i + p);
                }
                spec
            })
            .collect();
        let mut spec = json!({
            "type": kind, "clusterIP": ip4, "clusterIPs": cluster_ips, "ipFamilies": families,
            "ipFamilyPolicy": if dual { "PreferDualStack" } else { "SingleStack" },
            "ports": port_specs,
        });
        if rng.chance(0.2) {
            spec["externalIPs"] = json!([format!("192.168.124.{}", i + 1)]);
        }
        if rng.chance(0.2) {
            spec["sessionAffinity"] = json!("ClientIP");
            spec["sessionAffinityConfig"] =
                json!({"clientIP": {"timeoutSeconds": 10 + rng.below(10_790)}});
        }
        if rng.chance(0.2) {
            spec["internalTrafficPolicy"] = json!("Local");
        }
        let mut status = json!({});
        if kind != "ClusterIP" && rng.chance(0.3) {
            spec["externalTrafficPolicy"] = json!("Local");
            if kind == "LoadBalancer" {
                spec["healthCheckNodePort"] = json!(32000 + i);
            }
        }
        if kind == "LoadBalancer" {
            let mut ingress = vec![json!({"ip": format!("192.168.123.{}", i + 1)})];
            if dual {
                ingress.push(json!({"ip": format!("fd00:10:97::{:x}", i + 1)}));
            }
            if rng.chance(0.1) {
                ingress[0]["ipMode"] = json!("Proxy");
            }
            status = json!({"loadBalancer": {"ingress": ingress}});
            if rng.chance(0.4) {
                spec["loadBalancerSourceRanges"] = json!(rng.pick(&SOURCE_RANGES));
            }
        }
        let mut metadata = json!({"namespace": CHURN_NS, "name": Self::name(i)});
        let mut note = String::new();
        if rng.chance(0.05) {
            metadata["labels"] = json!({"service.kubernetes.io/service-proxy-name": "other"});
            note.push_str(", another proxy's");
        }
        if rng.chance(0.03) {
            spec = json!({"type": "ExternalName", "externalName": "example.com"});
            note.push_str(", ExternalName");
        }
        api.apply_service(typed(json!({
            "apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec, "status": status
        })));
        slot.exists = true;
        slot.dual_stack = dual;
        slot.ports = ports;
        self.counts.service_upserts += 1;
        format!("service {i} {kind}{note}")
    }

    fn upsert_slice(&mut self, api: &FakeApiServer, rng: &mut Rng, i: usize, j: usize) -> String {
        let slot = &mut self.slots[i];
        // The second slice of a dual-stack service is its IPv6 one.
        let v6 = j == 1 && (slot.dual_stack || rng.chance(0.2));
        let (pods, ghosts): (&[&str], &[&str]) = if v6 {
            (&POD_IPS_V6, &GHOST_IPS_V6)
        } else {
            (&POD_IPS_V4, &GHOST_IPS_V4)
        };
        let mut addresses = rng.subset(pods, 0.6);
        addresses.extend(rng.subset(ghosts, 0.15));
        let endpoints: Vec<Value> = addresses
            .iter()
            .map(|ip| {
                let mut ep = json!({"addresses": [ip]});
                ep["nodeName"] = json!(if rng.chance(0.8) { "node-1" } else { "node-2" });
                match rng.below(6) {
                    0 => {}
                    1 => ep["conditions"] = json!({"ready": false}),
                    2 => {
                        ep["conditions"] =
                            json!({"ready": false, "serving": true, "terminating": true})
                    }
                    3 => {
                        ep["conditions"] =
                            json!({"ready": false, "serving": false, "terminating": true})
                    }
                    _ => ep["conditions"] = json!({"ready": true}),
                }
                if rng.chance(0.2) {
                    ep["zone"] = json!("zone-a");
                    ep["hints"] = json!({"forZones": [{"name": rng.pick(&["zone-a", "zone-b"])}]});
                }
                ep
            })
            .collect();
        let mut ports: Vec<Value> = slot
            .ports
            .iter()
            .filter(|_| rng.chance(0.9))
            .map(|&p| {
                let (name, proto, _, target) = PORTS[p];
                json!({"name": name, "protocol": proto, "port": target})
            })
            .collect();
        if ports.is_empty() || rng.chance(0.05) {
            // Ports the service may not have.
            let (name, proto, _, target) = *rng.pick(&PORTS);
            ports.push(json!({"name": name, "protocol": proto, "port": target}));
        }
        api.apply_endpoint_slice(typed(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": CHURN_NS, "name": format!("svc-{i}-{j}"),
                         "labels": {"kubernetes.io/service-name": Self::name(i)}},
            "addressType": if v6 { "IPv6" } else { "IPv4" },
            "ports": ports, "endpoints": endpoints
        })));
        slot.slices[j] = true;
        self.counts.slice_upserts += 1;
        format!("slice {i}-{j}: {} endpoints", addresses.len())
    }

    fn delete_slice(&mut self, api: &FakeApiServer, i: usize, j: usize) -> String {
        if api.delete_endpoint_slice(CHURN_NS, &format!("svc-{i}-{j}")) {
            self.counts.slice_deletes += 1;
        }
        self.slots[i].slices[j] = false;
        format!("delete slice {i}-{j}")
    }

    fn delete_service(&mut self, api: &FakeApiServer, i: usize, with_slices: bool) -> String {
        if api.delete_service(CHURN_NS, &Self::name(i)) {
            self.counts.service_deletes += 1;
        }
        self.slots[i].exists = false;
        if with_slices {
            for j in 0..2 {
                self.delete_slice(api, i, j);
            }
        }
        format!("delete service {i}")
    }

    /// Addresses of churned services that may be in the kernel's `service-ips` map, as
    /// `nft` element keys (`10.96.1.3 . tcp . 80`), for tampering.
    pub fn element_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            if !slot.exists {
                continue;
            }
            for &p in &slot.ports {
                let (_, proto, port, _) = PORTS[p];
                keys.push(format!(
                    "10.96.1.{} . {} . {port}",
                    i + 1,
                    proto.to_ascii_lowercase()
                ));
            }
        }
        keys
    }
}
