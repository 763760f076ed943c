//! `envoy.filters.http.compressor`: gzip, brotli and zstd, with Envoy's rules for when a
//! message is compressed and for choosing among several compressors by `accept-encoding`.
//!
//! A response is *compressible* when the direction is enabled, its `content-length` (if any)
//! reaches `min_content_length`, it is not an upgrade, its media type is listed, it has no
//! `cache-control: no-transform`, no `etag` when `disable_on_etag_header` is set, and no
//! `content-encoding`. A compressible response gets `vary: Accept-Encoding` whether or not it
//! is compressed; it is compressed when it has a body and the request's `accept-encoding`
//! chose this filter's encoding among those the stream's compressor filters offer.

use std::cell::RefCell;
use std::io::Write as _;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};

use crate::config::model::{self, CompressionDirection, CompressorLibrary};
use crate::http::filter::{DataStatus, HeadersStatus, HttpFilter};
use crate::stats::{Counter, Shard};

/// The counters of one compressor filter on one worker, under
/// `http.<prefix>.compressor.<library name>.<library>.`.
#[derive(Debug)]
pub struct Stats {
    compressed: Counter,
    not_compressed: Counter,
    no_accept_header: Counter,
    header_identity: Counter,
    header_compressor_used: Counter,
    header_compressor_overshadowed: Counter,
    header_wildcard: Counter,
    header_not_valid: Counter,
    total_uncompressed_bytes: Counter,
    total_compressed_bytes: Counter,
    content_length_too_small: Counter,
    not_compressed_etag: Counter,
    request: DirectionStats,
}

/// The `request.` counters.
#[derive(Debug)]
struct DirectionStats {
    compressed: Counter,
    not_compressed: Counter,
    total_uncompressed_bytes: Counter,
    total_compressed_bytes: Counter,
    content_length_too_small: Counter,
}

impl Stats {
    /// `response` is where the response counters go under `prefix`: `response.` or nothing.
    fn new(shard: &Shard, prefix: &str, response: &str) -> Self {
        let c = |n: &str| shard.counter(&format!("{prefix}{n}"));
        let r = |n: &str| shard.counter(&format!("{prefix}{response}{n}"));
        Stats {
            compressed: r("compressed"),
            not_compressed: r("not_compressed"),
            no_accept_header: c("no_accept_header"),
            header_identity: c("header_identity"),
            header_compressor_used: c("header_compressor_used"),
            header_compressor_overshadowed: c("header_compressor_overshadowed"),
            header_wildcard: c("header_wildcard"),
            header_not_valid: c("header_not_valid"),
            total_uncompressed_bytes: r("total_uncompressed_bytes"),
            total_compressed_bytes: r("total_compressed_bytes"),
            content_length_too_small: r("content_length_too_small"),
            not_compressed_etag: c("not_compressed_etag"),
            request: DirectionStats {
                compressed: c("request.compressed"),
                not_compressed: c("request.not_compressed"),
                total_uncompressed_bytes: c("request.total_uncompressed_bytes"),
                total_compressed_bytes: c("request.total_compressed_bytes"),
                content_length_too_small: c("request.content_length_too_small"),
            },
        }
    }
}

/// One compressor filter as configured on one worker.
#[derive(Debug)]
pub struct Factory {
    config: Arc<model::Compressor>,
    stats: Stats,
}

impl Factory {
    /// The filter of an HCM whose stat prefix is `stat_prefix`.
    pub fn new(config: Arc<model::Compressor>, shard: &Shard, stat_prefix: &str) -> Self {
        let prefix = format!(
            "http.{stat_prefix}.compressor.{}.{}.",
            config.library_name,
            config.library.stat_prefix()
        );
        let response = if config.response_direction_config {
            "response."
        } else {
            ""
        };
        Factory {
            stats: Stats::new(shard, &prefix, response),
            config,
        }
    }

    /// The filter for one stream; `shared` is common to the stream's compressor filters.
    /// `route` is the route's `CompressorPerRoute`, if it has one.
    pub fn filter(
        self: &Rc<Self>,
        shared: &Rc<RefCell<Negotiation>>,
        route: Option<crate::router::CompressorPerRoute>,
    ) -> CompressorFilter {
        shared.borrow_mut().registered.push(self.config.clone());
        CompressorFilter {
            factory: self.clone(),
            route: route.unwrap_or_default(),
            shared: shared.clone(),
            accept_encoding: None,
            head_request: false,
            response: None,
            request: None,
        }
    }
}

