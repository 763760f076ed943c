//! `skiff cni`: a chained CNI plugin (spec 1.0/1.1). The runtime runs it after the plugins
//! that give the pod its network, with `CNI_*` in the environment and the network
//! configuration on stdin. ADD captures the pod's namespace (eBPF enrolment, or
//! istio-iptables' rules inside it) and passes `prevResult` on unchanged; DEL undoes what ADD
//! recorded; CHECK verifies it; GC removes what belongs to sandboxes the runtime no longer
//! knows; STATUS says whether the node is ready; VERSION lists the versions spoken. Errors
//! are CNI error objects on stdout with a non-zero exit.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::capture::{decide, Decision, PodCapture};
use crate::kube::{Client, KubeError};
use crate::netconf::{self, Backend, NetConf, NetConfError, LATEST_VERSION, SUPPORTED_VERSIONS};
use crate::state::{safe_name, Attachment, StateDir};

/// The spec's error codes.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin is not available.
    pub const NOT_AVAILABLE: u32 = 50;
    /// skiff: a pod annotation has a value that cannot be applied.
    pub const BAD_ANNOTATION: u32 = 100;
    /// skiff: capturing or releasing the pod's traffic failed.
    pub const CAPTURE_FAILED: u32 = 101;
    /// skiff: CHECK found the pod's capture gone.
    pub const CAPTURE_MISSING: u32 = 102;
}

/// A CNI error: printed as `{cniVersion, code, msg, details}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    /// The spec's code, or skiff's from 100 on.
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// The longer story, for the operator.
    pub details: String,
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error object the runtime reads.
    pub fn to_json(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

impl From<NetConfError> for CniError {
    fn from(e: NetConfError) -> Self {
        match &e {
            NetConfError::Version(_) => CniError::new(
                code::INCOMPATIBLE_VERSION,
                "incompatible CNI version",
                e.to_string(),
            ),
            NetConfError::Decode(_) => CniError::new(
                code::DECODE,
                "cannot decode the network configuration",
                e.to_string(),
            ),
        }
    }
}

/// The `CNI_*` variables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`, split into keys and values.
    pub args: BTreeMap<String, String>,
    /// `CNI_PATH`.
    pub path: String,
}

impl Env {
    /// Reads the variables through `get` (the process environment, or a test's map).
    pub fn read(get: impl Fn(&str) -> Option<String>) -> Env {
        let v = |k: &str| get(k).unwrap_or_default();
        Env {
            command: v("CNI_COMMAND"),
            container_id: v("CNI_CONTAINERID"),
            netns: v("CNI_NETNS"),
            ifname: v("CNI_IFNAME"),
            args: parse_cni_args(&v("CNI_ARGS")),
            path: v("CNI_PATH"),
        }
    }

    fn require(&self, name: &str, value: &str) -> Result<(), CniError> {
        if value.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("{name} is not set"),
                format!("{} needs {name}", self.command),
            ));
        }
        Ok(())
    }

    /// The attachment's key, checked to be usable as a file name.
    fn attachment(&self) -> Result<(&str, &str), CniError> {
        self.require("CNI_CONTAINERID", &self.container_id)?;
        self.require("CNI_IFNAME", &self.ifname)?;
        for (name, v) in [
            ("CNI_CONTAINERID", &self.container_id),
            ("CNI_IFNAME", &self.ifname),
        ] {
            if !safe_name(v) {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("{name} has characters outside [A-Za-z0-9_.-]"),
                    format!("{name}={v:?}"),
                ));
            }
        }
        Ok((&self.container_id, &self.ifname))
    }
}

