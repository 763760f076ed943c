//! `envoy.filters.http.decompressor`: gzip, brotli and zstd bodies decoded on their way
//! through, as Envoy does.
//!
//! A message is decoded when its direction is enabled, it has a body, the first token of its
//! `content-encoding` is the library's (any case), and it has no `cache-control: no-transform`
//! (unless `ignore_no_transform_header`). That token leaves `content-encoding` (the header
//! goes when none is left) and so does `content-length`. With response decoding on, requests
//! advertise the encoding in `accept-encoding`. A body that does not decode ends where the
//! error is found, and the library's error is counted.

use std::io::Write as _;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};

use crate::config::model::{self, DecompressionDirection, DecompressorLibrary};
use crate::http::filter::{DataStatus, HeadersStatus, HttpFilter};
use crate::stats::{Counter, Shard};

/// One direction's counters (`request.` or `response.`).
#[derive(Debug)]
struct DirectionStats {
    decompressed: Counter,
    not_decompressed: Counter,
    total_compressed_bytes: Counter,
    total_uncompressed_bytes: Counter,
}

impl DirectionStats {
    fn new(shard: &Shard, prefix: &str) -> Self {
        let c = |n: &str| shard.counter(&format!("{prefix}{n}"));
        DirectionStats {
            decompressed: c("decompressed"),
            not_decompressed: c("not_decompressed"),
            total_compressed_bytes: c("total_compressed_bytes"),
            total_uncompressed_bytes: c("total_uncompressed_bytes"),
        }
    }
}

/// The library's error counters under `decompressor_library.`, as Envoy names them.
#[derive(Debug)]
enum LibraryStats {
    Gzip {
        data_error: Counter,
        _others: Vec<Counter>,
    },
    Brotli {
        error: Counter,
        _others: Vec<Counter>,
    },
    Zstd {
        generic_error: Counter,
        _others: Vec<Counter>,
    },
}

impl LibraryStats {
    fn new(library: &DecompressorLibrary, shard: &Shard, prefix: &str) -> Self {
        let c = |n: &str| shard.counter(&format!("{prefix}decompressor_library.{n}"));
        match library {
            DecompressorLibrary::Gzip { .. } => LibraryStats::Gzip {
                data_error: c("zlib_data_error"),
                _others: [
                    "zlib_buf_error",
                    "zlib_errno",
                    "zlib_mem_error",
                    "zlib_stream_error",
                    "zlib_version_error",
                ]
                .map(c)
                .into(),
            },
            DecompressorLibrary::Brotli { .. } => LibraryStats::Brotli {
                error: c("brotli_error"),
                _others: ["brotli_output_overflow", "brotli_redundant_input"]
                    .map(c)
                    .into(),
            },
            DecompressorLibrary::Zstd { .. } => LibraryStats::Zstd {
                generic_error: c("zstd_generic_error"),
                _others: [
                    "zstd_checksum_wrong_error",
                    "zstd_dictionary_error",
                    "zstd_memory_error",
                ]
                .map(c)
                .into(),
            },
        }
    }

    fn error(&self) -> &Counter {
        match self {
            LibraryStats::Gzip { data_error, .. } => data_error,
            LibraryStats::Brotli { error, .. } => error,
            LibraryStats::Zstd { generic_error, .. } => generic_error,
        }
    }
}

/// One decompressor filter as configured on one worker.
#[derive(Debug)]
pub struct Factory {
    config: Arc<model::Decompressor>,
    request: DirectionStats,
    response: DirectionStats,
    library: LibraryStats,
}

impl Factory {
    /// The filter of an HCM whose stat prefix is `stat_prefix`; stats go under
    /// `http.<prefix>.decompressor.<library name>.<library>.`.
    pub fn new(config: Arc<model::Decompressor>, shard: &Shard, stat_prefix: &str) -> Self {
        let prefix = format!(
            "http.{stat_prefix}.decompressor.{}.{}.",
            config.library_name,
            config.library.stat_prefix()
        );
        Factory {
            request: DirectionStats::new(shard, &format!("{prefix}request.")),
            response: DirectionStats::new(shard, &format!("{prefix}response.")),
            library: LibraryStats::new(&config.library, shard, &prefix),
            config,
        }
    }

