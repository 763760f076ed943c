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
use x509_parser::prelude::FromDer;

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

/// A certificate chain with its signing key, checked to belong together. Errors name the
/// `TlsCertificate` field at fault (`certificate_chain` or `private_key`).
pub fn load(
    cfg: &CertificateConfig,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain_field = |e: TlsError| e.at("certificate_chain");
    let key_field = |e: TlsError| e.at("private_key");
    let chain = parse_certs(&cfg.chain.read().map_err(chain_field)?).map_err(chain_field)?;
    let key = parse_key(&cfg.key.read().map_err(key_field)?).map_err(key_field)?;
    let leaf = public_key_of(&chain[0]).map_err(chain_field)?;
    let signing = provider.key_provider.load_private_key(key).map_err(|e| {
        key_field(TlsError::Key(
            unusable_key(&leaf).unwrap_or_else(|| e.to_string()),
        ))
    })?;
    // BoringSSL parses the whole chain at load, so a broken intermediate is refused there too.
    for (i, der) in chain.iter().enumerate().skip(1) {
        if let Err(e) = x509_parser::parse_x509_certificate(der) {
            return Err(chain_field(TlsError::Certificate(format!(
                "certificate {} of the chain: {}",
                i + 1,
                describe_x509_error(&e)
            ))));
        }
    }
    // rustls' own check (`CertifiedKey::keys_match`) goes through webpki, which refuses X.509
    // v1 certificates outright; BoringSSL takes them, so the keys are compared here instead.
    if let Some(spki) = signing.public_key() {
        let key = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki.as_ref())
            .map(|(_, k)| k)
            .map_err(|e| key_field(TlsError::Key(e.to_string())))?;
        if !same_public_key(&key, &leaf) {
            return Err(TlsError::KeyMismatch);
        }
    }
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// The subject public key of a DER certificate, any X.509 version.
fn public_key_of(der: &[u8]) -> Result<x509_parser::x509::SubjectPublicKeyInfo<'_>, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::Certificate(describe_x509_error(&e)))?;
    Ok(cert.tbs_certificate.subject_pki)
}

/// Why the key of a certificate with this public key cannot be used, when it is a kind rustls'
/// ring provider cannot sign with (its own error only lists what it tried).
fn unusable_key(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Option<String> {
    use x509_parser::oid_registry as oids;
    use x509_parser::public_key::PublicKey;
    let alg = &spki.algorithm.algorithm;
    if *alg == oids::OID_PKCS1_RSASSAPSS {
        return Some("RSASSA-PSS keys are not supported (nor are they by Envoy)".into());
    }
    if *alg == oids::OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        if curve.as_ref() == Some(&oids::OID_NIST_EC_P521) {
            return Some(
                "ECDSA P-521 keys are not supported (skiff's TLS signs with P-256 and P-384 only)"
                    .into(),
            );
        }
        return None;
    }
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) if rsa.key_size() < 2048 => Some(format!(
            "only RSA keys of 2048 bits or more are supported (as in Envoy); this one has {}",
            rsa.key_size()
        )),
        _ => None,
    }
}

