//! `envoy.filters.http.jwt_authn`: providers, requirements, JWKS and the verification of a
//! token, as Envoy's `jwt_verify_lib` and authenticator do it (their status messages are
//! what a client is told).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::HeaderName;

use crate::model::StringMatch;
use crate::router::RouteMatch;

/// The filter's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtAuthn {
    /// `providers`, by name.
    pub providers: HashMap<String, Arc<Provider>>,
    /// `rules`, in order: the first whose match takes the request decides (none: no check).
    pub rules: Vec<(RouteMatch, Option<Arc<Requirement>>)>,
    /// `requirement_map`, for routes' `requirement_name`.
    pub requirement_map: HashMap<String, Arc<Requirement>>,
    /// `bypass_cors_preflight`.
    pub bypass_cors_preflight: bool,
    /// `strip_failure_response`: a failure's reply has no `www-authenticate` and no body.
    pub strip_failure_response: bool,
    /// `stat_prefix`: stats go under `http.<hcm prefix>.jwt_authn.<stat_prefix>`.
    pub stat_prefix: String,
}

/// `PerRouteConfig`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PerRoute {
    /// `disabled: true`: the route's requests pass unchecked (and count as allowed).
    Disabled,
    /// `requirement_name`: the `requirement_map` entry (looked up per request, as Envoy).
    Requirement(String),
}

/// `JwtProvider`.
#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    /// Its name in `providers`.
    pub name: String,
    /// `issuer` (empty: any).
    pub issuer: String,
    /// `audiences` (empty: any).
    pub audiences: Vec<String>,
    /// `subjects`.
    pub subjects: Option<StringMatch>,
    /// `require_expiration`.
    pub require_expiration: bool,
    /// `max_lifetime`.
    pub max_lifetime: Option<Duration>,
    /// `forward`: the token stays in the request.
    pub forward: bool,
    /// Where tokens are: `from_headers` (name, prefix), `from_params`, `from_cookies`; with
    /// none of them, `Authorization: Bearer` and `access_token`.
    pub from_headers: Vec<(HeaderName, String)>,
    /// `from_params`.
    pub from_params: Vec<String>,
    /// `from_cookies`.
    pub from_cookies: Vec<String>,
    /// `forward_payload_header`.
    pub forward_payload_header: Option<HeaderName>,
    /// `pad_forward_payload_header`.
    pub pad_forward_payload_header: bool,
    /// `clock_skew_seconds` (default 60).
    pub clock_skew: u64,
    /// `claim_to_headers`: (header, claim path split at `.`).
    pub claim_to_headers: Vec<(HeaderName, Vec<String>)>,
    /// The keys (`local_jwks`); `Err` holds why they did not parse, and every token then fails.
    pub jwks: Result<Vec<Jwk>, String>,
    /// `payload_in_metadata`: a verified token's payload under this key of the
    /// `envoy.filters.http.jwt_authn` dynamic metadata.
    pub payload_in_metadata: Option<String>,
    /// `normalize_payload_in_metadata.space_delimited_claims`: claims written as lists.
    pub space_delimited_claims: Vec<String>,
    /// `header_in_metadata`: a verified token's header under this key.
    pub header_in_metadata: Option<String>,
    /// `failed_status_in_metadata`: a failed token's `{code, message}` under this key.
    pub failed_status_in_metadata: Option<String>,
    /// `clear_route_cache`: the route is picked again after a token verifies.
    pub clear_route_cache: bool,
    /// `remote_jwks`: the keys come from this URL (`jwks` is then unused).
    pub remote: Option<Arc<RemoteJwks>>,
}