    /// The filter for one stream.
    pub fn filter(self: &Rc<Self>) -> DecompressorFilter {
        DecompressorFilter {
            factory: self.clone(),
            head_request: false,
            request: None,
            response: None,
        }
    }
}

/// The decompressor filter on one stream.
pub struct DecompressorFilter {
    factory: Rc<Factory>,
    head_request: bool,
    request: Option<Inflater>,
    response: Option<Inflater>,
}

fn tokens(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|t| !t.is_empty())
}

/// Whether `h` asks not to be transformed.
fn no_transform(h: &HeaderMap) -> bool {
    super::compressor::has_token(h, header::CACHE_CONTROL, "no-transform")
}

/// Decides for one message: when it is to be decoded, takes the library's token off
/// `content-encoding`, drops `content-length` and returns the inflater.
fn start(
    h: &mut HeaderMap,
    dir: Option<&DecompressionDirection>,
    library: &DecompressorLibrary,
    stats: &DirectionStats,
) -> Option<Inflater> {
    let encoding = library.encoding();
    let matches = dir.is_some_and(|d| {
        crate::runtime::flag_on(d.runtime.as_ref())
            && (d.ignore_no_transform_header || !no_transform(h))
    }) && h
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| tokens(v).next())
        .is_some_and(|first| first.eq_ignore_ascii_case(encoding));
    if !matches {
        stats.not_decompressed.inc();
        return None;
    }
    stats.decompressed.inc();
    let rest: Vec<String> = h
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| tokens(v).skip(1).map(str::to_string).collect())
        .unwrap_or_default();
    match HeaderValue::from_str(&rest.join(", ")) {
        Ok(v) if !rest.is_empty() => {
            h.insert(header::CONTENT_ENCODING, v);
        }
        _ => {
            h.remove(header::CONTENT_ENCODING);
        }
    }
    h.remove(header::CONTENT_LENGTH);
    Some(Inflater::new(library))
}

impl HttpFilter for DecompressorFilter {
    fn decode_headers(
        &mut self,
        head: &mut http::request::Parts,
        end_stream: bool,
    ) -> HeadersStatus {
        let config = self.factory.config.clone();
        self.head_request = head.method == http::Method::HEAD;
        if config
            .response
            .as_ref()
            .is_some_and(|d| crate::runtime::flag_on(d.runtime.as_ref()))
            && config.advertise_accept_encoding
        {
            advertise(&mut head.headers, config.library.encoding());
        }
        if end_stream {
            return HeadersStatus::Continue;
        }
        self.request = start(
            &mut head.headers,
            config.request.as_ref(),
            &config.library,
            &self.factory.request,
        );
        HeadersStatus::Continue
    }

