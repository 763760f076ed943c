//! `envoy.filters.http.compressor` and `envoy.filters.http.decompressor` with their libraries.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::compression::brotli::compressor::v3::Brotli;
use envoy_types::pb::envoy::extensions::compression::brotli::decompressor::v3::Brotli as BrotliDecompressor;
use envoy_types::pb::envoy::extensions::compression::gzip::compressor::v3::Gzip;
use envoy_types::pb::envoy::extensions::compression::gzip::decompressor::v3::Gzip as GzipDecompressor;
use envoy_types::pb::envoy::extensions::compression::zstd::compressor::v3::Zstd;
use envoy_types::pb::envoy::extensions::compression::zstd::decompressor::v3::Zstd as ZstdDecompressor;
use envoy_types::pb::envoy::extensions::filters::http::compressor::v3 as compressor;
use envoy_types::pb::envoy::extensions::filters::http::decompressor::v3 as decompressor;

use super::super::model::{
    CompressionDirection, Compressor, CompressorLibrary, DecompressionDirection, Decompressor,
    DecompressorLibrary, HttpFilterConfig,
};
use super::super::proto::{type_name, unpack};
use super::super::ConfigError;

/// Envoy's `min_content_length` default.
const MIN_CONTENT_LENGTH: u64 = 30;

/// The media types Envoy compresses when none are configured.
const DEFAULT_CONTENT_TYPES: &[&str] = &[
    "text/html",
    "text/plain",
    "text/css",
    "application/javascript",
    "application/x-javascript",
    "text/javascript",
    "text/x-javascript",
    "text/ecmascript",
    "text/js",
    "text/jscript",
    "text/x-js",
    "application/ecmascript",
    "application/x-json",
    "application/xml",
    "application/json",
    "image/svg+xml",
    "text/xml",
    "application/xhtml+xml",
];

// The deprecated top-level fields are still Envoy 1.40's configuration when
// `response_direction_config` is absent, and `CommonDirectionConfig.content_type` is the only
// content-type list it honours.
#[allow(deprecated)]
pub(super) fn translate(
    c: &compressor::Compressor,
    path: &str,
) -> Result<HttpFilterConfig, ConfigError> {
    let lib = c
        .compressor_library
        .as_ref()
        .ok_or_else(|| ConfigError::new(format!("{path}.compressor_library"), "required"))?;
    let lpath = format!("{path}.compressor_library.typed_config");
    let any = lib
        .typed_config
        .as_ref()
        .ok_or_else(|| ConfigError::new(lpath.clone(), "required"))?;
    let library = match type_name(&any.type_url) {
        "envoy.extensions.compression.gzip.compressor.v3.Gzip" => {
            gzip(&unpack(any, &lpath)?, &lpath)?
        }
        "envoy.extensions.compression.brotli.compressor.v3.Brotli" => {
            brotli(&unpack(any, &lpath)?, &lpath)?
        }
        "envoy.extensions.compression.zstd.compressor.v3.Zstd" => {
            zstd(&unpack(any, &lpath)?, &lpath)?
        }
        other => {
            return Err(ConfigError::new(
                lpath,
                format!("unsupported compression library '{other}'"),
            ))
        }
    };

    // Without `response_direction_config` the deprecated top-level fields apply, as in Envoy.
    let (
        response,
        disable_on_etag_header,
        remove_accept_encoding_header,
        weaken_etag_on_compress,
        uncompressible_response_codes,
    ) = match &c.response_direction_config {
        Some(r) => {
            let rpath = format!("{path}.response_direction_config");
            let direction = direction(r.common_config.as_ref(), true, &rpath)?;
            let mut codes = Vec::new();
            for (i, &code) in r.uncompressible_response_codes.iter().enumerate() {
                match u16::try_from(code) {
                    Ok(c @ 100..=599) => codes.push(c),
                    _ => {
                        return Err(ConfigError::new(
                            format!("{rpath}.uncompressible_response_codes[{i}]"),
                            "must be between 100 and 599",
                        ))
                    }
                }
            }
            (
                direction,
                r.disable_on_etag_header,
                r.remove_accept_encoding_header,
                r.weaken_etag_on_compress,
                codes,
            )
        }
        None => {
            let (on, runtime) = enabled(c.runtime_enabled.as_ref(), true);
            let direction = on.then(|| CompressionDirection {
                min_content_length: c
                    .content_length
                    .as_ref()
                    .map_or(MIN_CONTENT_LENGTH, |v| u64::from(v.value)),
                content_types: content_types(&c.content_type),
                runtime,
            });
            (
                direction,
                c.disable_on_etag_header,
                c.remove_accept_encoding_header,
                false,
                Vec::new(),
            )
        }
    };
    let request = match &c.request_direction_config {
        Some(r) => direction(
            r.common_config.as_ref(),
            true,
            &format!("{path}.request_direction_config"),
        )?,
        None => None,
    };
    Ok(HttpFilterConfig::Compressor(Arc::new(Compressor {
        library_name: lib.name.clone(),
        library,
        response,
        disable_on_etag_header,
        remove_accept_encoding_header,
        response_direction_config: c.response_direction_config.is_some(),
        weaken_etag_on_compress,
        uncompressible_response_codes,
        request,
    })))
}