/// `CNI_ARGS`: `K1=V1;K2=V2` (`IgnoreUnknown=1`, `K8S_POD_NAMESPACE`, `K8S_POD_NAME`, …).
pub fn parse_cni_args(s: &str) -> BTreeMap<String, String> {
    s.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

/// Runs one plugin call: the JSON to print on success (nothing for DEL, CHECK, GC, STATUS).
pub fn run(env: &Env, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    match env.command.as_str() {
        "VERSION" => Ok(Some(version(stdin))),
        "ADD" => add(env, &NetConf::parse(stdin)?).map(Some),
        "DEL" => del(env, &NetConf::parse(stdin)?).map(|()| None),
        "CHECK" => check(env, &NetConf::parse(stdin)?).map(|()| None),
        "GC" => gc(&NetConf::parse(stdin)?).map(|()| None),
        "STATUS" => status(&NetConf::parse(stdin)?).map(|()| None),
        "" => Err(CniError::new(
            code::INVALID_ENV,
            "CNI_COMMAND is not set",
            "this is a CNI plugin: the container runtime runs it with CNI_COMMAND and the \
             network configuration on stdin",
        )),
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("unknown CNI_COMMAND {other}"),
            "expected ADD, DEL, CHECK, GC, STATUS or VERSION",
        )),
    }
}

/// Whether this process was started under the plugin's installed name (`skiff-cni`).
pub fn invoked_as_plugin() -> bool {
    std::env::args_os()
        .next()
        .and_then(|a| Path::new(&a).file_name().map(|n| n == netconf::PLUGIN_TYPE))
        .unwrap_or(false)
}

/// Runs the plugin as the process: reads the environment and stdin, prints the result or
/// the error, and returns the exit code.
pub fn main() -> std::process::ExitCode {
    use std::io::{Read, Write};
    // Runtimes usually pass their own PATH; without one, iptables and nsenter are looked up
    // where distributions install them.
    if std::env::var_os("PATH").is_none() {
        std::env::set_var(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    let env = Env::read(|k| std::env::var(k).ok());
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let level = serde_json::from_slice::<Value>(&stdin)
        .ok()
        .and_then(|v| v.get("logLevel")?.as_str().map(str::to_string))
        .unwrap_or_else(|| "info".into());
    crate::init_logging(&level);
    let version = serde_json::from_slice::<Value>(&stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST_VERSION.into());
    let mut out = std::io::stdout().lock();
    match run(&env, &stdin) {
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
            std::process::ExitCode::SUCCESS
        }
        Ok(None) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(command = %env.command, container = %env.container_id, code = e.code, "{e}");
            let _ = writeln!(out, "{}", e.to_json(&version));
            std::process::ExitCode::FAILURE
        }
    }
}

fn version(stdin: &[u8]) -> Value {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST_VERSION.into());
    json!({ "cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS })
}

/// The result ADD prints: the previous plugin's, unchanged (an empty one when skiff is first).
fn pass_through(conf: &NetConf) -> Value {
    match &conf.prev_result {
        Some(prev) => prev.clone(),
        None => json!({ "cniVersion": conf.cni_version, "interfaces": [], "ips": [], "dns": {} }),
    }
}

/// The pod this sandbox belongs to, from `CNI_ARGS`.
fn pod_ref(env: &Env) -> Option<(&str, &str)> {
    let ns = env.args.get("K8S_POD_NAMESPACE")?;
    let name = env.args.get("K8S_POD_NAME")?;
    (!ns.is_empty() && !name.is_empty()).then_some((ns.as_str(), name.as_str()))
}

fn runtime() -> Result<tokio::runtime::Runtime, CniError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            CniError::new(
                code::IO_FAILURE,
                "cannot start the I/O runtime",
                e.to_string(),
            )
        })
}

/// Fetches the pod, retrying briefly: a sandbox is set up right after the pod is scheduled,
/// and an API server restart must not fail it.
fn fetch_pod(conf: &NetConf, ns: &str, name: &str) -> Result<Option<crate::kube::Pod>, CniError> {
    let client = Client::from_conf(&conf.skiff.kubernetes)
        .map_err(|e| CniError::new(code::INVALID_CONFIG, "kubernetes settings", e.to_string()))?;
    let rt = runtime()?;
    let mut last = None;
    for attempt in 0..3u32 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(200 * u64::from(attempt)));
        }
        match rt.block_on(client.pod(ns, name)) {
            Ok(p) => return Ok(Some(p)),
            // A static pod without a mirror: nothing to read its annotations from.
            Err(e) if e.is_not_found() => return Ok(None),
            Err(
                e @ (KubeError::Status { .. } | KubeError::Decode { .. } | KubeError::Config(_)),
            ) => {
                return Err(CniError::new(
                    code::TRY_AGAIN_LATER,
                    format!("cannot read pod {ns}/{name}"),
                    e.to_string(),
                ))
            }
            Err(e) => last = Some(e),
        }
    }
    Err(CniError::new(
        code::TRY_AGAIN_LATER,
        format!("cannot reach the Kubernetes API for pod {ns}/{name}"),
        last.map(|e| e.to_string()).unwrap_or_default(),
    ))
}