/// What the compressor filters of one stream share (Envoy keeps it in the stream's filter
/// state): the filters, in chain order, and the choice once the first of them made it.
#[derive(Debug, Default)]
pub struct Negotiation {
    registered: Vec<Arc<model::Compressor>>,
    decision: Option<Decision>,
}

impl Negotiation {
    /// The encodings on offer for a response: those of the filters that compress responses of
    /// its media type, first registration first.
    fn offered(&self, response: &HeaderMap) -> Vec<&'static str> {
        let mut offered = Vec::new();
        for c in &self.registered {
            let allowed = c.response.as_ref().is_some_and(|dir| {
                crate::runtime::flag_on(dir.runtime.as_ref()) && content_type_allowed(response, dir)
            });
            let encoding = c.library.encoding();
            if allowed && !offered.contains(&encoding) {
                offered.push(encoding);
            }
        }
        offered
    }
}

/// The outcome of `accept-encoding` for a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The client named this encoding with the highest weight.
    Used(&'static str),
    /// `*` won: the first registered encoding.
    Wildcard(&'static str),
    /// `identity` won.
    Identity,
    /// Nothing acceptable (no q above zero among what is offered).
    NotValid,
}

/// Envoy's choice among `offered` (in registration order) for an `accept-encoding` value.
/// Only the filters that would compress the response's media type offer their encoding, so
/// a client's first choice that cannot apply does not shadow its second.
pub fn choose(accept_encoding: &str, offered: &[&'static str]) -> Decision {
    let mut allowed: Vec<&'static str> = offered.to_vec();
    let mut pairs: Vec<(&str, f64)> = Vec::new();
    for token in accept_encoding.split(',').filter(|t| !t.is_empty()) {
        let (name, params) = match token.split_once(';') {
            Some((n, p)) => (n.trim(), Some(p)),
            None => (token.trim(), None),
        };
        let mut q = 1.0;
        if let Some(params) = params {
            if let Some((key, value)) = params.split_once('=') {
                if key.trim().eq_ignore_ascii_case("q") {
                    match value.trim().parse::<f64>() {
                        Ok(v) => q = v,
                        // An unreadable weight drops the token.
                        Err(_) => continue,
                    }
                }
            }
        }
        pairs.push((name, q));
        if q == 0.0 {
            allowed.retain(|e| *e != name);
        }
    }
    if pairs.is_empty() || allowed.is_empty() {
        return Decision::NotValid;
    }
    let mut choice: (&str, f64) = ("identity", 0.0);
    for &(name, q) in &pairs {
        if q > choice.1 && (allowed.contains(&name) || name == "identity" || name == "*") {
            choice = (name, q);
        }
    }
    if choice.1 == 0.0 {
        return Decision::NotValid;
    }
    match choice.0 {
        "identity" => Decision::Identity,
        "*" => Decision::Wildcard(allowed[0]),
        name => match allowed.iter().find(|e| **e == name) {
            Some(e) => Decision::Used(e),
            None => Decision::NotValid,
        },
    }
}

/// The compressor filter on one stream.
pub struct CompressorFilter {
    factory: Rc<Factory>,
    shared: Rc<RefCell<Negotiation>>,
    /// The route's `CompressorPerRoute`.
    route: crate::router::CompressorPerRoute,
    /// The request's `accept-encoding`, all values joined; `None` without one.
    accept_encoding: Option<String>,
    /// A HEAD request's response has no body to compress.
    head_request: bool,
    response: Option<Encoder>,
    request: Option<Encoder>,
}

impl CompressorFilter {
    fn config(&self) -> &model::Compressor {
        &self.factory.config
    }

    /// Whether this filter's encoding is the one the stream chose, counting the header stats.
    fn accept_encoding_allows(&self, response: &HeaderMap) -> bool {
        let stats = &self.factory.stats;
        let Some(ae) = &self.accept_encoding else {
            stats.no_accept_header.inc();
            return false;
        };
        let decision = {
            let mut shared = self.shared.borrow_mut();
            match shared.decision {
                Some(d) => d,
                None => {
                    let d = choose(ae, &shared.offered(response));
                    shared.decision = Some(d);
                    d
                }
            }
        };
        let mine = self.config().library.encoding();
        match decision {
            Decision::Used(e) if e == mine => {
                stats.header_compressor_used.inc();
                true
            }
            Decision::Used(_) => {
                stats.header_compressor_overshadowed.inc();
                false
            }
            Decision::Wildcard(e) => {
                stats.header_wildcard.inc();
                e == mine
            }
            Decision::Identity => {
                stats.header_identity.inc();
                false
            }
            Decision::NotValid => {
                stats.header_not_valid.inc();
                false
            }
        }
    }
}

/// Whether `content-length` (when present) reaches the minimum.
fn long_enough(h: &HeaderMap, dir: &CompressionDirection, too_small: &Counter) -> bool {
    let Some(v) = h.get(header::CONTENT_LENGTH) else {
        return true;
    };
    match v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) {
        Some(n) if n >= dir.min_content_length => true,
        _ => {
            too_small.inc();
            false
        }
    }
}

fn content_type_allowed(h: &HeaderMap, dir: &CompressionDirection) -> bool {
    let Some(v) = h.get(header::CONTENT_TYPE) else {
        return true;
    };
    let media = v
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    dir.content_types.iter().any(|t| t == media)
}

/// Whether a comma-separated header lists `token` (any case); shared with the decompressor.
pub(crate) fn has_token(h: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        v.to_str()
            .unwrap_or("")
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    })
}

