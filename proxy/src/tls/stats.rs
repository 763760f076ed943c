//! Envoy's `ssl.*` statistics of a listener or a cluster.

use std::cell::RefCell;
use std::sync::Arc;

use rustls::{CertificateError, CommonState, ProtocolVersion};

use crate::stats::{Counter, Shard};

/// `<scope>ssl.*` on one worker.
#[derive(Debug)]
pub struct TlsStats {
    shard: Arc<Shard>,
    prefix: String,
    /// `ssl.handshake`: handshakes completed.
    pub handshake: Counter,
    /// `ssl.connection_error`: handshakes or TLS streams that failed.
    pub connection_error: Counter,
    /// `ssl.no_certificate`: completed handshakes where the peer sent no certificate.
    pub no_certificate: Counter,
    /// `ssl.fail_verify_no_cert`: a required peer certificate was missing.
    pub fail_verify_no_cert: Counter,
    /// `ssl.fail_verify_error`: the peer's chain did not verify.
    pub fail_verify_error: Counter,
    /// `ssl.fail_verify_san`: no subject alternative name matched.
    pub fail_verify_san: Counter,
    /// `ssl.session_reused`: handshakes that resumed a session.
    pub session_reused: Counter,
    /// `ssl.versions.*` and `ssl.ciphers.*`, made on first use and kept: a handshake costs no
    /// name formatting or registry lookup once its version and cipher were seen.
    seen: RefCell<Vec<(Seen, Counter)>>,
}

/// What a lazily made counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Version(ProtocolVersion),
    Cipher(rustls::CipherSuite),
}

impl TlsStats {
    /// The stats under `scope` (`listener.<addr>.` or `cluster.<name>.`).
    pub fn new(shard: Arc<Shard>, scope: &str) -> Self {
        let prefix = format!("{scope}ssl.");
        let c = |n: &str| shard.counter(&format!("{prefix}{n}"));
        TlsStats {
            handshake: c("handshake"),
            connection_error: c("connection_error"),
            no_certificate: c("no_certificate"),
            fail_verify_no_cert: c("fail_verify_no_cert"),
            fail_verify_error: c("fail_verify_error"),
            fail_verify_san: c("fail_verify_san"),
            session_reused: c("session_reused"),
            seen: RefCell::new(Vec::new()),
            prefix,
            shard,
        }
    }

    /// A completed handshake: its version and cipher, and whether the peer had a certificate.
    pub fn completed(&self, conn: &CommonState) {
        self.handshake.inc();
        if conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            self.session_reused.inc();
        }
        if let Some(v) = conn.protocol_version() {
            self.count(Seen::Version(v));
        }
        if let Some(cs) = conn.negotiated_cipher_suite() {
            self.count(Seen::Cipher(cs.suite()));
        }
        if conn.peer_certificates().is_none_or(|c| c.is_empty()) {
            self.no_certificate.inc();
        }
    }

    /// A handshake that failed: a verification failure counts as its kind, anything else as
    /// `connection_error` (as Envoy counts them).
    pub fn failed(&self, e: &std::io::Error) {
        let err = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        match err {
            Some(rustls::Error::NoCertificatesPresented) => self.fail_verify_no_cert.inc(),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => self.fail_verify_san.inc(),
            Some(rustls::Error::InvalidCertificate(_)) => self.fail_verify_error.inc(),
            _ => self.connection_error.inc(),
        }
    }
}

impl TlsStats {
    fn count(&self, what: Seen) {
        let mut seen = self.seen.borrow_mut();
        if let Some((_, c)) = seen.iter().find(|(w, _)| *w == what) {
            c.inc();
            return;
        }
        let name = match what {
            Seen::Version(v) => match version_name(v) {
                Some(n) => format!("{}versions.{n}", self.prefix),
                None => return,
            },
            Seen::Cipher(c) => format!("{}ciphers.{}", self.prefix, cipher_name(c)),
        };
        let c = self.shard.counter(&name);
        c.inc();
        seen.push((what, c));
    }
}

/// Envoy's (BoringSSL's) version names.
pub fn version_name(v: ProtocolVersion) -> Option<&'static str> {
    match v {
        ProtocolVersion::TLSv1_2 => Some("TLSv1.2"),
        ProtocolVersion::TLSv1_3 => Some("TLSv1.3"),
        _ => None,
    }
}

/// BoringSSL's cipher names, as Envoy's `ssl.ciphers.*` shows them.
fn cipher_name(s: rustls::CipherSuite) -> String {
    match openssl_cipher_name(s) {
        Some(n) => n.into(),
        None => format!("{s:?}"),
    }
}

/// BoringSSL's name of a suite rustls implements (`%DOWNSTREAM_TLS_CIPHER%`).
pub fn openssl_cipher_name(s: rustls::CipherSuite) -> Option<&'static str> {
    use rustls::CipherSuite as C;
    Some(match s {
        C::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        C::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        C::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-ECDSA-CHACHA20-POLY1305",
        C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        _ => return None,
    })
}
