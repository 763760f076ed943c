//! TLS with rustls, as Envoy's `envoy.transport_sockets.tls`. The settings, their checks and
//! the rustls configurations built from them are the configuration's (`skiff_config::tls`,
//! re-exported here); the runtime adds what follows certificate files and SDS rotations
//! ([`reload`], [`transport`]), connection details for access logs ([`info`]) and the
//! `ssl.*` stats ([`stats`]).

pub use skiff_config::tls::*;

pub mod info;
pub mod reload;
pub mod stats;
pub mod transport;
