//! `transport_socket`: `envoy.transport_sockets.tls` (`DownstreamTlsContext` on filter chains,
//! `UpstreamTlsContext` on clusters) and `raw_buffer`. The rustls configuration is built here,
//! certificates read, so a configuration that cannot serve is refused at load, as Envoy does.

use std::path::PathBuf;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::transport_sockets::proxy_protocol::v3 as pp;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use tls::subject_alt_name_matcher::SanType as PbSanType;
use tls::tls_parameters::TlsProtocol;

use super::super::proto::{type_name, unpack};
use super::super::{ConfigError, Secrets};
use super::http_manager::string_match;
use crate::model::ProxyProtocolVersion as ProxyVersion;
use crate::tls::{
    context, CertificateConfig, DataSource, DownstreamTls, Params, SanMatcher, SanType,
    UpstreamTls, Validation, Version,
};

const DOWNSTREAM_TLS: &str = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const UPSTREAM_TLS: &str = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
const RAW_BUFFER: &str = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";

/// The `typed_config` of a transport socket, or None for `raw_buffer` (plain TCP).
fn typed<'a>(
    ts: &'a core::TransportSocket,
    path: &str,
    tls_type: &str,
) -> Result<Option<&'a envoy_types::pb::google::protobuf::Any>, ConfigError> {
    use core::transport_socket::ConfigType;
    let any = match &ts.config_type {
        Some(ConfigType::TypedConfig(any)) => any,
        None => return Err(ConfigError::new(format!("{path}.typed_config"), "required")),
    };
    let path = format!("{path}.typed_config");
    match type_name(&any.type_url) {
        t if t == tls_type => Ok(Some(any)),
        RAW_BUFFER => Ok(None),
        other => Err(ConfigError::new(
            path,
            format!("unsupported transport socket '{other}' (skiff has {tls_type} and raw_buffer)"),
        )),
    }
}

/// A filter chain's `transport_socket`.
pub(super) fn downstream(
    ts: &core::TransportSocket,
    path: &str,
    secrets: &Secrets,
) -> Result<Option<Arc<DownstreamTls>>, ConfigError> {
    let Some(any) = typed(ts, path, DOWNSTREAM_TLS)? else {
        return Ok(None);
    };
    let path = format!("{path}.typed_config");
    let ctx: tls::DownstreamTlsContext = unpack(any, &path)?;
    super::fields::downstream_tls_context(&ctx, &path)?;
    let cpath = format!("{path}.common_tls_context");
    let empty = tls::CommonTlsContext::default();
    let common = ctx.common_tls_context.as_ref().unwrap_or(&empty);
    let (certificates, params, alpn, validation, pending, sources) =
        common_context(common, &cpath, secrets)?;
    let require_client_certificate = ctx
        .require_client_certificate
        .as_ref()
        .is_some_and(|b| b.value);
    use tls::downstream_tls_context::SessionTicketKeysType;
    let no_tickets = matches!(
        ctx.session_ticket_keys_type,
        Some(SessionTicketKeysType::DisableStatelessSessionResumption(
            true
        ))
    );
    let settings = DownstreamTls {
        certificates,
        params,
        alpn,
        validation,
        require_client_certificate,
        no_tickets,
        no_session_cache: ctx.disable_stateful_session_resumption,
        pending,
    };
    if !pending {
        if settings.certificates.is_empty() {
            return Err(ConfigError::new(
                format!("{cpath}.tls_certificates"),
                "a server context needs at least one certificate",
            ));
        }
        let has_ca = settings
            .validation
            .as_ref()
            .is_some_and(|v| v.trusted_ca.is_some());
        if settings.require_client_certificate && !has_ca {
            return Err(ConfigError::new(
                format!("{path}.require_client_certificate"),
                "needs common_tls_context.validation_context.trusted_ca to check client certificates against",
            ));
        }
    }
    // Built once here so a configuration that cannot serve is refused at load, naming the
    // field; the runtime builds what it serves with from the same settings
    // (`tls::transport`). A pending secret: as Envoy, the listener is kept and warms until
    // the secrets arrive (or serves after `initial_fetch_timeout` with handshakes that fail).
    context::server(&settings).map_err(|e| sources.error(&cpath, &e))?;
    Ok(Some(Arc::new(settings)))
}

