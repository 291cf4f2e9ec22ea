//! `rudder explain`: parsing the question, and answering it live from the running daemon
//! (`/explain` on the metrics port, which asks the sync loop about its current state).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rudder_compiler::explain::{Query, Via};
use rudder_controller::ExplainRequest;
use rudder_model::Protocol;
use tokio::sync::mpsc::UnboundedSender;

use crate::http::Response;

/// Builds the question from `--to IP:PORT[/PROTO]`, `--from IP` and `--via pod|node|external`.
pub fn query(to: &str, from: Option<&str>, via: Option<&str>) -> Result<Query, String> {
    let (addr, proto) = match to.rsplit_once('/') {
        Some((a, p)) => (a, p),
        None => (to, "tcp"),
    };
    let protocol = match proto.to_ascii_lowercase().as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        other => {
            return Err(format!(
                "--to {to:?}: unknown protocol {other:?} (tcp, udp or sctp)"
            ));
        }
    };
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| format!("--to {to:?}: expected IP:PORT or [IPv6]:PORT"))?;
    let from = from
        .map(|f| {
            f.parse::<IpAddr>()
                .map_err(|_| format!("--from {f:?} is not an IP address"))
        })
        .transpose()?;
    let via = via
        .map(|v| {
            Via::parse(v).ok_or_else(|| format!("--via {v:?}: expected pod, node or external"))
        })
        .transpose()?;
    Ok(Query {
        to: addr.ip(),
        port: addr.port(),
        protocol,
        from,
        via,
    })
}

/// Decodes `%XX` escapes (and `+` as a space) of a query-string value.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        // Two hex digits: always below 256.
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of `key` in the query string of `target`.
fn param(target: &str, key: &str) -> Option<String> {
    let (_, qs) = target.split_once('?')?;
    qs.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| decode(v))
}

/// The `/explain` endpoint: forwards questions to the sync loop.
#[derive(Clone)]
pub struct Live {
    tx: UnboundedSender<ExplainRequest>,
}

impl Live {
    /// Questions go to `tx`, which the sync loop reads.
    pub fn new(tx: UnboundedSender<ExplainRequest>) -> Live {
        Live { tx }
    }

    /// Answers `GET /explain?to=IP:PORT[/PROTO][&from=IP][&via=pod|node|external]`.
    pub fn answer(&self, target: &str) -> Response {
        let Some(to) = param(target, "to") else {
            return Response::new(400, "text/plain", "missing to=IP:PORT[/PROTO]\n".into());
        };
        let q = match query(
            &to,
            param(target, "from").as_deref(),
            param(target, "via").as_deref(),
        ) {
            Ok(q) => q,
            Err(e) => return Response::new(400, "text/plain", format!("{e}\n")),
        };
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        if self.tx.send(ExplainRequest { query: q, reply }).is_err() {
            return Response::new(503, "text/plain", "the sync loop has stopped\n".into());
        }
        // The loop answers between syncs; wait without starving the runtime.
        match tokio::task::block_in_place(|| answer.recv_timeout(Duration::from_secs(10))) {
            Ok(e) => Response::new(200, "text/plain; charset=utf-8", e.to_string()),
            Err(_) => Response::new(503, "text/plain", "no answer from the sync loop\n".into()),
        }
    }
}

/// The query string `rudder explain --live` sends.
pub fn query_string(to: &str, from: Option<&str>, via: Option<&str>) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let mut q = format!("/explain?to={}", enc(to));
    if let Some(f) = from {
        q.push_str(&format!("&from={}", enc(f)));
    }
    if let Some(v) = via {
        q.push_str(&format!("&via={}", enc(v)));
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_round_trip() {
        let target = query_string("[fd00::1]:53/udp", Some("10.0.0.1"), Some("pod"));
        assert!(!target.contains('['), "{target}");
        assert_eq!(param(&target, "to").as_deref(), Some("[fd00::1]:53/udp"));
        assert_eq!(param(&target, "from").as_deref(), Some("10.0.0.1"));
        assert_eq!(param(&target, "via").as_deref(), Some("pod"));
        assert_eq!(param(&target, "nope"), None);
        assert_eq!(decode("a%2"), "a%2", "a cut escape stays as it is");
        let q = query("[fd00::1]:53/udp", Some("10.0.0.1"), Some("pod")).expect("valid");
        assert_eq!(q.port, 53);
        assert_eq!(q.protocol, Protocol::Udp);
        assert!(query("1.2.3.4:80/icmp", None, None).is_err());
        assert!(query("1.2.3.4", None, None).is_err());
        assert!(query("1.2.3.4:80", Some("x"), None).is_err());
        assert!(query("1.2.3.4:80", None, Some("moon")).is_err());
    }
}
