//! `GrpcService.google_grpc` on a config source: the server named by `target_uri` in gRPC's
//! naming, reached the way an `envoy_grpc` cluster would reach it (TCP, a Unix socket, a DNS
//! name), with the channel credentials gRPC would use: none or `local_credentials` (plain),
//! or `ssl_credentials` (TLS checked against `root_certs` and the target's name, as gRPC
//! checks it, with the client certificate of `cert_chain` and `private_key`). What has no such
//! mapping (`google_default`, call credentials, channel arguments) is refused by path.

use envoy_types::pb::envoy::config::core::v3 as core;

use super::super::ConfigError;
use super::tls::data_source;
use crate::model::{GoogleGrpc, GoogleSsl, GrpcTarget};
use crate::tls::CertificateConfig;

/// The target and credentials of a `google_grpc` service, and the authority its streams send
/// (gRPC's: the target's name, `localhost` for a Unix socket).
pub(super) fn google_grpc(
    g: &core::grpc_service::GoogleGrpc,
    path: &str,
) -> Result<(GoogleGrpc, String), ConfigError> {
    use core::grpc_service::google_grpc::channel_credentials::CredentialSpecifier;
    if g.stat_prefix.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.stat_prefix"),
            "value length must be at least 1 characters",
        ));
    }
    let (target, host) = target(&g.target_uri, &format!("{path}.target_uri"))?;
    let authority = match &target {
        GrpcTarget::Unix(_) => "localhost".to_string(),
        _ => authority_of(&g.target_uri),
    };
    let cpath = format!("{path}.channel_credentials");
    let ssl_settings = match g
        .channel_credentials
        .as_ref()
        .and_then(|c| c.credential_specifier.as_ref())
    {
        None | Some(CredentialSpecifier::LocalCredentials(_)) => None,
        Some(CredentialSpecifier::SslCredentials(s)) => {
            Some(ssl(s, &host, &format!("{cpath}.ssl_credentials"))?)
        }
        Some(CredentialSpecifier::GoogleDefault(_)) => {
            return Err(ConfigError::new(
                format!("{cpath}.google_default"),
                "unsupported: Google's default credentials need its metadata server",
            ))
        }
    };
    // Built once now, so that an unreadable file is an error naming the field.
    if let Some(s) = &ssl_settings {
        crate::tls::context::client(&s.upstream_tls())
            .map_err(|e| ConfigError::new(format!("{cpath}.ssl_credentials"), e.to_string()))?;
    }
    let key = format!("{}|{ssl_settings:?}", g.target_uri);
    Ok((
        GoogleGrpc {
            target_uri: g.target_uri.clone(),
            target,
            ssl: ssl_settings,
            key,
        },
        authority,
    ))
}

/// The authority gRPC sends for a target: its endpoint name without the scheme.
fn authority_of(uri: &str) -> String {
    let rest = uri
        .strip_prefix("dns:")
        .map(|r| match r.strip_prefix("//") {
            // dns://<dns server>/<name>
            Some(a) => a.split_once('/').map_or(a, |(_, name)| name),
            None => r,
        })
        .or_else(|| uri.strip_prefix("ipv4:"))
        .or_else(|| uri.strip_prefix("ipv6:"))
        .unwrap_or(uri);
    rest.split(',').next().unwrap_or(rest).to_string()
}

