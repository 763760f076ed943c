//! Hostile HTTP/2 from a downstream client, written frame by frame (`skiff_tests::h2raw`) and
//! sent through Envoy 1.40 and skiff side by side: bad pseudo-headers, connection-specific
//! headers, content-length against DATA, frames on the wrong streams, bad SETTINGS, flow-control
//! abuse, oversized frames, broken header blocks and HPACK, invalid header bytes. For each case
//! both proxies must end the stream the same way (response status, RST_STREAM code or GOAWAY
//! code), leave the connection as usable, forward the same number of requests upstream, and
//! stay up. Every request that reaches the upstream (an HTTP/1.1 recorder) is checked for
//! ambiguous framing or header bytes on both sides. Intentional differences are in
//! `tests/DIFFERENCES.md`.

use std::collections::BTreeMap;
use std::time::Duration;

use skiff_tests::config::{bootstrap, cluster, hcm, listener, route, vhost};
use skiff_tests::diff::{self, upstream_view};
use skiff_tests::h2raw::{self, hpack, Conn, Event};
use skiff_tests::run_for;
use skiff_tests::side_by_side::{pair, Side, Up};
use skiff_tests::upstream::RecordedRequest;

/// How a case may differ from Envoy (tests/DIFFERENCES.md).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// The same outcome on both.
    Same,
    /// skiff's outcome, as [`summary`] writes it; it forwards no more than Envoy does.
    Skiff(&'static str),
    /// The same outcome; the forwarded request differs in a header that changes nothing
    /// (tests/DIFFERENCES.md), so it is not compared.
    SameOutcome,
    /// skiff's outcome: it forwards a request Envoy refuses, with the offending part dropped
    /// by its HTTP/2 codec (h2), so what goes upstream is a plain, unambiguous request.
    SkiffForwards(&'static str),
}

use Expect::*;

/// The stream reset, the connection kept and usable: skiff's codec (h2) treats a malformed
/// request as a stream error (RFC 9113 §8.1.1) where Envoy closes the connection.
const RST: Expect = Skiff("1:RST PROTOCOL_ERROR open usable up=0");
/// The connection ended with GOAWAY PROTOCOL_ERROR, where Envoy closes it without a GOAWAY or
/// names another code (FRAME_SIZE_ERROR, COMPRESSION_ERROR, STREAM_CLOSED).
const GOAWAY: Expect = Skiff("- GOAWAY PROTOCOL_ERROR up=0");

/// The cases whose outcome differs from Envoy's, and how.
const DIFFERENT: &[(&str, Expect)] = &[
    ("missing_method", RST),
    ("missing_path", RST),
    ("missing_scheme", RST),
    ("missing_authority", Skiff("1:400 open usable up=0")),
    ("duplicate_method", RST),
    ("duplicate_path", RST),
    ("duplicate_authority", RST),
    ("unknown_pseudo", GOAWAY),
    ("status_pseudo_in_request", RST),
    ("pseudo_after_regular", RST),
    ("method_empty", GOAWAY),
    ("method_with_space", GOAWAY),
    ("path_empty", RST),
    ("path_no_slash", RST),
    ("path_asterisk_get", Skiff("1:404 open usable up=0")),
    ("path_absolute_uri", RST),
    ("path_with_space", RST),
    (
        "path_with_fragment",
        SkiffForwards("1:200 open usable up=1"),
    ),
    ("path_fragment_only", RST),
    ("authority_userinfo", Skiff("1:400 open usable up=0")),
    ("authority_empty", RST),
    ("authority_with_space", RST),
    ("connect_without_authority", Skiff("1:400 open usable up=0")),
    ("connect_with_path", RST),
    ("extended_connect_unannounced", RST),
    ("uppercase_name", GOAWAY),
    ("connection_header", RST),
    ("transfer_encoding_chunked", RST),
    ("te_gzip", RST),
    ("keep_alive_header", RST),
    ("upgrade_header", RST),
    ("proxy_connection_header", RST),
    ("name_with_space", GOAWAY),
    ("name_with_colon", GOAWAY),
    ("name_empty", GOAWAY),
    ("name_with_nul", GOAWAY),
    ("name_with_quote", RST),
    ("value_with_nul", GOAWAY),
    ("value_with_cr", GOAWAY),
    ("value_with_lf", GOAWAY),
    ("value_with_crlf_smuggle", GOAWAY),
    // Envoy adds `content-length: 0` to a bodiless request with a method it does not know.
    ("method_lower_case", SameOutcome),
    ("te_trailers_and_gzip", RST),
    ("content_length_plus", RST),
    // Past h2's header list limit, h2 answers 431 itself; Envoy resets the stream.
    ("header_list_over_60k", Skiff("1:431 open usable up=0")),
    ("cl_more_than_data", RST),
    ("cl_less_than_data", RST),
    ("cl_without_data", RST),
    ("cl_twice_differ", RST),
    ("cl_list", RST),
    ("cl_negative", RST),
    ("content_length_empty", RST),
    ("content_length_twice_same", RST),
    ("data_after_end_stream", GOAWAY),
    ("headers_on_even_stream", GOAWAY),
    ("decreasing_stream_ids", GOAWAY),
    ("reused_stream_id", GOAWAY),
    (
        "trailers_with_pseudo",
        SkiffForwards("1:200 open usable up=1"),
    ),
    ("trailers_without_end_stream", RST),
    ("window_update_0_on_connection", GOAWAY),
    ("window_update_0_on_stream", GOAWAY),
    (
        "window_update_overflow_connection",
        Skiff("- GOAWAY FLOW_CONTROL_ERROR up=0"),
    ),
    (
        "window_update_overflow_stream",
        Skiff("1:RST FLOW_CONTROL_ERROR open usable up=0"),
    ),
    ("window_update_bad_length", GOAWAY),
    ("settings_enable_push_2", GOAWAY),
    ("settings_initial_window_too_big", GOAWAY),
    ("settings_max_frame_size_too_small", GOAWAY),
    ("settings_max_frame_size_too_big", GOAWAY),
    ("settings_bad_length", GOAWAY),
    ("settings_on_stream", GOAWAY),
    ("settings_ack_with_payload", GOAWAY),
    ("priority_self_dependency", RST),
    ("headers_priority_self_dependency", RST),
    ("priority_bad_length", GOAWAY),
    ("push_promise_from_client", GOAWAY),
    ("rst_stream_on_idle", GOAWAY),
    ("rst_stream_on_stream_0", GOAWAY),
    ("ping_bad_length", GOAWAY),
    ("ping_on_stream", GOAWAY),
    ("goaway_on_stream", GOAWAY),
    ("hpack_index_huge", GOAWAY),
    ("hpack_index_past_table", GOAWAY),
    ("hpack_index_zero", GOAWAY),
    ("hpack_size_update_too_big", GOAWAY),
    ("hpack_size_update_after_field", GOAWAY),
    ("hpack_truncated_string", GOAWAY),
    ("hpack_bad_huffman", GOAWAY),
];

fn expectation(name: &str) -> Expect {
    DIFFERENT
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(Same, |(_, e)| *e)
}

struct Case {
    name: &'static str,
    /// Frames after the preface and the client's SETTINGS.
    frames: Vec<u8>,
}

fn path(name: &str) -> String {
    format!("/c/{name}")
}

fn get(name: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    hpack::request("GET", &path(name), extra)
}

fn post(name: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    hpack::request("POST", &path(name), extra)
}

const EH: u8 = h2raw::END_HEADERS;
const ES: u8 = h2raw::END_STREAM;

/// A GET on stream 1 with these header fields (in this order) instead of the usual ones.
fn fields(name: &'static str, f: &[(&str, &str)]) -> Case {
    Case {
        name,
        frames: h2raw::headers(1, EH | ES, &hpack::block(f)),
    }
}

/// A GET on stream 1 with the usual pseudo-headers and `extra` regular fields.
fn with(name: &'static str, extra: &[(&str, &str)]) -> Case {
    Case {
        name,
        frames: h2raw::headers(1, EH | ES, &get(name, extra)),
    }
}

fn raw(name: &'static str, frames: Vec<u8>) -> Case {
    Case { name, frames }
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn cases() -> Vec<Case> {
    use h2raw::*;
    let p = |n: &str| path(n);
    vec![
        with("control_get", &[]),
        fields(
            "missing_method",
            &[
                (":scheme", "http"),
                (":path", &p("missing_method")),
                (":authority", "diff.example.com"),
            ],
        ),
        fields(
            "missing_path",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "diff.example.com"),
            ],
        ),
        fields(
            "missing_scheme",
            &[
                (":method", "GET"),
                (":path", &p("missing_scheme")),
                (":authority", "diff.example.com"),
            ],
        ),
        fields(
            "missing_authority",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", &p("missing_authority")),
            ],
        ),
        fields(
            "missing_authority_with_host",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", &p("missing_authority_with_host")),
                ("host", "diff.example.com"),
            ],
        ),
        fields(
            "duplicate_method",
            &[
                (":method", "GET"),
                (":method", "POST"),
                (":scheme", "http"),
                (":path", &p("duplicate_method")),
                (":authority", "diff.example.com"),
            ],
        ),
        fields(
            "duplicate_path",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", &p("duplicate_path")),
                (":path", "/other"),
                (":authority", "diff.example.com"),
            ],
        ),
        fields(
            "duplicate_authority",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", &p("duplicate_authority")),
                (":authority", "diff.example.com"),
                (":authority", "other.example.com"),
            ],
        ),
        fields(
            "unknown_pseudo",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", &p("unknown_pseudo")),
                (":authority", "diff.example.com"),
                (":foo", "bar"),
            ],
        ),
        fields(
            "status_pseudo_in_request",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", &p("status_pseudo_in_request")),
                (":authority", "diff.example.com"),
                (":status", "200"),
            ],
        ),
        fields(
            "pseudo_after_regular",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                ("x-a", "1"),
                (":path", &p("pseudo_after_regular")),
                (":authority", "diff.example.com"),
            ],
        ),
        fields(
            "method_empty",
            &[
                (":method", ""),
                (":scheme", "http"),
                (":path", &p("method_empty")),
                (":authority", "diff.example.com"),
            ],
        ),
        fields(
            "method_with_space",
            &[
                (":method", "G T"),
                (":scheme", "http"),
                (":path", &p("method_with_space")),
                (":authority", "diff.example.com"),
            ],
        ),
        fields(
            "scheme_odd",
            &[
                (":method", "GET"),
                (":scheme", "foo"),
                (":path", &p("scheme_odd")),
                (":authority", "diff.example.com"),
            ],
        ),
        fields(
            "path_empty",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", ""),
                (":authority", "diff.example.com"),
            ],
        ),
        fields(
            "path_no_slash",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "c/path_no_slash"),
                (":authority", "diff.example.com"),
            ],
        ),
        fields(
            "path_asterisk_get",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "*"),
                (":authority", "diff.example.com"),
            ],
        ),
        fields(
            "path_absolute_uri",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "http://x/c/path_absolute_uri"),
                (":authority", "diff.example.com"),
            ],
        ),
        fields(
            "path_with_space",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/c/path with space"),
                (":authority", "diff.example.com"),
            ],
        ),
        fields(
            "path_with_fragment",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/c/path_with_fragment#frag"),
                (":authority", "diff.example.com"),
            ],
        ),
        fields(
            "path_fragment_only",
            &[
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "#path_fragment_only"),
                (":authority", "diff.example.com"),
            ],
        ),
        fields(
            "authority_userinfo",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", &p("authority_userinfo")),
                (":authority", "user:pw@diff.example.com"),
            ],
        ),
        fields(
            "authority_empty",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", &p("authority_empty")),
                (":authority", ""),
            ],
        ),
        fields(
            "authority_with_space",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", &p("authority_with_space")),
                (":authority", "diff example.com"),
            ],
        ),
        fields(
            "authority_and_host_differ",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", &p("authority_and_host_differ")),
                (":authority", "diff.example.com"),
                ("host", "other.example.com"),
            ],
        ),
        fields("connect_without_authority", &[(":method", "CONNECT")]),
        fields(
            "connect_with_path",
            &[
                (":method", "CONNECT"),
                (":scheme", "http"),
                (":path", &p("connect_with_path")),
                (":authority", "diff.example.com:80"),
            ],
        ),
        fields(
            "extended_connect_unannounced",
            &[
                (":method", "CONNECT"),
                (":protocol", "websocket"),
                (":scheme", "http"),
                (":path", &p("extended_connect_unannounced")),
                (":authority", "diff.example.com"),
            ],
        ),
        with("uppercase_name", &[("X-Upper", "1")]),
        with("connection_header", &[("connection", "keep-alive")]),
        with(
            "transfer_encoding_chunked",
            &[("transfer-encoding", "chunked")],
        ),
        with("te_gzip", &[("te", "gzip")]),
        with("te_trailers", &[("te", "trailers")]),
        with("keep_alive_header", &[("keep-alive", "timeout=5")]),
        with("upgrade_header", &[("upgrade", "websocket")]),
        with(
            "proxy_connection_header",
            &[("proxy-connection", "keep-alive")],
        ),
        with("name_with_space", &[("x foo", "1")]),
        with("name_with_colon", &[("x:foo", "1")]),
        with("name_empty", &[("", "1")]),
        with("name_with_nul", &[("x\0foo", "1")]),
        with("name_with_quote", &[("x\"foo", "1")]),
        with("value_with_nul", &[("x-foo", "a\0b")]),
        with("value_with_cr", &[("x-foo", "a\rb")]),
        with("value_with_lf", &[("x-foo", "a\nb")]),
        with(
            "value_with_crlf_smuggle",
            &[("x-foo", "a\r\nx-injected: 1")],
        ),
        with("value_leading_space", &[("x-foo", " a")]),
        with("value_trailing_tab", &[("x-foo", "a\t")]),
        with("value_high_bytes", &[("x-foo", "caf\u{e9}")]),
        with("underscore_name", &[("x_foo", "1")]),
        with("cookie_split", &[("cookie", "a=1"), ("cookie", "b=2")]),
        fields(
            "method_lower_case",
            &[
                (":method", "get"),
                (":scheme", "http"),
                (":path", &p("method_lower_case")),
                (":authority", "diff.example.com"),
            ],
        ),
        fields(
            "scheme_https_on_plaintext",
            &[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", &p("scheme_https_on_plaintext")),
                (":authority", "diff.example.com"),
            ],
        ),
        fields(
            "path_dot_segments",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/c/x/../path_dot_segments"),
                (":authority", "diff.example.com"),
            ],
        ),
        fields(
            "path_percent_encoded",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/c/path_percent_encoded%2Fx%00"),
                (":authority", "diff.example.com"),
            ],
        ),
        fields(
            "path_with_backslash",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/c/path_with_backslash\\x"),
                (":authority", "diff.example.com"),
            ],
        ),
        with("te_trailers_and_gzip", &[("te", "trailers, gzip")]),
        with("content_length_plus", &[("content-length", "+0")]),
        with("content_length_empty", &[("content-length", "")]),
        with(
            "content_length_twice_same",
            &[("content-length", "0"), ("content-length", "0")],
        ),
        with("value_8k", &[("x-long", &"v".repeat(8192))]),
        raw("headers_over_max_count", {
            let extra: Vec<(String, String)> = (0..150)
                .map(|i| (format!("x-h{i}"), "1".to_string()))
                .collect();
            let refs: Vec<(&str, &str)> = extra
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect();
            headers(1, EH | ES, &get("headers_over_max_count", &refs))
        }),
        raw("header_list_over_60k", {
            let big = "y".repeat(15000);
            let b = get(
                "header_list_over_60k",
                &[
                    ("x-a", &big),
                    ("x-b", &big),
                    ("x-c", &big),
                    ("x-d", &big),
                    ("x-e", &big),
                ],
            );
            let (first, rest) = b.split_at(16000);
            let mut f = headers(1, ES, first);
            let chunks: Vec<&[u8]> = rest.chunks(16000).collect();
            for (i, c) in chunks.iter().enumerate() {
                f.extend(frame(
                    CONTINUATION,
                    if i + 1 == chunks.len() { EH } else { 0 },
                    1,
                    c,
                ));
            }
            f
        }),
        with(
            "cookie_three_crumbs",
            &[
                ("cookie", "a=1"),
                ("x-between", "1"),
                ("cookie", "b=2"),
                ("cookie", "c=3"),
            ],
        ),
        with("header_repeated", &[("x-a", "1"), ("x-a", "2")]),
        with(
            "x_forwarded_for_from_client",
            &[("x-forwarded-for", "192.0.2.7")],
        ),
        with(
            "envoy_control_headers_from_client",
            &[
                ("x-envoy-retry-on", "5xx"),
                ("x-envoy-upstream-rq-timeout-ms", "1"),
            ],
        ),
        with("content_length_zero_get", &[("content-length", "0")]),
        raw(
            "post_without_content_length",
            cat(&[
                headers(1, EH, &post("post_without_content_length", &[])),
                data(1, false, b"ab"),
                data(1, true, b"c"),
            ]),
        ),
        raw(
            "empty_data_end_stream",
            cat(&[
                headers(1, EH, &post("empty_data_end_stream", &[])),
                data(1, true, b""),
            ]),
        ),
        // Envoy's inbound flood limits at their defaults: one empty frame in a row, 100
        // PRIORITY frames per stream opened (plus 100), 5 WINDOW_UPDATEs before any stream or
        // DATA. Over one, the connection is closed.
        raw(
            "one_empty_data_frame",
            cat(&[
                headers(1, EH, &post("one_empty_data_frame", &[])),
                data(1, false, b""),
                data(1, true, b"x"),
            ]),
        ),
        raw(
            "empty_continuation_flood",
            cat(&[
                headers(1, 0, &get("empty_continuation_flood", &[])),
                frame(CONTINUATION, 0, 1, b""),
                frame(CONTINUATION, 0, 1, b""),
                frame(CONTINUATION, EH, 1, b""),
            ]),
        ),
        raw("priority_frames_at_limit", {
            cat(&vec![priority(3, 0, 16); 100])
        }),
        raw("priority_frames_over_limit", {
            cat(&vec![priority(3, 0, 16); 101])
        }),
        raw("window_updates_at_limit", {
            cat(&vec![window_update(0, 1); 5])
        }),
        raw("window_updates_over_limit", {
            cat(&vec![window_update(0, 1); 6])
        }),
        raw("padded_headers_and_data", {
            let mut b = vec![3];
            b.extend(post("padded_headers_and_data", &[("content-length", "3")]));
            b.extend_from_slice(&[0, 0, 0]);
            cat(&[
                headers(1, EH | PADDED, &b),
                frame(DATA, PADDED | ES, 1, &[2, b'a', b'b', b'c', 0, 0]),
            ])
        }),
        raw(
            "cl_more_than_data",
            cat(&[
                headers(
                    1,
                    EH,
                    &post("cl_more_than_data", &[("content-length", "10")]),
                ),
                data(1, true, b"abc"),
            ]),
        ),
        raw(
            "cl_less_than_data",
            cat(&[
                headers(
                    1,
                    EH,
                    &post("cl_less_than_data", &[("content-length", "2")]),
                ),
                data(1, true, b"abcde"),
            ]),
        ),
        raw(
            "cl_without_data",
            headers(
                1,
                EH | ES,
                &post("cl_without_data", &[("content-length", "5")]),
            ),
        ),
        raw(
            "cl_twice_differ",
            cat(&[
                headers(
                    1,
                    EH,
                    &post(
                        "cl_twice_differ",
                        &[("content-length", "3"), ("content-length", "4")],
                    ),
                ),
                data(1, true, b"abc"),
            ]),
        ),
        raw(
            "cl_list",
            cat(&[
                headers(1, EH, &post("cl_list", &[("content-length", "3, 3")])),
                data(1, true, b"abc"),
            ]),
        ),
        raw(
            "cl_negative",
            cat(&[
                headers(1, EH, &post("cl_negative", &[("content-length", "-1")])),
                data(1, true, b"abc"),
            ]),
        ),
        raw(
            "cl_matches_data",
            cat(&[
                headers(1, EH, &post("cl_matches_data", &[("content-length", "3")])),
                data(1, true, b"abc"),
            ]),
        ),
        raw(
            "data_on_stream_0",
            cat(&[
                data(0, false, b"abc"),
                headers(1, EH | ES, &get("data_on_stream_0", &[])),
            ]),
        ),
        raw(
            "data_on_idle_stream",
            cat(&[
                data(3, true, b"abc"),
                headers(5, EH | ES, &get("data_on_idle_stream", &[])),
            ]),
        ),
        raw(
            "data_after_end_stream",
            cat(&[
                headers(1, EH | ES, &get("data_after_end_stream", &[])),
                data(1, true, b"abc"),
            ]),
        ),
        raw(
            "headers_on_even_stream",
            headers(2, EH | ES, &get("headers_on_even_stream", &[])),
        ),
        raw(
            "decreasing_stream_ids",
            cat(&[
                headers(5, EH | ES, &get("decreasing_stream_ids", &[])),
                headers(3, EH | ES, &get("decreasing_stream_ids_3", &[])),
            ]),
        ),
        raw(
            "reused_stream_id",
            cat(&[
                headers(1, EH | ES, &get("reused_stream_id", &[])),
                headers(1, EH | ES, &get("reused_stream_id_again", &[])),
            ]),
        ),
        raw(
            "trailers",
            cat(&[
                headers(1, EH, &post("trailers", &[])),
                data(1, false, b"abc"),
                headers(1, EH | ES, &hpack::block(&[("x-trailer", "1")])),
            ]),
        ),
        raw(
            "trailers_with_pseudo",
            cat(&[
                headers(1, EH, &post("trailers_with_pseudo", &[])),
                data(1, false, b"abc"),
                headers(
                    1,
                    EH | ES,
                    &hpack::block(&[(":path", "/x"), ("x-trailer", "1")]),
                ),
            ]),
        ),
        raw(
            "trailers_without_end_stream",
            cat(&[
                headers(1, EH, &post("trailers_without_end_stream", &[])),
                data(1, false, b"abc"),
                headers(1, EH, &hpack::block(&[("x-trailer", "1")])),
            ]),
        ),
        raw(
            "window_update_0_on_connection",
            cat(&[
                window_update(0, 0),
                headers(1, EH | ES, &get("window_update_0_on_connection", &[])),
            ]),
        ),
        raw(
            "window_update_0_on_stream",
            cat(&[
                headers(1, EH, &post("window_update_0_on_stream", &[])),
                window_update(1, 0),
            ]),
        ),
        raw(
            "window_update_overflow_connection",
            cat(&[
                window_update(0, 0x7fff_ffff),
                window_update(0, 0x7fff_ffff),
                headers(1, EH | ES, &get("window_update_overflow_connection", &[])),
            ]),
        ),
        raw(
            "window_update_overflow_stream",
            cat(&[
                headers(1, EH, &post("window_update_overflow_stream", &[])),
                window_update(1, 0x7fff_ffff),
                window_update(1, 0x7fff_ffff),
            ]),
        ),
        raw(
            "window_update_bad_length",
            cat(&[
                frame(WINDOW_UPDATE, 0, 0, &[0, 0, 1]),
                headers(1, EH | ES, &get("window_update_bad_length", &[])),
            ]),
        ),
        raw(
            "data_frame_oversized",
            cat(&[
                headers(1, EH, &post("data_frame_oversized", &[])),
                data(1, true, &[b'x'; 16385]),
            ]),
        ),
        raw(
            "headers_frame_oversized",
            headers(
                1,
                EH | ES,
                &get("headers_frame_oversized", &[("x-big", &"y".repeat(16400))]),
            ),
        ),
        raw(
            "settings_enable_push_2",
            cat(&[
                settings(&[(SETTINGS_ENABLE_PUSH, 2)]),
                headers(1, EH | ES, &get("settings_enable_push_2", &[])),
            ]),
        ),
        raw(
            "settings_initial_window_too_big",
            cat(&[
                settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, 0x8000_0000)]),
                headers(1, EH | ES, &get("settings_initial_window_too_big", &[])),
            ]),
        ),
        raw(
            "settings_max_frame_size_too_small",
            cat(&[
                settings(&[(SETTINGS_MAX_FRAME_SIZE, 16383)]),
                headers(1, EH | ES, &get("settings_max_frame_size_too_small", &[])),
            ]),
        ),
        raw(
            "settings_max_frame_size_too_big",
            cat(&[
                settings(&[(SETTINGS_MAX_FRAME_SIZE, 1 << 24)]),
                headers(1, EH | ES, &get("settings_max_frame_size_too_big", &[])),
            ]),
        ),
        raw(
            "settings_bad_length",
            cat(&[
                frame(SETTINGS, 0, 0, &[0, 1, 0, 0, 0]),
                headers(1, EH | ES, &get("settings_bad_length", &[])),
            ]),
        ),
        raw(
            "settings_on_stream",
            cat(&[
                frame(SETTINGS, 0, 1, &[]),
                headers(1, EH | ES, &get("settings_on_stream", &[])),
            ]),
        ),
        raw(
            "settings_ack_with_payload",
            cat(&[
                frame(SETTINGS, ACK, 0, &[0, 1, 0, 0, 0, 0]),
                headers(1, EH | ES, &get("settings_ack_with_payload", &[])),
            ]),
        ),
        raw(
            "settings_unknown_id",
            cat(&[
                settings(&[(0x99, 7)]),
                headers(1, EH | ES, &get("settings_unknown_id", &[])),
            ]),
        ),
        raw(
            "priority_self_dependency",
            cat(&[
                priority(1, 1, 16),
                headers(1, EH | ES, &get("priority_self_dependency", &[])),
            ]),
        ),
        raw("headers_priority_self_dependency", {
            let mut b = vec![0, 0, 0, 1, 16];
            b.extend(get("headers_priority_self_dependency", &[]));
            headers(1, EH | ES | PRIORITY_FLAG, &b)
        }),
        raw(
            "priority_bad_length",
            cat(&[
                frame(PRIORITY, 0, 1, &[0, 0, 0]),
                headers(3, EH | ES, &get("priority_bad_length", &[])),
            ]),
        ),
        raw(
            "push_promise_from_client",
            cat(&[
                headers(1, EH, &post("push_promise_from_client", &[])),
                frame(
                    PUSH_PROMISE,
                    EH,
                    1,
                    &cat(&[vec![0, 0, 0, 2], get("pushed", &[])]),
                ),
            ]),
        ),
        raw(
            "unknown_frame_type",
            cat(&[
                frame(0x20, 0xff, 0, b"hello"),
                frame(0x21, 0, 1, b"x"),
                headers(1, EH | ES, &get("unknown_frame_type", &[])),
            ]),
        ),
        raw(
            "continuation_without_headers",
            cat(&[frame(
                CONTINUATION,
                EH,
                1,
                &get("continuation_without_headers", &[]),
            )]),
        ),
        raw("continuation_split_ok", {
            let b = get("continuation_split_ok", &[]);
            cat(&[
                headers(1, ES, &b[..10]),
                frame(CONTINUATION, 0, 1, &b[10..20]),
                frame(CONTINUATION, EH, 1, &b[20..]),
            ])
        }),
        raw("continuation_other_stream", {
            let b = get("continuation_other_stream", &[]);
            cat(&[
                headers(1, ES, &b[..10]),
                frame(CONTINUATION, EH, 3, &b[10..]),
            ])
        }),
        raw("headers_interrupted_by_data", {
            let b = get("headers_interrupted_by_data", &[]);
            cat(&[
                headers(1, 0, &b[..10]),
                data(1, false, b"x"),
                frame(CONTINUATION, EH, 1, &b[10..]),
            ])
        }),
        raw(
            "padding_longer_than_payload",
            cat(&[
                headers(1, EH, &post("padding_longer_than_payload", &[])),
                frame(DATA, PADDED | ES, 1, &[10, b'a', b'b']),
            ]),
        ),
        raw(
            "rst_stream_on_idle",
            cat(&[
                rst_stream(7, 8),
                headers(1, EH | ES, &get("rst_stream_on_idle", &[])),
            ]),
        ),
        raw(
            "rst_stream_on_stream_0",
            cat(&[
                rst_stream(0, 8),
                headers(1, EH | ES, &get("rst_stream_on_stream_0", &[])),
            ]),
        ),
        raw(
            "ping_bad_length",
            cat(&[
                frame(PING, 0, 0, &[1, 2, 3]),
                headers(1, EH | ES, &get("ping_bad_length", &[])),
            ]),
        ),
        raw(
            "ping_on_stream",
            cat(&[
                frame(PING, 0, 1, &[0; 8]),
                headers(3, EH | ES, &get("ping_on_stream", &[])),
            ]),
        ),
        raw(
            "goaway_on_stream",
            cat(&[
                frame(GOAWAY, 0, 1, &[0; 8]),
                headers(3, EH | ES, &get("goaway_on_stream", &[])),
            ]),
        ),
        raw(
            "hpack_index_huge",
            cat(&[headers(
                1,
                EH | ES,
                &cat(&[get("hpack_index_huge", &[]), hpack::indexed(1 << 40)]),
            )]),
        ),
        raw(
            "hpack_index_past_table",
            cat(&[headers(
                1,
                EH | ES,
                &cat(&[get("hpack_index_past_table", &[]), hpack::indexed(70)]),
            )]),
        ),
        raw(
            "hpack_index_zero",
            cat(&[headers(
                1,
                EH | ES,
                &cat(&[get("hpack_index_zero", &[]), vec![0x80]]),
            )]),
        ),
        raw(
            "hpack_size_update_too_big",
            cat(&[headers(
                1,
                EH | ES,
                &cat(&[
                    hpack::size_update(100_000),
                    get("hpack_size_update_too_big", &[]),
                ]),
            )]),
        ),
        raw("hpack_size_update_after_field", {
            let b = get("hpack_size_update_after_field", &[]);
            headers(1, EH | ES, &cat(&[b, hpack::size_update(0)]))
        }),
        raw(
            "hpack_truncated_string",
            cat(&[headers(
                1,
                EH | ES,
                &cat(&[get("hpack_truncated_string", &[]), vec![0x00, 0x05, b'x']]),
            )]),
        ),
        raw(
            "hpack_bad_huffman",
            cat(&[headers(
                1,
                EH | ES,
                &cat(&[
                    get("hpack_bad_huffman", &[]),
                    vec![0x00, 0x81, b'x', 0x81, 0x00],
                ]),
            )]),
        ),
    ]
}

