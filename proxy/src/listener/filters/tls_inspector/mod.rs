//! `envoy.filters.listener.tls_inspector`: reads (without taking) the TLS ClientHello, however
//! many records and reads it spans, and sets the transport protocol (`tls`), the requested server
//! name (SNI) and the requested application protocols (ALPN) for the filter chain match.

pub mod client_hello;

use std::sync::Arc;

use crate::config::model;
use crate::stats::{Counter, Shard};

use super::{Accepted, ApplicationProtocols, Peek, Status, TransportProtocol};
use client_hello::Parse;

/// What the inspector looks at first; most ClientHellos fit.
const FIRST_READ: usize = 2048;

/// The filter on one worker, with its stats (`tls_inspector.*`, shared by every listener).
#[derive(Debug)]
pub struct TlsInspector {
    initial_read: usize,
    max_read: usize,
    close_on_parse_error: bool,
    tls_found: Counter,
    tls_not_found: Counter,
    sni_found: Counter,
    sni_not_found: Counter,
    alpn_found: Counter,
    alpn_not_found: Counter,
    client_hello_too_large: Counter,
}

impl TlsInspector {
    /// The filter for `cfg` on the worker whose stats are `shard`.
    pub fn new(cfg: &model::TlsInspector, shard: &Arc<Shard>) -> Self {
        let c = |n: &str| shard.counter(&format!("tls_inspector.{n}"));
        TlsInspector {
            initial_read: cfg.initial_read_buffer_size,
            max_read: cfg.max_client_hello_size,
            close_on_parse_error: cfg.close_connection_on_client_hello_parsing_errors,
            tls_found: c("tls_found"),
            tls_not_found: c("tls_not_found"),
            sni_found: c("sni_found"),
            sni_not_found: c("sni_not_found"),
            alpn_found: c("alpn_found"),
            alpn_not_found: c("alpn_not_found"),
            client_hello_too_large: c("client_hello_too_large"),
        }
    }

    pub(super) async fn on_accept(&self, sock: &mut Accepted, peek: &mut Peek) -> Status {
        // Envoy asks for initial_read_buffer_size bytes and doubles the request each time it
        // fills, up to max_client_hello_size; a hello that does not fit is refused. Starting
        // smaller changes no verdict (they depend only on the bytes) and keeps the buffer of a
        // typical hello small.
        let mut want = self.initial_read.min(FIRST_READ);
        let mut seen = 0;
        loop {
            let buf = match peek.more(&mut sock.stream, seen, want).await {
                Ok(buf) => buf,
                Err(e) => return Status::from_io(&e),
            };
            seen = buf.len();
            match client_hello::parse(buf) {
                Parse::Incomplete if seen < want => {}
                Parse::Incomplete if want < self.max_read => {
                    want = (want * 2).min(self.max_read);
                }
                Parse::Incomplete => {
                    self.client_hello_too_large.inc();
                    return Status::Close;
                }
                Parse::BadVersion { server_name } => {
                    if server_name {
                        self.sni_found.inc();
                    } else {
                        self.sni_not_found.inc();
                    }
                    self.tls_not_found.inc();
                    return Status::Close;
                }
                Parse::NotTls => {
                    self.tls_not_found.inc();
                    if self.close_on_parse_error {
                        return Status::Close;
                    }
                    return Status::Continue;
                }
                Parse::Tls(h) => {
                    match h.server_name {
                        Some(name) => {
                            self.sni_found.inc();
                            sock.server_name = Some(name);
                        }
                        None => self.sni_not_found.inc(),
                    }
                    self.tls_found.inc();
                    match h.alpn {
                        Some(list) => {
                            self.alpn_found.inc();
                            sock.application_protocols = ApplicationProtocols::Alpn(list);
                        }
                        None => self.alpn_not_found.inc(),
                    }
                    sock.transport_protocol = TransportProtocol::Tls;
                    return Status::Continue;
                }
            }
        }
    }
}