/// gRPC's name resolution of `target_uri`: where to connect, and the host name the server's
/// certificate is checked against.
fn target(uri: &str, path: &str) -> Result<(GrpcTarget, String), ConfigError> {
    let bad = |why: &str| ConfigError::new(path, format!("'{uri}': {why}"));
    if uri.is_empty() {
        return Err(ConfigError::new(
            path,
            "value length must be at least 1 characters",
        ));
    }
    if let Some(p) = uri.strip_prefix("unix-abstract:") {
        return Ok((GrpcTarget::Unix(format!("@{p}").into()), "localhost".into()));
    }
    if let Some(p) = uri.strip_prefix("unix:") {
        // unix:path, or unix://absolute_path.
        let p = match p.strip_prefix("//") {
            Some(abs) if abs.starts_with('/') => abs,
            Some(_) => return Err(bad("unix:// takes an absolute path")),
            None => p,
        };
        if p.is_empty() {
            return Err(bad("no socket path"));
        }
        return Ok((GrpcTarget::Unix(p.into()), "localhost".into()));
    }
    let name = authority_of(uri);
    if uri.starts_with("ipv4:") || uri.starts_with("ipv6:") {
        let addr: std::net::SocketAddr = name
            .parse()
            .map_err(|_| bad("not an address with a port"))?;
        return Ok((GrpcTarget::Tcp(addr), addr.ip().to_string()));
    }
    if uri.contains("://") && !uri.starts_with("dns:") {
        return Err(bad(
            "unsupported name resolver (unix:, unix-abstract:, ipv4:, ipv6:, dns: or host:port)",
        ));
    }
    // host[:port], port 443 by default, as gRPC's DNS resolver.
    if let Ok(addr) = name.parse::<std::net::SocketAddr>() {
        return Ok((GrpcTarget::Tcp(addr), addr.ip().to_string()));
    }
    let (host, port) = match name.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (
            h.trim_start_matches('[').trim_end_matches(']').to_string(),
            p.parse::<u16>()
                .map_err(|_| bad("the port is not a number"))?,
        ),
        _ => (
            name.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            443,
        ),
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let target = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => GrpcTarget::Tcp(std::net::SocketAddr::new(ip, port)),
        Err(_) => GrpcTarget::Dns(host.clone(), port),
    };
    Ok((target, host))
}

/// `ssl_credentials`: skiff has no system trust store to fall back on, so `root_certs` is
/// required; `cert_chain` and `private_key` go together.
fn ssl(
    s: &core::grpc_service::google_grpc::SslCredentials,
    host: &str,
    path: &str,
) -> Result<GoogleSsl, ConfigError> {
    if s.root_certs.is_none() {
        return Err(ConfigError::new(
            format!("{path}.root_certs"),
            "required: skiff does not read a system trust store",
        ));
    }
    let root_certs = data_source(s.root_certs.as_ref(), &format!("{path}.root_certs"))?;
    let client = match (&s.cert_chain, &s.private_key) {
        (None, None) => None,
        (Some(_), Some(_)) => Some(CertificateConfig {
            chain: data_source(s.cert_chain.as_ref(), &format!("{path}.cert_chain"))?,
            key: data_source(s.private_key.as_ref(), &format!("{path}.private_key"))?,
        }),
        (None, Some(_)) => {
            return Err(ConfigError::new(
                format!("{path}.cert_chain"),
                "required with private_key",
            ))
        }
        (Some(_), None) => {
            return Err(ConfigError::new(
                format!("{path}.private_key"),
                "required with cert_chain",
            ))
        }
    };
    Ok(GoogleSsl {
        root_certs,
        client,
        host: host.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_names_resolve_as_grpc_does() {
        let t = |uri: &str| target(uri, "p").map_err(|e| e.to_string());
        assert_eq!(
            t("unix:/run/xds.sock"),
            Ok((GrpcTarget::Unix("/run/xds.sock".into()), "localhost".into()))
        );
        assert_eq!(
            t("unix:///run/xds.sock"),
            Ok((GrpcTarget::Unix("/run/xds.sock".into()), "localhost".into()))
        );
        assert_eq!(
            t("unix:./etc/istio/proxy/XDS"),
            Ok((
                GrpcTarget::Unix("./etc/istio/proxy/XDS".into()),
                "localhost".into()
            ))
        );
        assert_eq!(
            t("unix-abstract:xds"),
            Ok((GrpcTarget::Unix("@xds".into()), "localhost".into()))
        );
        assert_eq!(
            t("ipv4:10.0.0.1:15010"),
            Ok((
                GrpcTarget::Tcp("10.0.0.1:15010".parse().expect("addr")),
                "10.0.0.1".into()
            ))
        );
        assert_eq!(
            t("127.0.0.1:18000"),
            Ok((
                GrpcTarget::Tcp("127.0.0.1:18000".parse().expect("addr")),
                "127.0.0.1".into()
            ))
        );
        assert_eq!(
            t("istiod.istio-system.svc:15012"),
            Ok((
                GrpcTarget::Dns("istiod.istio-system.svc".into(), 15012),
                "istiod.istio-system.svc".into()
            ))
        );
        assert_eq!(
            t("dns:///xds.example.com"),
            Ok((
                GrpcTarget::Dns("xds.example.com".into(), 443),
                "xds.example.com".into()
            ))
        );
        assert!(t("unix://relative").is_err());
        assert!(t("xds:///listener").is_err());
        assert!(t("host:port").is_err());
        assert_eq!(
            authority_of("dns:///xds.example.com:8443"),
            "xds.example.com:8443"
        );
    }
}
