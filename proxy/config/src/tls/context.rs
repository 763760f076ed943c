//! rustls configurations from [`DownstreamTls`] and [`UpstreamTls`].

use std::sync::Arc;

use rustls::crypto::ring::{cipher_suite as cs, default_provider, kx_group};
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig, SupportedCipherSuite, SupportedProtocolVersion};

use super::certs::{self, SniResolver};
use super::verify::{roots, SanCheckingClientVerifier, UpstreamVerifier};
use super::{DownstreamTls, Params, TlsError, UpstreamTls, Version};

/// The TLS 1.2 suite of an OpenSSL/BoringSSL name, as Envoy's `cipher_suites` spells them.
fn cipher_suite(name: &str) -> Option<SupportedCipherSuite> {
    Some(match name {
        "ECDHE-ECDSA-AES128-GCM-SHA256" => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-ECDSA-AES256-GCM-SHA384" => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-ECDSA-CHACHA20-POLY1305" => cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        "ECDHE-RSA-AES128-GCM-SHA256" => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-RSA-AES256-GCM-SHA384" => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-RSA-CHACHA20-POLY1305" => cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        _ => return None,
    })
}

fn curve(name: &str) -> Option<&'static dyn SupportedKxGroup> {
    Some(match name {
        "X25519" => kx_group::X25519,
        "P-256" => kx_group::SECP256R1,
        "P-384" => kx_group::SECP384R1,
        _ => return None,
    })
}

/// The names in a `cipher_suites` entry: one, or an equal-preference group `[A|B]`.
fn suite_names(entry: &str) -> impl Iterator<Item = &str> {
    entry
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split('|')
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Checks `cipher_suites` and `ecdh_curves` (for translation, before anything is built).
pub fn check_params(p: &Params) -> Result<(), TlsError> {
    provider(p).map(drop)
}

/// TLS 1.2 suites of Envoy's default list that rustls does not implement (static RSA key
/// exchange, CBC). In a list that also names a suite rustls implements they are left out
/// (Istio's servers list two of them after four ECDHE suites); alone they are refused.
const NOT_OFFERED: &[&str] = &[
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA",
    "AES256-SHA",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
];

/// The configured suites rustls does not implement and leaves out.
pub fn suites_not_offered(p: &Params) -> Vec<&str> {
    p.cipher_suites
        .iter()
        .flat_map(|e| suite_names(e))
        .filter(|n| cipher_suite(n).is_none() && NOT_OFFERED.contains(n))
        .collect()
}

/// rustls' ring provider narrowed to the configured suites and curves, in their order. TLS 1.3
/// suites are always offered (BoringSSL does not let `cipher_suites` choose them either).
pub fn provider(p: &Params) -> Result<CryptoProvider, TlsError> {
    let mut prov = default_provider();
    if !p.cipher_suites.is_empty() {
        let mut suites: Vec<SupportedCipherSuite> = prov
            .cipher_suites
            .iter()
            .copied()
            .filter(|s| s.tls13().is_some())
            .collect();
        let mut left_out = None;
        let mut tls12 = 0;
        for entry in &p.cipher_suites {
            for name in suite_names(entry) {
                let Some(s) = cipher_suite(name) else {
                    if NOT_OFFERED.contains(&name) {
                        left_out.get_or_insert(name);
                        continue;
                    }
                    return Err(TlsError::CipherSuite(name.into()));
                };
                tls12 += 1;
                if !suites.contains(&s) {
                    suites.push(s);
                }
            }
        }
        if let (0, Some(name)) = (tls12, left_out) {
            return Err(TlsError::CipherSuite(name.into()));
        }
        prov.cipher_suites = suites;
    }
    if !p.curves.is_empty() {
        prov.kx_groups = p
            .curves
            .iter()
            .map(|c| curve(c).ok_or_else(|| TlsError::Curve(c.clone())))
            .collect::<Result<_, _>>()?;
    }
    Ok(prov)
}

fn versions(p: &Params) -> Vec<&'static SupportedProtocolVersion> {
    let mut v = Vec::new();
    if p.min <= Version::Tls13 && p.max >= Version::Tls13 {
        v.push(&rustls::version::TLS13);
    }
    if p.min <= Version::Tls12 && p.max >= Version::Tls12 {
        v.push(&rustls::version::TLS12);
    }
    v
}

