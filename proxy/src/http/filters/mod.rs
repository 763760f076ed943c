//! HTTP filters. The router is the terminal decoder filter.

pub mod compressor;
pub mod decompressor;
pub mod health_check;
pub mod istio;
pub mod retry;
pub mod router;
