//! The rustls configurations in use, attached to the TLS settings of the configuration model
//! ([`DownstreamTls`] of a filter chain, [`UpstreamTls`] of a cluster). Each is built once,
//! follows its certificate files ([`Watched`]) and takes an SDS rotation ([`Rotating`]); every
//! worker shares it.

use std::sync::Arc;

use super::reload::{Rotating, Watched};
use super::{context, DownstreamTls, TlsError, UpstreamTls};
use crate::attached::Attached;

/// A filter chain's TLS.
#[derive(Debug)]
pub struct ServerTransport {
    /// The configuration new handshakes take.
    pub config: Rotating<rustls::ServerConfig>,
}

/// A cluster's TLS.
#[derive(Debug)]
pub struct ClientTransport {
    /// The configuration new connections take.
    pub config: Rotating<rustls::ClientConfig>,
    /// `sni`, parsed once.
    pub server_name: Option<rustls_pki_types::ServerName<'static>>,
}

static SERVERS: Attached<DownstreamTls, ServerTransport> = Attached::new();
static CLIENTS: Attached<UpstreamTls, ClientTransport> = Attached::new();

/// Builds a chain's TLS from its settings (an error names the field at fault).
pub fn build_server(settings: &DownstreamTls) -> Result<ServerTransport, TlsError> {
    let s = settings.clone();
    let config = Watched::new("listener tls", settings.files(), move || {
        context::server(&s)
    })?;
    Ok(ServerTransport {
        config: Rotating::new(config),
    })
}

/// Builds a cluster's TLS from its settings.
pub fn build_client(settings: &UpstreamTls) -> Result<ClientTransport, TlsError> {
    let s = settings.clone();
    let config = Watched::new("cluster tls", settings.files(), move || context::client(&s))?;
    let server_name = settings
        .sni
        .as_ref()
        .and_then(|s| rustls_pki_types::ServerName::try_from(s.clone()).ok());
    Ok(ClientTransport {
        config: Rotating::new(config),
        server_name,
    })
}

/// The TLS of the chain whose settings these are: built by the first caller (the
/// configuration store, when it takes the listener), shared after. Translation built it once
/// already, so an error here means its files changed in between.
pub fn server(settings: &Arc<DownstreamTls>) -> Result<Arc<ServerTransport>, TlsError> {
    SERVERS.get_or_try_insert_with(settings, || build_server(settings))
}

/// The TLS of the cluster whose settings these are (see [`server`]).
pub fn client(settings: &Arc<UpstreamTls>) -> Result<Arc<ClientTransport>, TlsError> {
    CLIENTS.get_or_try_insert_with(settings, || build_client(settings))
}

/// Makes the TLS in force for `old` (a chain's settings) take `fresh` from now on: an SDS
/// secret rotated.
pub fn rotate_server(old: &Arc<DownstreamTls>, fresh: ServerTransport) {
    match server(old) {
        Ok(t) => t.config.rotate_from(&fresh.config),
        Err(_) => drop(SERVERS.get_or_insert_with(old, || fresh)),
    }
}

/// Makes the TLS in force for `old` (a cluster's settings) take `fresh` from now on.
pub fn rotate_client(old: &Arc<UpstreamTls>, fresh: ClientTransport) {
    match client(old) {
        Ok(t) => t.config.rotate_from(&fresh.config),
        Err(_) => drop(CLIENTS.get_or_insert_with(old, || fresh)),
    }
}
