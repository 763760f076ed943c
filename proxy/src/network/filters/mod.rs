//! Network filters.

pub mod local_ratelimit;
pub mod tcp_proxy;
