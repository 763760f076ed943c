//! Clients: hyper (HTTP/1.1 and h2c), raw TCP, and the external programs curl, nghttp and h2load.

use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response as a client saw it.
#[derive(Debug, Clone)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Protocol version.
    pub version: http::Version,
    /// Header names (lowercase) and values, in the order received.
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Bytes,
}

impl Resp {
    /// The first value of header `name` (case-insensitive).
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

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    async fn from_hyper(resp: http::Response<hyper::body::Incoming>) -> Result<Resp, String> {
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("reading response body: {e}"))?
            .to_bytes();
        Ok(Resp {
            status: parts.status.as_u16(),
            version: parts.version,
            headers: header_list(&parts.headers),
            body,
        })
    }
}

/// A header map as a list of (lowercase name, value).
pub fn header_list(map: &http::HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Builds a request with `Host`/authority `host`.
pub fn request(
    method: &str,
    path: &str,
    host: &str,
    body: impl Into<Bytes>,
) -> http::Request<Bytes> {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .body(body.into())
        .expect("valid request")
}

/// A GET of `path` with `Host: host`.
pub fn get(path: &str, host: &str) -> http::Request<Bytes> {
    request("GET", path, host, Bytes::new())
}

fn into_full(req: http::Request<Bytes>) -> http::Request<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    http::Request::from_parts(parts, Full::new(body))
}

/// One HTTP/1.1 request on a fresh connection.
pub async fn http1_once(addr: &str, req: http::Request<Bytes>) -> Result<Resp, String> {
    let mut c = Http1Client::connect(addr).await?;
    c.send(req).await
}

/// An HTTP/1.1 keep-alive connection (hyper).
pub struct Http1Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Http1Client {
    /// Connects to `addr` (`host:port`).
    pub async fn connect(addr: &str) -> Result<Http1Client, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("http1 handshake with {addr}: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Http1Client { sender })
    }

    /// Sends one request and reads the whole response.
    pub async fn send(&mut self, req: http::Request<Bytes>) -> Result<Resp, String> {
        self.sender
            .ready()
            .await
            .map_err(|e| format!("connection not ready: {e}"))?;
        let resp = self
            .sender
            .send_request(into_full(req))
            .await
            .map_err(|e| format!("http1 request: {e}"))?;
        Resp::from_hyper(resp).await
    }

    /// True when the server closed the connection.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

/// An h2c (prior knowledge) connection (hyper); clone it to send concurrent streams.
#[derive(Clone)]
pub struct H2Client {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

impl H2Client {
    /// Connects to `addr` and performs the HTTP/2 handshake without TLS.
    pub async fn connect(addr: &str) -> Result<H2Client, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|e| format!("h2 handshake with {addr}: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(H2Client { sender })
    }

    /// Sends one request. The URI should be absolute (`http://host/path`) to set `:authority`.
    pub async fn send(&self, req: http::Request<Bytes>) -> Result<Resp, String> {
        let mut sender = self.sender.clone();
        sender
            .ready()
            .await
            .map_err(|e| format!("connection not ready: {e}"))?;
        let resp = sender
            .send_request(into_full(req))
            .await
            .map_err(|e| format!("h2 request: {e}"))?;
        Resp::from_hyper(resp).await
    }
}

/// An h2 request with `:authority` = `authority` (h2 carries the host in the URI).
pub fn h2_request(
    method: &str,
    authority: &str,
    path: &str,
    body: impl Into<Bytes>,
) -> http::Request<Bytes> {
    http::Request::builder()
        .method(method)
        .uri(format!("http://{authority}{path}"))
        .version(http::Version::HTTP_2)
        .body(body.into())
        .expect("valid request")
}

/// Bytes read back from a raw TCP exchange.
#[derive(Debug, Clone)]
pub struct RawReply {
    /// Everything read.
    pub data: Vec<u8>,
    /// True when the peer closed the connection (EOF or reset) within the time limit.
    pub closed: bool,
}

impl RawReply {
    /// The bytes as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// The status code of the first response, if any.
    pub fn status(&self) -> Option<u16> {
        let text = self.text();
        let line = text.lines().next()?;
        line.split(' ').nth(1)?.parse().ok()
    }

    /// Status codes of all complete responses in the byte stream (for pipelining).
    pub fn statuses(&self) -> Vec<u16> {
        split_responses(&self.data)
            .iter()
            .map(|r| r.status)
            .collect()
    }

