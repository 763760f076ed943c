//! HTTP: the connection manager, codecs (hyper and h2), the filter API and the router.

pub mod body;
pub mod conn_manager;
pub mod conn_manager_utility;
pub mod delayed_close;
pub mod filter;
pub mod filters;
pub mod framing;
pub mod grpc_call;
pub mod h1_guard;
pub mod h2_frames;
pub mod h2_tunnel;
pub mod headers;
pub mod local_reply;
pub mod replay;
pub mod shadow;
pub mod timeouts;
pub mod vcluster;