/// `remote_jwks`: where a provider's keys are fetched, and the keys last fetched, shared by
/// every worker.
#[derive(Debug)]
pub struct RemoteJwks {
    /// `http_uri.cluster`.
    pub cluster: String,
    /// The host of `http_uri.uri`.
    pub authority: String,
    /// The path (and query) of `http_uri.uri`.
    pub path: String,
    /// `http_uri.timeout`.
    pub timeout: Duration,
    /// `cache_duration` (default 10 minutes).
    pub cache_duration: Duration,
    /// `async_fetch`: the keys are fetched ahead, at start and before they expire; a failed
    /// fetch is tried again after this (`failed_refetch_duration`, default 1 s).
    pub async_fetch: Option<Duration>,
    /// `retry_policy`: a failed fetch is tried again by it (Envoy's conversion of the core
    /// policy, retried on `5xx,gateway-error,connect-failure,reset` unless it says otherwise).
    pub retry: Option<Arc<crate::router::retry::RetryPolicy>>,
    /// A worker is fetching them in the background.
    pub fetching: std::sync::atomic::AtomicBool,
    /// The keys fetched, and when.
    cache: std::sync::Mutex<Option<(Arc<Vec<Jwk>>, std::time::Instant)>>,
}

impl PartialEq for RemoteJwks {
    fn eq(&self, other: &Self) -> bool {
        (
            &self.cluster,
            &self.authority,
            &self.path,
            self.timeout,
            self.cache_duration,
            self.async_fetch,
            &self.retry,
        ) == (
            &other.cluster,
            &other.authority,
            &other.path,
            other.timeout,
            other.cache_duration,
            other.async_fetch,
            &other.retry,
        )
    }
}

impl RemoteJwks {
    /// Keys fetched from `authority` + `path` through `cluster`.
    pub fn new(
        cluster: String,
        authority: String,
        path: String,
        timeout: Duration,
        cache_duration: Duration,
        async_fetch: Option<Duration>,
        retry: Option<Arc<crate::router::retry::RetryPolicy>>,
    ) -> RemoteJwks {
        RemoteJwks {
            cluster,
            authority,
            path,
            timeout,
            cache_duration,
            async_fetch,
            retry,
            fetching: std::sync::atomic::AtomicBool::new(false),
            cache: std::sync::Mutex::new(None),
        }
    }

    /// How long the keys there are stay fresh (none: there are none).
    pub fn fresh_for(&self) -> Option<Duration> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let (_, at) = cache.as_ref()?;
        self.cache_duration.checked_sub(at.elapsed())
    }

    /// The keys, while they are fresh.
    pub fn keys(&self) -> Option<Arc<Vec<Jwk>>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .as_ref()
            .filter(|(_, at)| at.elapsed() < self.cache_duration)
            .map(|(k, _)| k.clone())
    }

    /// Keeps keys just fetched.
    pub fn store(&self, keys: Vec<Jwk>) {
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Arc::new(keys), std::time::Instant::now()));
    }
}

/// The dynamic metadata namespace the filter writes in.
pub const METADATA_NAMESPACE: &str = "envoy.filters.http.jwt_authn";

/// A `JwtRequirement`.
#[derive(Debug, Clone, PartialEq)]
pub enum Requirement {
    /// `provider_name`, or `provider_and_audiences` (its audiences instead of the provider's).
    Provider(Arc<Provider>, Option<Vec<String>>),
    /// `requires_any`.
    Any(Vec<Requirement>),
    /// `requires_all`.
    All(Vec<Requirement>),
    /// `allow_missing`.
    AllowMissing,
    /// `allow_missing_or_failed`.
    AllowMissingOrFailed,
}

/// One key of a JWKS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwk {
    /// `kid`.
    pub kid: Option<String>,
    /// `alg`.
    pub alg: Option<String>,
    /// The key.
    pub key: KeyMaterial,
}

/// What a key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMaterial {
    /// `kty: RSA`: modulus and exponent, big-endian.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// `kty: EC`: the curve (`P-256`, `P-384`) and the uncompressed point.
    Ec { crv: String, point: Vec<u8> },
    /// `kty: OKP` with `crv: Ed25519`.
    Ed25519(Vec<u8>),
    /// `kty: oct`: an HMAC secret.
    Oct(Vec<u8>),
}

