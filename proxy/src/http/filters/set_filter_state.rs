//! `envoy.filters.http.set_filter_state`: values formatted from the request (its headers as
//! the filters before changed them, the connection, the route) put into the stream's filter
//! state when the request headers arrive, where RBAC, formatters and a route picked again
//! (`clear_route_cache`) read them.

use std::sync::Arc;

use crate::http::filter::{ClearRouteCache, HeadersStatus, HttpFilter, StreamContext};
use crate::stream_info::{DynamicMetadata, StreamInfo};
use skiff_config::filter_state::HttpSetFilterState;

/// The filter on one stream.
pub struct SetFilterState {
    config: Arc<HttpSetFilterState>,
    /// The stream's record as it was when the filters were made: what the values render from
    /// (the request's headers come from the request itself).
    info: Option<Box<StreamInfo>>,
    /// Where the objects go.
    state: Option<DynamicMetadata>,
}

impl SetFilterState {
    /// The filter for the stream of `cx`.
    pub fn new(config: Arc<HttpSetFilterState>, cx: &StreamContext<'_>) -> Self {
        let info = cx.info.map(|i| {
            let mut copy = Box::new(i.clone());
            // It renders with the stream's filter state as it grows.
            copy.dynamic_metadata = cx.metadata.cloned();
            copy
        });
        SetFilterState {
            config,
            info,
            state: cx.metadata.cloned(),
        }
    }
}

impl HttpFilter for SetFilterState {
    fn decode_headers(
        &mut self,
        head: &mut http::request::Parts,
        _end_stream: bool,
    ) -> HeadersStatus {
        // The connection manager keeps a record and the stream's state for this filter.
        let (Some(info), Some(state)) = (&self.info, &self.state) else {
            return HeadersStatus::Continue;
        };
        for v in &self.config.on_request_headers {
            let text = crate::access_log::text(&v.format, info, Some(&head.headers));
            let Some(object) = v.object(text) else {
                continue;
            };
            // The connection's read-only objects are not replaced by a stream's.
            let held = info
                .connection
                .as_ref()
                .and_then(|c| c.filter_state.get(&v.key))
                .is_some_and(|o| o.read_only);
            if held || !state.with_filter_state(|s| s.set(&v.key, object)) {
                tracing::debug!(key = %v.key, "filter state object is read-only: kept");
            }
        }
        if self.config.clear_route_cache {
            head.extensions.insert(ClearRouteCache);
        }
        HeadersStatus::Continue
    }
}
