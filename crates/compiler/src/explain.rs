//! `rudder explain`: what this node does with one packet, derived from the same decisions the
//! rule compiler makes (service matching, [`categorize`], masquerade and firewall rules), as a
//! report a person can read or paste into a bug report.
//!
//! Pure like the rest of the crate: state and node context in, an [`Explanation`] out.

use std::fmt;
use std::net::IpAddr;

use rudder_model::{
    ConflictRule, FrontendKind, IpFamily, Protocol, ProxyState, ResolvedEndpoint, Service,
    TrafficPolicy, escape_controls,
};

use crate::{
    ClaimRank, Config, LocalDetector, NodeContext, NodePortIps, Topology, categorize,
    claimed_frontends,
};

/// Where the packet comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// From a pod on this node.
    Pod,
    /// From the node itself (a host-network process).
    Node,
    /// From outside the node.
    External,
}

impl Via {
    /// Parses `pod`, `node` or `external`.
    pub fn parse(s: &str) -> Option<Via> {
        match s {
            "pod" => Some(Via::Pod),
            "node" => Some(Via::Node),
            "external" => Some(Via::External),
            _ => None,
        }
    }
}

/// The packet to explain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Destination address.
    pub to: IpAddr,
    /// Destination port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Source address, if known.
    pub from: Option<IpAddr>,
    /// Where the packet comes from; guessed from `from` and the node when absent.
    pub via: Option<Via>,
}

/// How the destination matched a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frontend {
    /// The service's ClusterIP.
    ClusterIp,
    /// One of `spec.externalIPs`.
    ExternalIp,
    /// A load balancer ingress IP.
    LoadBalancerIp,
    /// A node port on a node-port address.
    NodePort,
}

impl Frontend {
    fn of(kind: FrontendKind) -> Frontend {
        match kind {
            FrontendKind::ClusterIp => Frontend::ClusterIp,
            FrontendKind::IngressIp => Frontend::LoadBalancerIp,
            FrontendKind::ExternalIp => Frontend::ExternalIp,
            FrontendKind::NodePort => Frontend::NodePort,
        }
    }
}

/// Another service port that claims the same frontend, and loses it to the matched one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contender {
    /// The losing service port (`ns/name:port/proto`).
    pub service_port: String,
    /// What the frontend is to it.
    pub frontend: Frontend,
    /// Why the matched port keeps the frontend.
    pub rule: ConflictRule,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Frontend::ClusterIp => "ClusterIP",
            Frontend::ExternalIp => "external IP",
            Frontend::LoadBalancerIp => "load balancer IP",
            Frontend::NodePort => "NodePort",
        })
    }
}

/// One candidate endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Address.
    pub address: IpAddr,
    /// Port.
    pub port: u16,
    /// Its node, if known.
    pub node: Option<String>,
    /// Whether it is on this node.
    pub local: bool,
    /// Ready (else serving and terminating: used only as a fallback).
    pub ready: bool,
}

/// What happens to the packet in the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Rudder does not touch it.
    NotAService(String),
    /// DNAT to one of the candidates, each with the same probability.
    Dnat,
    /// Rejected (ICMP port unreachable / TCP reset): the service has no usable endpoint.
    Reject(String),
    /// Dropped silently.
    Drop(String),
}

/// The report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The query, with `via` resolved.
    pub query: Query,
    /// Where the packet comes from, and why Rudder thinks so.
    pub via: Via,
    /// Why `via` was chosen.
    pub via_reason: String,
    /// The matched service port (`ns/name:port/proto`) and how it matched: when several
    /// claim the frontend, the one that keeps it.
    pub matched: Option<(String, Frontend)>,
    /// The other service ports that claim the same frontend and lose it, best first.
    pub contested: Vec<Contender>,
    /// Which policy applies and why.
    pub policy: Vec<String>,
    /// The endpoints the packet may go to.
    pub candidates: Vec<Candidate>,
    /// How one candidate is picked, when not uniformly at random (the IPVS mode: its
    /// scheduler, for example `rr`).
    pub picked_by: Option<String>,
    /// Session affinity, if any.
    pub affinity: Option<String>,
    /// Whether the packet is masqueraded (source replaced by the node's address), and why.
    pub masquerade: Option<(bool, String)>,
    /// Hairpin masquerading: when the source is itself a candidate and picks itself.
    pub hairpin: Option<String>,
    /// The outcome.
    pub verdict: Verdict,
}

