//! Envoy v3 protos from text: YAML or JSON through the descriptor set that `envoy-types` ships, so
//! any `typed_config` with an `@type` decodes without hand-written serde.

use std::sync::OnceLock;

use prost::Message;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, ReflectMessage,
};

use super::ConfigError;

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));

/// Message name of the bootstrap.
pub const BOOTSTRAP: &str = "envoy.config.bootstrap.v3.Bootstrap";

/// The descriptor pool of every Envoy v3 message, decoded once.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut pool =
            DescriptorPool::decode(DESCRIPTORS).expect("the embedded Envoy descriptor set decodes");
        let ours = crate::istio::descriptors(|name| pool.get_message_by_name(name).is_none());
        pool.add_file_descriptor_protos(ours)
            .expect("Istio's extension descriptors are well formed");
        pool
    })
}

/// The descriptor of a message by its full name.
pub fn message(name: &str) -> Result<MessageDescriptor, ConfigError> {
    pool()
        .get_message_by_name(name)
        .ok_or_else(|| ConfigError::new("", format!("unknown message type '{name}'")))
}

/// Decodes one YAML or JSON document into `desc`; errors name the field path.
pub fn decode_text(text: &str, desc: MessageDescriptor) -> Result<DynamicMessage, ConfigError> {
    let opts = DeserializeOptions::new().deny_unknown_fields(true);
    let trimmed = text.trim_start();
    // A `TypedStruct` is rewritten into the message it carries first; that needs the document
    // as a value, which loses line numbers in errors, so only documents that hold one take
    // this path.
    if text.contains("TypedStruct") {
        let mut value = parse_value(text)?;
        unwrap_typed_structs(&mut value, "")?;
        loosen(&mut value, &desc);
        return decode_with(&value, desc, &opts);
    }
    let result = if trimmed.starts_with('{') {
        let mut de = serde_json::Deserializer::from_str(text);
        decode_with(&mut de, desc.clone(), &opts)
    } else {
        let de = serde_yaml::Deserializer::from_str(text);
        decode_with(de, desc.clone(), &opts)
    };
    // What Envoy's loader takes beyond proto3 JSON (a duration or wrapper as an object, one
    // item for a list) is rewritten and decoded again; the first error (with its line) stands
    // when that does not help.
    result.or_else(|first| {
        let mut value = parse_value(text).map_err(|_| first.clone())?;
        loosen(&mut value, &desc);
        decode_with(&value, desc, &opts).map_err(|_| first)
    })
}

/// The wrappers of scalars (`google.protobuf.UInt32Value` and the like).
fn is_wrapper(name: &str) -> bool {
    matches!(
        name,
        "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.BoolValue"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
    )
}

/// A FilterConfig's `config: {}` is an Any without a type: Envoy reads it as no
/// configuration (the filter is only turned on).
fn drop_empty_filter_config(o: &mut serde_json::Map<String, serde_json::Value>) {
    if o.get("config")
        .is_some_and(|c| c.as_object().is_some_and(|m| m.is_empty()))
    {
        o.remove("config");
    }
}

/// Rewrites, in a document for `desc`, what Envoy's YAML loader accepts and proto3 JSON does
/// not (it goes through protobuf's own reflection): a `Duration` as `{seconds, nanos}`, a
/// wrapper as `{value: x}`, and a single item where a list is expected.
pub fn loosen(value: &mut serde_json::Value, desc: &MessageDescriptor) {
    use prost_reflect::Kind;
    use serde_json::Value;
    let name = desc.full_name();
    if name == "google.protobuf.Duration" {
        if let Value::Object(o) = value {
            let part = |k: &str| match o.get(k) {
                Some(Value::Number(n)) => n.as_i64(),
                Some(Value::String(s)) => s.parse().ok(),
                None => Some(0),
                _ => None,
            };
            let only_known = o.keys().all(|k| k == "seconds" || k == "nanos");
            if let (true, Some(secs), Some(nanos)) = (only_known, part("seconds"), part("nanos")) {
                let text = if nanos == 0 {
                    format!("{secs}s")
                } else {
                    let sign = if secs < 0 || nanos < 0 { "-" } else { "" };
                    format!("{sign}{}.{:09}s", secs.abs(), nanos.abs())
                };
                *value = Value::String(text);
            }
        }
        return;
    }
    if is_wrapper(name) {
        if let Value::Object(o) = value {
            if o.len() == 1 {
                if let Some(inner) = o.remove("value") {
                    *value = inner;
                }
            }
        }
        return;
    }
    if name.starts_with("google.protobuf.") && name != "google.protobuf.Any" {
        return;
    }
    let Value::Object(o) = value else {
        return;
    };
    if name == "google.protobuf.Any" {
        let inner = o
            .get("@type")
            .and_then(Value::as_str)
            .and_then(|t| pool().get_message_by_name(type_name(t)));
        if let Some(inner) = inner {
            if inner.full_name() == "envoy.config.route.v3.FilterConfig" {
                drop_empty_filter_config(o);
            }
            if !inner.full_name().starts_with("google.protobuf.") {
                for (k, v) in o.iter_mut() {
                    if k != "@type" {
                        loosen_field(&inner, k, v);
                    }
                }
            }
        }
        return;
    }
    if name == "envoy.config.route.v3.FilterConfig" {
        drop_empty_filter_config(o);
    }
    for (k, v) in o.iter_mut() {
        loosen_field(desc, k, v);
    }

    fn loosen_field(desc: &MessageDescriptor, key: &str, v: &mut Value) {
        let Some(field) = desc
            .get_field_by_name(key)
            .or_else(|| desc.get_field_by_json_name(key))
        else {
            return;
        };
        if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                return;
            };
            let Kind::Message(m) = entry.map_entry_value_field().kind() else {
                return;
            };
            if let Value::Object(entries) = v {
                for e in entries.values_mut() {
                    loosen(e, &m);
                }
            }
            return;
        }
        if field.is_list() && !v.is_array() && !v.is_null() {
            *v = Value::Array(vec![v.take()]);
        }
        let Kind::Message(m) = field.kind() else {
            return;
        };
        match v {
            Value::Array(items) => {
                for item in items {
                    loosen(item, &m);
                }
            }
            other => loosen(other, &m),
        }
    }
}

