//! TLS with rustls, as Envoy's `envoy.transport_sockets.tls`: the validated settings of a
//! `DownstreamTlsContext` or `UpstreamTlsContext` ([`DownstreamTls`], [`UpstreamTls`]), the
//! rustls configurations built from them ([`context`]), and certificate and SAN checks
//! ([`verify`]).
//!
//! What rustls cannot do is refused when the configuration is translated, naming the field:
//! TLS 1.0 and 1.1, and cipher suites or curves outside rustls' set.

pub mod certs;
pub mod context;
pub mod verify;

use std::path::{Path, PathBuf};

use crate::model::StringMatch;

/// Where PEM bytes come from (`envoy.config.core.v3.DataSource`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// `filename`: read when the configuration is built, and again when the file changes.
    File(PathBuf),
    /// `inline_bytes` or `inline_string`.
    Inline(Vec<u8>),
}

impl DataSource {
    /// The bytes, read now.
    pub fn read(&self) -> Result<Vec<u8>, TlsError> {
        match self {
            DataSource::File(p) => std::fs::read(p).map_err(|e| TlsError::Read {
                path: p.clone(),
                error: e.to_string(),
            }),
            DataSource::Inline(b) => Ok(b.clone()),
        }
    }

    /// The file, for sources that are one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            DataSource::File(p) => Some(p),
            DataSource::Inline(_) => None,
        }
    }
}

/// A certificate chain and its private key (`TlsCertificate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateConfig {
    /// `certificate_chain`: the leaf first, then intermediates.
    pub chain: DataSource,
    /// `private_key`.
    pub key: DataSource,
}

/// A TLS protocol version rustls implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    Tls12,
    Tls13,
}

/// `tls_params`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// `tls_minimum_protocol_version` (Envoy's default: TLS 1.2).
    pub min: Version,
    /// `tls_maximum_protocol_version` (Envoy's default: TLS 1.3).
    pub max: Version,
    /// `cipher_suites` (TLS 1.2 suites, in OpenSSL's names); empty: rustls' defaults.
    pub cipher_suites: Vec<String>,
    /// `ecdh_curves` (`X25519`, `P-256`, `P-384`); empty: rustls' defaults.
    pub curves: Vec<String>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            min: Version::Tls12,
            max: Version::Tls13,
            cipher_suites: Vec::new(),
            curves: Vec::new(),
        }
    }
}

/// The kind of name a [`SanMatcher`] looks at (`SubjectAltNameMatcher.san_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanType {
    Dns,
    Uri,
    Email,
    IpAddress,
}

/// One entry of `match_typed_subject_alt_names`: the peer's certificate must carry a name of
/// this kind that matches.
#[derive(Debug, Clone, PartialEq)]
pub struct SanMatcher {
    pub san_type: SanType,
    pub matcher: StringMatch,
}

/// `validation_context`: how the peer's certificate is checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Validation {
    /// `trusted_ca`: the peer's chain must lead to one of these (PEM, several allowed).
    pub trusted_ca: Option<DataSource>,
    /// `match_typed_subject_alt_names`: one of them must match (none: any name).
    pub san_matchers: Vec<SanMatcher>,
}

/// A listener filter chain's `DownstreamTlsContext`.
#[derive(Debug, Clone, PartialEq)]
pub struct DownstreamTls {
    /// `tls_certificates`; with several, the one whose names match the client's SNI is used,
    /// else the first.
    pub certificates: Vec<CertificateConfig>,
    pub params: Params,
    /// `alpn_protocols`, in preference order.
    pub alpn: Vec<String>,
    pub validation: Option<Validation>,
    /// `require_client_certificate`.
    pub require_client_certificate: bool,
    /// `disable_stateless_session_resumption`: no session tickets, so TLS 1.2 resumes by
    /// session id only and TLS 1.3 does not resume (as BoringSSL without tickets).
    pub no_tickets: bool,
    /// `disable_stateful_session_resumption`: no server-side session cache, so no session-id
    /// resumption (TLS 1.2).
    pub no_session_cache: bool,
    /// An SDS secret it needs has not arrived: every handshake fails until it does (the
    /// listener warms meanwhile, as in Envoy).
    pub pending: bool,
}

