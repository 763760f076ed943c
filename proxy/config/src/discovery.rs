//! Discovery responses from files, as Envoy's filesystem subscriptions read them: a YAML or JSON
//! `DiscoveryResponse` whose `resources` are `@type` Anys. Each resource is checked against the
//! supported-field table, as a bootstrap is. Fields the protos do not know are, as in Envoy's
//! dynamic resources, dropped with a warning and counted (`server.dynamic_unknown_fields`),
//! where a bootstrap refuses them.
//!
//! Decoding text needs Envoy's whole descriptor set, so the serving process has a helper
//! process of its own do it ([`Decoder`]) and receives binary protobuf.

use std::collections::BTreeMap;
use std::path::Path;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use prost_reflect::{DynamicMessage, ReflectMessage};

use super::{proto, supported, ChildError, ConfigError};

/// The message name of a discovery response.
const DISCOVERY_RESPONSE: &str = "envoy.service.discovery.v3.DiscoveryResponse";

/// A decoded discovery file.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    /// `version_info`.
    pub version_info: String,
    /// `resources`, binary.
    pub resources: Vec<Any>,
    /// Each resource in Envoy's JSON form, for `/config_dump`.
    pub dumps: Vec<serde_json::Value>,
    /// Paths of fields the protos do not know, dropped.
    pub unknown_fields: Vec<String>,
    /// Resources refused one by one (by index), for responses from an xDS server: Envoy
    /// applies the good resources of a listener or cluster response and NACKs the others.
    /// Their dumps are `null`.
    pub errors: BTreeMap<usize, ConfigError>,
    /// Each resource's own version (delta xDS); empty: `version_info` for all.
    pub versions: Vec<String>,
}

impl Discovery {
    /// The version resource `i` came with.
    pub fn version_of(&self, i: usize) -> &str {
        self.versions.get(i).unwrap_or(&self.version_info)
    }
}

/// Why a file gave no update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileError {
    /// The file could not be read or parsed as a discovery response (`update_failure`, as
    /// Envoy counts a file it cannot load).
    Read(String),
    /// The file's content is refused (`update_rejected`).
    Rejected(ConfigError),
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileError::Read(e) => write!(f, "{e}"),
            FileError::Rejected(e) => write!(f, "{e}"),
        }
    }
}

/// Reads and decodes a discovery file in this process.
pub fn decode_file(path: &Path) -> Result<Discovery, FileError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| FileError::Read(format!("cannot read '{}': {e}", path.display())))?;
    decode_text(&text)
}

/// Decodes the text of a discovery response: text that is not one is a failure; resources
/// with fields skiff does not honour are rejected.
pub fn decode_text(text: &str) -> Result<Discovery, FileError> {
    let failure = |e: ConfigError| FileError::Read(e.to_string());
    let desc = proto::message(DISCOVERY_RESPONSE).map_err(failure)?;
    let (msg, unknown_fields) = proto::decode_text_lenient(text, desc).map_err(failure)?;
    let response: DiscoveryResponse = proto::to_typed(&msg).map_err(failure)?;
    check_resources(response, unknown_fields).map_err(FileError::Rejected)
}

fn check_resources(
    response: DiscoveryResponse,
    unknown_fields: Vec<String>,
) -> Result<Discovery, ConfigError> {
    let mut dumps = Vec::new();
    // Text has had its unknown fields dropped already (they are in `unknown_fields`).
    let mut none = Vec::new();
    let mut resources = response.resources;
    for (i, any) in resources.iter_mut().enumerate() {
        dumps.push(dump_resource(any, &format!("resources[{i}]"), &mut none)?);
    }
    Ok(Discovery {
        version_info: response.version_info,
        resources,
        dumps,
        unknown_fields,
        errors: BTreeMap::new(),
        versions: Vec::new(),
    })
}