    fn decode_data(&mut self, data: &mut Bytes, end_stream: bool) -> DataStatus {
        if let Some(inflater) = self.request.as_mut() {
            let f = &self.factory;
            *data = inflater.inflate(data, &f.request, &f.library);
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
        if end_stream || self.head_request {
            return HeadersStatus::Continue;
        }
        let config = self.factory.config.clone();
        self.response = start(
            &mut head.headers,
            config.response.as_ref(),
            &config.library,
            &self.factory.response,
        );
        HeadersStatus::Continue
    }

    fn encode_data(&mut self, data: &mut Bytes, end_stream: bool) -> DataStatus {
        if let Some(inflater) = self.response.as_mut() {
            let f = &self.factory;
            *data = inflater.inflate(data, &f.response, &f.library);
            if end_stream {
                self.response = None;
            }
        }
        DataStatus::Continue
    }
}

/// Puts `encoding` last in `accept-encoding`, as Envoy does: any token that names it (with
/// whatever weight) is replaced by the bare encoding at the end.
fn advertise(h: &mut HeaderMap, encoding: &str) {
    let mut kept: Vec<String> = Vec::new();
    for v in h.get_all(header::ACCEPT_ENCODING) {
        for t in tokens(&String::from_utf8_lossy(v.as_bytes())) {
            let name = t.split(';').next().unwrap_or("").trim();
            if !name.eq_ignore_ascii_case(encoding) {
                kept.push(t.to_string());
            }
        }
    }
    kept.push(encoding.to_string());
    if let Ok(v) = HeaderValue::from_str(&kept.join(",")) {
        h.insert(header::ACCEPT_ENCODING, v);
    }
}

/// A streaming decoder. After an error it produces nothing more.
enum Inflater {
    Gzip {
        inflate: flate2::Decompress,
        chunk: usize,
        max_ratio: u64,
        done: bool,
    },
    Brotli(Box<brotli::DecompressorWriter<Vec<u8>>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, Vec<u8>>>),
    Failed,
}

impl Inflater {
    fn new(library: &DecompressorLibrary) -> Self {
        match *library {
            DecompressorLibrary::Gzip {
                window_bits,
                max_inflate_ratio,
                chunk_size,
            } => Inflater::Gzip {
                inflate: flate2::Decompress::new_gzip(window_bits),
                chunk: chunk_size,
                max_ratio: max_inflate_ratio,
                done: false,
            },
            DecompressorLibrary::Brotli { chunk_size } => Inflater::Brotli(Box::new(
                brotli::DecompressorWriter::new(Vec::new(), chunk_size),
            )),
            DecompressorLibrary::Zstd { .. } => match zstd::stream::write::Decoder::new(Vec::new())
            {
                Ok(d) => Inflater::Zstd(Box::new(d)),
                Err(e) => {
                    tracing::warn!(error = %e, "zstd decompressor could not start");
                    Inflater::Failed
                }
            },
        }
    }

