//! Listener filters: they run in `listener_filters` order on each accepted socket, before a filter
//! chain is chosen. A filter may look at the first bytes without taking them (`Peek`), change the
//! socket's addresses or what the chain match sees, and stop the connection.
//! `listener_filters_timeout` bounds the filters that wait for bytes.

pub mod http_inspector;
pub mod original_dst;
pub mod peek;
pub mod proxy_protocol;
pub mod tls_inspector;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::config::model;
use crate::stats::{Counter, Gauge, Shard};

pub use peek::Peek;

/// An accepted connection's bytes: a TCP socket, or an in-memory connection to an internal
/// listener.
#[derive(Debug)]
pub enum Socket {
    Tcp(TcpStream),
    Internal(crate::io::Internal),
}

/// An accepted socket as the listener filters and the filter chain match see it: Envoy's
/// `ConnectionSocket`.
#[derive(Debug)]
pub struct Accepted {
    /// The connection.
    pub stream: Socket,
    /// What the cluster that opened an internal connection passed through
    /// (`internal_upstream`'s `passthrough_metadata`): the connection's dynamic metadata.
    pub metadata: Option<Arc<crate::config::metadata::Metadata>>,
    /// The filter state objects the connecting stream shared with an internal connection.
    pub shared: Option<Arc<crate::config::filter_state::FilterState>>,
    /// The downstream remote address: the peer, or the source a PROXY header carried.
    pub remote: SocketAddr,
    /// The peer the connection really comes from (`direct_source_prefix_ranges`).
    pub direct_remote: SocketAddr,
    /// The local address: the socket's, its original destination, or a PROXY header's.
    pub local: SocketAddr,
    /// PROXY protocol v2 TLVs kept by `pass_through_tlvs`.
    pub tlvs: Vec<(u8, Box<[u8]>)>,
    /// The requested server name (SNI), from the tls_inspector.
    pub server_name: Option<Box<str>>,
    /// The detected transport protocol.
    pub transport_protocol: TransportProtocol,
    /// The requested application protocols (ALPN, or what the http_inspector saw).
    pub application_protocols: ApplicationProtocols,
}

/// The transport protocol a listener filter detected: `raw_buffer` unless one says otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TransportProtocol {
    /// `raw_buffer`.
    #[default]
    RawBuffer,
    /// `tls`: a ClientHello was seen.
    Tls,
}

impl TransportProtocol {
    /// The name `filter_chain_match.transport_protocol` compares with.
    pub fn name(self) -> &'static str {
        match self {
            TransportProtocol::RawBuffer => "raw_buffer",
            TransportProtocol::Tls => "tls",
        }
    }
}

pub use crate::listener::filter_chain_match::ApplicationProtocols;

impl Accepted {
    /// A socket as accepted.
    pub fn new(stream: Socket, remote: SocketAddr, local: SocketAddr) -> Self {
        Accepted {
            stream,
            metadata: None,
            shared: None,
            remote,
            direct_remote: remote,
            local,
            tlvs: Vec::new(),
            server_name: None,
            transport_protocol: TransportProtocol::RawBuffer,
            application_protocols: ApplicationProtocols::None,
        }
    }
}

/// What a filter decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// On to the next filter.
    Continue,
    /// Close the connection (a reset, if bytes are left unread).
    Close,
    /// The peer closed (or half-closed) while the filter waited: close.
    PeerClosed,
    /// Reading failed: close.
    ReadError,
}

impl Status {
    /// The status for a failed read.
    pub fn from_io(e: &std::io::Error) -> Status {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Status::PeerClosed
        } else {
            Status::ReadError
        }
    }
}

/// One listener filter on one worker.
#[derive(Debug)]
enum Filter {
    OriginalDst,
    ProxyProtocol(proxy_protocol::ProxyProtocol),
    TlsInspector(tls_inspector::TlsInspector),
    HttpInspector(http_inspector::HttpInspector),
}

/// The listener filters of one listener on one worker.
#[derive(Debug)]
pub struct Chain {
    filters: Vec<Filter>,
    /// Each filter's `filter_disabled` (empty: none has one).
    disabled: Vec<Option<model::ListenerPredicate>>,
    /// Some filter waits for bytes, so the timeout applies.
    reads: bool,
    timeout: Option<Duration>,
    continue_on_timeout: bool,
    pre_cx_timeout: Counter,
    pre_cx_active: Gauge,
    remote_close: Counter,
    error: Counter,
}

impl Chain {
    /// The filters of `l` for one worker; `scope` is the listener's stat scope.
    pub fn new(l: &model::Listener, shard: &Arc<Shard>, scope: &str) -> Self {
        let mut chain = Self::with(
            &l.listener_filters,
            l.listener_filters_timeout,
            l.continue_on_listener_filters_timeout,
            shard,
            scope,
        );
        chain.disabled = l.listener_filters_disabled.clone();
        chain
    }

    /// Whether filter `i` is skipped for a connection to `local`.
    fn skipped(&self, i: usize, local: SocketAddr) -> bool {
        self.disabled
            .get(i)
            .and_then(Option::as_ref)
            .is_some_and(|p| p.matches(local.port()))
    }

