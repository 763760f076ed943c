//! Upstream servers written for the tests: they record what the proxy sent them.

pub mod echo;
pub mod h2c;
pub mod tcp;
pub mod ws;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use echo::{EchoOptions, EchoUpstream};
pub use h2c::{H2Options, H2Upstream};
pub use tcp::{stalled_upstream, TcpMode, TcpUpstream};
pub use ws::WsUpstream;

/// One request as an upstream received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Which accepted connection carried it (0, 1, … in accept order).
    pub conn: usize,
    /// Method.
    pub method: String,
    /// Path and query as received (`/a?b=c`).
    pub path: String,
    /// `:authority` (HTTP/2) or the authority of an absolute-form URI, if any.
    pub authority: Option<String>,
    /// Protocol version.
    pub version: http::Version,
    /// Header names (lowercase) and values in the order received (repeated names grouped).
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Bytes,
}

impl RecordedRequest {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All values of header `name`.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// True when the request carries header `name`.
    pub fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    /// The header names, in order.
    pub fn header_names(&self) -> Vec<&str> {
        self.headers.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// A shared, append-only record of what an upstream saw.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    connections: Arc<Mutex<usize>>,
}

impl Recorder {
    pub(crate) fn push(&self, r: RecordedRequest) {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(r);
    }

    pub(crate) fn next_conn(&self) -> usize {
        let mut n = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        let id = *n;
        *n += 1;
        id
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The number of connections accepted so far.
    pub fn connections(&self) -> usize {
        *self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last request received; panics if there is none.
    pub fn last(&self) -> RecordedRequest {
        self.requests()
            .pop()
            .expect("the upstream has not received any request")
    }

    /// Waits until at least `n` requests arrived, and returns them.
    pub async fn wait_requests(&self, n: usize, limit: Duration) -> Vec<RecordedRequest> {
        let deadline = Instant::now() + limit;
        loop {
            let r = self.requests();
            if r.len() >= n {
                return r;
            }
            if Instant::now() > deadline {
                panic!(
                    "upstream received {} request(s), expected at least {n} within {limit:?}",
                    r.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Parses `/status/NNN` anywhere in a path (the echo's status selector).
pub fn status_from_path(path: &str) -> u16 {
    path.find("/status/")
        .map(|i| &path[i + 8..])
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_digit())
                .collect::<String>()
        })
        .and_then(|d| d.parse().ok())
        .filter(|c| (100..600).contains(c))
        .unwrap_or(200)
}

/// `/headers/N` in a path: the response carries N more headers (`x-h0` … `x-h<N-1>`);
/// `/underscore/` adds `x_under: 1`.
pub fn extra_headers_from_path(path: &str) -> usize {
    path.find("/headers/")
        .map(|i| &path[i + 9..])
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_digit())
                .collect::<String>()
        })
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}

/// Parses `sleep=MS` from a query (milliseconds the upstream waits before answering).
pub fn sleep_from_path(path: &str) -> Option<Duration> {
    let q = path.split_once('?')?.1;
    q.split('&')
        .find_map(|kv| kv.strip_prefix("sleep="))
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis)
}

/// The echo body: the request line and headers as received, like the reference's `echo.py`.
pub fn echo_body(r: &RecordedRequest) -> String {
    let version = match r.version {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        _ => "HTTP/1.1",
    };
    let mut s = format!("{} {} {}\n", r.method, r.path, version);
    for (k, v) in &r.headers {
        s.push_str(&format!("{k}: {v}\n"));
    }
    s
}