fn add(env: &Env, conf: &NetConf) -> Result<Value, CniError> {
    let (container_id, ifname) = env.attachment()?;
    env.require("CNI_NETNS", &env.netns)?;
    let result = pass_through(conf);
    let Some((ns, name)) = pod_ref(env) else {
        tracing::info!(
            container = container_id,
            "not a Kubernetes pod (no K8S_POD_NAME in CNI_ARGS): left alone"
        );
        return Ok(result);
    };
    // Before asking the API: the mesh's own namespaces must start even when it is down.
    if conf.skiff.exclude_namespaces.iter().any(|n| n == ns) {
        tracing::info!(pod = %format!("{ns}/{name}"), "namespace excluded: left alone");
        return Ok(result);
    }
    let Some(pod) = fetch_pod(conf, ns, name)? else {
        tracing::warn!(pod = %format!("{ns}/{name}"), "pod not found in the API: left alone");
        return Ok(result);
    };
    capture_pod(conf, &pod, container_id, ifname, &env.netns)?;
    Ok(result)
}

/// Captures `pod`'s namespace at `netns` as its annotations say and records it under
/// (`container_id`, `ifname`); `None` when the pod is left alone. ADD and the node agent's
/// reconciliation of pods that were running before it both come here.
pub fn capture_pod(
    conf: &NetConf,
    pod: &crate::kube::Pod,
    container_id: &str,
    ifname: &str,
    netns: &str,
) -> Result<Option<Attachment>, CniError> {
    let capture = match decide(pod, &conf.skiff) {
        Ok(Decision::Skip(why)) => {
            tracing::info!(pod = %pod.key(), "left alone: {why}");
            return Ok(None);
        }
        Ok(Decision::Capture(c)) => c,
        Err(e) => {
            return Err(CniError::new(
                code::BAD_ANNOTATION,
                format!("pod {}: bad capture annotation", pod.key()),
                e.to_string(),
            ))
        }
    };
    let state = StateDir::new(&conf.skiff.state_dir);
    let _lock = state
        .lock()
        .map_err(|e| CniError::new(code::IO_FAILURE, "state directory", e.to_string()))?;
    let mut record = Attachment {
        container_id: container_id.into(),
        ifname: ifname.into(),
        netns: netns.to_string(),
        backend: conf.skiff.backend,
        cookie: None,
        iptables_args: Vec::new(),
        pod_namespace: pod.metadata.namespace.clone(),
        pod_name: pod.metadata.name.clone(),
        pod_uid: pod.metadata.uid.clone(),
    };
    match conf.skiff.backend {
        Backend::Ebpf => record.cookie = Some(enroll(netns, &capture)?),
        Backend::Iptables => record.iptables_args = apply_iptables(netns, &capture)?,
    }
    if let Err(e) = state.write(&record) {
        // Without its record DEL could not undo it: undo it now and fail.
        let _ = undo(&record);
        return Err(CniError::new(
            code::IO_FAILURE,
            "cannot record the capture",
            e.to_string(),
        ));
    }
    tracing::info!(pod = %pod.key(), backend = conf.skiff.backend.as_str(), netns, "captured");
    Ok(Some(record))
}

