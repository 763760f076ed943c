//! h2c (prior knowledge) upstream on the `h2` crate: settable SETTINGS_MAX_CONCURRENT_STREAMS,
//! GOAWAY after N streams, delayed responses.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpListener;

use super::{echo_body, sleep_from_path, status_from_path, RecordedRequest, Recorder};

/// How the h2c upstream behaves.
#[derive(Debug, Clone)]
pub struct H2Options {
    /// The value of the `x-upstream` response header.
    pub name: String,
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised to the proxy (None: unlimited).
    pub max_concurrent_streams: Option<u32>,
    /// Send GOAWAY (graceful: streams already accepted finish) once a connection accepted this
    /// many streams.
    pub goaway_after: Option<usize>,
    /// Wait this long before answering every request (`?sleep=MS` adds to it).
    pub delay: Duration,
}

impl H2Options {
    /// Defaults, named `name`.
    pub fn named(name: &str) -> H2Options {
        H2Options {
            name: name.to_string(),
            max_concurrent_streams: None,
            goaway_after: None,
            delay: Duration::ZERO,
        }
    }
}

/// A running h2c upstream on 127.0.0.1.
pub struct H2Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it received.
    pub rec: Recorder,
    max_seen: Arc<AtomicUsize>,
    goaways: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl H2Upstream {
    /// Starts an h2c upstream named `name` with default options.
    pub async fn start(name: &str) -> H2Upstream {
        Self::with_options(H2Options::named(name)).await
    }

    /// Starts an h2c upstream with `opts`.
    pub async fn with_options(opts: H2Options) -> H2Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind h2 upstream");
        let addr = listener.local_addr().expect("local addr");
        let rec = Recorder::default();
        let max_seen = Arc::new(AtomicUsize::new(0));
        let goaways = Arc::new(AtomicUsize::new(0));
        let (rec2, max2, goaways2) = (rec.clone(), max_seen.clone(), goaways.clone());
        let opts = Arc::new(opts);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let conn_id = rec2.next_conn();
                let (rec, max_seen, goaways, opts) =
                    (rec2.clone(), max2.clone(), goaways2.clone(), opts.clone());
                tokio::spawn(async move {
                    serve_conn(stream, conn_id, rec, max_seen, goaways, opts).await;
                });
            }
        });
        H2Upstream {
            addr,
            rec,
            max_seen,
            goaways,
            task,
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The most streams that were ever active at once on one connection.
    pub fn max_concurrent_seen(&self) -> usize {
        self.max_seen.load(Ordering::SeqCst)
    }

    /// How many connections it sent GOAWAY on.
    pub fn goaways_sent(&self) -> usize {
        self.goaways.load(Ordering::SeqCst)
    }
}

impl Drop for H2Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_conn(
    stream: tokio::net::TcpStream,
    conn_id: usize,
    rec: Recorder,
    max_seen: Arc<AtomicUsize>,
    goaways: Arc<AtomicUsize>,
    opts: Arc<H2Options>,
) {
    let mut builder = h2::server::Builder::new();
    if let Some(n) = opts.max_concurrent_streams {
        builder.max_concurrent_streams(n);
    }
    let Ok(mut conn) = builder.handshake::<_, Bytes>(stream).await else {
        return;
    };
    let active = Arc::new(AtomicUsize::new(0));
    let mut accepted = 0usize;
    let mut shut = false;
    while let Some(next) = conn.accept().await {
        let Ok((req, respond)) = next else {
            break;
        };
        accepted += 1;
        let now = active.fetch_add(1, Ordering::SeqCst) + 1;
        max_seen.fetch_max(now, Ordering::SeqCst);
        let (rec2, opts2, active) = (rec.clone(), opts.clone(), active.clone());
        tokio::spawn(async move {
            handle(req, respond, conn_id, &rec2, &opts2).await;
            active.fetch_sub(1, Ordering::SeqCst);
        });
        if !shut && opts.goaway_after.is_some_and(|n| accepted >= n) {
            shut = true;
            goaways.fetch_add(1, Ordering::SeqCst);
            conn.graceful_shutdown();
        }
    }
}

async fn handle(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    conn: usize,
    rec: &Recorder,
    opts: &H2Options,
) {
    let (parts, mut body) = req.into_parts();
    // A CONNECT, or a POST to `/tunnel…`, is a tunnel: recorded at once, answered 200, and
    // its bytes echoed until the client ends its side.
    if parts.method == http::Method::CONNECT || parts.uri.path().starts_with("/tunnel") {
        rec.push(RecordedRequest {
            conn,
            method: parts.method.as_str().to_string(),
            path: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default(),
            authority: parts.uri.authority().map(|a| a.as_str().to_string()),
            version: parts.version,
            headers: crate::client::header_list(&parts.headers),
            body: Bytes::new(),
        });
        let resp = http::Response::builder()
            .status(200)
            .header("x-upstream", opts.name.as_str())
            .body(())
            .expect("valid response");
        let Ok(mut send) = respond.send_response(resp, false) else {
            return;
        };
        while let Some(Ok(chunk)) = body.data().await {
            let _ = body.flow_control().release_capacity(chunk.len());
            if send.send_data(chunk, false).is_err() {
                return;
            }
        }
        let _ = send.send_data(Bytes::new(), true);
        return;
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else {
            return;
        };
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
    }
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
        body: buf.freeze(),
    };
    let text = echo_body(&recorded);
    rec.push(recorded);
    let wait = opts.delay + sleep_from_path(&path).unwrap_or_default();
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    // A gRPC-like answer (trailers) has no content-length, as gRPC servers send none.
    let with_trailers = path.contains("/grpc-status/");
    let mut resp = http::Response::builder()
        .status(status_from_path(&path))
        .header("server", "h2-test-upstream")
        .header("content-type", "text/plain");
    if !with_trailers {
        resp = resp.header("content-length", text.len().to_string());
    }
    for i in 0..super::extra_headers_from_path(&path) {
        resp = resp.header(format!("x-h{i}"), "v");
    }
    if path.contains("/underscore/") {
        resp = resp.header("x_under", "1");
    }
    let resp = resp
        .header("x-upstream", opts.name.as_str())
        .header(
            "x-upstream-scheme",
            parts.uri.scheme_str().unwrap_or("-").to_string(),
        )
        .body(())
        .expect("valid response");
    if let Ok(mut send) = respond.send_response(resp, false) {
        // `/grpc-status/N` anywhere in the path: the body, then trailers with that status.
        let grpc = path
            .find("/grpc-status/")
            .map(|i| &path[i + 13..])
            .map(|r| {
                r.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
            })
            .filter(|c| !c.is_empty());
        match grpc {
            Some(code) => {
                let _ = send.send_data(Bytes::from(text), false);
                let mut trailers = http::HeaderMap::new();
                if let Ok(v) = code.parse() {
                    trailers.insert("grpc-status", v);
                }
                let _ = send.send_trailers(trailers);
            }
            None => {
                let _ = send.send_data(Bytes::from(text), true);
            }
        }
    }
}
