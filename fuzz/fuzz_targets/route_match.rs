//! Route matching on any request: path, query string and header values straight from the
//! network against every kind of match (prefixes, separated prefixes, regexes, ranges, query
//! parameters, pseudo-headers, repeated headers), and scoped routes' key fragments read from
//! its headers. Matching must never panic. The same request
//! is hashed by every kind of hash policy (headers, cookies, query parameters) and the hash
//! looked up on a ring and a Maglev table: the same hash each time, a host always found.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::config::model::{
    HeaderKey, HeaderMatch, HeaderMatchKind, QueryCheck, QueryMatch, StringMatch, StringMatchKind,
};
use skiff::http::filters::router::request_hash;
use skiff::router::{HashKind, HashPolicy, PathMatch, RequestView, RouteMatch};
use skiff::upstream::hashing::{normalize, Maglev, Ring};

fn matchers() -> Vec<RouteMatch> {
    let s = |kind| StringMatch {
        kind,
        ignore_case: true,
    };
    let header = |name, kind, invert, missing_as_empty| HeaderMatch {
        name,
        kind,
        invert,
        missing_as_empty,
    };
    let re = skiff::config::pattern::Regex::new("^(?:/re/[0-9]+)$").expect("regex");
    vec![
        RouteMatch::new(PathMatch::SeparatedPrefix("/Sep".into()), false, vec![]),
        RouteMatch::new(PathMatch::Regex(re), true, vec![]),
        RouteMatch::new(PathMatch::Exact("/e".into()), false, vec![]),
        RouteMatch::new(
            PathMatch::Prefix("/".into()),
            true,
            vec![
                header(
                    HeaderKey::Header(http::HeaderName::from_static("x-n")),
                    HeaderMatchKind::Range(-5, 5),
                    false,
                    true,
                ),
                header(
                    HeaderKey::Authority,
                    HeaderMatchKind::String(s(StringMatchKind::Suffix(".com".into()))),
                    true,
                    false,
                ),
                header(
                    HeaderKey::Path,
                    HeaderMatchKind::Present(true),
                    false,
                    false,
                ),
            ],
        )
        .with_query(vec![
            QueryMatch {
                name: "a".into(),
                check: QueryCheck::String(s(StringMatchKind::Contains("x".into()))),
            },
            QueryMatch {
                name: "b".into(),
                check: QueryCheck::Present(false),
            },
        ])
        .with_grpc(true),
    ]
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\n');
    let path = parts.next().unwrap_or("");
    let authority = parts.next().unwrap_or("");
    let mut headers = http::HeaderMap::new();
    for value in parts {
        if let Ok(v) = http::HeaderValue::from_str(value) {
            headers.append("x-n", v.clone());
            headers.append("content-type", v);
        }
    }
    let req = RequestView {
        method: "GET",
        path,
        authority,
        scheme: "http",
        headers: &headers,
        runtime: &skiff::config::runtime::EMPTY,
        random: data.len() as u64,
        peer_certificate: data.first().is_some_and(|b| b & 1 == 1),
        metadata: None,
        filter_state: Default::default(),
    };
    for m in matchers() {
        let _ = m.matches(&req);
    }
    // Scoped routes' key fragments read the same header values: an element by key, by index,
    // or the whole value.
    use skiff::router::scoped::{Extract, HeaderFragment};
    let element = |key: &str, separator: &str| Extract::Element {
        key: key.into(),
        separator: separator.into(),
    };
    for (sep, extract) in [
        (";", element("k", "=")),
        ("", element("x-n", ":")),
        (",", Extract::Index(2)),
        ("", Extract::Index(0)),
    ] {
        let fragment = HeaderFragment {
            header: http::HeaderName::from_static("x-n"),
            element_separator: sep.into(),
            extract,
        };
        if let Some(f) = fragment.compute(&headers) {
            let first = headers.get("x-n").and_then(|v| v.to_str().ok());
            assert!(first.is_some_and(|v| v.contains(f.as_str())));
        }
    }

    for value in text.split('\n').skip(2) {
        if let Ok(v) = http::HeaderValue::from_str(value) {
            headers.append(http::header::COOKIE, v);
        }
    }
    let mut builder = http::Request::builder().header("host", authority);
    if let Ok(uri) = http::Uri::try_from(path) {
        builder = builder.uri(uri);
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (mut head, ()) = request.into_parts();
    head.headers.extend(headers);
    let (policies, ring, maglev) = hashing();
    let addrs = (
        "127.0.0.1:1".parse().expect("addr"),
        "127.0.0.1:2".parse().expect("addr"),
    );
    let ip = std::net::IpAddr::from([10, 0, 0, 1]);
    let mut cookies = Vec::new();
    let hash = request_hash(&policies, &head, "http", ip, addrs, &mut cookies);
    let mut again = Vec::new();
    assert_eq!(
        request_hash(&policies, &head, "http", ip, addrs, &mut again),
        hash
    );
    assert!(cookies.len() <= 1 && cookies == again);
    let h = hash.unwrap_or_default();
    for attempt in 0..3 {
        assert!(ring.pick(h, attempt).is_some_and(|i| i < 3));
        assert!(maglev.pick(h, attempt).is_some_and(|i| i < 3));
    }
});

/// Every kind of hash policy, and a ring and a Maglev table of three hosts.
fn hashing() -> (Vec<HashPolicy>, Ring, Maglev) {
    let re = skiff::config::pattern::Regex::new("[a-z]+").expect("regex");
    let policies = vec![
        HashPolicy {
            kind: HashKind::Header {
                name: HeaderKey::Header(http::HeaderName::from_static("x-n")),
                rewrite: Some((re, "${0}!".into())),
            },
            terminal: false,
        },
        HashPolicy {
            kind: HashKind::Header {
                name: HeaderKey::Path,
                rewrite: None,
            },
            terminal: false,
        },
        HashPolicy {
            kind: HashKind::QueryParameter("a".into()),
            terminal: false,
        },
        HashPolicy {
            kind: HashKind::Cookie {
                name: "s".into(),
                ttl: Some(std::time::Duration::from_secs(5)),
                path: "/".into(),
                attributes: vec![("SameSite".into(), String::new())],
            },
            terminal: true,
        },
        HashPolicy {
            kind: HashKind::SourceIp,
            terminal: false,
        },
    ];
    let (placed, min, max) = normalize((0..3).map(|i| (format!("10.0.0.{i}:80"), i as u32 + 1, i)));
    (
        policies,
        Ring::new(&placed, min, 16, 64, false),
        Maglev::new(&placed, max, 13),
    )
}