/// Whether two SubjectPublicKeyInfos hold the same key: the algorithm, the curve for EC keys,
/// and the key bits (an RSA `NULL` parameter that one side leaves out does not matter).
fn same_public_key(
    a: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
    b: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> bool {
    fn curve(k: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Option<Vec<u8>> {
        let p = k.algorithm.parameters.as_ref()?;
        Some(p.as_oid().ok()?.as_bytes().to_vec())
    }
    a.algorithm.algorithm == b.algorithm.algorithm
        && a.subject_public_key.data == b.subject_public_key.data
        && (a.algorithm.algorithm != x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
            || curve(a) == curve(b))
}

/// An x509-parser error as an operator can act on it: which part of the certificate is bad.
fn describe_x509_error(e: &x509_parser::nom::Err<x509_parser::error::X509Error>) -> String {
    match e {
        x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => {
            format!("the certificate cannot be parsed: {e}")
        }
        x509_parser::nom::Err::Incomplete(_) => {
            "the certificate cannot be parsed: its DER encoding is truncated".into()
        }
    }
}

/// The subject alternative names of a DER certificate, by kind; the subject's common names
/// count as DNS names when there are no DNS SANs (as BoringSSL matches server names).
pub fn names(der: &[u8]) -> Result<Vec<(SanType, String)>, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::Certificate(describe_x509_error(&e)))?;
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
        for (i, c) in certs.iter().enumerate() {
            let ck = load(c, provider).map_err(|e| e.at(&format!("tls_certificates[{i}]")))?;
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
        let i = pick_index(self.certs.iter().map(|(_, names)| names.as_slice()), sni);
        &self.certs[i].0
    }
}

/// Which of several certificates (given by their DNS names) serves `sni`: an exact name first,
/// then a wildcard that covers it, else the first.
pub fn pick_index<'a>(
    certs: impl Iterator<Item = &'a [String]> + Clone,
    sni: Option<&str>,
) -> usize {
    if let Some(host) = sni {
        let exact = certs
            .clone()
            .position(|names| names.iter().any(|n| n.eq_ignore_ascii_case(host)));
        let wildcard = || {
            certs
                .clone()
                .position(|names| names.iter().any(|n| name_covers(n, host)))
        };
        if let Some(i) = exact.or_else(wildcard) {
            return i;
        }
    }
    0
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()).clone())
    }
}

/// Certificates made for tests (also for the proxy's tests, with the `test-util` feature).
#[cfg(any(test, feature = "test-util"))]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::new_without_default)]
pub mod tests {
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

    /// Certificates and keys made by the `openssl` command line, which (unlike rcgen) makes
    /// X.509 v1 certificates and keys in every PEM form; the files of one test live in `dir`.
    pub struct Openssl {
        pub dir: std::path::PathBuf,
    }

    /// A key type and its PEM form.
    #[derive(Clone, Copy, Debug)]
    pub enum KeyForm {
        /// `BEGIN RSA PRIVATE KEY`.
        RsaPkcs1,
        /// `BEGIN PRIVATE KEY` holding an RSA key.
        RsaPkcs8,
        /// `BEGIN EC PARAMETERS` then `BEGIN EC PRIVATE KEY` (P-256), as `openssl ecparam`
        /// writes it.
        EcSec1,
        /// `BEGIN PRIVATE KEY` holding a P-384 key.
        EcPkcs8P384,
        /// `BEGIN PRIVATE KEY` holding an Ed25519 key.
        Ed25519,
        /// A P-521 key, which Envoy takes and rustls' ring provider cannot sign with.
        EcP521,
        /// A 1024-bit RSA key, which Envoy refuses too.
        Rsa1024,
    }

    impl Openssl {
        pub fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "skiff-openssl-{tag}-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ));
            std::fs::create_dir_all(&dir).expect("temp dir");
            Openssl { dir }
        }