/// A TLS error at the field of the common context it names, else at the context itself.
fn context_error(cpath: &str, e: &crate::tls::TlsError) -> ConfigError {
    match e.split() {
        (Some(field), inner) => ConfigError::new(format!("{cpath}.{field}"), inner.to_string()),
        (None, inner) => ConfigError::new(cpath, inner.to_string()),
    }
}

const UPSTREAM_PROXY_PROTOCOL: &str =
    "envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport";

const INTERNAL_UPSTREAM: &str =
    "envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport";

/// What a cluster's transport socket makes of its connections: TLS (none: plain), the PROXY
/// header version, and what `internal_upstream` passes to internal listeners.
pub(super) type UpstreamTransport = (
    Option<Arc<UpstreamTls>>,
    Option<ProxyVersion>,
    Option<Arc<crate::model::InternalUpstream>>,
);

/// A cluster's `transport_socket`: TLS or plain, possibly inside `upstream_proxy_protocol`
/// (whose header version comes second), or plain inside `internal_upstream` (what it passes
/// to internal listeners comes third).
pub(super) fn upstream_transport(
    ts: &core::TransportSocket,
    path: &str,
    check_sni: bool,
    auto_alpn: bool,
    secrets: &Secrets,
) -> Result<UpstreamTransport, ConfigError> {
    use core::transport_socket::ConfigType;
    let Some(ConfigType::TypedConfig(any)) = &ts.config_type else {
        return Ok((
            upstream(ts, path, check_sni, auto_alpn, secrets)?,
            None,
            None,
        ));
    };
    if type_name(&any.type_url) == INTERNAL_UPSTREAM {
        return internal_upstream(any, &format!("{path}.typed_config"))
            .map(|i| (None, None, Some(Arc::new(i))));
    }
    let (tls, proxy) = proxy_protocol_upstream(ts, any, path, check_sni, auto_alpn, secrets)?;
    Ok((tls, proxy, None))
}

/// `internal_upstream`: its `passthrough_metadata`; the socket inside must be plain.
fn internal_upstream(
    any: &envoy_types::pb::google::protobuf::Any,
    path: &str,
) -> Result<crate::model::InternalUpstream, ConfigError> {
    use crate::model::PassthroughFrom;
    use envoy_types::pb::envoy::extensions::transport_sockets::internal_upstream::v3::InternalUpstreamTransport;
    use envoy_types::pb::envoy::r#type::metadata::v3::metadata_kind::Kind;
    let iu: InternalUpstreamTransport = unpack(any, path)?;
    let Some(inner) = &iu.transport_socket else {
        return Err(ConfigError::new(
            format!("{path}.transport_socket"),
            "InternalUpstreamTransportValidationError.TransportSocket: value is required",
        ));
    };
    let ipath = format!("{path}.transport_socket");
    if let Some(core::transport_socket::ConfigType::TypedConfig(a)) = &inner.config_type {
        if type_name(&a.type_url) != "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer" {
            return Err(ConfigError::new(
                format!("{ipath}.typed_config"),
                format!(
                    "unsupported: only raw_buffer inside internal_upstream (connections to \
                     internal listeners are plain), not '{}'",
                    a.type_url
                ),
            ));
        }
    }
    let mut passthrough = Vec::new();
    for (i, m) in iu.passthrough_metadata.iter().enumerate() {
        let mpath = format!("{path}.passthrough_metadata[{i}]");
        let from = match m.kind.as_ref().and_then(|k| k.kind.as_ref()) {
            Some(Kind::Host(_)) => PassthroughFrom::Host,
            Some(Kind::Cluster(_)) => PassthroughFrom::Cluster,
            Some(_) => {
                return Err(ConfigError::new(
                    format!("{mpath}.kind"),
                    "unsupported: only host and cluster metadata reach an upstream connection",
                ))
            }
            None => return Err(ConfigError::new(format!("{mpath}.kind"), "required")),
        };
        if m.name.is_empty() {
            return Err(ConfigError::new(
                format!("{mpath}.name"),
                "value length must be at least 1 characters",
            ));
        }
        passthrough.push((from, m.name.clone()));
    }
    Ok(crate::model::InternalUpstream { passthrough })
}

