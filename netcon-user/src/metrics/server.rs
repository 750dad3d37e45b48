//! The `--metrics` HTTP endpoint: a small HTTP/1.1 server that hands each scrape to the
//! pipeline loop and encodes the snapshot it answers with.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{
    MAX_CONNECTIONS, MAX_REQUEST_BYTES, MetricsError, REQUEST_TIMEOUT, RESPONSE_TIMEOUT,
    SCRAPE_TIMEOUT, Snapshot,
};

/// A scrape waiting for a snapshot from the pipeline loop.
pub type ScrapeRequest = oneshot::Sender<Snapshot>;

/// The `--metrics` endpoint: an accept loop on the current runtime, and the queue of scrapes
/// that the pipeline loop answers.
pub struct MetricsServer {
    requests: mpsc::Receiver<ScrapeRequest>,
    addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `addr` and starts serving on the current tokio runtime.
    ///
    /// # Errors
    /// [`MetricsError::Bind`] when the address cannot be bound.
    pub fn start(addr: SocketAddr) -> Result<Self, MetricsError> {
        let bind_error = |source| MetricsError::Bind { addr, source };
        let listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let local = listener.local_addr().map_err(bind_error)?;
        let listener = TcpListener::from_std(listener).map_err(bind_error)?;
        let (tx, requests) = mpsc::channel(MAX_CONNECTIONS);
        let accept = tokio::spawn(accept_loop(listener, tx));
        Ok(Self {
            requests,
            addr: local,
            accept,
        })
    }

    /// The address it listens on (the port filled in when 0 was asked for).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next scrape to answer (cancel-safe; never completes once the accept loop is gone).
    pub async fn request(&mut self) -> ScrapeRequest {
        match self.requests.recv().await {
            Some(request) => request,
            None => std::future::pending().await,
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, requests: mpsc::Sender<ScrapeRequest>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, mostly: wait rather than spin.
                tracing::warn!(%error, "--metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%peer, "--metrics: too many connections; closing this one");
            continue;
        };
        let requests = requests.clone();
        tokio::spawn(async move {
            if let Err(error) = serve(stream, &requests).await {
                tracing::debug!(%peer, %error, "--metrics: connection failed");
            }
            drop(slot);
        });
    }
}

/// What a request asked for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// `GET /metrics` (`HEAD` too: no body).
    Metrics { head: bool },
    /// `GET /`.
    Index,
    /// A path there is nothing at.
    NotFound,
    /// Another method on `/metrics`.
    MethodNotAllowed,
    /// Not an HTTP/1 request line.
    BadRequest,
}

/// Routes a request head (everything up to the blank line).
fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::BadRequest;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    match (method, path) {
        ("GET", "/metrics") => Route::Metrics { head: false },
        ("HEAD", "/metrics") => Route::Metrics { head: true },
        (_, "/metrics") => Route::MethodNotAllowed,
        ("GET" | "HEAD", "/") => Route::Index,
        _ => Route::NotFound,
    }
}

async fn serve(mut stream: TcpStream, requests: &mpsc::Sender<ScrapeRequest>) -> io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream, &mut head)).await;
    let (status, content_type, body, send_body) = match read {
        Err(_) => return Ok(()),
        Ok(Err(error)) => return Err(error),
        Ok(Ok(false)) => (
            "431 Request Header Fields Too Large",
            "text/plain",
            String::new(),
            false,
        ),
        Ok(Ok(true)) => match route(&head) {
            // Encoding a full per-sender table takes milliseconds: off the runtime's thread,
            // which is the capture loop's.
            Route::Metrics { head } => match scrape(requests).await {
                Some(snapshot) => (
                    "200 OK",
                    prometheus_text::CONTENT_TYPE,
                    tokio::task::spawn_blocking(move || snapshot.to_prometheus())
                        .await
                        .map_err(io::Error::other)?,
                    !head,
                ),
                None => (
                    "503 Service Unavailable",
                    "text/plain",
                    "the pipeline did not answer in time\n".to_owned(),
                    !head,
                ),
            },
            Route::Index => (
                "200 OK",
                "text/plain",
                "netcon-sniff: metrics are at /metrics\n".to_owned(),
                true,
            ),
            Route::NotFound => ("404 Not Found", "text/plain", String::new(), false),
            Route::MethodNotAllowed => {
                ("405 Method Not Allowed", "text/plain", String::new(), false)
            }
            Route::BadRequest => ("400 Bad Request", "text/plain", String::new(), false),
        },
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    if send_body {
        response.push_str(&body);
    }
    // A client that stops reading must not keep its slot for ever.
    tokio::time::timeout(RESPONSE_TIMEOUT, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await
    .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// Reads until the blank line that ends a request head: `false` when it is longer than
/// [`MAX_REQUEST_BYTES`].
async fn read_head(stream: &mut TcpStream, head: &mut Vec<u8>) -> io::Result<bool> {
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(true);
        }
        if head.len() > MAX_REQUEST_BYTES {
            return Ok(false);
        }
    }
}

/// Asks the pipeline loop for a snapshot; `None` if it does not answer within
/// [`SCRAPE_TIMEOUT`].
async fn scrape(requests: &mpsc::Sender<ScrapeRequest>) -> Option<Snapshot> {
    let (tx, rx) = oneshot::channel();
    tokio::time::timeout(SCRAPE_TIMEOUT, async {
        requests.send(tx).await.ok()?;
        rx.await.ok()
    })
    .await
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::super::tests::snapshot;
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { head: false }
        );
        assert_eq!(
            route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { head: false }
        );
        assert_eq!(
            route(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
            Route::Metrics { head: true }
        );
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::Index);
        assert_eq!(route(b"GET /x HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"GET /metrics\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"\xff\xfe\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"GET /metrics SPDY/3\r\n\r\n"), Route::BadRequest);
    }

    /// GETs `path` from `addr`, returns the whole response.
    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn a_scrape_the_loop_does_not_answer_is_503_and_others_404() {
        let mut server = MetricsServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr();
        let client = tokio::spawn(get(addr, "/metrics"));
        // The loop takes the request and drops it unanswered.
        drop(server.request().await);
        let response = client.await.unwrap();
        assert!(
            response.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{response}"
        );
        let response = get(addr, "/other").await;
        assert!(
            response.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{response}"
        );
    }

    #[tokio::test]
    async fn serves_metrics_answered_by_the_loop() {
        let mut server = MetricsServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr();
        let client = tokio::spawn(get(addr, "/metrics"));
        let request = server.request().await;
        request.send(snapshot()).unwrap();
        let response = client.await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(
            response.contains("Content-Type: text/plain; version=0.0.4"),
            "{response}"
        );
        let (_, body) = response.split_once("\r\n\r\n").unwrap();
        // The same lines; the order of a family's series is not fixed.
        let sorted = |text: &str| {
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            lines.sort();
            lines
        };
        assert_eq!(sorted(body), sorted(&snapshot().to_prometheus()));
    }
}
