//! The connection to an xDS server, as Envoy makes it through the source's bootstrap cluster:
//! a TCP address, a Unix socket, or a DNS cluster's name resolved with the cluster's settings
//! at each connection; TLS on top when the cluster has a `transport_socket`, with the
//! cluster's `connect_timeout` over the whole.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::model::{self, DnsLookupFamily, DnsResolverConfig, GrpcTarget, Http2Keepalive};
use crate::tls::UpstreamTls;

/// What a stream needs to reach its server, from the bootstrap cluster it names.
#[derive(Debug, Clone)]
pub struct Peer {
    pub target: GrpcTarget,
    /// The cluster's HTTP/2 `connection_keepalive`.
    pub keepalive: Option<Http2Keepalive>,
    /// The cluster's `transport_socket`.
    pub tls: Option<Arc<UpstreamTls>>,
    /// A DNS cluster's lookup family and resolver.
    pub dns: Option<(DnsLookupFamily, DnsResolverConfig)>,
    /// The cluster's `connect_timeout`.
    pub connect_timeout: Duration,
}

impl Peer {
    /// The peer of a stream through `cluster`, found at `target`.
    pub fn of(target: GrpcTarget, cluster: Option<&model::Cluster>) -> Peer {
        Peer {
            target,
            keepalive: cluster.and_then(|c| c.http2.keepalive),
            tls: cluster.and_then(|c| c.tls.clone()),
            dns: cluster
                .and_then(|c| c.dns.as_ref())
                .map(|d| (d.family, d.resolver.clone())),
            connect_timeout: cluster
                .map(|c| c.connect_timeout)
                .unwrap_or(Duration::from_secs(5)),
        }
    }

    /// The peer of a `google_grpc` service: its target, its TLS, resolv.conf's resolver and
    /// gRPC's 20 s connection deadline.
    pub fn google(g: &model::GoogleGrpc) -> Peer {
        Peer {
            target: g.target.clone(),
            keepalive: None,
            tls: g.ssl.as_ref().map(|s| Arc::new(s.upstream_tls())),
            dns: None,
            connect_timeout: Duration::from_secs(20),
        }
    }

    /// The server's address for messages.
    pub fn shown(&self) -> String {
        match &self.target {
            GrpcTarget::Tcp(a) => a.to_string(),
            GrpcTarget::Unix(p) => p.display().to_string(),
            GrpcTarget::Dns(name, port) => format!("{name}:{port}"),
        }
    }
}

/// A byte stream to the server.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Connects to the server: `alpn` is offered when the cluster's TLS context names no
/// protocol (Envoy's HTTP/2 and HTTP/1.1 clients fall back to `h2` and `http/1.1`).
pub async fn dial(peer: &Peer, alpn: &[u8]) -> Result<Box<dyn Io>, String> {
    let shown = peer.shown();
    match tokio::time::timeout(peer.connect_timeout, dial_inner(peer, alpn)).await {
        Ok(r) => r.map_err(|e| format!("{shown}: {e}")),
        Err(_) => Err(format!("{shown}: connection timed out")),
    }
}

async fn dial_inner(peer: &Peer, alpn: &[u8]) -> Result<Box<dyn Io>, String> {
    let addr = match &peer.target {
        GrpcTarget::Unix(path) => {
            let s = super::unix_connect(path).await.map_err(|e| e.to_string())?;
            return Ok(Box::new(s));
        }
        GrpcTarget::Tcp(addr) => *addr,
        GrpcTarget::Dns(name, port) => {
            let (family, resolver) = peer
                .dns
                .clone()
                .unwrap_or((DnsLookupFamily::V4Preferred, DnsResolverConfig::default()));
            let ips = crate::upstream::dns::resolve_once(name, family, &resolver).await?;
            let ip = ips
                .first()
                .ok_or_else(|| format!("'{name}' resolved to no address"))?;
            std::net::SocketAddr::new(*ip, *port)
        }
    };
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let Some(settings) = &peer.tls else {
        return Ok(Box::new(tcp));
    };
    let tls = crate::tls::transport::client(settings).map_err(|e| e.to_string())?;
    let mut config = tls.config.get();
    if config.alpn_protocols.is_empty() {
        let mut c = (*config).clone();
        c.alpn_protocols = vec![alpn.to_vec()];
        config = Arc::new(c);
    }
    // As for traffic: SNI only when the cluster sets one; rustls sends none for an address.
    let name = tls
        .server_name
        .clone()
        .unwrap_or_else(|| rustls_pki_types::ServerName::IpAddress(addr.ip().into()));
    let s = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    Ok(Box::new(s))
}
