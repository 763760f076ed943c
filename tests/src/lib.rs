//! Harness for skiff's end-to-end tests.
//!
//! Everything here runs real processes on loopback: the `skiff` binary (or Envoy 1.40 as the
//! oracle), upstreams written with tokio + hyper/h2, and real clients (hyper, curl, nghttp, h2load).
//!
//! Programs are found through environment variables:
//! - `SKIFF_BIN`: the proxy under test (default `<workspace>/target/debug/skiff`).
//! - `ENVOY_BIN`: Envoy 1.40 (default `<workspace>/.venv/bin/envoy`).
//! - `SKIFF_TESTS_PROXY=envoy`: run the topic suites against Envoy instead of skiff, to check that
//!   an expectation really is Envoy's behaviour. Tests of skiff-only behaviour then say so and stop.
#![forbid(unsafe_code)]

pub mod admin;
pub mod cgroup;
pub mod client;
pub mod config;
pub mod diff;
pub mod dns;
pub mod fixture;
pub mod flow;
pub mod h2raw;
pub mod netns;
pub mod peer;
pub mod pki;
pub mod ports;
pub mod proxy;
pub mod side_by_side;
pub mod upstream;
pub mod xds;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

pub use admin::Admin;
pub use client::{RawReply, Resp};
pub use fixture::HttpFixture;
pub use ports::{free_port, free_port_v6, refused_port, Blackhole};
pub use proxy::{Envoy, Kind, ProxyProcess, Skiff};

/// The default time limit of one test.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs a test body under [`TEST_TIMEOUT`], so a hung proxy fails the test instead of the run.
pub async fn run<F: Future<Output = ()>>(body: F) {
    run_for(TEST_TIMEOUT, body).await
}

/// Runs a test body under the given time limit.
pub async fn run_for<F: Future<Output = ()>>(limit: Duration, body: F) {
    if tokio::time::timeout(limit, body).await.is_err() {
        panic!("test did not finish within {limit:?}");
    }
}

/// The workspace root (the parent of this package).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The directory of this package (for configs kept under `tests/configs`).
pub fn package_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Panics with a clear message when an external program is not on `PATH`.
pub fn require_program(name: &str, how_to_get: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("required program `{name}` is not on PATH: {how_to_get}");
}

/// The lines of a log file once it has `at_least` of them (or after 5 s), sorted: streams end,
/// and are logged, in their own order.
pub async fn sorted_log_lines(path: &std::path::Path, at_least: usize) -> Vec<String> {
    let mut text = String::new();
    for _ in 0..50 {
        text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= at_least {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

/// Writes `content` to `dir/name` the way Envoy expects a file-based resource update: written
/// elsewhere first, then moved into place.
pub fn put_file(dir: &std::path::Path, name: &str, content: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, content).expect("write");
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
}

/// A unique scratch directory for one proxy or client run (removed by the owner).
pub fn scratch_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("skiff-tests-{}-{}-{tag}", std::process::id(), n));
    // A directory of this name can only be left from an earlier process with the same pid.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch directory");
    dir
}

/// True when `s` looks like a UUID (8-4-4-4-12 hex digits).
pub fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    parts.len() == 5
        && parts
            .iter()
            .zip(lens)
            .all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// True when `s` is a version-4 UUID, as Envoy generates for `x-request-id`.
pub fn is_uuid_v4(s: &str) -> bool {
    is_uuid(s) && s.as_bytes()[14] == b'4' && matches!(s.as_bytes()[19], b'8' | b'9' | b'a' | b'b')
}