impl DownstreamTls {
    /// The files its configuration is read from, to follow.
    pub fn files(&self) -> Vec<PathBuf> {
        files(self.certificates.iter(), self.validation.as_ref())
    }
}

/// A cluster's `UpstreamTlsContext`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpstreamTls {
    /// `tls_certificates[0]`: the client certificate for mTLS.
    pub client_certificate: Option<CertificateConfig>,
    pub params: Params,
    /// `alpn_protocols`.
    pub alpn: Vec<String>,
    /// Without it the server's certificate is not checked at all, as in Envoy.
    pub validation: Option<Validation>,
    /// `sni`.
    pub sni: Option<String>,
    /// The cluster's `auto_san_validation`: the server's certificate must also be valid for
    /// the SNI sent.
    pub check_sni: bool,
    /// `auto_host_sni`: a host with a hostname (its endpoint's, or the name a DNS cluster
    /// resolved) is sent that name as the SNI.
    pub auto_host_sni: bool,
    /// `auto_sni_san_validation`: when an SNI is sent, the certificate must be valid for it,
    /// in place of the SAN matchers.
    pub sni_replaces_sans: bool,
    /// An SDS secret it needs has not arrived: no server is trusted until it does.
    pub pending: bool,
}

impl UpstreamTls {
    /// The files its configuration is read from, to follow.
    pub fn files(&self) -> Vec<PathBuf> {
        files(self.client_certificate.iter(), self.validation.as_ref())
    }
}

/// The files of some certificates and a validation context.
fn files<'a>(
    certs: impl Iterator<Item = &'a CertificateConfig>,
    validation: Option<&Validation>,
) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = Vec::new();
    for c in certs {
        files.extend(c.chain.path().map(PathBuf::from));
        files.extend(c.key.path().map(PathBuf::from));
    }
    if let Some(ca) = validation.and_then(|v| v.trusted_ca.as_ref()) {
        files.extend(ca.path().map(PathBuf::from));
    }
    files
}

/// Why a TLS configuration could not be built.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TlsError {
    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: String },
    #[error("no PEM certificate found")]
    NoCertificate,
    #[error("no PEM private key found")]
    NoKey,
    #[error("bad PEM data: {0}")]
    Pem(String),
    #[error("the private key cannot be used: {0}")]
    Key(String),
    #[error("the private key does not match the certificate")]
    KeyMismatch,
    #[error("bad certificate: {0}")]
    Certificate(String),
    #[error("unsupported cipher suite '{0}' (rustls implements only AEAD suites with ECDHE)")]
    CipherSuite(String),
    #[error("unsupported curve '{0}' (rustls implements X25519, P-256 and P-384)")]
    Curve(String),
    #[error("{0}")]
    Rustls(String),
    /// An error in one field of the TLS context, `field` relative to the context
    /// (`tls_certificates[0].private_key`).
    #[error("{field}: {error}")]
    At { field: String, error: Box<TlsError> },
}

impl TlsError {
    /// This error, placed in `field` (outer fields come first in the path).
    pub fn at(self, field: &str) -> TlsError {
        match self {
            TlsError::At {
                field: inner,
                error,
            } => TlsError::At {
                field: format!("{field}.{inner}"),
                error,
            },
            error => TlsError::At {
                field: field.to_string(),
                error: Box::new(error),
            },
        }
    }

    /// The field the error is in, if known, and the error itself.
    pub fn split(&self) -> (Option<&str>, &TlsError) {
        match self {
            TlsError::At { field, error } => (Some(field), error),
            e => (None, e),
        }
    }
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        TlsError::Rustls(e.to_string())
    }
}
