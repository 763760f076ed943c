//! `envoy.filters.http.header_mutation`: the filter's mutations of the request's and the
//! response's headers, then its routes' `HeaderMutationPerRoute` (the route's first, then the
//! virtual host's and the route configuration's; the other way round with
//! `most_specific_header_mutations_wins`), each made in order, values formatted from the
//! stream as Envoy's header formatter renders them.

use std::sync::Arc;

use http::HeaderMap;

use crate::http::filter::{HeadersStatus, HttpFilter};
use crate::stream_info::StreamInfo;
use skiff_config::model::{HeaderMutation, HeaderMutationStep, HeaderMutations};

/// The filter on one stream.
pub struct HeaderMutationFilter {
    /// The filter's mutations, then the routes' in the order they run.
    all: Vec<Arc<HeaderMutations>>,
    /// The stream's record as it was when the filters were made, for values with operators.
    info: Option<Box<StreamInfo>>,
}

impl HeaderMutationFilter {
    /// The filter for one stream: `routes` are its per-route mutations, the most specific
    /// first.
    pub fn new(
        config: &HeaderMutation,
        mut routes: Vec<Arc<HeaderMutations>>,
        info: Option<&StreamInfo>,
    ) -> Self {
        if config.most_specific_wins {
            routes.reverse();
        }
        let mut all = Vec::with_capacity(routes.len() + 1);
        all.push(config.mutations.clone());
        all.extend(routes);
        let info = info
            .filter(|_| all.iter().any(|m| m.formats()))
            .map(|i| Box::new(i.clone()));
        HeaderMutationFilter { all, info }
    }
}

/// Makes `steps` on `headers`; `render` renders a value with operators.
pub(crate) fn apply(
    steps: &[HeaderMutationStep],
    headers: &mut HeaderMap,
    render: &dyn Fn(&crate::access_log::Format, &HeaderMap) -> String,
) {
    for s in steps {
        match s {
            HeaderMutationStep::Append(p) => p.apply_with(headers, render),
            HeaderMutationStep::Remove(n) => {
                headers.remove(n);
            }
            HeaderMutationStep::RemoveOnMatch(m) => {
                let names: Vec<http::HeaderName> = headers
                    .keys()
                    .filter(|k| m.matches(k.as_str()))
                    .cloned()
                    .collect();
                for n in names {
                    headers.remove(&n);
                }
            }
        }
    }
}

impl HttpFilter for HeaderMutationFilter {
    fn decode_headers(
        &mut self,
        head: &mut http::request::Parts,
        _end_stream: bool,
    ) -> HeadersStatus {
        let info = self.info.as_deref();
        let render = |f: &crate::access_log::Format, h: &HeaderMap| {
            info.map_or_else(String::new, |i| {
                crate::access_log::header_value(f, i, Some(h), None)
            })
        };
        for m in &self.all {
            apply(&m.request, &mut head.headers, &render);
        }
        HeadersStatus::Continue
    }

    fn encode_headers(
        &mut self,
        head: &mut http::response::Parts,
        _end_stream: bool,
    ) -> HeadersStatus {
        // The record learns the response's code.
        if let Some(i) = self.info.as_mut() {
            i.response_code = Some(head.status.as_u16());
        }
        let info = self.info.as_deref();
        let render = |f: &crate::access_log::Format, h: &HeaderMap| {
            info.map_or_else(String::new, |i| {
                crate::access_log::header_value(f, i, None, Some(h))
            })
        };
        for m in &self.all {
            apply(&m.response, &mut head.headers, &render);
        }
        HeadersStatus::Continue
    }
}
