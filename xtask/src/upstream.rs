//! A small HTTP/1.1 echo server for the demos: a thread per connection, keep-alive, and a body
//! that shows what the upstream received (method, path, headers) and from where.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::Result;

/// A running echo server; stops accepting when dropped.
pub struct Upstream {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
}

impl Upstream {
    /// Binds `addr` and serves on background threads.
    pub fn start(addr: SocketAddr) -> Result<Upstream> {
        let listener = TcpListener::bind(addr).map_err(|e| {
            crate::Error(format!(
                "upstream cannot listen on {addr}: {e} (is it in use?)"
            ))
        })?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let (stop2, served2) = (stop.clone(), served.clone());
        thread::Builder::new()
            .name("upstream-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let served = served2.clone();
                    let _ = thread::Builder::new()
                        .name("upstream-conn".into())
                        .spawn(move || {
                            let _ = serve_connection(conn, &served);
                        });
                }
            })?;
        Ok(Upstream { addr, stop, served })
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// One parsed request head.
struct Head {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn keep_alive(&self) -> bool {
        let conn = self.header("connection").unwrap_or("").to_ascii_lowercase();
        if self.version == "HTTP/1.0" {
            conn.contains("keep-alive")
        } else {
            !conn.contains("close")
        }
    }
}

/// `cargo xtask _serve <addr>`: an echo server in the foreground (the demo starts it inside a
/// network namespace). Prints `listening on <addr>` once bound, then serves until killed.
pub fn serve_forever(args: &[String]) -> Result {
    let [addr] = args else {
        crate::bail!("usage: xtask _serve <address:port>");
    };
    let up = Upstream::start(addr.parse()?)?;
    println!("listening on {}", up.addr);
    loop {
        thread::park();
    }
}

/// An address as people write it: `10.0.0.1:80` rather than `[::ffff:10.0.0.1]:80`.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

fn serve_connection(conn: TcpStream, served: &AtomicU64) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let (peer, local) = (canonical(conn.peer_addr()?), canonical(conn.local_addr()?));
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    loop {
        let Some(head) = read_head(&mut reader)? else {
            return Ok(());
        };
        let body_len = read_body(&mut reader, &head)?;
        let mut body = format!("{} {} {}\n", head.method, head.target, head.version);
        for (k, v) in &head.headers {
            body.push_str(&format!("{k}: {v}\n"));
        }
        if body_len > 0 {
            body.push_str(&format!("(request body: {body_len} bytes)\n"));
        }
        body.push_str(&format!("(connection from {peer} to {local})\n"));
        let keep = head.keep_alive();
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nserver: xtask-upstream\r\n{}\r\n{body}",
            body.len(),
            if keep { "" } else { "connection: close\r\n" }
        );
        writer.write_all(resp.as_bytes())?;
        served.fetch_add(1, Ordering::Relaxed);
        if !keep {
            return Ok(());
        }
    }
}

fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<Head>> {
    let mut line = String::new();
    // Tolerate empty lines between requests.
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid("bad request line"));
    };
    let (method, target, version) = (method.to_string(), target.to_string(), version.to_string());
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(invalid("eof in headers"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(Some(Head {
        method,
        target,
        version,
        headers,
    }))
}

/// Reads and discards the request body; returns its length.
fn read_body(r: &mut impl BufRead, head: &Head) -> std::io::Result<u64> {
    let chunked = head
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let mut total = 0u64;
        let mut line = String::new();
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| invalid("bad chunk size"))?;
            if size == 0 {
                // Trailers, then an empty line.
                loop {
                    line.clear();
                    if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        return Ok(total);
                    }
                }
            }
            std::io::copy(&mut r.take(size), &mut std::io::sink())?;
            total += size;
            line.clear();
            r.read_line(&mut line)?;
        }
    }
    let len: u64 = head
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    std::io::copy(&mut r.take(len), &mut std::io::sink())
}

fn invalid(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn echoes_over_keep_alive() {
        let up = Upstream::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut s = TcpStream::connect(up.addr).unwrap();
        for i in 0..2 {
            write!(
                s,
                "POST /p{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            )
            .unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut status = String::new();
            r.read_line(&mut status).unwrap();
            assert!(status.starts_with("HTTP/1.1 200"));
            let mut len = 0;
            loop {
                let mut l = String::new();
                r.read_line(&mut l).unwrap();
                if l.trim().is_empty() {
                    break;
                }
                if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let body = String::from_utf8(body).unwrap();
            assert!(body.starts_with(&format!("POST /p{i} HTTP/1.1\n")));
            assert!(body.contains("(request body: 3 bytes)"));
            let local = s.local_addr().unwrap();
            assert!(body.ends_with(&format!("(connection from {local} to {})\n", up.addr)));
        }
        // The server counts a request after writing its response: wait for the count.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while up.served() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(up.served(), 2);
    }
}
