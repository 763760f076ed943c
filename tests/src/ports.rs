//! Port allocation: ask the kernel for a free port and never hand the same one out twice in a run.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr, TcpListener};
use std::sync::Mutex;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

fn remember(port: u16) -> bool {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    guard.get_or_insert_with(HashSet::new).insert(port)
}

/// A port that is free on 127.0.0.1 (bind 127.0.0.1:0, read the port, close).
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        drop(listener);
        if remember(port) {
            return port;
        }
    }
    panic!("could not find a free port on 127.0.0.1");
}

/// A port that is free on both 127.0.0.1 and ::1.
pub fn free_port_v6() -> u16 {
    for _ in 0..100 {
        let port = free_port();
        if TcpListener::bind((Ipv6Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("could not find a free port on ::1");
}

/// A port on 127.0.0.1 where nothing listens, so connecting to it is refused.
pub fn refused_port() -> u16 {
    free_port()
}

/// A port on 127.0.0.1 where connection attempts hang (the listener's accept queue is full and
/// nobody accepts), so a client's connect timeout fires. Keep it alive while it is needed.
pub struct Blackhole {
    /// The port.
    pub port: u16,
    _listener: tokio::net::TcpListener,
    _fillers: Vec<tokio::net::TcpStream>,
}

impl Blackhole {
    /// Binds with a zero backlog and fills the accept queue.
    pub async fn start() -> Blackhole {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind((Ipv4Addr::LOCALHOST, 0).into())
            .expect("bind blackhole");
        let listener = socket.listen(0).expect("listen");
        let port = listener.local_addr().expect("local addr").port();
        remember(port);
        let mut fillers = Vec::new();
        for _ in 0..8 {
            let attempt = tokio::time::timeout(
                std::time::Duration::from_millis(200),
                tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)),
            )
            .await;
            match attempt {
                Ok(Ok(s)) => fillers.push(s),
                // The queue is full: connects now hang.
                _ => {
                    return Blackhole {
                        port,
                        _listener: listener,
                        _fillers: fillers,
                    }
                }
            }
        }
        panic!("could not fill the accept queue of a zero-backlog listener");
    }
}