/// Whether the node agent has attached the programs somewhere (normally the cgroup root):
/// an enrolment without them would capture nothing.
pub fn programs_attached() -> bool {
    std::fs::read_dir(Path::new(skiff_ebpf::PIN_ROOT).join("cgroup"))
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

fn enroll(netns: &str, c: &PodCapture) -> Result<u64, CniError> {
    if !programs_attached() {
        return Err(CniError::new(
            code::TRY_AGAIN_LATER,
            "skiff's eBPF programs are not attached on this node yet",
            format!(
                "{}/cgroup is empty: the skiff node agent attaches them at start; \
                 check that its DaemonSet pod runs on this node",
                skiff_ebpf::PIN_ROOT
            ),
        ));
    }
    let capture = skiff_iptables::Capture::from_args(&c.capture_args())
        .map_err(|e| CniError::new(code::INVALID_CONFIG, "capture settings", e.to_string()))?;
    let e = skiff_ebpf::enroll(Path::new(netns), &capture, &c.ebpf_options()).map_err(|e| {
        CniError::new(
            code::CAPTURE_FAILED,
            format!("cannot enrol {netns}"),
            e.to_string(),
        )
    })?;
    Ok(e.cookie)
}

fn apply_iptables(netns: &str, c: &PodCapture) -> Result<Vec<String>, CniError> {
    use clap::Parser;
    let args = c.iptables_args(netns);
    let parsed = skiff_iptables::Args::try_parse_from(
        std::iter::once("skiff iptables".to_string()).chain(args.iter().cloned()),
    )
    .map_err(|e| CniError::new(code::INVALID_CONFIG, "capture settings", e.to_string()))?;
    skiff_iptables::run(&parsed).map_err(|e| {
        CniError::new(
            code::CAPTURE_FAILED,
            format!("cannot apply the capture rules in {netns}"),
            e.to_string(),
        )
    })?;
    Ok(args)
}

/// Undoes one recorded capture; a namespace that is already gone took its rules with it.
pub fn undo(a: &Attachment) -> Result<(), CniError> {
    match a.backend {
        Backend::Ebpf => {
            if let Some(cookie) = a.cookie {
                skiff_ebpf::unenroll_cookie(cookie).map_err(|e| {
                    CniError::new(
                        code::CAPTURE_FAILED,
                        format!("cannot unenrol {}", a.netns),
                        e.to_string(),
                    )
                })?;
                skiff_ebpf::remove_unused().map_err(|e| {
                    CniError::new(
                        code::CAPTURE_FAILED,
                        "cannot remove unused pins",
                        e.to_string(),
                    )
                })?;
            }
        }
        Backend::Iptables => {
            if a.netns.is_empty() || !Path::new(&a.netns).exists() {
                return Ok(());
            }
            use clap::Parser;
            let mut args = a.iptables_args.clone();
            args.push("--cleanup-only".into());
            let parsed = skiff_iptables::Args::try_parse_from(
                std::iter::once("skiff iptables".to_string()).chain(args),
            )
            .map_err(|e| {
                CniError::new(
                    code::INVALID_CONFIG,
                    "recorded capture settings",
                    e.to_string(),
                )
            })?;
            skiff_iptables::run(&parsed).map_err(|e| {
                CniError::new(
                    code::CAPTURE_FAILED,
                    format!("cannot remove the capture rules in {}", a.netns),
                    e.to_string(),
                )
            })?;
        }
    }
    Ok(())
}

fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let (container_id, ifname) = env.attachment()?;
    let state = StateDir::new(&conf.skiff.state_dir);
    if !state.path().exists() {
        return Ok(());
    }
    let _lock = state
        .lock()
        .map_err(|e| CniError::new(code::IO_FAILURE, "state directory", e.to_string()))?;
    let record = state
        .read(container_id, ifname)
        .map_err(|e| CniError::new(code::IO_FAILURE, "state directory", e.to_string()))?;
    let Some(record) = record.or_else(|| same_namespace(&state, &env.netns)) else {
        return Ok(());
    };
    undo(&record)?;
    state
        .remove(&record.container_id, &record.ifname)
        .map_err(|e| CniError::new(code::IO_FAILURE, "state directory", e.to_string()))?;
    tracing::info!(
        pod = %format!("{}/{}", record.pod_namespace, record.pod_name),
        backend = record.backend.as_str(),
        "released"
    );
    Ok(())
}

