//! A test CA and the certificates it signs, written as PEM files in a scratch directory (for
//! proxies' TLS contexts and curl's `--cacert`, `--cert`, `--key`).

use std::path::PathBuf;

/// A CA whose certificate is at [`TestCa::ca`].
pub struct TestCa {
    dir: PathBuf,
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
    /// The CA certificate's file.
    pub ca: String,
}

/// A URI SAN (a SPIFFE identity).
pub fn uri(s: &str) -> rcgen::SanType {
    rcgen::SanType::URI(s.to_string().try_into().expect("URI"))
}

/// A DNS SAN.
pub fn dns(s: &str) -> rcgen::SanType {
    rcgen::SanType::DnsName(s.to_string().try_into().expect("DNS"))
}

fn path(p: PathBuf) -> String {
    p.to_str().expect("utf-8").to_string()
}

impl TestCa {
    /// A new CA named `name`, its files under a scratch directory of `tag`.
    pub fn new(tag: &str, name: &str) -> TestCa {
        let dir = crate::scratch_dir(tag);
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = p.self_signed(&key).expect("CA");
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, cert.pem()).expect("write");
        TestCa {
            dir,
            key,
            cert,
            ca: path(ca),
        }
    }

    /// A certificate for `name` (its common name) with `sans`: its and its key's files.
    pub fn leaf(&self, name: &str, sans: Vec<rcgen::SanType>) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.subject_alt_names = sans;
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = p.signed_by(&key, &self.cert, &self.key).expect("leaf");
        let (c, k) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("write");
        std::fs::write(&k, key.serialize_pem()).expect("write");
        (path(c), path(k))
    }
}