/// Why a token was not accepted: Envoy's `jwt_verify::Status` and its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No token where the provider looks.
    Missing,
    /// Not three parts.
    BadFormat,
    /// A header that is not base64url.
    HeaderBase64,
    /// A header that is not JSON.
    HeaderParse,
    /// No `alg`, or not a string.
    HeaderBadAlg,
    /// A route's `requirement_name` not in `requirement_map` (a 403 with its own text).
    WrongRequirement,
    /// An `alg` not supported.
    HeaderNotImplementedAlg,
    /// A `kid` that is not a string.
    HeaderBadKid,
    /// A payload that is not base64url.
    PayloadBase64,
    /// A payload that is not JSON.
    PayloadParse,
    /// A signature that is not base64url.
    SignatureParse,
    /// `iss`, `sub`, `aud`, `exp`, `nbf` or `iat` of the wrong type.
    PayloadBadClaim(&'static str),
    /// `iss` is not the provider's.
    UnknownIssuer,
    /// `aud` has none of the audiences.
    AudienceNotAllowed,
    /// `exp` passed.
    Expired,
    /// `nbf` not yet.
    NotYetValid,
    /// No `exp` under `require_expiration`.
    MissingExpiration,
    /// `exp` too far (`max_lifetime`).
    LifetimeTooLong,
    /// `sub` does not match `subjects`.
    WrongSubject,
    /// No key has the token's `kid` and `alg`.
    KidAlgMismatch,
    /// The signature does not verify.
    VerificationFail,
    /// The JWKS did not parse.
    JwksBad,
}

impl Failure {
    /// The status code Envoy's JWT library gives it (`failed_status_in_metadata`'s `code`).
    pub fn code(self) -> u32 {
        match self {
            Failure::Missing => 1,
            Failure::NotYetValid => 2,
            Failure::Expired => 3,
            Failure::BadFormat => 4,
            Failure::HeaderBase64 => 5,
            Failure::HeaderParse => 6,
            Failure::HeaderBadAlg => 7,
            Failure::HeaderNotImplementedAlg => 8,
            Failure::HeaderBadKid => 9,
            Failure::PayloadBase64 => 10,
            Failure::PayloadParse => 11,
            Failure::PayloadBadClaim(m) => {
                const CLAIMS: [(&str, u32); 7] = [
                    ("[iss]", 12),
                    ("[sub]", 13),
                    ("[iat]", 14),
                    ("[nbf]", 16),
                    ("[exp]", 18),
                    ("[jti]", 20),
                    ("[aud]", 21),
                ];
                CLAIMS
                    .iter()
                    .find(|(c, _)| m.contains(c))
                    .map_or(11, |(_, code)| *code)
            }
            Failure::SignatureParse => 22,
            Failure::UnknownIssuer => 24,
            Failure::AudienceNotAllowed => 25,
            Failure::MissingExpiration
            | Failure::LifetimeTooLong
            | Failure::WrongSubject
            | Failure::VerificationFail => 26,
            Failure::KidAlgMismatch => 32,
            Failure::JwksBad => 28,
            Failure::WrongRequirement => 26,
        }
    }

    /// The message Envoy sends as the reply's body.
    pub fn message(self) -> &'static str {
        match self {
            Failure::Missing => "Jwt is missing",
            Failure::BadFormat => {
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
            }
            Failure::HeaderBase64 => "Jwt header is an invalid Base64url encoded",
            Failure::HeaderParse => "Jwt header is an invalid JSON",
            Failure::HeaderBadAlg => "Jwt header [alg] field is required and must be a string",
            Failure::HeaderNotImplementedAlg => "Jwt header [alg] is not supported",
            Failure::HeaderBadKid => "Jwt header [kid] field is not a string",
            Failure::PayloadBase64 => "Jwt payload is an invalid Base64url encoded",
            Failure::PayloadParse => "Jwt payload is an invalid JSON",
            Failure::SignatureParse => "Jwt signature is an invalid Base64url encoded",
            Failure::PayloadBadClaim(m) => m,
            Failure::UnknownIssuer => "Jwt issuer is not configured",
            Failure::AudienceNotAllowed => "Audiences in Jwt are not allowed",
            Failure::Expired => "Jwt is expired",
            Failure::NotYetValid => "Jwt not yet valid",
            // Measured: no `exp` under `require_expiration` or `max_lifetime`, a lifetime over
            // `max_lifetime` and a subject `subjects` does not match are all told this.
            Failure::MissingExpiration | Failure::LifetimeTooLong | Failure::WrongSubject => {
                "Jwt verification fails"
            }
            Failure::KidAlgMismatch => "Jwks doesn't have key to match kid or alg from Jwt",
            Failure::VerificationFail => "Jwt verification fails",
            Failure::JwksBad => "Jwks remote fetch is failed",
            Failure::WrongRequirement => "Wrong requirement_name",
        }
    }
}

