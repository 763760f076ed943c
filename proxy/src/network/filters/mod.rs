//! Network filters.

pub mod tcp_proxy;