/// A direction's common config; `None` when it is disabled.
#[allow(deprecated)]
fn direction(
    c: Option<&compressor::compressor::CommonDirectionConfig>,
    enabled_by_default: bool,
    path: &str,
) -> Result<Option<CompressionDirection>, ConfigError> {
    let Some(c) = c else {
        return Ok(enabled_by_default.then(|| CompressionDirection {
            min_content_length: MIN_CONTENT_LENGTH,
            content_types: content_types(&[]),
            runtime: None,
        }));
    };
    let (on, runtime) = enabled(c.enabled.as_ref(), enabled_by_default);
    if !on {
        return Ok(None);
    }
    if !c.content_type_matcher.is_empty() {
        return Err(ConfigError::unsupported(format!(
            "{path}.common_config.content_type_matcher"
        )));
    }
    Ok(Some(CompressionDirection {
        min_content_length: c
            .min_content_length
            .as_ref()
            .map_or(MIN_CONTENT_LENGTH, |v| u64::from(v.value)),
        content_types: content_types(&c.content_type),
        runtime,
    }))
}

/// A `RuntimeFeatureFlag`: whether the direction may ever be on (its default, or any value
/// of a runtime key), and the flag to read per stream when a key names it.
pub(super) fn enabled(
    flag: Option<&core::RuntimeFeatureFlag>,
    default: bool,
) -> (bool, Option<crate::runtime::RuntimeFlag>) {
    match flag {
        None => (default, None),
        Some(f) => {
            let default = f.default_value.as_ref().is_none_or(|v| v.value);
            if f.runtime_key.is_empty() {
                (default, None)
            } else {
                (
                    true,
                    Some(crate::runtime::RuntimeFlag {
                        key: f.runtime_key.clone(),
                        default,
                    }),
                )
            }
        }
    }
}

fn content_types(configured: &[String]) -> Vec<String> {
    if configured.is_empty() {
        DEFAULT_CONTENT_TYPES
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        // Envoy compares the media type without its parameters.
        configured
            .iter()
            .map(|t| t.split(';').next().unwrap_or("").trim().to_string())
            .collect()
    }
}

fn chunk_size(
    v: Option<&envoy_types::pb::google::protobuf::UInt32Value>,
    path: &str,
) -> Result<usize, ConfigError> {
    match v.map(|v| v.value) {
        None => Ok(4096),
        Some(n @ 4096..=65536) => Ok(n as usize),
        Some(_) => Err(ConfigError::new(
            format!("{path}.chunk_size"),
            "must be between 4096 and 65536",
        )),
    }
}