/// A record of the eBPF backend for the namespace at `netns` under another attachment: the
/// node agent enrols pods that ran before it under its own key, and the runtime's DEL for
/// such a sandbox must release them too.
fn same_namespace(state: &StateDir, netns: &str) -> Option<Attachment> {
    if netns.is_empty() || !Path::new(netns).exists() {
        return None;
    }
    let cookie = skiff_ebpf::netns::inspect(Path::new(netns)).ok()?.cookie;
    state
        .list()
        .ok()?
        .into_iter()
        .find(|r| r.backend == Backend::Ebpf && r.cookie == Some(cookie))
}

fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let (container_id, ifname) = env.attachment()?;
    let state = StateDir::new(&conf.skiff.state_dir);
    let record = state
        .read(container_id, ifname)
        .map_err(|e| CniError::new(code::IO_FAILURE, "state directory", e.to_string()))?;
    let Some(record) = record else {
        // ADD left this pod alone; nothing to check.
        return Ok(());
    };
    let missing = |why: String| {
        CniError::new(
            code::CAPTURE_MISSING,
            format!(
                "the capture of pod {}/{} is gone",
                record.pod_namespace, record.pod_name
            ),
            why,
        )
    };
    let netns = if env.netns.is_empty() {
        &record.netns
    } else {
        &env.netns
    };
    match record.backend {
        Backend::Ebpf => {
            let cookie = record.cookie.unwrap_or_default();
            let info = skiff_ebpf::netns::inspect(Path::new(netns))
                .map_err(|e| missing(format!("network namespace {netns}: {e}")))?;
            if info.cookie != cookie {
                return Err(missing(format!(
                    "{netns} is now namespace {} but {cookie} was enrolled",
                    info.cookie
                )));
            }
            let status = skiff_ebpf::status().map_err(|e| missing(e.to_string()))?;
            if !status.pods.iter().any(|(c, _)| *c == cookie) {
                return Err(missing(format!("namespace {cookie} is not in skiff_pods")));
            }
            if !programs_attached() {
                return Err(missing(
                    "skiff's programs are not attached on this node".into(),
                ));
            }
        }
        Backend::Iptables => {
            let out = std::process::Command::new("nsenter")
                .arg(format!("--net={netns}"))
                .args(["--", "iptables-save", "-t", "nat"])
                .output()
                .map_err(|e| missing(format!("cannot run iptables-save in {netns}: {e}")))?;
            let text = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() || !text.contains(":ISTIO_OUTPUT") {
                return Err(missing(format!(
                    "{netns} has no ISTIO_OUTPUT chain in the nat table"
                )));
            }
        }
    }
    Ok(())
}

fn gc(conf: &NetConf) -> Result<(), CniError> {
    let Some(valid) = &conf.valid_attachments else {
        // Without the list every attachment would look stale: do nothing rather than all.
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "GC without cni.dev/valid-attachments",
            "the runtime must pass the attachments it still knows",
        ));
    };
    let state = StateDir::new(&conf.skiff.state_dir);
    let _lock = state
        .lock()
        .map_err(|e| CniError::new(code::IO_FAILURE, "state directory", e.to_string()))?;
    let records = state
        .list()
        .map_err(|e| CniError::new(code::IO_FAILURE, "state directory", e.to_string()))?;
    let mut failed = Vec::new();
    for r in records {
        if valid
            .iter()
            .any(|v| v.container_id == r.container_id && v.ifname == r.ifname)
        {
            continue;
        }
        match undo(&r).and_then(|()| {
            state
                .remove(&r.container_id, &r.ifname)
                .map_err(|e| CniError::new(code::IO_FAILURE, "state directory", e.to_string()))
        }) {
            Ok(()) => {
                tracing::info!(container = %r.container_id, pod = %format!("{}/{}", r.pod_namespace, r.pod_name), "collected a stale capture")
            }
            Err(e) => failed.push(format!("{}: {e}", r.container_id)),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            code::CAPTURE_FAILED,
            "GC could not release every stale capture",
            failed.join("; "),
        ))
    }
}