/// TLS or plain, possibly inside `upstream_proxy_protocol`.
fn proxy_protocol_upstream(
    ts: &core::TransportSocket,
    any: &envoy_types::pb::google::protobuf::Any,
    path: &str,
    check_sni: bool,
    auto_alpn: bool,
    secrets: &Secrets,
) -> Result<(Option<Arc<UpstreamTls>>, Option<ProxyVersion>), ConfigError> {
    if type_name(&any.type_url) != UPSTREAM_PROXY_PROTOCOL {
        return Ok((upstream(ts, path, check_sni, auto_alpn, secrets)?, None));
    }
    let path = format!("{path}.typed_config");
    let pp: pp::ProxyProtocolUpstreamTransport = unpack(any, &path)?;
    let version = match pp.config.as_ref().map(|c| c.version) {
        None => ProxyVersion::V1,
        Some(v) => match core::proxy_protocol_config::Version::try_from(v) {
            Ok(core::proxy_protocol_config::Version::V1) => ProxyVersion::V1,
            Ok(core::proxy_protocol_config::Version::V2) => ProxyVersion::V2,
            Err(_) => {
                return Err(ConfigError::new(
                    format!("{path}.config.version"),
                    format!("unknown version {v}"),
                ))
            }
        },
    };
    let inner = match &pp.transport_socket {
        Some(inner) => upstream(
            inner,
            &format!("{path}.transport_socket"),
            check_sni,
            auto_alpn,
            secrets,
        )?,
        None => {
            return Err(ConfigError::new(
                format!("{path}.transport_socket"),
                "required (raw_buffer or tls)",
            ))
        }
    };
    Ok((inner, Some(version)))
}

/// A cluster's `transport_socket`.
fn upstream(
    ts: &core::TransportSocket,
    path: &str,
    check_sni: bool,
    auto_alpn: bool,
    secrets: &Secrets,
) -> Result<Option<Arc<UpstreamTls>>, ConfigError> {
    let Some(any) = typed(ts, path, UPSTREAM_TLS)? else {
        return Ok(None);
    };
    let path = format!("{path}.typed_config");
    let ctx: tls::UpstreamTlsContext = unpack(any, &path)?;
    super::fields::upstream_tls_context(&ctx, &path)?;
    let cpath = format!("{path}.common_tls_context");
    let empty = tls::CommonTlsContext::default();
    let common = ctx.common_tls_context.as_ref().unwrap_or(&empty);
    let (mut certificates, params, alpn, validation, pending, sources) =
        common_context(common, &cpath, secrets)?;
    if certificates.len() > 1 {
        return Err(ConfigError::new(
            format!("{cpath}.tls_certificates"),
            "a client context takes at most one certificate",
        ));
    }
    let sni = (!ctx.sni.is_empty()).then(|| ctx.sni.clone());
    if let Some(s) = &sni {
        if rustls_pki_types::ServerName::try_from(s.clone()).is_err() {
            return Err(ConfigError::new(
                format!("{path}.sni"),
                format!("'{s}' is not a valid server name"),
            ));
        }
    }
    // auto_config negotiates the protocol: offer both unless the context names its own.
    let alpn = if auto_alpn && alpn.is_empty() {
        vec!["h2".to_string(), "http/1.1".to_string()]
    } else {
        alpn
    };
    let settings = UpstreamTls {
        client_certificate: certificates.pop(),
        params,
        alpn,
        validation,
        sni,
        check_sni,
        auto_host_sni: ctx.auto_host_sni,
        sni_replaces_sans: ctx.auto_sni_san_validation,
        pending,
    };
    // Built once here so a configuration that cannot connect is refused at load.
    context::client(&settings).map_err(|e| sources.error(&cpath, &e))?;
    Ok(Some(Arc::new(settings)))
}

