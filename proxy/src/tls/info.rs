//! What a TLS connection established, for access logs: version, cipher, and the names of the
//! certificates each side presented, written as Envoy (BoringSSL) writes them.

use std::fmt::Write as _;

use rustls::CommonState;
use x509_parser::x509::X509Name;

use super::certs::{names, parse_certs};
use super::stats::{openssl_cipher_name, version_name};
use super::{CertificateConfig, SanType};
use crate::stream_info::{CertInfo, TlsInfo};

/// The version, cipher and peer certificate of a finished handshake; `local` is the
/// certificate this side presented, when known.
pub fn connection_info(conn: &CommonState, local: Option<CertInfo>) -> TlsInfo {
    TlsInfo {
        version: conn.protocol_version().and_then(version_name),
        cipher: conn
            .negotiated_cipher_suite()
            .and_then(|s| openssl_cipher_name(s.suite())),
        peer: conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|leaf| cert_info(leaf)),
        peer_intermediates: conn
            .peer_certificates()
            .map(|c| c.iter().skip(1).map(|d| d.to_vec()).collect())
            .unwrap_or_default(),
        local,
    }
}

/// The names of a DER certificate; None when it does not parse.
pub fn cert_info(der: &[u8]) -> Option<CertInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let sans = names(der).ok()?;
    let has_dns_san = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .is_some_and(|s| {
            s.value
                .general_names
                .iter()
                .any(|n| matches!(n, x509_parser::extensions::GeneralName::DNSName(_)))
        });
    let of = |kind: SanType| -> Vec<String> {
        sans.iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, n)| n.clone())
            .collect()
    };
    Some(CertInfo {
        subject: rfc2253(cert.subject()),
        issuer: rfc2253(cert.issuer()),
        uri_sans: of(SanType::Uri),
        // `names` counts a common name as a DNS name for matching; the log shows SANs only.
        dns_sans: if has_dns_san {
            of(SanType::Dns)
        } else {
            Vec::new()
        },
        serial: serial_hex(cert.raw_serial()),
        validity: (
            cert.validity().not_before.timestamp(),
            cert.validity().not_after.timestamp(),
        ),
        der: der.to_vec(),
    })
}

/// A certificate's serial as Envoy writes it (BoringSSL's `BN_bn2hex`, lowered): the number's
/// bytes without the leading zero bytes DER adds for the sign, `0` for zero.
pub fn serial_hex(der_integer: &[u8]) -> String {
    let start = der_integer
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(der_integer.len());
    if start == der_integer.len() {
        return "0".into();
    }
    hex(&der_integer[start..])
}

/// Lower-case hex, as Envoy writes serials and fingerprints.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The SHA-256 of `data`, from the TLS library's own hash (`%DOWNSTREAM_PEER_FINGERPRINT_256%`).
pub fn sha256(data: &[u8]) -> Option<Vec<u8>> {
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let hash = suite.tls13()?.common.hash_provider;
    Some(hash.hash(data).as_ref().to_vec())
}

/// Standard base64, with padding.
pub fn base64(bytes: &[u8]) -> String {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(B64[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    b64
}

/// A certificate as PEM, URL-encoded as Envoy logs it (`%DOWNSTREAM_PEER_CERT%`).
pub fn url_encoded_pem(der: &[u8]) -> String {
    url_encoded_pems(std::iter::once(der))
}

/// Certificates (DER) as PEM one after the other, URL-encoded (XFCC's `Chain`).
pub fn url_encoded_pems<'a>(ders: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut pem = String::new();
    for der in ders {
        let b64 = base64(der);
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    let mut out = String::with_capacity(pem.len() + pem.len() / 8);
    for b in pem.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The names of every certificate of a listener's `tls_certificates`, in order: the DNS names
/// the SNI is matched against and what the log shows. Unreadable ones have no entry's worth of
/// names and never match.
pub fn local_certificates(certs: &[CertificateConfig]) -> Vec<(Vec<String>, Option<CertInfo>)> {
    certs
        .iter()
        .map(|c| {
            let leaf = c
                .chain
                .read()
                .ok()
                .and_then(|pem| parse_certs(&pem).ok())
                .and_then(|chain| chain.into_iter().next());
            match leaf {
                Some(der) => {
                    let dns = names(&der)
                        .map(|n| {
                            n.into_iter()
                                .filter(|(t, _)| *t == SanType::Dns)
                                .map(|(_, n)| n)
                                .collect()
                        })
                        .unwrap_or_default();
                    (dns, cert_info(&der))
                }
                None => (Vec::new(), None),
            }
        })
        .collect()
}

/// A distinguished name as OpenSSL's `XN_FLAG_RFC2253` prints it (Envoy's
/// `%DOWNSTREAM_PEER_SUBJECT%`): last RDN first, `,` between RDNs, `+` inside one.
pub fn rfc2253(name: &X509Name<'_>) -> String {
    let mut out = String::new();
    let rdns: Vec<_> = name.iter().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, atv) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = atv.attr_type();
            let short = x509_parser::objects::oid2abbrev(oid, x509_parser::objects::oid_registry())
                .ok()
                .map(str::to_string);
            match (short, atv.as_str()) {
                (Some(short), Ok(value)) => {
                    out.push_str(&short);
                    out.push('=');
                    escape_into(&mut out, value);
                }
                (short, _) => {
                    out.push_str(&short.unwrap_or_else(|| oid.to_id_string()));
                    out.push_str("=#");
                    for b in atv.attr_value().as_bytes() {
                        let _ = write!(out, "{b:02X}");
                    }
                }
            }
        }
    }
    out
}

/// RFC 2253 §2.4 escaping.
fn escape_into(out: &mut String, value: &str) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_lose_the_sign_byte_as_in_envoy() {
        assert_eq!(serial_hex(&[0x00, 0x90, 0x55]), "9055");
        assert_eq!(serial_hex(&[0x0a, 0x01]), "0a01");
        assert_eq!(serial_hex(&[0x00]), "0");
    }
    use crate::tls::certs::tests::TestPki;

    #[test]
    fn names_as_envoy_logs_them() {
        let pki = TestPki::new();
        let leaf = pki.leaf(&["a.test", "spiffe://cluster.local/ns/x/sa/y"]);
        let der = parse_certs(&leaf.chain.read().expect("pem")).expect("certs");
        let info = cert_info(&der[0]).expect("parses");
        assert_eq!(info.subject, "CN=leaf");
        assert_eq!(info.issuer, "CN=skiff test CA");
        assert_eq!(info.uri_sans, vec!["spiffe://cluster.local/ns/x/sa/y"]);
        assert_eq!(info.dns_sans, vec!["a.test"]);
    }

    #[test]
    fn rfc2253_reverses_and_escapes() {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name.push(rcgen::DnType::CountryName, "US");
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Acme, Inc.");
        p.distinguished_name.push(rcgen::DnType::CommonName, "a+b");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = p.self_signed(&key).expect("cert");
        let info = cert_info(cert.der()).expect("parses");
        // rcgen writes CN, C, O in that order; RFC 2253 prints the last RDN first.
        assert_eq!(info.subject, "O=Acme\\, Inc.,C=US,CN=a\\+b");
        assert!(info.dns_sans.is_empty());
    }
}
