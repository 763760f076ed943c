//! The network configuration a container runtime hands the plugin on stdin (CNI spec 1.1,
//! "Network configuration" and "Section 4: Plugin Delegation"): the standard keys, the
//! previous plugin's result, and skiff's own keys, which the node agent writes into the
//! chained entry of the host's conflist.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The CNI versions this plugin speaks; GC and STATUS exist from 1.1.0 on.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest version, the one VERSION and errors without a configuration name.
pub const LATEST_VERSION: &str = "1.1.0";

/// The plugin's `type`, and the binary name it is installed under in the CNI bin dir.
pub const PLUGIN_TYPE: &str = "skiff-cni";

/// One plugin's configuration as the runtime sends it.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct NetConf {
    /// The version of the spec the runtime speaks for this network.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// The network's name.
    #[serde(default)]
    pub name: String,
    /// The plugin's type (its binary's name).
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// The result of the plugins before this one (ADD and CHECK), passed on unchanged.
    #[serde(
        rename = "prevResult",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub prev_result: Option<serde_json::Value>,
    /// GC: the attachments the runtime still knows; every other one is stale.
    #[serde(
        rename = "cni.dev/valid-attachments",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
    /// skiff's own keys.
    #[serde(flatten)]
    pub skiff: PluginConf,
}

/// One attachment the runtime still knows (GC).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ValidAttachment {
    /// The sandbox's container id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface name the plugin was called for.
    #[serde(rename = "ifname")]
    pub ifname: String,
}

/// How a pod's traffic is captured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Enrol the pod's network namespace in the eBPF maps (programs attached at the cgroup
    /// root by the node agent).
    #[default]
    Ebpf,
    /// istio-iptables' rules inside the pod's network namespace.
    Iptables,
}

impl Backend {
    /// The name in configuration and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Ebpf => "ebpf",
            Backend::Iptables => "iptables",
        }
    }
}

/// skiff's keys in the plugin's configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginConf {
    /// eBPF enrolment or iptables rules.
    #[serde(default)]
    pub backend: Backend,
    /// Where ADD records what it did, one file per attachment, for DEL, CHECK and GC.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Namespaces whose pods are never captured (the mesh's own, kube-system).
    #[serde(default = "default_excluded_namespaces")]
    pub exclude_namespaces: Vec<String>,
    /// Container names that mark a pod as having a skiff (or Envoy) sidecar.
    #[serde(default = "default_sidecar_containers")]
    pub sidecar_containers: Vec<String>,
    /// Init containers that capture the pod themselves: such pods are left to them.
    #[serde(default = "default_init_containers")]
    pub init_containers: Vec<String>,
    /// The node-wide capture defaults; pod annotations override them.
    #[serde(default)]
    pub capture: CaptureConf,
    /// How to reach the Kubernetes API.
    #[serde(default)]
    pub kubernetes: KubeConf,
    /// The `tracing` level for the plugin's log lines on stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
}

impl Default for PluginConf {
    fn default() -> Self {
        PluginConf {
            backend: Backend::default(),
            state_dir: default_state_dir(),
            exclude_namespaces: default_excluded_namespaces(),
            sidecar_containers: default_sidecar_containers(),
            init_containers: default_init_containers(),
            capture: CaptureConf::default(),
            kubernetes: KubeConf::default(),
            log_level: None,
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/run/skiff/cni")
}

fn default_excluded_namespaces() -> Vec<String> {
    vec!["kube-system".into()]
}

fn default_sidecar_containers() -> Vec<String> {
    vec!["skiff-proxy".into(), "istio-proxy".into()]
}

fn default_init_containers() -> Vec<String> {
    vec!["istio-init".into(), "skiff-init".into()]
}

/// Node-wide capture defaults, in istio-iptables' terms (the same values the Istio
/// annotations take), as istio-cni applies them to a pod without annotations.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct CaptureConf {
    /// `-p`.
    pub outbound_port: u16,
    /// `-z`.
    pub inbound_port: u16,
    /// `-e`.
    pub tunnel_port: u16,
    /// `-u`.
    pub proxy_uid: String,
    /// `-g` (default: the uid).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_gid: Option<String>,
    /// `-i`.
    #[serde(rename = "includeOutboundIPRanges")]
    pub include_outbound_ip_ranges: String,
    /// `-x`.
    #[serde(rename = "excludeOutboundIPRanges")]
    pub exclude_outbound_ip_ranges: String,
    /// `-b`.
    pub include_inbound_ports: String,
    /// `-d` (the sidecar's own 15020, 15021 and 15090 are always added).
    pub exclude_inbound_ports: String,
    /// `-q`.
    pub include_outbound_ports: String,
    /// `-o`.
    pub exclude_outbound_ports: String,
    /// `-m`: REDIRECT or TPROXY (iptables backend; the eBPF backend keeps the client's
    /// address in both).
    pub interception_mode: String,
    /// eBPF: sockets with this SO_MARK are the proxy's (0: none).
    pub proxy_mark: u32,
    /// eBPF: short-circuit local hops with sk_msg.
    pub sk_msg: bool,
    /// iptables: IPv6 rules too.
    pub dual_stack: bool,
}

impl Default for CaptureConf {
    fn default() -> Self {
        CaptureConf {
            outbound_port: 15001,
            inbound_port: 15006,
            tunnel_port: 15008,
            proxy_uid: "1337".into(),
            proxy_gid: None,
            include_outbound_ip_ranges: "*".into(),
            exclude_outbound_ip_ranges: String::new(),
            include_inbound_ports: "*".into(),
            exclude_inbound_ports: String::new(),
            include_outbound_ports: String::new(),
            exclude_outbound_ports: String::new(),
            interception_mode: "REDIRECT".into(),
            proxy_mark: 1337,
            sk_msg: false,
            dual_stack: false,
        }
    }
}

/// How the plugin reaches the Kubernetes API. With none of these set, the in-cluster
/// service account (`KUBERNETES_SERVICE_HOST`, the mounted token and CA) is used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct KubeConf {
    /// `https://host:port` or, for tests, `http://host:port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_server: Option<String>,
    /// A file with a bearer token, re-read on every request (tokens rotate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// PEM CA bundle that signed the API server's certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// A kubeconfig whose current context gives server, CA and token (instead of the above).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    /// Per-request time limit in milliseconds (default 5000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// Why a configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NetConfError {
    /// Not JSON, or a key of the wrong type.
    #[error("cannot decode the network configuration: {0}")]
    Decode(String),
    /// A version this plugin does not speak.
    #[error(
        "CNI version {0} is not supported (supported: {supported}); \
         set cniVersion in the conflist to one of them",
        supported = SUPPORTED_VERSIONS.join(", ")
    )]
    Version(String),
}