    /// `listener_filters` with their timeout settings, for one worker.
    pub fn with(
        config: &[model::ListenerFilter],
        timeout: Option<Duration>,
        continue_on_timeout: bool,
        shard: &Arc<Shard>,
        scope: &str,
    ) -> Self {
        let filters = config
            .iter()
            .map(|f| match f {
                model::ListenerFilter::OriginalDst => Filter::OriginalDst,
                model::ListenerFilter::ProxyProtocol(p) => {
                    Filter::ProxyProtocol(proxy_protocol::ProxyProtocol::new(p, shard))
                }
                model::ListenerFilter::HttpInspector => {
                    Filter::HttpInspector(http_inspector::HttpInspector::new(shard))
                }
                model::ListenerFilter::TlsInspector(t) => {
                    Filter::TlsInspector(tls_inspector::TlsInspector::new(t, shard))
                }
            })
            .collect();
        Chain {
            filters,
            disabled: Vec::new(),
            reads: config.iter().any(|f| f.needs_bytes()),
            timeout,
            continue_on_timeout,
            pre_cx_timeout: shard.counter(&format!("{scope}downstream_pre_cx_timeout")),
            pre_cx_active: shard.gauge(&format!("{scope}downstream_pre_cx_active")),
            remote_close: shard.counter(&format!("{scope}downstream_listener_filter_remote_close")),
            error: shard.counter(&format!("{scope}downstream_listener_filter_error")),
        }
    }

    /// No filters: nothing to run.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Runs the filters; false when the connection must close.
    pub async fn run(&self, sock: &mut Accepted) -> bool {
        if !self.reads {
            // Nothing can stall: no timer, no buffer.
            for (i, f) in self.filters.iter().enumerate() {
                if let Filter::OriginalDst = f {
                    if !self.skipped(i, sock.local) {
                        original_dst::on_accept(sock);
                    }
                }
            }
            return true;
        }
        self.pre_cx_active.inc();
        let mut peek = Peek::default();
        let go_on = match self.timeout {
            None => self.run_all(sock, &mut peek).await,
            Some(t) => match tokio::time::timeout(t, self.run_all(sock, &mut peek)).await {
                Ok(go_on) => go_on,
                Err(_) => {
                    // The filters still waiting are skipped; what ran so far stays.
                    self.pre_cx_timeout.inc();
                    self.continue_on_timeout
                }
            },
        };
        self.pre_cx_active.dec();
        go_on
    }

    async fn run_all(&self, sock: &mut Accepted, peek: &mut Peek) -> bool {
        for (i, f) in self.filters.iter().enumerate() {
            // filter_disabled looks at the local address as the filters before left it.
            if self.skipped(i, sock.local) {
                continue;
            }
            let status = match f {
                Filter::OriginalDst => {
                    original_dst::on_accept(sock);
                    Status::Continue
                }
                Filter::ProxyProtocol(p) => p.on_accept(sock, peek).await,
                Filter::TlsInspector(t) => t.on_accept(sock, peek).await,
                Filter::HttpInspector(h) => h.on_accept(sock, peek).await,
            };
            match status {
                Status::Continue => {}
                Status::Close => return false,
                Status::PeerClosed => {
                    self.remote_close.inc();
                    return false;
                }
                Status::ReadError => {
                    self.error.inc();
                    return false;
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn accepted() -> (TcpStream, Accepted) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (s, remote) = l.accept().await.expect("accept");
        let local = s.local_addr().expect("local");
        (c, Accepted::new(Socket::Tcp(s), remote, local))
    }

    fn pp_chain(timeout: Option<Duration>, go_on: bool, shard: &Arc<Shard>) -> Chain {
        let pp = model::ProxyProtocol {
            stat_prefix: String::new(),
            allow_without: false,
            allow_v1: true,
            allow_v2: true,
            pass_through_tlvs: model::TlvSet::default(),
        };
        let filters = [model::ListenerFilter::ProxyProtocol(Arc::new(pp))];
        Chain::with(&filters, timeout, go_on, shard, "listener.l.")
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_closes_or_continues() {
        let store = crate::stats::Store::new(1);
        let shard = store.worker(0);
        for go_on in [false, true] {
            let chain = pp_chain(Some(Duration::from_secs(15)), go_on, shard);
            let (_client, mut sock) = accepted().await;
            let started = tokio::time::Instant::now();
            assert_eq!(chain.run(&mut sock).await, go_on);
            assert_eq!(started.elapsed(), Duration::from_secs(15));
        }
        assert_eq!(
            chain_stat(&store, "listener.l.downstream_pre_cx_timeout"),
            2
        );
        assert_eq!(chain_stat(&store, "listener.l.downstream_pre_cx_active"), 0);
    }

    #[tokio::test]
    async fn header_restores_addresses_and_later_bytes_stay() {
        let store = crate::stats::Store::new(1);
        let chain = pp_chain(None, false, store.worker(0));
        let (mut client, mut sock) = accepted().await;
        client
            .write_all(b"PROXY TCP4 10.1.2.3 192.0.2.1 1111 2222\r\npayload")
            .await
            .expect("write");
        assert!(chain.run(&mut sock).await);
        assert_eq!(sock.remote, "10.1.2.3:1111".parse().expect("addr"));
        assert_eq!(sock.local, "192.0.2.1:2222".parse().expect("addr"));
        assert_ne!(sock.direct_remote, sock.remote);
        let mut rest = [0u8; 7];
        let Socket::Tcp(stream) = &mut sock.stream else {
            panic!("a TCP socket")
        };
        tokio::io::AsyncReadExt::read_exact(stream, &mut rest)
            .await
            .expect("payload");
        assert_eq!(&rest, b"payload");
    }

    fn chain_stat(store: &crate::stats::Store, name: &str) -> i64 {
        match store.snapshot().get(name) {
            Some(crate::stats::StatValue::Counter(v)) => *v as i64,
            Some(crate::stats::StatValue::Gauge(v)) => *v,
            other => panic!("{name}: {other:?}"),
        }
    }
}
