//! HTTP/1.1 echo upstream (hyper): records each request and answers like the reference `echo.py`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::{echo_body, sleep_from_path, status_from_path, RecordedRequest, Recorder};

/// How the echo upstream answers.
#[derive(Debug, Clone)]
pub struct EchoOptions {
    /// The value of the `x-upstream` response header.
    pub name: String,
    /// The `Server` header it sends (the proxy should overwrite it); empty: none.
    pub server: String,
    /// Send the body chunked (no content-length) instead of with content-length.
    pub chunked: bool,
    /// Wait this long before answering every request (`?sleep=MS` adds a per-request wait).
    pub delay: Duration,
    /// Extra response headers.
    pub extra_headers: Vec<(String, String)>,
    /// A fixed response body instead of the echo of the request.
    pub body: Option<String>,
}

impl EchoOptions {
    /// Defaults, named `name`.
    pub fn named(name: &str) -> EchoOptions {
        EchoOptions {
            name: name.to_string(),
            server: "BaseHTTP/0.6 Python/3.11.7".to_string(),
            chunked: false,
            delay: Duration::ZERO,
            extra_headers: Vec::new(),
            body: None,
        }
    }
}

/// A running HTTP/1.1 echo upstream on 127.0.0.1.
pub struct EchoUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it received.
    pub rec: Recorder,
    task: tokio::task::JoinHandle<()>,
}

impl EchoUpstream {
    /// Starts an echo upstream named `name` with default options.
    pub async fn start(name: &str) -> EchoUpstream {
        Self::with_options(EchoOptions::named(name)).await
    }

    /// Starts an echo upstream with `opts`.
    pub async fn with_options(opts: EchoOptions) -> EchoUpstream {
        Self::with_options_at(opts, "127.0.0.1:0".parse().expect("address")).await
    }

    /// Starts an echo upstream with `opts` listening on `at` (another loopback address, a
    /// port shared with other upstreams).
    pub async fn with_options_at(opts: EchoOptions, at: SocketAddr) -> EchoUpstream {
        let listener = TcpListener::bind(at).await.expect("bind echo upstream");
        let addr = listener.local_addr().expect("local addr");
        let rec = Recorder::default();
        let opts = Arc::new(opts);
        let rec2 = rec.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let conn = rec2.next_conn();
                let rec = rec2.clone();
                let opts = opts.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let rec = rec.clone();
                        let opts = opts.clone();
                        async move { Ok::<_, Infallible>(answer(req, conn, &rec, &opts).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        EchoUpstream { addr, rec, task }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type EchoBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(
    req: http::Request<hyper::body::Incoming>,
    conn: usize,
    rec: &Recorder,
    opts: &EchoOptions,
) -> http::Response<EchoBody> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    let recorded = RecordedRequest {
        conn,
        method: parts.method.as_str().to_string(),
        path: path.clone(),
        authority: parts.uri.authority().map(|a| a.as_str().to_string()),
        version: parts.version,
        headers: crate::client::header_list(&parts.headers),
        body,
    };
    let text = opts.body.clone().unwrap_or_else(|| echo_body(&recorded));
    rec.push(recorded);
    let wait = opts.delay + sleep_from_path(&path).unwrap_or_default();
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    let mut b = http::Response::builder().status(status_from_path(&path));

    if !opts.server.is_empty() {
        b = b.header("server", opts.server.as_str());
    }
    b = b.header("content-type", "text/plain");
    let status = status_from_path(&path);
    // 1xx, 204 and 304 carry no body (and 204 no content-length).
    let bodiless = status < 200 || status == 204 || status == 304;
    let text = if bodiless { String::new() } else { text };
    if !opts.chunked && !bodiless {
        b = b.header("content-length", text.len().to_string());
    }
    b = b
        .header("x-upstream", opts.name.as_str())
        .header("connection", "keep-alive")
        .header("keep-alive", "timeout=5");
    for (k, v) in &opts.extra_headers {
        b = b.header(k.as_str(), v.as_str());
    }
    for i in 0..super::extra_headers_from_path(&path) {
        b = b.header(format!("x-h{i}"), "v");
    }
    if path.contains("/underscore/") {
        b = b.header("x_under", "1");
    }
    let body: EchoBody = if opts.chunked && !bodiless {
        // Two frames and no length: hyper sends the body chunked.
        let bytes = Bytes::from(text);
        let mid = bytes.len() / 2;
        Chunks(vec![bytes.slice(mid..), bytes.slice(..mid)]).boxed()
    } else {
        Full::new(Bytes::from(text)).boxed()
    };
    b.body(body).expect("valid response")
}

/// A body of several data frames with no declared length (popped from the back).
struct Chunks(Vec<Bytes>);

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop().map(|b| Ok(Frame::data(b))))
    }
}
