//! `envoy.filters.http.jwt_authn` with local JWKS, side by side with Envoy 1.40: RS256, ES256
//! and HS256 tokens, good and bad, in the default locations and in configured ones (headers,
//! parameters, cookies), with `max_lifetime`, `subjects` and `strip_failure_response`, against
//! provider, `requires_any`, `allow_missing_or_failed` and per-route requirements. For each
//! request: the status, the body of a refusal, `www-authenticate`, the access log's code and
//! details, and what the upstream received (the request line and the headers the filter
//! removes or adds).

use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use skiff_tests::client::curl;
use skiff_tests::config::{self, bootstrap, hcm, listener, route, to_yaml, vhost};
use skiff_tests::proxy::{Kind, ProxyProcess};
use skiff_tests::upstream::EchoUpstream;
use skiff_tests::{free_port, run_for};

/// A request: its name (sent as `x-case`), its path and its headers.
type Case<'a> = (&'a str, String, Vec<(&'a str, String)>);

const LOG: &str = "%RESPONSE_CODE% %RESPONSE_CODE_DETAILS% %REQ(X-CASE)%\n";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// The test's keys: RSA (made by openssl, DER `RSAPrivateKey`: ring makes no RSA keys), EC
/// P-256 and HMAC.
struct Keys {
    rsa: ring::signature::RsaKeyPair,
    ec: ring::signature::EcdsaKeyPair,
    hmac: Vec<u8>,
    jwks: String,
}

impl Keys {
    fn new() -> Keys {
        let rng = ring::rand::SystemRandom::new();
        let der = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-outform",
                "DER",
            ])
            .output()
            .expect("run openssl")
            .stdout;
        let rsa = ring::signature::RsaKeyPair::from_der(&der).expect("RSA key");
        let parts = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(rsa.public());
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .expect("EC key");
        let ec = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .expect("EC key");
        use ring::signature::KeyPair;
        let point = ec.public_key().as_ref().to_vec();
        let hmac = b"a secret shared for HS256 tokens!".to_vec();
        let jwks = json!({ "keys": [
            { "kty": "RSA", "kid": "rsa1", "alg": "RS256", "n": b64(&parts.n), "e": b64(&parts.e) },
            { "kty": "EC", "kid": "ec1", "alg": "ES256", "crv": "P-256",
              "x": b64(&point[1..33]), "y": b64(&point[33..]) },
            { "kty": "oct", "kid": "hs1", "alg": "HS256", "k": b64(&hmac) },
        ]})
        .to_string();
        Keys {
            rsa,
            ec,
            hmac,
            jwks,
        }
    }

    /// A token signed with `alg` (RS256, ES256, HS256), its header's `kid` as given.
    fn token(&self, alg: &str, kid: Option<&str>, claims: &Value) -> String {
        let mut header = json!({ "alg": alg, "typ": "JWT" });
        if let Some(k) = kid {
            header["kid"] = json!(k);
        }
        let signed = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = ring::rand::SystemRandom::new();
        let sig = match alg {
            "RS256" => {
                let mut sig = vec![0; self.rsa.public().modulus_len()];
                self.rsa
                    .sign(
                        &ring::signature::RSA_PKCS1_SHA256,
                        &rng,
                        signed.as_bytes(),
                        &mut sig,
                    )
                    .expect("sign");
                sig
            }
            "ES256" => self
                .ec
                .sign(&rng, signed.as_bytes())
                .expect("sign")
                .as_ref()
                .to_vec(),
            _ => {
                let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.hmac);
                ring::hmac::sign(&k, signed.as_bytes()).as_ref().to_vec()
            }
        };
        format!("{signed}.{}", b64(&sig))
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn claims(extra: Value) -> Value {
    let mut c = json!({
        "iss": "https://issuer.example",
        "aud": "aud1",
        "sub": "user1",
        "exp": now() + 3600,
        "a": { "b": "nestedval" },
    });
    for (k, v) in extra.as_object().expect("object") {
        if v.is_null() {
            c.as_object_mut().expect("object").remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn filter(provider: Value, rules: Value, extra: Value) -> Value {
    let mut f = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": { "p1": provider },
        "rules": rules,
        "requirement_map": { "r1": { "provider_name": "p1" } },
    });
    for (k, v) in extra.as_object().expect("object") {
        f[k] = v.clone();
    }
    json!({ "name": "envoy.filters.http.jwt_authn", "typed_config": f })
}

fn with_filter(name: &str, port: u16, jwt: Value) -> Value {
    let mut disabled = route("/pr_disabled", "echo");
    disabled["typed_per_filter_config"] = json!({ "envoy.filters.http.jwt_authn": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig",
        "disabled": true }});
    let mut r1 = route("/pr_r1", "echo");
    r1["typed_per_filter_config"] = json!({ "envoy.filters.http.jwt_authn": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig",
        "requirement_name": "r1" }});
    let mut nope = route("/pr_nope", "echo");
    nope["typed_per_filter_config"] = json!({ "envoy.filters.http.jwt_authn": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig",
        "requirement_name": "nope" }});
    let mut h = hcm(
        name,
        vec![vhost(
            "all",
            &["*"],
            vec![disabled, r1, nope, route("/", "echo")],
        )],
    );
    h["typed_config"]["http_filters"] = json!([jwt, {
        "name": "envoy.filters.http.router",
        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
    }]);
    h["typed_config"]["access_log"] = json!([config::file_log("/dev/stdout", Some(LOG))]);
    listener(name, "127.0.0.1", port, h)
}

