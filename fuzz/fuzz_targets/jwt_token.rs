//! Any text as a JSON Web Token, as a request brings one, and as a JWKS: parsing refuses or
//! accepts without panicking; a parsed token is checked against keys of every kind, and one
//! that verifies has the issuer and audience the provider asks for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::config::jwt::{parse_jwks, payload_header, Jwt, Provider};

/// An RSA (2048-bit modulus of `0xff` bytes), an EC P-256, an Ed25519 and an HMAC key.
const JWKS: &str = r#"{"keys":[
 {"kty":"RSA","kid":"r","n":"_____________________________________________________________________________________________________________________________________________________________________________________________________________________________________________________________________________________________________________________________________________w","e":"AQAB"},
 {"kty":"EC","kid":"e","crv":"P-256","x":"YD1nU-JhgO6FUfXdyUt4NOQ4F7tu2Y-5qK6ebqQFc5o","y":"_0Q7-tIWNRiN5SIl_r7y0Yv2JczhXT8Tm_Q2-LQO3YI"},
 {"kty":"OKP","kid":"o","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
 {"kty":"oct","kid":"h","k":"c2VjcmV0"}]}"#;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = parse_jwks(&text);
    let Ok(jwt) = Jwt::parse(&text) else {
        return;
    };
    let _ = payload_header(&jwt, true);
    let _ = jwt.claim_text(&["a".to_string(), "b".to_string()]);
    let mut provider = Provider::new("p", "i", vec!["a".into()], parse_jwks(JWKS));
    provider.max_lifetime = Some(std::time::Duration::from_secs(60));
    if provider.verify(&jwt, None, 1_000_000).is_ok() {
        assert_eq!(jwt.claims.get("iss").and_then(|v| v.as_str()), Some("i"));
        assert!(jwt.audiences().contains(&"a"));
    }
});
