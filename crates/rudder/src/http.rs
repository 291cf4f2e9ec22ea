//! A minimal HTTP/1.1 responder for Rudder's small endpoints (health checks, metrics): one
//! request per connection, any method, the answer decided by the path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
}

/// Decides the answer from the request target (path and query string).
pub type Handler = Arc<dyn Fn(&str) -> Response + Send + Sync>;

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "",
    }
}

async fn serve_conn(mut conn: TcpStream, handler: Handler) {
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    let read = async {
        while len < buf.len() {
            match conn.read(&mut buf[len..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    len += n;
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    };
    // Slow or oversized requests get nothing.
    if tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .is_err()
    {
        return;
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    // The handler gets the request target, query string included.
    let target = head.split_whitespace().nth(1).unwrap_or("/");
    let r = handler(target);
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\n",
        r.status,
        reason(r.status),
        r.content_type
    );
    for (k, v) in &r.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{}",
        r.body.len(),
        r.body
    ));
    let _ = conn.write_all(out.as_bytes()).await;
    let _ = conn.shutdown().await;
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