/// A token taken apart.
#[derive(Debug, Clone)]
pub struct Jwt {
    /// `alg`.
    pub alg: String,
    /// `kid`.
    pub kid: Option<String>,
    /// The payload's claims.
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// The payload as sent (base64url).
    pub payload_b64: String,
    /// The header's fields.
    pub header: serde_json::Map<String, serde_json::Value>,
    signed: String,
    signature: Vec<u8>,
}

const ALGS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "HS256",
    "HS384", "HS512", "EdDSA",
];

fn b64(s: &str) -> Option<Vec<u8>> {
    // Envoy's decoder takes base64url with or without padding, and ignores the unused bits
    // of the last character (measured: a signature whose last character differs only there
    // verifies).
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    LENIENT.decode(s.trim_end_matches('=')).ok()
}

impl Jwt {
    /// Parses a token (Envoy's `Jwt::parseFromString`).
    pub fn parse(token: &str) -> Result<Jwt, Failure> {
        // Empty sections are skipped when counting them (`x.y.` is two).
        let parts: Vec<&str> = token.split('.').filter(|p| !p.is_empty()).collect();
        if parts.len() != 3 {
            return Err(Failure::BadFormat);
        }
        let header: serde_json::Value = b64(parts[0])
            .ok_or(Failure::HeaderBase64)
            .and_then(|h| serde_json::from_slice(&h).map_err(|_| Failure::HeaderParse))?;
        let header = header.as_object().ok_or(Failure::HeaderParse)?;
        let alg = header
            .get("alg")
            .and_then(|a| a.as_str())
            .ok_or(Failure::HeaderBadAlg)?
            .to_string();
        if !ALGS.contains(&alg.as_str()) {
            return Err(Failure::HeaderNotImplementedAlg);
        }
        let kid = match header.get("kid") {
            None => None,
            Some(serde_json::Value::String(k)) => Some(k.clone()),
            Some(_) => return Err(Failure::HeaderBadKid),
        };
        let payload: serde_json::Value = b64(parts[1])
            .ok_or(Failure::PayloadBase64)
            .and_then(|p| serde_json::from_slice(&p).map_err(|_| Failure::PayloadParse))?;
        let serde_json::Value::Object(claims) = payload else {
            return Err(Failure::PayloadParse);
        };
        for (claim, message) in [
            ("iss", "Jwt payload [iss] field is not a string"),
            ("sub", "Jwt payload [sub] field is not a string"),
            ("jti", "Jwt payload [jti] field is not a string"),
        ] {
            if claims.get(claim).is_some_and(|v| !v.is_string()) {
                return Err(Failure::PayloadBadClaim(message));
            }
        }
        for (claim, message) in [
            ("exp", "Jwt payload [exp] field is not an integer"),
            ("nbf", "Jwt payload [nbf] field is not an integer"),
            ("iat", "Jwt payload [iat] field is not an integer"),
        ] {
            if claims.get(claim).is_some_and(|v| v.as_f64().is_none()) {
                return Err(Failure::PayloadBadClaim(message));
            }
        }
        match claims.get("aud") {
            None | Some(serde_json::Value::String(_)) => {}
            Some(serde_json::Value::Array(a)) if a.iter().all(|v| v.is_string()) => {}
            Some(_) => {
                return Err(Failure::PayloadBadClaim(
                    "Jwt payload [aud] field is not a string or string list",
                ))
            }
        }
        let signature = b64(parts[2]).ok_or(Failure::SignatureParse)?;
        let header = header.clone();
        Ok(Jwt {
            alg,
            kid,
            claims,
            header,
            payload_b64: parts[1].to_string(),
            signed: format!("{}.{}", parts[0], parts[1]),
            signature,
        })
    }

    fn number(&self, claim: &str) -> Option<u64> {
        self.claims
            .get(claim)
            .and_then(|v| v.as_f64())
            .map(|f| if f < 0.0 { 0 } else { f as u64 })
    }

