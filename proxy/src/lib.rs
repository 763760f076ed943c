#![forbid(unsafe_code)]
//! skiff: an eBPF-accelerated transparent sidecar proxy that runs Envoy v3 configuration.
//!
//! Modules are named after the Envoy concepts they implement, so a reader who knows Envoy finds
//! each thing where they look: `listener`, `network::filters::tcp_proxy`,
//! `http::{conn_manager, filters::router}`, `router` (the route table), `upstream::{pool, …}`,
//! `config`, `admin`, `stats`, `access_log`.

pub mod access_log;
pub mod admin;
pub mod attached;
pub mod cli;
pub use skiff_config as config;
pub mod config_store;
pub mod drain;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod gate;
pub mod http;
pub mod io;
pub mod listener;
pub mod network;
pub mod otlp;
pub mod overload;
pub use skiff_config::router;
pub mod runtime;
pub mod server;
pub mod stats;
pub mod stream_info;
pub mod tls;
pub mod trace;
pub mod udp;
pub mod upstream;
pub mod worker;
pub mod xds;
