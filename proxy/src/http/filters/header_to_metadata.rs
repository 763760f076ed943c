//! `envoy.filters.http.header_to_metadata`: request and response header (or cookie) values
//! written into the stream's dynamic metadata, as Envoy's filter does it. A route's own
//! configuration replaces the filter's whole. The route is not picked again afterwards (Envoy's
//! filter does not clear the route cache either).

use std::rc::Rc;
use std::sync::Arc;

use http::HeaderMap;

use crate::config::metadata::{header_value, ValueFailure};
use crate::config::model::{HeaderToMetadata, MetadataKeyValue, MetadataRule, MetadataSource};
use crate::http::filter::{HeadersStatus, HttpFilter};
use crate::stats::{Counter, Shard};
use crate::stream_info::DynamicMetadata;

/// `http_filter_name.<stat_prefix>.*` (Envoy's names, at the root).
#[derive(Debug)]
struct Stats {
    request_rules_processed: Counter,
    response_rules_processed: Counter,
    request_metadata_added: Counter,
    response_metadata_added: Counter,
    request_header_not_found: Counter,
    response_header_not_found: Counter,
    base64_decode_failed: Counter,
    header_value_too_long: Counter,
    regex_substitution_failed: Counter,
}

/// One direction's counters.
struct Side<'a> {
    processed: &'a Counter,
    added: &'a Counter,
    not_found: &'a Counter,
}

/// The filter on one worker.
#[derive(Debug)]
pub struct Factory {
    config: Arc<HeaderToMetadata>,
    stats: Option<Rc<Stats>>,
    shard: Arc<Shard>,
}

impl Stats {
    fn new(shard: &Shard, prefix: &str) -> Stats {
        let c = |n: &str| shard.counter(&format!("http_filter_name.{prefix}.{n}"));
        Stats {
            request_rules_processed: c("request_rules_processed"),
            response_rules_processed: c("response_rules_processed"),
            request_metadata_added: c("request_metadata_added"),
            response_metadata_added: c("response_metadata_added"),
            request_header_not_found: c("request_header_not_found"),
            response_header_not_found: c("response_header_not_found"),
            base64_decode_failed: c("base64_decode_failed"),
            header_value_too_long: c("header_value_too_long"),
            regex_substitution_failed: c("regex_substitution_failed"),
        }
    }
}

impl Factory {
    /// The filter with `config`; stats only with a `stat_prefix`, as Envoy.
    pub fn new(config: Arc<HeaderToMetadata>, shard: &Arc<Shard>) -> Self {
        let stats = config
            .stat_prefix
            .as_ref()
            .map(|p| Rc::new(Stats::new(shard, p)));
        Factory {
            config,
            stats,
            shard: shard.clone(),
        }
    }

    /// The filter for one stream, writing into `metadata`, with the route's own configuration
    /// if it has one.
    pub fn filter(
        &self,
        route: Option<&Arc<HeaderToMetadata>>,
        metadata: Option<&DynamicMetadata>,
    ) -> HeaderToMetadataFilter {
        // A route's configuration counts in its own stats, if it names a prefix (Envoy's).
        let (config, stats) = match route {
            Some(r) => (
                r.clone(),
                r.stat_prefix
                    .as_ref()
                    .map(|p| Rc::new(Stats::new(&self.shard, p))),
            ),
            None => (self.config.clone(), self.stats.clone()),
        };
        HeaderToMetadataFilter {
            config,
            stats,
            metadata: metadata.cloned().unwrap_or_default(),
        }
    }
}

/// The filter on one stream.
pub struct HeaderToMetadataFilter {
    config: Arc<HeaderToMetadata>,
    stats: Option<Rc<Stats>>,
    metadata: DynamicMetadata,
}

