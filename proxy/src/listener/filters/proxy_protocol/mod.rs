//! `envoy.filters.listener.proxy_protocol`: reads a PROXY protocol header (v1 or v2) off the
//! connection and makes its source the downstream remote address and its destination the local
//! one. It takes exactly the header's bytes; the payload stays on the socket.

pub mod parser;

use std::sync::Arc;

use crate::config::model;
use crate::stats::{Counter, Shard};

use super::{Accepted, Peek, Status};
use parser::{Options, Parse, Version};

/// `proxy_proto.[<stat_prefix>.]versions.<v>.*`.
#[derive(Debug)]
struct VersionStats {
    found: Counter,
    disallowed: Counter,
    error: Counter,
}

/// The filter on one worker, with its stats.
#[derive(Debug)]
pub struct ProxyProtocol {
    opts: Options,
    pass_through_tlvs: model::TlvSet,
    /// `downstream_cx_proxy_proto_error`, at the root as Envoy keeps it.
    legacy_error: Counter,
    not_found_allowed: Counter,
    not_found_disallowed: Counter,
    v1: VersionStats,
    v2: VersionStats,
}

impl ProxyProtocol {
    /// The filter for `cfg` on the worker whose stats are `shard`.
    pub fn new(cfg: &Arc<model::ProxyProtocol>, shard: &Arc<Shard>) -> Self {
        let p = if cfg.stat_prefix.is_empty() {
            "proxy_proto.".to_string()
        } else {
            format!("proxy_proto.{}.", cfg.stat_prefix)
        };
        let version = |v: &str| VersionStats {
            found: shard.counter(&format!("{p}versions.{v}.found")),
            disallowed: shard.counter(&format!("{p}versions.{v}.disallowed")),
            error: shard.counter(&format!("{p}versions.{v}.error")),
        };
        ProxyProtocol {
            opts: Options {
                allow_without: cfg.allow_without,
                allow_v1: cfg.allow_v1,
                allow_v2: cfg.allow_v2,
            },
            pass_through_tlvs: cfg.pass_through_tlvs,
            legacy_error: shard.counter("downstream_cx_proxy_proto_error"),
            not_found_allowed: shard.counter(&format!("{p}not_found_allowed")),
            not_found_disallowed: shard.counter(&format!("{p}not_found_disallowed")),
            v1: version("v1"),
            v2: version("v2"),
        }
    }

    fn version(&self, v: Version) -> &VersionStats {
        match v {
            Version::V1 => &self.v1,
            Version::V2 => &self.v2,
        }
    }

    pub(super) async fn on_accept(&self, sock: &mut Accepted, peek: &mut Peek) -> Status {
        let mut want = parser::INITIAL_READ;
        let mut seen = 0;
        loop {
            let buf = match peek.more(&mut sock.stream, seen, want).await {
                Ok(buf) => buf,
                Err(e) => return Status::from_io(&e),
            };
            seen = buf.len();
            match parser::parse(buf, &self.opts) {
                Parse::Incomplete { want: w } if w > seen => want = w.max(want),
                // Nothing more can be read into a full buffer.
                Parse::Incomplete { .. } => {
                    self.not_found_disallowed.inc();
                    self.legacy_error.inc();
                    return Status::Close;
                }
                Parse::NotFound => {
                    self.not_found_allowed.inc();
                    return Status::Continue;
                }
                Parse::Error(v) => {
                    match v {
                        Some(v) => self.version(v).error.inc(),
                        None => self.not_found_disallowed.inc(),
                    }
                    self.legacy_error.inc();
                    return Status::Close;
                }
                Parse::Denied(v) => {
                    let s = self.version(v);
                    s.found.inc();
                    s.disallowed.inc();
                    return Status::Close;
                }
                Parse::Header(h) => {
                    let len = h.len;
                    if let Some((src, dst)) = h.addresses {
                        sock.remote = src;
                        sock.local = dst;
                    }
                    if !self.pass_through_tlvs.is_empty() {
                        sock.tlvs = h
                            .tlvs
                            .filter(|(t, _)| self.pass_through_tlvs.contains(*t))
                            .map(|(t, v)| (t, v.into()))
                            .collect();
                    }
                    self.version(h.version).found.inc();
                    if let Err(e) = peek.consume(&mut sock.stream, len).await {
                        return Status::from_io(&e);
                    }
                    return Status::Continue;
                }
            }
        }
    }
}