fn guess_via(q: &Query, node: &NodeContext) -> (Via, String) {
    if let Some(v) = q.via {
        return (v, "given with --via".into());
    }
    let Some(from) = q.from else {
        return (
            Via::External,
            "no --from or --via: assuming outside the node".into(),
        );
    };
    if node.ips.contains(&from) {
        return (Via::Node, format!("{from} is this node's address"));
    }
    if let LocalDetector::Cidrs(cidrs) = &node.local_detector {
        if let Some(c) = cidrs.iter().find(|c| c.contains(&from)) {
            return (Via::Pod, format!("{from} is in the pod range {c}"));
        }
    }
    (
        Via::External,
        format!("{from} is neither this node's address nor in a pod range"),
    )
}

/// Whether the local-traffic detector recognises this packet as coming from a pod here.
fn detected_local(via: Via, from: Option<IpAddr>, node: &NodeContext) -> Option<bool> {
    match &node.local_detector {
        LocalDetector::None => None,
        LocalDetector::Cidrs(cidrs) => Some(match from {
            Some(ip) => cidrs.iter().any(|c| c.contains(&ip)),
            None => via == Via::Pod,
        }),
        LocalDetector::Bridge(_) | LocalDetector::InterfacePrefix(_) => Some(via == Via::Pod),
    }
}

/// The service port whose frontend the packet is sent to, how it matched, and the other
/// ports claiming that frontend (best first), which lose it: the compiler's rule (see
/// `conflict`). Address frontends come before node ports, as in the `services` chain. (A port
/// refused because its affinity object names collide with another's is not looked for: with
/// 128-bit names that does not happen.)
fn find<'a>(
    state: &'a ProxyState,
    q: &Query,
    node: &NodeContext,
) -> Option<(&'a Service, usize, Frontend, Vec<Contender>)> {
    let family = IpFamily::of(&q.to);
    let is_node_port_ip = match &node.node_port_ips {
        NodePortIps::All => node.ips.contains(&q.to) || q.to.is_loopback(),
        NodePortIps::Only(ips) => ips.contains(&q.to),
    };
    // The compiler refuses service addresses that are the node's own (see `guard`).
    let node_addrs = crate::guard::node_addresses(node);
    type Found<'s> = (ClaimRank, FrontendKind, &'s Service, usize);
    let mut on_address: Vec<Found<'a>> = Vec::new();
    let mut on_node_port: Vec<Found<'a>> = Vec::new();
    for svc in state.services() {
        for claim in claimed_frontends(svc, family, &node_addrs) {
            let fe = claim.frontend;
            if fe.protocol != q.protocol || fe.port != q.port {
                continue;
            }
            let to = match fe.address {
                Some(ip) if ip == q.to => &mut on_address,
                None if is_node_port_ip && !q.to.is_loopback() => &mut on_node_port,
                _ => continue,
            };
            to.push((claim.rank, claim.kind, svc, claim.port));
        }
    }
    let mut found = if on_address.is_empty() {
        on_node_port
    } else {
        on_address
    };
    found.sort_by(|a, b| a.0.cmp(&b.0));
    let mut found = found.into_iter();
    let (best, kind, svc, i) = found.next()?;
    let others = found
        .map(|(r, k, s, p)| Contender {
            service_port: s
                .ports
                .get(p)
                .map_or_else(String::new, |p| s.port_name(p).to_string()),
            frontend: Frontend::of(k),
            rule: best.rule_over(&r),
        })
        .collect();
    Some((svc, i, Frontend::of(kind), others))
}

fn candidate(e: &ResolvedEndpoint<'_>, node: &str) -> Candidate {
    Candidate {
        address: e.endpoint.address,
        port: e.port,
        node: e.endpoint.node_name.clone(),
        local: e.endpoint.node_name.as_deref() == Some(node),
        ready: e.endpoint.ready,
    }
}

