//! The admin interface: plain GET/POST plus `/stats` as a map.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::client::{self, Resp};

/// A client for one proxy's admin port.
#[derive(Debug, Clone, Copy)]
pub struct Admin {
    port: u16,
}

impl Admin {
    /// Admin on 127.0.0.1:`port`.
    pub fn new(port: u16) -> Admin {
        Admin { port }
    }

    /// `method path` with an empty body; errors are returned, not panicked.
    pub async fn try_request(&self, method: &str, path: &str) -> Result<Resp, String> {
        let addr = format!("127.0.0.1:{}", self.port);
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.as_str())
            .body(bytes::Bytes::new())
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(5), client::http1_once(&addr, req))
            .await
            .map_err(|_| format!("admin {method} {path}: no answer within 5 s"))?
    }

    /// `GET path`, errors returned.
    pub async fn try_get(&self, path: &str) -> Result<Resp, String> {
        self.try_request("GET", path).await
    }

    /// `GET path`; panics on transport errors.
    pub async fn get(&self, path: &str) -> Resp {
        self.try_get(path)
            .await
            .unwrap_or_else(|e| panic!("admin GET {path}: {e}"))
    }

    /// `POST path`; panics on transport errors.
    pub async fn post(&self, path: &str) -> Resp {
        self.try_request("POST", path)
            .await
            .unwrap_or_else(|e| panic!("admin POST {path}: {e}"))
    }

    /// `/clusters`' field `key` of the host at 127.0.0.1:`port` in `cluster` ("?" when the
    /// cluster has no such host).
    pub async fn host_field(&self, cluster: &str, port: u16, key: &str) -> String {
        let text = self.get("/clusters").await.text();
        let prefix = format!("{cluster}::127.0.0.1:{port}::{key}::");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or("?")
            .to_string()
    }

    /// Waits (up to 5 s) until [`Admin::host_field`] is `want`.
    pub async fn wait_host_field(&self, cluster: &str, port: u16, key: &str, want: &str) {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.host_field(cluster, port, key).await;
            if got == want {
                return;
            }
            assert!(
                Instant::now() < until,
                "{cluster} {port} {key}: {got:?}, waiting for {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET /stats` parsed into `name -> value` (the text after the first `": "`).
    pub async fn stats(&self) -> BTreeMap<String, String> {
        let r = self.get("/stats").await;
        assert_eq!(r.status, 200, "GET /stats: {}", r.text());
        parse_stats(&r.text())
    }

    /// The stats whose names contain `part`, in name order.
    pub async fn stats_containing(&self, part: &str) -> Vec<(String, String)> {
        self.stats()
            .await
            .into_iter()
            .filter(|(k, _)| k.contains(part))
            .collect()
    }

    /// One counter or gauge from `/stats`, if present and numeric.
    pub async fn stat(&self, name: &str) -> Option<u64> {
        self.stats()
            .await
            .get(name)
            .and_then(|v| v.trim().parse().ok())
    }

    /// One counter or gauge; panics with the matching names when it is absent.
    pub async fn counter(&self, name: &str) -> u64 {
        let stats = self.stats().await;
        match stats.get(name).and_then(|v| v.trim().parse().ok()) {
            Some(v) => v,
            None => panic!(
                "stat `{name}` not found in /stats; stats with a common prefix:\n{}",
                similar(&stats, name)
            ),
        }
    }

    /// Waits until the stat `name` satisfies `pred` (stats can lag a request by a flush).
    pub async fn wait_stat(&self, name: &str, limit: Duration, pred: impl Fn(u64) -> bool) -> u64 {
        let deadline = Instant::now() + limit;
        loop {
            let stats = self.stats().await;
            let value = stats.get(name).and_then(|v| v.trim().parse::<u64>().ok());
            if let Some(v) = value {
                if pred(v) {
                    return v;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "stat `{name}` = {value:?} did not reach the expected value within {limit:?}; \
                     related stats:\n{}",
                    similar(&stats, name)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn similar(stats: &BTreeMap<String, String>, name: &str) -> String {
    let prefix: String = name.split('.').take(2).collect::<Vec<_>>().join(".");
    stats
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(k, v)| format!("  {k}: {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Parses Envoy's `/stats` text format (`name: value` lines).
pub fn parse_stats(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
