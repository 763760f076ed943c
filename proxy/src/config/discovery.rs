//! Discovery responses from files, as Envoy's filesystem subscriptions read them: a YAML or JSON
//! `DiscoveryResponse` whose `resources` are `@type` Anys. Each resource is checked against the
//! supported-field table, as a bootstrap is. Fields the protos do not know are, as in Envoy's
//! dynamic resources, dropped with a warning and counted (`server.dynamic_unknown_fields`),
//! where a bootstrap refuses them.
//!
//! Decoding text needs Envoy's whole descriptor set, so the serving process has a short-lived
//! child do it ([`decode_file_isolated`]) and receives binary protobuf.

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
    for (i, any) in response.resources.iter().enumerate() {
        let path = format!("resources[{i}]");
        let desc = proto::pool()
            .get_message_by_name(proto::type_name(&any.type_url))
            .ok_or_else(|| ConfigError::new(&path, format!("unknown @type '{}'", any.type_url)))?;
        let inner = DynamicMessage::decode(desc, any.value.as_slice())
            .map_err(|e| ConfigError::new(&path, format!("cannot decode: {e}")))?;
        supported::check_at(&inner, &path)?;
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
        dumps.push(dump);
    }
    Ok(Discovery {
        version_info: response.version_info,
        resources: response.resources,
        dumps,
        unknown_fields,
    })
}

/// What the child writes on success: the dumps and the unknown fields, after the binary
/// response.
#[derive(serde::Serialize, serde::Deserialize)]
struct Extra {
    dumps: Vec<serde_json::Value>,
    unknown_fields: Vec<String>,
}

/// The hidden flag with which skiff runs itself to decode a discovery file.
pub const DECODE_FLAG: &str = "--decode-discovery-to-stdout";

/// The child's side: decodes `path` and writes the result for [`decode_file_isolated`].
pub fn decode_for_parent(path: &Path, out: &mut impl std::io::Write) -> Result<(), FileError> {
    let d = decode_file(path)?;
    let pb = DiscoveryResponse {
        version_info: d.version_info,
        resources: d.resources,
        ..Default::default()
    }
    .encode_to_vec();
    let extra = serde_json::to_vec(&Extra {
        dumps: d.dumps,
        unknown_fields: d.unknown_fields,
    })
    .unwrap_or_default();
    let io = |e: std::io::Error| FileError::Read(format!("cannot hand the file over: {e}"));
    out.write_all(&(pb.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&pb).map_err(io)?;
    out.write_all(&extra).map_err(io)?;
    Ok(())
}

/// How the child reports an error: a [`ChildError`] with `read: true` for a read failure.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct ChildFileError {
    /// The error.
    pub error: ChildError,
    /// A read failure rather than a rejection.
    pub read: bool,
}

impl From<FileError> for ChildFileError {
    fn from(e: FileError) -> Self {
        match e {
            FileError::Read(m) => ChildFileError {
                error: ChildError {
                    path: String::new(),
                    message: m,
                },
                read: true,
            },
            FileError::Rejected(e) => ChildFileError {
                error: ChildError {
                    path: e.path,
                    message: e.message,
                },
                read: false,
            },
        }
    }
}

/// Decodes a discovery file in a short-lived child process, so that this process never holds
/// Envoy's descriptor set. Falls back to decoding in-process when the child cannot start.
pub fn decode_file_isolated(path: &Path) -> Result<Discovery, FileError> {
    let Ok(exe) = std::env::current_exe() else {
        return decode_file(path);
    };
    let output = match std::process::Command::new(exe)
        .arg(DECODE_FLAG)
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(o) => o,
        Err(_) => return decode_file(path),
    };
    if !output.status.success() {
        return Err(
            match serde_json::from_slice::<ChildFileError>(&output.stdout) {
                Ok(ChildFileError { error, read: true }) => FileError::Read(error.message),
                Ok(ChildFileError { error, read: false }) => {
                    FileError::Rejected(ConfigError::new(error.path, error.message))
                }
                Err(_) => FileError::Read(format!(
                    "discovery decoder failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                )),
            },
        );
    }
    let bad = || FileError::Read("discovery decoder returned malformed output".into());
    let data = output.stdout;
    let len = data
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .ok_or_else(bad)? as usize;
    let pb = data.get(8..8usize.saturating_add(len)).ok_or_else(bad)?;
    let response = DiscoveryResponse::decode(pb).map_err(|_| bad())?;
    let extra: Extra = serde_json::from_slice(&data[8 + len..]).map_err(|_| bad())?;
    Ok(Discovery {
        version_info: response.version_info,
        resources: response.resources,
        dumps: extra.dumps,
        unknown_fields: extra.unknown_fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let text = r#"{"version_info": "1", "resources": [{"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "a", "dns_refresh_rate": "5s"}]}"#;
        let e = decode_text(text).expect_err("unsupported");
        assert!(matches!(e, FileError::Rejected(_)), "{e:?}");
        assert_eq!(e.to_string(), "resources[0].dns_refresh_rate: unsupported");
        let e = decode_text("version_info: [nope").expect_err("not YAML");
        assert!(matches!(e, FileError::Read(_)), "{e:?}");
    }
}
