//! Network filters.

pub mod connection_limit;
pub mod local_ratelimit;
pub mod post_tunnel;
pub mod ratelimit;
pub mod tcp_proxy;
