//! HTTP filters. The router is the terminal decoder filter.

pub mod basic_auth;
pub mod compressor;
pub mod cors;
pub mod decompressor;
pub mod ext_authz;
pub mod fault;
pub mod header_mutation;
pub mod header_to_metadata;
pub mod health_check;
pub mod istio;
pub mod jwt_authn;
pub mod local_ratelimit;
pub mod ratelimit;
pub mod rbac;
pub mod retry;
pub mod router;
pub mod set_filter_state;
pub mod stateful_session;
pub mod token_bucket;