    /// Decodes `input`, counting bytes and errors; returns what is ready to pass on.
    fn inflate(&mut self, input: &[u8], stats: &DirectionStats, library: &LibraryStats) -> Bytes {
        stats.total_compressed_bytes.add(input.len() as u64);
        let result = match self {
            Inflater::Gzip {
                inflate,
                chunk,
                max_ratio,
                done,
            } => gunzip(inflate, input, *chunk, *max_ratio, done),
            Inflater::Brotli(w) => w
                .write_all(input)
                .and_then(|()| w.flush())
                .map(|()| std::mem::take(w.get_mut())),
            Inflater::Zstd(d) => d
                .write_all(input)
                .and_then(|()| d.flush())
                .map(|()| std::mem::take(d.get_mut())),
            Inflater::Failed => Ok(Vec::new()),
        };
        match result {
            Ok(out) => {
                stats.total_uncompressed_bytes.add(out.len() as u64);
                Bytes::from(out)
            }
            Err(e) => {
                tracing::debug!(error = %e, "body does not decode");
                library.error().inc();
                *self = Inflater::Failed;
                Bytes::new()
            }
        }
    }
}

/// Decodes a body that arrives in `pieces` as the filter would, for tests and fuzzing:
/// returns what came out and whether the body decoded without error.
pub fn decode_pieces(library: &DecompressorLibrary, pieces: &[&[u8]]) -> (Vec<u8>, bool) {
    let shard = Shard::default();
    let stats = DirectionStats::new(&shard, "");
    let errors = LibraryStats::new(library, &shard, "");
    let mut inflater = Inflater::new(library);
    let mut out = Vec::new();
    for piece in pieces {
        out.extend_from_slice(&inflater.inflate(piece, &stats, &errors));
    }
    (out, !matches!(inflater, Inflater::Failed))
}

fn gunzip(
    inflate: &mut flate2::Decompress,
    mut input: &[u8],
    chunk: usize,
    max_ratio: u64,
    done: &mut bool,
) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    // One chunk of output at a time, so the ratio is checked before the output can grow far
    // past it.
    let mut buf = vec![0u8; chunk];
    while !*done && !input.is_empty() {
        let (before_in, before_out) = (inflate.total_in(), inflate.total_out());
        let status = inflate
            .decompress(input, &mut buf, flate2::FlushDecompress::None)
            .map_err(std::io::Error::other)?;
        let used = usize::try_from(inflate.total_in() - before_in).unwrap_or(input.len());
        let made = usize::try_from(inflate.total_out() - before_out).unwrap_or(0);
        input = &input[used.min(input.len())..];
        out.extend_from_slice(&buf[..made.min(buf.len())]);
        if inflate.total_out() > max_ratio.saturating_mul(inflate.total_in()) {
            return Err(std::io::Error::other(
                "inflate ratio over max_inflate_ratio",
            ));
        }
        match status {
            flate2::Status::StreamEnd => *done = true,
            _ if used == 0 && made == 0 => {
                return Err(std::io::Error::other("gzip stream makes no progress"))
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> (DirectionStats, LibraryStats, Arc<Shard>) {
        let shard = Arc::new(Shard::default());
        let lib = DecompressorLibrary::Gzip {
            window_bits: 15,
            max_inflate_ratio: 100,
            chunk_size: 4096,
        };
        (
            DirectionStats::new(&shard, "t."),
            LibraryStats::new(&lib, &shard, "t."),
            shard,
        )
    }

    #[test]
    fn bodies_decode_however_they_are_split_and_garbage_stops_them() {
        let text: Vec<u8> = b"hello world "
            .iter()
            .copied()
            .cycle()
            .take(50_000)
            .collect();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&text).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let br = {
            let mut w = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
            w.write_all(&text).expect("brotli");
            w.into_inner()
        };
        let zs = zstd::stream::encode_all(&text[..], 3).expect("zstd");
        let (d, l, _shard) = stats();
        for (lib, body) in [
            (
                DecompressorLibrary::Gzip {
                    window_bits: 15,
                    max_inflate_ratio: 1000,
                    chunk_size: 4096,
                },
                &gz,
            ),
            (DecompressorLibrary::Brotli { chunk_size: 4096 }, &br),
            (DecompressorLibrary::Zstd { chunk_size: 4096 }, &zs),
        ] {
            for piece in [1, 7, 100, 100_000] {
                let mut i = Inflater::new(&lib);
                let mut out = Vec::new();
                for p in body.chunks(piece) {
                    out.extend_from_slice(&i.inflate(p, &d, &l));
                }
                assert_eq!(out.len(), text.len(), "{lib:?} in pieces of {piece}");
                assert_eq!(out, text);
            }
            let mut i = Inflater::new(&lib);
            assert!(i.inflate(b"not compressed at all", &d, &l).is_empty());
            assert!(matches!(i, Inflater::Failed));
        }
        // A bomb: beyond max_inflate_ratio the gzip body stops.
        let mut i = Inflater::new(&DecompressorLibrary::Gzip {
            window_bits: 15,
            max_inflate_ratio: 100,
            chunk_size: 4096,
        });
        let zeros = vec![0u8; 10_000_000];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&zeros).expect("gzip");
        let bomb = gz.finish().expect("gzip");
        let out = i.inflate(&bomb, &d, &l);
        assert!(
            out.len() < 100 * bomb.len() + 8192,
            "{} bytes out",
            out.len()
        );
        assert!(matches!(i, Inflater::Failed));
    }

    #[test]
    fn accept_encoding_is_advertised_last() {
        let mut h = HeaderMap::new();
        advertise(&mut h, "gzip");
        assert_eq!(h["accept-encoding"], "gzip");
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("br"));
        advertise(&mut h, "gzip");
        assert_eq!(h["accept-encoding"], "br,gzip");
        advertise(&mut h, "br");
        assert_eq!(h["accept-encoding"], "gzip,br");
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip;q=0.5, identity"),
        );
        advertise(&mut h, "gzip");
        assert_eq!(h["accept-encoding"], "identity,gzip");
    }
}