        fn run(&self, args: &[&str]) {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(&self.dir)
                .output()
                .expect("the openssl command line (apt-get install openssl)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        pub fn read(&self, name: &str) -> Vec<u8> {
            std::fs::read(self.dir.join(name)).expect("openssl output")
        }

        /// Writes `<name>.key` in the given form.
        pub fn key(&self, name: &str, form: KeyForm) {
            let file = format!("{name}.key");
            match form {
                KeyForm::RsaPkcs1 => self.run(&["genrsa", "-traditional", "-out", &file, "2048"]),
                KeyForm::RsaPkcs8 => self.run(&[
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                    "-out",
                    &file,
                ]),
                KeyForm::EcSec1 => {
                    self.run(&["ecparam", "-genkey", "-name", "prime256v1", "-out", &file])
                }
                KeyForm::EcPkcs8P384 => self.run(&[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-384",
                    "-out",
                    &file,
                ]),
                KeyForm::Ed25519 => self.run(&["genpkey", "-algorithm", "ED25519", "-out", &file]),
                KeyForm::EcP521 => {
                    self.run(&["ecparam", "-genkey", "-name", "secp521r1", "-out", &file])
                }
                KeyForm::Rsa1024 => self.run(&["genrsa", "-out", &file, "1024"]),
            }
        }

        /// Writes `<name>.key` and `<name>.crt`: an X.509 v1 certificate (no extensions) for
        /// `cn`, self-signed or signed by the certificate and key `<ca>.crt`/`<ca>.key`.
        pub fn v1(&self, name: &str, cn: &str, form: KeyForm, ca: Option<&str>) {
            self.key(name, form);
            let (key, csr, crt) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
            );
            let subj = format!("/CN={cn}");
            self.run(&["req", "-new", "-key", &key, "-subj", &subj, "-out", &csr]);
            match ca {
                None => self.run(&[
                    "x509", "-req", "-in", &csr, "-signkey", &key, "-days", "2", "-out", &crt,
                ]),
                Some(ca) => self.run(&[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    &format!("{ca}.crt"),
                    "-CAkey",
                    &format!("{ca}.key"),
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-out",
                    &crt,
                ]),
            }
        }