/// A `transfer-encoding` other than plain `chunked` means the body is encoded already.
fn transfer_encoding_allowed(h: &HeaderMap) -> bool {
    h.get_all(header::TRANSFER_ENCODING).iter().all(|v| {
        v.to_str()
            .unwrap_or("")
            .split(',')
            .all(|t| t.trim().eq_ignore_ascii_case("chunked"))
    })
}

fn is_upgrade(status: http::StatusCode, h: &HeaderMap) -> bool {
    status == http::StatusCode::SWITCHING_PROTOCOLS
        || (h.contains_key(header::UPGRADE) && has_token(h, header::CONNECTION, "upgrade"))
}

/// Appends `Accept-Encoding` to `vary` unless it is listed there already (compared as Envoy
/// does: exactly).
fn insert_vary(h: &mut HeaderMap) {
    const VALUE: &str = "Accept-Encoding";
    match h.get(header::VARY) {
        Some(v) => {
            let existing = v.to_str().unwrap_or("");
            if existing.split(',').any(|t| t.trim() == VALUE) {
                return;
            }
            if let Ok(joined) = HeaderValue::from_str(&format!("{existing}, {VALUE}")) {
                h.insert(header::VARY, joined);
            }
        }
        None => {
            h.insert(header::VARY, HeaderValue::from_static(VALUE));
        }
    }
}

impl CompressorFilter {
    /// Whether responses may be compressed: the route's word, else the filter's `enabled`.
    fn response_on(&self, config: &model::Compressor) -> bool {
        match (&config.response, self.route.response_enabled) {
            (None, _) => false,
            (Some(_), Some(on)) => on,
            (Some(dir), None) => crate::runtime::flag_on(dir.runtime.as_ref()),
        }
    }
}

impl HttpFilter for CompressorFilter {
    fn decode_headers(
        &mut self,
        head: &mut http::request::Parts,
        end_stream: bool,
    ) -> HeadersStatus {
        let config = self.factory.config.clone();
        self.head_request = head.method == http::Method::HEAD;
        let values: Vec<&str> = head
            .headers
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .map(|v| v.to_str().unwrap_or(""))
            .collect();
        if !values.is_empty() {
            self.accept_encoding = Some(values.join(","));
            let remove = self
                .route
                .remove_accept_encoding
                .unwrap_or(config.remove_accept_encoding_header);
            if self.response_on(&config) && remove {
                head.headers.remove(header::ACCEPT_ENCODING);
            }
        }

        let stats = &self.factory.stats.request;
        let compress = match &config.request {
            Some(dir) if crate::runtime::flag_on(dir.runtime.as_ref()) => {
                !end_stream
                    && long_enough(&head.headers, dir, &stats.content_length_too_small)
                    && content_type_allowed(&head.headers, dir)
                    && !head.headers.contains_key(header::CONTENT_ENCODING)
                    && transfer_encoding_allowed(&head.headers)
            }
            _ => false,
        };
        if compress {
            head.headers.remove(header::CONTENT_LENGTH);
            head.headers.insert(
                header::CONTENT_ENCODING,
                HeaderValue::from_static(config.library.encoding()),
            );
            stats.compressed.inc();
            self.request = Some(Encoder::new(&config.library));
        } else {
            stats.not_compressed.inc();
        }
        HeadersStatus::Continue
    }

