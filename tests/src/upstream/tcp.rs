//! Raw TCP upstream with half-close support.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How the TCP upstream treats a connection.
#[derive(Debug, Clone)]
pub enum TcpMode {
    /// Echo every byte; when the client half-closes, finish echoing and half-close too.
    Echo,
    /// Send `greeting`, half-close at once, then keep reading until the client closes.
    /// Checks that data still flows client → upstream after the upstream closed its side.
    GreetThenHalfClose(Vec<u8>),
    /// Read the first bytes (e.g. a request head), then close without answering.
    ReadThenClose,
    /// Accept and read nothing for this long, then close (a stalled upstream: backpressure).
    Stall(std::time::Duration),
    /// Read the first bytes, write this reply, then close (e.g. a garbage HTTP response).
    ReadThenReply(Vec<u8>),
    /// Read a request head, write this reply, then echo (what came with the head, and then as
    /// `Echo` does: a CONNECT's target).
    ReplyThenEcho(Vec<u8>),
}

/// What one upstream connection received, once it ended.
#[derive(Debug, Clone)]
pub struct TcpRecord {
    /// All bytes received from the proxy.
    pub received: Vec<u8>,
    /// True when the proxy half-closed (EOF seen) rather than reset.
    pub saw_eof: bool,
}

/// A running raw TCP upstream on 127.0.0.1.
pub struct TcpUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    accepted: Arc<Mutex<usize>>,
    finished: Arc<Mutex<Vec<TcpRecord>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpUpstream {
    /// Starts a TCP upstream in `mode`.
    pub async fn start(mode: TcpMode) -> TcpUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind tcp upstream");
        let addr = listener.local_addr().expect("local addr");
        let accepted = Arc::new(Mutex::new(0usize));
        let finished = Arc::new(Mutex::new(Vec::new()));
        let (acc2, fin2) = (accepted.clone(), finished.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                *acc2.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                let fin = fin2.clone();
                let mode = mode.clone();
                tokio::spawn(async move {
                    let mut received = Vec::new();
                    let mut buf = [0u8; 16384];
                    let mut saw_eof = false;
                    match &mode {
                        TcpMode::GreetThenHalfClose(greeting) => {
                            let _ = s.write_all(greeting).await;
                            let _ = s.shutdown().await;
                        }
                        TcpMode::ReadThenClose | TcpMode::ReadThenReply(_) => {
                            // Up to the end of a request head when one arrives in pieces
                            // (a PROXY header may come in its own segment).
                            loop {
                                let n = s.read(&mut buf).await.unwrap_or(0);
                                received.extend_from_slice(&buf[..n]);
                                let head_done = received.windows(4).any(|w| w == b"\r\n\r\n");
                                if n == 0 || head_done || !received.starts_with(b"PROXY ") {
                                    break;
                                }
                            }
                            if let TcpMode::ReadThenReply(reply) = &mode {
                                let _ = s.write_all(reply).await;
                            }
                            drop(s);
                            fin.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(TcpRecord {
                                    received,
                                    saw_eof: false,
                                });
                            return;
                        }
                        TcpMode::Stall(d) => {
                            tokio::time::sleep(*d).await;
                            return;
                        }
                        TcpMode::ReplyThenEcho(reply) => {
                            let end = loop {
                                if let Some(i) = received.windows(4).position(|w| w == b"\r\n\r\n")
                                {
                                    break i + 4;
                                }
                                match s.read(&mut buf).await {
                                    Ok(n) if n > 0 => received.extend_from_slice(&buf[..n]),
                                    _ => break received.len(),
                                }
                            };
                            // Bytes that came with the head are the tunnel's first.
                            let mut out = reply.clone();
                            out.extend_from_slice(&received[end..]);
                            let _ = s.write_all(&out).await;
                        }
                        TcpMode::Echo => {}
                    }
                    let echo = matches!(mode, TcpMode::Echo | TcpMode::ReplyThenEcho(_));
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) => {
                                saw_eof = true;
                                break;
                            }
                            Ok(n) => {
                                received.extend_from_slice(&buf[..n]);
                                if echo && s.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                            Err(_) => break,
                        }
                    }
                    if echo {
                        let _ = s.shutdown().await;
                    }
                    fin.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(TcpRecord { received, saw_eof });
                });
            }
        });
        TcpUpstream {
            addr,
            accepted,
            finished,
            task,
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        *self.accepted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections that ended, with what they received.
    pub fn finished(&self) -> Vec<TcpRecord> {
        self.finished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until `n` connections ended.
    pub async fn wait_finished(&self, n: usize, limit: Duration) -> Vec<TcpRecord> {
        let deadline = Instant::now() + limit;
        loop {
            let f = self.finished();
            if f.len() >= n {
                return f;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} upstream TCP connection(s) ended, expected {n} within {limit:?}",
                    f.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for TcpUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An upstream that accepts connections and never reads from them (with this receive buffer
/// size when given, so that little of what is sent to it fits in the kernel): uploads to it
/// stall in the proxy. Its port, and the task that holds the connections.
pub async fn stalled_upstream(recv_buffer: Option<u32>) -> (u16, tokio::task::JoinHandle<()>) {
    let s = tokio::net::TcpSocket::new_v4().expect("socket");
    if let Some(size) = recv_buffer {
        s.set_recv_buffer_size(size).expect("SO_RCVBUF");
    }
    s.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let l = s.listen(16).expect("listen");
    let port = l.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (port, task)
}