fn gzip(g: &Gzip, path: &str) -> Result<CompressorLibrary, ConfigError> {
    let level = match g.compression_level {
        0 => 6,
        l @ 1..=9 => l as u32,
        _ => {
            return Err(ConfigError::new(
                format!("{path}.compression_level"),
                "unknown value",
            ))
        }
    };
    let window_bits = match g.window_bits.as_ref().map(|v| v.value) {
        None => 12,
        Some(b @ 9..=15) => b as u8,
        Some(_) => {
            return Err(ConfigError::new(
                format!("{path}.window_bits"),
                "must be between 9 and 15",
            ))
        }
    };
    if let Some(m) = &g.memory_level {
        if !(1..=9).contains(&m.value) {
            return Err(ConfigError::new(
                format!("{path}.memory_level"),
                "must be between 1 and 9",
            ));
        }
    }
    if !(0..=4).contains(&g.compression_strategy) {
        return Err(ConfigError::new(
            format!("{path}.compression_strategy"),
            "unknown value",
        ));
    }
    Ok(CompressorLibrary::Gzip {
        level,
        window_bits,
        chunk_size: chunk_size(g.chunk_size.as_ref(), path)?,
    })
}

fn brotli(b: &Brotli, path: &str) -> Result<CompressorLibrary, ConfigError> {
    let bounded =
        |v: Option<u32>, default: u32, range: std::ops::RangeInclusive<u32>, field: &str| match v {
            None => Ok(default),
            Some(v) if range.contains(&v) => Ok(v),
            Some(_) => Err(ConfigError::new(
                format!("{path}.{field}"),
                format!("must be between {} and {}", range.start(), range.end()),
            )),
        };
    if !(0..=3).contains(&b.encoder_mode) {
        return Err(ConfigError::new(
            format!("{path}.encoder_mode"),
            "unknown value",
        ));
    }
    Ok(CompressorLibrary::Brotli {
        quality: bounded(b.quality.as_ref().map(|v| v.value), 3, 0..=11, "quality")?,
        window_bits: bounded(
            b.window_bits.as_ref().map(|v| v.value),
            18,
            10..=24,
            "window_bits",
        )?,
        input_block_bits: bounded(
            b.input_block_bits.as_ref().map(|v| v.value),
            24,
            16..=24,
            "input_block_bits",
        )?,
        disable_literal_context_modeling: b.disable_literal_context_modeling,
        mode: b.encoder_mode as u32,
        chunk_size: chunk_size(b.chunk_size.as_ref(), path)?,
    })
}

fn zstd(z: &Zstd, path: &str) -> Result<CompressorLibrary, ConfigError> {
    if z.dictionary.is_some() {
        return Err(ConfigError::unsupported(format!("{path}.dictionary")));
    }
    if !(0..=9).contains(&z.strategy) {
        return Err(ConfigError::new(
            format!("{path}.strategy"),
            "unknown value",
        ));
    }
    Ok(CompressorLibrary::Zstd {
        level: z.compression_level.as_ref().map_or(3, |v| v.value as i32),
        checksum: z.enable_checksum,
        strategy: z.strategy as u32,
        chunk_size: chunk_size(z.chunk_size.as_ref(), path)?,
    })
}

/// `CompressorPerRoute`.
pub(super) fn per_route(
    c: &compressor::CompressorPerRoute,
    path: &str,
) -> Result<crate::router::CompressorPerRoute, ConfigError> {
    use compressor::compressor_per_route::Override;
    let mut out = crate::router::CompressorPerRoute::default();
    match &c.r#override {
        Some(Override::Disabled(d)) => {
            if *d {
                out.response_enabled = Some(false);
            }
        }
        Some(Override::Overrides(o)) => {
            if o.compressor_library.is_some() {
                return Err(ConfigError::unsupported(format!(
                    "{path}.overrides.compressor_library"
                )));
            }
            if let Some(r) = &o.response_direction_config {
                out.response_enabled = Some(true);
                out.remove_accept_encoding = r.remove_accept_encoding_header.map(|v| v.value);
            }
        }
        None => {
            return Err(ConfigError::new(
                format!("{path}.override"),
                "value is required",
            ))
        }
    }
    Ok(out)
}