    fn decode_data(&mut self, data: &mut Bytes, end_stream: bool) -> DataStatus {
        if let Some(enc) = self.request.as_mut() {
            let stats = &self.factory.stats.request;
            stats.total_uncompressed_bytes.add(data.len() as u64);
            *data = enc.compress(data, end_stream);
            stats.total_compressed_bytes.add(data.len() as u64);
            if end_stream {
                self.request = None;
            }
        }
        DataStatus::Continue
    }

    fn encode_headers(
        &mut self,
        head: &mut http::response::Parts,
        end_stream: bool,
    ) -> HeadersStatus {
        let config = self.factory.config.clone();
        let stats = &self.factory.stats;
        let end_stream = end_stream || self.head_request;
        let h = &head.headers;
        let (long_enough, compressible) = match &config.response {
            Some(dir) if self.response_on(&config) => {
                let long = long_enough(h, dir, &stats.content_length_too_small);
                let compressible = long
                    && !is_upgrade(head.status, h)
                    && !config
                        .uncompressible_response_codes
                        .contains(&head.status.as_u16())
                    && content_type_allowed(h, dir)
                    && !has_token(h, header::CACHE_CONTROL, "no-transform")
                    && (!config.disable_on_etag_header || !h.contains_key(header::ETAG) || {
                        stats.not_compressed_etag.inc();
                        false
                    })
                    && !h.contains_key(header::CONTENT_ENCODING);
                (long, compressible)
            }
            _ => (false, false),
        };
        // Envoy's order: accept-encoding is weighed (and its stats counted) for every response
        // with a body that is long enough, compressible or not.
        if !end_stream
            && long_enough
            && self.accept_encoding_allows(&head.headers)
            && compressible
            && transfer_encoding_allowed(&head.headers)
        {
            let h = &mut head.headers;
            let strong = h
                .get(header::ETAG)
                .is_some_and(|v| !v.as_bytes().starts_with(b"W/"));
            if strong {
                if config.weaken_etag_on_compress {
                    let weak = h.get(header::ETAG).and_then(|v| {
                        HeaderValue::from_bytes(&[b"W/", v.as_bytes()].concat()).ok()
                    });
                    match weak {
                        Some(w) => {
                            h.insert(header::ETAG, w);
                        }
                        None => {
                            h.remove(header::ETAG);
                        }
                    }
                } else {
                    h.remove(header::ETAG);
                }
            }
            h.remove(header::CONTENT_LENGTH);
            h.insert(
                header::CONTENT_ENCODING,
                HeaderValue::from_static(config.library.encoding()),
            );
            stats.compressed.inc();
            self.response = Some(Encoder::new(&config.library));
        } else {
            stats.not_compressed.inc();
        }
        // A cache in front must know that the resource varies with accept-encoding, even when
        // this response went out uncompressed.
        if compressible {
            insert_vary(&mut head.headers);
        }
        HeadersStatus::Continue
    }

    fn encode_data(&mut self, data: &mut Bytes, end_stream: bool) -> DataStatus {
        if let Some(enc) = self.response.as_mut() {
            let stats = &self.factory.stats;
            stats.total_uncompressed_bytes.add(data.len() as u64);
            *data = enc.compress(data, end_stream);
            stats.total_compressed_bytes.add(data.len() as u64);
            if end_stream {
                self.response = None;
            }
        }
        DataStatus::Continue
    }
}