        /// The certificate (or chain) and key files as a configuration.
        pub fn pair(&self, chain: &[&str], key: &str) -> CertificateConfig {
            let mut pem = Vec::new();
            for c in chain {
                pem.extend(self.read(&format!("{c}.crt")));
            }
            CertificateConfig {
                chain: DataSource::Inline(pem),
                key: DataSource::Inline(self.read(&format!("{key}.key"))),
            }
        }
    }

    impl Drop for Openssl {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[cfg(test)]
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
        assert_eq!(
            load(&no_key, &provider()).map(drop),
            Err(TlsError::NoKey.at("private_key"))
        );
        let no_cert = CertificateConfig {
            chain: DataSource::Inline(Vec::new()),
            key: a.key.clone(),
        };
        assert_eq!(
            load(&no_cert, &provider()).map(drop),
            Err(TlsError::NoCertificate.at("certificate_chain"))
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
            err.starts_with("certificate_chain: cannot read /nonexistent/cert.pem"),
            "{err}"
        );
    }

    #[cfg(test)]
    /// The version field of a DER certificate (0 = v1).
    fn version(der: &[u8]) -> u32 {
        let (_, c) = x509_parser::parse_x509_certificate(der).expect("cert");
        c.tbs_certificate.version.0
    }

    #[test]
    fn v1_certificates_load_with_every_key_form_envoy_takes() {
        let o = Openssl::new("forms");
        for (i, form) in [
            KeyForm::RsaPkcs1,
            KeyForm::RsaPkcs8,
            KeyForm::EcSec1,
            KeyForm::EcPkcs8P384,
            KeyForm::Ed25519,
        ]
        .into_iter()
        .enumerate()
        {
            let name = format!("leaf{i}");
            o.v1(&name, "v1.test", form, None);
            let pair = o.pair(&[&name], &name);
            let ck = load(&pair, &provider()).unwrap_or_else(|e| panic!("{form:?}: {e}"));
            assert_eq!(
                version(&ck.cert[0]),
                0,
                "{form:?}: openssl made a v1 certificate"
            );
            // A v1 certificate has no SAN: its common name is its DNS name.
            let r = SniResolver::new(&[pair], &provider()).expect("resolver");
            assert_eq!(r.certs[0].1, vec!["v1.test".to_string()]);
        }
    }

    #[test]
    fn a_v1_chain_loads_and_a_key_of_another_v1_certificate_is_refused() {
        let o = Openssl::new("chain");
        o.v1("ca", "v1 test CA", KeyForm::RsaPkcs8, None);
        o.v1("leaf", "leaf.test", KeyForm::EcSec1, Some("ca"));
        let ck = load(&o.pair(&["leaf", "ca"], "leaf"), &provider()).expect("chain");
        assert_eq!(ck.cert.len(), 2);
        assert_eq!(
            load(&o.pair(&["leaf", "ca"], "ca"), &provider()).map(drop),
            Err(TlsError::KeyMismatch)
        );
        o.v1("other", "leaf.test", KeyForm::EcSec1, Some("ca"));
        assert_eq!(
            load(&o.pair(&["leaf"], "other"), &provider()).map(drop),
            Err(TlsError::KeyMismatch)
        );
    }

    #[test]
    fn keys_rustls_cannot_use_are_refused_saying_why() {
        let o = Openssl::new("unusable");
        for (form, why) in [
            (KeyForm::EcP521, "ECDSA P-521 keys are not supported"),
            (KeyForm::Rsa1024, "only RSA keys of 2048 bits or more"),
        ] {
            o.v1("leaf", "leaf.test", form, None);
            let err = load(&o.pair(&["leaf"], "leaf"), &provider()).unwrap_err();
            assert_eq!(err.split().0, Some("private_key"), "{form:?}: {err}");
            assert!(err.to_string().contains(why), "{form:?}: {err}");
        }
    }

    #[test]
    fn the_compression_sandboxes_certificate_loads() {
        // envoyproxy/examples brotli, gzip and zstd: a v1 certificate made by
        // `openssl req -x509` of OpenSSL 1.1, with its PKCS#8 RSA key.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/tls/testdata");
        let pair = CertificateConfig {
            chain: DataSource::File(dir.join("envoy-examples-v1.crt")),
            key: DataSource::File(dir.join("envoy-examples-v1.key")),
        };
        let ck = load(&pair, &provider()).expect("loads");
        assert_eq!(version(&ck.cert[0]), 0);
    }

    #[test]
    fn an_unparsable_certificate_names_the_field_and_the_part() {
        let o = Openssl::new("bad");
        o.v1("leaf", "leaf.test", KeyForm::RsaPkcs8, None);
        let good = o.pair(&["leaf"], "leaf");
        let DataSource::Inline(pem) = &good.chain else {
            unreachable!()
        };
        let mut der = parse_certs(pem).expect("certs")[0].to_vec();
        // The validity's notBefore is a UTCTime (tag 0x17, 13 bytes): make its month 13.
        let at = der
            .windows(2)
            .position(|w| w == [0x17, 0x0d])
            .expect("a UTCTime");
        der[at + 4] = b'1';
        der[at + 5] = b'3';
        let b64 = base64_encode(&der);
        let bad = CertificateConfig {
            chain: DataSource::Inline(
                format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n")
                    .into_bytes(),
            ),
            key: good.key.clone(),
        };
        let err = SniResolver::new(&[good, bad], &provider()).unwrap_err();
        assert_eq!(
            err.split().0,
            Some("tls_certificates[1].certificate_chain"),
            "{err}"
        );
        assert!(err.to_string().contains("cannot be parsed"), "{err}");
        assert!(err.to_string().contains("date"), "{err}");

        // The same certificate as an intermediate behind a good leaf.
        let DataSource::Inline(leaf_pem) = &o.pair(&["leaf"], "leaf").chain else {
            unreachable!()
        };
        let mut chain = leaf_pem.clone();
        chain.extend(
            format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n").bytes(),
        );
        let with_bad_intermediate = CertificateConfig {
            chain: DataSource::Inline(chain),
            key: o.pair(&["leaf"], "leaf").key,
        };
        let err = load(&with_bad_intermediate, &provider()).unwrap_err();
        assert_eq!(err.split().0, Some("certificate_chain"), "{err}");
        assert!(
            err.to_string()
                .contains("certificate 2 of the chain: the certificate cannot be parsed"),
            "{err}"
        );
    }

    #[cfg(test)]
    fn base64_encode(data: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
