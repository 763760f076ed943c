//! The test control plane (`src/bin/xds-control-plane.rs`) as a test drives it: a separate
//! process serving ADS, state of the world and delta, over TCP and a Unix socket, and REST
//! over HTTP/1.1; commands on
//! its stdin, and every request and response it sees collected from its stdout.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// Type URLs.
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// `Cluster`.
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// `RouteConfiguration`.
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// `ClusterLoadAssignment`.
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// `Runtime` (RTDS).
pub const RUNTIME: &str = "type.googleapis.com/envoy.service.runtime.v3.Runtime";

/// A running control plane.
pub struct ControlPlane {
    child: Child,
    stdin: ChildStdin,
    events: Arc<Mutex<Vec<Value>>>,
    /// Its TCP port.
    pub port: u16,
    /// Its Unix socket.
    pub uds: PathBuf,
    /// Its REST (HTTP/1.1) port.
    pub rest_port: u16,
}

/// How a proxy answered one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The nonce answered.
    pub nonce: String,
    /// `error_detail.message`, for a NACK.
    pub error: Option<String>,
    /// `error_detail.code`, for a NACK.
    pub code: Option<i64>,
    /// `version_info` of the answer (state of the world): the version now in force.
    pub version: String,
}

impl ControlPlane {
    /// Starts the control plane binary `bin` on `127.0.0.1:tcp_port` (0: any) and `uds`.
    pub async fn start(bin: &str, tcp_port: u16, uds: &Path) -> ControlPlane {
        ControlPlane::start_with(bin, tcp_port, uds, &[]).await
    }

    /// [`Self::start`] with more arguments (`--tls-cert` …).
    pub async fn start_with(bin: &str, tcp_port: u16, uds: &Path, more: &[&str]) -> ControlPlane {
        let mut child = Command::new(bin)
            .args(["--tcp", &format!("127.0.0.1:{tcp_port}")])
            .args(more)
            .args(["--uds", &uds.display().to_string()])
            .args(["--rest", "127.0.0.1:0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let events: Arc<Mutex<Vec<Value>>> = Arc::default();
        let sink = events.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap_or_else(|e| e.into_inner()).push(v);
                }
            }
        });
        let mut cp = ControlPlane {
            child,
            stdin,
            events,
            port: 0,
            uds: uds.to_path_buf(),
            rest_port: 0,
        };
        let ready = cp
            .wait(Duration::from_secs(10), |e| e["event"] == "ready")
            .await;
        cp.port = ready["port"].as_u64().unwrap_or(0) as u16;
        cp.rest_port = ready["rest_port"].as_u64().unwrap_or(0) as u16;
        cp
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Value> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits for an event matching `pred` (among all so far) and returns the first.
    pub async fn wait(&self, limit: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return e;
            }
            if Instant::now() > deadline {
                panic!(
                    "control plane: no matching event within {limit:?}; events:\n{}",
                    self.events()
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sets node `node`'s resources of `type_url` (a YAML list) at `version`.
    pub async fn set(&mut self, node: &str, type_url: &str, version: &str, yaml: &str) {
        let cmd = serde_json::json!({
            "cmd": "set", "node": node, "type_url": type_url, "version": version, "yaml": yaml,
        });
        let seen = self.events().len();
        self.stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .expect("control plane stdin");
        self.stdin.flush().await.expect("flush");
        let events = self.events.clone();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let done = events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .skip(seen)
                .find(|e| e["event"] == "set" || e["event"] == "error")
                .cloned();
            match done {
                Some(e) if e["event"] == "error" => panic!("control plane: {e}"),
                Some(_) => return,
                None if Instant::now() > deadline => panic!("control plane: set not applied"),
                None => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// How `node` answered the last response of `type_url` at `version`: waits for that
    /// response, then for the request that carries its nonce.
    pub async fn answer(&self, node: &str, type_url: &str, version: &str) -> Answer {
        let limit = Duration::from_secs(10);
        let deadline = Instant::now() + limit;
        loop {
            let events = self.events();
            let sent = events.iter().rev().find(|e| {
                e["event"] == "response"
                    && e["node"] == node
                    && e["type_url"] == type_url
                    && e["version"] == version
            });
            if let Some(sent) = sent {
                let nonce = sent["nonce"].as_str().unwrap_or_default().to_string();
                if let Some(r) = events.iter().find(|e| {
                    e["event"] == "request" && e["node"] == node && e["nonce"] == nonce.as_str()
                }) {
                    return Answer {
                        nonce,
                        error: r["error"].as_str().map(str::to_string),
                        code: r["error_code"].as_i64(),
                        version: r["version"].as_str().unwrap_or_default().to_string(),
                    };
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "control plane: no answer from {node} to {type_url} version {version}; events:\n{}",
                    events
                        .iter()
                        .filter(|e| e["node"] == node)
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The requests `node` sent, in order.
    pub fn requests(&self, node: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == "request" && e["node"] == node)
            .collect()
    }

    /// Makes REST answers carry `status` and no body (0: answer normally again).
    pub async fn rest_status(&mut self, status: u16) {
        let cmd = serde_json::json!({"cmd": "rest_status", "status": status});
        self.stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .expect("control plane stdin");
        self.stdin.flush().await.expect("flush");
    }

    /// Stops the control plane (its streams close).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
    }
}
