//! Route matching on any request: path, query string and header values straight from the
//! network against every kind of match (prefixes, separated prefixes, regexes, ranges, query
//! parameters, pseudo-headers, repeated headers). Matching must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::config::model::{
    HeaderKey, HeaderMatch, HeaderMatchKind, QueryCheck, QueryMatch, StringMatch, StringMatchKind,
};
use skiff::router::{PathMatch, RequestView, RouteMatch};

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
                header(HeaderKey::Path, HeaderMatchKind::Present(true), false, false),
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
    };
    for m in matchers() {
        let _ = m.matches(&req);
    }
});
