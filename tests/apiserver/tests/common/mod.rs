//! Helpers shared by the kube-rs integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::api::networking::v1::{ServiceCIDR, ServiceCIDRSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::config::{KubeConfigOptions, Kubeconfig};
use rudder_fake_apiserver::FakeApiServer;

pub const TOKEN: &str = "test-token";

/// A kube-rs client built the way an operator would: from a kubeconfig.
pub async fn client(server: &FakeApiServer, token: Option<&str>) -> anyhow::Result<kube::Client> {
    let kc = Kubeconfig::from_yaml(&server.kubeconfig(token))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

fn meta(ns: Option<&str>, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: ns.map(str::to_owned),
        labels: (!labels.is_empty()).then(|| {
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>()
        }),
        ..ObjectMeta::default()
    }
}

pub fn svc(ns: &str, name: &str, labels: &[(&str, &str)], port: i32) -> Service {
    Service {
        metadata: meta(Some(ns), name, labels),
        spec: Some(ServiceSpec {
            cluster_ip: Some("10.96.0.10".to_owned()),
            ports: Some(vec![ServicePort {
                port,
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

pub fn slice(ns: &str, name: &str, service: &str, ips: &[&str]) -> EndpointSlice {
    EndpointSlice {
        metadata: meta(Some(ns), name, &[("kubernetes.io/service-name", service)]),
        address_type: "IPv4".to_owned(),
        endpoints: Some(
            ips.iter()
                .map(|ip| Endpoint {
                    addresses: vec![(*ip).to_owned()],
                    ..Endpoint::default()
                })
                .collect(),
        ),
        ports: None,
    }
}

pub fn node(name: &str, labels: &[(&str, &str)]) -> Node {
    Node {
        metadata: meta(None, name, labels),
        ..Node::default()
    }
}

pub fn service_cidr(name: &str, labels: &[(&str, &str)], cidrs: &[&str]) -> ServiceCIDR {
    ServiceCIDR {
        metadata: meta(None, name, labels),
        spec: Some(ServiceCIDRSpec {
            cidrs: Some(cidrs.iter().map(|c| (*c).to_owned()).collect()),
        }),
        status: None,
    }
}

/// Poll `cond` every 20 ms until it holds or `timeout` passes.
pub async fn wait_until(
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Bound a future's run time.
pub async fn within<T>(secs: u64, what: &str, f: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .map_err(|_| anyhow::anyhow!("timed out after {secs}s: {what}"))
}

/// A constant short retry delay so reconnect tests stay fast.
pub struct FastBackoff;

impl Iterator for FastBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(Duration::from_millis(100))
    }
}

impl kube::runtime::utils::Backoff for FastBackoff {
    fn reset(&mut self) {}
}

/// The status code of a kube API error, if it is one.
pub fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// A raw HTTP/1.1 response: status, lower-cased headers, and the body
/// (de-chunked) plus the individual chunks if it was chunked.
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub chunks: Vec<String>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.body)?)
    }
}

/// Send one request over a fresh plain TCP connection and read the whole
/// response (the server closes because of `Connection: close`).
pub fn raw_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> anyhow::Result<RawResponse> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(8)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/json\r\n"
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or_default());
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw)?;
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no header end in {text:?}"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("bad status line {status_line:?}"))?
        .parse()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let mut chunks = Vec::new();
    let body = if chunked {
        let mut rest = rest;
        loop {
            let (size, after) = rest
                .split_once("\r\n")
                .ok_or_else(|| anyhow::anyhow!("truncated chunk header"))?;
            let size = usize::from_str_radix(size.trim(), 16)?;
            if size == 0 {
                break;
            }
            let data = after
                .get(..size)
                .ok_or_else(|| anyhow::anyhow!("truncated chunk"))?;
            chunks.push(data.to_owned());
            rest = after
                .get(size..)
                .and_then(|r| r.strip_prefix("\r\n"))
                .ok_or_else(|| anyhow::anyhow!("chunk not CRLF-terminated"))?;
        }
        chunks.concat()
    } else {
        rest.to_owned()
    };
    Ok(RawResponse {
        status,
        headers,
        body,
        chunks,
    })
}