/// What a request came to: the client's status, the refusal's body and `www-authenticate`,
/// the log line, and what the upstream received (its request line and the token and claim
/// headers).
async fn send(
    p: &ProxyProcess,
    port: u16,
    case: &str,
    path: &str,
    headers: &[(&str, String)],
) -> String {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut args: Vec<String> = vec!["-H".into(), format!("x-case: {case}")];
    for (k, v) in headers {
        args.push("-H".into());
        args.push(format!("{k}: {v}"));
    }
    if case.starts_with("h2") {
        args.push("--http2-prior-knowledge".into());
    }
    args.push(url);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = curl(&a).await;
    let log = p
        .wait_stdout_line(Duration::from_secs(5), |l| l.ends_with(&format!(" {case}")))
        .await;
    let seen = if r.resp.status == 200 {
        // The echo's body: its request line, then the headers it received.
        let text = r.resp.text();
        let mut lines = text.lines();
        let first = lines.next().unwrap_or("").replace(" HTTP/1.1", "");
        let mut kept: Vec<&str> = lines
            .filter(|l| {
                [
                    "authorization:",
                    "x-jwt:",
                    "x-payload:",
                    "x-sub:",
                    "x-nested:",
                ]
                .iter()
                .any(|h| l.to_ascii_lowercase().starts_with(h))
            })
            .collect();
        kept.sort();
        format!("{first} {kept:?}")
    } else {
        format!(
            "{:?} www-authenticate={:?} content-type={:?}",
            r.resp.text(),
            r.resp.header("www-authenticate"),
            r.resp.header("content-type")
        )
    };
    let line = format!("{case}: {} {seen} | {log}", r.resp.status);
    line.replace(&format!("127.0.0.1:{port}"), "127.0.0.1:PORT")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jwt_authn_as_envoy() {
    run_for(Duration::from_secs(240), async {
        let keys = Keys::new();
        let echo = EchoUpstream::start("echo").await;
        let good = keys.token("RS256", Some("rsa1"), &claims(json!({})));
        let es = keys.token("ES256", Some("ec1"), &claims(json!({})));
        let hs = keys.token("HS256", Some("hs1"), &claims(json!({})));
        let other_sub = keys.token(
            "RS256",
            Some("rsa1"),
            &claims(json!({ "sub": "user2", "a": { "b": 123 } })),
        );
        // A signature with one character changed in its middle, and one whose last character
        // differs only in the bits that carry no data (2048 bits leave 4 unused).
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut flipped = good.clone().into_bytes();
        let at = flipped.len() - 20;
        flipped[at] = if flipped[at] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).expect("ascii");
        let mut trailing = good.clone().into_bytes();
        let last = trailing.pop().expect("char");
        let i = ALPHABET.iter().position(|c| *c == last).expect("base64url");
        trailing.push(ALPHABET[(i & 0b11_0000) | ((i + 1) & 0b00_1111)]);
        let trailing = String::from_utf8(trailing).expect("ascii");
        let bad = |extra: Value| keys.token("RS256", Some("rsa1"), &claims(extra));
        let expired = bad(json!({ "exp": now() - 3600 }));
        let skewed = bad(json!({ "exp": now() - 30 }));
        let not_yet = bad(json!({ "nbf": now() + 3600 }));
        let no_exp = bad(json!({ "exp": null }));
        let future_iat = bad(json!({ "iat": now() + 3600 }));
        let wrong_iss = bad(json!({ "iss": "https://other" }));
        let wrong_aud = bad(json!({ "aud": "aud3" }));
        let aud_list = bad(json!({ "aud": ["x", "aud2"] }));
        let no_aud = bad(json!({ "aud": null }));
        let unknown_kid = keys.token("RS256", Some("nokey"), &claims(json!({})));
        let no_kid = keys.token("ES256", None, &claims(json!({})));
        let wrong_kid = keys.token("RS256", Some("ec1"), &claims(json!({})));
        let bearer = |t: &str| ("authorization", format!("Bearer {t}"));

        let provider_a = json!({
            "issuer": "https://issuer.example",
            "audiences": ["aud1", "aud2"],
            "local_jwks": { "inline_string": keys.jwks },
        });
        let rules_a = json!([
            { "match": { "prefix": "/req" }, "requires": { "provider_name": "p1" } },
            { "match": { "prefix": "/any" }, "requires": { "requires_any": { "requirements": [
                { "provider_name": "p1" }, { "allow_missing": {} } ] } } },
            { "match": { "prefix": "/fail_ok" }, "requires": { "allow_missing_or_failed": {} } },
            { "match": { "prefix": "/none" } },
            { "match": { "prefix": "/" }, "requires": { "provider_name": "p1" } },
        ]);
        let provider_b = json!({
            "issuer": "https://issuer.example",
            "audiences": ["aud1"],
            "local_jwks": { "inline_string": keys.jwks },
            "from_headers": [{ "name": "x-jwt", "value_prefix": "Bearer " }],
            "from_params": ["tok"],
            "forward": true,
            "forward_payload_header": "x-payload",
            "claim_to_headers": [
                { "header_name": "x-sub", "claim_name": "sub" },
                { "header_name": "x-nested", "claim_name": "a.b" },
            ],
            "clock_skew_seconds": 10,
            "require_expiration": true,
        });
        // Cookies, a padded payload header, max_lifetime, subjects, requires_all with the
        // route's own audiences, and failures stripped of their body and www-authenticate.
        let provider_c = json!({
            "issuer": "https://issuer.example",
            "audiences": ["aud1"],
            "local_jwks": { "inline_string": keys.jwks },
            "from_cookies": ["jwtc"],
            "forward_payload_header": "x-payload",
            "pad_forward_payload_header": true,
            "max_lifetime": "3600s",
            "subjects": { "prefix": "user" },
        });
        let rules_c = json!([
            { "match": { "prefix": "/all" }, "requires": { "requires_all": { "requirements": [
                { "provider_and_audiences": { "provider_name": "p1", "audiences": ["aud9"] } },
                { "allow_missing": {} } ] } } },
            { "match": { "prefix": "/" }, "requires": { "provider_name": "p1" } },
        ]);
        let long = bad(json!({ "exp": now() + 7200 }));
        let admin_sub = bad(json!({ "sub": "admin" }));
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let (pa, pb, pc) = (free_port(), free_port(), free_port());
            let b = bootstrap(
                free_port(),
                vec![
                    with_filter(
                        "a",
                        pa,
                        filter(
                            provider_a.clone(),
                            rules_a.clone(),
                            json!({ "bypass_cors_preflight": true }),
                        ),
                    ),
                    with_filter(
                        "b",
                        pb,
                        filter(provider_b.clone(), rules_a.clone(), json!({})),
                    ),
                    with_filter(
                        "c",
                        pc,
                        filter(
                            provider_c.clone(),
                            rules_c.clone(),
                            json!({ "strip_failure_response": true }),
                        ),
                    ),
                ],
                vec![config::cluster("echo", &[echo.port()])],
            );
            let p = ProxyProcess::start(kind, &to_yaml(&b), &["--concurrency", "1"]).await;
            let mut got = Vec::new();
            let a: Vec<Case> = vec![
                ("missing", "/req".into(), vec![]),
                ("missing_any", "/any".into(), vec![]),
                ("missing_fail_ok", "/fail_ok".into(), vec![]),
                ("missing_none", "/none".into(), vec![]),
                ("rs256", "/req".into(), vec![bearer(&good)]),
                ("h2_rs256", "/req".into(), vec![bearer(&good)]),
                ("h2_missing", "/req".into(), vec![]),
                (
                    "lowercase_bearer",
                    "/req".into(),
                    vec![("authorization", format!("bearer {good}"))],
                ),
                (
                    "two_spaces",
                    "/req".into(),
                    vec![("authorization", format!("Bearer  {good}"))],
                ),
                (
                    "basic",
                    "/req".into(),
                    vec![("authorization", "Basic abc".into())],
                ),
                ("es256", "/req".into(), vec![bearer(&es)]),
                ("hs256", "/req".into(), vec![bearer(&hs)]),
                ("expired", "/req".into(), vec![bearer(&expired)]),
                ("skewed", "/req".into(), vec![bearer(&skewed)]),
                ("not_yet", "/req".into(), vec![bearer(&not_yet)]),
                ("no_exp", "/req".into(), vec![bearer(&no_exp)]),
                ("future_iat", "/req".into(), vec![bearer(&future_iat)]),
                ("wrong_iss", "/req".into(), vec![bearer(&wrong_iss)]),
                ("wrong_aud", "/req".into(), vec![bearer(&wrong_aud)]),
                ("aud_list", "/req".into(), vec![bearer(&aud_list)]),
                ("no_aud", "/req".into(), vec![bearer(&no_aud)]),
                ("flipped", "/req".into(), vec![bearer(&flipped)]),
                ("trailing_bits", "/req".into(), vec![bearer(&trailing)]),
                ("unknown_kid", "/req".into(), vec![bearer(&unknown_kid)]),
                ("no_kid", "/req".into(), vec![bearer(&no_kid)]),
                ("wrong_kid", "/req".into(), vec![bearer(&wrong_kid)]),
                ("garbage", "/req".into(), vec![bearer("abc")]),
                ("not_base64", "/req".into(), vec![bearer("a.b.c")]),
                ("symbols", "/req".into(), vec![bearer("@@@.###.$$$")]),
                (
                    "two_headers",
                    "/req".into(),
                    vec![bearer(&good), bearer(&good)],
                ),
                ("query", format!("/req?x=1&access_token={good}&y=2"), vec![]),
                ("query_bad", format!("/req?access_token={flipped}"), vec![]),
                (
                    "header_and_query",
                    format!("/req?access_token={good}"),
                    vec![bearer(&es)],
                ),
                ("any_bad", "/any".into(), vec![bearer(&flipped)]),
                ("any_expired", "/any".into(), vec![bearer(&expired)]),
                ("any_good", "/any".into(), vec![bearer(&good)]),
                ("fail_ok_bad", "/fail_ok".into(), vec![bearer(&flipped)]),
                ("fail_ok_good", "/fail_ok".into(), vec![bearer(&good)]),
                ("none_token", "/none".into(), vec![bearer(&flipped)]),
                ("disabled", "/pr_disabled".into(), vec![bearer(&flipped)]),
                ("r1_missing", "/pr_r1".into(), vec![]),
                ("r1_good", "/pr_r1".into(), vec![bearer(&good)]),
                ("r1_bad", "/pr_r1".into(), vec![bearer(&flipped)]),
                ("wrong_requirement", "/pr_nope".into(), vec![bearer(&good)]),
            ];
            for (case, path, headers) in &a {
                got.push(send(&p, pa, case, path, headers).await);
            }
            // CORS preflights pass without a token only with both CORS headers.
            for (case, method, extra) in [
                ("preflight", "OPTIONS", true),
                ("options_origin_only", "OPTIONS", false),
            ] {
                let url = format!("http://127.0.0.1:{pa}/req");
                let mut args = vec!["-X", method, "-H", "origin: http://o", "-H"];
                let case_header = format!("x-case: {case}");
                args.push(&case_header);
                if extra {
                    args.extend(["-H", "access-control-request-method: GET"]);
                }
                args.push(&url);
                let r = curl(&args).await;
                got.push(format!("{case}: {}", r.resp.status));
            }
            let xjwt = |t: &str| ("x-jwt", format!("Bearer {t}"));
            let b_cases: Vec<Case> = vec![
                ("b_authorization", "/req".into(), vec![bearer(&good)]),
                (
                    "b_xjwt",
                    "/req".into(),
                    vec![xjwt(&good), ("x-sub", "evil".into())],
                ),
                ("b_xjwt_es", "/req".into(), vec![xjwt(&es)]),
                ("b_no_prefix", "/req".into(), vec![("x-jwt", good.clone())]),
                ("b_param", format!("/req?x=1&tok={good}&y=2"), vec![]),
                ("b_skewed", "/req".into(), vec![xjwt(&skewed)]),
                ("b_no_exp", "/req".into(), vec![xjwt(&no_exp)]),
                ("b_two", format!("/req?tok={other_sub}"), vec![xjwt(&good)]),
                (
                    "b_fail_ok_fakes",
                    "/fail_ok".into(),
                    vec![("x-sub", "evil".into()), ("x-payload", "x".into())],
                ),
                (
                    "b_none_fakes",
                    "/none".into(),
                    vec![xjwt(&good), ("x-nested", "evil".into())],
                ),
            ];
            for (case, path, headers) in &b_cases {
                got.push(send(&p, pb, case, path, headers).await);
            }
            let cookie = |t: &str| ("cookie", format!("a=b; jwtc={t}"));
            let c_cases: Vec<Case> = vec![
                ("c_cookie", "/req".into(), vec![cookie(&good)]),
                ("c_missing", "/req".into(), vec![]),
                ("c_long", "/req".into(), vec![cookie(&long)]),
                ("c_no_exp", "/req".into(), vec![cookie(&no_exp)]),
                ("c_subject", "/req".into(), vec![cookie(&admin_sub)]),
                ("c_all", "/all".into(), vec![cookie(&good)]),
            ];
            for (case, path, headers) in &c_cases {
                got.push(send(&p, pc, case, path, headers).await);
            }
            let admin = p.admin();
            for stat in [
                "http.a.jwt_authn.allowed",
                "http.a.jwt_authn.denied",
                "http.a.jwt_authn.cors_preflight_bypassed",
                "http.b.jwt_authn.allowed",
                "http.b.jwt_authn.denied",
            ] {
                got.push(format!("{stat}: {}", admin.counter(stat).await));
            }
            seen.push(got);
        }
        let mut diffs = Vec::new();
        for (e, s) in seen[0].iter().zip(&seen[1]) {
            if e != s {
                diffs.push(format!("envoy: {e}\nskiff: {s}"));
            }
        }
        assert!(
            diffs.is_empty(),
            "{} differences:\n{}",
            diffs.len(),
            diffs.join("\n\n")
        );
        let all = seen[0].join("\n");
        assert!(
            all.contains("missing: 401") && all.contains("rs256: 200"),
            "{all}"
        );
    })
    .await;
}