    /// The token's audiences.
    pub fn audiences(&self) -> Vec<&str> {
        match self.claims.get("aud") {
            Some(serde_json::Value::String(s)) => vec![s.as_str()],
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).collect(),
            _ => Vec::new(),
        }
    }

    /// A claim by its path, as `claim_to_headers` reads it: a string, number or boolean.
    pub fn claim_text(&self, path: &[String]) -> Option<String> {
        let (first, rest) = path.split_first()?;
        let mut v = self.claims.get(first)?;
        for p in rest {
            v = v.as_object()?.get(p)?;
        }
        match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

impl Provider {
    /// A provider named `name` with these keys, for `issuer` and `audiences`, with Envoy's
    /// defaults otherwise (default locations, tokens removed, 60 s of clock skew).
    pub fn new(
        name: &str,
        issuer: &str,
        audiences: Vec<String>,
        jwks: Result<Vec<Jwk>, String>,
    ) -> Provider {
        Provider {
            name: name.to_string(),
            issuer: issuer.to_string(),
            audiences,
            subjects: None,
            require_expiration: false,
            max_lifetime: None,
            forward: false,
            from_headers: Vec::new(),
            from_params: Vec::new(),
            from_cookies: Vec::new(),
            forward_payload_header: None,
            pad_forward_payload_header: false,
            clock_skew: 60,
            claim_to_headers: Vec::new(),
            jwks,
            payload_in_metadata: None,
            space_delimited_claims: Vec::new(),
            header_in_metadata: None,
            failed_status_in_metadata: None,
            clear_route_cache: false,
            remote: None,
        }
    }

    /// Whether a token of this provider writes dynamic metadata.
    pub fn writes_metadata(&self) -> bool {
        self.payload_in_metadata.is_some()
            || self.header_in_metadata.is_some()
            || self.failed_status_in_metadata.is_some()
    }

    /// Checks a parsed token against this provider at `now` (seconds since the epoch), with
    /// `audiences` in place of the provider's when a requirement names its own.
    pub fn verify(&self, jwt: &Jwt, audiences: Option<&[String]>, now: u64) -> Result<(), Failure> {
        if !self.issuer.is_empty()
            && jwt.claims.get("iss").and_then(|v| v.as_str()) != Some(self.issuer.as_str())
        {
            return Err(Failure::UnknownIssuer);
        }
        // Time first, then audiences, subjects, then the signature (Envoy's order).
        if let Some(nbf) = jwt.number("nbf") {
            if nbf > now.saturating_add(self.clock_skew) {
                return Err(Failure::NotYetValid);
            }
        }
        match jwt.number("exp") {
            Some(exp) if exp != 0 && now > exp.saturating_add(self.clock_skew) => {
                return Err(Failure::Expired)
            }
            None if self.require_expiration => return Err(Failure::MissingExpiration),
            _ => {}
        }
        // max_lifetime bounds the time left (`exp` - now) and so needs an `exp` (measured).
        if let Some(max) = self.max_lifetime {
            match jwt.number("exp") {
                Some(exp) if exp.saturating_sub(now) <= max.as_secs() => {}
                Some(_) => return Err(Failure::LifetimeTooLong),
                None => return Err(Failure::MissingExpiration),
            }
        }
        let allowed = audiences.unwrap_or(&self.audiences);
        if !allowed.is_empty()
            && !jwt
                .audiences()
                .iter()
                .any(|a| allowed.iter().any(|x| x == a))
        {
            return Err(Failure::AudienceNotAllowed);
        }
        if let Some(m) = &self.subjects {
            let sub = jwt.claims.get("sub").and_then(|v| v.as_str()).unwrap_or("");
            if !m.matches(sub) {
                return Err(Failure::WrongSubject);
            }
        }
        let fetched;
        let keys = match &self.remote {
            None => self.jwks.as_ref().map_err(|_| Failure::JwksBad)?,
            Some(r) => {
                fetched = r.keys().ok_or(Failure::JwksBad)?;
                &*fetched
            }
        };
        let mut tried = false;
        for k in keys {
            if jwt.kid.is_some() && k.kid.is_some() && jwt.kid != k.kid {
                continue;
            }
            if k.alg.as_deref().is_some_and(|a| a != jwt.alg) {
                continue;
            }
            let Some(ok) = k
                .key
                .verify(&jwt.alg, jwt.signed.as_bytes(), &jwt.signature)
            else {
                continue;
            };
            tried = true;
            if ok {
                return Ok(());
            }
        }
        Err(if tried {
            Failure::VerificationFail
        } else {
            Failure::KidAlgMismatch
        })
    }
}

impl KeyMaterial {
    /// Whether `sig` signs `msg` under `alg` with this key; `None` when the key is not of
    /// `alg`'s kind.
    fn verify(&self, alg: &str, msg: &[u8], sig: &[u8]) -> Option<bool> {
        use ring::signature as s;
        match self {
            KeyMaterial::Rsa { n, e } => {
                let params: &s::RsaParameters = match alg {
                    "RS256" => &s::RSA_PKCS1_2048_8192_SHA256,
                    "RS384" => &s::RSA_PKCS1_2048_8192_SHA384,
                    "RS512" => &s::RSA_PKCS1_2048_8192_SHA512,
                    "PS256" => &s::RSA_PSS_2048_8192_SHA256,
                    "PS384" => &s::RSA_PSS_2048_8192_SHA384,
                    "PS512" => &s::RSA_PSS_2048_8192_SHA512,
                    _ => return None,
                };
                let key = s::RsaPublicKeyComponents {
                    n: n.as_slice(),
                    e: e.as_slice(),
                };
                Some(key.verify(params, msg, sig).is_ok())
            }
            KeyMaterial::Ec { crv, point } => {
                let params: &s::EcdsaVerificationAlgorithm = match (alg, crv.as_str()) {
                    ("ES256", "P-256") => &s::ECDSA_P256_SHA256_FIXED,
                    ("ES384", "P-384") => &s::ECDSA_P384_SHA384_FIXED,
                    _ => return None,
                };
                Some(
                    s::UnparsedPublicKey::new(params, point)
                        .verify(msg, sig)
                        .is_ok(),
                )
            }
            KeyMaterial::Ed25519(x) => {
                if alg != "EdDSA" {
                    return None;
                }
                Some(
                    s::UnparsedPublicKey::new(&s::ED25519, x)
                        .verify(msg, sig)
                        .is_ok(),
                )
            }
            KeyMaterial::Oct(k) => {
                let algorithm = match alg {
                    "HS256" => ring::hmac::HMAC_SHA256,
                    "HS384" => ring::hmac::HMAC_SHA384,
                    "HS512" => ring::hmac::HMAC_SHA512,
                    _ => return None,
                };
                let key = ring::hmac::Key::new(algorithm, k);
                Some(ring::hmac::verify(&key, msg, sig).is_ok())
            }
        }
    }
}

/// Parses a JWKS (`{"keys": [...]}`), as Envoy's `Jwks::createFrom` reads one; keys of a
/// kind it does not know are skipped.
pub fn parse_jwks(text: &str) -> Result<Vec<Jwk>, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|_| "Jwks is not a valid JSON".to_string())?;
    let keys = v
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("[keys] is not found")?;
    let mut out = Vec::new();
    for k in keys {
        let Some(k) = k.as_object() else {
            return Err("[keys] element is not an object".into());
        };
        let field = |name: &str| k.get(name).and_then(|v| v.as_str());
        let bytes = |name: &str| -> Result<Vec<u8>, String> {
            field(name)
                .and_then(b64)
                .ok_or_else(|| format!("Jwks [{name}] field is missing or not base64url"))
        };
        let key = match field("kty") {
            Some("RSA") => KeyMaterial::Rsa {
                n: bytes("n")?,
                e: bytes("e")?,
            },
            Some("EC") => {
                let crv = field("crv").unwrap_or("").to_string();
                let (x, y) = (bytes("x")?, bytes("y")?);
                let mut point = vec![4u8];
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                KeyMaterial::Ec { crv, point }
            }
            Some("OKP") if field("crv") == Some("Ed25519") => KeyMaterial::Ed25519(bytes("x")?),
            Some("oct") => KeyMaterial::Oct(bytes("k")?),
            _ => continue,
        };
        out.push(Jwk {
            kid: field("kid").map(str::to_string),
            alg: field("alg").map(str::to_string),
            key,
        });
    }
    if out.is_empty() {
        return Err("Jwks doesn't have any valid public key".into());
    }
    Ok(out)
}

