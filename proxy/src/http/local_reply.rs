//! Responses the proxy makes itself (404 no route, 503 no healthy upstream, …), byte for byte
//! the ones Envoy sends.

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Response, StatusCode};

use crate::config::model::LocalReplyConfig;
use crate::http::framing::Reason;
use crate::stream_info::{ResponseFlag, StreamInfo};

/// A local reply: status, body, the response flag and the detail for access logs.
#[derive(Debug, Clone)]
pub struct LocalReply {
    /// Status code.
    pub status: StatusCode,
    /// Body (text/plain), empty for none.
    pub body: Bytes,
    /// Headers of its own (a redirect's `location`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The route's `response_headers_to_add|remove` (direct responses and redirects), applied
    /// in order before the body's headers.
    pub mutations: Vec<std::sync::Arc<crate::router::HeaderParser>>,
    /// Flag for `%RESPONSE_FLAGS%`.
    pub flag: Option<ResponseFlag>,
    /// `%RESPONSE_CODE_DETAILS%`.
    pub details: &'static str,
    /// Close the connection after the reply (HTTP/1.1).
    pub close: bool,
    /// To a gRPC request: this `grpc-status` rather than the one the HTTP status stands for
    /// (the fault filter's `grpc_status` abort).
    pub grpc_status: Option<u32>,
}

