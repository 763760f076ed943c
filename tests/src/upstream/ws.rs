//! A websocket upstream on raw TCP: it records each upgrade request, answers `101 Switching
//! Protocols`, greets with a text frame, then echoes every frame the client sends (unmasked, as a
//! server sends them) and answers a close frame with a close frame before closing.
//!
//! A request whose path contains `/refuse` gets `403` instead, and one whose path contains
//! `/plain` a `200` with a small body, so tests see what a proxy does when the upstream declines.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{RecordedRequest, Recorder};

/// The frame the upstream sends first after its 101.
pub const GREETING: &[u8] = b"\x81\x05hello";

/// A running websocket upstream on 127.0.0.1.
pub struct WsUpstream {
    port: u16,
    /// What it received (one request per upgrade).
    pub rec: Recorder,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsUpstream {
    /// Starts the upstream.
    pub async fn start() -> WsUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind ws");
        let port = listener.local_addr().expect("addr").port();
        let rec = Recorder::default();
        let r = rec.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let conn = r.next_conn();
                tokio::spawn(serve(s, conn, r.clone()));
            }
        });
        WsUpstream { port, rec, task }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

async fn serve(mut s: TcpStream, conn: usize, rec: Recorder) {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    rec.push(RecordedRequest {
        conn,
        method,
        path: path.clone(),
        authority: None,
        version: http::Version::HTTP_11,
        headers,
        body: Bytes::new(),
    });
    if path.contains("/refuse") {
        let _ = s
            .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 7\r\n\r\nrefused")
            .await;
        return;
    }
    if path.contains("/plain") {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-plain: 1\r\n\r\nplain")
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        return;
    }
    let reply = "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nx-ws-upstream: 1\r\n\r\n";
    if s.write_all(reply.as_bytes()).await.is_err() || s.write_all(GREETING).await.is_err() {
        return;
    }
    let mut pending = buf[head_end..].to_vec();
    loop {
        while let Some((frame, len)) = parse_frame(&pending) {
            pending.drain(..len);
            let (opcode, payload) = frame;
            let reply = server_frame(opcode, &payload);
            if s.write_all(&reply).await.is_err() {
                return;
            }
            if opcode == 8 {
                let _ = s.shutdown().await;
                return;
            }
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A complete frame at the start of `b`: (opcode, unmasked payload) and its length.
fn parse_frame(b: &[u8]) -> Option<((u8, Vec<u8>), usize)> {
    if b.len() < 2 {
        return None;
    }
    let opcode = b[0] & 0x0f;
    let masked = b[1] & 0x80 != 0;
    let (len, mut at) = match b[1] & 0x7f {
        126 => (u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize, 4),
        127 => return None,
        n => (n as usize, 2),
    };
    let mask = if masked {
        let m = [
            *b.get(at)?,
            *b.get(at + 1)?,
            *b.get(at + 2)?,
            *b.get(at + 3)?,
        ];
        at += 4;
        Some(m)
    } else {
        None
    };
    if b.len() < at + len {
        return None;
    }
    let mut payload = b[at..at + len].to_vec();
    if let Some(m) = mask {
        for (i, x) in payload.iter_mut().enumerate() {
            *x ^= m[i % 4];
        }
    }
    Some(((opcode, payload), at + len))
}

/// A final, unmasked frame (server to client).
pub fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    push_len(&mut f, payload.len(), 0);
    f.extend_from_slice(payload);
    f
}

/// A final, masked frame (client to server).
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut f = vec![0x80 | opcode];
    push_len(&mut f, payload.len(), 0x80);
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, x)| x ^ mask[i % 4]));
    f
}

fn push_len(f: &mut Vec<u8>, len: usize, mask_bit: u8) {
    if len < 126 {
        f.push(mask_bit | len as u8);
    } else {
        f.push(mask_bit | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}