fn decode_with<'de, D>(
    de: D,
    desc: MessageDescriptor,
    opts: &DeserializeOptions,
) -> Result<DynamicMessage, ConfigError>
where
    D: serde::Deserializer<'de>,
    D::Error: std::fmt::Display,
{
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(de, &mut track);
    match DynamicMessage::deserialize_with_options(desc, de, opts) {
        Ok(msg) => Ok(msg),
        Err(e) => {
            let path = track.path().to_string();
            let path = if path == "." { String::new() } else { path };
            Err(describe_error(path, &e.to_string()))
        }
    }
}

/// A binary message whose `Any`s hold `TypedStruct`s, with each replaced by the message it
/// carries (as Envoy converts them for the extension), and the paths of the fields the protos
/// do not know, dropped (as Envoy drops them from a dynamic resource); `None` when it holds
/// none.
pub fn without_typed_structs(
    msg: &DynamicMessage,
) -> Result<Option<(DynamicMessage, Vec<String>)>, ConfigError> {
    let mut value = crate::to_json(msg);
    if unwrap_typed_structs(&mut value, "")? == 0 {
        return Ok(None);
    }
    decode_value_lenient(value, msg.descriptor()).map(Some)
}

/// Decodes like [`decode_text`], but drops fields the protos do not know, returning their paths
/// (Envoy warns about and ignores them in dynamic resources).
pub fn decode_text_lenient(
    text: &str,
    desc: MessageDescriptor,
) -> Result<(DynamicMessage, Vec<String>), ConfigError> {
    decode_lenient(text, desc, true)
}

/// [`decode_text_lenient`], with each `TypedStruct` kept as it is (as a control plane sends
/// it), not replaced by the message it carries.
pub fn decode_text_lenient_keeping_typed_structs(
    text: &str,
    desc: MessageDescriptor,
) -> Result<(DynamicMessage, Vec<String>), ConfigError> {
    decode_lenient(text, desc, false)
}

fn decode_lenient(
    text: &str,
    desc: MessageDescriptor,
    unwrap: bool,
) -> Result<(DynamicMessage, Vec<String>), ConfigError> {
    let mut value = parse_value(text)?;
    if unwrap {
        unwrap_typed_structs(&mut value, "")?;
    }
    decode_value_lenient(value, desc)
}

/// Decodes a JSON value, dropping the fields the protos do not know and returning their paths.
fn decode_value_lenient(
    mut value: serde_json::Value,
    desc: MessageDescriptor,
) -> Result<(DynamicMessage, Vec<String>), ConfigError> {
    loosen(&mut value, &desc);
    let opts = DeserializeOptions::new().deny_unknown_fields(true);
    let mut unknown = Vec::new();
    loop {
        let mut track = serde_path_to_error::Track::new();
        let de = serde_path_to_error::Deserializer::new(&value, &mut track);
        let err = match DynamicMessage::deserialize_with_options(desc.clone(), de, &opts) {
            Ok(msg) => return Ok((msg, unknown)),
            Err(e) => e.to_string(),
        };
        let path = track.path();
        let shown = path.to_string();
        let shown = if shown == "." { String::new() } else { shown };
        let described = describe_error(shown, &err);
        let field = (described.message == "unknown field")
            .then(|| described.path.rsplit('.').next().map(str::to_string))
            .flatten();
        let removed = match &field {
            Some(f) if unknown.len() < 1000 => remove_at(&mut value, &path, f),
            _ => false,
        };
        if !removed {
            return Err(described);
        }
        unknown.push(described.path);
    }
}

