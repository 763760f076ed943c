//! Certificates and keys from PEM, the names a certificate carries, and the choice of a
//! server certificate by SNI.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;

use super::{CertificateConfig, SanType, TlsError};

/// Every certificate in a PEM blob, in order.
pub fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    Ok(certs)
}

/// The first private key in a PEM blob (PKCS#8, PKCS#1 or SEC1).
pub fn parse_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey,
        e => TlsError::Pem(e.to_string()),
    })
}

/// A certificate chain with its signing key, checked to belong together.
pub fn load(
    cfg: &CertificateConfig,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = parse_certs(&cfg.chain.read()?)?;
    let key = parse_key(&cfg.key.read()?)?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key(e.to_string()))?;
    let ck = CertifiedKey::new(chain, signing);
    match ck.keys_match() {
        Ok(()) => {}
        // Keys rustls cannot compare (no public key to hand) are taken as they are.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => return Err(TlsError::KeyMismatch),
    }
    Ok(Arc::new(ck))
}

/// The subject alternative names of a DER certificate, by kind; the subject's common names
/// count as DNS names when there are no DNS SANs (as BoringSSL matches server names).
pub fn names(der: &[u8]) -> Result<Vec<(SanType, String)>, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(s) => out.push((SanType::Dns, s.to_string())),
                GeneralName::URI(s) => out.push((SanType::Uri, s.to_string())),
                GeneralName::RFC822Name(s) => out.push((SanType::Email, s.to_string())),
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        out.push((SanType::IpAddress, ip.to_string()));
                    }
                }
                _ => {}
            }
        }
    }
    if !out.iter().any(|(t, _)| *t == SanType::Dns) {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                out.push((SanType::Dns, s.to_string()));
            }
        }
    }
    Ok(out)
}

/// Whether a certificate name (`example.com`, `*.example.com`) covers `host`. A wildcard
/// covers exactly one leftmost label.
pub fn name_covers(name: &str, host: &str) -> bool {
    let (name, host) = (name.trim_end_matches('.'), host.trim_end_matches('.'));
    if name.eq_ignore_ascii_case(host) {
        return true;
    }
    match (name.strip_prefix("*."), host.split_once('.')) {
        (Some(suffix), Some((label, rest))) => {
            !label.is_empty() && suffix.eq_ignore_ascii_case(rest)
        }
        _ => false,
    }
}

/// A listener's certificates: the one whose names match the client's SNI (an exact name before
/// a wildcard), else the first, as Envoy picks among `tls_certificates`.
#[derive(Debug)]
pub struct SniResolver {
    certs: Vec<(Arc<CertifiedKey>, Vec<String>)>,
}

impl SniResolver {
    /// Loads every certificate; `certs` must not be empty.
    pub fn new(certs: &[CertificateConfig], provider: &CryptoProvider) -> Result<Self, TlsError> {
        let mut out = Vec::with_capacity(certs.len());
        for c in certs {
            let ck = load(c, provider)?;
            let leaf = ck.cert.first().ok_or(TlsError::NoCertificate)?;
            let dns = names(leaf)?
                .into_iter()
                .filter(|(t, _)| *t == SanType::Dns)
                .map(|(_, n)| n)
                .collect();
            out.push((ck, dns));
        }
        if out.is_empty() {
            return Err(TlsError::NoCertificate);
        }
        Ok(SniResolver { certs: out })
    }

