//! HTTP filters. The router is the terminal decoder filter.

pub mod router;
