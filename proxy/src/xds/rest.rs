//! REST xDS (`api_type: REST`), as Envoy's HTTP subscriptions poll: a JSON
//! `DiscoveryRequest` POSTed to `/v3/discovery:<type>` on the source's cluster, with `Host`
//! the cluster's name, answered by a JSON `DiscoveryResponse`.
//!
//! As in Envoy:
//! - each request carries the node and the last version accepted; a rejected answer changes
//!   neither (REST has no `error_detail`);
//! - `304` changes nothing; any status other than `200`, a failed connection or a request
//!   that outlasts `request_timeout` counts `update_failure`;
//! - the next request goes out `refresh_delay` after an answer, plus up to as long again at
//!   random; a change of the names asked for waits for it;
//! - every request counts `update_attempt` (those whose answer reaches the store are counted
//!   there, with the answer's verdict).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use tokio::sync::mpsc;

use super::{verdict, Conn, Interest, StreamKey, Update};
use crate::config::model::RestPolling;
use crate::config_store::type_url;

/// The largest answer taken (an answer with every endpoint of a large mesh is tens of MB).
const MAX_BODY: usize = 256 << 20;

/// The REST path of a type, from its discovery service's `google.api.http` rule.
fn path_of(type_url: &str) -> &'static str {
    match type_url {
        type_url::LISTENER => "/v3/discovery:listeners",
        type_url::CLUSTER => "/v3/discovery:clusters",
        type_url::ROUTE => "/v3/discovery:routes",
        type_url::SCOPED_ROUTE => "/v3/discovery:scoped-routes",
        type_url::ENDPOINT => "/v3/discovery:endpoints",
        type_url::RUNTIME => "/v3/discovery:runtime",
        _ => "/v3/discovery:secrets",
    }
}

/// An HTTP/1.1 connection to the server, kept between polls.
type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(peer: &super::Peer) -> Result<Sender, String> {
    let io = super::dial::dial(peer, b"http/1.1").await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One poll: the answer's status and body.
async fn fetch(
    sender: &mut Option<Sender>,
    peer: &super::Peer,
    host: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(http::StatusCode, Bytes), String> {
    let kept = match sender.take() {
        Some(mut s) => s.ready().await.is_ok().then_some(s),
        None => None,
    };
    let mut s = match kept {
        Some(s) => s,
        None => connect(peer).await?,
    };
    let req = http::Request::post(path)
        .header(http::header::HOST, host)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = s.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    *sender = Some(s);
    Ok((status, body))
}

/// The JSON request: the node as the bootstrap gives it, the type, the names asked for
/// (sorted; none for a wildcard type) and the last version accepted.
fn request_body(conn: &Conn, type_url: &str, names: &[String], version: &str) -> Vec<u8> {
    let mut req = serde_json::Map::new();
    if !version.is_empty() {
        req.insert("version_info".into(), version.into());
    }
    req.insert("node".into(), conn.node_json.clone());
    if !names.is_empty() {
        req.insert("resource_names".into(), names.into());
    }
    req.insert("type_url".into(), type_url.into());
    serde_json::to_vec(&serde_json::Value::Object(req)).unwrap_or_default()
}

/// Polls for the one type of `conn`'s key until the store drops the stream.
pub(super) async fn run(
    conn: Conn,
    polling: RestPolling,
    mut commands: mpsc::UnboundedReceiver<(String, Interest)>,
) {
    let StreamKey::Api(_, type_url, _) = conn.key.clone() else {
        return;
    };
    let p = conn.stats_prefix.clone();
    let attempts = conn.main.counter(&format!("{p}update_attempt"));
    let failures = conn.main.counter(&format!("{p}update_failure"));
    // Nothing goes out before the store says what it wants.
    let mut names = loop {
        match commands.recv().await {
            Some((t, i)) if t == type_url => break super::names(&Some(i)),
            Some(_) => {}
            None => return,
        }
    };
    let mut version = String::new();
    let mut sender: Option<Sender> = None;
    let host = conn.source.cluster.clone();
    let path = path_of(type_url);
    loop {
        let body = request_body(&conn, type_url, &names, &version);
        let answer = tokio::time::timeout(
            polling.request_timeout,
            fetch(&mut sender, &conn.peer, &host, path, body),
        )
        .await
        .unwrap_or_else(|_| Err("request timeout".into()));
        match answer {
            Ok((http::StatusCode::OK, body)) => {
                let text = String::from_utf8_lossy(&body).into_owned();
                let answered = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v.get("version_info")?.as_str().map(str::to_string))
                    .unwrap_or_default();
                match verdict(&conn, type_url, Update::Json(text)).await {
                    Some(Ok(())) => version = answered,
                    Some(Err(e)) => {
                        tracing::warn!(path, error = %e, "REST config rejected");
                    }
                    None => return,
                }
            }
            Ok((http::StatusCode::NOT_MODIFIED, _)) => attempts.inc(),
            Ok((status, _)) => {
                attempts.inc();
                failures.inc();
                sender = None;
                tracing::warn!(path, %status, "REST update failed");
            }
            Err(e) => {
                attempts.inc();
                failures.inc();
                sender = None;
                tracing::warn!(path, error = %e, "REST update failed");
            }
        }
        let delay = polling.refresh_delay;
        let jitter = fastrand::u64(0..delay.as_millis().max(1) as u64);
        let sleep = tokio::time::sleep(delay + Duration::from_millis(jitter));
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                cmd = commands.recv() => match cmd {
                    Some((t, i)) if t == type_url => names = super::names(&Some(i)),
                    Some(_) => {}
                    None => return,
                },
            }
        }
    }
}
