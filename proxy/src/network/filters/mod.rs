//! Network filters.

pub mod connection_limit;
pub mod local_ratelimit;
pub mod tcp_proxy;