fn parse_value(text: &str) -> Result<serde_json::Value, ConfigError> {
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| ConfigError::new("", e.to_string()))
    } else {
        serde_yaml::from_str(text).map_err(|e| ConfigError::new("", e.to_string()))
    }
}

/// The two names of the wrapper that carries an extension's config as a JSON struct.
const TYPED_STRUCTS: [&str; 2] = [
    "type.googleapis.com/udpa.type.v1.TypedStruct",
    "type.googleapis.com/xds.type.v3.TypedStruct",
];

/// Replaces each `TypedStruct` in an `Any` with the message it describes, as Envoy's loader
/// converts it for the extension: `{"@type": TypedStruct, "type_url": T, "value": {...}}`
/// becomes `{"@type": T, ...}`. Returns how many were replaced.
pub fn unwrap_typed_structs(
    value: &mut serde_json::Value,
    path: &str,
) -> Result<usize, ConfigError> {
    use serde_json::Value;
    let mut replaced = 0;
    match value {
        Value::Object(o) => {
            let wrapped = o
                .get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| TYPED_STRUCTS.contains(&t));
            if wrapped {
                let type_url = match o.get("type_url").or_else(|| o.get("typeUrl")) {
                    Some(Value::String(t)) if !t.is_empty() => t.clone(),
                    _ => {
                        return Err(ConfigError::new(
                            format!("{path}.type_url").trim_start_matches('.'),
                            "a TypedStruct needs the type_url of the message it carries",
                        ))
                    }
                };
                let mut inner = match o.remove("value") {
                    Some(Value::Object(v)) => v,
                    None | Some(Value::Null) => serde_json::Map::new(),
                    Some(_) => {
                        return Err(ConfigError::new(
                            format!("{path}.value").trim_start_matches('.'),
                            "a TypedStruct's value must be an object",
                        ))
                    }
                };
                inner.insert("@type".to_string(), Value::String(type_url));
                *o = inner;
                replaced += 1;
            }
            for (k, v) in o.iter_mut() {
                replaced += unwrap_typed_structs(v, &format!("{path}.{k}"))?;
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter_mut().enumerate() {
                replaced += unwrap_typed_structs(v, &format!("{path}[{i}]"))?;
            }
        }
        _ => {}
    }
    Ok(replaced)
}

