//! `envoy.filters.http.basic_auth`: a request must carry the `Basic` credentials of one of the
//! filter's users (or its route's `BasicAuthPerRoute` users); otherwise it is answered 401 with
//! `www-authenticate: Basic realm="<the request's URL>"`, as Envoy answers. The user's name may
//! go upstream in `forward_username_header`. Stats `http.<prefix>.basic_auth.{allowed,denied}`.

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};

use crate::http::filter::{HeadersStatus, HttpFilter};
use crate::http::local_reply::LocalReply;
use crate::stats::{Counter, Shard};
use skiff_config::model::{BasicAuth, BasicAuthUsers};

#[derive(Debug)]
struct Stats {
    allowed: Counter,
    denied: Counter,
}

/// The filter of one connection manager on one worker.
#[derive(Debug)]
pub struct Factory {
    config: Arc<BasicAuth>,
    stats: Rc<Stats>,
}

impl Factory {
    /// The filter of an HCM whose stat prefix is `stat_prefix`.
    pub fn new(config: Arc<BasicAuth>, shard: &Arc<Shard>, stat_prefix: &str) -> Self {
        let c = |n: &str| shard.counter(&format!("http.{stat_prefix}.basic_auth.{n}"));
        Factory {
            config,
            stats: Rc::new(Stats {
                allowed: c("allowed"),
                denied: c("denied"),
            }),
        }
    }

    /// The filter for one stream, with its route's users if it has them.
    pub fn filter(&self, route: Option<&Arc<BasicAuthUsers>>) -> BasicAuthFilter {
        BasicAuthFilter {
            config: self.config.clone(),
            users: route.cloned().unwrap_or_else(|| self.config.users.clone()),
            stats: self.stats.clone(),
        }
    }
}

/// The filter on one stream.
pub struct BasicAuthFilter {
    config: Arc<BasicAuth>,
    users: Arc<BasicAuthUsers>,
    stats: Rc<Stats>,
}

/// The request's URL as Envoy rebuilds it (`x-forwarded-proto`, the host, the original path).
fn original_uri(head: &http::request::Parts) -> String {
    let header = |n: &str| head.headers.get(n).and_then(|v| v.to_str().ok());
    let scheme = header("x-forwarded-proto").unwrap_or("");
    let host = head
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| header("host"))
        .unwrap_or("");
    let path = header("x-envoy-original-path")
        .map(str::to_string)
        .unwrap_or_else(|| {
            head.uri
                .path_and_query()
                .map_or("", |p| p.as_str())
                .to_string()
        });
    format!("{scheme}://{host}{path}")
}

impl HttpFilter for BasicAuthFilter {
    fn decode_headers(
        &mut self,
        head: &mut http::request::Parts,
        _end_stream: bool,
    ) -> HeadersStatus {
        let value = head
            .headers
            .get(&self.config.authentication_header)
            .map(HeaderValue::as_bytes);
        match self.users.authenticate(value) {
            Ok(user) => {
                if let Some(h) = &self.config.forward_username_header {
                    if let Ok(v) = HeaderValue::from_str(&user) {
                        head.headers.insert(h.clone(), v);
                    }
                }
                self.stats.allowed.inc();
                HeadersStatus::Continue
            }
            Err(why) => {
                self.stats.denied.inc();
                let realm = format!("Basic realm=\"{}\"", original_uri(head));
                HeadersStatus::LocalReply(LocalReply {
                    status: StatusCode::UNAUTHORIZED,
                    body: Bytes::from_static(why.body().as_bytes()),
                    headers: HeaderValue::from_str(&realm)
                        .map(|v| vec![(http::header::WWW_AUTHENTICATE, v)])
                        .unwrap_or_default(),
                    mutations: Vec::new(),
                    flag: None,
                    details: why.details(),
                    close: false,
                    grpc_status: None,
                })
            }
        }
    }
}