/// Certificates, parameters, ALPN, validation, whether an SDS secret they need has not
/// arrived yet, and where each certificate and the validation context came from.
type Common = (
    Vec<CertificateConfig>,
    Params,
    Vec<String>,
    Option<Validation>,
    bool,
    Sources,
);

/// Where the certificates and the validation context of a common context came from (a field,
/// or a secret), so an error in building them names that place.
#[derive(Debug, Default)]
struct Sources {
    certificates: Vec<String>,
    validation: String,
}

impl Sources {
    /// An error at the place its field names (a certificate or the validation context).
    fn error(&self, cpath: &str, e: &crate::tls::TlsError) -> ConfigError {
        let (field, inner) = e.split();
        let Some(field) = field else {
            return ConfigError::new(cpath, inner.to_string());
        };
        for (i, label) in self.certificates.iter().enumerate() {
            if let Some(rest) = field.strip_prefix(&format!("tls_certificates[{i}]")) {
                return ConfigError::new(format!("{cpath}.{label}{rest}"), inner.to_string());
            }
        }
        if let Some(rest) = field.strip_prefix("validation_context") {
            if !self.validation.is_empty() {
                return ConfigError::new(
                    format!("{cpath}.{}{rest}", self.validation),
                    inner.to_string(),
                );
            }
        }
        context_error(cpath, e)
    }
}

fn common_context(
    c: &tls::CommonTlsContext,
    path: &str,
    secrets: &Secrets,
) -> Result<Common, ConfigError> {
    super::fields::common_tls_context(c, path)?;
    let mut certs = Vec::with_capacity(c.tls_certificates.len());
    let mut sources = Sources::default();
    for (i, t) in c.tls_certificates.iter().enumerate() {
        certs.push(certificate(t, &format!("{path}.tls_certificates[{i}]"))?);
        sources.certificates.push(format!("tls_certificates[{i}]"));
    }
    // Certificates from secrets: static ones by name, or what SDS brought.
    let mut pending = false;
    for (i, s) in c.tls_certificate_sds_secret_configs.iter().enumerate() {
        let p = format!("{path}.tls_certificate_sds_secret_configs[{i}]");
        match secret(secrets, s, &p)? {
            None => pending = true,
            Some(tls::secret::Type::TlsCertificate(t)) => {
                certs.push(certificate(t, &format!("{p} (secret '{}')", s.name))?);
                sources.certificates.push(format!(
                    "tls_certificate_sds_secret_configs[{i}] (secret '{}').tls_certificate",
                    s.name
                ));
            }
            Some(_) => {
                return Err(ConfigError::new(
                    format!("{p}.name"),
                    format!("secret '{}' is not a tls_certificate", s.name),
                ))
            }
        }
    }
    let params = match &c.tls_params {
        Some(p) => params(p, &format!("{path}.tls_params"))?,
        None => Params::default(),
    };
    let validation = match &c.validation_context_type {
        None => None,
        Some(tls::common_tls_context::ValidationContextType::ValidationContext(v)) => Some(
            validation_context(v, &format!("{path}.validation_context"))?,
        ),
        Some(tls::common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(
            s,
        )) => {
            let p = format!("{path}.validation_context_sds_secret_config");
            match validation_secret(secrets, s, &p)? {
                None => {
                    pending = true;
                    None
                }
                Some(v) => {
                    sources.validation = format!(
                        "validation_context_sds_secret_config (secret '{}').validation_context",
                        s.name
                    );
                    Some(validation_context(
                        v,
                        &format!("{p} (secret '{}')", s.name),
                    )?)
                }
            }
        }
        Some(tls::common_tls_context::ValidationContextType::CombinedValidationContext(cv)) => {
            let p = format!("{path}.combined_validation_context");
            super::fields::combined_validation_context(cv, &p)?;
            let empty = tls::CertificateValidationContext::default();
            let default = cv.default_validation_context.as_ref().unwrap_or(&empty);
            let Some(s) = cv.validation_context_sds_secret_config.as_ref() else {
                return Err(ConfigError::new(
                    format!("{p}.validation_context_sds_secret_config"),
                    "required",
                ));
            };
            let sp = format!("{p}.validation_context_sds_secret_config");
            match validation_secret(secrets, s, &sp)? {
                None => {
                    // The default context alone is checked now, so a bad matcher is
                    // refused before the secret arrives.
                    validation_context_fields(default, &format!("{p}.default_validation_context"))?;
                    pending = true;
                    None
                }
                Some(dynamic) => {
                    sources.validation = format!(
                        "combined_validation_context.validation_context_sds_secret_config (secret '{}').validation_context",
                        s.name
                    );
                    Some(validation_context(
                        &combined(default, dynamic),
                        &format!("{p} (with secret '{}')", s.name),
                    )?)
                }
            }
        }
        Some(_) => {
            return Err(ConfigError::unsupported(format!(
                "{path}.validation_context_type"
            )))
        }
    };
    for (i, p) in c.alpn_protocols.iter().enumerate() {
        if p.is_empty() || p.len() > 255 {
            return Err(ConfigError::new(
                format!("{path}.alpn_protocols[{i}]"),
                "an ALPN protocol name is 1 to 255 bytes",
            ));
        }
    }
    Ok((
        certs,
        params,
        c.alpn_protocols.clone(),
        validation,
        pending,
        sources,
    ))
}