/// Removes `field` from the object at `path` inside `value`.
fn remove_at(value: &mut serde_json::Value, path: &serde_path_to_error::Path, field: &str) -> bool {
    use serde_path_to_error::Segment;
    let mut cur = value;
    for seg in path.iter() {
        cur = match (seg, cur) {
            (Segment::Seq { index }, serde_json::Value::Array(a)) => match a.get_mut(*index) {
                Some(v) => v,
                None => return false,
            },
            (Segment::Map { key }, serde_json::Value::Object(o)) => match o.get_mut(key) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match cur {
        serde_json::Value::Object(o) => o.remove(field).is_some(),
        _ => false,
    }
}

/// Merges `over` into `base` with protobuf MergeFrom semantics (scalars replace, repeated fields
/// append, messages merge), which is what Envoy does with `--config-yaml` over `--config-path`.
pub fn merge(base: &mut DynamicMessage, over: &DynamicMessage) -> Result<(), ConfigError> {
    base.merge(over.encode_to_vec().as_slice())
        .map_err(|e| ConfigError::new("", format!("cannot merge --config-yaml: {e}")))
}

/// Converts a dynamic message into its generated prost type.
pub fn to_typed<T: prost::Message + Default>(msg: &DynamicMessage) -> Result<T, ConfigError> {
    msg.transcode_to::<T>().map_err(|e| {
        ConfigError::new(
            "",
            format!("cannot convert {}: {e}", msg.descriptor().full_name()),
        )
    })
}

/// The message name behind a `type.googleapis.com/…` URL.
pub fn type_name(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

/// Decodes the payload of an `Any` into a generated prost type, checking the `@type`.
pub fn unpack<T: prost::Message + prost::Name + Default>(
    any: &envoy_types::pb::google::protobuf::Any,
    path: &str,
) -> Result<T, ConfigError> {
    let expected = T::full_name();
    let got = type_name(&any.type_url);
    if got != expected {
        return Err(ConfigError::new(
            path,
            format!("unsupported @type '{got}', expected '{expected}'"),
        ));
    }
    T::decode(any.value.as_slice())
        .map_err(|e| ConfigError::new(path, format!("cannot decode {expected}: {e}")))
}

/// Turns a deserializer error into a path and a message: the YAML parser repeats the path in
/// its message, and an unknown field is reported as `<path>.<field>: unknown field`.
fn describe_error(path: String, raw: &str) -> ConfigError {
    let msg = raw.strip_prefix(&format!("{path}: ")).unwrap_or(raw);
    let (msg, location) = match msg.rfind(" at line ") {
        Some(i) => (&msg[..i], Some(msg[i + 4..].to_string())),
        None => (msg, None),
    };
    let unknown = msg
        .strip_prefix("unrecognized field name '")
        .or_else(|| msg.strip_prefix("unknown field `"))
        .and_then(|rest| rest.split(['\'', '`']).next());
    let (path, msg) = match unknown {
        Some(field) if path.is_empty() => (field.to_string(), "unknown field".to_string()),
        Some(field) => (format!("{path}.{field}"), "unknown field".to_string()),
        None => (path, msg.to_string()),
    };
    match location {
        Some(loc) => ConfigError::new(path, format!("{msg} ({loc})")),
        None => ConfigError::new(path, msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoys_loose_forms_decode_and_real_errors_keep_their_line() {
        let desc = message("envoy.config.bootstrap.v3.Bootstrap").expect("descriptor");
        let text = r#"
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: "9901"}}
static_resources:
  clusters:
    name: one
    connect_timeout: {seconds: 2, nanos: 500000000}
    per_connection_buffer_limit_bytes: {value: 1024}
    load_assignment:
      cluster_name: one
      endpoints: {lb_endpoints: {endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}}}
"#;
        let msg = decode_text(text, desc.clone()).expect("Envoy's loader takes these forms");
        let b: envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap =
            to_typed(&msg).expect("typed");
        let c = &b.static_resources.as_ref().expect("static").clusters[0];
        let t = c.connect_timeout.as_ref().expect("timeout");
        assert_eq!((t.seconds, t.nanos), (2, 500_000_000));
        assert_eq!(
            c.per_connection_buffer_limit_bytes
                .as_ref()
                .map(|v| v.value),
            Some(1024)
        );
        let lb = &c.load_assignment.as_ref().expect("assignment").endpoints[0].lb_endpoints;
        assert_eq!(lb.len(), 1);
        // A real mistake still reports where it is.
        let e = decode_text("admin: {bogus: 1}\n", desc).expect_err("unknown field");
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    #[test]
    fn unknown_fields_get_their_own_path() {
        let e = describe_error(
            "static_resources.listeners[0]".into(),
            "static_resources.listeners[0]: unrecognized field name 'bogus' at line 22 column 5",
        );
        assert_eq!(
            e.to_string(),
            "static_resources.listeners[0].bogus: unknown field (line 22 column 5)"
        );
        let e = decode_text("{\"bogus\": 1}", message(BOOTSTRAP).expect("bootstrap"))
            .expect_err("unknown");
        assert_eq!(e.path, "bogus");
    }

    #[test]
    fn typed_structs_become_the_message_they_carry() {
        let yaml = r#"
bootstrap_extensions:
- name: envoy.bootstrap.internal_listener
  typed_config:
    "@type": type.googleapis.com/udpa.type.v1.TypedStruct
    type_url: type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener
    value:
      buffer_size_kb: 64
- name: x
  typed_config:
    "@type": type.googleapis.com/xds.type.v3.TypedStruct
    type_url: type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener
"#;
        let msg = decode_text(yaml, message(BOOTSTRAP).expect("bootstrap")).expect("decodes");
        let b: envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap =
            to_typed(&msg).expect("typed");
        let any = b.bootstrap_extensions[0]
            .typed_config
            .as_ref()
            .expect("typed_config");
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"
        );
        let il = envoy_types::pb::envoy::extensions::bootstrap::internal_listener::v3::InternalListener::decode(
            any.value.as_slice(),
        )
        .expect("internal listener");
        assert_eq!(il.buffer_size_kb.map(|v| v.value), Some(64));

        let bad = yaml.replace("value:\n      buffer_size_kb: 64", "value:\n      bogus: 1");
        let e = decode_text(&bad, message(BOOTSTRAP).expect("bootstrap")).expect_err("bogus");
        assert!(e.path.ends_with("bogus"), "{e}");
        let untyped = yaml.replace("    type_url: type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener\n    value", "    value");
        let e =
            decode_text(&untyped, message(BOOTSTRAP).expect("bootstrap")).expect_err("no type_url");
        assert_eq!(e.path, "bootstrap_extensions[0].typed_config.type_url");
    }
}