/// Explains what the node described by `config` and `node` does with the packet `q`.
pub fn explain(state: &ProxyState, config: &Config, node: &NodeContext, q: &Query) -> Explanation {
    let (via, via_reason) = guess_via(q, node);
    let mut out = Explanation {
        query: q.clone(),
        via,
        via_reason,
        matched: None,
        contested: Vec::new(),
        policy: Vec::new(),
        candidates: Vec::new(),
        picked_by: None,
        affinity: None,
        masquerade: None,
        hairpin: None,
        verdict: Verdict::Dnat,
    };
    let Some((svc, port_idx, frontend, contested)) = find(state, q, node) else {
        let family = IpFamily::of(&q.to);
        // A ClusterIP that is one of the node's addresses is refused, not programmed.
        let node_addrs = crate::guard::node_addresses(node);
        if let Some(svc) = state.services().find(|s| {
            s.cluster_ip(family) == Some(q.to)
                && crate::guard::refused_cluster_ip(s, &node_addrs).is_none()
        }) {
            out.verdict = Verdict::Reject(format!(
                "{} is the ClusterIP of {} but it has no {}/{} port",
                q.to, svc.key, q.protocol, q.port
            ));
            return out;
        }
        let (service_cidrs, _) = crate::guard::service_cidrs(node);
        let why = if service_cidrs.iter().any(|c| c.contains(&q.to)) {
            out.verdict = Verdict::Drop(format!(
                "{} is inside a service CIDR but is no ClusterIP of any service",
                q.to
            ));
            return out;
        } else {
            format!(
                "no service has {} {}/{} as ClusterIP, external IP, load balancer IP or node port",
                q.to, q.protocol, q.port
            )
        };
        out.verdict = Verdict::NotAService(why);
        return out;
    };
    let port = &svc.ports[port_idx];
    out.matched = Some((svc.port_name(port).to_string(), frontend));
    out.contested = contested;
    let family = IpFamily::of(&q.to);
    let endpoints = state.endpoints_for(svc, port, family);
    let cat = categorize(svc, &endpoints, &node.name, node.zone.as_deref());
    let external = frontend != Frontend::ClusterIp;
    let local_source = detected_local(via, q.from, node);

    // Load balancer source ranges apply to load balancer IPs only.
    if frontend == Frontend::LoadBalancerIp && !svc.load_balancer_source_ranges.is_empty() {
        let ranges: Vec<String> = svc
            .load_balancer_source_ranges
            .iter()
            .map(ToString::to_string)
            .collect();
        match q.from {
            Some(from) if !svc.load_balancer_source_ranges.iter().any(|c| c.contains(&from)) => {
                out.policy.push(format!(
                    "loadBalancerSourceRanges [{}] do not contain {from}",
                    ranges.join(", ")
                ));
                out.verdict = Verdict::Drop("the source is outside loadBalancerSourceRanges".into());
                return out;
            }
            Some(from) => out.policy.push(format!(
                "loadBalancerSourceRanges [{}] contain {from}: allowed",
                ranges.join(", ")
            )),
            None => out.policy.push(format!(
                "loadBalancerSourceRanges [{}]: other sources are dropped (give --from to check one)",
                ranges.join(", ")
            )),
        }
    }

    if !cat.has_any {
        out.verdict = Verdict::Reject(
            "the service has no ready (or serving and terminating) endpoint".into(),
        );
        return out;
    }

    // Which endpoint set applies, following kube-proxy's chains.
    let internal_local = svc.internal_traffic_policy == TrafficPolicy::Local;
    let external_local = svc.external_traffic_policy == TrafficPolicy::Local;
    let use_local;
    let masq: (bool, String);
    if !external {
        use_local = internal_local;
        out.policy.push(format!(
            "internalTrafficPolicy: {} (applies to the ClusterIP)",
            if internal_local { "Local" } else { "Cluster" }
        ));
        masq = if config.masquerade_all {
            (true, "--masquerade-all".into())
        } else {
            match local_source {
                None => (
                    false,
                    "no local traffic detection (--cluster-cidr unset): ClusterIP traffic is not masqueraded".into(),
                ),
                Some(true) => (false, "the source is a local pod".into()),
                Some(false) => (
                    true,
                    "traffic to a ClusterIP from outside the pod network is masqueraded".into(),
                ),
            }
        };
    } else if !external_local {
        use_local = false;
        out.policy.push("externalTrafficPolicy: Cluster".into());
        masq = (
            true,
            "external traffic under externalTrafficPolicy: Cluster is masqueraded".into(),
        );
    } else {
        out.policy.push("externalTrafficPolicy: Local".into());
        if local_source == Some(true) {
            use_local = false;
            out.policy.push(
                "the source is a local pod: short-circuited to all endpoints, as kube-proxy does"
                    .into(),
            );
            masq = (false, "the source is a local pod".into());
        } else if via == Via::Node {
            use_local = false;
            out.policy.push(
                "the source is this node: short-circuited to all endpoints, as kube-proxy does"
                    .into(),
            );
            masq = (
                true,
                "traffic from the node itself to an external frontend".into(),
            );
        } else {
            use_local = true;
            masq = (
                false,
                "externalTrafficPolicy: Local keeps the client's address".into(),
            );
            if let Some(hc) = svc.health_check_node_port {
                out.policy.push(format!(
                    "load balancers check this node on healthCheckNodePort {hc} (200 only with local endpoints)"
                ));
            }
        }
    }
    let set = if use_local { &cat.local } else { &cat.cluster };
    if !use_local {
        match cat.topology {
            Topology::None => {}
            Topology::SameNode => out
                .policy
                .push("topology hints: only endpoints hinted for this node".into()),
            Topology::SameZone => out.policy.push(format!(
                "topology hints: only endpoints hinted for zone {}",
                node.zone.as_deref().unwrap_or("?")
            )),
        }
    }
    if !set.is_empty() && set.iter().all(|e| !e.endpoint.ready) {
        out.policy
            .push("no ready endpoint: falling back to serving, terminating ones".into());
    }
    out.candidates = set.iter().map(|e| candidate(e, &node.name)).collect();
    if set.is_empty() {
        out.verdict = Verdict::Drop(
            "the policy is Local and this node has no usable endpoint (endpoints exist elsewhere)"
                .into(),
        );
        return out;
    }
    if let Some(t) = svc.session_affinity_timeout {
        out.affinity = Some(format!(
            "ClientIP: a client stays on the endpoint it first got for {t} s after its last packet"
        ));
    }
    if let Some(from) = q.from {
        if set.iter().any(|e| {
            e.endpoint.address == from && e.endpoint.node_name.as_deref() == Some(&node.name)
        }) {
            out.hairpin = Some(format!(
                "when {from} is sent to itself, the packet is masqueraded so the reply comes back"
            ));
        }
    }
    out.masquerade = Some(masq);
    out
}