impl NetConf {
    /// Parses and checks a configuration from the runtime.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, NetConfError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let conf: NetConf = serde_path_to_error(de)?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(NetConfError::Version(conf.cni_version));
        }
        Ok(conf)
    }
}

/// Decodes with the failing key's path in the message, so an operator finds it in the file.
fn serde_path_to_error<'de, T: Deserialize<'de>>(
    de: &mut serde_json::Deserializer<serde_json::de::SliceRead<'de>>,
) -> Result<T, NetConfError> {
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        NetConfError::Decode(if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        })
    })?;
    de.end().map_err(|e| NetConfError::Decode(e.to_string()))?;
    Ok(value)
}

/// Whether `version` is at least `major.minor` (for GC and STATUS, 1.1.0 only).
pub fn at_least(version: &str, major: u32, minor: u32) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chained_entry_with_prev_result_parses_with_defaults() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"skiff-cni",
                 "backend":"iptables","excludeNamespaces":["istio-system"],
                 "capture":{"excludeInboundPorts":"8080","includeOutboundIPRanges":"10.96.0.0/12"},
                 "kubernetes":{"apiServer":"http://127.0.0.1:1"},
                 "prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.204.0.2/24"}]},
                 "runtimeConfig":{"portMappings":[]}}"#,
        )
        .expect("parses");
        assert_eq!(conf.skiff.backend, Backend::Iptables);
        assert_eq!(conf.skiff.capture.outbound_port, 15001);
        assert_eq!(conf.skiff.capture.exclude_inbound_ports, "8080");
        assert_eq!(conf.skiff.exclude_namespaces, ["istio-system"]);
        assert_eq!(
            conf.skiff.state_dir,
            PathBuf::from("/var/run/skiff/cni"),
            "the default state dir"
        );
        assert!(conf.prev_result.is_some());
    }

    #[test]
    fn unknown_versions_and_bad_types_are_refused_with_the_key() {
        let e = NetConf::parse(br#"{"cniVersion":"2.0.0","name":"n","type":"skiff-cni"}"#)
            .expect_err("version");
        assert!(e.to_string().contains("2.0.0 is not supported"), "{e}");
        let e = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","type":"skiff-cni","backend":"nft"}"#,
        )
        .expect_err("backend");
        assert!(e.to_string().contains("unknown variant `nft`"), "{e}");
        // A misspelt capture key is refused rather than silently ignored.
        let e = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","type":"skiff-cni","capture":{"includeOutboundIpRanges":"*"}}"#,
        )
        .expect_err("typo");
        assert!(e.to_string().contains("includeOutboundIpRanges"), "{e}");
    }

    #[test]
    fn gc_attachments_parse() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","type":"skiff-cni",
                 "cni.dev/valid-attachments":[{"containerID":"abc","ifname":"eth0"}]}"#,
        )
        .expect("parses");
        assert_eq!(
            conf.valid_attachments,
            Some(vec![ValidAttachment {
                container_id: "abc".into(),
                ifname: "eth0".into()
            }])
        );
        assert!(at_least("1.1.0", 1, 1) && !at_least("1.0.0", 1, 1));
    }
}