impl HeaderToMetadataFilter {
    fn apply(
        &self,
        rules: &[MetadataRule],
        headers: &mut HeaderMap,
        pseudo: &dyn Fn(&str) -> Option<String>,
        request: bool,
    ) {
        if rules.is_empty() {
            return;
        }
        let stats = self.stats.as_deref();
        let side = stats.map(|s| {
            if request {
                Side {
                    processed: &s.request_rules_processed,
                    added: &s.request_metadata_added,
                    not_found: &s.request_header_not_found,
                }
            } else {
                Side {
                    processed: &s.response_rules_processed,
                    added: &s.response_metadata_added,
                    not_found: &s.response_header_not_found,
                }
            }
        });
        self.metadata.with(|md| {
            for rule in rules {
                if let Some(s) = &side {
                    s.processed.inc();
                }
                let found = match &rule.source {
                    MetadataSource::Pseudo(name) => pseudo(name),
                    source => extract(source, headers, rule.remove),
                };
                let written = match (found, &rule.on_present, &rule.on_missing) {
                    (Some(v), Some(kv), _) => {
                        let value = kv.value.clone().unwrap_or(v);
                        if value.is_empty() {
                            continue;
                        }
                        let value = match &kv.rewrite {
                            Some((re, sub)) => {
                                let out = re.replace_all(&value, sub.as_str()).into_owned();
                                if out.is_empty() {
                                    if let Some(s) = stats {
                                        s.regex_substitution_failed.inc();
                                    }
                                    continue;
                                }
                                out
                            }
                            None => value,
                        };
                        write(md, kv, &value, stats)
                    }
                    (None, _, Some(kv)) => {
                        if let Some(s) = &side {
                            s.not_found.inc();
                        }
                        write(md, kv, kv.value.as_deref().unwrap_or_default(), stats)
                    }
                    _ => false,
                };
                if written {
                    if let Some(s) = &side {
                        s.added.inc();
                    }
                }
            }
        });
    }
}

/// The rule's value: every value of the header joined with `,` (removed with `remove`), or
/// the cookie's (an empty one is missing).
fn extract(source: &MetadataSource, headers: &mut HeaderMap, remove: bool) -> Option<String> {
    match source {
        MetadataSource::Header(name) => {
            let mut values = headers.get_all(name).iter();
            let first = values.next()?;
            let mut out = String::from_utf8_lossy(first.as_bytes()).into_owned();
            for v in values {
                out.push(',');
                out.push_str(&String::from_utf8_lossy(v.as_bytes()));
            }
            if remove {
                headers.remove(name);
            }
            Some(out)
        }
        MetadataSource::Cookie(name) => {
            crate::http::filters::router::cookie_value(headers, name).filter(|v| !v.is_empty())
        }
        MetadataSource::Pseudo(_) => None,
    }
}

/// Writes `raw` as `kv` says; false when nothing was written.
fn write(
    md: &mut crate::config::metadata::Metadata,
    kv: &MetadataKeyValue,
    raw: &str,
    stats: Option<&Stats>,
) -> bool {
    match header_value(raw, kv.kind, kv.base64) {
        Ok(v) => {
            md.set(&kv.namespace, &kv.key, v);
            true
        }
        Err(f) => {
            if let Some(s) = stats {
                match f {
                    ValueFailure::TooLong => s.header_value_too_long.inc(),
                    ValueFailure::Base64 => s.base64_decode_failed.inc(),
                    ValueFailure::Parse => {}
                }
            }
            false
        }
    }
}

impl HttpFilter for HeaderToMetadataFilter {
    fn decode_headers(
        &mut self,
        head: &mut http::request::Parts,
        _end_stream: bool,
    ) -> HeadersStatus {
        let (method, uri) = (head.method.clone(), head.uri.clone());
        let authority = crate::http::conn_manager::authority(head).map(str::to_string);
        let pseudo = |name: &str| match name {
            ":path" => uri.path_and_query().map(|p| p.as_str().to_string()),
            ":method" => Some(method.as_str().to_string()),
            ":authority" => authority.clone(),
            ":scheme" => uri.scheme_str().map(str::to_string),
            _ => None,
        };
        self.apply(&self.config.request_rules, &mut head.headers, &pseudo, true);
        HeadersStatus::Continue
    }

    fn encode_headers(
        &mut self,
        head: &mut http::response::Parts,
        _end_stream: bool,
    ) -> HeadersStatus {
        let status = head.status.as_u16().to_string();
        let pseudo = |name: &str| (name == ":status").then(|| status.clone());
        self.apply(
            &self.config.response_rules,
            &mut head.headers,
            &pseudo,
            false,
        );
        HeadersStatus::Continue
    }
}