/// Envoy's combined validation context: the secret's context merged into the default one
/// (protobuf merge: the secret's set fields win, its lists are appended), so the default
/// context's SAN matchers apply with the secret's trusted CA.
fn combined(
    default: &tls::CertificateValidationContext,
    dynamic: &tls::CertificateValidationContext,
) -> tls::CertificateValidationContext {
    use prost::Message;
    let mut out = default.clone();
    // Both are valid messages of the same type: merging the encoding of one cannot fail.
    if out.merge(dynamic.encode_to_vec().as_slice()).is_err() {
        return dynamic.clone();
    }
    out
}

/// The validation context secret `s` names: None while it has not arrived.
fn validation_secret<'a>(
    secrets: &'a Secrets,
    s: &tls::SdsSecretConfig,
    path: &str,
) -> Result<Option<&'a tls::CertificateValidationContext>, ConfigError> {
    match secret(secrets, s, path)? {
        None => Ok(None),
        Some(tls::secret::Type::ValidationContext(v)) => Ok(Some(v)),
        Some(_) => Err(ConfigError::new(
            format!("{path}.name"),
            format!("secret '{}' is not a validation_context", s.name),
        )),
    }
}

/// A `TlsCertificate`'s chain and key.
fn certificate(t: &tls::TlsCertificate, path: &str) -> Result<CertificateConfig, ConfigError> {
    Ok(CertificateConfig {
        chain: data_source(
            t.certificate_chain.as_ref(),
            &format!("{path}.certificate_chain"),
        )?,
        key: data_source(t.private_key.as_ref(), &format!("{path}.private_key"))?,
    })
}

/// The secret `s` names: a static one, or one SDS brought; None for an SDS secret that has
/// not arrived yet (the listener or cluster warms meanwhile, as in Envoy). A static name that
/// is not there is an error.
fn secret<'a>(
    secrets: &'a Secrets,
    s: &tls::SdsSecretConfig,
    path: &str,
) -> Result<Option<&'a tls::secret::Type>, ConfigError> {
    let name = &s.name;
    match secrets.get(name) {
        Some(found) => {
            super::fields::secret(found, &format!("{path} (secret '{name}')"))?;
            match found.r#type.as_ref() {
                Some(t) => Ok(Some(t)),
                None => Err(ConfigError::new(
                    format!("{path}.name"),
                    format!("secret '{name}' is empty"),
                )),
            }
        }
        None if s.sds_config.is_some() => Ok(None),
        None => Err(ConfigError::new(
            format!("{path}.name"),
            format!("secret '{name}' is not available"),
        )),
    }
}

