//! Port allocation: free ports outside the kernel's ephemeral range, never the same one twice
//! in a run.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr, TcpListener};
use std::sync::Mutex;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

fn remember(port: u16) -> bool {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    guard.get_or_insert_with(HashSet::new).insert(port)
}

/// The kernel's ephemeral port range (`ip_local_port_range`), where outgoing connections take
/// their source ports.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// A port that is free on 127.0.0.1, taken from just below the ephemeral range: a port the
/// kernel handed out for `:0` could be taken as the source port of some connection before the
/// proxy under test binds it, which with many connections per test happened now and then.
/// Each test process starts at its own offset, and checks that the port binds.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, _) = ephemeral_range();
    let base = u32::from(low.saturating_sub(12_000).max(1024));
    let span = u32::from(low).saturating_sub(base).max(1);
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span.min(4000) {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = (base + offset) as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() && remember(port) {
            return port;
        }
    }
    // No room below the ephemeral range: let the kernel choose.
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
