//! Unary gRPC calls of skiff's own (a rate limit service's, an authorization service's), sent
//! as Envoy's `envoy_grpc` client sends them: a request through the worker's pools to the
//! service's cluster, one length-prefixed message each way, the call's status in
//! `grpc-status`.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;

use crate::upstream::Cluster;
use crate::worker::Worker;

/// `message` in a gRPC frame: uncompressed, its length before it.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(5 + message.len());
    body.push(0);
    body.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    body.extend_from_slice(message);
    body
}

/// The message of a gRPC body that is one uncompressed frame, its whole length.
pub fn unframe(data: &[u8]) -> Option<&[u8]> {
    let (&[flag, a, b, c, d], message) = data.split_first_chunk::<5>()?;
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    (flag == 0 && message.len() == len).then_some(message)
}

/// Calls `method` (`/package.Service/Method`) of the service behind `cluster` with `message`
/// and the service's `metadata` (its `initial_metadata` headers), within `timeout` (sent as
/// `grpc-timeout` too); the answer's message, or why there is none
/// (no answer, an HTTP status other than 200, a `grpc-status` other than 0, a body that is not
/// one frame).
pub async fn unary(
    worker: &Rc<Worker>,
    cluster: &Rc<Cluster>,
    (authority, metadata): (&str, &[(http::HeaderName, http::HeaderValue)]),
    method: &str,
    message: &[u8],
    timeout: Option<Duration>,
) -> Result<Bytes, String> {
    let mut req = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("http://{authority}{method}"))
        .version(http::Version::HTTP_2)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers");
    if let Some(t) = timeout {
        req = req.header("grpc-timeout", format!("{}m", t.as_millis()));
    }
    for (name, value) in metadata {
        req = req.header(name, value);
    }
    let (head, ()) = req.body(()).map_err(|e| e.to_string())?.into_parts();
    let (parts, data, trailers) = crate::http::filters::router::own_request(
        worker,
        cluster,
        head,
        Bytes::from(frame(message)),
        timeout,
    )
    .await?;
    // grpc-status in the trailers, or in the head of a trailers-only answer.
    let status = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| parts.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok());
    if parts.status != http::StatusCode::OK || status != Some(0) {
        return Err(format!("HTTP {}, grpc-status {status:?}", parts.status));
    }
    let message = unframe(&data).ok_or("the answer is not one uncompressed message")?;
    Ok(data.slice_ref(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_hold_one_whole_message() {
        let f = frame(b"abc");
        assert_eq!(f, [0, 0, 0, 0, 3, b'a', b'b', b'c']);
        assert_eq!(unframe(&f), Some(&b"abc"[..]));
        assert_eq!(unframe(&f[..7]), None);
        assert_eq!(unframe(&[&f[..], b"x"].concat()), None);
        assert_eq!(unframe(&[1, 0, 0, 0, 0]), None);
        assert_eq!(unframe(&[0, 0, 0, 0, 0]), Some(&[][..]));
        assert_eq!(unframe(&[]), None);
    }
}