fn status(conf: &NetConf) -> Result<(), CniError> {
    if !netconf::at_least(&conf.cni_version, 1, 1) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "STATUS needs cniVersion 1.1.0",
            format!("the configuration says {}", conf.cni_version),
        ));
    }
    match conf.skiff.backend {
        Backend::Ebpf if !programs_attached() => Err(CniError::new(
            code::NOT_AVAILABLE,
            "skiff's eBPF programs are not attached on this node",
            "the skiff node agent attaches them when it starts",
        )),
        Backend::Iptables if !on_path("iptables-restore") || !on_path("nsenter") => {
            Err(CniError::new(
                code::NOT_AVAILABLE,
                "iptables-restore or nsenter is missing on this node",
                "install iptables and util-linux on the node",
            ))
        }
        _ => Ok(()),
    }
}

/// Whether `program` is in one of PATH's directories.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(command: &str) -> Env {
        Env {
            command: command.into(),
            container_id: "c1".into(),
            netns: "/var/run/netns/none".into(),
            ifname: "eth0".into(),
            args: parse_cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=p"),
            path: "/usr/lib/cni".into(),
        }
    }

    fn conf(dir: &Path) -> String {
        json!({
            "cniVersion": "1.1.0", "name": "net", "type": "skiff-cni",
            "stateDir": dir,
            "kubernetes": {"apiServer": "http://127.0.0.1:9"},
            "prevResult": {"cniVersion": "1.1.0", "ips": [{"address": "10.204.0.5/24"}], "interfaces": [{"name": "eth0"}]}
        })
        .to_string()
    }

    #[test]
    fn version_lists_what_is_spoken() {
        let v = run(&env("VERSION"), br#"{"cniVersion":"1.0.0"}"#)
            .expect("ok")
            .expect("output");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(v["supportedVersions"]
            .as_array()
            .is_some_and(|a| a.len() == 5));
    }

    #[test]
    fn excluded_pods_pass_prev_result_through_and_del_is_idempotent() {
        let dir = std::env::temp_dir().join(format!("skiff-cni-unit-{}", std::process::id()));
        let conf = conf(&dir);
        let out = run(&env("ADD"), conf.as_bytes())
            .expect("ok")
            .expect("result");
        assert_eq!(out["ips"][0]["address"], "10.204.0.5/24");
        // Never added: DEL twice succeeds, CHECK has nothing to check.
        assert_eq!(run(&env("DEL"), conf.as_bytes()), Ok(None));
        assert_eq!(run(&env("DEL"), conf.as_bytes()), Ok(None));
        assert_eq!(run(&env("CHECK"), conf.as_bytes()), Ok(None));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn errors_carry_spec_codes() {
        let e = run(&env(""), b"{}").expect_err("no command");
        assert_eq!(e.code, code::INVALID_ENV);
        let e = run(&env("ADD"), b"{not json").expect_err("bad json");
        assert_eq!(e.code, code::DECODE);
        let e = run(
            &env("ADD"),
            br#"{"cniVersion":"9.9.9","name":"n","type":"skiff-cni"}"#,
        )
        .expect_err("version");
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        let mut bad = env("ADD");
        bad.container_id = "../../etc".into();
        let e = run(
            &bad,
            br#"{"cniVersion":"1.0.0","name":"n","type":"skiff-cni"}"#,
        )
        .expect_err("unsafe id");
        assert_eq!(e.code, code::INVALID_ENV);
        let j = e.to_json("1.0.0");
        assert_eq!(j["code"], 4);
        assert!(j["msg"].is_string() && j["details"].is_string());
        let e = run(
            &env("GC"),
            br#"{"cniVersion":"1.1.0","name":"n","type":"skiff-cni"}"#,
        )
        .expect_err("gc without list");
        assert_eq!(e.code, code::INVALID_CONFIG);
    }
}