    /// All complete responses in the byte stream, parsed.
    pub fn responses(&self) -> Vec<Resp> {
        split_responses(&self.data)
    }
}

/// Writes `bytes`, then reads until the peer closes or `limit` passes.
pub async fn raw_exchange(addr: &str, bytes: &[u8], limit: Duration) -> RawReply {
    let mut s = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.write_all(bytes).await.expect("write request bytes");
    read_until_close(&mut s, limit).await
}

/// Reads from `s` until EOF/reset or `limit`.
pub async fn read_until_close(s: &mut TcpStream, limit: Duration) -> RawReply {
    let deadline = Instant::now() + limit;
    let mut data = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return RawReply {
                data,
                closed: false,
            };
        }
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return RawReply { data, closed: true },
            Ok(Ok(n)) => data.extend_from_slice(&buf[..n]),
            Err(_) => {
                return RawReply {
                    data,
                    closed: false,
                }
            }
        }
    }
}

/// Reads from `s` until `data` holds `count` complete HTTP/1.1 responses (content-length or
/// chunked framing), EOF, or `limit`.
pub async fn read_responses(s: &mut TcpStream, count: usize, limit: Duration) -> RawReply {
    let deadline = Instant::now() + limit;
    let mut data = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        if count_complete_responses(&data) >= count {
            return RawReply {
                data,
                closed: false,
            };
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return RawReply {
                data,
                closed: false,
            };
        }
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return RawReply { data, closed: true },
            Ok(Ok(n)) => data.extend_from_slice(&buf[..n]),
            Err(_) => {
                return RawReply {
                    data,
                    closed: false,
                }
            }
        }
    }
}

/// Counts complete HTTP/1.x responses in a byte stream (1xx responses count too).
pub fn count_complete_responses(data: &[u8]) -> usize {
    split_responses(data).len()
}

/// Splits a byte stream into complete HTTP/1.x responses (content-length, chunked or, at the
/// end, close-delimited framing). Chunked bodies are decoded (chunk boundaries carry no
/// meaning); the `transfer-encoding` header is kept.
pub fn split_responses(data: &[u8]) -> Vec<Resp> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(end) = find(rest, b"\r\n\r\n") {
        let (_, head) = parse_http_dump(&rest[..end + 4]);
        let head_text = String::from_utf8_lossy(&rest[..end]).to_ascii_lowercase();
        let body_start = end + 4;
        let status = head.status;
        let body_end = if (100..200).contains(&status) || status == 204 || status == 304 {
            body_start
        } else if let Some(cl) = head
            .header("content-length")
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            body_start + cl
        } else if head_text.contains("transfer-encoding: chunked") {
            if rest[body_start..].starts_with(b"0\r\n\r\n") {
                body_start + 5
            } else {
                match find(&rest[body_start..], b"\r\n0\r\n\r\n") {
                    Some(i) => body_start + i + 7,
                    None => return out,
                }
            }
        } else {
            // Delimited by close: whatever follows is its body.
            rest.len()
        };
        if body_end > rest.len() {
            return out;
        }
        let raw = &rest[body_start..body_end];
        let body = if head.header("content-length").is_none()
            && head_text.contains("transfer-encoding: chunked")
        {
            dechunk(raw)
        } else {
            Bytes::copy_from_slice(raw)
        };
        out.push(Resp { body, ..head });
        rest = &rest[body_end..];
    }
    out
}

/// Decodes a chunked body (extensions and trailers dropped).
pub fn dechunk(mut raw: &[u8]) -> Bytes {
    let mut out = Vec::new();
    while let Some(eol) = find(raw, b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..eol]);
        let size_text = size_text
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        let Ok(size) = usize::from_str_radix(&size_text, 16) else {
            break;
        };
        raw = &raw[eol + 2..];
        if size == 0 || raw.len() < size {
            break;
        }
        out.extend_from_slice(&raw[..size]);
        raw = raw.get(size + 2..).unwrap_or_default();
    }
    Bytes::from(out)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The result of a curl run with `-i`.
#[derive(Debug, Clone)]
pub struct CurlReply {
    /// curl's exit code.
    pub code: i32,
    /// Status codes of interim (1xx) responses, in order.
    pub interim: Vec<u16>,
    /// The final response (status 0 when curl got none).
    pub resp: Resp,
    /// curl's stderr (with `-v`, the request it sent).
    pub stderr: String,
}