/// What one case did to one proxy.
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    /// Per stream: the response status and/or the reset code.
    streams: BTreeMap<u32, String>,
    /// The GOAWAY's code, `closed` without one, or `open`.
    connection: String,
    /// A fresh GET on the same connection afterwards got 200.
    usable: bool,
    /// Requests of this case that reached the upstream.
    upstream: usize,
}

/// One line: `<stream>:<status or reset>,…` (or `-`), the connection, `usable`, `up=<n>`.
fn summary(o: &Outcome) -> String {
    let streams: Vec<String> = o.streams.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    let streams = if streams.is_empty() {
        "-".to_string()
    } else {
        streams.join(",")
    };
    let usable = if o.usable { " usable" } else { "" };
    format!("{streams} {}{usable} up={}", o.connection, o.upstream)
}

async fn run_case(port: u16, case: &Case) -> Outcome {
    let mut c = Conn::open(port).await;
    c.send(&case.frames).await;
    // A case ends with a response, a reset, a GOAWAY or a close; some end with nothing (a
    // stream left waiting), which the time limit covers.
    c.read_until(
        Duration::from_millis(1500),
        Duration::from_millis(300),
        |ev| {
            ev.iter().any(|e| {
                matches!(
                    e,
                    Event::Data(_, _, true) | Event::Reset(..) | Event::GoAway(..)
                )
            })
        },
    )
    .await;
    let mut streams = BTreeMap::new();
    let ids: Vec<u32> = c
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Status(s, _) | Event::Reset(s, _) | Event::Data(s, _, _) => Some(*s),
            _ => None,
        })
        .collect();
    for id in ids {
        let o = c.stream_outcome(id);
        let mut d = Vec::new();
        if let Some(st) = o.status {
            d.push(st.to_string());
        }
        if let Some(r) = o.reset {
            d.push(format!("RST {}", h2raw::error_name(r)));
        }
        streams.insert(id, d.join(" + "));
    }
    let connection = match (c.goaway(), c.closed) {
        (Some(code), _) => format!("GOAWAY {}", h2raw::error_name(code)),
        (None, true) => "closed".to_string(),
        (None, false) => "open".to_string(),
    };
    let usable = if connection == "open" {
        c.probe(1001, &format!("/ok/{}", case.name)).await.status == Some(200)
    } else {
        false
    };
    Outcome {
        streams,
        connection,
        usable,
        upstream: 0,
    }
}

