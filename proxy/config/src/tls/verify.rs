//! Checking the peer's certificate as Envoy's `CertificateValidationContext` does: the chain
//! against `trusted_ca`, then `match_typed_subject_alt_names`. Envoy checks no host name
//! unless asked to: an upstream without a validation context is not verified at all, and one
//! with only a trusted CA accepts any name that CA signed.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::certs::{name_covers, names, parse_certs};
use super::{DataSource, SanMatcher, SanType, TlsError};
use crate::model::StringMatchKind;

/// The trust anchors in a PEM blob.
pub fn roots(ca: &DataSource) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in parse_certs(&ca.read()?)? {
        store
            .add(cert)
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
    }
    Ok(Arc::new(store))
}

/// Whether a certificate's names satisfy the matchers: any matcher matching any name of its
/// kind (no matchers: any certificate). An exact DNS matcher also accepts a wildcard name that
/// covers it, as Envoy's DNS SAN matching does.
pub fn sans_match(matchers: &[SanMatcher], names: &[(SanType, String)]) -> bool {
    if matchers.is_empty() {
        return true;
    }
    matchers.iter().any(|m| {
        names.iter().any(|(kind, name)| {
            *kind == m.san_type
                && (m.matcher.matches(name)
                    || match (&m.matcher.kind, kind) {
                        (StringMatchKind::Exact(want), SanType::Dns) if name.starts_with("*.") => {
                            name_covers(name, want)
                        }
                        _ => false,
                    })
        })
    })
}

fn check_sans(
    matchers: &[SanMatcher],
    end_entity: &CertificateDer<'_>,
) -> Result<(), rustls::Error> {
    if matchers.is_empty() {
        return Ok(());
    }
    let names = names(end_entity)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    if sans_match(matchers, &names) {
        Ok(())
    } else {
        Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName,
        ))
    }
}

/// The upstream side: the server's chain against the trusted CA (when there is one), then the
/// SAN matchers; never the host name.
#[derive(Debug)]
pub struct UpstreamVerifier {
    roots: Option<Arc<RootCertStore>>,
    sans: Vec<SanMatcher>,
    /// Also check the certificate against the SNI sent (`auto_san_validation`).
    check_sni: bool,
    /// Check it against the SNI sent instead of the SAN matchers (`auto_sni_san_validation`).
    sni_replaces_sans: bool,
    provider: Arc<CryptoProvider>,
}

impl UpstreamVerifier {
    pub fn new(
        roots: Option<Arc<RootCertStore>>,
        sans: Vec<SanMatcher>,
        (check_sni, sni_replaces_sans): (bool, bool),
        provider: Arc<CryptoProvider>,
    ) -> Self {
        UpstreamVerifier {
            roots,
            sans,
            check_sni,
            sni_replaces_sans,
            provider,
        }
    }
}

impl ServerCertVerifier for UpstreamVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let sni_sent = matches!(server_name, ServerName::DnsName(_));
        if (self.check_sni || self.sni_replaces_sans) && sni_sent {
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_name(&cert, server_name)?;
        }
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        if !(self.sni_replaces_sans && sni_sent) {
            check_sans(&self.sans, end_entity)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algs)
            .or_else(|e| v1_signature(e, message, cert, dss, algs))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algs)
            .or_else(|e| v1_signature(e, message, cert, dss, algs))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A handshake signature checked with the key of an X.509 v1 certificate, which webpki will
/// not parse but BoringSSL (so Envoy, without a validation context) accepts; `err` stands for
/// any other certificate.
fn v1_signature(
    err: rustls::Error,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algs: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
        return Err(err);
    };
    if parsed.tbs_certificate.version.0 != 0 {
        return Err(err);
    }
    let Some((alg_id, key)) = spki_parts(parsed.tbs_certificate.subject_pki.raw) else {
        return Err(err);
    };
    let candidates = algs
        .mapping
        .iter()
        .find(|(scheme, _)| *scheme == dss.scheme)
        .map(|(_, a)| *a)
        .ok_or(rustls::Error::PeerMisbehaved(
            rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
        ))?;
    let alg = candidates
        .iter()
        .find(|a| a.public_key_alg_id().as_ref() == alg_id)
        .ok_or(rustls::Error::InvalidCertificate(
            CertificateError::BadSignature,
        ))?;
    alg.verify_signature(key, message, dss.signature())
        .map(|()| HandshakeSignatureValid::assertion())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature))
}

/// A DER SubjectPublicKeyInfo's algorithm identifier (contents, as webpki names algorithms)
/// and its public key bits.
fn spki_parts(spki: &[u8]) -> Option<(&[u8], &[u8])> {
    let (0x30, body, _) = der_tlv(spki)? else {
        return None;
    };
    let (0x30, alg, rest) = der_tlv(body)? else {
        return None;
    };
    let (0x03, bits, _) = der_tlv(rest)? else {
        return None;
    };
    match bits.split_first() {
        Some((0, key)) => Some((alg, key)),
        _ => None,
    }
}

/// One DER tag-length-value: (tag, contents, what follows).
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The downstream side with SAN matchers: rustls' chain check, then the matchers.
#[derive(Debug)]
pub struct SanCheckingClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    sans: Vec<SanMatcher>,
}

impl SanCheckingClientVerifier {
    pub fn new(inner: Arc<dyn ClientCertVerifier>, sans: Vec<SanMatcher>) -> Self {
        SanCheckingClientVerifier { inner, sans }
    }
}

impl ClientCertVerifier for SanCheckingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        check_sans(&self.sans, end_entity)?;
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StringMatch;

    fn m(t: SanType, kind: StringMatchKind) -> SanMatcher {
        SanMatcher {
            san_type: t,
            matcher: StringMatch {
                kind,
                ignore_case: false,
            },
        }
    }

    #[test]
    fn matchers_look_at_names_of_their_kind_only() {
        let names = vec![
            (SanType::Dns, "api.example.com".to_string()),
            (SanType::Uri, "spiffe://cluster.local/ns/a/sa/b".to_string()),
        ];
        assert!(sans_match(&[], &names));
        assert!(sans_match(
            &[m(
                SanType::Uri,
                StringMatchKind::Prefix("spiffe://cluster.local/".into())
            )],
            &names
        ));
        assert!(!sans_match(
            &[m(SanType::Dns, StringMatchKind::Prefix("spiffe://".into()))],
            &names
        ));
        assert!(sans_match(
            &[
                m(SanType::Email, StringMatchKind::Exact("x@y".into())),
                m(
                    SanType::Dns,
                    StringMatchKind::Exact("api.example.com".into())
                ),
            ],
            &names
        ));
    }

    #[test]
    fn an_exact_dns_matcher_accepts_a_covering_wildcard_certificate() {
        let names = vec![(SanType::Dns, "*.example.com".to_string())];
        assert!(sans_match(
            &[m(
                SanType::Dns,
                StringMatchKind::Exact("api.example.com".into())
            )],
            &names
        ));
        assert!(!sans_match(
            &[m(
                SanType::Dns,
                StringMatchKind::Exact("a.b.example.com".into())
            )],
            &names
        ));
    }
}