pub(super) fn translate_decompressor(
    d: &decompressor::Decompressor,
    path: &str,
) -> Result<HttpFilterConfig, ConfigError> {
    let lib = d
        .decompressor_library
        .as_ref()
        .ok_or_else(|| ConfigError::new(format!("{path}.decompressor_library"), "required"))?;
    let lpath = format!("{path}.decompressor_library.typed_config");
    let any = lib
        .typed_config
        .as_ref()
        .ok_or_else(|| ConfigError::new(lpath.clone(), "required"))?;
    let library = match type_name(&any.type_url) {
        "envoy.extensions.compression.gzip.decompressor.v3.Gzip" => {
            let g: GzipDecompressor = unpack(any, &lpath)?;
            let window_bits = match g.window_bits.as_ref().map(|v| v.value) {
                None => 15,
                Some(b @ 9..=15) => b as u8,
                Some(_) => {
                    return Err(ConfigError::new(
                        format!("{lpath}.window_bits"),
                        "must be between 9 and 15",
                    ))
                }
            };
            let max_inflate_ratio = match g.max_inflate_ratio.as_ref().map(|v| v.value) {
                None => 100,
                Some(r @ 1..=10000) => u64::from(r),
                Some(_) => {
                    return Err(ConfigError::new(
                        format!("{lpath}.max_inflate_ratio"),
                        "must be between 1 and 10000",
                    ))
                }
            };
            DecompressorLibrary::Gzip {
                window_bits,
                max_inflate_ratio,
                chunk_size: chunk_size(g.chunk_size.as_ref(), &lpath)?,
            }
        }
        "envoy.extensions.compression.brotli.decompressor.v3.Brotli" => {
            let b: BrotliDecompressor = unpack(any, &lpath)?;
            DecompressorLibrary::Brotli {
                chunk_size: chunk_size(b.chunk_size.as_ref(), &lpath)?,
            }
        }
        "envoy.extensions.compression.zstd.decompressor.v3.Zstd" => {
            let z: ZstdDecompressor = unpack(any, &lpath)?;
            if !z.dictionaries.is_empty() {
                return Err(ConfigError::unsupported(format!("{lpath}.dictionaries")));
            }
            DecompressorLibrary::Zstd {
                chunk_size: chunk_size(z.chunk_size.as_ref(), &lpath)?,
            }
        }
        other => {
            return Err(ConfigError::new(
                lpath,
                format!("unsupported decompression library '{other}'"),
            ))
        }
    };
    let common = |c: Option<&decompressor::decompressor::CommonDirectionConfig>| match c {
        None => Some(DecompressionDirection {
            ignore_no_transform_header: false,
            runtime: None,
        }),
        Some(c) => {
            let (on, runtime) = enabled(c.enabled.as_ref(), true);
            on.then_some(DecompressionDirection {
                ignore_no_transform_header: c.ignore_no_transform_header,
                runtime,
            })
        }
    };
    let request = common(
        d.request_direction_config
            .as_ref()
            .and_then(|r| r.common_config.as_ref()),
    );
    let response = common(
        d.response_direction_config
            .as_ref()
            .and_then(|r| r.common_config.as_ref()),
    );
    let advertise_accept_encoding = d
        .request_direction_config
        .as_ref()
        .and_then(|r| r.advertise_accept_encoding.as_ref())
        .is_none_or(|v| v.value);
    Ok(HttpFilterConfig::Decompressor(Arc::new(Decompressor {
        library_name: lib.name.clone(),
        library,
        request,
        advertise_accept_encoding,
        response,
    })))
}