/// What makes a request forwarded upstream ambiguous or unsafe.
fn ambiguity(r: &RecordedRequest) -> Vec<String> {
    let mut bad = Vec::new();
    for (k, v) in &r.headers {
        if ["connection", "keep-alive", "proxy-connection", "upgrade"].contains(&k.as_str()) {
            bad.push(format!("connection-specific header {k}: {v}"));
        }
        // The upstream is HTTP/1.1: a body of unknown length goes chunked, and only so.
        if k == "transfer-encoding" && (v != "chunked" || r.has("content-length")) {
            bad.push(format!("transfer-encoding: {v}"));
        }
        if k == "te" && v != "trailers" {
            bad.push(format!("te: {v}"));
        }
        if k.is_empty()
            || k.bytes()
                .any(|b| b <= b' ' || b == b':' || b.is_ascii_uppercase())
        {
            bad.push(format!("header name {k:?}"));
        }
        if v.bytes().any(|b| b == 0 || b == b'\r' || b == b'\n') {
            bad.push(format!("header value {k}: {v:?}"));
        }
    }
    let cls = r.header_all("content-length");
    if cls.len() > 1 {
        bad.push(format!("content-length {cls:?}"));
    }
    if let Some(cl) = cls.first() {
        if cl.parse::<usize>().ok() != Some(r.body.len()) {
            bad.push(format!("content-length {cl} for {} bytes", r.body.len()));
        }
    }
    if r.header_all("host").len() > 1 {
        bad.push("two hosts".into());
    }
    if !r.path.starts_with('/') {
        bad.push(format!("path {:?}", r.path));
    }
    bad
}