/// Checks the resources of a binary response from an xDS server one by one against the
/// supported-field table and dumps each in Envoy's JSON form; a resource that does not decode
/// or sets a field skiff does not honour is refused alone (in [`Discovery::errors`]).
pub fn check_binary(response: DiscoveryResponse) -> Discovery {
    let mut dumps = Vec::new();
    let mut errors = BTreeMap::new();
    let mut unknown_fields = Vec::new();
    let mut resources = response.resources;
    for (i, any) in resources.iter_mut().enumerate() {
        let path = format!("resources[{i}]");
        match dump_resource(any, &path, &mut unknown_fields) {
            Ok(d) => dumps.push(d),
            Err(e) => {
                errors.insert(i, e);
                dumps.push(serde_json::Value::Null);
            }
        }
    }
    Discovery {
        version_info: response.version_info,
        resources,
        dumps,
        unknown_fields,
        errors,
        versions: Vec::new(),
    }
}

fn dump_resource(
    any: &mut Any,
    path: &str,
    unknown: &mut Vec<String>,
) -> Result<serde_json::Value, ConfigError> {
    let desc = proto::pool()
        .get_message_by_name(proto::type_name(&any.type_url))
        .ok_or_else(|| ConfigError::new(path, format!("unknown @type '{}'", any.type_url)))?;
    let mut inner = DynamicMessage::decode(desc, any.value.as_slice())
        .map_err(|e| ConfigError::new(path, format!("cannot decode: {e}")))?;
    unknown_fields(&inner, path, unknown);
    // Extensions wrapped in a TypedStruct (Istio sends its own so) become the message they
    // carry, in the resource that is translated too.
    if contains(&any.value, b"TypedStruct") {
        if let Some((rewritten, dropped)) = proto::without_typed_structs(&inner)
            .map_err(|e| ConfigError::new(path, e.to_string()))?
        {
            any.value = rewritten.encode_to_vec();
            inner = rewritten;
            unknown.extend(dropped.into_iter().map(|p| format!("{path}.{p}")));
        }
    }
    supported::check_at(&inner, path)?;
    let mut dump = super::to_json(&inner);
    if let Some(o) = dump.as_object_mut() {
        o.insert(
            "@type".into(),
            serde_json::Value::String(format!(
                "type.googleapis.com/{}",
                inner.descriptor().full_name()
            )),
        );
    }
    Ok(dump)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The fields of a binary message (and the messages inside it) that the protos do not know,
/// by path and field number: as in Envoy's dynamic resources they are dropped and counted.
fn unknown_fields(msg: &DynamicMessage, path: &str, out: &mut Vec<String>) {
    use prost_reflect::Value;
    for f in msg.unknown_fields() {
        out.push(format!("{path}.#{}", f.number()));
    }
    for (field, value) in msg.fields() {
        let p = format!("{path}.{}", field.name());
        match value {
            Value::Message(m) => unknown_fields(m, &p, out),
            Value::List(items) => {
                for (i, v) in items.iter().enumerate() {
                    if let Value::Message(m) = v {
                        unknown_fields(m, &format!("{p}[{i}]"), out);
                    }
                }
            }
            Value::Map(entries) => {
                for (k, v) in entries {
                    if let Value::Message(m) = v {
                        unknown_fields(m, &format!("{p}[{k:?}]"), out);
                    }
                }
            }
            _ => {}
        }
    }
}

/// What follows the binary response in a decoded frame: the dumps and the unknown fields.
#[derive(serde::Serialize, serde::Deserialize)]
struct Extra {
    dumps: Vec<serde_json::Value>,
    unknown_fields: Vec<String>,
    #[serde(default)]
    errors: Vec<(usize, ChildError)>,
}

/// The line that announces a binary `DiscoveryResponse` to the decoder: this prefix, its
/// length, a newline, then the bytes.
const BINARY_LINE: &str = "\0binary ";
/// The same for a JSON `DiscoveryResponse` (a REST xDS server's answer).
const JSON_LINE: &str = "\0json ";

/// Decodes a REST xDS server's JSON `DiscoveryResponse`: text that is not one is refused as a
/// whole (Envoy counts it `update_rejected`); its resources are then checked one by one, as
/// those of a binary response ([`check_binary`]).
pub fn decode_json(text: &str) -> Result<Discovery, FileError> {
    let refuse = |e: ConfigError| FileError::Rejected(e);
    let desc = proto::message(DISCOVERY_RESPONSE).map_err(refuse)?;
    let (msg, unknown_fields) = proto::decode_text_lenient(text, desc).map_err(refuse)?;
    let response: DiscoveryResponse = proto::to_typed(&msg).map_err(refuse)?;
    let mut d = check_binary(response);
    d.unknown_fields.extend(unknown_fields);
    Ok(d)
}

/// The hidden flag with which skiff runs itself as a decoder: it reads one path per line on
/// stdin and answers each with a frame on stdout (see [`serve_decoder`]).
pub const DECODER_FLAG: &str = "--discovery-decoder";

/// A decoder frame: kind byte (0 decoded, 1 failure, 2 rejected), length, payload.
fn frame(kind: u8, payload: &[u8], out: &mut impl std::io::Write) -> std::io::Result<()> {
    out.write_all(&[kind])?;
    out.write_all(&(payload.len() as u64).to_le_bytes())?;
    out.write_all(payload)?;
    out.flush()
}

/// The decoder process: answers each path read from `input` with a frame on `out`, until
/// `input` ends. It holds Envoy's descriptor set so that the serving process need not.
pub fn serve_decoder(
    mut input: impl std::io::BufRead,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let head = line.trim_end();
        let decoded = if let Some(len) = head.strip_prefix(JSON_LINE) {
            let len: usize = len
                .parse()
                .map_err(|_| std::io::Error::other("decoder: bad length"))?;
            if len > MAX_FRAME {
                return Err(std::io::Error::other("decoder: frame too large"));
            }
            let mut buf = vec![0u8; len];
            input.read_exact(&mut buf)?;
            match String::from_utf8(buf) {
                Ok(text) => decode_json(&text),
                Err(_) => Err(FileError::Rejected(ConfigError::new(
                    "",
                    "the response is not UTF-8",
                ))),
            }
        } else {
            match head.strip_prefix(BINARY_LINE) {
                Some(len) => {
                    let len: usize = len
                        .parse()
                        .map_err(|_| std::io::Error::other("decoder: bad length"))?;
                    if len > MAX_FRAME {
                        return Err(std::io::Error::other("decoder: frame too large"));
                    }
                    let mut buf = vec![0u8; len];
                    input.read_exact(&mut buf)?;
                    match DiscoveryResponse::decode(buf.as_slice()) {
                        Ok(r) => Ok(check_binary(r)),
                        Err(e) => Err(FileError::Read(format!("cannot decode response: {e}"))),
                    }
                }
                None => decode_file(Path::new(line.trim_end())),
            }
        };
        match decoded {
            Ok(d) => {
                let pb = DiscoveryResponse {
                    version_info: d.version_info,
                    resources: d.resources,
                    ..Default::default()
                }
                .encode_to_vec();
                let extra = serde_json::to_vec(&Extra {
                    dumps: d.dumps,
                    unknown_fields: d.unknown_fields,
                    errors: d
                        .errors
                        .into_iter()
                        .map(|(i, e)| {
                            (
                                i,
                                ChildError {
                                    path: e.path,
                                    message: e.message,
                                },
                            )
                        })
                        .collect(),
                })
                .unwrap_or_default();
                let mut payload = Vec::with_capacity(8 + pb.len() + extra.len());
                payload.extend_from_slice(&(pb.len() as u64).to_le_bytes());
                payload.extend_from_slice(&pb);
                payload.extend_from_slice(&extra);
                frame(0, &payload, out)?;
            }
            Err(FileError::Read(m)) => frame(1, m.as_bytes(), out)?,
            Err(FileError::Rejected(e)) => {
                let err = ChildError {
                    path: e.path,
                    message: e.message,
                };
                frame(2, &serde_json::to_vec(&err).unwrap_or_default(), out)?;
            }
        }
    }
}