/// `forward_payload_header`'s value: the payload as the token carries it, padded when asked.
pub fn payload_header(jwt: &Jwt, pad: bool) -> String {
    let mut p = jwt.payload_b64.trim_end_matches('=').to_string();
    if pad {
        while !p.len().is_multiple_of(4) {
            p.push('=');
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: &serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn hs_token(key: &[u8], header: serde_json::Value, claims: serde_json::Value) -> String {
        let signed = format!("{}.{}", enc(&header), enc(&claims));
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
        let sig = ring::hmac::sign(&k, signed.as_bytes());
        format!(
            "{signed}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig.as_ref())
        )
    }

    fn provider(keys: &str) -> Provider {
        Provider::new("p", "https://iss", vec!["a1".into()], parse_jwks(keys))
    }

    #[test]
    fn hmac_tokens_verify_by_kid_issuer_audience_and_time() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        let p = provider(&format!(
            r#"{{"keys":[{{"kty":"oct","kid":"h1","alg":"HS256","k":"{k}"}}]}}"#
        ));
        let now = 1_000_000;
        let check = |header: serde_json::Value, claims: serde_json::Value| {
            let t = hs_token(secret, header, claims);
            Jwt::parse(&t).and_then(|j| p.verify(&j, None, now))
        };
        let h = serde_json::json!({"alg": "HS256", "kid": "h1"});
        let good = serde_json::json!({"iss": "https://iss", "aud": "a1", "exp": now + 10});
        assert_eq!(check(h.clone(), good.clone()), Ok(()));
        assert_eq!(
            check(
                serde_json::json!({"alg": "HS256", "kid": "other"}),
                good.clone()
            ),
            Err(Failure::KidAlgMismatch)
        );
        assert_eq!(
            check(h.clone(), serde_json::json!({"iss": "x", "aud": "a1"})),
            Err(Failure::UnknownIssuer)
        );
        assert_eq!(
            check(
                h.clone(),
                serde_json::json!({"iss": "https://iss", "aud": ["z", "a1"]})
            ),
            Ok(())
        );
        assert_eq!(
            check(
                h.clone(),
                serde_json::json!({"iss": "https://iss", "aud": "z"})
            ),
            Err(Failure::AudienceNotAllowed)
        );
        assert_eq!(
            check(
                h.clone(),
                serde_json::json!({"iss": "https://iss", "aud": "a1", "exp": now - 61})
            ),
            Err(Failure::Expired)
        );
        assert_eq!(
            check(
                h.clone(),
                serde_json::json!({"iss": "https://iss", "aud": "a1", "exp": now - 59})
            ),
            Ok(()),
            "within the clock skew"
        );
        assert_eq!(
            check(
                h,
                serde_json::json!({"iss": "https://iss", "aud": "a1", "nbf": now + 61})
            ),
            Err(Failure::NotYetValid)
        );
        let mut t = hs_token(secret, serde_json::json!({"alg": "HS256"}), good);
        t.pop();
        t.push('A');
        assert_eq!(
            Jwt::parse(&t).and_then(|j| p.verify(&j, None, now)),
            Err(Failure::VerificationFail)
        );
        assert_eq!(Jwt::parse("abc").err(), Some(Failure::BadFormat));
        assert_eq!(Jwt::parse("a.b.c").err(), Some(Failure::HeaderBase64));
        assert_eq!(Jwt::parse("x.y.").err(), Some(Failure::BadFormat));
    }

    #[test]
    fn jwks_refuse_what_has_no_key() {
        assert!(parse_jwks("{").is_err());
        assert!(parse_jwks(r#"{"keys": []}"#).is_err());
        assert!(parse_jwks(r#"{"keys": [{"kty": "RSA", "n": "AQAB"}]}"#).is_err());
    }
}