pub(super) fn data_source(
    ds: Option<&core::DataSource>,
    path: &str,
) -> Result<DataSource, ConfigError> {
    use core::data_source::Specifier;
    match ds.and_then(|d| d.specifier.as_ref()) {
        Some(Specifier::Filename(f)) => Ok(DataSource::File(PathBuf::from(f))),
        Some(Specifier::InlineBytes(b)) => Ok(DataSource::Inline(b.clone())),
        Some(Specifier::InlineString(s)) => Ok(DataSource::Inline(s.clone().into_bytes())),
        Some(Specifier::EnvironmentVariable(_)) => Err(ConfigError::new(
            format!("{path}.environment_variable"),
            "unsupported",
        )),
        None => Err(ConfigError::new(path, "required")),
    }
}

fn version(v: i32, path: &str, default: Version) -> Result<Version, ConfigError> {
    match TlsProtocol::try_from(v) {
        Ok(TlsProtocol::TlsAuto) => Ok(default),
        Ok(TlsProtocol::TlSv12) => Ok(Version::Tls12),
        Ok(TlsProtocol::TlSv13) => Ok(Version::Tls13),
        Ok(TlsProtocol::TlSv10 | TlsProtocol::TlSv11) => Err(ConfigError::new(
            path,
            "unsupported: skiff's TLS (rustls) implements TLS 1.2 and 1.3 only",
        )),
        Err(_) => Err(ConfigError::new(path, format!("unknown TLS version {v}"))),
    }
}

fn params(p: &tls::TlsParameters, path: &str) -> Result<Params, ConfigError> {
    let min = version(
        p.tls_minimum_protocol_version,
        &format!("{path}.tls_minimum_protocol_version"),
        Version::Tls12,
    )?;
    let max = version(
        p.tls_maximum_protocol_version,
        &format!("{path}.tls_maximum_protocol_version"),
        Version::Tls13,
    )?;
    if min > max {
        return Err(ConfigError::new(
            format!("{path}.tls_minimum_protocol_version"),
            "is above tls_maximum_protocol_version",
        ));
    }
    let out = Params {
        min,
        max,
        cipher_suites: p.cipher_suites.clone(),
        curves: p.ecdh_curves.clone(),
    };
    context::check_params(&out).map_err(|e| {
        let field = if matches!(e, crate::tls::TlsError::Curve(_)) {
            "ecdh_curves"
        } else {
            "cipher_suites"
        };
        ConfigError::new(format!("{path}.{field}"), e.to_string())
    })?;
    for _ in context::suites_not_offered(&out) {
        super::istio::without_effect("tls_cipher_suite_not_offered");
    }
    Ok(out)
}

fn validation_context(
    v: &tls::CertificateValidationContext,
    path: &str,
) -> Result<Validation, ConfigError> {
    let trusted_ca = v
        .trusted_ca
        .as_ref()
        .map(|ca| data_source(Some(ca), &format!("{path}.trusted_ca")))
        .transpose()?;
    let san_matchers = validation_context_fields(v, path)?;
    if !san_matchers.is_empty() && trusted_ca.is_none() {
        // Envoy's rule: a name anyone can put in a self-made certificate proves nothing.
        return Err(ConfigError::new(
            path,
            "SAN-based verification of peer certificates without trusted CA is insecure and not allowed",
        ));
    }
    Ok(Validation {
        trusted_ca,
        san_matchers,
    })
}