/// The largest frame either side of the decoder accepts.
const MAX_FRAME: usize = 1 << 30;

/// How long the decoder process may sit idle before it is stopped (its memory returned); the
/// next file starts it again.
const DECODER_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

struct Running {
    child: std::process::Child,
    input: std::process::ChildStdin,
    output: std::io::BufReader<std::process::ChildStdout>,
    last_used: std::time::Instant,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the decoder is asked.
enum Request<'a> {
    /// A discovery file.
    File(&'a Path),
    /// A binary `DiscoveryResponse` from an xDS server.
    Binary(&'a [u8]),
    /// A JSON `DiscoveryResponse` from a REST xDS server.
    Json(&'a str),
}

/// Decodes discovery files in a helper process of skiff's own, started on first use and
/// stopped after [`DECODER_IDLE`] without work, so that the serving process never holds
/// Envoy's descriptor set and a burst of updates pays for loading it once.
#[derive(Default)]
pub struct Decoder {
    running: Option<Running>,
    /// Decode in this process (an executable that is not skiff: a fuzzer, a tool).
    local: bool,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("running", &self.running.is_some())
            .finish()
    }
}

impl Decoder {
    /// Decodes `path`; falls back to this process when the helper cannot run.
    pub fn decode(&mut self, path: &Path) -> Result<Discovery, FileError> {
        self.run(Request::File(path))
    }

    /// Checks and dumps the resources of a binary response from an xDS server (see
    /// [`check_binary`]).
    pub fn check(&mut self, response: DiscoveryResponse) -> Discovery {
        let bytes = response.encode_to_vec();
        match self.run(Request::Binary(&bytes)) {
            Ok(d) => d,
            // The helper could not answer: check here rather than refuse the response.
            Err(_) => check_binary(response),
        }
    }

    /// Decodes and checks a REST xDS server's JSON response (see [`decode_json`]).
    pub fn check_json(&mut self, text: &str) -> Result<Discovery, FileError> {
        self.run(Request::Json(text))
    }

    fn run(&mut self, req: Request<'_>) -> Result<Discovery, FileError> {
        let local = |req: &Request<'_>| match req {
            Request::File(p) => decode_file(p),
            Request::Json(t) => decode_json(t),
            Request::Binary(b) => DiscoveryResponse::decode(*b)
                .map(check_binary)
                .map_err(|e| FileError::Read(format!("cannot decode response: {e}"))),
        };
        // A unit test's executable is not skiff: decode in the test's own process.
        if cfg!(test) || self.local {
            return local(&req);
        }
        if self
            .running
            .as_ref()
            .is_some_and(|r| r.last_used.elapsed() > DECODER_IDLE)
        {
            self.running = None;
        }
        // One retry: a helper that died (or was stopped) is started again.
        for _ in 0..2 {
            if self.running.is_none() {
                self.running = Self::spawn();
            }
            let Some(r) = self.running.as_mut() else {
                return local(&req);
            };
            r.last_used = std::time::Instant::now();
            match Self::ask(r, &req) {
                Ok(answer) => return answer,
                Err(e) => {
                    tracing::debug!(error = %e, "discovery decoder failed; starting it again");
                    self.running = None;
                }
            }
        }
        local(&req)
    }

    /// A decoder that works in this process, for executables that are not skiff.
    pub fn in_process() -> Self {
        Decoder {
            running: None,
            local: true,
        }
    }

    /// When the helper, if running, will have been idle long enough to stop.
    pub fn idle_deadline(&self) -> Option<std::time::Instant> {
        self.running.as_ref().map(|r| r.last_used + DECODER_IDLE)
    }

    /// Stops the helper if it has been idle long enough.
    pub fn stop_if_idle(&mut self) {
        if self
            .running
            .as_ref()
            .is_some_and(|r| r.last_used.elapsed() > DECODER_IDLE)
        {
            self.running = None;
        }
    }

    fn spawn() -> Option<Running> {
        use std::process::{Command, Stdio};
        let exe = std::env::current_exe().ok()?;
        let mut child = Command::new(exe)
            .arg(DECODER_FLAG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let input = child.stdin.take()?;
        let output = std::io::BufReader::new(child.stdout.take()?);
        Some(Running {
            child,
            input,
            output,
            last_used: std::time::Instant::now(),
        })
    }

    fn ask(r: &mut Running, req: &Request<'_>) -> std::io::Result<Result<Discovery, FileError>> {
        use std::io::{Read, Write};
        let bad = |what: &str| std::io::Error::other(format!("decoder: {what}"));
        match req {
            Request::File(path) => {
                let p = path
                    .to_str()
                    .filter(|p| !p.contains('\n') && !p.starts_with('\0'))
                    .ok_or_else(|| bad("path is not UTF-8 on one line"))?;
                r.input.write_all(format!("{p}\n").as_bytes())?;
            }
            Request::Binary(b) => {
                r.input
                    .write_all(format!("{BINARY_LINE}{}\n", b.len()).as_bytes())?;
                r.input.write_all(b)?;
            }
            Request::Json(t) => {
                r.input
                    .write_all(format!("{JSON_LINE}{}\n", t.len()).as_bytes())?;
                r.input.write_all(t.as_bytes())?;
            }
        }
        r.input.flush()?;
        let mut head = [0u8; 9];
        r.output.read_exact(&mut head)?;
        let len = u64::from_le_bytes(head[1..9].try_into().map_err(|_| bad("frame"))?);
        if len > MAX_FRAME as u64 {
            return Err(bad("frame too large"));
        }
        let mut payload = vec![0u8; len as usize];
        r.output.read_exact(&mut payload)?;
        Ok(match head[0] {
            0 => parse_decoded(&payload).ok_or_else(|| bad("malformed answer"))?,
            1 => Err(FileError::Read(
                String::from_utf8_lossy(&payload).into_owned(),
            )),
            _ => {
                let e: ChildError =
                    serde_json::from_slice(&payload).map_err(|_| bad("malformed error"))?;
                Err(FileError::Rejected(ConfigError::new(e.path, e.message)))
            }
        })
    }
}

fn parse_decoded(payload: &[u8]) -> Option<Result<Discovery, FileError>> {
    let len = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?) as usize;
    let pb = payload.get(8..8usize.checked_add(len)?)?;
    let response = DiscoveryResponse::decode(pb).ok()?;
    let extra: Extra = serde_json::from_slice(payload.get(8 + len..)?).ok()?;
    Some(Ok(Discovery {
        version_info: response.version_info,
        resources: response.resources,
        dumps: extra.dumps,
        unknown_fields: extra.unknown_fields,
        errors: extra
            .errors
            .into_iter()
            .map(|(i, e)| (i, ConfigError::new(e.path, e.message)))
            .collect(),
        versions: Vec::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary cluster whose upstream network filter is Istio's metadata exchange in a
    /// TypedStruct, as istiod sends it: checked and handed on as the message it carries.
    #[test]
    fn binary_typed_structs_become_the_message_they_carry() {
        use envoy_types::pb::envoy::config::cluster::v3::{Cluster, Filter};
        use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
        use prost::Message;
        let mut value = Struct::default();
        value.fields.insert(
            "protocol".into(),
            Value {
                kind: Some(Kind::StringValue("istio-peer-exchange".into())),
            },
        );
        // TypedStruct { type_url = 1; value = 2 }.
        let mut typed = Vec::new();
        let url = b"type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange";
        prost::encoding::bytes::encode(1, &url.to_vec(), &mut typed);
        prost::encoding::message::encode(2, &value, &mut typed);
        let cluster = Cluster {
            name: "outbound|9080||reviews".into(),
            filters: vec![Filter {
                name: "istio.metadata_exchange".into(),
                typed_config: Some(Any {
                    type_url: "type.googleapis.com/xds.type.v3.TypedStruct".into(),
                    value: typed,
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let d = check_binary(DiscoveryResponse {
            resources: vec![Any {
                type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
                value: cluster.encode_to_vec(),
            }],
            ..Default::default()
        });
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        let back = Cluster::decode(d.resources[0].value.as_slice()).expect("a cluster");
        let inner = back.filters[0].typed_config.as_ref().expect("typed_config");
        assert_eq!(
            inner.type_url,
            "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange"
        );
        let mx = crate::istio::MetadataExchange::decode(inner.value.as_slice()).expect("MX");
        assert_eq!(mx.protocol, "istio-peer-exchange");
    }

    #[test]
    fn unknown_fields_are_dropped_and_reported_known_unsupported_ones_refused() {
        let text = r#"
version_info: "7"
resources:
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: a
  no_such_field: 1
  load_assignment: {cluster_name: a, bogus: true}
"#;
        let d = decode_text(text).expect("decodes");
        assert_eq!(d.version_info, "7");
        assert_eq!(d.resources.len(), 1);
        assert_eq!(
            d.unknown_fields,
            vec![
                "resources[0].load_assignment.bogus".to_string(),
                "resources[0].no_such_field".to_string(),
            ]
        );
        assert_eq!(d.dumps[0]["name"], "a");
        let text = r#"{"version_info": "1", "resources": [{"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "a", "track_timeout_budgets": true}]}"#;
        let e = decode_text(text).expect_err("unsupported");
        assert!(matches!(e, FileError::Rejected(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "resources[0].track_timeout_budgets: unsupported"
        );
        let e = decode_text("version_info: [nope").expect_err("not YAML");
        assert!(matches!(e, FileError::Read(_)), "{e:?}");
    }
}

#[cfg(test)]
mod decoder_tests {
    use super::*;

    #[test]
    fn the_decoder_protocol_carries_results_failures_and_rejections() {
        let dir = std::env::temp_dir().join(format!("skiff-decoder-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let good = dir.join("good.yaml");
        std::fs::write(
            &good,
            "version_info: '3'\nresources: [{'@type': type.googleapis.com/envoy.config.cluster.v3.Cluster, name: c}]\n",
        )
        .expect("write");
        let bad = dir.join("bad.yaml");
        std::fs::write(
            &bad,
            "resources: [{'@type': type.googleapis.com/envoy.config.cluster.v3.Cluster, name: c, track_timeout_budgets: true}]\n",
        )
        .expect("write");
        let input = format!(
            "{}\n{}\n{}\n",
            good.display(),
            bad.display(),
            dir.join("none").display()
        );
        let mut out = Vec::new();
        serve_decoder(input.as_bytes(), &mut out).expect("serve");
        let mut frames = Vec::new();
        let mut rest = &out[..];
        while !rest.is_empty() {
            let len = u64::from_le_bytes(rest[1..9].try_into().expect("len")) as usize;
            frames.push((rest[0], rest[9..9 + len].to_vec()));
            rest = &rest[9 + len..];
        }
        assert_eq!(frames.len(), 3);
        let d = parse_decoded(&frames[0].1)
            .expect("frame")
            .expect("decoded");
        assert_eq!((d.version_info.as_str(), d.resources.len()), ("3", 1));
        assert_eq!(frames[1].0, 2);
        assert!(String::from_utf8_lossy(&frames[1].1).contains("track_timeout_budgets"));
        assert_eq!(frames[2].0, 1);
        let _ = std::fs::remove_dir_all(dir);
    }
}