/// What jwt_authn writes into the dynamic metadata (`payload_in_metadata`,
/// `header_in_metadata`, `normalize_payload_in_metadata`, `failed_status_in_metadata`) and
/// routes picked again after `clear_route_cache`, side by side with Envoy 1.40.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jwt_metadata_and_route_cache_as_envoy() {
    run_for(Duration::from_secs(120), async {
        let keys = Keys::new();
        let echo = EchoUpstream::start("echo").await;
        let tok = |extra: Value| keys.token("RS256", Some("rsa1"), &claims(extra));
        let good = tok(json!({ "scope": "  read   write ", "groups": ["g1", "g2"],
            "big": 12345678901_u64, "flt": 1.5, "flag": true, "nul": null }));
        let user2 = tok(json!({ "sub": "user2", "scope": "" }));
        let expired = tok(json!({ "exp": now() - 3600 }));
        let wrong_aud = tok(json!({ "aud": "aud3" }));
        let mut flipped = good.clone().into_bytes();
        let at = flipped.len() - 20;
        flipped[at] = if flipped[at] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).expect("ascii");
        let provider = |key: &str, header: &str, clear: bool| {
            json!({
                "issuer": "https://issuer.example",
                "audiences": ["aud1"],
                "local_jwks": { "inline_string": keys.jwks },
                "from_headers": [{ "name": header, "value_prefix": "Bearer " }],
                "payload_in_metadata": key,
                "header_in_metadata": format!("{key}_header"),
                "failed_status_in_metadata": format!("{key}_failure"),
                "normalize_payload_in_metadata": { "space_delimited_claims": ["scope"] },
                "claim_to_headers": [{ "header_name": "x-sub", "claim_name": "sub" }],
                "clear_route_cache": clear,
            })
        };
        let jwt = json!({
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": {
                    "p1": provider("jwt_payload", "authorization", true),
                    "p2": provider("jwt_payload2", "x-jwt2", false),
                },
                "rules": [
                    { "match": { "prefix": "/any" }, "requires": { "requires_any": { "requirements": [
                        { "provider_name": "p1" }, { "provider_name": "p2" } ] } } },
                    { "match": { "prefix": "/all" }, "requires": { "requires_all": { "requirements": [
                        { "provider_name": "p1" }, { "provider_name": "p2" } ] } } },
                    { "match": { "prefix": "/fail_ok" }, "requires": { "requires_any": { "requirements": [
                        { "provider_name": "p1" }, { "allow_missing_or_failed": {} } ] } } },
                    { "match": { "prefix": "/p2" }, "requires": { "provider_name": "p2" } },
                    { "match": { "prefix": "/" }, "requires": { "provider_name": "p1" } },
                ],
            }
        });
        const NS: &str = "envoy.filters.http.jwt_authn";
        let md_route = |name: &str, path: &[&str], value: Value| {
            let path: Vec<Value> = path.iter().map(|k| json!({ "key": k })).collect();
            json!({ "name": name, "match": { "prefix": "/", "dynamic_metadata": [
                { "filter": NS, "path": path, "value": value } ] },
                "route": { "cluster": "echo" } })
        };
        let routes = json!([
            md_route("md_user1", &["jwt_payload", "sub"], json!({ "string_match": { "exact": "user1" } })),
            { "name": "hdr_user2", "match": { "prefix": "/", "headers": [
                { "name": "x-sub", "string_match": { "exact": "user2" } } ] },
              "route": { "cluster": "echo" } },
            md_route("md_failed", &["jwt_payload_failure", "code"], json!({ "present_match": true })),
            md_route("md_p2", &["jwt_payload2", "sub"], json!({ "present_match": true })),
            { "name": "default", "match": { "prefix": "/" }, "route": { "cluster": "echo" } },
        ]);
        let log = format!(
            "%RESPONSE_CODE% %ROUTE_NAME% md=%DYNAMIC_METADATA({NS})% sub=%DYNAMIC_METADATA({NS}:jwt_payload:sub)% %REQ(X-CASE)%\n"
        );
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::under_test()] {
            let port = free_port();
            let mut h = hcm("d", vec![]);
            h["typed_config"]["route_config"] =
                json!({ "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": routes }] });
            h["typed_config"]["http_filters"] = json!([jwt, {
                "name": "envoy.filters.http.router",
                "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
            }]);
            h["typed_config"]["access_log"] = json!([config::file_log("/dev/stdout", Some(&log))]);
            let b = bootstrap(
                free_port(),
                vec![listener("d", "127.0.0.1", port, h)],
                vec![config::cluster("echo", &[echo.port()])],
            );
            let p = ProxyProcess::start(kind, &to_yaml(&b), &["--concurrency", "1"]).await;
            let bearer = |t: &str| ("authorization", format!("Bearer {t}"));
            let second = |t: &str| ("x-jwt2", format!("Bearer {t}"));
            let cases: Vec<Case> = vec![
                ("good", "/".into(), vec![bearer(&good)]),
                ("user2", "/".into(), vec![bearer(&user2)]),
                ("missing", "/".into(), vec![]),
                ("expired", "/".into(), vec![bearer(&expired)]),
                ("wrong_aud", "/".into(), vec![bearer(&wrong_aud)]),
                ("malformed", "/".into(), vec![bearer("a.b")]),
                ("flipped", "/".into(), vec![bearer(&flipped)]),
                ("any_first_fails", "/any".into(), vec![bearer(&flipped), second(&user2)]),
                ("any_first_good", "/any".into(), vec![bearer(&good), second(&user2)]),
                ("all_good", "/all".into(), vec![bearer(&good), second(&user2)]),
                ("all_second_missing", "/all".into(), vec![bearer(&good)]),
                ("fail_ok_bad", "/fail_ok".into(), vec![bearer(&flipped)]),
                ("p2_no_clear", "/p2".into(), vec![second(&user2)]),
            ];
            let mut got = Vec::new();
            for (case, path, headers) in &cases {
                got.push(send(&p, port, case, path, headers).await);
            }
            seen.push(got);
        }
        let mut diffs = Vec::new();
        for (e, s) in seen[0].iter().zip(&seen[1]) {
            if e != s {
                diffs.push(format!("envoy: {e}\nskiff: {s}"));
            }
        }
        assert!(
            diffs.is_empty(),
            "{} differences:\n{}\n\nEnvoy:\n{}",
            diffs.len(),
            diffs.join("\n\n"),
            seen[0].join("\n")
        );
        let all = seen[0].join("\n");
        assert!(all.contains("md_user1"), "{all}");
    })
    .await;
}