/// A streaming compressor. Data is compressed without flushing, as Envoy does, so output
/// may lag input until the end of the stream.
enum Encoder {
    Gzip {
        deflate: flate2::Compress,
        chunk: usize,
    },
    Brotli(Option<Box<brotli::CompressorWriter<Vec<u8>>>>),
    Zstd(Option<zstd::stream::write::Encoder<'static, Vec<u8>>>),
    /// The library refused its settings or failed: nothing more is produced.
    Failed,
}

impl Encoder {
    fn new(library: &CompressorLibrary) -> Self {
        match *library {
            CompressorLibrary::Gzip {
                level,
                window_bits,
                chunk_size,
            } => Encoder::Gzip {
                deflate: flate2::Compress::new_gzip(flate2::Compression::new(level), window_bits),
                chunk: chunk_size,
            },
            CompressorLibrary::Brotli {
                quality,
                window_bits,
                input_block_bits,
                disable_literal_context_modeling,
                mode,
                chunk_size,
            } => {
                use brotli::enc::backward_references::BrotliEncoderMode as Mode;
                let params = brotli::enc::BrotliEncoderParams {
                    quality: quality as i32,
                    lgwin: window_bits as i32,
                    lgblock: input_block_bits as i32,
                    disable_literal_context_modeling: i32::from(disable_literal_context_modeling),
                    mode: match mode {
                        2 => Mode::BROTLI_MODE_TEXT,
                        3 => Mode::BROTLI_MODE_FONT,
                        _ => Mode::BROTLI_MODE_GENERIC,
                    },
                    ..Default::default()
                };
                Encoder::Brotli(Some(Box::new(brotli::CompressorWriter::with_params(
                    Vec::new(),
                    chunk_size,
                    &params,
                ))))
            }
            CompressorLibrary::Zstd {
                level,
                checksum,
                strategy,
                chunk_size,
            } => {
                let made = zstd::stream::write::Encoder::new(Vec::with_capacity(chunk_size), level)
                    .and_then(|mut e| {
                        e.include_checksum(checksum)?;
                        if let Some(s) = zstd_strategy(strategy) {
                            e.set_parameter(zstd::stream::raw::CParameter::Strategy(s))?;
                        }
                        Ok(e)
                    });
                match made {
                    Ok(e) => Encoder::Zstd(Some(e)),
                    Err(e) => {
                        tracing::warn!(error = %e, "zstd compressor could not start");
                        Encoder::Failed
                    }
                }
            }
        }
    }