/// Text from input (object names, node names) goes through [`escape_controls`]: the report
/// is printed to terminals, and a name must not add lines to it or drive the terminal.
impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = |s: &str| escape_controls(s).into_owned();
        let q = &self.query;
        let dest = match q.to {
            IpAddr::V6(a) => format!("[{a}]:{}", q.port),
            IpAddr::V4(a) => format!("{a}:{}", q.port),
        };
        let from = q.from.map_or("any source".to_owned(), |f| f.to_string());
        let via = match self.via {
            Via::Pod => "a pod on this node",
            Via::Node => "this node",
            Via::External => "outside the node",
        };
        writeln!(f, "packet:      {} to {dest} from {from}", q.protocol)?;
        writeln!(f, "source:      {via} ({})", e(&self.via_reason))?;
        match &self.matched {
            Some((name, frontend)) => {
                writeln!(f, "service:     {} (matched its {frontend})", e(name))?
            }
            None => writeln!(f, "service:     none")?,
        }
        for c in &self.contested {
            writeln!(
                f,
                "contested:   also the {} of {}, which loses it ({})",
                c.frontend,
                e(&c.service_port),
                c.rule
            )?;
        }
        for p in &self.policy {
            writeln!(f, "policy:      {}", e(p))?;
        }
        if !self.candidates.is_empty() {
            let n = self.candidates.len();
            match &self.picked_by {
                Some(how) => writeln!(f, "endpoints:   {n}, picked by {}", e(how))?,
                None => writeln!(
                    f,
                    "endpoints:   {n}, each chosen with probability 1/{n} ({:.1}%)",
                    100.0 / n as f64
                )?,
            }
            for c in &self.candidates {
                let addr = match c.address {
                    IpAddr::V6(a) => format!("[{a}]:{}", c.port),
                    IpAddr::V4(a) => format!("{a}:{}", c.port),
                };
                writeln!(
                    f,
                    "  {addr:<24} node {:<16} {}{}",
                    e(c.node.as_deref().unwrap_or("(unknown)")),
                    if c.local { "local, " } else { "" },
                    if c.ready {
                        "ready"
                    } else {
                        "serving, terminating"
                    }
                )?;
            }
        }
        if let Some(a) = &self.affinity {
            writeln!(f, "affinity:    {}", e(a))?;
        }
        if let Some((m, why)) = &self.masquerade {
            writeln!(
                f,
                "masquerade:  {} ({})",
                if *m { "yes" } else { "no" },
                e(why)
            )?;
        }
        if let Some(h) = &self.hairpin {
            writeln!(f, "hairpin:     {}", e(h))?;
        }
        match &self.verdict {
            Verdict::NotAService(why) => {
                writeln!(f, "verdict:     not touched by Rudder: {}", e(why))
            }
            Verdict::Dnat => writeln!(f, "verdict:     DNAT to one of the endpoints above"),
            Verdict::Reject(why) => writeln!(f, "verdict:     rejected: {}", e(why)),
            Verdict::Drop(why) => writeln!(f, "verdict:     dropped: {}", e(why)),
        }
    }
}