/// Runs `curl -sS -i <args>` (30 s limit) and parses the final response.
pub async fn curl(args: &[&str]) -> CurlReply {
    crate::require_program("curl", "install curl");
    let mut cmd = tokio::process::Command::new("curl");
    cmd.arg("-sS")
        .arg("-i")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("curl {args:?} did not finish within 30 s"))
        .expect("run curl");
    let (interim, resp) = parse_http_dump(&out.stdout);
    CurlReply {
        code: out.status.code().unwrap_or(-1),
        interim,
        resp,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Like [`curl`], with `stdin` fed to curl (for `--data-binary @-` and `-T -`).
pub async fn curl_with_stdin(args: &[&str], stdin: &[u8]) -> CurlReply {
    crate::require_program("curl", "install curl");
    let mut cmd = tokio::process::Command::new("curl");
    cmd.arg("-sS")
        .arg("-i")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn curl");
    let mut input = child.stdin.take().expect("curl stdin");
    let data = stdin.to_vec();
    tokio::spawn(async move {
        let _ = input.write_all(&data).await;
        let _ = input.shutdown().await;
    });
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("curl {args:?} did not finish within 30 s"))
        .expect("run curl");
    let (interim, resp) = parse_http_dump(&out.stdout);
    CurlReply {
        code: out.status.code().unwrap_or(-1),
        interim,
        resp,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Parses `curl -i` output: 1xx header blocks, then the final head, then the body.
pub fn parse_http_dump(raw: &[u8]) -> (Vec<u16>, Resp) {
    let mut interim = Vec::new();
    let mut rest = raw;
    loop {
        let Some(end) = find(rest, b"\r\n\r\n") else {
            return (
                interim,
                Resp {
                    status: 0,
                    version: http::Version::HTTP_11,
                    headers: Vec::new(),
                    body: Bytes::copy_from_slice(rest),
                },
            );
        };
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.split(' ');
        let version = match parts.next().unwrap_or_default() {
            "HTTP/1.0" => http::Version::HTTP_10,
            "HTTP/2" | "HTTP/2.0" => http::Version::HTTP_2,
            _ => http::Version::HTTP_11,
        };
        let status: u16 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = &rest[end + 4..];
        if (100..200).contains(&status) && body.starts_with(b"HTTP/") {
            interim.push(status);
            rest = body;
            continue;
        }
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        return (
            interim,
            Resp {
                status,
                version,
                headers,
                body: Bytes::copy_from_slice(body),
            },
        );
    }
}

/// The result of an `nghttp -v` run.
#[derive(Debug, Clone)]
pub struct NghttpReply {
    /// nghttp's exit code.
    pub code: i32,
    /// `:status` of the first response.
    pub status: Option<u16>,
    /// Response headers (`recv (stream_id=…) name: value` lines), pseudo-headers included.
    pub headers: Vec<(String, String)>,
    /// Everything nghttp printed.
    pub output: String,
}

/// Runs `nghttp -v <args>` (h2c prior knowledge) with a 30 s limit.
pub async fn nghttp(args: &[&str]) -> NghttpReply {
    crate::require_program(
        "nghttp",
        "install the Debian package nghttp2-client (apt-get install -y nghttp2-client)",
    );
    let mut cmd = tokio::process::Command::new("nghttp");
    cmd.arg("-v")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("nghttp {args:?} did not finish within 30 s"))
        .expect("run nghttp");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut headers = Vec::new();
    for line in output.lines() {
        // "[  0.003] recv (stream_id=1) :status: 200"
        if let Some(idx) = line.find("recv (stream_id=") {
            let rest = &line[idx..];
            if let Some(close) = rest.find(") ") {
                let hv = &rest[close + 2..];
                let split = if let Some(stripped) = hv.strip_prefix(':') {
                    stripped.split_once(": ").map(|(k, v)| (format!(":{k}"), v))
                } else {
                    hv.split_once(": ").map(|(k, v)| (k.to_string(), v))
                };
                if let Some((k, v)) = split {
                    headers.push((k, v.to_string()));
                }
            }
        }
    }
    let status = headers
        .iter()
        .find(|(k, _)| k == ":status")
        .and_then(|(_, v)| v.parse().ok());
    NghttpReply {
        code: out.status.code().unwrap_or(-1),
        status,
        headers,
        output,
    }
}

/// The summary of an h2load run.
#[derive(Debug, Clone)]
pub struct H2loadReply {
    /// Requests that succeeded (2xx/3xx).
    pub succeeded: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Requests that errored.
    pub errored: u64,
    /// 2xx responses.
    pub status_2xx: u64,
    /// Everything h2load printed.
    pub output: String,
}

/// Runs `h2load <args>` with a 60 s limit and parses its summary.
pub async fn h2load(args: &[&str]) -> H2loadReply {
    crate::require_program(
        "h2load",
        "install the Debian package nghttp2-client (apt-get install -y nghttp2-client)",
    );
    let mut cmd = tokio::process::Command::new("h2load");
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("h2load {args:?} did not finish within 60 s"))
        .expect("run h2load");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // "requests: 100 total, 100 started, 100 done, 100 succeeded, 0 failed, 0 errored, 0 timeout"
    // "status codes: 100 2xx, 0 3xx, 0 4xx, 0 5xx"
    let grab = |line_prefix: &str, word: &str| -> u64 {
        output
            .lines()
            .find(|l| l.starts_with(line_prefix))
            .and_then(|l| {
                l.split(',')
                    .find(|part| part.trim().ends_with(word))
                    .and_then(|part| part.split_whitespace().rev().nth(1))
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    };
    H2loadReply {
        succeeded: grab("requests:", "succeeded"),
        failed: grab("requests:", "failed"),
        errored: grab("requests:", "errored"),
        status_2xx: grab("status codes:", "2xx"),
        output,
    }
}

/// What an HTTP/1.1 client saw of one CONNECT.
#[derive(Debug)]
pub struct ConnectSeen {
    /// The response head.
    pub resp: Resp,
    /// What came back through the tunnel.
    pub echo: Vec<u8>,
    /// Whether the connection closed once the client ended its side.
    pub closed: bool,
}

/// A CONNECT to `target` through the proxy on `port` from an HTTP/1.1 client, with `extra`
/// header lines and `early` bytes for the tunnel sent with it, before its reply; after a 200,
/// 18 bytes go through and the client ends its side.
pub async fn connect_h1(port: u16, target: &str, extra: &str, early: &[u8]) -> ConnectSeen {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut req =
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n").into_bytes();
    req.extend_from_slice(early);
    s.write_all(&req).await.expect("write");
    let mut data = Vec::new();
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => data.extend_from_slice(&chunk[..n]),
            _ => panic!("no response head: {:?}", String::from_utf8_lossy(&data)),
        }
    };
    let (_, resp) = parse_http_dump(&data[..head_end]);
    let mut echo = data[head_end..].to_vec();
    if resp.status == 200 {
        s.write_all(b"through the tunnel").await.expect("write");
        while echo.len() < early.len() + 18 {
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(Duration::from_secs(3), s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => echo.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
        let _ = s.shutdown().await;
    }
    let rest = read_until_close(&mut s, Duration::from_secs(3)).await;
    echo.extend_from_slice(&rest.data);
    ConnectSeen {
        resp,
        echo,
        closed: rest.closed,
    }
}

/// An HTTP/2 CONNECT to `authority` through the proxy on `port`: the status, and the echo of
/// the 18 bytes sent through the stream.
pub async fn connect_h2(port: u16, authority: &str, extra: &[(&str, &str)]) -> (u16, Vec<u8>) {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.expect("ready");
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(authority);
    for (name, value) in extra {
        req = req.header(*name, *value);
    }
    let req = req.body(()).expect("request");
    let (resp, mut send) = client.send_request(req, false).expect("send");
    let resp = tokio::time::timeout(Duration::from_secs(3), resp)
        .await
        .expect("a response in time")
        .expect("a response");
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut echo = Vec::new();
    if status == 200 {
        send.send_data("through the stream".into(), false)
            .expect("send");
        while let Ok(Some(Ok(chunk))) =
            tokio::time::timeout(Duration::from_secs(3), body.data()).await
        {
            let _ = body.flow_control().release_capacity(chunk.len());
            echo.extend_from_slice(&chunk);
            if echo.len() >= 18 {
                break;
            }
        }
        let _ = send.send_data(bytes::Bytes::new(), true);
    }
    (status, echo)
}
