//! A minimal blocking HTTP/1.1 client for talking to a proxy's admin endpoint.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::process::Proc;
use crate::{bail, Error, Result};

/// A response: status code and body.
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// Sends one request with `Connection: close` and reads the whole response.
pub fn request(addr: SocketAddr, method: &str, path: &str) -> Result<Response> {
    let timeout = Duration::from_secs(5);
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Result<Response> {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("incomplete HTTP response ({} bytes)", raw.len());
    };
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| Error(format!("bad status line `{status_line}`")))?
        .parse()?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            bail!("truncated chunked body");
        };
        let size_str = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            bail!("truncated chunked body");
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// Polls `GET /ready` on the admin address until it answers 200, the process exits, or the
/// timeout passes.
pub fn wait_ready(admin: SocketAddr, proc: &mut Proc, timeout: Duration) -> Result {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        proc.check_running()?;
        match request(admin, "GET", "/ready") {
            Ok(r) if r.status == 200 => return Ok(()),
            Ok(r) => last = format!("{} {}", r.status, r.body.trim()),
            Err(e) => last = e.0,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "{} not ready on http://{admin}/ready after {timeout:?} (last: {last})",
        proc.name()
    )
}

/// Asks the proxy to exit with `POST /quitquitquit`; kills it if it has not exited in time.
pub fn quit(admin: SocketAddr, proc: &mut Proc, timeout: Duration) -> Result {
    if proc.exited().is_some() {
        bail!("{} had already exited", proc.name());
    }
    let r = request(admin, "POST", "/quitquitquit");
    match proc.wait_or_kill(timeout) {
        Some(_) => Ok(()),
        None => match r {
            Ok(r) => bail!(
                "{} answered /quitquitquit with {} but did not exit within {timeout:?}; killed it",
                proc.name(),
                r.status
            ),
            Err(e) => bail!(
                "{} did not answer /quitquitquit ({e:?}); killed it",
                proc.name()
            ),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nLIVE").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "LIVE"));
        let r = parse_response(
            b"HTTP/1.1 503 x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (503, "abcde"));
    }
}