    /// The certificate for `sni`.
    pub fn pick(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        if let Some(host) = sni {
            let exact = self
                .certs
                .iter()
                .find(|(_, names)| names.iter().any(|n| n.eq_ignore_ascii_case(host)));
            let wildcard = || {
                self.certs
                    .iter()
                    .find(|(_, names)| names.iter().any(|n| name_covers(n, host)))
            };
            if let Some((ck, _)) = exact.or_else(wildcard) {
                return ck;
            }
        }
        &self.certs[0].0
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()).clone())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tls::DataSource;

    /// A CA and certificates it signs, in PEM, for tests.
    pub struct TestPki {
        pub ca: rcgen::Certificate,
        ca_key: rcgen::KeyPair,
    }

    impl TestPki {
        pub fn new() -> Self {
            let ca_key = rcgen::KeyPair::generate().expect("key");
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.distinguished_name
                .push(rcgen::DnType::CommonName, "skiff test CA");
            let ca = p.self_signed(&ca_key).expect("ca");
            TestPki { ca, ca_key }
        }

        pub fn ca_pem(&self) -> Vec<u8> {
            self.ca.pem().into_bytes()
        }

        /// A leaf with these SANs (DNS names, `spiffe://…` URIs, IP addresses); chain and key.
        pub fn leaf(&self, sans: &[&str]) -> CertificateConfig {
            let key = rcgen::KeyPair::generate().expect("key");
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
            for s in sans {
                let san = if let Ok(ip) = s.parse::<IpAddr>() {
                    rcgen::SanType::IpAddress(ip)
                } else if s.contains("://") {
                    rcgen::SanType::URI(s.to_string().try_into().expect("uri"))
                } else {
                    rcgen::SanType::DnsName(s.to_string().try_into().expect("dns"))
                };
                p.subject_alt_names.push(san);
            }
            p.distinguished_name.push(rcgen::DnType::CommonName, "leaf");
            let cert = p.signed_by(&key, &self.ca, &self.ca_key).expect("leaf");
            CertificateConfig {
                chain: DataSource::Inline(cert.pem().into_bytes()),
                key: DataSource::Inline(key.serialize_pem().into_bytes()),
            }
        }
    }

    fn provider() -> CryptoProvider {
        rustls::crypto::ring::default_provider()
    }

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_covers("*.example.com", "a.example.com"));
        assert!(name_covers("*.Example.com", "A.example.com."));
        assert!(!name_covers("*.example.com", "a.b.example.com"));
        assert!(!name_covers("*.example.com", "example.com"));
        assert!(name_covers("example.com", "EXAMPLE.com"));
        assert!(!name_covers("example.com", "www.example.com"));
    }

    #[test]
    fn names_reads_every_kind_of_san() {
        let pki = TestPki::new();
        let leaf = pki.leaf(&[
            "a.example.com",
            "spiffe://cluster.local/ns/x/sa/y",
            "10.0.0.1",
        ]);
        let der = parse_certs(&leaf.chain.read().expect("pem")).expect("certs");
        let names = names(&der[0]).expect("names");
        assert!(names.contains(&(SanType::Dns, "a.example.com".into())));
        assert!(names.contains(&(SanType::Uri, "spiffe://cluster.local/ns/x/sa/y".into())));
        assert!(names.contains(&(SanType::IpAddress, "10.0.0.1".into())));
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_first() {
        let pki = TestPki::new();
        let certs = [
            pki.leaf(&["default.test"]),
            pki.leaf(&["*.example.com"]),
            pki.leaf(&["www.example.com"]),
        ];
        let r = SniResolver::new(&certs, &provider()).expect("resolver");
        let leaf_of = |i: usize| r.certs[i].0.cert[0].clone();
        assert_eq!(r.pick(Some("www.example.com")).cert[0], leaf_of(2));
        assert_eq!(r.pick(Some("api.example.com")).cert[0], leaf_of(1));
        assert_eq!(r.pick(Some("other.test")).cert[0], leaf_of(0));
        assert_eq!(r.pick(None).cert[0], leaf_of(0));
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let pki = TestPki::new();
        let a = pki.leaf(&["a.test"]);
        let b = pki.leaf(&["b.test"]);
        let mixed = CertificateConfig {
            chain: a.chain,
            key: b.key,
        };
        assert_eq!(
            load(&mixed, &provider()).map(drop),
            Err(TlsError::KeyMismatch)
        );
    }

    #[test]
    fn missing_pieces_are_named() {
        let pki = TestPki::new();
        let a = pki.leaf(&["a.test"]);
        let no_key = CertificateConfig {
            chain: a.chain.clone(),
            key: DataSource::Inline(b"nothing here".to_vec()),
        };
        assert_eq!(load(&no_key, &provider()).map(drop), Err(TlsError::NoKey));
        let no_cert = CertificateConfig {
            chain: DataSource::Inline(Vec::new()),
            key: a.key.clone(),
        };
        assert_eq!(
            load(&no_cert, &provider()).map(drop),
            Err(TlsError::NoCertificate)
        );
        let missing = CertificateConfig {
            chain: DataSource::File("/nonexistent/cert.pem".into()),
            key: a.key,
        };
        let err = load(&missing, &provider())
            .map(drop)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cannot read /nonexistent/cert.pem"),
            "{err}"
        );
    }
}
