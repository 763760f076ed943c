//! The few fields of Kubernetes objects skiff reads, decoded leniently as the API server
//! writes them (absent and `null` both mean empty; every other field is ignored).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

/// `null` as the type's default: the API server omits empty fields, but other clients and
/// older servers write `null`.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `metadata` of an object.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ObjectMeta {
    /// The object's name.
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    /// Its namespace.
    #[serde(default, deserialize_with = "nullable")]
    pub namespace: String,
    /// Its uid (a pod's cgroup path carries it).
    #[serde(default, deserialize_with = "nullable")]
    pub uid: String,
    /// Its annotations.
    #[serde(default, deserialize_with = "nullable")]
    pub annotations: BTreeMap<String, String>,
    /// Its labels.
    #[serde(default, deserialize_with = "nullable")]
    pub labels: BTreeMap<String, String>,
}

/// A container: only its name matters here.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Container {
    /// The container's name.
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
}

/// `spec` of a pod.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// The node it is scheduled to.
    #[serde(default, deserialize_with = "nullable")]
    pub node_name: String,
    /// Host network pods have no namespace of their own to capture.
    #[serde(default, deserialize_with = "nullable")]
    pub host_network: bool,
    /// Its containers.
    #[serde(default, deserialize_with = "nullable")]
    pub containers: Vec<Container>,
    /// Its init containers.
    #[serde(default, deserialize_with = "nullable")]
    pub init_containers: Vec<Container>,
}

/// `status` of a pod.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// Pending, Running, Succeeded, Failed, Unknown.
    #[serde(default, deserialize_with = "nullable")]
    pub phase: String,
    /// Its primary address, once it has one.
    #[serde(rename = "podIP", default, deserialize_with = "nullable")]
    pub pod_ip: String,
}

/// A pod.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Pod {
    /// Its metadata.
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: ObjectMeta,
    /// Its spec.
    #[serde(default, deserialize_with = "nullable")]
    pub spec: PodSpec,
    /// Its status.
    #[serde(default, deserialize_with = "nullable")]
    pub status: PodStatus,
}

impl Pod {
    /// `namespace/name`, for messages.
    pub fn key(&self) -> String {
        format!("{}/{}", self.metadata.namespace, self.metadata.name)
    }

    /// An annotation's value.
    pub fn annotation(&self, name: &str) -> Option<&str> {
        self.metadata.annotations.get(name).map(String::as_str)
    }
}

/// `metadata` of a list.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMeta {
    /// The version to watch from.
    #[serde(default, deserialize_with = "nullable")]
    pub resource_version: String,
    /// The token for the next page, when the list was cut at `limit`.
    #[serde(rename = "continue", default, deserialize_with = "nullable")]
    pub continue_token: String,
}

/// A list of pods.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PodList {
    /// The list's metadata.
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: ListMeta,
    /// The pods.
    #[serde(default, deserialize_with = "nullable")]
    pub items: Vec<Pod>,
}

/// The API server's answer to a failed request (`kind: Status`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Status {
    /// `Failure`.
    #[serde(default, deserialize_with = "nullable")]
    pub status: String,
    /// What went wrong, for people.
    #[serde(default, deserialize_with = "nullable")]
    pub message: String,
    /// NotFound, Forbidden, Unauthorized, …
    #[serde(default, deserialize_with = "nullable")]
    pub reason: String,
    /// The HTTP status.
    #[serde(default, deserialize_with = "nullable")]
    pub code: u16,
}

/// Decodes a pod from the API's JSON.
pub fn parse_pod(bytes: &[u8]) -> Result<Pod, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// Decodes a pod list from the API's JSON.
pub fn parse_pod_list(bytes: &[u8]) -> Result<PodList, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// Decodes a `Status` from a failed request's body.
pub fn parse_status(bytes: &[u8]) -> Result<Status, serde_json::Error> {
    serde_json::from_slice(bytes)
}