    /// Compresses `input`; with `finish`, ends the stream. Returns what is ready to send.
    fn compress(&mut self, input: &[u8], finish: bool) -> Bytes {
        let result = match self {
            Encoder::Gzip { deflate, chunk } => gzip(deflate, input, finish, *chunk),
            Encoder::Brotli(w) => match w {
                Some(writer) => match writer.write_all(input) {
                    Ok(()) if finish => Ok(w.take().map(|w| w.into_inner()).unwrap_or_default()),
                    Ok(()) => Ok(std::mem::take(writer.get_mut())),
                    Err(e) => Err(e),
                },
                None => Ok(Vec::new()),
            },
            Encoder::Zstd(e) => match e {
                Some(enc) => match enc.write_all(input) {
                    Ok(()) if finish => match e.take() {
                        Some(enc) => enc.finish(),
                        None => Ok(Vec::new()),
                    },
                    Ok(()) => Ok(std::mem::take(enc.get_mut())),
                    Err(err) => Err(err),
                },
                None => Ok(Vec::new()),
            },
            Encoder::Failed => Ok(Vec::new()),
        };
        match result {
            Ok(out) => Bytes::from(out),
            Err(e) => {
                tracing::warn!(error = %e, "compression failed; the rest of the body is dropped");
                *self = Encoder::Failed;
                Bytes::new()
            }
        }
    }
}

fn zstd_strategy(s: u32) -> Option<zstd::zstd_safe::Strategy> {
    use zstd::zstd_safe::Strategy::*;
    Some(match s {
        1 => ZSTD_fast,
        2 => ZSTD_dfast,
        3 => ZSTD_greedy,
        4 => ZSTD_lazy,
        5 => ZSTD_lazy2,
        6 => ZSTD_btlazy2,
        7 => ZSTD_btopt,
        8 => ZSTD_btultra,
        9 => ZSTD_btultra2,
        _ => return None,
    })
}

fn gzip(
    deflate: &mut flate2::Compress,
    mut input: &[u8],
    finish: bool,
    chunk: usize,
) -> std::io::Result<Vec<u8>> {
    let flush = if finish {
        flate2::FlushCompress::Finish
    } else {
        flate2::FlushCompress::None
    };
    let mut out = Vec::new();
    loop {
        out.reserve(chunk);
        let before = deflate.total_in();
        let status = deflate
            .compress_vec(input, &mut out, flush)
            .map_err(std::io::Error::other)?;
        let used = usize::try_from(deflate.total_in() - before).unwrap_or(input.len());
        input = &input[used.min(input.len())..];
        let room_left = out.len() < out.capacity();
        match status {
            flate2::Status::StreamEnd => return Ok(out),
            _ if input.is_empty() && !finish && room_left => return Ok(out),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    const GZ: &str = "gzip";
    const BR: &str = "br";

    #[test]
    fn accept_encoding_as_envoy_chooses() {
        let both = [BR, GZ];
        // Observed with Envoy 1.40: a brotli filter before a gzip filter.
        assert_eq!(choose("gzip", &both), Decision::Used(GZ));
        assert_eq!(choose("br", &both), Decision::Used(BR));
        assert_eq!(choose("gzip, br", &both), Decision::Used(GZ));
        assert_eq!(choose("br;q=0.5, gzip", &both), Decision::Used(GZ));
        assert_eq!(choose("*", &both), Decision::Wildcard(BR));
        assert_eq!(choose("identity", &both), Decision::Identity);
        assert_eq!(choose("gzip;q=0", &both), Decision::NotValid);
        assert_eq!(choose("deflate", &both), Decision::NotValid);
        assert_eq!(choose("gzip;q=0.5, identity", &both), Decision::Identity);
        assert_eq!(
            choose("identity;q=0, gzip;q=0.1", &both),
            Decision::Used(GZ)
        );
        assert_eq!(choose("*;q=0, br", &both), Decision::Used(BR));
        assert_eq!(choose("GZIP", &both), Decision::NotValid);
        assert_eq!(choose("gzip;q=abc", &both), Decision::NotValid);
        assert_eq!(choose("br; q=0.8", &both), Decision::Used(BR));
        assert_eq!(choose("br;q=0.5, *", &both), Decision::Wildcard(BR));
        assert_eq!(choose("gzip;q=0.5, br;q=0.5", &both), Decision::Used(GZ));
        assert_eq!(choose("br;q=0.5, gzip;q=0.5", &both), Decision::Used(BR));
        assert_eq!(choose("", &both), Decision::NotValid);
        // gzip refused by q=0 leaves the wildcard to the next one offered.
        assert_eq!(choose("gzip;q=0, *", &[GZ, BR]), Decision::Wildcard(BR));
    }

    fn roundtrip(library: CompressorLibrary, decode: impl Fn(&[u8]) -> Vec<u8>) {
        let text: Vec<u8> = b"hello world "
            .iter()
            .copied()
            .cycle()
            .take(100_000)
            .collect();
        let mut enc = Encoder::new(&library);
        let mut out = Vec::new();
        for piece in text.chunks(7_000) {
            out.extend_from_slice(&enc.compress(piece, false));
        }
        out.extend_from_slice(&enc.compress(b"", true));
        assert!(
            out.len() < text.len() / 10,
            "{library:?}: {} bytes",
            out.len()
        );
        assert_eq!(decode(&out), text, "{library:?}");
    }

    #[test]
    fn each_library_round_trips() {
        roundtrip(
            CompressorLibrary::Gzip {
                level: 6,
                window_bits: 12,
                chunk_size: 4096,
            },
            |b| {
                let mut v = Vec::new();
                flate2::read::GzDecoder::new(b)
                    .read_to_end(&mut v)
                    .expect("gunzip");
                v
            },
        );
        roundtrip(
            CompressorLibrary::Brotli {
                quality: 3,
                window_bits: 18,
                input_block_bits: 24,
                disable_literal_context_modeling: false,
                mode: 0,
                chunk_size: 4096,
            },
            |b| {
                let mut v = Vec::new();
                brotli::Decompressor::new(b, 4096)
                    .read_to_end(&mut v)
                    .expect("unbrotli");
                v
            },
        );
        roundtrip(
            CompressorLibrary::Zstd {
                level: 3,
                checksum: true,
                strategy: 0,
                chunk_size: 4096,
            },
            |b| zstd::stream::decode_all(b).expect("unzstd"),
        );
    }
}