/// Istio's metadata-exchange protocol: the peer that negotiates it sends a binary header and
/// blob first, which skiff does not read, so it is never offered nor accepted (Istio's own
/// `PILOT_DISABLE_MX_ALPN` does the same); the peer falls back to `istio`.
const ISTIO_PEER_EXCHANGE: &str = "istio-peer-exchange";

fn alpn(list: &[String]) -> Vec<Vec<u8>> {
    list.iter()
        .filter(|p| p.as_str() != ISTIO_PEER_EXCHANGE)
        .map(|p| p.as_bytes().to_vec())
        .collect()
}

fn trusted(ca: &crate::tls::DataSource) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    roots(ca).map_err(|e| e.at("validation_context.trusted_ca"))
}

/// What a listener serves with: [`server_config`], or [`unready_server_config`] while an SDS
/// secret is pending.
pub fn server(d: &DownstreamTls) -> Result<Arc<ServerConfig>, TlsError> {
    if d.pending {
        unready_server_config(&d.params)
    } else {
        server_config(d)
    }
}

/// What a cluster connects with: [`client_config`], or [`unready_client_config`] while an SDS
/// secret is pending.
pub fn client(u: &UpstreamTls) -> Result<Arc<ClientConfig>, TlsError> {
    if u.pending {
        unready_client_config(u)
    } else {
        client_config(u)
    }
}

/// A listener's server configuration: certificates chosen by SNI, client certificates checked
/// when a validation context has a trusted CA (and required when asked), ALPN.
pub fn server_config(d: &DownstreamTls) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(provider(&d.params)?);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions(&d.params))?;
    let ca = d.validation.as_ref().and_then(|v| v.trusted_ca.as_ref());
    let builder = match (ca, &d.validation) {
        (Some(ca), Some(v)) => {
            let mut b = WebPkiClientVerifier::builder_with_provider(trusted(ca)?, provider.clone());
            if !d.require_client_certificate {
                b = b.allow_unauthenticated();
            }
            let inner = b.build().map_err(|e| TlsError::Rustls(e.to_string()))?;
            let verifier: Arc<dyn ClientCertVerifier> = if v.san_matchers.is_empty() {
                inner
            } else {
                Arc::new(SanCheckingClientVerifier::new(
                    inner,
                    v.san_matchers.clone(),
                ))
            };
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let resolver = SniResolver::new(&d.certificates, &provider)?;
    let mut cfg = builder.with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = alpn(&d.alpn);
    if d.no_tickets {
        cfg.send_tls13_tickets = 0;
    }
    if d.no_session_cache {
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
    }
    Ok(Arc::new(cfg))
}

/// A cluster's client configuration: the server checked as the validation context says
/// (nothing without one), the client certificate for mTLS, ALPN.
pub fn client_config(u: &UpstreamTls) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(provider(&u.params)?);
    let (ca, sans) = match &u.validation {
        Some(v) => (
            v.trusted_ca.as_ref().map(trusted).transpose()?,
            v.san_matchers.clone(),
        ),
        None => (None, Vec::new()),
    };
    let verifier = Arc::new(UpstreamVerifier::new(
        ca,
        sans,
        (u.check_sni, u.sni_replaces_sans),
        provider.clone(),
    ));
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions(&u.params))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match &u.client_certificate {
        Some(c) => {
            // Not `with_client_auth_cert`: its key check goes through webpki, which refuses
            // X.509 v1 certificates that Envoy serves.
            let ck = certs::load(c, &provider).map_err(|e| e.at("tls_certificates[0]"))?;
            builder.with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(ck)))
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn(&u.alpn);
    Ok(Arc::new(cfg))
}

/// A resolver with no certificate: the server configuration of a listener whose SDS secrets
/// have not arrived. Every handshake fails, as Envoy's do until then.
#[derive(Debug)]
struct NoCertificate;

impl rustls::server::ResolvesServerCert for NoCertificate {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }
}

/// The server configuration of a listener whose SDS secrets have not arrived yet: every
/// handshake fails.
pub fn unready_server_config(p: &Params) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(provider(p)?);
    let cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions(p))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(NoCertificate));
    Ok(Arc::new(cfg))
}

