//! `rudder explain`: parsing the question, and answering it live from the running daemon
//! (`/explain` on the metrics port, which asks the sync loop about its current state).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rudder_compiler::explain::{Query, Via};
use rudder_controller::ExplainRequest;
use rudder_model::Protocol;
use tokio::sync::mpsc::UnboundedSender;

use hyper::Uri;

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

/// The value of `key` in the query string `query` (`application/x-www-form-urlencoded`).
fn param(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
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
    pub async fn answer(&self, uri: &Uri) -> Response {
        let target = uri.query();
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
        let (reply, answer) = tokio::sync::oneshot::channel();
        if self.tx.send(ExplainRequest { query: q, reply }).is_err() {
            return Response::new(503, "text/plain", "the sync loop has stopped\n".into());
        }
        // The loop answers between syncs; a long sync delays the answer, never a runtime
        // thread (the handler awaits).
        match tokio::time::timeout(Duration::from_secs(10), answer).await {
            Ok(Ok(e)) => Response::new(200, "text/plain; charset=utf-8", e.to_string()),
            _ => Response::new(503, "text/plain", "no answer from the sync loop\n".into()),
        }
    }
}

/// The query string `rudder explain --live` sends.
pub fn query_string(to: &str, from: Option<&str>, via: Option<&str>) -> String {
    let mut q = form_urlencoded::Serializer::new(String::from("/explain?"));
    q.append_pair("to", to);
    if let Some(f) = from {
        q.append_pair("from", f);
    }
    if let Some(v) = via {
        q.append_pair("via", v);
    }
    q.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_round_trip() {
        let target = query_string("[fd00::1]:53/udp", Some("10.0.0.1"), Some("pod"));
        assert!(!target.contains('['), "{target}");
        let uri: Uri = target.parse().expect("a valid request target");
        assert_eq!(uri.path(), "/explain");
        let q = uri.query();
        assert_eq!(param(q, "to").as_deref(), Some("[fd00::1]:53/udp"));
        assert_eq!(param(q, "from").as_deref(), Some("10.0.0.1"));
        assert_eq!(param(q, "via").as_deref(), Some("pod"));
        assert_eq!(param(q, "nope"), None);
        assert_eq!(param(None, "to"), None);
        assert_eq!(
            param(Some("to=a%2"), "to").as_deref(),
            Some("a%2"),
            "a cut escape stays as it is"
        );
        assert_eq!(param(Some("to=a+b"), "to").as_deref(), Some("a b"));
        let q = query("[fd00::1]:53/udp", Some("10.0.0.1"), Some("pod")).expect("valid");
        assert_eq!(q.port, 53);
        assert_eq!(q.protocol, Protocol::Udp);
        assert!(query("1.2.3.4:80/icmp", None, None).is_err());
        assert!(query("1.2.3.4", None, None).is_err());
        assert!(query("1.2.3.4:80", Some("x"), None).is_err());
        assert!(query("1.2.3.4:80", None, Some("moon")).is_err());
    }
}