/// A validation context's SAN matchers, checked.
fn validation_context_fields(
    v: &tls::CertificateValidationContext,
    path: &str,
) -> Result<Vec<SanMatcher>, ConfigError> {
    let mut san_matchers = Vec::with_capacity(v.match_typed_subject_alt_names.len());
    for (i, m) in v.match_typed_subject_alt_names.iter().enumerate() {
        let p = format!("{path}.match_typed_subject_alt_names[{i}]");
        let san_type = match PbSanType::try_from(m.san_type) {
            Ok(PbSanType::Dns) => SanType::Dns,
            Ok(PbSanType::Uri) => SanType::Uri,
            Ok(PbSanType::Email) => SanType::Email,
            Ok(PbSanType::IpAddress) => SanType::IpAddress,
            Ok(PbSanType::OtherName) => {
                return Err(ConfigError::new(
                    format!("{p}.san_type"),
                    "unsupported: OTHER_NAME",
                ))
            }
            _ => {
                return Err(ConfigError::new(
                    format!("{p}.san_type"),
                    "required: DNS, URI, EMAIL or IP_ADDRESS",
                ))
            }
        };
        let matcher = m
            .matcher
            .as_ref()
            .ok_or_else(|| ConfigError::new(format!("{p}.matcher"), "required"))?;
        san_matchers.push(SanMatcher {
            san_type,
            matcher: string_match(matcher, &format!("{p}.matcher"))?,
        });
    }
    // The deprecated untyped matchers (Istio's outbound clusters still send them): as in
    // Envoy, each matches a name of any of the four kinds, alongside the typed ones.
    #[allow(deprecated)]
    for (i, m) in v.match_subject_alt_names.iter().enumerate() {
        let matcher = string_match(m, &format!("{path}.match_subject_alt_names[{i}]"))?;
        for san_type in [
            SanType::Dns,
            SanType::Uri,
            SanType::Email,
            SanType::IpAddress,
        ] {
            san_matchers.push(SanMatcher {
                san_type,
                matcher: matcher.clone(),
            });
        }
    }
    Ok(san_matchers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sds(name: &str) -> tls::SdsSecretConfig {
        tls::SdsSecretConfig {
            name: name.into(),
            sds_config: Some(core::ConfigSource::default()),
        }
    }

    /// Istio's shape: the default context's URI SAN matcher, the CA from secret `ROOTCA`.
    fn istio_common() -> tls::CommonTlsContext {
        use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
        let san = tls::SubjectAltNameMatcher {
            san_type: PbSanType::Uri as i32,
            matcher: Some(matcher::StringMatcher {
                match_pattern: Some(matcher::string_matcher::MatchPattern::Prefix(
                    "spiffe://cluster.local/".into(),
                )),
                ignore_case: false,
            }),
            oid: String::new(),
        };
        tls::CommonTlsContext {
            validation_context_type: Some(
                tls::common_tls_context::ValidationContextType::CombinedValidationContext(
                    tls::common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(tls::CertificateValidationContext {
                            match_typed_subject_alt_names: vec![san],
                            ..Default::default()
                        }),
                        validation_context_sds_secret_config: Some(sds("ROOTCA")),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn a_combined_validation_context_takes_the_default_matchers_and_the_secret_ca() {
        let c = istio_common();
        let (_, _, _, v, pending, _) = common_context(&c, "c", &Secrets::new()).expect("pending");
        assert!(pending && v.is_none(), "waits for ROOTCA");

        let mut secrets = Secrets::new();
        secrets.insert(
            "ROOTCA".into(),
            tls::Secret {
                name: "ROOTCA".into(),
                r#type: Some(tls::secret::Type::ValidationContext(
                    tls::CertificateValidationContext {
                        trusted_ca: Some(core::DataSource {
                            specifier: Some(core::data_source::Specifier::InlineString(
                                "PEM".into(),
                            )),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )),
            },
        );
        let (_, _, _, v, pending, sources) = common_context(&c, "c", &secrets).expect("built");
        let v = v.expect("a validation");
        assert!(!pending);
        assert!(matches!(v.trusted_ca, Some(DataSource::Inline(ref b)) if b == b"PEM"));
        assert_eq!(v.san_matchers.len(), 1);
        assert_eq!(v.san_matchers[0].san_type, SanType::Uri);
        assert_eq!(
            sources.validation,
            "combined_validation_context.validation_context_sds_secret_config (secret 'ROOTCA').validation_context"
        );
    }

    #[test]
    fn a_secret_named_without_sds_config_must_be_static() {
        let c = tls::CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![tls::SdsSecretConfig {
                name: "missing".into(),
                sds_config: None,
            }],
            ..Default::default()
        };
        let e = common_context(&c, "c", &Secrets::new()).expect_err("refused");
        assert_eq!(
            e.to_string(),
            "c.tls_certificate_sds_secret_configs[0].name: secret 'missing' is not available"
        );
    }
}