fn build(admin: u16, listen: u16, upstream: u16) -> String {
    let m = hcm(
        "h2frames",
        vec![vhost("all", &["*"], vec![route("/", "up")])],
    );
    bootstrap(
        admin,
        vec![listener("l", "127.0.0.1", listen, m)],
        vec![cluster("up", &[upstream])],
    )
    .to_string()
}

/// Each case's outcome, and the requests of it the upstream received.
async fn run_all(side: &Side, cases: &[Case]) -> (Vec<Outcome>, Vec<Vec<RecordedRequest>>) {
    let runs = cases.iter().map(|c| run_case(side.port, c));
    let mut out = futures_util::future::join_all(runs).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reqs = side.rec.requests();
    let mut forwarded = Vec::new();
    for (o, c) in out.iter_mut().zip(cases) {
        let p = path(c.name);
        // The path as forwarded, up to a query or fragment.
        let mine: Vec<RecordedRequest> = reqs
            .iter()
            .filter(|r| r.path.split(['?', '#']).next() == Some(p.as_str()))
            .cloned()
            .collect();
        o.upstream = mine.len();
        forwarded.push(mine);
    }
    (out, forwarded)
}

#[tokio::test]
async fn hostile_http2_frames_as_envoy() {
    run_for(Duration::from_secs(120), async {
        let cases = cases();
        assert!(cases.len() >= 40, "{} cases", cases.len());
        for (name, _) in DIFFERENT {
            assert!(cases.iter().any(|c| c.name == *name), "no case {name}");
        }
        let (e, s) = pair(Up::H1, build).await;
        let ((oe, fe), (os, fs)) = tokio::join!(run_all(&e, &cases), run_all(&s, &cases));
        let mut failures = Vec::new();
        let mut table = String::new();
        for (i, ((c, a), b)) in cases.iter().zip(&oe).zip(&os).enumerate() {
            table.push_str(&format!(
                "{:34} envoy {:42} skiff {}\n",
                c.name,
                summary(a),
                summary(b)
            ));
            let ok = match expectation(c.name) {
                Same | SameOutcome => a == b,
                Skiff(want) => summary(b) == want && b.upstream <= a.upstream,
                SkiffForwards(want) => summary(b) == want,
            };
            if !ok {
                failures.push(c.name.to_string());
            }
            // Where both forward, the upstream gets the same request from each.
            if expectation(c.name) == Same {
                for (re, rs) in fe[i].iter().zip(&fs[i]) {
                    let d = diff::upstream_differences(&upstream_view(re), &upstream_view(rs));
                    if !d.is_empty() {
                        failures.push(format!("{}: upstream request differs: {d:?}", c.name));
                    }
                }
            }
        }
        eprintln!("{table}");
        // Whatever either forwards must be unambiguous.
        for side in [&e, &s] {
            let bad: Vec<String> = side
                .rec
                .requests()
                .iter()
                .filter_map(|r| {
                    let b = ambiguity(r);
                    (!b.is_empty()).then(|| format!("{} {}: {b:?}", r.method, r.path))
                })
                .collect();
            if side.proxy.kind.name() == "envoy" {
                if !bad.is_empty() {
                    eprintln!("envoy forwarded (not asserted): {bad:#?}");
                }
            } else {
                assert!(
                    bad.is_empty(),
                    "skiff forwarded ambiguous requests: {bad:#?}"
                );
            }
        }
        for side in [&e, &s] {
            let mut c = Conn::open(side.port).await;
            let o = c.probe(1, "/ok/after-all").await;
            assert_eq!(
                o.status,
                Some(200),
                "{} serves after the battery",
                side.proxy.kind.name()
            );
        }
        assert!(
            failures.is_empty(),
            "{} of {} cases differ from Envoy: {failures:?}",
            failures.len(),
            cases.len()
        );
    })
    .await
}