/// `remote_jwks` side by side with Envoy 1.40: keys fetched through a cluster of their own
/// when a token first needs them (the fetch's method, path and host as the key server sees
/// them), kept for `cache_duration` (a second token fetches nothing), a token the keys do not
/// verify, a request without a token (nothing fetched), and a provider whose key server cannot
/// be reached (401 `Jwks remote fetch is failed`), keys fetched ahead at start
/// (`async_fetch`); `jwks_fetch_success` and `_failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jwt_remote_jwks_as_envoy() {
    use skiff_tests::upstream::EchoOptions;
    run_for(Duration::from_secs(60), async {
        let keys = Keys::new();
        let echo = EchoUpstream::start("echo").await;
        let good = keys.token("RS256", Some("rsa1"), &claims(json!({})));
        let es = keys.token("ES256", Some("ec1"), &claims(json!({})));
        let unknown_kid = keys.token("RS256", Some("nokey"), &claims(json!({})));
        let bearer = |t: &str| ("authorization", format!("Bearer {t}"));
        let mut seen = Vec::new();
        for kind in [Kind::Envoy, Kind::Skiff] {
            let mut opts = EchoOptions::named("keys");
            opts.body = Some(keys.jwks.clone());
            let key_server = EchoUpstream::with_options(opts).await;
            let dead = free_port();
            let remote = |cluster: &str, path: &str| {
                json!({
                    "issuer": "https://issuer.example",
                    "remote_jwks": {
                        "http_uri": {
                            "uri": format!("http://keys.example{path}"),
                            "cluster": cluster,
                            "timeout": "1s",
                        },
                        "cache_duration": "300s",
                    },
                })
            };
            // Fetched ahead, at start.
            let mut ahead = remote("keys", "/ahead/jwks.json");
            ahead["remote_jwks"]["async_fetch"] = json!({});
            let mut f = filter(
                remote("keys", "/path/jwks.json?v=1"),
                json!([
                    { "match": { "prefix": "/dead" }, "requires": { "provider_name": "p2" } },
                    { "match": { "prefix": "/ahead" }, "requires": { "provider_name": "p3" } },
                    { "match": { "prefix": "/retried" }, "requires": { "provider_name": "p4" } },
                    { "match": { "prefix": "/" }, "requires": { "provider_name": "p1" } },
                ]),
                json!({}),
            );
            f["typed_config"]["providers"]["p2"] = remote("dead", "/path/jwks.json?v=1");
            f["typed_config"]["providers"]["p3"] = ahead;
            // A key server that answers 503: the fetch tried again by its retry policy.
            let mut retried = remote("keys", "/status/503/jwks.json");
            retried["remote_jwks"]["retry_policy"] = json!({ "num_retries": 2,
                "retry_back_off": { "base_interval": "0.01s", "max_interval": "0.05s" } });
            f["typed_config"]["providers"]["p4"] = retried;
            let (admin, port) = (free_port(), free_port());
            let b = bootstrap(
                admin,
                vec![with_filter("r", port, f)],
                vec![
                    config::cluster("echo", &[echo.port()]),
                    config::cluster("keys", &[key_server.port()]),
                    config::cluster("dead", &[dead]),
                ],
            );
            let p = ProxyProcess::start(kind, &to_yaml(&b), &["--concurrency", "1"]).await;
            // The keys fetched ahead are there before any request.
            for _ in 0..50 {
                if !key_server.rec.requests().is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let cases: Vec<Case> = vec![
                ("ahead", "/ahead".into(), vec![bearer(&good)]),
                ("no_token", "/a".into(), vec![]),
                ("first", "/a".into(), vec![bearer(&good)]),
                ("cached", "/a".into(), vec![bearer(&es)]),
                ("unknown_kid", "/a".into(), vec![bearer(&unknown_kid)]),
                ("dead", "/dead".into(), vec![bearer(&good)]),
                ("dead_again", "/dead".into(), vec![bearer(&good)]),
                ("retried", "/retried".into(), vec![bearer(&good)]),
            ];
            let mut got = Vec::new();
            for (case, path, headers) in &cases {
                got.push(send(&p, port, case, path, headers).await);
            }
            for r in key_server.rec.requests() {
                got.push(format!(
                    "key server: {} {} host={:?}",
                    r.method,
                    r.path,
                    r.headers
                        .iter()
                        .find(|(k, _)| k == "host")
                        .map(|(_, v)| v.clone())
                ));
            }
            let admin = p.admin();
            for stat in [
                "http.r.jwt_authn.allowed",
                "http.r.jwt_authn.denied",
                "http.r.jwt_authn.jwks_fetch_success",
                "http.r.jwt_authn.jwks_fetch_failed",
            ] {
                got.push(format!("{stat}: {}", admin.counter(stat).await));
            }
            seen.push(got);
        }
        assert_eq!(seen[0], seen[1], "remote JWKS (Envoy, skiff)");
        let all = seen[0].join("\n");
        assert!(
            all.contains("first: 200")
                && all.contains("ahead: 200")
                && all.contains("jwks_fetch_success: 2"),
            "{all}"
        );
        // The failing key server was asked three times: the fetch and its two retries.
        assert_eq!(
            all.matches("key server: GET /status/503/jwks.json").count(),
            3,
            "{all}"
        );
    })
    .await;
}
