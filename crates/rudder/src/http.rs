//! Rudder's small HTTP endpoints (health checks, metrics, status, explain) on hyper's HTTP/1
//! server, and the client `rudder status` and `rudder explain --live` use to ask them.
//!
//! One request per connection (every answer says `Connection: close`), any method, the answer
//! decided by the request's path and query string. A request whose head has not arrived
//! within 5 s gets no answer (hyper closes the connection); hyper refuses a head larger than
//! 8 KiB (431) before any handler sees it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request head read (hyper's smallest buffer).
const MAX_HEAD: usize = 8192;

/// An answer.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: String) -> Response {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body,
        }
    }

    /// The answer as hyper sends it: `Content-Type`, the extra headers in order,
    /// `Content-Length` and `Connection: close` (the head Rudder always sent).
    fn into_hyper(self) -> hyper::Response<Full<Bytes>> {
        let mut b = hyper::Response::builder()
            .status(StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
            .header(CONTENT_TYPE, self.content_type);
        for (k, v) in self.headers {
            b = b.header(k, v);
        }
        b.header(CONTENT_LENGTH, self.body.len())
            .header(CONNECTION, "close")
            .body(Full::new(Bytes::from(self.body)))
            .unwrap_or_else(|e| {
                let mut r = hyper::Response::new(Full::new(Bytes::from(format!("{e}\n"))));
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                r
            })
    }
}

/// What a [`Handler`] returns: the answer, once it is known.
pub type Reply = Pin<Box<dyn Future<Output = Response> + Send>>;

/// Decides the answer from the request target (path and query string).
pub type Handler = Arc<dyn Fn(Uri) -> Reply + Send + Sync>;

/// A [`Handler`] from an async function of the request target.
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Uri) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    Arc::new(move |uri| Box::pin(f(uri)))
}

/// A [`Handler`] whose answer needs no waiting.
pub fn handler_sync<F>(f: F) -> Handler
where
    F: Fn(&Uri) -> Response + Send + Sync + 'static,
{
    Arc::new(move |uri| {
        let r = f(&uri);
        Box::pin(std::future::ready(r))
    })
}

async fn serve_conn(conn: TcpStream, handler: Handler) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let reply = handler(req.uri().clone());
        async move { Ok::<_, Infallible>(reply.await.into_hyper()) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .title_case_headers(true)
        .auto_date_header(false)
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(conn), service)
        .await;
}

/// Binds `addr` (synchronously, so the caller sees bind errors) and serves in the background.
pub fn serve(addr: SocketAddr, handler: Handler) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let std = std::net::TcpListener::bind(addr)?;
    std.set_nonblocking(true)?;
    let listener = TcpListener::from_std(std)?;
    Ok(tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(serve_conn(conn, handler.clone()));
        }
    }))
}

/// How long the client waits for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the client waits for the whole answer (`/explain` may wait 10 s for the loop).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// The largest answer the client reads.
const MAX_ANSWER: usize = 16 << 20;

fn io_error(e: impl std::error::Error + Send + Sync + 'static) -> std::io::Error {
    std::io::Error::other(e)
}

/// `GET target` (path and query string) from `addr`: the status code and the body.
pub async fn get(addr: SocketAddr, target: &str) -> std::io::Result<(u16, String)> {
    let timed_out =
        |what: &str| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{what} timed out"));
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out("connecting"))??;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(conn))
        .await
        .map_err(io_error)?;
    let driver = tokio::spawn(connection);
    let req = Request::get(target)
        .header(HOST, addr.to_string())
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(io_error)?;
    let answer = async {
        let resp = sender.send_request(req).await.map_err(io_error)?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .to_bytes();
        Ok::<_, std::io::Error>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    let result = tokio::time::timeout(ANSWER_TIMEOUT, answer)
        .await
        .map_err(|_| timed_out("waiting for the answer"))?;
    driver.abort();
    result
}

/// [`get`] for callers outside a runtime (`rudder status`, `rudder explain --live`).
pub fn get_blocking(addr: SocketAddr, target: &str) -> std::io::Result<(u16, String)> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(get(addr, target))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// The raw answer to `request`, sent by a plain socket.
    fn raw(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn answers_once_per_connection_with_the_same_head_as_before() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (addr, server) = rt.block_on(async {
            let h = handler(|uri: Uri| async move {
                let mut r = Response::new(
                    if uri.path() == "/ok" { 200 } else { 404 },
                    "application/json",
                    format!("{{\"query\":{:?}}}", uri.query().unwrap_or("")),
                );
                r.headers.push(("X-Content-Type-Options", "nosniff".into()));
                r
            });
            // Port 0: bind, learn the port, serve.
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = probe.local_addr().unwrap();
            drop(probe);
            (addr, serve(addr, h).unwrap())
        });
        let out = raw(addr, b"GET /ok?a=1 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nContent-Length: 15\r\nConnection: close\r\n\r\n{\"query\":\"a=1\"}",
        );
        let out = raw(addr, b"POST /nope HTTP/1.0\r\n\r\n");
        assert!(out.starts_with("HTTP/1.0 404 Not Found\r\n"), "{out}");
        assert!(out.contains("\r\nConnection: close\r\n"), "{out}");
        // An oversized head is refused, not answered by the handler.
        let big = format!(
            "GET /ok HTTP/1.1\r\nX-Big: {}\r\n\r\n",
            "a".repeat(3 * MAX_HEAD)
        );
        let out = raw(addr, big.as_bytes());
        assert!(out.is_empty() || out.starts_with("HTTP/1.1 431 "), "{out}");
        // The client.
        let (code, body) = get_blocking(addr, "/ok?to=%5B%3A%3A1%5D").unwrap();
        assert_eq!(
            (code, body.as_str()),
            (200, "{\"query\":\"to=%5B%3A%3A1%5D\"}")
        );
        // Nothing listens: an error, not a hang.
        server.abort();
        let _ = rt.block_on(server);
        assert!(get_blocking(addr, "/ok").is_err());
    }
}