/// The client configuration of a cluster whose SDS secrets have not arrived yet: it trusts no
/// server, so every handshake fails.
pub fn unready_client_config(u: &UpstreamTls) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(provider(&u.params)?);
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions(&u.params))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    cfg.alpn_protocols = alpn(&u.alpn);
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{StringMatch, StringMatchKind};
    use crate::tls::certs::tests::TestPki;
    use crate::tls::{DataSource, SanMatcher, SanType, Validation};
    use rustls_pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn downstream(pki: &TestPki, names: &[&str]) -> DownstreamTls {
        DownstreamTls {
            certificates: vec![pki.leaf(names)],
            params: Params::default(),
            alpn: vec!["h2".into(), "http/1.1".into()],
            validation: None,
            require_client_certificate: false,
            no_tickets: false,
            no_session_cache: false,
            pending: false,
        }
    }

    fn spiffe(prefix: &str) -> SanMatcher {
        SanMatcher {
            san_type: SanType::Uri,
            matcher: StringMatch {
                kind: StringMatchKind::Prefix(prefix.into()),
                ignore_case: false,
            },
        }
    }

    /// A handshake over an in-memory pipe; the negotiated ALPN, or the first error.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        sni: &str,
    ) -> Result<Option<Vec<u8>>, String> {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let connector = tokio_rustls::TlsConnector::from(client);
        let name = ServerName::try_from(sni.to_string()).expect("name");
        let srv = tokio::spawn(async move {
            let mut s = acceptor.accept(b).await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            s.write_all(&buf).await.map_err(|e| e.to_string())?;
            s.flush().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        });
        let mut c = connector
            .connect(name, a)
            .await
            .map_err(|e| e.to_string())?;
        c.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"ping");
        srv.await.expect("server task")?;
        Ok(c.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
    }

    fn upstream(pki: &TestPki, sans: Vec<SanMatcher>) -> UpstreamTls {
        UpstreamTls {
            alpn: vec!["h2".into()],
            validation: Some(Validation {
                trusted_ca: Some(DataSource::Inline(pki.ca_pem())),
                san_matchers: sans,
            }),
            ..UpstreamTls::default()
        }
    }

    #[tokio::test]
    async fn a_verified_handshake_negotiates_alpn() {
        let pki = TestPki::new();
        let server = server_config(&downstream(&pki, &["svc.test"])).expect("server");
        let client = client_config(&upstream(&pki, vec![])).expect("client");
        assert_eq!(
            handshake(server, client, "svc.test").await,
            Ok(Some(b"h2".to_vec()))
        );
    }

    #[tokio::test]
    async fn an_untrusted_server_or_a_wrong_san_is_refused() {
        let pki = TestPki::new();
        let other = TestPki::new();
        let server = server_config(&downstream(&other, &["svc.test"])).expect("server");
        let client = client_config(&upstream(&pki, vec![])).expect("client");
        let err = handshake(server, client, "svc.test").await.unwrap_err();
        // Both test CAs share a name, so webpki finds the wrong one and its signature fails.
        assert!(
            err.contains("UnknownIssuer") || err.contains("BadSignature"),
            "{err}"
        );

        let server = server_config(&downstream(&pki, &["spiffe://cluster.local/ns/a/sa/b"]))
            .expect("server");
        let client =
            client_config(&upstream(&pki, vec![spiffe("spiffe://other/")])).expect("client");
        let err = handshake(server.clone(), client, "svc.test")
            .await
            .unwrap_err();
        assert!(err.contains("NotValidForName"), "{err}");
        let client = client_config(&upstream(&pki, vec![spiffe("spiffe://cluster.local/")]))
            .expect("client");
        assert!(handshake(server, client, "svc.test").await.is_ok());
    }

    #[tokio::test]
    async fn without_a_validation_context_the_server_is_not_checked() {
        let pki = TestPki::new();
        let server = server_config(&downstream(&pki, &["svc.test"])).expect("server");
        let client = client_config(&UpstreamTls::default()).expect("client");
        assert_eq!(handshake(server, client, "anything.test").await, Ok(None));
    }

    #[tokio::test]
    async fn mtls_requires_a_trusted_client_certificate_with_a_matching_san() {
        let pki = TestPki::new();
        let mut d = downstream(&pki, &["svc.test"]);
        d.require_client_certificate = true;
        d.validation = Some(Validation {
            trusted_ca: Some(DataSource::Inline(pki.ca_pem())),
            san_matchers: vec![spiffe("spiffe://cluster.local/ns/a/")],
        });
        let server = server_config(&d).expect("server");

        let anonymous = client_config(&upstream(&pki, vec![])).expect("client");
        assert!(handshake(server.clone(), anonymous, "svc.test")
            .await
            .is_err());

        let mut u = upstream(&pki, vec![]);
        u.client_certificate = Some(pki.leaf(&["spiffe://cluster.local/ns/b/sa/x"]));
        let wrong = client_config(&u).expect("client");
        assert!(handshake(server.clone(), wrong, "svc.test").await.is_err());

        u.client_certificate = Some(pki.leaf(&["spiffe://cluster.local/ns/a/sa/x"]));
        let right = client_config(&u).expect("client");
        assert!(handshake(server, right, "svc.test").await.is_ok());
    }

    #[tokio::test]
    async fn versions_and_suites_are_honoured() {
        let pki = TestPki::new();
        let mut d = downstream(&pki, &["svc.test"]);
        d.params.max = Version::Tls12;
        d.params.cipher_suites =
            vec!["[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]".into()];
        let server = server_config(&d).expect("server");
        let mut u = upstream(&pki, vec![]);
        u.params.min = Version::Tls13;
        let only13 = client_config(&u).expect("client");
        assert!(handshake(server.clone(), only13, "svc.test").await.is_err());
        let any = client_config(&upstream(&pki, vec![])).expect("client");
        assert!(handshake(server, any, "svc.test").await.is_ok());

        let bad = Params {
            cipher_suites: vec!["AES128-SHA".into()],
            ..Params::default()
        };
        assert_eq!(
            check_params(&bad),
            Err(TlsError::CipherSuite("AES128-SHA".into()))
        );
        // Istio's server list: the two static-RSA suites are left out, the four ECDHE kept.
        let istio = Params {
            cipher_suites: [
                "ECDHE-ECDSA-AES256-GCM-SHA384",
                "ECDHE-RSA-AES256-GCM-SHA384",
                "ECDHE-ECDSA-AES128-GCM-SHA256",
                "ECDHE-RSA-AES128-GCM-SHA256",
                "AES256-GCM-SHA384",
                "AES128-GCM-SHA256",
            ]
            .map(String::from)
            .to_vec(),
            ..Params::default()
        };
        let prov = provider(&istio).expect("accepted");
        assert_eq!(
            prov.cipher_suites
                .iter()
                .filter(|s| s.tls13().is_none())
                .count(),
            4
        );
        assert_eq!(
            suites_not_offered(&istio),
            ["AES256-GCM-SHA384", "AES128-GCM-SHA256"]
        );
        let unknown = Params {
            cipher_suites: vec!["ECDHE-RSA-AES128-GCM-SHA256".into(), "NOT-A-SUITE".into()],
            ..Params::default()
        };
        assert_eq!(
            check_params(&unknown),
            Err(TlsError::CipherSuite("NOT-A-SUITE".into()))
        );
        let bad = Params {
            curves: vec!["P-521".into()],
            ..Params::default()
        };
        assert_eq!(check_params(&bad), Err(TlsError::Curve("P-521".into())));
    }

    #[tokio::test]
    async fn a_v1_certificate_serves_and_authenticates_a_client() {
        use crate::tls::certs::tests::{KeyForm, Openssl};
        let o = Openssl::new("ctx");
        o.v1("server", "v1.test", KeyForm::RsaPkcs8, None);
        o.v1("client", "client.test", KeyForm::EcSec1, None);
        let d = DownstreamTls {
            certificates: vec![o.pair(&["server"], "server")],
            params: Params::default(),
            alpn: vec![],
            validation: None,
            require_client_certificate: false,
            no_tickets: false,
            no_session_cache: false,
            pending: false,
        };
        let server = server_config(&d).expect("server");
        let u = UpstreamTls {
            client_certificate: Some(o.pair(&["client"], "client")),
            ..UpstreamTls::default()
        };
        let client = client_config(&u).expect("a v1 client certificate loads");
        assert_eq!(handshake(server, client, "v1.test").await, Ok(None));
    }
}
