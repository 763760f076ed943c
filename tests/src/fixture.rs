//! The everyday fixture: one echo upstream behind the proxy under test.

use serde_json::Value;

use crate::config::{self, to_yaml};
use crate::proxy::{start_under_test, ProxyProcess};
use crate::upstream::{EchoOptions, EchoUpstream};

/// The proxy under test with [`config::simple_http`] in front of one echo upstream.
pub struct HttpFixture {
    /// The proxy.
    pub proxy: ProxyProcess,
    /// The echo upstream (cluster `backend`).
    pub up: EchoUpstream,
    /// The HTTP listener's port.
    pub port: u16,
}

impl HttpFixture {
    /// Default echo upstream, default config.
    pub async fn start() -> HttpFixture {
        Self::with(EchoOptions::named("u1"), |_| {}, &[]).await
    }

    /// `opts` for the upstream, `edit` applied to the bootstrap, `args` for the proxy.
    pub async fn with(
        opts: EchoOptions,
        edit: impl FnOnce(&mut Value),
        args: &[&str],
    ) -> HttpFixture {
        let up = EchoUpstream::with_options(opts).await;
        let (admin, port) = (crate::free_port(), crate::free_port());
        let mut v = config::simple_http(admin, port, &[up.port()]);
        edit(&mut v);
        let proxy = start_under_test(&to_yaml(&v), args).await;
        HttpFixture { proxy, up, port }
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}