impl LocalReply {
    /// An original IP detection extension found no client address (its status replaces 403).
    pub const IP_DETECTION_FAILED: LocalReply = LocalReply {
        status: StatusCode::FORBIDDEN,
        body: Bytes::from_static(b""),
        headers: Vec::new(),
        mutations: Vec::new(),
        flag: None,
        details: "rejecting_because_detection_failed",
        close: false,
        grpc_status: None,
    };
    /// No route: 404, empty body, NR.
    pub const NO_ROUTE: LocalReply = LocalReply {
        status: StatusCode::NOT_FOUND,
        body: Bytes::from_static(b""),
        headers: Vec::new(),
        mutations: Vec::new(),
        flag: Some(ResponseFlag::NoRouteFound),
        details: "route_not_found",
        close: false,
        grpc_status: None,
    };
    /// Cluster missing: 503, NC.
    pub const NO_CLUSTER: LocalReply = LocalReply {
        status: StatusCode::SERVICE_UNAVAILABLE,
        body: Bytes::from_static(b""),
        headers: Vec::new(),
        mutations: Vec::new(),
        flag: Some(ResponseFlag::NoClusterFound),
        details: "cluster_not_found",
        close: false,
        grpc_status: None,
    };
    /// No healthy host: 503, UH.
    pub const NO_HEALTHY_UPSTREAM: LocalReply = LocalReply {
        status: StatusCode::SERVICE_UNAVAILABLE,
        body: Bytes::from_static(b"no healthy upstream"),
        headers: Vec::new(),
        mutations: Vec::new(),
        flag: Some(ResponseFlag::NoHealthyUpstream),
        details: "no_healthy_upstream",
        close: false,
        grpc_status: None,
    };
    /// Connect failure: 503, UF.
    pub const CONNECT_FAILURE: LocalReply = LocalReply {
        status: StatusCode::SERVICE_UNAVAILABLE,
        body: Bytes::from_static(b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"),
        headers: Vec::new(),
        mutations: Vec::new(),
        flag: Some(ResponseFlag::UpstreamConnectionFailure),
        details: "upstream_reset_before_response_started{remote_connection_failure}",
        close: false,
        grpc_status: None,
    };
    /// Connect timeout: 503, UF.
    pub const CONNECT_TIMEOUT: LocalReply = LocalReply {
        status: StatusCode::SERVICE_UNAVAILABLE,
        body: Bytes::from_static(b"upstream connect error or disconnect/reset before headers. reset reason: connection timeout"),
        headers: Vec::new(),
        mutations: Vec::new(),
        flag: Some(ResponseFlag::UpstreamConnectionFailure),
        details: "upstream_reset_before_response_started{connection_timeout}",
        close: false,
        grpc_status: None,
    };
    /// An upgrade (websocket…) that the route does not allow: 403.
    pub const UPGRADE_FORBIDDEN: LocalReply = LocalReply {
        status: StatusCode::FORBIDDEN,
        body: Bytes::from_static(b""),
        headers: Vec::new(),
        mutations: Vec::new(),
        flag: None,
        details: "upgrade_failed",
        close: true,
        grpc_status: None,
    };
    /// Upstream closed before the response: 503, UC.
    pub const CONNECTION_TERMINATION: LocalReply = LocalReply {
        status: StatusCode::SERVICE_UNAVAILABLE,
        body: Bytes::from_static(b"upstream connect error or disconnect/reset before headers. reset reason: connection termination"),
        headers: Vec::new(),
        mutations: Vec::new(),
        flag: Some(ResponseFlag::UpstreamConnectionTermination),
        details: "upstream_reset_before_response_started{connection_termination}",
        close: false,
        grpc_status: None,
    };
    /// A circuit breaker refused the request: 503, UO, with `x-envoy-overloaded: true`.
    pub const OVERFLOW: LocalReply = LocalReply {
        status: StatusCode::SERVICE_UNAVAILABLE,
        body: Bytes::from_static(
            b"upstream connect error or disconnect/reset before headers. reset reason: overflow",
        ),
        headers: Vec::new(),
        mutations: Vec::new(),
        flag: Some(ResponseFlag::UpstreamOverflow),
        details: "upstream_reset_before_response_started{overflow}",
        close: false,
        grpc_status: None,
    };
    /// Upstream reset the stream: 503, UR.
    pub const REMOTE_RESET: LocalReply = LocalReply {
        status: StatusCode::SERVICE_UNAVAILABLE,
        body: Bytes::from_static(b"upstream connect error or disconnect/reset before headers. reset reason: remote reset"),
        headers: Vec::new(),
        mutations: Vec::new(),
        flag: Some(ResponseFlag::UpstreamRemoteReset),
        details: "upstream_reset_before_response_started{remote_reset}",
        close: false,
        grpc_status: None,
    };
    /// The upstream refused the HTTP/2 stream (REFUSED_STREAM): 503 UR.
    pub const REFUSED_STREAM: LocalReply = LocalReply {
        status: StatusCode::SERVICE_UNAVAILABLE,
        body: Bytes::from_static(b"upstream connect error or disconnect/reset before headers. reset reason: remote refused stream reset"),
        headers: Vec::new(),
        mutations: Vec::new(),
        flag: Some(ResponseFlag::UpstreamRemoteReset),
        details: "upstream_reset_before_response_started{remote_refused_stream_reset}",
        close: false,
        grpc_status: None,
    };
    /// Upstream spoke bad HTTP: 502, UPE.
    pub const PROTOCOL_ERROR: LocalReply = LocalReply {
        status: StatusCode::BAD_GATEWAY,
        body: Bytes::from_static(b"upstream connect error or disconnect/reset before headers. reset reason: protocol error"),
        headers: Vec::new(),
        mutations: Vec::new(),
        flag: Some(ResponseFlag::UpstreamProtocolError),
        details: "upstream_reset_before_response_started{protocol_error}",
        close: false,
        grpc_status: None,
    };
    /// Route timeout: 504, UT.
    pub const TIMEOUT: LocalReply = LocalReply {
        status: StatusCode::GATEWAY_TIMEOUT,
        body: Bytes::from_static(b"upstream request timeout"),
        headers: Vec::new(),
        mutations: Vec::new(),
        flag: Some(ResponseFlag::UpstreamRequestTimeout),
        details: "upstream_response_timeout",
        close: false,
        grpc_status: None,
    };
    /// HTTP/1.0 without `accept_http_10`: 426, DPE (observed on Envoy 1.40).
    pub const UPGRADE_REQUIRED: LocalReply = LocalReply {
        status: StatusCode::UPGRADE_REQUIRED,
        body: Bytes::from_static(b"Upgrade Required"),
        headers: Vec::new(),
        mutations: Vec::new(),
        flag: Some(ResponseFlag::DownstreamProtocolError),
        details: "low_version",
        close: true,
        grpc_status: None,
    };
    /// An HTTP version other than 1.0 and 1.1: Envoy's 426 as for HTTP/1.0.
    pub const LOW_VERSION: LocalReply = LocalReply::UPGRADE_REQUIRED;
    /// `Content-Length` and `Transfer-Encoding` together: 400.
    pub const CONTENT_LENGTH_AND_CHUNKED: LocalReply =
        LocalReply::bad_request("http1.content_length_and_chunked_not_allowed");
    /// A transfer coding other than a lone `chunked`: 501.
    pub const INVALID_TRANSFER_ENCODING: LocalReply = LocalReply {
        status: StatusCode::NOT_IMPLEMENTED,
        body: Bytes::from_static(b"Not Implemented"),
        headers: Vec::new(),
        mutations: Vec::new(),
        flag: Some(ResponseFlag::DownstreamProtocolError),
        details: "http1.invalid_transfer_encoding",
        close: true,
        grpc_status: None,
    };
    /// A control character in a header value: 400.
    pub const INVALID_CHARACTERS: LocalReply = LocalReply::bad_request("http1.invalid_characters");
    /// `Connection` nominating a header Envoy will not drop, or too many: 400.
    pub const CONNECTION_HEADER_REJECTED: LocalReply =
        LocalReply::bad_request("http1.connection_header_rejected");
    /// A Host or `:authority` with characters an authority cannot hold: 400.
    pub const INVALID_AUTHORITY: LocalReply = LocalReply::bad_request("http.invalid_authority");
    /// An HTTP/2 header field Envoy's codec refuses.
    pub const INVALID_HEADER_FIELD: LocalReply =
        LocalReply::bad_request("http2.invalid.header.field");
    /// A path that does not start with `/` (`OPTIONS *`, or an absolute URL without
    /// `allow_absolute_url`).
    pub const ABSOLUTE_PATH_REJECTED: LocalReply = LocalReply {
        status: StatusCode::NOT_FOUND,
        body: Bytes::from_static(b""),
        headers: Vec::new(),
        mutations: Vec::new(),
        flag: None,
        details: "absolute_path_rejected",
        close: false,
        grpc_status: None,
    };
    /// HTTP/1.1 request without Host: 400, empty body, no flag (observed on Envoy 1.40).
    pub const MISSING_HOST: LocalReply = LocalReply {
        status: StatusCode::BAD_REQUEST,
        body: Bytes::from_static(b""),
        headers: Vec::new(),
        mutations: Vec::new(),
        flag: None,
        details: "missing_host_header",
        close: true,
        grpc_status: None,
    };
    /// A path normalization refused: 400, empty body, the connection closed (observed).
    pub const PATH_NORMALIZATION_FAILED: LocalReply = LocalReply {
        status: StatusCode::BAD_REQUEST,
        body: Bytes::from_static(b""),
        headers: Vec::new(),
        mutations: Vec::new(),
        flag: None,
        details: "path_normalization_failed",
        close: true,
        grpc_status: None,
    };
    /// A header name with `_` under `headers_with_underscores_action: REJECT_REQUEST`: 400.
    pub const UNEXPECTED_UNDERSCORE: LocalReply =
        LocalReply::bad_request("http1.unexpected_underscore");
    /// More request headers than `max_headers_count` (HTTP/1.1): 431, DPE (observed).
    pub const TOO_MANY_HEADERS: LocalReply = LocalReply {
        status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        body: Bytes::from_static(b"Request Header Fields Too Large"),
        headers: Vec::new(),
        mutations: Vec::new(),
        flag: Some(ResponseFlag::DownstreamProtocolError),
        details: "http1.too_many_headers",
        close: true,
        grpc_status: None,
    };
    /// A request head longer than `max_request_headers_kb` (HTTP/1.1): 431, DPE (observed).
    pub const HEADERS_TOO_LARGE: LocalReply = LocalReply {
        status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        body: Bytes::from_static(b"Request Header Fields Too Large"),
        headers: Vec::new(),
        mutations: Vec::new(),
        flag: Some(ResponseFlag::DownstreamProtocolError),
        details: "http1.headers_too_large",
        close: true,
        grpc_status: None,
    };
    /// The request head did not arrive within `request_headers_timeout`: 408, no flag
    /// (observed).
    pub const REQUEST_HEADER_TIMEOUT: LocalReply = LocalReply {
        status: StatusCode::REQUEST_TIMEOUT,
        body: Bytes::from_static(b"request header timeout"),
        headers: Vec::new(),
        mutations: Vec::new(),
        flag: None,
        details: "request_header_timeout",
        close: true,
        grpc_status: None,
    };
    /// The overload manager stops new requests (`stop_accepting_requests`, the
    /// `http_connection_manager_decode_headers` point): 503, no flag (observed).
    pub const OVERLOADED: LocalReply = LocalReply {
        status: StatusCode::SERVICE_UNAVAILABLE,
        body: Bytes::from_static(b"envoy overloaded"),
        headers: Vec::new(),
        mutations: Vec::new(),
        flag: None,
        details: "overload",
        close: false,
        grpc_status: None,
    };
    /// The `http1_server_abort_dispatch` point: the codec's 500 with flag DPE (observed), and
    /// the connection closes.
    pub const OVERLOAD_ABORT: LocalReply = LocalReply {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        body: Bytes::from_static(b"Internal Server Error"),
        headers: Vec::new(),
        mutations: Vec::new(),
        flag: Some(ResponseFlag::DownstreamProtocolError),
        details: "overload",
        close: true,
        grpc_status: None,
    };
    /// Unusable request: 400.
    pub const BAD_REQUEST: LocalReply = LocalReply::bad_request("http1.codec_error");

    /// Envoy's 400 for a request its codec refuses, with `details`.
    const fn bad_request(details: &'static str) -> LocalReply {
        LocalReply {
            status: StatusCode::BAD_REQUEST,
            body: Bytes::from_static(b"Bad Request"),
            headers: Vec::new(),
            mutations: Vec::new(),
            flag: Some(ResponseFlag::DownstreamProtocolError),
            details,
            close: true,
            grpc_status: None,
        }
    }

    /// A route's `direct_response`.
    pub fn direct(status: StatusCode, body: Bytes) -> LocalReply {
        LocalReply {
            status,
            body,
            headers: Vec::new(),
            mutations: Vec::new(),
            flag: None,
            details: "direct_response",
            close: false,
            grpc_status: None,
        }
    }

    /// A route's `redirect` to `location`.
    pub fn redirect(status: StatusCode, location: HeaderValue) -> LocalReply {
        LocalReply {
            headers: vec![(header::LOCATION, location)],
            ..LocalReply::direct(status, Bytes::new())
        }
    }

    /// Envoy's reply when its HTTP/1.1 codec refuses a request for `reason`.
    pub fn for_codec(reason: Reason) -> LocalReply {
        match reason {
            Reason::ContentLengthAndChunked => LocalReply::CONTENT_LENGTH_AND_CHUNKED,
            Reason::InvalidTransferEncoding => LocalReply::INVALID_TRANSFER_ENCODING,
            Reason::CodecError => LocalReply::BAD_REQUEST,
            Reason::InvalidCharacters => LocalReply::INVALID_CHARACTERS,
            Reason::InvalidUrl => LocalReply::bad_request("http1.invalid_url"),
            Reason::InvalidScheme => LocalReply::bad_request("http1.invalid_scheme"),
            Reason::ConnectionHeaderRejected => LocalReply::CONNECTION_HEADER_REJECTED,
            Reason::LowVersion => LocalReply::LOW_VERSION,
            Reason::TooManyHeaders => LocalReply::TOO_MANY_HEADERS,
            Reason::HeadersTooLarge => LocalReply::HEADERS_TOO_LARGE,
            Reason::HeaderTimeout => LocalReply::REQUEST_HEADER_TIMEOUT,
            Reason::Fragment => LocalReply::PATH_NORMALIZATION_FAILED,
        }
    }

    /// The status and the headers a reply starts with: its own, then the route's changes
    /// (Envoy's `modify_headers`), their operators rendered from the stream's record.
    pub fn head(&self, info: Option<&StreamInfo>) -> http::response::Parts {
        let (mut head, ()) = Response::new(()).into_parts();
        head.status = self.status;
        let h = &mut head.headers;
        for (k, v) in &self.headers {
            h.append(k.clone(), v.clone());
        }
        let render = |f: &crate::access_log::Format, h: &http::HeaderMap| {
            info.map_or_else(String::new, |i| {
                crate::access_log::header_value(f, i, None, Some(h))
            })
        };
        for m in &self.mutations {
            m.apply_with(h, &render);
        }
        if self.flag == Some(ResponseFlag::UpstreamOverflow) {
            h.insert(
                http::HeaderName::from_static("x-envoy-overloaded"),
                HeaderValue::from_static("true"),
            );
        }
        head
    }

    /// The framing headers for `body` as Envoy's `prepareLocalReply` sets them: a body gets its
    /// length and, unless it has one or a rewrite changed the body (and no mapper named its
    /// own), the content type; an empty reply has neither.
    pub fn finish(
        &self,
        mut head: http::response::Parts,
        body: Bytes,
        rewrite: Option<&Rewrite>,
    ) -> (http::response::Parts, Bytes) {
        let h = &mut head.headers;
        if body.is_empty() {
            h.remove(header::CONTENT_TYPE);
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        } else {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            let changed = rewrite.is_some_and(|r| !r.custom_content_type && body != self.body);
            if changed || !h.contains_key(header::CONTENT_TYPE) {
                let ct = rewrite.map_or(HeaderValue::from_static("text/plain"), |r| {
                    r.content_type.clone()
                });
                h.insert(header::CONTENT_TYPE, ct);
            }
        }
        if self.close {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        (head, body)
    }

    /// The reply as the connection manager's `local_reply_config` makes it: the first mapper
    /// whose filter passes sets the body, adds its headers and changes the status; then the
    /// body format (the mapper's, else the configuration's) writes the body. The stream's
    /// record sees the status as it goes, as Envoy's does.
    pub fn rewrite(
        &self,
        cfg: &LocalReplyConfig,
        info: &mut StreamInfo,
        started: std::time::Instant,
    ) -> (http::response::Parts, Bytes, Rewrite) {
        let mut head = self.head(Some(info));
        let mut body = self.body.clone();
        info.response_code = Some(head.status.as_u16());
        info.response_headers = head.headers.clone();
        let before = head.headers.get(header::CONTENT_TYPE).cloned();
        // Envoy's duration filter reads the time so far.
        let duration = info.duration_ms;
        if duration.is_none() {
            info.duration_ms = Some(started.elapsed().as_millis() as u64);
        }
        let mut format = cfg.body_format.as_ref();
        for m in &cfg.mappers {
            if !crate::access_log::passes(&m.filter, info) {
                continue;
            }
            if let Some(b) = &m.body {
                body = b.clone();
            }
            m.headers.apply_with(&mut head.headers, &|f, h| {
                crate::access_log::header_value(f, info, None, Some(h))
            });
            if let Some(s) = m.status {
                head.status = s;
                info.response_code = Some(s.as_u16());
            }
            if m.body_format.is_some() {
                format = m.body_format.as_ref();
            }
            break;
        }
        info.duration_ms = duration;
        let custom_content_type = head.headers.get(header::CONTENT_TYPE) != before.as_ref();
        let content_type = match format {
            Some(f) => {
                info.response_headers = head.headers.clone();
                info.local_reply_body = Some(body);
                let mut out = String::new();
                crate::access_log::Render::render(&*f.format, info, &mut out);
                info.local_reply_body = None;
                body = Bytes::from(out);
                f.content_type.clone()
            }
            None => HeaderValue::from_static("text/plain"),
        };
        let rewrite = Rewrite {
            content_type,
            custom_content_type,
        };
        let (head, body) = self.finish(head, body, Some(&rewrite));
        (head, body, rewrite)
    }
}

/// Envoy's `Grpc::Utility::httpToGrpcStatus`: the gRPC status an HTTP status stands for.
pub fn grpc_status_of_http(code: u16) -> u32 {
    match code {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// What a `local_reply_config` made of a reply's framing.
#[derive(Debug, Clone)]
pub struct Rewrite {
    /// The content type of the body format.
    pub content_type: HeaderValue,
    /// A mapper's headers changed the content type.
    pub custom_content_type: bool,
}

/// `text` as a `&'static str` for `%RESPONSE_CODE_DETAILS%`, kept for the life of the process
/// (each distinct text once: details made from configuration, such as a policy's name).
pub fn intern_details(text: String) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static ALL: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut all = ALL
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(d) = all.get(text.as_str()) {
        return d;
    }
    let d: &'static str = Box::leak(text.into_boxed_str());
    all.insert(d);
    d
}
